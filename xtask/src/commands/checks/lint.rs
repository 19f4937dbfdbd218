//! `cargo xtask lint`: the product files that are not Rust, checked by real tools.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use xshell::Shell;

use super::report::Checks;
use crate::flags::Lint;
use crate::outside::docker::{self, Compose};
use crate::outside::local_service::{LocalService, Profile};
use crate::outside::process::{self, Cmd};
use crate::outside::tools::{self, Tool};
use crate::outside::{http, proxy};
use crate::project;
use crate::targets::compose;
use crate::targets::compose::monitoring;
use crate::targets::compose::replica;
use crate::targets::compose::switch;
use crate::targets::k8s;

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

/// `install_missing`: install the linters that are missing (what `ci` does).
pub fn lint(sh: &Shell, install_missing: bool) -> Result<()> {
    let app = compose::stack(sh, docker::connect(sh)?);
    let everything = monitoring::interpolable(sh, app.clone());
    let mut checks = Checks::keep_going();
    checks.run("docker-compose.yml", || process::check(sh, &app.cmd(&["config", "--quiet"])))?;
    checks.run("docker-compose.yml + docker-compose.tls.yml", || {
        let tls =
            app.clone().with_file(project::TLS_COMPOSE_FILE).var("LOGBOOK_DOMAIN", "logbook.example.com");
        process::check(sh, &tls.cmd(&["config", "--quiet"]))
    })?;
    checks.run("docker-compose.yml + docker-compose.monitoring.yml", || {
        process::check(sh, &everything.cmd(&["config", "--quiet"]))
    })?;
    checks.run(
        "docker-compose.yml + docker-compose.replica.yml, and deploy/litestream/litestream.yml",
        || check_replica_layer(sh, &app),
    )?;
    checks.run(project::PROXY_CONFIG, || switch::check_proxy_config(sh, &app))?;
    checks.run(project::TLS_CONFIG, || {
        let tls =
            app.clone().with_file(project::TLS_COMPOSE_FILE).var("LOGBOOK_DOMAIN", "logbook.example.com");
        let image = compose_image(sh, &tls, project::TLS_SERVICE)?;
        ensure_local(sh, &image, "CADDY_IMAGE")?;
        proxy::validate_tls_config(sh, &image)
    })?;
    checks.run("Alertmanager's configuration, as Compose renders it (amtool check-config)", || {
        check_alertmanager_config(sh, &everything)
    })?;
    match find_promtool(sh, &everything) {
        Ok(promtool) => {
            for (name, args) in promtool_checks() {
                checks.run(name, || process::check(sh, &promtool.cmd(&args)))?;
            }
            checks
                .run("metrics the dashboard and alerts use are exported", || metrics_check(sh, &promtool))?;
        }
        Err(e) => checks.run("promtool", || Err(e))?,
    }
    let kube = [tools::KUBECTL, tools::KUBERNETES_VALIDATE];
    if with_tools(sh, &mut checks, &kube, install_missing)? {
        for dir in kustomize_dirs(sh)? {
            checks
                .run(&format!("{dir}: rendered manifests are valid Kubernetes"), || validate_k8s(sh, &dir))?;
        }
    }
    if with_tools(sh, &mut checks, &[tools::ACTIONLINT], install_missing)? {
        checks.run("actionlint .github/workflows", || process::check(sh, &actionlint()))?;
    }
    if with_tools(sh, &mut checks, &[tools::ZIZMOR], install_missing)? {
        checks.run("zizmor .github/workflows (medium and above)", || process::check(sh, &zizmor()))?;
    }
    if with_tools(sh, &mut checks, &[tools::HADOLINT], install_missing)? {
        checks.run("hadolint Dockerfile deploy/proxy/Dockerfile", || process::check(sh, &hadolint()))?;
    }
    if with_tools(sh, &mut checks, &[tools::SHELLCHECK], install_missing)? {
        checks.run("shellcheck .ci/run", || process::check(sh, &shellcheck()))?;
    }
    checks.finish("lint").map(drop)
}

/// Whether every tool in `needed` is here, installing them first when `install` says so;
/// a missing one is a SKIP line naming how to get it.
fn with_tools(sh: &Shell, checks: &mut Checks, needed: &[Tool], install: bool) -> Result<bool> {
    let names: Vec<&str> = needed.iter().map(|t| t.name).collect();
    for tool in needed.iter().filter(|t| !t.installed(sh)) {
        if install {
            checks.run(&format!("install {}", tool.name), || tool.require(sh, true))?;
        }
        if !tool.installed(sh) {
            checks.skip(&names.join(" and "), &format!("{} not installed: {}", tool.name, tool.fix()));
            return Ok(false);
        }
    }
    Ok(true)
}

/// The kustomize base and every overlay.
fn kustomize_dirs(sh: &Shell) -> Result<Vec<String>> {
    let mut dirs = vec!["deploy/k8s/base".to_owned()];
    let mut overlays: Vec<String> = sh
        .read_dir(k8s::OVERLAYS)?
        .iter()
        .filter_map(|p| p.file_name().map(|n| format!("{}/{}", k8s::OVERLAYS, n.to_string_lossy())))
        .collect();
    overlays.sort();
    dirs.extend(overlays);
    Ok(dirs)
}

/// Renders `dir` with kustomize and validates every resource against the bundled
/// Kubernetes schemas, rejecting unknown fields; the error names the resource and field.
fn validate_k8s(sh: &Shell, dir: &str) -> Result<()> {
    let rendered = process::query(sh, &k8s::kustomize(dir))?;
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

/// The GitHub workflows, every one of them.
pub const WORKFLOWS: &[&str] = &[".github/workflows/ci.yml", ".github/workflows/rollback.yml"];

pub fn actionlint() -> Cmd {
    Cmd::new("actionlint").args(WORKFLOWS.iter().copied())
}

/// Offline: no lookups of action versions on GitHub; a finding of medium severity or
/// more fails (`zizmor.yml` would hold suppressions, with their reasons).
pub fn zizmor() -> Cmd {
    Cmd::new("zizmor")
        .args(["--offline", "--min-severity", "medium", "--no-progress"])
        .args(WORKFLOWS.iter().copied())
}

/// Every rule, warnings included, fails.
pub fn hadolint() -> Cmd {
    Cmd::new("hadolint").args(["--failure-threshold", "warning", "Dockerfile", "deploy/proxy/Dockerfile"])
}

pub fn shellcheck() -> Cmd {
    Cmd::new("shellcheck").args([".ci/run"])
}

pub fn promtool_checks() -> Vec<(&'static str, Vec<&'static str>)> {
    vec![
        ("promtool check config", vec!["check", "config", "monitoring/prometheus/prometheus.yml"]),
        ("promtool check rules", vec!["check", "rules", "monitoring/prometheus/alerts.yml"]),
        ("promtool test rules", vec!["test", "rules", "monitoring/prometheus/alerts.test.yml"]),
    ]
}

fn find_promtool(sh: &Shell, compose: &Compose) -> Result<Promtool> {
    if tools::PROMTOOL.installed(sh) {
        return Ok(Promtool::Local);
    }
    let image = compose_image(sh, compose, "prometheus")?;
    ensure_local(sh, &image, "PROMETHEUS_IMAGE").context(
        "no promtool here: install promtool (Debian: apt-get install prometheus), or make the Prometheus image available",
    )?;
    Ok(Promtool::Image { image, root: sh.current_dir().display().to_string() })
}

/// Renders the `alertmanager` config of the monitoring compose file (its settings come
/// from the environment) and checks it with amtool, from the Alertmanager image.
fn check_alertmanager_config(sh: &Shell, compose: &Compose) -> Result<()> {
    let config: serde_json::Value =
        serde_json::from_str(&process::query(sh, &compose.cmd(&["config", "--format", "json"]))?)?;
    let content = config["configs"]["alertmanager"]["content"]
        .as_str()
        .context("docker-compose.monitoring.yml has no `alertmanager` config")?;
    let image = compose_image(sh, compose, "alertmanager")?;
    ensure_local(sh, &image, "ALERTMANAGER_IMAGE")?;
    let dir = sh.create_temp_dir()?;
    std::fs::write(dir.path().join("alertmanager.yml"), content)
        .context("cannot write the rendered config")?;
    process::check(sh, &amtool_check(&image, dir.path()))
}

pub fn amtool_check(image: &str, dir: &std::path::Path) -> Cmd {
    Cmd::new("docker")
        .args(["run", "--rm", "--network", "none", "--volume"])
        .arg(format!("{}:/check:ro", dir.display()))
        .args(["--entrypoint", "amtool", image, "check-config", "/check/alertmanager.yml"])
}

/// The image `service` runs, as the compose files resolve it.
fn compose_image(sh: &Shell, compose: &Compose, service: &str) -> Result<String> {
    let config: serde_json::Value =
        serde_json::from_str(&process::query(sh, &compose.cmd(&["config", "--format", "json"]))?)?;
    config["services"][service]["image"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no {service} image in the compose file"))
}

/// The replication layer renders with sample settings, and Litestream loads its
/// configuration with the environment compose gives the sidecar.
fn check_replica_layer(sh: &Shell, app: &Compose) -> Result<()> {
    let layered = app
        .clone()
        .with_file(project::REPLICA_COMPOSE_FILE)
        .var(replica::URL_VAR, "s3://lint-bucket/logbook")
        .var(replica::CREDENTIALS_VAR, "/dev/null");
    process::check(sh, &layered.cmd(&["config", "--quiet"]))?;
    let config: serde_json::Value =
        serde_json::from_str(&process::query(sh, &layered.cmd(&["config", "--format", "json"]))?)?;
    let sidecar = &config["services"][replica::SERVICE];
    let image = sidecar["image"].as_str().context("no litestream image in the compose file")?;
    ensure_local(sh, image, "LITESTREAM_IMAGE")?;
    let env: Vec<(String, String)> = sidecar["environment"]
        .as_object()
        .map(|vars| {
            vars.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect()
        })
        .unwrap_or_default();
    process::check(sh, &replica::check_config(image, &sh.current_dir(), &env))
        .map_err(|e| anyhow::anyhow!("{} does not load: {e:#}", replica::CONFIG))
}

/// The image is here, or pulled; else an error naming the variable that overrides it.
fn ensure_local(sh: &Shell, image: &str, variable: &str) -> Result<()> {
    if !docker::image_exists(sh, image)
        && process::run(sh, &Cmd::new("docker").args(["pull", image])).is_err()
    {
        bail!(
            "the image {image} is neither here nor pullable: pull it, or set {variable} to an image you can reach"
        );
    }
    Ok(())
}

/// Starts the service, reads its real `/metrics`, lints it with promtool, and checks that
/// every `logbook_*` name the dashboards, rules and rule tests use is in it.
fn metrics_check(sh: &Shell, promtool: &Promtool) -> Result<()> {
    let exposition = live_metrics(sh)?;
    let check_metrics = promtool.cmd(&["check", "metrics"]);
    process::echo(&check_metrics);
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
        &tools::cargo().args(["build", "--quiet", "--locked", "-p", "logbook", "--bin", "logbook"]),
    )?;
    let dir = sh.create_temp_dir()?;
    let service = LocalService::start(sh, Profile::Debug, dir.path())?;
    // One write, so the append counters and histograms have samples.
    let body = r#"{"text":"lint"}"#;
    let written = crate::outside::http::request_with_headers(
        &service.addr,
        "POST",
        "/api/entries",
        &[],
        Some(body),
        std::time::Duration::from_secs(5),
    )?;
    anyhow::ensure!(
        written.status == 201,
        "the service answered the write {}: {}",
        written.status,
        written.body
    );
    http::get(&service.addr, "/api/entries", Duration::from_secs(5))?;
    Ok(http::get(&service.addr, "/metrics", Duration::from_secs(5))?.body)
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
    fn amtool_checks_the_rendered_config_without_a_network() {
        assert_eq!(
            amtool_check("prom/alertmanager:v0.25.0", std::path::Path::new("/tmp/am")).to_string(),
            "docker run --rm --network none --volume /tmp/am:/check:ro --entrypoint amtool prom/alertmanager:v0.25.0 \
             check-config /check/alertmanager.yml"
        );
    }

    #[test]
    fn the_judges_run_on_every_workflow_and_fail_on_warnings() {
        let workflows =
            std::fs::read_dir(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.github/workflows"))
                .unwrap()
                .map(|e| format!(".github/workflows/{}", e.unwrap().file_name().to_string_lossy()))
                .collect::<std::collections::BTreeSet<_>>();
        assert_eq!(workflows, WORKFLOWS.iter().map(|w| w.to_string()).collect(), "a workflow no judge reads");
        assert_eq!(
            zizmor().to_string(),
            "zizmor --offline --min-severity medium --no-progress .github/workflows/ci.yml .github/workflows/rollback.yml"
        );
        assert_eq!(
            hadolint().to_string(),
            "hadolint --failure-threshold warning Dockerfile deploy/proxy/Dockerfile"
        );
        assert_eq!(shellcheck().to_string(), "shellcheck .ci/run");
    }

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

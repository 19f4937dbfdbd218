//! `cargo xtask monitoring-up / monitoring-down / monitoring-smoke`: Prometheus and Grafana
//! beside the app, in the same compose project.

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use xshell::Shell;

use crate::docker::{self, Compose};
use crate::flags::{MonitoringDown, MonitoringService, MonitoringSmoke, MonitoringUp};
use crate::process::{self, Cmd};
use crate::release::{self, Gate};
use crate::smoke::Checks;
use crate::stack::{self, OnDrop, StackGuard};
use crate::{http, project};

const PASSWORD_VAR: &str = "GRAFANA_ADMIN_PASSWORD";
/// Stands in for the password when Grafana is not being started: Compose interpolates the
/// whole file for any command, and the file deliberately has no default password.
const PASSWORD_UNUSED: &str = "unused-grafana-is-not-started";

impl MonitoringService {
    pub fn name(self) -> &'static str {
        match self {
            MonitoringService::Prometheus => "prometheus",
            MonitoringService::Grafana => "grafana",
        }
    }
}

/// Where each started service answers, for the user.
pub struct Urls(Vec<(&'static str, String)>);

impl MonitoringUp {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let program = docker::connect(sh)?;
        let image = stack::ensure_image(sh, self.no_build)?;
        let compose = Compose::app(program);
        let services = if self.services.is_empty() {
            vec![MonitoringService::Prometheus, MonitoringService::Grafana]
        } else {
            self.services.clone()
        };
        let history = release::history_path(sh, &compose.project);
        let urls =
            monitoring_up(sh, &compose, &history, &image, &services, Duration::from_secs(self.timeout))?;
        for (name, url) in urls.0 {
            process::result(&format!("{name:<11} {url}"));
        }
        Ok(())
    }
}

impl MonitoringDown {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let compose = interpolable(sh, Compose::app(docker::connect(sh)?).with_monitoring());
        monitoring_down(sh, &compose)?;
        process::result(&format!("monitoring stopped in project {}; the app keeps running", compose.project));
        Ok(())
    }
}

/// The monitoring compose files, with a placeholder password when none is set (see
/// [`PASSWORD_UNUSED`]).
pub fn interpolable(sh: &Shell, compose: Compose) -> Compose {
    let compose = compose.with_monitoring();
    if stack::setting(sh, &compose, PASSWORD_VAR, "").is_empty() {
        compose.var(PASSWORD_VAR, PASSWORD_UNUSED)
    } else {
        compose
    }
}

pub fn monitoring_down(sh: &Shell, compose: &Compose) -> Result<()> {
    process::run(sh, &compose.cmd(&["rm", "--stop", "--force", "prometheus", "grafana"]))
}

/// Starts (or updates) the app, then the chosen monitoring services; waits until the app
/// is ready, Prometheus is ready and scrapes the app as `up`, and Grafana is healthy.
pub fn monitoring_up(
    sh: &Shell,
    app: &Compose,
    history: &std::path::Path,
    image: &str,
    services: &[MonitoringService],
    timeout: Duration,
) -> Result<Urls> {
    let grafana = services.contains(&MonitoringService::Grafana);
    if grafana && stack::setting(sh, app, PASSWORD_VAR, "").is_empty() {
        bail!(
            "set {PASSWORD_VAR} (in the environment or .env) before starting Grafana: it has no default password. Or start Prometheus alone: --services prometheus"
        );
    }
    let compose = interpolable(sh, app.clone()).var("LOGBOOK_IMAGE", image);
    for service in services {
        ensure_image_available(sh, &compose, *service)?;
    }
    let app_addr = release::deploy(sh, app, history, image, Gate { timeout, restore_previous: true })?;
    let names: Vec<&str> = services.iter().map(|s| s.name()).collect();
    process::run(sh, &compose.up_services(&names))?;
    let mut urls = Urls(vec![(project::NAME, format!("http://{app_addr}"))]);
    if process::runner().dry_run {
        return Ok(urls);
    }
    if services.contains(&MonitoringService::Prometheus) {
        let prometheus = published(sh, &compose, "prometheus", 9090, timeout)?;
        wait_http(&prometheus, "/-/ready", "Prometheus to be ready", timeout)?;
        process::wait_for("Prometheus to scrape logbook as up", timeout, Duration::from_millis(500), || {
            let targets = http::get(&prometheus, "/api/v1/targets", Duration::from_secs(5))?;
            Ok(logbook_target_up(&targets.body).then_some(()))
        })?;
        urls.0.push(("prometheus", format!("http://{prometheus}")));
    }
    if grafana {
        let grafana = published(sh, &compose, "grafana", 3000, timeout)?;
        wait_http(&grafana, "/api/health", "Grafana to be healthy", timeout)?;
        urls.0.push(("grafana", format!("http://{grafana}  (user admin, password from {PASSWORD_VAR})")));
    }
    Ok(urls)
}

/// Refuses, naming the image and its variable, when a monitoring image is neither here
/// nor pullable.
fn ensure_image_available(sh: &Shell, compose: &Compose, service: MonitoringService) -> Result<()> {
    let config: Value =
        serde_json::from_str(&process::query(sh, &compose.cmd(&["config", "--format", "json"]))?)
            .context("compose config printed bad JSON")?;
    let image = config["services"][service.name()]["image"]
        .as_str()
        .context("no image in the compose file")?
        .to_owned();
    if process::runner().dry_run || docker::image_exists(sh, &image) {
        return Ok(());
    }
    let variable = format!("{}_IMAGE", service.name().to_uppercase());
    if let Err(e) = process::run(sh, &Cmd::new("docker").args(["pull", &image])) {
        bail!(
            "the {} image {image} is not available here and could not be pulled ({e:#}): set {variable} to an image you can reach{}",
            service.name(),
            if service == MonitoringService::Grafana { ", or run with --services prometheus" } else { "" }
        );
    }
    Ok(())
}

fn published(sh: &Shell, compose: &Compose, service: &str, port: u16, timeout: Duration) -> Result<String> {
    process::wait_for(&format!("{service}'s published port"), timeout, Duration::from_millis(200), || {
        let mapping = process::query(sh, &compose.port(service, port)).ok();
        Ok(mapping.and_then(|m| m.rsplit_once(':').map(|(_, p)| format!("127.0.0.1:{p}"))))
    })
}

fn wait_http(addr: &str, path: &str, what: &str, timeout: Duration) -> Result<()> {
    process::wait_for(what, timeout, Duration::from_millis(250), || {
        Ok(http::get(addr, path, Duration::from_secs(5)).is_ok_and(|r| r.status == 200).then_some(()))
    })
}

/// Whether Prometheus's `/api/v1/targets` answer has the logbook job's target healthy.
pub fn logbook_target_up(targets_json: &str) -> bool {
    let Ok(doc) = serde_json::from_str::<Value>(targets_json) else { return false };
    doc["data"]["activeTargets"].as_array().is_some_and(|targets| {
        targets.iter().any(|t| t["labels"]["job"] == project::NAME && t["health"] == "up")
    })
}

impl MonitoringSmoke {
    /// The CI proof: on a throwaway project, Prometheus comes up, scrapes the service and
    /// answers a PromQL query for its request counter; monitoring-down leaves the app up.
    pub fn run(self, sh: &Shell) -> Result<()> {
        let program = docker::connect(sh)?;
        let image = stack::ensure_image(sh, self.no_build)?;
        let prometheus_port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port().to_string();
        let app =
            crate::smoke::isolated(program, &format!("{}-monitoring-{}", project::NAME, std::process::id()))?
                .var("PROMETHEUS_HOST_PORT", &prometheus_port);
        let everything = interpolable(sh, app.clone());
        if process::runner().dry_run {
            let history = release::history_path(sh, &app.project);
            let services = [MonitoringService::Prometheus];
            return monitoring_up(sh, &app, &history, &image, &services, Duration::from_secs(60)).map(drop);
        }
        let guard = StackGuard::new(sh, &everything, OnDrop::RemoveWithVolumes);
        let state = sh.create_temp_dir()?;
        let history = state.path().join("releases.json");
        let mut checks = Checks::default();
        let urls = checks.run_value("monitoring-up --services prometheus: app ready, target up", || {
            monitoring_up(
                sh,
                &app,
                &history,
                &image,
                &[MonitoringService::Prometheus],
                Duration::from_secs(90),
            )
        })?;
        let prometheus = urls
            .0
            .iter()
            .find(|(n, _)| *n == "prometheus")
            .map(|(_, u)| u.trim_start_matches("http://").to_owned());
        let prometheus = prometheus.context("no Prometheus URL")?;
        checks.run("a PromQL query returns the service's request counter", || {
            process::wait_for(
                "the request counter in Prometheus",
                Duration::from_secs(60),
                Duration::from_millis(500),
                || {
                    let answer = http::get(
                        &prometheus,
                        "/api/v1/query?query=logbook_http_requests_total",
                        Duration::from_secs(5),
                    )?;
                    let doc: Value = serde_json::from_str(&answer.body)?;
                    Ok(doc["data"]["result"].as_array().is_some_and(|r| !r.is_empty()).then_some(()))
                },
            )
        })?;
        checks.run("monitoring-down stops Prometheus and leaves the app serving", || {
            monitoring_down(sh, &everything)?;
            let running = stack::containers(sh, &everything)?;
            ensure!(!running.iter().any(|c| c["Service"] == "prometheus"), "prometheus is still there");
            stack::wait_ready(sh, &app, Duration::from_secs(10)).map(drop)
        })?;
        guard.succeeded();
        process::result(&format!("monitoring-smoke: all {} checks passed", checks.passed));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_answer_is_read() {
        let up = r#"{"status":"success","data":{"activeTargets":[
            {"labels":{"job":"prometheus"},"health":"up"},
            {"labels":{"job":"logbook","instance":"logbook:8080"},"health":"up"}]}}"#;
        assert!(logbook_target_up(up));
        assert!(!logbook_target_up(&up.replace(
            r#""logbook","instance":"logbook:8080"},"health":"up""#,
            r#""logbook"},"health":"down""#
        )));
        assert!(!logbook_target_up("not json"));
    }
}

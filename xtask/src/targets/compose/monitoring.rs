//! Prometheus, Alertmanager and Grafana beside the app, in the same compose project: what
//! `monitoring-up`, `monitoring-down` and `monitoring-smoke` drive.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use xshell::Shell;

use super::switch::{self, Gate};
use crate::flags::MonitoringService;
use crate::outside::docker::{self, Compose};
use crate::outside::http;
use crate::outside::process::{self, Cmd};
use crate::project;

const PASSWORD_VAR: &str = "GRAFANA_ADMIN_PASSWORD";
/// Where Alertmanager sends every alert.
pub const WEBHOOK_VAR: &str = "ALERT_WEBHOOK_URL";
/// Stands in for the password when Grafana is not being started: Compose interpolates the
/// whole file for any command, and the file deliberately has no default password.
const PASSWORD_UNUSED: &str = "unused-grafana-is-not-started";

impl MonitoringService {
    pub fn name(self) -> &'static str {
        match self {
            MonitoringService::Prometheus => "prometheus",
            MonitoringService::Alertmanager => "alertmanager",
            MonitoringService::Grafana => "grafana",
        }
    }
}

/// Where each started service answers, for the user.
pub struct Urls(pub Vec<(&'static str, String)>);

/// The monitoring compose files, with a placeholder password when none is set (see
/// [`PASSWORD_UNUSED`]).
pub fn interpolable(sh: &Shell, compose: Compose) -> Compose {
    let compose = compose.with_monitoring();
    if super::setting(sh, &compose, PASSWORD_VAR, "").is_empty() {
        compose.var(PASSWORD_VAR, PASSWORD_UNUSED)
    } else {
        compose
    }
}

pub fn monitoring_down(sh: &Shell, compose: &Compose) -> Result<()> {
    process::run(sh, &compose.cmd(&["rm", "--stop", "--force", "prometheus", "alertmanager", "grafana"]))
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
    if grafana && super::setting(sh, app, PASSWORD_VAR, "").is_empty() {
        bail!(
            "set {PASSWORD_VAR} (in the environment or .env) before starting Grafana: it has no default password. Or start Prometheus alone: --services prometheus"
        );
    }
    let compose = interpolable(sh, app.clone()).var("LOGBOOK_IMAGE", image);
    for service in services {
        ensure_image_available(sh, &compose, *service)?;
    }
    let app_addr = switch::switch(sh, app, history, image, Gate { timeout, restore_previous: true })?;
    let names: Vec<&str> = services.iter().map(|s| s.name()).collect();
    process::run(sh, &compose.up_services(&names))?;
    let mut urls = Urls(vec![(project::NAME, format!("http://{app_addr}"))]);
    if services.contains(&MonitoringService::Prometheus) {
        let prometheus = published(sh, &compose, "prometheus", 9090, timeout)?;
        wait_http(&prometheus, "/-/ready", "Prometheus to be ready", timeout)?;
        process::wait_for("Prometheus to scrape logbook as up", timeout, Duration::from_millis(500), || {
            let targets = http::get(&prometheus, "/api/v1/targets", Duration::from_secs(5))?;
            Ok(logbook_target_up(&targets.body).then_some(()))
        })?;
        urls.0.push(("prometheus", format!("http://{prometheus}")));
    }
    if services.contains(&MonitoringService::Alertmanager) {
        let alertmanager = published(sh, &compose, "alertmanager", 9093, timeout)?;
        wait_http(&alertmanager, "/-/ready", "Alertmanager to be ready", timeout)?;
        if super::setting(sh, app, WEBHOOK_VAR, "").is_empty() {
            process::say(&format!(
                "note: {WEBHOOK_VAR} is not set, so Alertmanager has nobody to tell: set it (in the environment or .env) to your webhook's URL"
            ));
        }
        urls.0.push(("alertmanager", format!("http://{alertmanager}")));
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
    if docker::image_exists(sh, &image) {
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

/// Prometheus's `/api/v1/targets` answer, as far as it is read here.
#[derive(serde::Deserialize)]
struct Targets {
    data: TargetsData,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct TargetsData {
    active_targets: Vec<Target>,
}

#[derive(serde::Deserialize)]
struct Target {
    labels: std::collections::BTreeMap<String, String>,
    health: String,
}

/// Whether Prometheus's `/api/v1/targets` answer has the logbook job's target healthy.
pub fn logbook_target_up(targets_json: &str) -> bool {
    serde_json::from_str::<Targets>(targets_json).is_ok_and(|t| {
        t.data
            .active_targets
            .iter()
            .any(|t| t.labels.get("job").map(String::as_str) == Some(project::NAME) && t.health == "up")
    })
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

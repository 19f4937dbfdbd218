//! `cargo xtask monitoring-smoke`: the monitoring stack proven on a throwaway project.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde::Deserialize;
use xshell::Shell;

use super::harness::{self, Checks};
use crate::flags::{MonitoringService, MonitoringSmoke};
use crate::outside::{docker, http, image, process};
use crate::targets::compose::{self, OnDrop, StackGuard, monitoring};

/// A PromQL answer, as far as it is read here.
#[derive(Deserialize)]
struct Query {
    data: QueryData,
}

#[derive(Deserialize)]
struct QueryData {
    result: Vec<serde_json::Value>,
}

impl MonitoringSmoke {
    /// On a throwaway project, Prometheus comes up, scrapes the service and answers a PromQL
    /// query for its request counter; monitoring-down leaves the app up.
    pub fn run(self, sh: &Shell) -> Result<()> {
        let program = docker::connect(sh)?;
        let image = image::ensure(sh, self.no_build)?;
        let receiver = http::WebhookReceiver::start()?;
        let app = harness::throwaway_project(program, "monitoring")?
            .var("PROMETHEUS_HOST_PORT", &http::free_port()?.to_string())
            .var("ALERTMANAGER_HOST_PORT", &http::free_port()?.to_string())
            .var(monitoring::WEBHOOK_VAR, &format!("http://host.docker.internal:{}/alerts", receiver.port));
        let everything = monitoring::interpolable(sh, app.clone());
        let guard = StackGuard::new(sh, &everything, OnDrop::RemoveWithVolumes);
        let state = sh.create_temp_dir()?;
        let history = state.path().join("releases.json");
        let mut checks = Checks::stop_at_first();
        let urls =
            checks.step("monitoring-up --services prometheus,alertmanager: app ready, target up", || {
                let services = [MonitoringService::Prometheus, MonitoringService::Alertmanager];
                monitoring::monitoring_up(sh, &app, &history, &image, &services, Duration::from_secs(90))
            })?;
        let prometheus = urls
            .0
            .iter()
            .find(|(n, _)| *n == "prometheus")
            .map(|(_, u)| u.trim_start_matches("http://").to_owned())
            .context("no Prometheus URL")?;
        checks.run("a PromQL query returns the service's request counter", || {
            let query = "/api/v1/query?query=logbook_http_requests_total";
            process::wait_for(
                "the request counter in Prometheus",
                Duration::from_secs(60),
                Duration::from_millis(500),
                || {
                    let answer: Query =
                        serde_json::from_str(&http::get(&prometheus, query, Duration::from_secs(5))?.body)?;
                    Ok((!answer.data.result.is_empty()).then_some(()))
                },
            )
        })?;
        checks.run("Prometheus sends its alerts to Alertmanager", || {
            process::wait_for(
                "Prometheus to find Alertmanager",
                Duration::from_secs(60),
                Duration::from_millis(500),
                || {
                    let body = http::get(&prometheus, "/api/v1/alertmanagers", Duration::from_secs(5))?.body;
                    Ok(body.contains("alertmanager:9093").then_some(()))
                },
            )
        })?;
        checks.run(
            "with the service stopped, LogbookDown reaches the webhook through Alertmanager",
            || {
                process::run(sh, &app.cmd(&["stop", crate::project::NAME]))?;
                process::needs_effects("wait for the alert")?;
                let stopped = std::time::Instant::now();
                let arrived = process::wait_for(
                    "LogbookDown at the webhook (it fires after 1 minute down)",
                    Duration::from_secs(240),
                    Duration::from_millis(250),
                    || Ok(receiver.arrived(&["\"LogbookDown\"", "\"firing\""])),
                )?;
                process::say(&format!(
                    "  LogbookDown reached the webhook {:.1}s after the service stopped",
                    arrived.saturating_duration_since(stopped).as_secs_f64()
                ));
                process::run(sh, &app.cmd(&["start", crate::project::NAME]))
            },
        )?;
        checks.run("monitoring-down stops Prometheus and Alertmanager and leaves the app serving", || {
            monitoring::monitoring_down(sh, &everything)?;
            let running = compose::containers(sh, &everything)?;
            ensure!(
                !running.iter().any(|c| c.service == "prometheus" || c.service == "alertmanager"),
                "prometheus or alertmanager is still there"
            );
            compose::wait_ready(sh, &app, Duration::from_secs(10)).map(drop)
        })?;
        guard.succeeded();
        process::result(&format!("monitoring-smoke: all {} checks passed", checks.passed()));
        Ok(())
    }
}

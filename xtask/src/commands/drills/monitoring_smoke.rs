//! `cargo xtask monitoring-smoke`: the monitoring stack proven on a throwaway project.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde::Deserialize;
use xshell::Shell;

use super::harness;
use crate::commands::checks::report::Checks;
use crate::flags::{MonitoringService, MonitoringSmoke};
use crate::outside::{docker, http, image, process};
use crate::targets::compose::{self, OnDrop, StackGuard, monitoring};

/// The throwaway stack's read token.
const READ_TOKEN: &str = "monitoring-smoke-read-token";

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
        let receiver = crate::outside::webhook::WebhookReceiver::start()?;
        let app = harness::throwaway_project(program, "monitoring")?
            .var("PROMETHEUS_HOST_PORT", &http::free_port()?.to_string())
            .var("ALERTMANAGER_HOST_PORT", &http::free_port()?.to_string())
            .var(monitoring::WEBHOOK_VAR, &format!("http://host.docker.internal:{}/alerts", receiver.port))
            // Reads and /metrics need a token: Prometheus must scrape with it.
            .var("LOGBOOK_READ_TOKEN", READ_TOKEN);
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
        checks.run("/metrics needs the read token, which Prometheus scrapes with", || {
            let addr = compose::published_addr(sh, &app)?;
            let without = http::get(&addr, "/metrics", Duration::from_secs(5))?;
            ensure!(without.status == 401, "/metrics without the read token answered {}", without.status);
            let bearer = format!("Bearer {READ_TOKEN}");
            let with = http::request_with_headers(
                &addr,
                "GET",
                "/metrics",
                &[("Authorization", bearer.as_str())],
                None,
                Duration::from_secs(5),
            )?;
            ensure!(with.status == 200, "/metrics with the read token answered {}", with.status);
            // The target is up only if Prometheus's scrapes carry the token.
            let up = "/api/v1/query?query=up%7Bjob%3D%22logbook%22%7D%3D%3D1";
            let answer: Query =
                serde_json::from_str(&http::get(&prometheus, up, Duration::from_secs(5))?.body)?;
            ensure!(!answer.data.result.is_empty(), "Prometheus does not scrape the service as up");
            Ok(())
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

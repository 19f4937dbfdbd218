//! `cargo xtask status`: what runs, from which image, how healthy, for how long.

use std::collections::BTreeMap;
use std::time::SystemTime;

use anyhow::{Context, Result};
use serde::Deserialize;
use xshell::Shell;

use crate::flags::Status;
use crate::outside::docker;
use crate::outside::process::{self, Cmd};
use crate::project;
use crate::targets::compose::{self, monitoring};
use crate::time;

/// One container, as `docker inspect` describes it.
#[derive(Debug, PartialEq, Eq, serde::Serialize)]
pub struct Row {
    pub service: String,
    pub name: String,
    pub image: String,
    pub state: String,
    pub health: String,
    pub uptime: String,
}

impl Status {
    pub fn run(self, sh: &Shell) -> Result<()> {
        // The monitoring services too, which share the project.
        let stack = monitoring::interpolable(sh, compose::stack(sh, docker::connect(sh)?));
        let ids: Vec<String> = compose::containers(sh, &stack)?.into_iter().map(|c| c.id).collect();
        if ids.is_empty() && self.json {
            process::document(&report_json(&stack.project, &[], None, None));
            return Ok(());
        }
        if ids.is_empty() {
            process::result(&format!(
                "no containers in project {} (start it with `cargo xtask up`)",
                stack.project
            ));
            return Ok(());
        }
        let inspected = process::query(sh, &Cmd::new("docker").arg("inspect").args(ids))?;
        let mut rows = rows_from_inspect(&inspected, SystemTime::now())?;
        // Which release answers: the running service container, behind the proxy.
        let serving = compose::running(sh, &stack)?;
        let addr = compose::published_addr(sh, &stack).ok();
        // The proxy's image holds nothing to run a healthcheck with: probe it from here.
        for row in rows.iter_mut().filter(|r| r.service == project::PROXY_SERVICE && r.health == "none") {
            row.health = probe_listening(addr.as_deref());
        }
        let unfinished = compose::journal::Journal::load(&compose::history_path(sh, &stack)?)?;
        if self.json {
            let serving = serving.map(|(id, image)| (id, image, addr));
            process::document(&report_json(&stack.project, &rows, serving, unfinished.map(|j| j.describe())));
            return Ok(());
        }
        process::result(&table(&rows));
        process::result(&match (serving, addr) {
            (Some((id, image)), Some(addr)) => {
                let name = rows.iter().find(|r| r.image == image).map_or(id.as_str(), |r| r.name.as_str());
                format!("serving: {name} ({image}) through the proxy at http://{addr}")
            }
            (Some((_, image)), None) => {
                format!("serving: nothing reachable: {image} runs, but the proxy publishes no port")
            }
            (None, _) => "serving: nothing: no service container runs".to_owned(),
        });
        if let Some(unfinished) = unfinished {
            process::result(&format!(
                "unfinished switch: {}; the next `cargo xtask up` (or any command that changes the stack) repairs it",
                unfinished.describe()
            ));
        }
        Ok(())
    }
}

/// The proxy's health as this host sees it: whether its published port takes connections.
fn probe_listening(addr: Option<&str>) -> String {
    use std::net::ToSocketAddrs;
    let listening = addr
        .and_then(|a| a.to_socket_addrs().ok()?.next())
        .is_some_and(|a| std::net::TcpStream::connect_timeout(&a, std::time::Duration::from_secs(1)).is_ok());
    if listening { "listening (probed)" } else { "not listening (probed)" }.to_owned()
}

/// `status --json`: the project, its containers, what serves and where, and an unfinished
/// switch if there is one.
pub fn report_json(
    project: &str,
    rows: &[Row],
    serving: Option<(String, String, Option<String>)>,
    unfinished_switch: Option<String>,
) -> String {
    let serving = serving.map(|(container, image, addr)| {
        serde_json::json!({
            "container": container,
            "image": image,
            "url": addr.map(|a| format!("http://{a}")),
        })
    });
    serde_json::json!({
        "project": project,
        "containers": rows,
        "serving": serving,
        "unfinished_switch": unfinished_switch,
    })
    .to_string()
}

/// A container as `docker inspect` describes it, as far as the table needs.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Inspected {
    name: String,
    config: InspectedConfig,
    state: InspectedState,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectedConfig {
    image: String,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectedState {
    status: String,
    started_at: String,
    health: Option<Health>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Health {
    status: String,
}

pub fn rows_from_inspect(json: &str, now: SystemTime) -> Result<Vec<Row>> {
    let containers: Vec<Inspected> = serde_json::from_str(json).context("docker inspect printed bad JSON")?;
    Ok(containers
        .into_iter()
        .map(|c| {
            let running = c.state.status == "running";
            let uptime = match time::parse_rfc3339(&c.state.started_at) {
                Some(started) if running => time::age(started, now),
                _ => "-".to_owned(),
            };
            let labels = c.config.labels.unwrap_or_default();
            Row {
                service: labels.get("com.docker.compose.service").cloned().unwrap_or_else(|| "-".into()),
                name: c.name.trim_start_matches('/').to_owned(),
                image: c.config.image,
                state: c.state.status,
                health: c.state.health.map_or_else(|| "none".to_owned(), |h| h.status),
                uptime,
            }
        })
        .collect())
}

pub fn table(rows: &[Row]) -> String {
    let header = Row {
        service: "SERVICE".into(),
        name: "CONTAINER".into(),
        image: "IMAGE".into(),
        state: "STATE".into(),
        health: "HEALTH".into(),
        uptime: "UPTIME".into(),
    };
    let all: Vec<&Row> = std::iter::once(&header).chain(rows).collect();
    let width = |f: fn(&Row) -> &str| all.iter().map(|r| f(r).len()).max().unwrap_or(0);
    let (ws, wn, wi, wst, wh) = (
        width(|r| &r.service),
        width(|r| &r.name),
        width(|r| &r.image),
        width(|r| &r.state),
        width(|r| &r.health),
    );
    all.iter()
        .map(|r| {
            format!(
                "{:ws$}  {:wn$}  {:wi$}  {:wst$}  {:wh$}  {}",
                r.service, r.name, r.image, r.state, r.health, r.uptime
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inspect_output_becomes_rows() {
        let json = r#"[{
            "Name": "/logbook-logbook-1",
            "Config": {"Image": "logbook:0123456789ab", "Labels": {"com.docker.compose.service": "logbook"}},
            "State": {"Status": "running", "StartedAt": "2026-11-23T10:00:00.123456789Z", "Health": {"Status": "healthy"}}
        }, {
            "Name": "/other", "Config": {"Image": "x", "Labels": {}},
            "State": {"Status": "exited", "StartedAt": "2026-11-23T09:00:00Z"}
        }]"#;
        let now = time::parse_rfc3339("2026-11-23T10:04:12Z").unwrap();
        let rows = rows_from_inspect(json, now).unwrap();
        assert_eq!(
            rows[0],
            Row {
                service: "logbook".into(),
                name: "logbook-logbook-1".into(),
                image: "logbook:0123456789ab".into(),
                state: "running".into(),
                health: "healthy".into(),
                uptime: "4m 11s".into(),
            }
        );
        assert_eq!((rows[1].health.as_str(), rows[1].uptime.as_str()), ("none", "-"));
        let table = table(&rows);
        assert!(table.starts_with("SERVICE  CONTAINER"), "{table}");
        assert!(
            table.contains("logbook  logbook-logbook-1  logbook:0123456789ab  running  healthy  4m 11s"),
            "{table}"
        );
    }

    #[test]
    fn the_json_report_has_its_documented_shape() {
        let row = Row {
            service: "logbook".into(),
            name: "logbook-logbook-1".into(),
            image: "logbook:abc".into(),
            state: "running".into(),
            health: "healthy".into(),
            uptime: "5m".into(),
        };
        let json = report_json(
            "logbook",
            &[row],
            Some(("c0ffee".into(), "logbook:abc".into(), Some("127.0.0.1:8080".into()))),
            None,
        );
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["project"], "logbook");
        assert_eq!(value["containers"][0]["health"], "healthy");
        assert_eq!(value["containers"][0]["service"], "logbook");
        assert_eq!(value["serving"]["url"], "http://127.0.0.1:8080");
        assert_eq!(value["serving"]["image"], "logbook:abc");
        assert!(value["unfinished_switch"].is_null());
        let idle: serde_json::Value = serde_json::from_str(&report_json("p", &[], None, None)).unwrap();
        assert!(idle["serving"].is_null() && idle["containers"].as_array().unwrap().is_empty());
    }

    #[test]
    fn the_proxy_probe_tells_a_listening_port_from_a_closed_one() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        assert_eq!(probe_listening(Some(&addr)), "listening (probed)");
        drop(listener);
        assert_eq!(probe_listening(Some(&addr)), "not listening (probed)");
        assert_eq!(probe_listening(None), "not listening (probed)");
    }
}

//! `cargo xtask status`: what runs, from which image, how healthy, for how long.

use std::time::Duration;

use anyhow::{Context, Result};
use xshell::Shell;

use crate::docker::{self, Compose};
use crate::flags::Status;
use crate::process::{self, Cmd};
use crate::stack;
use crate::time;

/// One container, as `docker inspect` describes it.
#[derive(Debug, PartialEq, Eq)]
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
        let compose = Compose::app(docker::connect(sh)?);
        if process::runner().dry_run {
            process::echo(&compose.ps_json());
            return Ok(());
        }
        let ids: Vec<String> = stack::containers(sh, &compose)?
            .iter()
            .filter_map(|c| c["ID"].as_str().map(str::to_owned))
            .collect();
        if ids.is_empty() {
            process::result(&format!(
                "no containers in project {} (start it with `cargo xtask up`)",
                compose.project
            ));
            return Ok(());
        }
        let inspected = process::query(sh, &Cmd::new("docker").arg("inspect").args(ids))?;
        let rows = rows_from_inspect(&inspected, time::now_unix())?;
        process::result(&table(&rows));
        Ok(())
    }
}

pub fn rows_from_inspect(json: &str, now: i64) -> Result<Vec<Row>> {
    let containers: Vec<serde_json::Value> =
        serde_json::from_str(json).context("docker inspect printed bad JSON")?;
    Ok(containers
        .iter()
        .map(|c| {
            let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_owned();
            let state = text(&c["State"]["Status"]);
            let uptime = match time::parse_rfc3339_utc(c["State"]["StartedAt"].as_str().unwrap_or_default()) {
                Some(started) if state == "running" => {
                    time::human_duration(Duration::from_secs((now - started).max(0) as u64))
                }
                _ => "-".to_owned(),
            };
            Row {
                service: text(&c["Config"]["Labels"]["com.docker.compose.service"]),
                name: text(&c["Name"]).trim_start_matches('/').to_owned(),
                image: text(&c["Config"]["Image"]),
                state,
                health: c["State"]["Health"]["Status"].as_str().unwrap_or("none").to_owned(),
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
        let now = time::parse_rfc3339_utc("2026-11-23T10:04:12Z").unwrap();
        let rows = rows_from_inspect(json, now).unwrap();
        assert_eq!(
            rows[0],
            Row {
                service: "logbook".into(),
                name: "logbook-logbook-1".into(),
                image: "logbook:0123456789ab".into(),
                state: "running".into(),
                health: "healthy".into(),
                uptime: "4m12s".into(),
            }
        );
        assert_eq!((rows[1].health.as_str(), rows[1].uptime.as_str()), ("none", "-"));
        let table = table(&rows);
        assert!(table.starts_with("SERVICE  CONTAINER"), "{table}");
        assert!(
            table.contains("logbook  logbook-logbook-1  logbook:0123456789ab  running  healthy  4m12s"),
            "{table}"
        );
    }
}

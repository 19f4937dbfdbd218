//! Docker Swarm: `deploy --target swarm`, `rollback --target swarm`, and the live drill.
//!
//! The runner never initialises or leaves a swarm by itself (the drill does so only for a
//! swarm it created, and says so). Updates are Swarm's own rolling updates: start-first,
//! health-gated, rolled back by Swarm when the new task is unhealthy; the runner watches
//! the service's `UpdateStatus` and reports what happened.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use xshell::Shell;

use crate::process::{self, Cmd};
use crate::release::{self, History, Release};
use crate::{docker, http, project, time};

pub const STACK_FILE: &str = "deploy/swarm/stack.yml";
pub const DATA_LABEL: &str = "logbook.data";
pub const DEFAULT_SECRET: &str = "logbook_api_token";

/// One stack: its name and the variables the stack file reads.
#[derive(Debug, Clone)]
pub struct Stack {
    pub name: String,
    pub env: Vec<(String, String)>,
}

impl Stack {
    pub fn new(name: &str) -> Self {
        Stack { name: name.to_owned(), env: Vec::new() }
    }

    pub fn var(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn service(&self) -> String {
        format!("{}_{}", self.name, project::NAME)
    }

    fn setting(&self, key: &str, default: &str) -> String {
        self.env
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(key).ok())
            .unwrap_or_else(|| default.to_owned())
    }

    pub fn port(&self) -> String {
        self.setting("LOGBOOK_HOST_PORT", &project::DEFAULT_HOST_PORT.to_string())
    }

    pub fn secret(&self) -> String {
        self.setting("LOGBOOK_API_TOKEN_SECRET", DEFAULT_SECRET)
    }

    /// `docker stack deploy`. Images without a registry are used as they are on this
    /// engine, instead of being looked up in a registry.
    pub fn deploy(&self, image: &str) -> Cmd {
        let mut cmd = Cmd::new("docker").args(["stack", "deploy", "--compose-file", STACK_FILE]);
        if !image.contains('/') {
            cmd = cmd.args(["--resolve-image", "never"]);
        }
        let mut cmd = cmd.arg(&self.name).env("LOGBOOK_IMAGE", image);
        for (k, v) in &self.env {
            cmd = cmd.env(k, v);
        }
        cmd
    }

    pub fn remove(&self) -> Cmd {
        Cmd::new("docker").args(["stack", "rm", &self.name])
    }
}

/// Fails, with the command that fixes it, unless this engine is a swarm manager with a
/// node labelled for the data and the API token secret in place.
pub fn check_ready(sh: &Shell, stack: &Stack) -> Result<()> {
    let state = process::query(
        sh,
        &Cmd::new("docker").args([
            "info",
            "--format",
            "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
        ]),
    )?;
    if state.trim() != "active true" {
        bail!(
            "this Docker engine is not a swarm manager ({}): run `docker swarm init` here, or deploy from a manager",
            state.trim()
        );
    }
    let labelled = process::query(
        sh,
        &Cmd::new("docker").args([
            "node",
            "ls",
            "--quiet",
            "--filter",
            &format!("node.label={DATA_LABEL}=true"),
        ]),
    )?;
    if labelled.is_empty() {
        bail!(
            "no swarm node is labelled to keep the data: run `docker node update --label-add {DATA_LABEL}=true <node>` for the node that holds the volume"
        );
    }
    let secret = stack.secret();
    if !process::succeeds(sh, &Cmd::new("docker").args(["secret", "inspect", &secret])) {
        bail!(
            "the API token secret is missing: run `printf %s \"$TOKEN\" | docker secret create {secret} -`"
        );
    }
    Ok(())
}

fn service_json(sh: &Shell, stack: &Stack) -> Option<Value> {
    let text = process::query(sh, &Cmd::new("docker").args(["service", "inspect", &stack.service()])).ok()?;
    serde_json::from_str::<Value>(&text).ok().map(|v| v[0].clone())
}

fn service_image(service: &Value) -> Option<String> {
    let image = service["Spec"]["TaskTemplate"]["ContainerSpec"]["Image"].as_str()?;
    // Swarm may append the digest it resolved.
    Some(image.split('@').next().unwrap_or(image).to_owned())
}

/// How an update ended, from the service's `UpdateStatus.State`.
#[derive(Debug, PartialEq, Eq)]
pub enum UpdateOutcome {
    InProgress,
    Completed,
    RolledBack,
    Paused(String),
}

pub fn update_outcome(update_status: &Value) -> UpdateOutcome {
    match update_status["State"].as_str() {
        None | Some("completed") => UpdateOutcome::Completed,
        Some("rollback_completed") => UpdateOutcome::RolledBack,
        Some(state @ ("paused" | "rollback_paused")) => UpdateOutcome::Paused(format!(
            "{state}: {}",
            update_status["Message"].as_str().unwrap_or_default()
        )),
        Some(_) => UpdateOutcome::InProgress,
    }
}

/// Deploys `image` and waits until Swarm has converged and `/readyz` answers 200 through
/// the published port. If Swarm rolls the update back, prints the failed task's logs and
/// fails. Records the release under `history_file`. Returns the address.
pub fn deploy(
    sh: &Shell,
    stack: &Stack,
    history_file: &Path,
    image: &str,
    timeout: Duration,
) -> Result<String> {
    if process::runner().dry_run {
        process::run(sh, &stack.deploy(image))?;
        return Ok("<published address>".into());
    }
    check_ready(sh, stack)?;
    if !docker::image_exists(sh, image) {
        bail!("image {image} does not exist on this engine: build or pull it first; nothing was changed");
    }
    let previous = service_json(sh, stack).and_then(|s| service_image(&s));
    let started = Instant::now();
    let deployed_at = time::now_unix();
    process::run(sh, &stack.deploy(image))?;
    let addr = format!("127.0.0.1:{}", stack.port());
    let ready = || http::get(&addr, "/readyz", Duration::from_secs(2)).is_ok_and(|r| r.status == 200);
    let result =
        process::wait_for(&format!("Swarm to roll out {image}"), timeout, Duration::from_millis(250), || {
            let Some(service) = service_json(sh, stack) else { return Ok(None) };
            let status = &service["UpdateStatus"];
            // An UpdateStatus from before this deploy says nothing about it.
            let started_at = status["StartedAt"].as_str().and_then(time::parse_rfc3339_utc);
            let current = started_at.is_some_and(|t| t >= deployed_at - 2);
            let unchanged = previous.as_deref() == Some(image);
            match update_outcome(status) {
                // A new service, or a deploy that changed nothing: no update will run.
                _ if previous.is_none() || unchanged => Ok(ready().then_some(())),
                // Swarm clears the status until its updater starts; the old task still serves.
                _ if status.is_null() => Ok(None),
                _ if !current => Ok(None),
                UpdateOutcome::RolledBack => Err(anyhow::anyhow!("rolled back")),
                UpdateOutcome::Paused(why) => Err(anyhow::anyhow!("the update paused ({why})")),
                UpdateOutcome::Completed => Ok(ready().then_some(())),
                UpdateOutcome::InProgress => Ok(None),
            }
        });
    if let Err(e) = result {
        let logs = process::query(
            sh,
            &Cmd::new("docker").args(["service", "logs", "--tail", "20", "--no-trunc", &stack.service()]),
        )
        .unwrap_or_default();
        let tasks = process::query(
            sh,
            &Cmd::new("docker").args([
                "service",
                "ps",
                "--no-trunc",
                "--format",
                "{{.Image}} {{.CurrentState}} {{.Error}}",
                &stack.service(),
            ]),
        )
        .unwrap_or_default();
        process::say(&format!(
            "--- tasks of {} ---\n{tasks}\n--- last log lines ---\n{logs}",
            stack.service()
        ));
        match &previous {
            Some(previous) if format!("{e}") == "rolled back" => {
                bail!("{image} did not become healthy; Swarm rolled back to {previous}, which keeps serving")
            }
            _ => return Err(e.context(format!("{image} did not roll out"))),
        }
    }
    process::say(&format!("  rolled out in {:.1}s", started.elapsed().as_secs_f64()));
    let mut history = History::load(history_file)?;
    history.releases.push(Release {
        image: image.to_owned(),
        revision: process::query(
            sh,
            &docker::inspect_format(image, "{{index .Config.Labels \"org.opencontainers.image.revision\"}}"),
        )
        .unwrap_or_default(),
        deployed_at: time::format_rfc3339_utc(time::now_unix()),
        previous,
    });
    history.save(history_file)?;
    Ok(addr)
}

/// The history file for a stack, beside the compose project's.
pub fn history_path(sh: &Shell, stack: &Stack) -> std::path::PathBuf {
    release::history_path(sh, &format!("swarm-{}", stack.name))
}

/// `rollback --target swarm`: the previous release in the swarm history (or `to`).
pub fn rollback(sh: &Shell, stack: &Stack, to: Option<&str>, timeout: Duration) -> Result<String> {
    let history_file = history_path(sh, stack);
    let history = History::load(&history_file)?;
    let running = service_json(sh, stack).and_then(|s| service_image(&s));
    let known = || format!("known releases (newest first):\n{}", history.table(running.as_deref()));
    let target = match to {
        Some(tag) => {
            let image = release::image_name(tag);
            history
                .find(&image)
                .map(|r| r.image.clone())
                .with_context(|| format!("{image} is not in the swarm release history\n{}", known()))?
        }
        None => running
            .as_deref()
            .and_then(|r| history.previous_to(r))
            .map(|r| r.image.clone())
            .with_context(|| format!("there is no earlier swarm release to roll back to\n{}", known()))?,
    };
    deploy(sh, stack, &history_file, &target, timeout)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn deploy_and_remove_commands_are_exact() {
        let stack = Stack::new("logbook").var("LOGBOOK_HOST_PORT", "9000");
        assert_eq!(
            stack.deploy("logbook:abc").to_string(),
            "LOGBOOK_IMAGE=logbook:abc LOGBOOK_HOST_PORT=9000 docker stack deploy --compose-file deploy/swarm/stack.yml --resolve-image never logbook"
        );
        assert!(!stack.deploy("ghcr.io/o/logbook:abc").to_string().contains("--resolve-image"));
        assert_eq!(stack.remove().to_string(), "docker stack rm logbook");
        assert_eq!(stack.service(), "logbook_logbook");
    }

    #[test]
    fn update_status_is_read() {
        assert_eq!(update_outcome(&Value::Null), UpdateOutcome::Completed);
        assert_eq!(update_outcome(&json!({"State": "updating"})), UpdateOutcome::InProgress);
        assert_eq!(update_outcome(&json!({"State": "rollback_started"})), UpdateOutcome::InProgress);
        assert_eq!(update_outcome(&json!({"State": "rollback_completed"})), UpdateOutcome::RolledBack);
        assert!(
            matches!(update_outcome(&json!({"State": "paused", "Message": "task failed"})), UpdateOutcome::Paused(m) if m.contains("task failed"))
        );
        let service =
            json!({"Spec": {"TaskTemplate": {"ContainerSpec": {"Image": "logbook:abc@sha256:0123"}}}});
        assert_eq!(service_image(&service).as_deref(), Some("logbook:abc"));
    }
}

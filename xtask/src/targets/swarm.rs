//! The swarm target: `deploy swarm`, `rollback swarm`, and what the live drill uses.
//!
//! The runner never initialises or leaves a swarm by itself (the drill does so only for a
//! swarm it created, and says so). Updates are Swarm's own rolling updates: start-first,
//! health-gated, rolled back by Swarm when the new task is unhealthy; the runner watches
//! the service's `UpdateStatus` and reports what happened.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use serde_json::Value;
use xshell::Shell;

use crate::outside::process::{self, Cmd};
use crate::outside::{docker, http, proxy};
use crate::project;
use crate::release::{self, History};

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
    let _lock = crate::outside::state::lock(history_file, &crate::outside::state::LockRequest::default())?;
    check_ready(sh, stack)?;
    let proxy_image = proxy::prepare(sh, proxy::from_env).context("nothing was changed")?;
    let mut config = String::new();
    for file in [project::PROXY_CONFIG, project::PROXY_HOLD] {
        config += &sh.read_file(file).with_context(|| format!("cannot read {file}"))?;
    }
    let stack = &stack
        .clone()
        .var("LOGBOOK_PROXY_CONFIG_HASH", &content_hash(&config))
        .var("LOGBOOK_PROXY_IMAGE", &proxy_image);
    if !docker::image_exists(sh, image) {
        bail!("image {image} does not exist on this engine: build or pull it first; nothing was changed");
    }
    let mut history = History::load(history_file)?;
    let running = service_json(sh, stack).and_then(|s| service_image(&s));
    // Swarm restores the old task itself; the plan only says what this one replaces.
    let plan = release::plan_switch(running.as_deref(), &history, image, false);
    let started = Instant::now();
    let deployed_at = SystemTime::now();
    process::run(sh, &stack.deploy(image))?;
    let addr = format!("127.0.0.1:{}", stack.port());
    let unchanged = running.is_none() || running.as_deref() == Some(image);
    let result =
        process::wait_for(&format!("Swarm to roll out {image}"), timeout, Duration::from_millis(250), || {
            let status = service_json(sh, stack).map(|s| s["UpdateStatus"].clone());
            rollout_progress(status.as_ref(), unchanged, deployed_at, || ready(&addr))
        });
    if let Err(e) = process::outcome(result)? {
        print_tasks_and_logs(sh, stack);
        return match &running {
            Some(previous) if e.to_string() == "rolled back" => {
                bail!("{image} did not become healthy; Swarm rolled back to {previous}, which keeps serving")
            }
            _ => Err(e.context(format!("{image} did not roll out"))),
        };
    }
    process::say(&format!("  rolled out in {:.1}s", started.elapsed().as_secs_f64()));
    super::record_serving(sh, &mut history, history_file, image, plan.previous)?;
    Ok(addr)
}

fn ready(addr: &str) -> bool {
    http::get(addr, "/readyz", Duration::from_secs(2)).is_ok_and(|r| r.status == 200)
}

/// One look at a rollout: done (`Some`), still going (`None`), or failed. `status` is the
/// service's `UpdateStatus`; `unchanged` when no update will run (a new service, or the
/// same image again).
fn rollout_progress(
    status: Option<&Value>,
    unchanged: bool,
    deployed_at: SystemTime,
    ready: impl Fn() -> bool,
) -> Result<Option<()>> {
    let Some(status) = status else { return Ok(None) };
    // An UpdateStatus from before this deploy says nothing about it.
    let started_at = status["StartedAt"].as_str().and_then(crate::time::parse_rfc3339);
    let current = started_at.is_some_and(|t| t + Duration::from_secs(2) >= deployed_at);
    match update_outcome(status) {
        _ if unchanged => Ok(ready().then_some(())),
        // Swarm clears the status until its updater starts; the old task still serves.
        _ if status.is_null() || !current => Ok(None),
        UpdateOutcome::RolledBack => Err(anyhow::anyhow!("rolled back")),
        UpdateOutcome::Paused(why) => Err(anyhow::anyhow!("the update paused ({why})")),
        UpdateOutcome::Completed => Ok(ready().then_some(())),
        UpdateOutcome::InProgress => Ok(None),
    }
}

/// The tasks and last log lines of a rollout that failed, for the operator.
fn print_tasks_and_logs(sh: &Shell, stack: &Stack) {
    let service = stack.service();
    let logs = process::query(
        sh,
        &Cmd::new("docker").args(["service", "logs", "--tail", "20", "--no-trunc", &service]),
    );
    let tasks = process::query(
        sh,
        &Cmd::new("docker").args([
            "service",
            "ps",
            "--no-trunc",
            "--format",
            "{{.Image}} {{.CurrentState}} {{.Error}}",
            &service,
        ]),
    );
    process::say(&format!(
        "--- tasks of {service} ---\n{}\n--- last log lines ---\n{}",
        tasks.unwrap_or_default(),
        logs.unwrap_or_default()
    ));
}

/// A short, stable name for a file's content (FNV-1a, 64 bits): Swarm configs cannot
/// change in place, so each version of the proxy's configuration gets its own name.
pub fn content_hash(text: &str) -> String {
    let hash = text
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    format!("{hash:016x}")
}

/// The history file for a stack, beside the compose project's.
pub fn history_path(sh: &Shell, stack: &Stack) -> Result<std::path::PathBuf> {
    crate::outside::state::history_path(sh, &format!("swarm-{}", stack.name), |text| {
        History::parse(text).map(drop)
    })
}

/// `rollback swarm`: the previous release in the swarm history (or `to`).
pub fn rollback(sh: &Shell, stack: &Stack, to: Option<&str>, timeout: Duration) -> Result<String> {
    let history_file = history_path(sh, stack)?;
    let history = History::load(&history_file)?;
    let running = service_json(sh, stack).and_then(|s| service_image(&s));
    let scope = format!("swarm stack {} ({})", stack.name, history_file.display());
    let target =
        history.rollback_target(&scope, running.as_deref(), to, |image| docker::image_exists(sh, image))?;
    deploy(sh, stack, &history_file, &target, timeout)?;
    Ok(target)
}

/// `deploy swarm --remove`: the stack goes; its volume too with `volumes`, once the
/// stack's containers have let go of it.
pub fn remove(sh: &Shell, stack: &Stack, volumes: bool) -> Result<()> {
    process::run(sh, &stack.remove())?;
    if !volumes {
        return Ok(());
    }
    let volume = format!("{}_data", stack.name);
    let remove = Cmd::new("docker").args(["volume", "rm", &volume]);
    // The volume is released only once the stack's containers are gone.
    process::wait_for(
        "the stack's containers to go",
        Duration::from_secs(120),
        Duration::from_millis(500),
        || {
            let gone = !process::succeeds(sh, &Cmd::new("docker").args(["volume", "inspect", &volume]));
            Ok((gone || process::succeeds(sh, &remove)).then_some(()))
        },
    )?;
    process::say(&format!("$ {remove}  (done once the stack's containers had gone)"));
    Ok(())
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
    fn config_names_follow_the_content() {
        assert_eq!(content_hash(""), "cbf29ce484222325");
        assert_eq!(content_hash("a"), "af63dc4c8601ec8c");
        assert_ne!(content_hash("admin off"), content_hash("admin on"));
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

    #[test]
    fn a_rollout_is_judged_only_by_its_own_update() {
        let deployed = crate::time::parse_rfc3339("2026-11-23T10:00:10Z").unwrap();
        let at = |state: &str, started: &str| json!({"State": state, "StartedAt": started, "Message": "m"});
        let (up, down) = (|| true, || false);
        assert_eq!(rollout_progress(None, false, deployed, up).unwrap(), None, "no service yet");
        assert_eq!(rollout_progress(Some(&Value::Null), true, deployed, up).unwrap(), Some(()));
        assert_eq!(rollout_progress(Some(&Value::Null), true, deployed, down).unwrap(), None);
        assert_eq!(
            rollout_progress(Some(&Value::Null), false, deployed, up).unwrap(),
            None,
            "updater not started"
        );
        let stale = at("rollback_completed", "2026-11-23T09:00:00Z");
        assert_eq!(rollout_progress(Some(&stale), false, deployed, up).unwrap(), None, "an older update");
        let rolled_back = at("rollback_completed", "2026-11-23T10:00:11.5Z");
        assert_eq!(
            rollout_progress(Some(&rolled_back), false, deployed, up).unwrap_err().to_string(),
            "rolled back"
        );
        let paused = at("paused", "2026-11-23T10:00:11Z");
        assert!(
            rollout_progress(Some(&paused), false, deployed, up).unwrap_err().to_string().contains("paused")
        );
        let updating = at("updating", "2026-11-23T10:00:11Z");
        assert_eq!(rollout_progress(Some(&updating), false, deployed, up).unwrap(), None);
        let done = at("completed", "2026-11-23T10:00:11Z");
        assert_eq!(rollout_progress(Some(&done), false, deployed, up).unwrap(), Some(()));
        assert_eq!(rollout_progress(Some(&done), false, deployed, down).unwrap(), None, "not ready yet");
    }
}

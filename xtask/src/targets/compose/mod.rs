//! The compose target: the stack on this Docker engine. This file knows the stack (its
//! settings, containers, readiness, and a guard that tears it down); [`switch`] moves it
//! between releases, [`data`] copies its database out and back, and [`monitoring`] adds
//! Prometheus and Grafana beside it.

pub mod data;
pub mod journal;
pub mod monitoring;
pub mod replica;
pub mod schema;
pub mod settings;
pub mod snapshot;
pub mod switch;

use std::net::{IpAddr, TcpListener};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use xshell::Shell;

use crate::outside::docker::{self, Compose, PsEntry};
use crate::outside::http;
use crate::outside::process::{self, Cmd};
use crate::project;

/// This host's app stack: the compose file, the HTTPS file layered on when
/// LOGBOOK_DOMAIN is set (in the environment or `.env`), and the replication file when
/// LOGBOOK_REPLICA_URL is. From the environment only,
/// LOGBOOK_PROJECT names another project (a second stack on one host: staging beside
/// production, a rehearsal) and LOGBOOK_ENV_FILE another settings file than `.env`.
/// With neither LOGBOOK_ENV_FILE nor a `.env` here, the settings the stack was last
/// switched with, from its state on the host ([`settings`]).
pub fn stack(sh: &Shell, program: docker::ComposeProgram) -> Compose {
    let mut compose = Compose::app(program);
    if let Some(project) = std::env::var("LOGBOOK_PROJECT").ok().filter(|p| !p.is_empty()) {
        compose = compose.project(&project);
    }
    compose.env_file = std::env::var("LOGBOOK_ENV_FILE").ok().filter(|f| !f.is_empty());
    if compose.env_file.is_none() {
        let has_dotenv = sh.current_dir().join(".env").is_file();
        let recorded = history_path(sh, &compose).ok().map(|h| settings::path(&h));
        if let Some(file) = recorded.and_then(|r| settings::fallback(has_dotenv, &r)) {
            process::say(&format!(
                "no .env here: using the settings project {} was last switched with ({})",
                compose.project,
                file.display()
            ));
            compose.env_file = Some(file.display().to_string());
        }
    }
    if !setting(sh, &compose, "LOGBOOK_DOMAIN", "").is_empty() {
        compose = compose.with_file(project::TLS_COMPOSE_FILE);
    }
    if !setting(sh, &compose, replica::URL_VAR, "").is_empty() {
        compose = compose.with_file(project::REPLICA_COMPOSE_FILE);
    }
    if exposure(sh, &compose) == Exposure::LoopbackOnly {
        compose = compose.var(ALLOW_UNAUTHENTICATED_VAR, "1");
    }
    compose
}

/// A variable as `compose` will see it: set on the command, else in the environment, else
/// in `.env` (or the compose project's own env file), else `default`.
pub fn setting(sh: &Shell, compose: &Compose, key: &str, default: &str) -> String {
    if let Some((_, value)) = compose.env.iter().find(|(k, _)| k == key) {
        return value.clone();
    }
    if let Ok(value) = std::env::var(key) {
        return value;
    }
    let dotenv = sh.read_file(compose.env_file.as_deref().unwrap_or(".env")).unwrap_or_default();
    dotenv
        .lines()
        .filter_map(|l| l.trim().split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().trim_matches(|c| c == '"' || c == '\'').to_owned())
        .unwrap_or_else(|| default.to_owned())
}

/// The variable that lets the service take writes without a token.
pub const ALLOW_UNAUTHENTICATED_VAR: &str = "LOGBOOK_ALLOW_UNAUTHENTICATED";

/// Who may write, as the stack is published. Without a token, the service takes writes
/// only when told so, and the runner tells it so only while the proxy publishes on
/// loopback alone (then only this host's users reach it). Published further (a
/// non-loopback LOGBOOK_HOST_BIND, or a domain) without a token, the switch is refused,
/// unless the user set LOGBOOK_ALLOW_UNAUTHENTICATED=1 themselves.
#[derive(Debug, PartialEq, Eq)]
pub enum Exposure {
    /// A token guards writes, or the user chose open writes: nothing to add.
    AsSet,
    /// Loopback alone and no token: the runner allows writes without one.
    LoopbackOnly,
    /// Published beyond loopback with no token: refused, with this line.
    Refused(String),
}

pub fn exposure(sh: &Shell, compose: &Compose) -> Exposure {
    let get = |key: &str| setting(sh, compose, key, "");
    exposure_of(
        &get("LOGBOOK_HOST_BIND"),
        &get("LOGBOOK_DOMAIN"),
        !get("LOGBOOK_API_TOKEN").trim().is_empty() || !get("LOGBOOK_API_TOKEN_FILE").trim().is_empty(),
        &get(ALLOW_UNAUTHENTICATED_VAR),
    )
}

fn exposure_of(host_bind: &str, domain: &str, has_token: bool, allow: &str) -> Exposure {
    let loopback = host_bind.is_empty() || host_bind.starts_with("127.") || host_bind == "::1";
    if has_token || matches!(allow.trim(), "1" | "true") {
        return Exposure::AsSet;
    }
    if loopback && domain.is_empty() {
        return Exposure::LoopbackOnly;
    }
    let reach = if domain.is_empty() { format!("on {host_bind}") } else { format!("as {domain}") };
    Exposure::Refused(format!(
        "refusing to publish the service {reach} without a token, where anyone who reaches it could append: \
         set LOGBOOK_API_TOKEN (or LOGBOOK_API_TOKEN_FILE), or LOGBOOK_ALLOW_UNAUTHENTICATED=1 if that is \
         intended; nothing was changed"
    ))
}

/// Fails, naming the port and the variable, when something else holds the host port that
/// `compose` would publish.
pub fn ensure_host_port_free(sh: &Shell, compose: &Compose) -> Result<()> {
    let bind = setting(sh, compose, "LOGBOOK_HOST_BIND", "127.0.0.1");
    let port = setting(sh, compose, "LOGBOOK_HOST_PORT", &project::DEFAULT_HOST_PORT.to_string());
    let port: u16 =
        port.parse().map_err(|_| anyhow::anyhow!("LOGBOOK_HOST_PORT={port} is not a port number"))?;
    ensure_port_free(&bind, port)
}

fn ensure_port_free(bind: &str, port: u16) -> Result<()> {
    let ip: IpAddr =
        bind.parse().with_context(|| format!("LOGBOOK_HOST_BIND={bind} is not an IP address"))?;
    if TcpListener::bind((ip, port)).is_err() {
        bail!(
            "host port {bind}:{port} is already in use: set LOGBOOK_HOST_PORT to a free port (in the environment or .env)"
        );
    }
    Ok(())
}

pub fn containers(sh: &Shell, compose: &Compose) -> Result<Vec<PsEntry>> {
    docker::parse_ps(&process::query(sh, &compose.ps_json())?)
}

/// [`containers`], read to see what the commands above started: a dry run ends here.
pub fn containers_started(sh: &Shell, compose: &Compose) -> Result<Vec<PsEntry>> {
    docker::parse_ps(&process::observe(sh, &compose.ps_json())?)
}

/// The service's container id, if it exists: the running one, if any.
pub fn container_id(sh: &Shell, compose: &Compose) -> Result<Option<String>> {
    Ok(service_container(containers(sh, compose)?))
}

/// Of a project's containers, the service's: the running one, if any.
pub fn service_container(containers: Vec<PsEntry>) -> Option<String> {
    let mut service: Vec<PsEntry> = containers.into_iter().filter(|c| c.service == project::NAME).collect();
    service.sort_by_key(|c| c.state != "running");
    service.into_iter().next().map(|c| c.id)
}

/// The running service container and its image, if there is one.
pub fn running(sh: &Shell, compose: &Compose) -> Result<Option<(String, String)>> {
    let found =
        containers(sh, compose)?.into_iter().find(|c| c.service == project::NAME && c.state == "running");
    match found {
        Some(c) => {
            let image = process::query(sh, &docker::inspect_format(&c.id, "{{.Config.Image}}"))?;
            Ok(Some((c.id, image)))
        }
        None => Ok(None),
    }
}

/// The image the service container runs now, if it runs.
pub fn running_image(sh: &Shell, compose: &Compose) -> Result<Option<String>> {
    Ok(running(sh, compose)?.map(|(_, image)| image))
}

/// Whether the proxy, which holds the published port, runs.
pub fn proxy_running(sh: &Shell, compose: &Compose) -> Result<bool> {
    Ok(containers(sh, compose)?.iter().any(|c| c.service == project::PROXY_SERVICE && c.state == "running"))
}

/// Takes the project's lock, then repairs a switch that an interruption left unfinished
/// (the journal), so the command starts from exactly one serving release.
pub fn lock_and_repair(
    sh: &Shell,
    compose: &Compose,
    history_file: &std::path::Path,
    request: &crate::outside::state::LockRequest,
    timeout: Duration,
) -> Result<crate::outside::state::StackLock> {
    let lock = crate::outside::state::lock(history_file, request)?;
    journal::repair(sh, compose, history_file, timeout)?;
    Ok(lock)
}

/// The release history of `compose`'s project, in the stack's state on this host.
pub fn history_path(sh: &Shell, compose: &Compose) -> Result<std::path::PathBuf> {
    crate::outside::state::history_path(sh, &compose.project, |text| {
        crate::release::History::parse(text).map(drop)
    })
}

/// `host:port` where the proxy publishes the service, as Compose reports it.
pub fn published_addr(sh: &Shell, compose: &Compose) -> Result<String> {
    // It reads what `up` started.
    let mapping = process::observe(sh, &compose.port(project::PROXY_SERVICE, project::PROXY_PORT))?;
    let (host, port) =
        mapping.rsplit_once(':').with_context(|| format!("unexpected port mapping {mapping:?}"))?;
    let host = match host {
        "0.0.0.0" | "" => "127.0.0.1",
        "[::]" | "::" => "[::1]",
        other => other,
    };
    Ok(format!("{host}:{port}"))
}

/// Polls `/readyz` through the proxy until it answers 200, and returns the published
/// address. Fails early, with the last log lines, if the service container exits or
/// restarts, and at `timeout` otherwise.
pub fn wait_ready(sh: &Shell, compose: &Compose, timeout: Duration) -> Result<String> {
    let mut last_state_check = Instant::now();
    let mut addr = None;
    let waited = process::wait_for("the service to be ready", timeout, Duration::from_millis(100), || {
        // Known once the container runs; a container that died early never publishes it.
        if addr.is_none() {
            addr = published_addr(sh, compose).ok();
        }
        if let Some(addr) = &addr
            && http::get(addr, "/readyz", Duration::from_secs(2)).is_ok_and(|r| r.status == 200)
        {
            return Ok(Some(addr.clone()));
        }
        if last_state_check.elapsed() >= Duration::from_millis(500) {
            last_state_check = Instant::now();
            let service: Vec<PsEntry> =
                containers(sh, compose)?.into_iter().filter(|c| c.service == project::NAME).collect();
            if !service.is_empty() && service.iter().all(|c| c.state != "running") {
                let c = &service[0];
                match c.state.as_str() {
                    "restarting" => bail!("the container keeps exiting and restarting"),
                    state => bail!("the container is {state} (exit code {})", c.exit_code),
                }
            }
        }
        Ok(None)
    });
    process::outcome(waited)?.map_err(|e| {
        let logs =
            process::query(sh, &compose.logs(Some(project::NAME), false, Some(15))).unwrap_or_default();
        anyhow::anyhow!("{} did not become ready: {e:#}\nlast log lines:\n{logs}", project::NAME)
    })
}

/// Prints what an operator needs when a stack is unhealthy: recent logs and the health log.
pub fn diagnose(sh: &Shell, compose: &Compose) {
    process::say(&format!("--- last log lines of project {} ---", compose.project));
    let _ = process::run_cleanup(sh, &compose.logs(None, false, Some(50)));
    if let Ok(Some(id)) = container_id(sh, compose) {
        let health =
            process::query(sh, &docker::inspect_format(&id, "{{json .State.Health}}")).unwrap_or_default();
        process::say(&format!("--- health log ---\n{health}"));
    }
}

/// What a [`StackGuard`] does when dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDrop {
    /// On failure only: print diagnostics and stop the stack, keeping its volumes.
    DownIfFailed,
    /// On failure only: print diagnostics; leave the stack as it is.
    DiagnoseIfFailed,
    /// Always remove the stack and its volumes; print diagnostics first on failure.
    /// Only for throwaway projects (smoke tests).
    RemoveWithVolumes,
}

/// Tears down or explains a stack however the code leaves scope: errors, panics and
/// interrupts included. Call [`StackGuard::succeeded`] on the success path.
pub struct StackGuard<'a> {
    sh: &'a Shell,
    compose: Compose,
    on_drop: OnDrop,
    failed: bool,
    extra_images: Vec<String>,
    /// Nothing to explain or remove unless a change was made since it was armed.
    armed: process::ChangeMark,
}

impl<'a> StackGuard<'a> {
    pub fn new(sh: &'a Shell, compose: &Compose, on_drop: OnDrop) -> Self {
        StackGuard {
            sh,
            compose: compose.clone(),
            on_drop,
            failed: true,
            extra_images: Vec::new(),
            armed: process::ChangeMark::now(),
        }
    }

    /// An image to remove with the stack (throwaway test images).
    pub fn remove_image(&mut self, image: &str) {
        self.extra_images.push(image.to_owned());
    }

    pub fn succeeded(mut self) {
        self.failed = false;
    }
}

impl Drop for StackGuard<'_> {
    fn drop(&mut self) {
        if !self.armed.changed_since() {
            return;
        }
        if self.failed {
            diagnose(self.sh, &self.compose);
        }
        let down = match self.on_drop {
            OnDrop::RemoveWithVolumes => Some(self.compose.down(true)),
            OnDrop::DownIfFailed if self.failed => Some(self.compose.down(false)),
            _ => None,
        };
        if let Some(Err(e)) = down.map(|down| process::run_cleanup(self.sh, &down)) {
            process::say(&format!("cleanup failed: {e:#}"));
        }
        for image in &self.extra_images {
            let _ =
                process::run_cleanup(self.sh, &Cmd::new("docker").args(["image", "rm", "--force", image]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_named_with_its_variable() {
        let held = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let err = ensure_port_free("127.0.0.1", port).unwrap_err().to_string();
        assert!(err.contains(&port.to_string()) && err.contains("LOGBOOK_HOST_PORT"), "{err}");
        drop(held);
        ensure_port_free("127.0.0.1", port).unwrap();
        assert!(ensure_port_free("localhost", port).is_err());
    }

    #[test]
    fn publishing_writes_beyond_loopback_without_a_token_is_refused() {
        assert_eq!(exposure_of("", "", false, ""), Exposure::LoopbackOnly, "the default: loopback");
        assert_eq!(exposure_of("127.0.0.1", "", false, ""), Exposure::LoopbackOnly);
        assert_eq!(exposure_of("::1", "", false, ""), Exposure::LoopbackOnly);
        let Exposure::Refused(wide) = exposure_of("0.0.0.0", "", false, "") else { panic!("not refused") };
        assert!(wide.contains("on 0.0.0.0") && wide.contains("LOGBOOK_API_TOKEN"), "{wide}");
        let Exposure::Refused(domain) = exposure_of("", "logbook.example.com", false, "") else {
            panic!("a domain without a token is not refused")
        };
        assert!(
            domain.contains("as logbook.example.com") && domain.ends_with("nothing was changed"),
            "{domain}"
        );
        assert_eq!(exposure_of("0.0.0.0", "", true, ""), Exposure::AsSet, "a token");
        assert_eq!(exposure_of("0.0.0.0", "", false, "1"), Exposure::AsSet, "chosen explicitly");
        assert!(matches!(exposure_of("0.0.0.0", "", false, "0"), Exposure::Refused(_)), "0 is no choice");
        assert_eq!(exposure_of("127.0.0.1", "", true, ""), Exposure::AsSet, "a token on loopback");
    }

    #[test]
    fn settings_come_from_the_environment_then_dotenv() {
        let sh = Shell::new().unwrap();
        let dir = sh.create_temp_dir().unwrap();
        sh.change_dir(dir.path());
        sh.write_file(".env", "# comment\nLOGBOOK_TEST_ONLY_SETTING = \"9191\"\n").unwrap();
        let compose = Compose::app(docker::ComposeProgram(vec!["docker".into(), "compose".into()]));
        assert_eq!(setting(&sh, &compose, "LOGBOOK_TEST_ONLY_SETTING", "1"), "9191");
        assert_eq!(setting(&sh, &compose, "LOGBOOK_TEST_ONLY_ABSENT", "8080"), "8080");
        let compose = compose.var("LOGBOOK_TEST_ONLY_SETTING", "7070");
        assert_eq!(setting(&sh, &compose, "LOGBOOK_TEST_ONLY_SETTING", "1"), "7070");
    }
}

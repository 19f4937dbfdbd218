//! `cargo xtask smoke`: the image, proven on a real engine in a fresh, isolated stack.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use xshell::Shell;

use crate::docker::{self, Compose};
use crate::flags::Smoke;
use crate::process::{self, Cmd};
use crate::stack::{self, OnDrop, StackGuard};
use crate::{http, project};

const TIMEOUT: Duration = Duration::from_secs(5);

impl Smoke {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let program = docker::connect(sh)?;
        let image = match &self.tag {
            Some(tag) => stack::resolve_image(sh, tag)?,
            None => stack::ensure_image(sh, self.no_build)?,
        };
        let compose = isolated(program.clone(), &format!("{}-smoke-{}", project::NAME, std::process::id()))?
            .var("LOGBOOK_IMAGE", &image);
        if process::runner().dry_run {
            process::run(sh, &compose.up())?;
            return Ok(());
        }
        let started = Instant::now();
        let guard = StackGuard::new(sh, &compose, OnDrop::RemoveWithVolumes);
        let mut checks = Checks::default();
        run_checks(sh, &compose, &image, &mut checks)?;
        checks.run("a broken image fails to come up within the deadline, with its logs shown", || {
            broken_image_is_refused(sh, program, &image)
        })?;
        guard.succeeded();
        process::result(&format!(
            "smoke: all {} checks passed in {:.1}s",
            checks.passed,
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }
}

/// A throwaway project: its own name, volume and free loopback port, and no `.env`
/// (neither for the compose file's variables nor for the service's environment).
pub fn isolated(program: docker::ComposeProgram, name: &str) -> Result<Compose> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port().to_string();
    let mut compose = Compose::app(program);
    compose.env_file = Some("/dev/null".into());
    Ok(compose
        .project(name)
        .var("LOGBOOK_HOST_BIND", "127.0.0.1")
        .var("LOGBOOK_HOST_PORT", &port)
        .var("LOGBOOK_ENV_FILE", "/dev/null"))
}

/// Prints one PASS or FAIL line per check, as it happens; stops at the first failure.
#[derive(Default)]
pub struct Checks {
    pub passed: usize,
}

impl Checks {
    pub fn run(&mut self, name: &str, check: impl FnOnce() -> Result<()>) -> Result<()> {
        match check() {
            Ok(()) => {
                self.passed += 1;
                process::result(&format!("PASS  {name}"));
                Ok(())
            }
            Err(e) => {
                process::result(&format!("FAIL  {name}: {e:#}"));
                Err(e.context(format!("smoke check failed: {name}")))
            }
        }
    }
}

fn run_checks(sh: &Shell, compose: &Compose, image: &str, checks: &mut Checks) -> Result<()> {
    process::run(sh, &compose.up())?;
    let container = stack::container_id(sh, compose)?.context("the service container was not created")?;

    let addr = checks.run_value("/healthz and /readyz answer 200", || {
        let addr = stack::wait_ready(sh, compose, Duration::from_secs(30))?;
        expect_status(&addr, "/healthz", 200)?;
        Ok(addr)
    })?;
    checks.run("/version reports the image's git revision", || {
        let label = process::query(
            sh,
            &docker::inspect_format(image, "{{index .Config.Labels \"org.opencontainers.image.revision\"}}"),
        )?;
        let version: serde_json::Value = serde_json::from_str(&http::get(&addr, "/version", TIMEOUT)?.body)?;
        ensure!(
            version["revision"] == label.as_str(),
            "/version says {}, the image label says {label}",
            version["revision"]
        );
        ensure!(label != "unknown" && !label.is_empty(), "the image carries no revision");
        Ok(())
    })?;
    let text = format!("smoke entry {}", std::process::id());
    let id = checks.run_value("a write then a read round-trips", || {
        let created = http::post_json(&addr, "/api/entries", &format!(r#"{{"text":"{text}"}}"#), TIMEOUT)?;
        ensure!(created.status == 201, "POST answered {}: {}", created.status, created.body);
        let id = serde_json::from_str::<serde_json::Value>(&created.body)?["id"]
            .as_i64()
            .context("no id in the answer")?;
        expect_entry(&addr, id, &text)?;
        Ok(id)
    })?;
    checks.run("/metrics counts the requests", || {
        let metrics = http::get(&addr, "/metrics", TIMEOUT)?.body;
        let needle = r#"logbook_http_requests_total{method="POST",route="/api/entries",status="201"} 1"#;
        ensure!(metrics.contains(needle), "no `{needle}` in /metrics");
        ensure!(metrics.contains("logbook_entries_appended_total 1"), "appends not counted");
        Ok(())
    })?;
    checks.run("the entry survives `docker compose restart`", || {
        process::run(sh, &compose.restart(project::NAME))?;
        let addr = stack::wait_ready(sh, compose, Duration::from_secs(30))?;
        expect_entry(&addr, id, &text)
    })?;
    checks.run("the service runs as a non-root user", || {
        let user = process::query(sh, &docker::inspect_format(&container, "{{.Config.User}}"))?;
        ensure!(
            !user.is_empty() && !user.starts_with("0") && !user.starts_with("root"),
            "configured user is {user:?}"
        );
        // The host's view of the running processes: proof beyond the image's configuration.
        let top = process::query(sh, &Cmd::new("docker").args(["top", &container, "-o", "pid,uid"]))?;
        let uids: Vec<&str> = top.lines().skip(1).filter_map(|l| l.split_whitespace().nth(1)).collect();
        ensure!(!uids.is_empty() && uids.iter().all(|u| *u != "0"), "process UIDs {uids:?}");
        Ok(())
    })?;
    checks.run("read-only root, all capabilities dropped, no-new-privileges", || {
        let host = process::query(
            sh,
            &docker::inspect_format(&container, "{{.HostConfig.ReadonlyRootfs}} {{json .HostConfig.CapDrop}} {{json .HostConfig.SecurityOpt}} {{.State.Pid}}"),
        )?;
        let words: Vec<&str> = host.split_whitespace().collect();
        ensure!(words.first() == Some(&"true"), "the root filesystem is writable: {host}");
        ensure!(host.contains("\"ALL\""), "capabilities are not all dropped: {host}");
        ensure!(host.contains("no-new-privileges"), "no-new-privileges is not set: {host}");
        // The kernel's own view of the process, where the host can see it (not through a VM).
        if let Some(status) = words.last().and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok()) {
            let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).unwrap_or("?").to_owned();
            ensure!(field("CapEff:") == "0000000000000000", "effective capabilities {}", field("CapEff:"));
            ensure!(field("NoNewPrivs:") == "1", "NoNewPrivs is {}", field("NoNewPrivs:"));
        }
        Ok(())
    })?;
    checks.run("writes outside /data and /tmp fail", || {
        let backup_to =
            |path: &str| Cmd::new("docker").args(["exec", &container, "/logbook", "backup", "--to", path]);
        for denied in ["/etc/probe.db", "/probe.db"] {
            match process::query(sh, &backup_to(denied)) {
                Ok(_) => bail!("wrote {denied}"),
                Err(e) => ensure!(format!("{e:#}").contains("Read-only file system"), "{denied}: {e:#}"),
            }
        }
        for allowed in ["/tmp/probe.db", "/data/probe.db"] {
            process::query(sh, &backup_to(allowed)).with_context(|| format!("cannot write {allowed}"))?;
        }
        Ok(())
    })?;
    checks.run("Docker's health status reaches healthy", || {
        process::wait_for(
            "Docker's health status",
            Duration::from_secs(45),
            Duration::from_millis(250),
            || {
                let status =
                    process::query(sh, &docker::inspect_format(&container, "{{.State.Health.Status}}"))?;
                Ok((status == "healthy").then_some(()))
            },
        )
    })?;
    checks.run("`docker stop` drains gracefully and exits 0 within the grace period", || {
        let started = Instant::now();
        process::run(sh, &Cmd::new("docker").args(["stop", &container]))?;
        let took = started.elapsed();
        let exit = process::query(sh, &docker::inspect_format(&container, "{{.State.ExitCode}}"))?;
        ensure!(exit == "0", "exit code {exit} after {took:?}");
        let logs = process::query(sh, &Cmd::new("docker").args(["logs", "--tail", "5", &container]))?;
        ensure!(logs.contains("shutdown complete"), "no graceful drain in the log:\n{logs}");
        process::say(&format!("  stopped in {} ms", took.as_millis()));
        Ok(())
    })
}

impl Checks {
    pub fn run_value<T>(&mut self, name: &str, check: impl FnOnce() -> Result<T>) -> Result<T> {
        let mut value = None;
        self.run(name, || {
            value = Some(check()?);
            Ok(())
        })?;
        value.context("check produced no value")
    }
}

fn expect_status(addr: &str, path: &str, status: u16) -> Result<()> {
    let response = http::get(addr, path, TIMEOUT)?;
    ensure!(response.status == status, "{path} answered {}: {}", response.status, response.body);
    Ok(())
}

/// `/version` reports `revision`.
pub fn expect_revision(addr: &str, revision: &str) -> Result<()> {
    let version: serde_json::Value = serde_json::from_str(&http::get(addr, "/version", TIMEOUT)?.body)?;
    ensure!(version["revision"] == revision, "/version reports {}, expected {revision}", version["revision"]);
    Ok(())
}

pub fn expect_entry(addr: &str, id: i64, text: &str) -> Result<()> {
    let response = http::get(addr, &format!("/api/entries/{id}"), TIMEOUT)?;
    ensure!(response.status == 200, "entry {id}: {} {}", response.status, response.body);
    let entry: serde_json::Value = serde_json::from_str(&response.body)?;
    ensure!(entry["text"] == text, "entry {id} reads back as {}", entry["text"]);
    Ok(())
}

/// An image whose configuration is invalid must make `up` fail fast, naming the cause.
fn broken_image_is_refused(sh: &Shell, program: docker::ComposeProgram, image: &str) -> Result<()> {
    let broken = format!("{}-smoke-broken:{}", project::NAME, std::process::id());
    let dir = sh.create_temp_dir()?;
    let compose = isolated(program, &format!("{}-smoke-broken-{}", project::NAME, std::process::id()))?;
    let mut guard = StackGuard::new(sh, &compose, OnDrop::RemoveWithVolumes);
    guard.remove_image(&broken);
    docker::build_broken_image(sh, image, &broken)?;
    let started = Instant::now();
    let deadline = Duration::from_secs(30);
    let history = dir.path().join("releases.json");
    let gate = crate::release::Gate { timeout: deadline, restore_previous: false };
    let result = crate::release::deploy(sh, &compose, &history, &broken, gate);
    let took = started.elapsed();
    guard.succeeded();
    match result {
        Ok(_) => bail!("the broken image came up"),
        Err(e) => {
            let message = format!("{e:#}");
            ensure!(took < deadline + Duration::from_secs(5), "failing took {took:?}");
            ensure!(
                message.contains(docker::BROKEN_SETTING),
                "the error does not show the cause:\n{message}"
            );
            process::say(&format!(
                "  refused in {:.1}s: {}",
                took.as_secs_f64(),
                message.lines().next().unwrap_or_default()
            ));
            Ok(())
        }
    }
}

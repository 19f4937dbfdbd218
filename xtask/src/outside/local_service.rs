//! The service run straight from cargo's build, on loopback: for the checks that need a
//! real process but no Docker (lint's metrics check, bench).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use xshell::Shell;

use super::process::{self, Cmd};
use super::{http, tools};

/// The service binary from this workspace, run on a free loopback port with a fresh
/// database and only the settings given here (the caller's LOGBOOK_* are left out: a token
/// would turn every POST into a 401). Killed when dropped.
pub struct LocalService {
    handle: duct::Handle,
    pub addr: String,
    pub started: Instant,
}

/// Which build of the service to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Debug,
    Release,
}

impl LocalService {
    /// Starts `target/<profile>/logbook` with its database in `dir` and its output in
    /// `dir/server.log`, and waits until `/readyz` answers 200.
    pub fn start(sh: &Shell, profile: Profile, dir: &Path) -> Result<Self> {
        Self::start_with(sh, profile, dir, &[])
    }

    /// [`LocalService::start`] with extra settings.
    pub fn start_with(sh: &Shell, profile: Profile, dir: &Path, settings: &[(&str, &str)]) -> Result<Self> {
        let binary = tools::target_dir(sh).join(match profile {
            Profile::Debug => "debug/logbook",
            Profile::Release => "release/logbook",
        });
        let port = http::free_port()?;
        process::needs_effects("start the service built above")?;
        let mut service = duct::cmd(&binary, Vec::<String>::new());
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("LOGBOOK_")) {
            service = service.env_remove(key);
        }
        for (key, value) in settings {
            service = service.env(key, value);
        }
        let started = Instant::now();
        let handle = service
            .env("LOGBOOK_BIND", "127.0.0.1")
            .env("LOGBOOK_PORT", port.to_string())
            .env("LOGBOOK_DB_PATH", dir.join("logbook.db"))
            .stdout_path(dir.join("server.log"))
            .stderr_to_stdout()
            .unchecked()
            .start()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let service = LocalService { handle, addr: format!("127.0.0.1:{port}"), started };
        wait_ready_at(&service.addr, "the service to be ready")?;
        Ok(service)
    }

    pub fn pid(&self) -> Result<u32> {
        self.handle.pids().first().copied().context("the service has no pid")
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&self, sh: &Shell, timeout: Duration) -> Result<std::process::ExitStatus> {
        process::run(sh, &Cmd::new("kill").args(["-TERM", &self.pid()?.to_string()]))?;
        process::wait_for("the service to exit", timeout, Duration::from_millis(1), || {
            Ok(self.handle.try_wait()?.map(|output| output.status))
        })
    }
}

/// Polls `addr`'s `/readyz` until it answers 200, for up to 20 s.
pub fn wait_ready_at(addr: &str, what: &str) -> Result<()> {
    process::wait_for(what, Duration::from_secs(20), Duration::from_millis(2), || {
        Ok(http::get(addr, "/readyz", Duration::from_secs(1)).is_ok_and(|r| r.status == 200).then_some(()))
    })
}

impl Drop for LocalService {
    fn drop(&mut self) {
        let _ = self.handle.kill();
    }
}

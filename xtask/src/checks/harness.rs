//! What every check and drill shares: PASS/FAIL reporting, throwaway compose projects,
//! expectations on the running service, and the service run locally from cargo's build.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;
use xshell::Shell;

use crate::outside::docker::{self, Compose};
use crate::outside::process::{self, Cmd};
use crate::outside::{http, tools};
use crate::project;

/// How long a single request to the service under test may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Prints one PASS or FAIL line per check, as it happens.
pub struct Checks {
    passed: Vec<String>,
    failed: Vec<String>,
    /// Stop at the first failure (drills, whose steps build on each other), or run every
    /// check and report all failures at the end (lint, audit).
    stop_at_first: bool,
}

impl Checks {
    /// For steps that build on each other: the first failure ends the run.
    pub fn stop_at_first() -> Self {
        Checks { passed: Vec::new(), failed: Vec::new(), stop_at_first: true }
    }

    /// For independent checks: every one runs; [`Checks::finish`] fails if any did.
    pub fn keep_going() -> Self {
        Checks { passed: Vec::new(), failed: Vec::new(), stop_at_first: false }
    }

    pub fn run(&mut self, name: &str, check: impl FnOnce() -> Result<()>) -> Result<()> {
        self.run_value(name, check).map(|_| ())
    }

    /// Runs a check that yields a value for the next ones. With `keep_going`, a failed
    /// check yields `None` and the run goes on.
    pub fn run_value<T>(&mut self, name: &str, check: impl FnOnce() -> Result<T>) -> Result<Option<T>> {
        match check() {
            Ok(value) => {
                self.passed.push(name.to_owned());
                process::result(&format!("PASS  {name}"));
                Ok(Some(value))
            }
            // A dry run ending is not a failed check.
            Err(e) if process::is_dry_run_end(&e) => Err(e),
            Err(e) => {
                process::result(&format!("FAIL  {name}: {e:#}"));
                self.failed.push(name.to_owned());
                if self.stop_at_first { Err(e.context(format!("check failed: {name}"))) } else { Ok(None) }
            }
        }
    }

    /// [`Checks::run_value`] for steps whose value the next ones need.
    pub fn step<T>(&mut self, name: &str, check: impl FnOnce() -> Result<T>) -> Result<T> {
        self.run_value(name, check)?.with_context(|| format!("check failed: {name}"))
    }

    /// A check that cannot run here, said so plainly.
    pub fn skip(&mut self, name: &str, why: &str) {
        process::result(&format!("SKIP  {name}: {why}"));
    }

    pub fn passed(&self) -> usize {
        self.passed.len()
    }

    /// The names of the checks that passed, in order.
    pub fn passes(&self) -> &[String] {
        &self.passed
    }

    /// The names of the checks that failed, in order.
    pub fn failures(&self) -> &[String] {
        &self.failed
    }

    /// Ok with the number passed, or an error naming every failed check.
    pub fn finish(self, what: &str) -> Result<usize> {
        if !self.failures().is_empty() {
            bail!("{what} failed: {}", self.failures().join("; "));
        }
        Ok(self.passed.len())
    }
}

/// A throwaway project named `logbook-<kind>-<pid>`: its own volume and free loopback
/// port, and no `.env` (neither for the compose file's variables nor for the service).
pub fn throwaway_project(program: docker::ComposeProgram, kind: &str) -> Result<Compose> {
    let port = http::free_port()?.to_string();
    let mut compose = Compose::app(program);
    compose.env_file = Some("/dev/null".into());
    Ok(compose
        .project(&format!("{}-{kind}-{}", project::NAME, std::process::id()))
        .var("LOGBOOK_HOST_BIND", "127.0.0.1")
        .var("LOGBOOK_HOST_PORT", &port)
        .var("LOGBOOK_ENV_FILE", "/dev/null"))
}

pub fn expect_status(addr: &str, path: &str, status: u16) -> Result<()> {
    let response = http::get(addr, path, REQUEST_TIMEOUT)?;
    ensure!(response.status == status, "{path} answered {}: {}", response.status, response.body);
    Ok(())
}

#[derive(Deserialize)]
struct Version {
    revision: String,
}

/// `/version` reports `revision`.
pub fn expect_revision(addr: &str, revision: &str) -> Result<()> {
    let version: Version = serde_json::from_str(&http::get(addr, "/version", REQUEST_TIMEOUT)?.body)?;
    ensure!(version.revision == revision, "/version reports {}, expected {revision}", version.revision);
    Ok(())
}

#[derive(Debug, Deserialize)]
pub struct Entry {
    pub id: i64,
    pub text: String,
}

#[derive(Deserialize)]
struct Page {
    entries: Vec<Entry>,
}

pub fn expect_entry(addr: &str, id: i64, text: &str) -> Result<()> {
    let response = http::get(addr, &format!("/api/entries/{id}"), REQUEST_TIMEOUT)?;
    ensure!(response.status == 200, "entry {id}: {} {}", response.status, response.body);
    let entry: Entry = serde_json::from_str(&response.body)?;
    ensure!(entry.text == text, "entry {id} reads back as {:?}", entry.text);
    Ok(())
}

/// Exactly entries 1..=count, entry `i` reading `text(i)`.
pub fn expect_entries(addr: &str, count: i64, text: impl Fn(i64) -> String) -> Result<()> {
    let page: Page = serde_json::from_str(&http::get(addr, "/api/entries?limit=500", REQUEST_TIMEOUT)?.body)?;
    let ids: Vec<i64> = page.entries.iter().map(|e| e.id).collect();
    ensure!(ids == (1..=count).collect::<Vec<_>>(), "expected entries 1..={count}, found {ids:?}");
    for entry in &page.entries {
        ensure!(
            entry.text == text(entry.id),
            "entry {} reads {:?}, expected {:?}",
            entry.id,
            entry.text,
            text(entry.id)
        );
    }
    Ok(())
}

/// Appends an entry, optionally with a bearer token; the new id.
pub fn append(addr: &str, text: &str, token: Option<&str>) -> Result<i64> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let body = serde_json::json!({ "text": text }).to_string();
    let created =
        http::request_with_headers(addr, "POST", "/api/entries", &headers, Some(&body), REQUEST_TIMEOUT)?;
    ensure!(created.status == 201, "POST answered {}: {}", created.status, created.body);
    Ok(serde_json::from_str::<Entry>(&created.body)?.id)
}

/// The service binary from this workspace, run on a free loopback port with a fresh
/// database and only the settings given here (the caller's LOGBOOK_* are left out: a token
/// would turn every POST into a 401). Killed when dropped.
pub struct LocalService {
    handle: duct::Handle,
    pub addr: String,
    pub started: std::time::Instant,
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
        let started = std::time::Instant::now();
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
        process::wait_for(
            "the service to be ready",
            Duration::from_secs(20),
            Duration::from_millis(1),
            || {
                Ok(http::get(&service.addr, "/readyz", Duration::from_secs(1))
                    .is_ok_and(|r| r.status == 200)
                    .then_some(()))
            },
        )?;
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

impl Drop for LocalService {
    fn drop(&mut self) {
        let _ = self.handle.kill();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_at_first_ends_the_run_and_keep_going_collects() {
        let mut checks = Checks::stop_at_first();
        checks.run("fine", || Ok(())).unwrap();
        let err = checks.run("broken", || bail!("no")).unwrap_err();
        assert_eq!(format!("{err:#}"), "check failed: broken: no");
        assert_eq!(checks.passed(), 1);

        let mut checks = Checks::keep_going();
        checks.run("a", || bail!("no")).unwrap();
        assert_eq!(checks.run_value("b", || Ok(7)).unwrap(), Some(7));
        checks.run("c", || bail!("no")).unwrap();
        assert_eq!(checks.failures(), ["a", "c"]);
        assert_eq!(checks.finish("lint").unwrap_err().to_string(), "lint failed: a; c");
        assert_eq!(Checks::keep_going().finish("lint").unwrap(), 0);
    }

    #[test]
    fn a_dry_run_end_is_not_a_failure() {
        let mut checks = Checks::keep_going();
        let end = checks.run("waits", || Err(process::DryRunEnd { next: "wait".into() }.into()));
        assert!(end.is_err());
        assert!(checks.failures().is_empty());
    }

    #[test]
    fn a_throwaway_project_has_its_own_name_port_and_no_env_file() {
        let compose =
            throwaway_project(docker::ComposeProgram(vec!["docker".into(), "compose".into()]), "smoke")
                .unwrap();
        assert_eq!(compose.project, format!("logbook-smoke-{}", std::process::id()));
        assert_eq!(compose.env_file.as_deref(), Some("/dev/null"));
        let vars: Vec<&str> = compose.env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(vars, ["LOGBOOK_HOST_BIND", "LOGBOOK_HOST_PORT", "LOGBOOK_ENV_FILE"]);
    }
}

//! What every drill shares: throwaway compose projects, the images they build from the
//! tested one, expectations on the running service, and client traffic through the proxy.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use serde::Deserialize;
use xshell::Shell;

use crate::outside::docker::{self, Compose};
use crate::outside::http;
use crate::outside::process::{self, Cmd};
use crate::project;

/// How long a single request to the service under test may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

// Images the drills build from the tested one: a bad release, another release of the
// same binary, and one with a setting of its own.

/// The variable a broken test image sets to a value the service refuses. None of the
/// compose file, the swarm stack or the manifests names it, so the image's value stands
/// (a name listed in compose's `environment` without a value would unset it).
pub const BROKEN_SETTING: &str = "LOGBOOK_BIND";

/// Builds `tag` from `image` with a setting the service rejects, so it never gets ready:
/// the stand-in for a bad release in smoke tests and drills.
pub fn build_broken_image(sh: &Shell, image: &str, tag: &str) -> Result<()> {
    build_on(sh, image, tag, &format!("ENV {BROKEN_SETTING}=not-an-address"))
}

/// Builds `tag` from `image` with one more label: another release of the same binary,
/// for drills that switch back and forth.
pub fn build_variant(sh: &Shell, image: &str, tag: &str) -> Result<()> {
    build_on(sh, image, tag, &format!("LABEL io.logbook.drill-variant=\"{tag}\""))
}

/// Builds `tag` from `image` with one more setting in its environment (`KEY=value`).
pub fn build_with_setting(sh: &Shell, image: &str, tag: &str, setting: &str) -> Result<()> {
    build_on(sh, image, tag, &format!("ENV {setting}"))
}

/// Builds `tag` as `image` plus one Dockerfile instruction.
fn build_on(sh: &Shell, image: &str, tag: &str, instruction: &str) -> Result<()> {
    let dir = sh.create_temp_dir()?;
    sh.write_file(dir.path().join("Dockerfile"), format!("FROM {image}\n{instruction}\n"))?;
    let context = dir.path().display().to_string();
    process::run(sh, &Cmd::new("docker").args(["build", "--quiet", "--tag", tag, &context]))
}

/// A throwaway project named `logbook-<kind>-<pid>`: its own volume and free loopback
/// port, and no `.env` (`--env-file /dev/null`: neither the compose file's variables nor
/// the service's settings come from the user's own).
pub fn throwaway_project(program: docker::ComposeProgram, kind: &str) -> Result<Compose> {
    let port = http::free_port()?.to_string();
    let mut compose = Compose::app(program);
    compose.env_file = Some("/dev/null".into());
    Ok(compose
        .project(&format!("{}-{kind}-{}", project::NAME, std::process::id()))
        .var("LOGBOOK_HOST_BIND", "127.0.0.1")
        .var("LOGBOOK_HOST_PORT", &port)
        // Published on loopback alone, as `up` would allow.
        .var(crate::targets::compose::ALLOW_UNAUTHENTICATED_VAR, "1"))
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

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Entry {
    pub id: i64,
    pub text: String,
}

pub fn expect_entry(addr: &str, id: i64, text: &str) -> Result<()> {
    expect_entry_within(addr, id, text, REQUEST_TIMEOUT)
}

fn expect_entry_within(addr: &str, id: i64, text: &str, timeout: Duration) -> Result<()> {
    let response = http::get(addr, &format!("/api/entries/{id}"), timeout)?;
    ensure!(response.status == 200, "entry {id}: {} {}", response.status, response.body);
    let entry: Entry = serde_json::from_str(&response.body)?;
    ensure!(entry.text == text, "entry {id} reads back as {:?}", entry.text);
    Ok(())
}

/// Every entry the service holds, page by page.
pub fn all_entries(addr: &str) -> Result<Vec<Entry>> {
    #[derive(Deserialize)]
    struct Listing {
        entries: Vec<Entry>,
        next_after: Option<i64>,
    }
    let mut entries = Vec::new();
    let mut after = 0;
    loop {
        let page = http::get(addr, &format!("/api/entries?after={after}&limit=500"), REQUEST_TIMEOUT)?;
        ensure!(page.status == 200, "listing entries answered {}: {}", page.status, page.body);
        let listing: Listing = serde_json::from_str(&page.body)?;
        entries.extend(listing.entries);
        match listing.next_after {
            Some(next) => after = next,
            None => return Ok(entries),
        }
    }
}

/// Appends an entry, optionally with a bearer token; the new id.
pub fn append(addr: &str, text: &str, token: Option<&str>) -> Result<i64> {
    append_keyed(addr, text, token, None, REQUEST_TIMEOUT)
}

/// [`append`], with an `Idempotency-Key` when `key` is given, waiting up to `timeout`.
fn append_keyed(
    addr: &str,
    text: &str,
    token: Option<&str>,
    key: Option<&str>,
    timeout: Duration,
) -> Result<i64> {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    headers.extend(key.map(|k| ("Idempotency-Key", k)));
    let body = serde_json::json!({ "text": text }).to_string();
    let created = http::request_with_headers(addr, "POST", "/api/entries", &headers, Some(&body), timeout)?;
    ensure!(created.status == 201, "POST answered {}: {}", created.status, created.body);
    Ok(serde_json::from_str::<Entry>(&created.body)?.id)
}

/// A client that appends and reads entries continuously, as users would, while a release
/// switches; [`Traffic::stop`] reports what it saw.
pub struct Traffic {
    running: Arc<AtomicBool>,
    client: std::thread::JoinHandle<TrafficReport>,
}

/// What a [`Traffic`] client saw.
#[derive(Debug, Default)]
pub struct TrafficReport {
    pub requests: usize,
    /// Failed requests (no answer, or not the 2xx expected), the first few described.
    pub failed: usize,
    pub failures: Vec<String>,
    /// The longest any one request waited for its answer.
    pub longest: Duration,
    /// Every append the service acknowledged with 201: id and text.
    pub acknowledged: Vec<(i64, String)>,
}

impl Traffic {
    /// Starts the client against `addr`; its entries read `<label> <n>`, appended with
    /// `token` when the service requires one. Every second append carries an
    /// `Idempotency-Key` and, should it fail, is retried once with it, as a careful client
    /// would: the retry must never store the entry twice (the failure still counts).
    pub fn start(addr: &str, label: &str, token: Option<&str>) -> Self {
        Self::start_within(addr, label, token, REQUEST_TIMEOUT)
    }

    /// [`Traffic::start`], with requests that wait up to `timeout` for their answer.
    pub fn start_within(addr: &str, label: &str, token: Option<&str>, timeout: Duration) -> Self {
        let running = Arc::new(AtomicBool::new(true));
        let (addr, label, flag) = (addr.to_owned(), label.to_owned(), running.clone());
        let token = token.map(str::to_owned);
        let client = std::thread::spawn(move || {
            let mut report = TrafficReport::default();
            let mut n = 0;
            while flag.load(Ordering::Relaxed) {
                n += 1;
                let text = format!("{label} {n}");
                let key = (n % 2 == 0).then(|| format!("{label}-{}-{n}", std::process::id()));
                let started = Instant::now();
                let mut appended = append_keyed(&addr, &text, token.as_deref(), key.as_deref(), timeout);
                report.note(started.elapsed(), appended.as_ref().err());
                if appended.is_err() && key.is_some() {
                    let started = Instant::now();
                    appended = append_keyed(&addr, &text, token.as_deref(), key.as_deref(), timeout);
                    report.note(started.elapsed(), appended.as_ref().err());
                }
                if let Ok(id) = appended {
                    report.acknowledged.push((id, text.clone()));
                    let started = Instant::now();
                    let read = expect_entry_within(&addr, id, &text, timeout);
                    report.note(started.elapsed(), read.as_ref().err());
                }
            }
            report
        });
        Traffic { running, client }
    }

    pub fn stop(self) -> Result<TrafficReport> {
        self.running.store(false, Ordering::Relaxed);
        self.client.join().map_err(|_| anyhow::anyhow!("the traffic client panicked"))
    }
}

impl TrafficReport {
    /// Adds another run's figures to these.
    pub fn absorb(&mut self, other: TrafficReport) {
        self.requests += other.requests;
        self.failed += other.failed;
        self.failures.extend(other.failures);
        self.longest = self.longest.max(other.longest);
        self.acknowledged.extend(other.acknowledged);
    }

    fn note(&mut self, took: Duration, error: Option<&anyhow::Error>) {
        self.requests += 1;
        self.longest = self.longest.max(took);
        if let Some(e) = error {
            self.failed += 1;
            if self.failures.len() < 5 {
                self.failures.push(format!("{e:#}"));
            }
        }
    }

    /// Ok when no request failed, else the failures seen.
    pub fn expect_no_failures(&self, during: &str) -> Result<()> {
        ensure!(
            self.failed == 0,
            "{} of {} requests failed during {during}: {}",
            self.failed,
            self.requests,
            self.failures.join("; ")
        );
        Ok(())
    }

    /// One line for the log: requests, failures, longest wait.
    pub fn summary(&self) -> String {
        format!(
            "{} requests, {} failed, longest wait {} ms, {} entries acknowledged",
            self.requests,
            self.failed,
            self.longest.as_millis(),
            self.acknowledged.len()
        )
    }
}

/// Every acknowledged entry is there, reading what was written, and once: no entry a
/// client appended is stored twice (the texts are unique), so no retry duplicated one.
pub fn expect_acknowledged(addr: &str, acknowledged: &[(i64, String)]) -> Result<()> {
    let entries = all_entries(addr)?;
    let mut seen = std::collections::HashSet::new();
    let written: std::collections::HashSet<&str> = acknowledged.iter().map(|(_, t)| t.as_str()).collect();
    let twice: Vec<i64> = entries
        .iter()
        .filter(|e| written.contains(e.text.as_str()) && !seen.insert(&e.text))
        .map(|e| e.id)
        .collect();
    ensure!(twice.is_empty(), "{} entries are stored twice (ids {twice:?})", twice.len());
    let held: std::collections::BTreeMap<i64, String> = entries.into_iter().map(|e| (e.id, e.text)).collect();
    let lost: Vec<i64> =
        acknowledged.iter().filter(|(id, text)| held.get(id) != Some(text)).map(|(id, _)| *id).collect();
    ensure!(
        lost.is_empty(),
        "{} of {} acknowledged entries are lost: {lost:?}",
        lost.len(),
        acknowledged.len()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_throwaway_project_has_its_own_name_port_and_no_env_file() {
        let compose =
            throwaway_project(docker::ComposeProgram(vec!["docker".into(), "compose".into()]), "smoke")
                .unwrap();
        assert_eq!(compose.project, format!("logbook-smoke-{}", std::process::id()));
        assert_eq!(compose.env_file.as_deref(), Some("/dev/null"));
        let vars: Vec<&str> = compose.env.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(vars, ["LOGBOOK_HOST_BIND", "LOGBOOK_HOST_PORT", "LOGBOOK_ALLOW_UNAUTHENTICATED"]);
    }
}

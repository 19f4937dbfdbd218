//! The compose stack's data: a consistent copy of the live database out of the running
//! service, and a verified backup put back in, both through the image's own binary so
//! the host needs no SQLite.

use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use xshell::Shell;

use super::replica;
use crate::outside::docker::{self, Compose};
use crate::outside::process::{self, Cmd};
use crate::project;
use crate::release::History;

/// What a verified database file holds, as `logbook verify` reports it.
#[derive(Debug, Default, serde::Deserialize)]
pub struct FileReport {
    pub entries: i64,
    pub bytes: u64,
    /// The highest entry id it holds (releases before it do not say: 0).
    #[serde(default)]
    pub last_id: i64,
}

/// Streams `logbook backup --to -` out of the running service into `out` (through a
/// partial file of its own), verifies the copy with the same image, then gives it its
/// final name with a hard link, which never replaces a file that appeared meanwhile.
pub fn backup(sh: &Shell, compose: &Compose, out: &Path) -> Result<FileReport> {
    if out.exists() {
        bail!("{} already exists; choose another --out", out.display());
    }
    let container = super::container_id(sh, compose)?.with_context(|| {
        format!("project {} is not running: start it with `cargo xtask up`", compose.project)
    })?;
    let image = super::running_image(sh, compose)?.unwrap_or_default();
    let dir = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    process::create_dir_all(dir)?;
    let partial = process::unique_beside(out, "partial");
    // Created new under a name of its own, so from here on the partial file is this run's.
    process::run_to_file(&exec_backup(&container), &partial)?;
    let result = verify(sh, &image, &partial).and_then(|report| {
        process::place_new(&partial, out)?;
        Ok(report)
    });
    if result.is_err() {
        let _ = process::remove_file(&partial);
    }
    result
}

pub fn exec_backup(container: &str) -> Cmd {
    Cmd::new("docker").args(["exec", container, "/logbook", "backup", "--to", "-"])
}

/// `logbook verify` in a throwaway container of `image`, with the file's directory
/// mounted read-only and no network: no SQLite is needed on the host.
pub fn verify_in_container(image: &str, file: &Path) -> Result<Cmd> {
    let (mount, path) = docker::mount_file_dir(file, "/check")?;
    Ok(docker::one_off(image, &[mount], &["verify".to_owned(), path]))
}

/// Verifies `file` with `image`'s own `logbook verify`; the error says why it was refused.
pub fn verify(sh: &Shell, image: &str, file: &Path) -> Result<FileReport> {
    let cmd = verify_in_container(image, file)?;
    let output = process::outcome(process::observe_echoed(sh, &cmd))?.map_err(|e| {
        let reason = format!("{e:#}");
        let reason =
            reason.lines().rev().find(|l| l.contains("logbook:")).unwrap_or(&reason).trim().to_owned();
        anyhow::anyhow!("{} is not a usable logbook database: {reason}", file.display())
    })?;
    serde_json::from_str(&output).context("logbook verify printed bad JSON")
}

/// The image to run one-off checks with: the running release's, else the last recorded.
pub fn image_for(sh: &Shell, compose: &Compose, history_file: &Path) -> Result<String> {
    match super::running_image(sh, compose) {
        Ok(Some(image)) => Ok(image),
        _ => History::load(history_file)?.current().map(|r| r.image.clone()).with_context(|| {
            format!(
                "project {} has no running service and no release history: `cargo xtask up` first",
                compose.project
            )
        }),
    }
}

/// What `logbook restore` reports.
#[derive(Debug, Deserialize)]
struct RestoreReport {
    entries: i64,
    previous: Option<String>,
    /// The highest id issued before the restore (releases before it do not say).
    #[serde(default)]
    ids_after: Option<i64>,
}

/// Verifies `file` first (nothing is stopped for a bad file), stops the service, replaces
/// the database through a one-off container of the same image (which keeps the old one
/// as a `.bak` in the volume), starts the service and waits until it is ready. The report
/// names the restored data as `source` (the file, or the replica it came from).
pub fn restore(
    sh: &Shell,
    compose: &Compose,
    history_file: &Path,
    file: &Path,
    source: &str,
    timeout: Duration,
) -> Result<String> {
    // The file may be one this run wrote (the replica's copy).
    let size = process::observe_size(file)?;
    if size == 0 {
        bail!("{} is empty; nothing was changed", file.display());
    }
    let image = image_for(sh, compose, history_file)?;
    verify(sh, &image, file).map_err(|e| e.context("refused; nothing was changed"))?;
    let volume = format!("{}_data", compose.project);

    // The replication sidecar holds the database open too; SQLite's lock refuses the
    // restore while it does. `up` starts both again, and Litestream, finding the database
    // behind its replica, snapshots the restored state.
    replica::remove_leftovers(sh, compose)?;
    let mut stop = vec!["stop", project::NAME];
    if replica::is_on(compose) {
        stop.push(replica::SERVICE);
    }
    let compose_up = compose.clone().var("LOGBOOK_IMAGE", &image);
    let restored = {
        // From the stop on, the service comes back however this block is left (an error,
        // Ctrl-C): on the restored data, or on the old data (a failed restore changes
        // nothing).
        let _back = BringBack { sh, compose: &compose_up };
        // The data about to be replaced reaches the replica first.
        super::data::drain_before_stop(sh, compose, &image)?;
        process::run(sh, &compose.cmd(&stop))?;
        process::capture(sh, &restore_in_container(&image, &volume, file)?)
    };
    let restored = process::outcome(restored)?;
    let ready = super::wait_ready(sh, &compose_up, timeout);
    let restored = match (restored, ready) {
        (Ok(restored), Ok(_)) => restored,
        (Ok(_), Err(e)) => return Err(e.context("the database was restored, but the service is not ready")),
        (Err(e), Ok(_)) => {
            return Err(e.context("the restore failed; the service is back on the data it had"));
        }
        (Err(e), Err(ready)) => {
            bail!(
                "the restore failed: {e:#}\nand the service, back on the data it had, did not get ready: {ready:#}"
            )
        }
    };
    let report: RestoreReport =
        serde_json::from_str(&restored).context("logbook restore printed bad JSON")?;
    let ids = report
        .ids_after
        .map(|n| {
            format!("; new entries get ids after {n}, the highest issued before, so no id is issued twice")
        })
        .unwrap_or_default();
    Ok(format!(
        "restored {} entries from {source} into volume {volume}; the replaced database is kept there as {}{ids}",
        report.entries,
        report.previous.as_deref().unwrap_or("(there was none)")
    ))
}

/// Starts the stack again when dropped, even after Ctrl-C.
struct BringBack<'a> {
    sh: &'a Shell,
    compose: &'a Compose,
}

impl Drop for BringBack<'_> {
    fn drop(&mut self) {
        process::clear_interrupt();
        if let Err(e) = process::run_cleanup(self.sh, &self.compose.up()) {
            process::say(&format!("starting the service again failed: {e:#}"));
        }
    }
}

pub fn restore_in_container(image: &str, volume: &str, file: &Path) -> Result<Cmd> {
    let (mount, path) = docker::mount_file_dir(file, "/restore")?;
    Ok(docker::one_off(
        image,
        &[format!("{volume}:/data"), mount],
        &["restore".to_owned(), "--from".to_owned(), path],
    ))
}

/// `restore --from-replica [--at]`: the replica's copy, restored into a scratch file, goes
/// through [`restore`]'s steps (verified, only the service and its sidecar
/// stopped, the old database kept as `.bak`). Returns the report line.
pub fn restore_stack(
    sh: &Shell,
    compose: &Compose,
    history: &Path,
    at: Option<SystemTime>,
    timeout: Duration,
) -> Result<String> {
    let settings = replica::Settings::of(sh, compose).with_context(|| {
        format!("--from-replica: replication is off; set {} (docs/OPERATIONS.md)", replica::URL_VAR)
    })?;
    let scratch = replica::Scratch::new(sh)?;
    let (file, _) = replica::restore_into(sh, compose, &settings, at, &scratch)?;
    let from = match at {
        Some(at) => format!("the replica at {}", crate::time::format_millis(at)),
        None => "the replica's newest state".to_owned(),
    };
    restore(sh, compose, history, &file, &format!("{from} ({})", settings.url), timeout)
}

/// How long a planned stop waits for the replica to hold every acknowledged entry.
pub const DRAIN_WAIT: Duration = Duration::from_secs(30);

/// The highest entry id the replica's newest state holds: restored into a scratch copy and
/// verified with `image`.
pub fn replica_last_id(
    sh: &Shell,
    compose: &Compose,
    settings: &replica::Settings,
    image: &str,
) -> Result<i64> {
    let scratch = replica::Scratch::new(sh)?;
    let (file, _) = replica::restore_into(sh, compose, settings, None, &scratch)?;
    Ok(verify(sh, image, &file)?.last_id)
}

/// Waits, up to `timeout`, until the replica holds every entry up to id `last_id`; returns
/// how long that took, or what it holds when the time is up.
pub fn wait_for_replica(
    sh: &Shell,
    compose: &Compose,
    settings: &replica::Settings,
    image: &str,
    last_id: i64,
    timeout: Duration,
) -> Result<Duration> {
    let started = std::time::Instant::now();
    let mut held = 0;
    process::wait_for(
        "the replica to hold every acknowledged entry",
        timeout,
        Duration::from_millis(500),
        || {
            held = replica_last_id(sh, compose, settings, image)?;
            Ok((held >= last_id).then_some(()))
        },
    )
    .map_err(|e| e.context(format!("the replica holds entries up to id {held}, not yet {last_id}")))?;
    Ok(started.elapsed())
}

/// Before a planned stop (`down`, `restore`): stops the service, so nothing more is
/// written, then waits up to [`DRAIN_WAIT`] until the replica holds every entry it
/// acknowledged, while the sidecar still runs; the caller stops the rest. Says what it
/// found; past the wait it warns and goes on (the entries are still in the volume).
/// Nothing to do when replication is off or its sidecar is not running.
pub fn drain_before_stop(sh: &Shell, compose: &Compose, image: &str) -> Result<()> {
    let Some(settings) = replica::Settings::of(sh, compose) else { return Ok(()) };
    if !replica::sidecars(sh, compose)?.iter().any(|s| s.service == replica::SERVICE && s.running) {
        process::say(
            "warning: the replication sidecar is not running: entries written since it stopped are on this host only",
        );
        return Ok(());
    }
    process::run(sh, &compose.cmd(&["stop", project::NAME]))?;
    let volume = super::snapshot::volume(compose);
    let verify = docker::one_off(
        image,
        &[format!("{volume}:/data")],
        &["verify".to_owned(), replica::DATABASE.to_owned()],
    )
    .limit(process::Limit::After(process::RUN_LIMIT));
    // A database that does not verify (the reason for a restore, say) must not block the
    // stop: then there is no last id to wait for.
    // It reads the database as the stop left it.
    let live = process::outcome(process::observe(sh, &verify))?
        .context("logbook verify failed")
        .and_then(|out| serde_json::from_str::<FileReport>(&out).context("logbook verify printed bad JSON"));
    let live = match live {
        Ok(live) if live.last_id > 0 || live.entries == 0 => live,
        Ok(_) => {
            process::say(&format!(
                "warning: {image}'s `logbook verify` reports no ids; not waiting for the replica"
            ));
            return Ok(());
        }
        Err(e) => {
            process::say(&format!("warning: {e:#}; not waiting for the replica"));
            return Ok(());
        }
    };
    match process::outcome(wait_for_replica(sh, compose, &settings, image, live.last_id, DRAIN_WAIT))? {
        Ok(took) => process::say(&format!(
            "replica: holds every acknowledged entry (up to id {}), checked in {:.1}s",
            live.last_id,
            took.as_secs_f64()
        )),
        Err(e) => process::say(&format!(
            "warning: {e:#} after {}s; stopping anyway: the rest is in volume {volume} on this host only",
            DRAIN_WAIT.as_secs()
        )),
    }
    Ok(())
}

/// Proves a round trip: appends a marker entry through the stack, waits until the replica
/// holds it, restores the replica into a scratch file, verifies it with the running
/// release's image and finds the marker in it. Prints the replica's age and entry count.
/// Changes nothing in the stack but the marker, an entry tagged `replica-check`.
pub fn check_replica(sh: &Shell, compose: &Compose) -> Result<String> {
    let settings = replica::Settings::of(sh, compose).with_context(|| {
        format!("--check-replica: replication is off; set {} (docs/OPERATIONS.md)", replica::URL_VAR)
    })?;
    let image = image_for(sh, compose, &super::history_path(sh, compose)?)?;
    process::effect("append a marker entry through the stack")?;
    let (marker, text) = append_marker(sh, compose)?;
    let took = wait_for_replica(sh, compose, &settings, &image, marker, MARKER_WAIT).with_context(|| {
        format!("the marker entry {marker} did not reach the replica at {}", settings.url)
    })?;
    let scratch = replica::Scratch::new(sh)?;
    let (file, listing) = replica::restore_into(sh, compose, &settings, None, &scratch)?;
    let report = verify(sh, &image, &file)?;
    find_marker(sh, &image, &scratch, marker, &text)?;
    let (newest, age) = match listing.as_ref().and_then(|l| l.newest_change()) {
        Some(newest) => (crate::time::format(newest), crate::time::age(newest, SystemTime::now())),
        None => ("unknown".to_owned(), "unknown".to_owned()),
    };
    let bytes = listing.map(|l| l.bytes()).unwrap_or_default();
    Ok(format!(
        "replica: {} verifies: {} entries; newest change {newest} ({age} ago); {bytes} bytes in the bucket; \
         the marker entry {marker} written through the stack was in it {:.1}s later",
        settings.url,
        report.entries,
        took.as_secs_f64()
    ))
}

/// How long the marker may take to reach the replica.
const MARKER_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Appends the marker through the stack's published port (with the API token, if the
/// stack has one); returns its id and text.
fn append_marker(sh: &Shell, compose: &Compose) -> Result<(i64, String)> {
    let addr = super::published_addr(sh, compose).with_context(|| {
        format!("project {} is not running: start it with `cargo xtask up`", compose.project)
    })?;
    let text =
        format!("replica check by {} at {}", crate::outside::state::actor(), crate::time::now_rfc3339());
    let body = serde_json::json!({ "text": text, "tags": ["replica-check"] }).to_string();
    let token = super::setting(sh, compose, "LOGBOOK_API_TOKEN", "");
    let auth = format!("Bearer {token}");
    let headers: Vec<(&str, &str)> =
        if token.is_empty() { Vec::new() } else { vec![("Authorization", auth.as_str())] };
    let response = crate::outside::http::request_with_headers(
        &addr,
        "POST",
        "/api/entries",
        &headers,
        Some(&body),
        std::time::Duration::from_secs(10),
    )?;
    anyhow::ensure!(
        response.status == 201,
        "appending the marker entry was answered {}: {}",
        response.status,
        response.body
    );
    #[derive(serde::Deserialize)]
    struct Created {
        id: i64,
    }
    let created: Created = serde_json::from_str(&response.body).context("the append answered bad JSON")?;
    Ok((created.id, text))
}

/// Exports the marker from the replica's restored copy and checks it reads as written.
fn find_marker(sh: &Shell, image: &str, scratch: &replica::Scratch, marker: i64, text: &str) -> Result<()> {
    let out = scratch.dir.join("marker.jsonl");
    let export = crate::outside::process::Cmd::new("docker")
        .args(["run", "--rm", "--network", "none", "--env", "LOGBOOK_DB_PATH=/check/logbook.db", "--volume"])
        .arg(format!("{}:/check", scratch.dir.display()))
        .args([image, "export", "--after", &(marker - 1).to_string(), "--to", "/check/marker.jsonl"]);
    process::query(sh, &export)?;
    let exported = std::fs::read_to_string(&out).with_context(|| format!("cannot read {}", out.display()))?;
    let found = exported
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .any(|entry| entry["id"] == marker && entry["text"] == text);
    anyhow::ensure!(found, "the replica's copy holds no entry {marker} reading {text:?}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_exact() {
        assert_eq!(exec_backup("abc123").to_string(), "docker exec abc123 /logbook backup --to -");
        assert_eq!(
            verify_in_container("logbook:1", Path::new("/srv/backups/x.db")).unwrap().to_string(),
            "docker run --rm --network none --volume /srv/backups:/check:ro logbook:1 verify /check/x.db"
        );
    }

    #[test]
    fn command_is_exact() {
        assert_eq!(
            restore_in_container("logbook:1", "logbook_data", Path::new("/srv/b/x.db")).unwrap().to_string(),
            "docker run --rm --network none --volume logbook_data:/data --volume /srv/b:/restore:ro logbook:1 restore --from /restore/x.db"
        );
    }
}

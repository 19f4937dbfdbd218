//! Snapshots taken before migrations, and the two ways back across a breaking one.
//!
//! A release that migrates the database first copies it, verified, to
//! `/data/snapshots/schema-<N>-<time>.db` in the stack's volume (the service does this
//! itself, holding the database's lock, so the copy has every acknowledged entry).
//! - A switch that migrated records that snapshot with the new release in the history.
//! - A switch that fails after migrating brings the previous release back on the snapshot
//!   ([`make_runnable`]): the new release never served, so nothing is lost.
//! - `rollback --with-data` ([`rollback_with_data`]) goes back later: the snapshot, plus
//!   every entry appended since, carried over with its id and idempotency key.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use xshell::Shell;

use super::schema;
use crate::outside::docker::{self, Compose};
use crate::outside::process::{self, Cmd, Limit};
use crate::project;
use crate::release::{self, History};

/// The stack's data volume, as compose names it.
pub fn volume(compose: &Compose) -> String {
    format!("{}_data", compose.project)
}

/// `logbook <args>` in a one-off container of `image` on the stack's volume.
fn on_volume(image: &str, volume: &str, args: &[&str]) -> Cmd {
    let args: Vec<String> = args.iter().map(|&a| a.to_owned()).collect();
    // A whole database is read (and checked) or written: no query's time limit.
    docker::one_off(image, &[format!("{volume}:/data")], &args).limit(Limit::After(process::RUN_LIMIT))
}

/// Runs `logbook <args>` in `image` on the volume and parses the JSON it prints.
fn run_on_volume<T: for<'de> Deserialize<'de>>(
    sh: &Shell,
    image: &str,
    volume: &str,
    args: &[&str],
) -> Result<T> {
    let out = process::capture(sh, &on_volume(image, volume, args))?;
    serde_json::from_str(&out)
        .with_context(|| format!("`logbook {}` printed bad JSON: {out}", args.join(" ")))
}

/// Records, with the release now serving in `container`, the snapshot its migration took,
/// if it took one: the newest snapshot no release records yet (one appears only when a
/// release migrates).
pub fn record_taken(sh: &Shell, container: &str, image: &str, history_file: &Path) -> Result<()> {
    let Some(report) = schema::ask(sh, &schema::in_container(container)) else { return Ok(()) };
    let Some(newest) = report.snapshots.unwrap_or_default().pop() else { return Ok(()) };
    let mut history = History::load(history_file)?;
    if history.has_snapshot(&newest.file) {
        return Ok(());
    }
    history.set_snapshot(image, release::Snapshot { file: newest.file.clone(), schema: newest.version });
    process::write_file(history_file, &history.to_json())?;
    process::say(&format!(
        "schema: the database at schema {} was copied to {} before {image} migrated it; \
         `cargo xtask rollback --with-data` goes back with it",
        newest.version, newest.file
    ));
    Ok(())
}

/// Makes the stack's database one `image` can run on again, with the service stopped,
/// after `new_image` had it: when a migration since raised its floor past what `image`
/// knows, restores the newest snapshot (the one `new_image` took as it migrated) with the
/// entries appended after it carried over under their ids, keeping the migrated database
/// as a `.bak` beside it. `new_image` knows both schemas, so it lists, exports and
/// restores; `image` must then verify the result. Nothing to do for a release from before
/// `logbook schema`, or when the database suits it.
pub fn make_runnable(sh: &Shell, compose: &Compose, image: &str, new_image: &str) -> Result<()> {
    let volume = volume(compose);
    let Some(report) = schema::ask(sh, &schema::in_volume(image, &volume)) else { return Ok(()) };
    let Some(database) = report.database.filter(|d| d.floor > report.build.version) else { return Ok(()) };
    let lister = schema::ask(sh, &schema::in_volume(new_image, &volume));
    let snapshot = lister
        .and_then(|r| r.snapshots)
        .and_then(|mut all| all.pop())
        .with_context(|| {
            format!(
                "{image} knows schema up to {}, the database is at schema {} (floor {}), and {new_image} lists no snapshot in volume {volume}",
                report.build.version, database.version, database.floor
            )
        })?;
    // Checked before anything moves: the old release must be able to run on it.
    let _: Verified = run_on_volume(sh, image, &volume, &["verify", &snapshot.file])
        .with_context(|| format!("{image} cannot run on the newest snapshot {}", snapshot.file))?;
    let held: Verified = run_on_volume(sh, new_image, &volume, &["verify", &snapshot.file])?;
    process::say(&format!(
        "schema: {image} cannot run on the database a migration left (schema {}); restoring the snapshot {} taken before it, with what was appended since",
        database.version, snapshot.file
    ));
    with_sidecar_stopped(sh, compose, || {
        let carry = carry_file();
        let after = held.last_id.unwrap_or(0).to_string();
        let _: Exported =
            run_on_volume(sh, new_image, &volume, &["export", "--after", &after, "--to", &carry])?;
        let restored: Restored =
            run_on_volume(sh, new_image, &volume, &["restore", "--from", &snapshot.file, "--carry", &carry])?;
        process::say(&format!(
            "schema: restored {} entries ({} carried over); the migrated database is kept as {}",
            restored.entries,
            restored.carried.unwrap_or(0),
            restored.previous.as_deref().unwrap_or("(none)")
        ));
        if !restored.not_carried.is_empty() {
            process::say(&format!(
                "warning: not carried over, still in {carry}: {}",
                restored.not_carried.join("; ")
            ));
        }
        Ok(())
    })
}

/// Where an export for a carry goes, in the volume: named by the time, kept afterwards.
fn carry_file() -> String {
    let stamp: String = crate::time::now_rfc3339().chars().filter(char::is_ascii_alphanumeric).collect();
    format!("/data/snapshots/carried-{stamp}.jsonl")
}

/// Runs `body` with the replication sidecar stopped (it holds the database open, so a
/// restore is refused beside it), and starts it again afterwards, if it ran.
fn with_sidecar_stopped<T>(sh: &Shell, compose: &Compose, body: impl FnOnce() -> Result<T>) -> Result<T> {
    let running = super::replica::is_on(compose)
        && super::replica::sidecars(sh, compose)?
            .iter()
            .any(|s| s.service == super::replica::SERVICE && s.running);
    if running {
        process::run(sh, &compose.cmd(&["stop", super::replica::SERVICE]))?;
    }
    let result = body();
    if running {
        process::run_cleanup(sh, &compose.up_alone(super::replica::SERVICE))?;
    }
    result
}

/// What `logbook restore` prints.
#[derive(Debug, Deserialize)]
struct Restored {
    entries: i64,
    previous: Option<String>,
    #[serde(default)]
    carried: Option<usize>,
    #[serde(default)]
    not_carried: Vec<String>,
}

/// What `logbook verify` prints.
#[derive(Debug, Deserialize)]
struct Verified {
    entries: i64,
    #[serde(default)]
    last_id: Option<i64>,
}

/// What `logbook export` prints.
#[derive(Debug, Deserialize)]
struct Exported {
    entries: usize,
}

/// `rollback --with-data`: back from the running release, which migrated the database
/// with a breaking change, to `to` (default: the release it replaced), on the snapshot
/// taken before that migration, with every entry appended since carried over with its
/// id. Refused, with nothing changed, when the running release recorded no snapshot, or
/// the snapshot is missing or fails verification with either release. The service does
/// not serve while the data moves; the proxy holds requests meanwhile (up to 20 s).
/// Returns the line to print.
pub fn rollback_with_data(
    sh: &Shell,
    compose: &Compose,
    history_file: &Path,
    to: Option<&str>,
    timeout: Duration,
) -> Result<String> {
    let history = History::load(history_file)?;
    let (_, current) = super::running(sh, compose)?.with_context(|| {
        format!(
            "project {} is not running; nothing to roll back (`cargo xtask up --tag …` starts a release)",
            compose.project
        )
    })?;
    // The record that took the snapshot: a later `up` of the same image records it anew.
    let release = history
        .releases
        .iter()
        .rev()
        .find(|r| r.image == current && r.snapshot.is_some())
        .or_else(|| history.latest_of(&current))
        .with_context(|| format!("{current} is not in the release history"))?;
    let snapshot = release.snapshot.clone().with_context(|| {
        format!(
            "{current} recorded no snapshot: it migrated nothing when it started, so a plain `cargo xtask rollback` goes \
             back; nothing was changed"
        )
    })?;
    let target = match to.map(project::image_name) {
        Some(image) if history.latest_of(&image).is_some() => image,
        Some(image) => bail!("{image} is not in the release history; nothing was changed"),
        None => release.previous.clone().with_context(|| {
            format!("{current} replaced no release: name one with --to; nothing was changed")
        })?,
    };
    let volume = volume(compose);
    let refused = |e: anyhow::Error| e.context("refused; nothing was changed");
    // The running release reads it to say which entries came after it; the target proves
    // it can run on it.
    let held: Verified =
        run_on_volume(sh, &current, &volume, &["verify", &snapshot.file]).map_err(refused)?;
    let _: Verified = run_on_volume(sh, &target, &volume, &["verify", &snapshot.file])
        .with_context(|| format!("{target} cannot run on the snapshot {}", snapshot.file))
        .map_err(refused)?;
    let after = held
        .last_id
        .context("the running release's `logbook verify` does not report ids")
        .map_err(refused)?;
    process::say(&format!(
        "rolling back from {current} to {target} on the snapshot {} ({} entries, up to id {after}); \
         the service stops while the data moves",
        snapshot.file, held.entries
    ));

    let compose_target = compose.clone().var("LOGBOOK_IMAGE", &target);
    let carry = carry_file();
    let mut back = BringBack {
        sh,
        compose,
        image: &current,
        replaced: None,
        done: false,
        armed: process::ChangeMark::now(),
    };
    let mut stop = vec!["stop", project::NAME];
    if super::replica::is_on(compose) {
        stop.push(super::replica::SERVICE);
    }
    // Stopped first: every acknowledged entry is then in the file the export reads.
    process::run(sh, &compose.cmd(&stop))?;
    let exported: Exported =
        run_on_volume(sh, &current, &volume, &["export", "--after", &after.to_string(), "--to", &carry])?;
    let restored: Restored =
        run_on_volume(sh, &target, &volume, &["restore", "--from", &snapshot.file, "--carry", &carry])?;
    back.replaced = restored.previous.clone();
    process::run(sh, &compose_target.up())?;
    super::wait_ready(sh, &compose_target, timeout)
        .with_context(|| format!("{target} did not become ready on the snapshot"))?;
    back.done = true;
    let mut history = History::load(history_file)?;
    crate::targets::record_serving(sh, &mut history, history_file, &target, Some(current.clone()))?;
    let not_carried = if restored.not_carried.is_empty() {
        String::new()
    } else {
        format!(
            "\nnot carried over ({}), still in {carry} in volume {volume}:\n  {}",
            restored.not_carried.len(),
            restored.not_carried.join("\n  ")
        )
    };
    Ok(format!(
        "{target} serves {} entries: the snapshot's {}, and {} of the {} appended since, carried over with their ids; \
         the database {current} used is kept as {} in volume {volume}{not_carried}",
        restored.entries,
        held.entries,
        restored.carried.unwrap_or(0),
        exported.entries,
        restored.previous.as_deref().unwrap_or("(none)")
    ))
}

/// Until `done`, brings the release that ran back however a rollback with data is left
/// (an error, Ctrl-C): on the database it used (restored from `replaced`, if the
/// rollback had already replaced it), and waits until it is ready.
struct BringBack<'a> {
    sh: &'a Shell,
    compose: &'a Compose,
    image: &'a str,
    replaced: Option<String>,
    done: bool,
    /// Nothing to bring back unless a change was made since it was armed.
    armed: process::ChangeMark,
}

impl Drop for BringBack<'_> {
    fn drop(&mut self) {
        if self.done || !self.armed.changed_since() {
            return;
        }
        process::clear_interrupt();
        let back = self.compose.clone().var("LOGBOOK_IMAGE", self.image);
        let outcome = (|| -> Result<()> {
            process::run_cleanup(self.sh, &self.compose.cmd(&["stop", project::NAME]))?;
            if let Some(replaced) = &self.replaced {
                let volume = volume(self.compose);
                process::run_cleanup(
                    self.sh,
                    &on_volume(self.image, &volume, &["restore", "--from", replaced]),
                )?;
            }
            process::run_cleanup(self.sh, &back.up())?;
            super::wait_ready(self.sh, &back, Duration::from_secs(60)).map(|_| ())
        })();
        match outcome {
            Ok(()) => process::say(&format!("{} serves again, on the data it had", self.image)),
            Err(e) => process::say(&format!(
                "bringing {} back failed: {e:#}; `cargo xtask up --tag {}` starts it",
                self.image,
                self.image.rsplit(':').next().unwrap_or(self.image)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_off_commands_are_exact() {
        assert_eq!(
            on_volume(
                "logbook:v3",
                "logbook_data",
                &["export", "--after", "7", "--to", "/data/snapshots/c.jsonl"]
            )
            .to_string(),
            "docker run --rm --network none --volume logbook_data:/data logbook:v3 export --after 7 --to /data/snapshots/c.jsonl"
        );
        assert_eq!(
            schema::in_volume("logbook:v2", "logbook_data").to_string(),
            "docker run --rm --network none --volume logbook_data:/data logbook:v2 schema"
        );
    }
}

//! `cargo xtask backup`: a consistent copy of the live database, out of the running stack;
//! or, with --check-replica, proof that the off-host replica restores.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::{Context, Result};
use xshell::Shell;

use crate::flags::Backup;
use crate::outside::docker;
use crate::outside::process;
use crate::project;
use crate::targets::compose;
use crate::targets::compose::data;
use crate::targets::compose::replica::{self, Scratch, Settings};

impl Backup {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let compose = compose::stack(sh, docker::connect(sh)?);
        if self.check_replica {
            return check_replica(sh, &compose);
        }
        let out = self.out.unwrap_or_else(|| default_backup_path(sh));
        // A copy taken in the middle of a switch or a restore could be of either side.
        let wait = crate::state::LockRequest {
            wait: std::time::Duration::from_secs(600),
            reads_only: true,
            ..Default::default()
        };
        let _lock = crate::state::lock(&compose::history_path(sh, &compose)?, &wait)?;
        let report = data::backup(sh, &compose, &out)?;
        process::result(&format!(
            "backup: {} ({} bytes, {} entries)",
            out.display(),
            report.bytes,
            report.entries
        ));
        Ok(())
    }
}

/// Proves a round trip: appends a marker entry through the stack, waits until the replica
/// holds it, restores the replica into a scratch file, verifies it with the running
/// release's image and finds the marker in it. Prints the replica's age and entry count.
/// Changes nothing in the stack but the marker, an entry tagged `replica-check`.
pub fn check_replica(sh: &Shell, compose: &docker::Compose) -> Result<()> {
    let settings = Settings::of(sh, compose).with_context(|| {
        format!("--check-replica: replication is off; set {} (docs/OPERATIONS.md)", replica::URL_VAR)
    })?;
    let image = data::image_for(sh, compose, &compose::history_path(sh, compose)?)?;
    process::effect("append a marker entry through the stack")?;
    let (marker, text) = append_marker(sh, compose)?;
    let took = compose::data::wait_for_replica(sh, compose, &settings, &image, marker, MARKER_WAIT)
        .with_context(|| {
            format!("the marker entry {marker} did not reach the replica at {}", settings.url)
        })?;
    let scratch = Scratch::new(sh)?;
    let (file, listing) = replica::restore_into(sh, compose, &settings, None, &scratch)?;
    let report = data::verify(sh, &image, &file)?;
    find_marker(sh, &image, &scratch, marker, &text)?;
    let (newest, age) = match listing.as_ref().and_then(|l| l.newest_change()) {
        Some(newest) => (crate::time::format(newest), crate::time::age(newest, SystemTime::now())),
        None => ("unknown".to_owned(), "unknown".to_owned()),
    };
    let bytes = listing.map(|l| l.bytes()).unwrap_or_default();
    process::result(&format!(
        "replica: {} verifies: {} entries; newest change {newest} ({age} ago); {bytes} bytes in the bucket; \
         the marker entry {marker} written through the stack was in it {:.1}s later",
        settings.url,
        report.entries,
        took.as_secs_f64()
    ));
    Ok(())
}

/// How long the marker may take to reach the replica.
const MARKER_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Appends the marker through the stack's published port (with the API token, if the
/// stack has one); returns its id and text.
fn append_marker(sh: &Shell, compose: &docker::Compose) -> Result<(i64, String)> {
    let addr = compose::published_addr(sh, compose).with_context(|| {
        format!("project {} is not running: start it with `cargo xtask up`", compose.project)
    })?;
    let text = format!("replica check by {} at {}", crate::state::actor(), crate::time::now_rfc3339());
    let body = serde_json::json!({ "text": text, "tags": ["replica-check"] }).to_string();
    let token = compose::setting(sh, compose, "LOGBOOK_API_TOKEN", "");
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
fn find_marker(sh: &Shell, image: &str, scratch: &Scratch, marker: i64, text: &str) -> Result<()> {
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

fn default_backup_path(sh: &Shell) -> PathBuf {
    let stamp = crate::time::now_rfc3339().replace([':', '-'], "");
    sh.current_dir().join("backups").join(format!("{}-{stamp}.db", project::NAME))
}

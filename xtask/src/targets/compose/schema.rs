//! Schema compatibility, checked before a switch changes anything: the target release must
//! be able to open the database, and a release that serves must be able to come back if
//! the target fails. The database's schema is asked of the running container, the target
//! release's of its image (`logbook schema`); docs/OPERATIONS.md, "Changing the schema".

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use xshell::Shell;

use crate::outside::process::{self, Cmd};

/// A schema version and its floor (the oldest schema a release must know to use it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Schema {
    pub version: usize,
    pub floor: usize,
}

/// What `logbook schema` prints.
#[derive(Debug, Deserialize)]
pub struct Report {
    pub build: Schema,
    pub database: Option<Schema>,
    /// The snapshots taken before migrations, oldest first; `None` from a build that
    /// takes none.
    #[serde(default)]
    pub snapshots: Option<Vec<Snapshot>>,
}

/// A snapshot as `logbook schema` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Snapshot {
    pub file: String,
    pub version: usize,
}

/// `logbook schema` of `image`, run on the stack's volume.
pub fn in_volume(image: &str, volume: &str) -> Cmd {
    crate::outside::docker::one_off(image, &[format!("{volume}:/data")], &["schema".to_owned()])
}

/// Runs a `logbook schema` query; `None` when the build has no such command.
pub fn ask(sh: &Shell, cmd: &Cmd) -> Option<Report> {
    process::echo(cmd);
    process::query(sh, cmd).ok().and_then(|out| serde_json::from_str(&out).ok())
}

pub fn in_container(container: &str) -> Cmd {
    Cmd::new("docker").args(["exec", container, "/logbook", "schema"])
}

pub fn of_image(image: &str) -> Cmd {
    Cmd::new("docker").args(["run", "--rm", "--network", "none", "--entrypoint", "/logbook", image, "schema"])
}

/// Refuses, before anything changes, a switch from the release in `running` (image
/// `running_image`) to `image` that the database's schema forbids. A release from before
/// `logbook schema` is not checked, and that is said.
/// Returns whether the target may migrate the database (true when that is not known).
pub fn check_switch(sh: &Shell, running: &str, running_image: &str, image: &str) -> Result<bool> {
    let (Some(live), Some(target)) = (ask(sh, &in_container(running)), ask(sh, &of_image(image))) else {
        process::say("schema: not checked (a release from before `logbook schema` is involved)");
        return Ok(true);
    };
    let Some(database) = live.database else { return Ok(true) };
    let target_snapshots = target.snapshots.is_some();
    decide(database, live.build, running_image, (target.build, target_snapshots), image)
        .context("nothing was changed")?;
    Ok(target.build.version > database.version)
}

/// The rules: the target must know the database's floor; and while a release serves, a
/// target that raises the floor past what that release knows must take a snapshot before
/// it migrates (`target.1`), since a failed switch brings that release back, which can
/// then run only on the snapshot.
pub fn decide(
    database: Schema,
    running: Schema,
    running_image: &str,
    (target, target_snapshots): (Schema, bool),
    image: &str,
) -> Result<()> {
    if database.floor > target.version {
        bail!(
            "{image} knows schema up to {}, but the database is at schema {} and needs a release that knows schema {} or later: \
             it would not start. Releases at schema {} or later can run on it (`cargo xtask rollback --list`); to go back \
             across the breaking change, `cargo xtask rollback --with-data` restores the snapshot taken before it and \
             carries over every entry appended since",
            target.version,
            database.version,
            database.floor,
            database.floor
        );
    }
    let breaking = target.floor > running.version && target.floor > database.floor;
    if breaking && target_snapshots {
        process::say(&format!(
            "schema: {image} migrates the database from schema {} to {} with a breaking change: it takes a snapshot \
             first, which a failed switch restores for {running_image}, and `cargo xtask rollback --with-data` later",
            database.version, target.version
        ));
        return Ok(());
    }
    if breaking {
        bail!(
            "{image} migrates the database to schema {} with a breaking change: {running_image} (schema {}) could not run on \
             it afterwards, so a failed switch could not bring it back. Do it with nothing serving: `cargo xtask backup`, \
             `cargo xtask down`, then `cargo xtask up` with {image}",
            target.version,
            running.version
        );
    }
    if target.version > database.version {
        process::say(&format!(
            "schema: {image} migrates the database from schema {} to {} (additive: {running_image} can still run on it)",
            database.version, target.version
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn at(version: usize, floor: usize) -> Schema {
        Schema { version, floor }
    }

    #[test]
    fn a_release_must_know_the_database_s_floor() {
        for snapshots in [false, true] {
            let err = decide(at(3, 3), at(3, 3), "logbook:new", (at(2, 1), snapshots), "logbook:old")
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("logbook:old knows schema up to 2, but the database is at schema 3 and needs a release that knows schema 3"), "{err}");
            assert!(err.contains("`cargo xtask rollback --with-data`"), "{err}");
        }
        // Additive changes after the floor do not matter: a rollback across them runs.
        decide(at(5, 1), at(5, 1), "logbook:new", (at(2, 1), false), "logbook:old").unwrap();
    }

    #[test]
    fn a_breaking_migration_needs_a_snapshot_while_a_release_that_cannot_come_back_serves() {
        let err = decide(at(2, 1), at(2, 1), "logbook:v2", (at(3, 3), false), "logbook:v3")
            .unwrap_err()
            .to_string();
        assert!(err.contains("logbook:v2 (schema 2) could not run on it afterwards"), "{err}");
        assert!(err.contains("`cargo xtask down`"), "{err}");
        // A target that snapshots first can be switched to: the way back is the snapshot.
        decide(at(2, 1), at(2, 1), "logbook:v2", (at(3, 3), true), "logbook:v3").unwrap();
        // Additive forward, and the same floor again, go ahead.
        decide(at(2, 1), at(2, 1), "logbook:v2", (at(4, 1), false), "logbook:v4").unwrap();
        decide(at(3, 3), at(3, 3), "logbook:v3", (at(4, 3), false), "logbook:v4").unwrap();
    }

    #[test]
    fn the_queries_are_exact() {
        assert_eq!(in_container("c0ffee").to_string(), "docker exec c0ffee /logbook schema");
        assert_eq!(
            of_image("logbook:abc").to_string(),
            "docker run --rm --network none --entrypoint /logbook logbook:abc schema"
        );
    }
}

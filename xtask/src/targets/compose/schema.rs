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
pub fn check_switch(sh: &Shell, running: &str, running_image: &str, image: &str) -> Result<()> {
    let ask = |cmd: &Cmd| -> Option<Report> {
        process::echo(cmd);
        process::query(sh, cmd).ok().and_then(|out| serde_json::from_str(&out).ok())
    };
    let (Some(live), Some(target)) = (ask(&in_container(running)), ask(&of_image(image))) else {
        process::say("schema: not checked (a release from before `logbook schema` is involved)");
        return Ok(());
    };
    let Some(database) = live.database else { return Ok(()) };
    decide(database, live.build, running_image, target.build, image).context("nothing was changed")
}

/// The rules: the target must know the database's floor; and while a release serves, the
/// target must not raise the floor past what that release knows, since a failed switch
/// brings it back onto the migrated database, where it would not start.
pub fn decide(
    database: Schema,
    running: Schema,
    running_image: &str,
    target: Schema,
    image: &str,
) -> Result<()> {
    if database.floor > target.version {
        bail!(
            "{image} knows schema up to {}, but the database is at schema {} and needs a release that knows schema {} or later: \
             it would not start. Releases at schema {} or later can run on it (`cargo xtask rollback --list`); to go back \
             across the breaking change, restore a backup taken before it (`cargo xtask restore FILE`)",
            target.version,
            database.version,
            database.floor,
            database.floor
        );
    }
    if target.floor > running.version && target.floor > database.floor {
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
        let err = decide(at(3, 3), at(3, 3), "logbook:new", at(2, 1), "logbook:old").unwrap_err().to_string();
        assert!(err.starts_with("logbook:old knows schema up to 2, but the database is at schema 3 and needs a release that knows schema 3"), "{err}");
        // Additive changes after the floor do not matter: a rollback across them runs.
        decide(at(5, 1), at(5, 1), "logbook:new", at(2, 1), "logbook:old").unwrap();
    }

    #[test]
    fn a_breaking_migration_is_refused_while_a_release_that_cannot_come_back_serves() {
        let err = decide(at(2, 1), at(2, 1), "logbook:v2", at(3, 3), "logbook:v3").unwrap_err().to_string();
        assert!(err.contains("logbook:v2 (schema 2) could not run on it afterwards"), "{err}");
        assert!(err.contains("`cargo xtask down`"), "{err}");
        // Additive forward, and the same floor again, go ahead.
        decide(at(2, 1), at(2, 1), "logbook:v2", at(4, 1), "logbook:v4").unwrap();
        decide(at(3, 3), at(3, 3), "logbook:v3", at(4, 3), "logbook:v4").unwrap();
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

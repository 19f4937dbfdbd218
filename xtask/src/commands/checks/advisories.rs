//! `cargo xtask advisories`: cargo-deny on Cargo.lock, configured by deny.toml.

use anyhow::Result;
use xshell::Shell;

use crate::flags::Advisories;
use crate::outside::process::{self, Cmd};
use crate::outside::tools::{self, cargo};

impl Advisories {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let note = check(sh, false)?;
        process::result(&format!(
            "advisories: pass{}",
            if note.is_empty() { String::new() } else { format!(" ({note})") }
        ));
        Ok(())
    }
}

pub fn fetch_db() -> Cmd {
    cargo().args(["deny", "--locked", "fetch", "db"])
}

pub fn deny_check(checks: &[&str]) -> Cmd {
    cargo().args(["deny", "--locked", "check"]).args(checks.iter().copied())
}

/// Runs licenses, bans and sources always, and advisories when the advisory database can be
/// fetched. Returns a note on what could not be checked. `install_if_missing`: install
/// cargo-deny (what `ci` does) instead of failing with the command to run.
pub fn check(sh: &Shell, install_if_missing: bool) -> Result<String> {
    tools::CARGO_DENY.require(sh, install_if_missing)?;
    let note = if process::run(sh, &fetch_db()).is_ok() {
        process::run(sh, &deny_check(&["advisories"]))?;
        String::new()
    } else {
        process::say(
            "advisories: skipped: the advisory database (github.com/RustSec/advisory-db) cannot be fetched from here",
        );
        "advisories skipped: advisory database unreachable".to_owned()
    };
    process::run(sh, &deny_check(&["licenses", "bans", "sources"]))?;
    Ok(note)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_exact() {
        assert_eq!(
            deny_check(&["licenses", "bans", "sources"]).args,
            ["deny", "--locked", "check", "licenses", "bans", "sources"]
        );
        assert_eq!(fetch_db().args, ["deny", "--locked", "fetch", "db"]);
    }
}

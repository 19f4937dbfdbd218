//! The settings a stack was started with, kept in its state on the host
//! (`releases-<project>.env`, mode 0600): every variable its compose files read, as the
//! last successful switch saw it (from the environment, or `.env`). A command run from a
//! checkout with no `.env` (a CI runner's cleaned workspace, a second operator's fresh
//! clone) uses them, so it never drops the stack's layers (TLS, replication) or its token.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use xshell::Shell;

use crate::outside::docker::Compose;
use crate::outside::process;

/// Variables the runner sets for one command, which must not outlive it: the image of
/// the switch, and open writes, which it allows only for a stack published on loopback.
const RUNNER_ONLY: [&str; 2] = ["LOGBOOK_IMAGE", super::ALLOW_UNAUTHENTICATED_VAR];

pub fn path(history_file: &Path) -> PathBuf {
    history_file.with_extension("env")
}

/// Every variable a compose file reads: `${NAME…}` anywhere, and names listed without a
/// value under `environment:` (taken from the environment or `.env`).
pub fn referenced(compose_file: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let is_name = |s: &str| {
        !s.is_empty() && s.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    };
    for (i, _) in compose_file.match_indices("${") {
        let rest = &compose_file[i + 2..];
        let end = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        if is_name(&rest[..end]) {
            names.insert(rest[..end].to_owned());
        }
    }
    for line in compose_file.lines() {
        if let Some(name) = line.trim().strip_suffix(':')
            && is_name(name)
            && line.starts_with("      ")
        {
            names.insert(name.to_owned());
        }
    }
    names
}

/// Writes the settings `compose` runs with now into the stack's state, beside its history.
pub fn record(sh: &Shell, compose: &Compose, history_file: &Path) -> Result<()> {
    let mut names = BTreeSet::new();
    for file in &compose.files {
        let text = sh.read_file(file).with_context(|| format!("cannot read {file}"))?;
        names.extend(referenced(&text));
    }
    let mut lines = String::from(
        "# The settings this stack was last switched with (cargo xtask): used when a command\n\
         # runs from a checkout with no .env. Replaced on every switch.\n",
    );
    // What the user set: the runner's own per-command values left out, but the user's own
    // choice of open writes, from the environment or .env, kept.
    let mut theirs = compose.clone();
    theirs.env.retain(|(k, _)| !RUNNER_ONLY.contains(&k.as_str()));
    for name in names.iter().filter(|n| n.as_str() != "LOGBOOK_IMAGE") {
        let value = super::setting(sh, &theirs, name, "");
        if value.is_empty() {
            continue;
        }
        // Single quotes: Compose takes the value as it is, with no `$` expansion and no
        // `#` comment. A value it could not hold that way is left out, and said.
        if value.contains(['\'', '\n']) {
            process::say(&format!(
                "note: {name} is not recorded with the stack's settings: its value holds a quote or a newline"
            ));
            continue;
        }
        lines.push_str(&format!("{name}='{value}'\n"));
    }
    // It may hold the token: readable by its owner alone.
    process::write_file_with_mode(&path(history_file), &lines, 0o600)
}

/// The settings file a command should use when the user named none: the checkout's
/// `.env` if it has one, else the recorded settings of the stack, if any.
pub fn fallback(checkout_has_dotenv: bool, recorded: &Path) -> Option<PathBuf> {
    // Readable by this user, not only there: another user's 0600 file would fail Compose.
    (!checkout_has_dotenv && std::fs::File::open(recorded).is_ok()).then(|| recorded.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variables_a_compose_file_reads_are_found() {
        let text = "services:\n  proxy:\n    image: ${CADDY_IMAGE:-caddy:2}\n    environment:\n      LOGBOOK_SITE: ${LOGBOOK_DOMAIN:-:8080}\n      LOGBOOK_LOG:\n      literal: x\n    ports:\n      - \"${LOGBOOK_HOST_BIND:-127.0.0.1}:${LOGBOOK_HOST_PORT:-8080}:8080\"\nvolumes:\n  data:\n";
        let names: Vec<String> = referenced(text).into_iter().collect();
        assert_eq!(
            names,
            ["CADDY_IMAGE", "LOGBOOK_DOMAIN", "LOGBOOK_HOST_BIND", "LOGBOOK_HOST_PORT", "LOGBOOK_LOG"]
        );
    }

    #[test]
    fn the_settings_are_recorded_privately_without_what_the_runner_sets() {
        use std::os::unix::fs::PermissionsExt;
        let sh = Shell::new().unwrap();
        let dir = sh.create_temp_dir().unwrap();
        sh.change_dir(dir.path());
        sh.write_file(
            "app.yml",
            "services:\n  a:\n    image: ${LOGBOOK_IMAGE}\n    environment:\n      LOGBOOK_ALLOW_UNAUTHENTICATED:\n      LOGBOOK_API_TOKEN:\n      LOGBOOK_SITE: ${XTASK_TEST_DOMAIN:-x}\n",
        )
        .unwrap();
        let mut compose = Compose::app(crate::outside::docker::ComposeProgram(vec!["docker".into()]));
        compose.files = vec!["app.yml".into()];
        let compose = compose
            .var("LOGBOOK_IMAGE", "logbook:abc")
            .var(super::super::ALLOW_UNAUTHENTICATED_VAR, "1")
            .var("LOGBOOK_API_TOKEN", "s3cret")
            .var("XTASK_TEST_DOMAIN", "logbook.example.com");
        let history = dir.path().join("state/releases-logbook.json");
        record(&sh, &compose, &history).unwrap();
        let text = std::fs::read_to_string(path(&history)).unwrap();
        let values: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(values, ["LOGBOOK_API_TOKEN='s3cret'", "XTASK_TEST_DOMAIN='logbook.example.com'"]);
        let mode = std::fs::metadata(path(&history)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the settings hold the token: only their owner may read them");
    }

    #[test]
    fn the_recorded_settings_stand_in_only_for_a_missing_dotenv() {
        let sh = Shell::new().unwrap();
        let dir = sh.create_temp_dir().unwrap();
        let recorded = dir.path().join("releases-logbook.env");
        assert_eq!(fallback(false, &recorded), None, "nothing recorded yet");
        std::fs::write(&recorded, "LOGBOOK_DOMAIN=logbook.example.com\n").unwrap();
        assert_eq!(fallback(false, &recorded), Some(recorded.clone()));
        assert_eq!(fallback(true, &recorded), None, "the checkout's .env wins");
    }
}

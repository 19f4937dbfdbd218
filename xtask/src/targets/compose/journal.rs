//! The switch journal: a start-first switch writes the step it is about to take, before
//! taking it, to `releases-<project>.journal` beside the history. After any interruption
//! (Ctrl-C once or twice, SIGTERM, SIGKILL of the runner, a reboot) the journal says what
//! was under way, and the next command that changes the stack repairs it to exactly one
//! serving release before doing anything else ([`repair`]).
//!
//! ```json
//! {"format": 1, "by": "alice@web1", "command": "up --tag abc", "pid": 42,
//!  "started_at": "2026-12-04T10:00:00Z", "old_container": "4f1e…", "old_image": "logbook:aaa",
//!  "new_image": "logbook:abc", "previous": "logbook:aaa", "new_container": "9c2d…",
//!  "step": "stopping-old"}
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use xshell::Shell;

use crate::outside::docker::Compose;
use crate::outside::process::{self, Cmd};
use crate::project;
use crate::release::History;

const FORMAT: u64 = 1;

/// The steps of a start-first switch, in order. Each is written before it is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    /// A container of the new image is being started beside the old one, which serves.
    StartingNew,
    /// The old container is being stopped: it drains and lets go of the database.
    StoppingOld,
    /// The old container has stopped; the new one takes the database and turns ready.
    TakingOver,
    /// The new release is ready through the proxy; the old container is being removed and
    /// the release recorded.
    RemovingOld,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::StartingNew => "starting-new",
            Step::StoppingOld => "stopping-old",
            Step::TakingOver => "taking-over",
            Step::RemovingOld => "removing-old",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Journal {
    pub format: u64,
    pub by: String,
    pub command: String,
    pub pid: u32,
    pub started_at: String,
    pub old_container: String,
    pub old_image: String,
    pub new_image: String,
    /// What the history records as the release the new one replaces.
    pub previous: Option<String>,
    /// The `--message` the switching command's lock was taken with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub new_container: Option<String>,
    pub step: Step,
    /// Whether the new release may migrate the database (so the way back may need the
    /// snapshot it takes). Journals from before this field say nothing: then it may.
    #[serde(default = "may_migrate_unless_known")]
    pub may_migrate: bool,
}

fn may_migrate_unless_known() -> bool {
    true
}

pub fn path(history_file: &Path) -> PathBuf {
    history_file.with_extension("journal")
}

impl Journal {
    pub fn begin(old_container: &str, old_image: &str, new_image: &str, previous: Option<String>) -> Self {
        Journal {
            format: FORMAT,
            by: crate::outside::state::actor(),
            command: crate::outside::state::this_command(),
            pid: std::process::id(),
            started_at: crate::time::now_rfc3339(),
            old_container: old_container.to_owned(),
            old_image: old_image.to_owned(),
            new_image: new_image.to_owned(),
            previous,
            message: crate::outside::state::lock_message(),
            new_container: None,
            step: Step::StartingNew,
            may_migrate: true,
        }
    }

    /// Writes the journal, whole, before the step it names is taken.
    pub fn write(&self, history_file: &Path) -> Result<()> {
        process::write_file(&path(history_file), &(serde_json::to_string_pretty(self)? + "\n"))
    }

    /// Reads the journal, if a switch left one. A damaged or unknown one is refused with
    /// the file named: nothing is guessed.
    pub fn load(history_file: &Path) -> Result<Option<Self>> {
        let file = path(history_file);
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
        };
        Self::parse(&text).map(Some).with_context(|| {
            format!(
                "the switch journal {} is damaged or of an unknown format: move it aside once the stack is as it should be (`cargo xtask status`)",
                file.display()
            )
        })
    }

    fn parse(text: &str) -> Result<Self> {
        let journal: Journal = serde_json::from_str(text).context("not a switch journal")?;
        if journal.format != FORMAT {
            bail!("unknown format {} (this runner reads format {FORMAT})", journal.format);
        }
        Ok(journal)
    }

    /// Records the switch's new release in the history, once, as the release of the
    /// command that started the switch (who, how and why), whoever finishes it.
    pub fn record_new_release(&self, sh: &Shell, history_file: &Path) -> Result<()> {
        let mut history = History::load(history_file)?;
        if history.current().map(|r| r.image.as_str()) == Some(self.new_image.as_str()) {
            return Ok(());
        }
        let audit = crate::release::Audit {
            by: self.by.clone(),
            command: self.command.clone(),
            message: self.message.clone(),
        };
        crate::targets::record_serving_as(
            sh,
            &mut history,
            history_file,
            &self.new_image,
            self.previous.clone(),
            audit,
        )
    }

    pub fn describe(&self) -> String {
        format!(
            "`{}` by {} (pid {}, started {}), from {} to {}, stopped at step {}",
            self.command,
            self.by,
            self.pid,
            self.started_at,
            self.old_image,
            self.new_image,
            self.step.name()
        )
    }
}

pub fn clear(history_file: &Path) -> Result<()> {
    process::remove_file(&path(history_file))
}

/// What the repair does with an unfinished switch: go on to the new release, which was
/// ready through the proxy (or becomes ready), or go back to the old one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    Forward,
    Back,
}

/// Before the old container was stopped the old release served all along: back. Once it
/// was stopped, the new release may already serve: forward if it runs and turns ready.
pub fn decide(step: Step, new_running: bool) -> Repair {
    match step {
        Step::StartingNew | Step::StoppingOld => Repair::Back,
        Step::TakingOver | Step::RemovingOld if new_running => Repair::Forward,
        Step::TakingOver | Step::RemovingOld => Repair::Back,
    }
}

/// Finds the journal of an unfinished switch, if any, says what it found, and brings the
/// stack to exactly one serving release: the new one if the switch got far enough and it
/// turns ready, else the old one. Run by every changing command, under the lock, before
/// anything else. Returns whether there was anything to repair.
pub fn repair(sh: &Shell, compose: &Compose, history_file: &Path, timeout: Duration) -> Result<bool> {
    let Some(journal) = Journal::load(history_file)? else { return Ok(false) };
    process::say(&format!("found an unfinished switch: {}; repairing it first", journal.describe()));
    repair_with(sh, compose, history_file, &journal, timeout).with_context(|| {
        format!(
            "cannot repair the unfinished switch; if its previous release cannot come back, `cargo xtask down` \
             (volumes kept) closes it, then `cargo xtask up` starts afresh; the journal is {}",
            path(history_file).display()
        )
    })?;
    Ok(true)
}

fn repair_with(
    sh: &Shell,
    compose: &Compose,
    history_file: &Path,
    journal: &Journal,
    timeout: Duration,
) -> Result<()> {
    let service: Vec<_> =
        super::containers(sh, compose)?.into_iter().filter(|c| c.service == project::NAME).collect();
    let old = service.iter().find(|c| c.id == journal.old_container);
    // The new container: the one recorded, else (the switch had no time to record it) one
    // that is neither the old one nor exited.
    let new = journal
        .new_container
        .as_ref()
        .and_then(|id| service.iter().find(|c| &c.id == id))
        .or_else(|| service.iter().find(|c| c.id != journal.old_container && c.state != "exited"));
    let new_running = new.is_some_and(|c| c.state == "running");
    let docker = |args: &[&str]| process::run(sh, &Cmd::new("docker").args(args.iter().copied()));
    if decide(journal.step, new_running) == Repair::Forward {
        let compose_new = compose.clone().var("LOGBOOK_IMAGE", &journal.new_image);
        if let Some(old) = old {
            // It must not take the database back: stop it for good before waiting.
            docker(&["stop", &old.id])?;
        }
        match process::outcome(super::wait_ready(sh, &compose_new, timeout))? {
            Ok(_) => {
                // Every other service container goes: the old one, and any stray.
                for other in service.iter().filter(|c| Some(&c.id) != new.map(|n| &n.id)) {
                    docker(&["stop", &other.id])?;
                    docker(&["rm", "--force", "--volumes", &other.id])?;
                }
                journal.record_new_release(sh, history_file)?;
                if let Some(new) = new {
                    super::snapshot::record_taken(sh, &new.id, &journal.new_image, history_file)?;
                }
                clear(history_file)?;
                process::say(&format!(
                    "repaired: {} serves; the old container is removed",
                    journal.new_image
                ));
                return Ok(());
            }
            Err(e) => {
                process::say(&format!("{} did not become ready ({e:#}); going back", journal.new_image))
            }
        }
    }
    // Back: every service container but the old one goes, stopped first (it may answer
    // requests, which it finishes).
    for other in service.iter().filter(|c| c.id != journal.old_container) {
        docker(&["stop", &other.id])?;
        docker(&["rm", "--force", "--volumes", &other.id])?;
    }
    if journal.step != Step::StartingNew && journal.may_migrate {
        // The new release had the database: it may have migrated it past the old one.
        if let Some(old) = old.filter(|c| c.state == "running") {
            docker(&["stop", &old.id])?;
        }
        super::snapshot::make_runnable(sh, compose, &journal.old_image, &journal.new_image)?;
    }
    match old {
        Some(old) => {
            docker(&["start", &old.id])?;
        }
        None => {
            let compose_old = compose.clone().var("LOGBOOK_IMAGE", &journal.old_image);
            process::run(sh, &compose_old.up())?;
        }
    }
    let compose_old = compose.clone().var("LOGBOOK_IMAGE", &journal.old_image);
    super::wait_ready(sh, &compose_old, timeout)
        .with_context(|| format!("{} did not become ready again", journal.old_image))?;
    clear(history_file)?;
    process::say(&format!("repaired: {} serves again; the new container is removed", journal.old_image));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_journal_round_trips_and_refuses_what_it_does_not_know() {
        let sh = Shell::new().unwrap();
        let dir = sh.create_temp_dir().unwrap();
        let history = dir.path().join("releases-logbook.json");
        assert_eq!(Journal::load(&history).unwrap(), None);
        let mut journal = Journal::begin("c0ffee", "logbook:aaa", "logbook:bbb", Some("logbook:aaa".into()));
        journal.write(&history).unwrap();
        journal.new_container = Some("beef".into());
        journal.step = Step::StoppingOld;
        journal.write(&history).unwrap();
        let loaded = Journal::load(&history).unwrap().unwrap();
        assert_eq!(loaded, journal);
        assert!(std::fs::read_to_string(path(&history)).unwrap().contains("\"step\": \"stopping-old\""));
        assert!(loaded.describe().ends_with("from logbook:aaa to logbook:bbb, stopped at step stopping-old"));
        std::fs::write(path(&history), "{\"format\": 2}").unwrap();
        let err = format!("{:#}", Journal::load(&history).unwrap_err());
        assert!(
            err.contains("releases-logbook.journal is damaged or of an unknown format: move it aside"),
            "{err}"
        );
        clear(&history).unwrap();
        assert_eq!(Journal::load(&history).unwrap(), None);
    }

    #[test]
    fn a_switch_goes_forward_only_once_the_old_release_was_stopped_and_the_new_one_runs() {
        assert_eq!(decide(Step::StartingNew, true), Repair::Back);
        assert_eq!(decide(Step::StoppingOld, true), Repair::Back);
        assert_eq!(decide(Step::TakingOver, true), Repair::Forward);
        assert_eq!(decide(Step::TakingOver, false), Repair::Back);
        assert_eq!(decide(Step::RemovingOld, true), Repair::Forward);
        assert_eq!(decide(Step::RemovingOld, false), Repair::Back);
    }
}

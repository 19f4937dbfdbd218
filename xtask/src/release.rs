//! Release policy: the history of what ran healthy, which release a rollback returns to,
//! and what a switch does when the new image fails. Pure: no process, no Docker, no clock;
//! the deploy targets apply these decisions.
//!
//! The history is a small JSON file per compose project or swarm stack, in the stack's
//! state directory on the host ([`crate::outside::state`]), replaced whole on every write:
//!
//! ```json
//! {"format": 1, "releases": [
//!   {"image": "logbook:0123456789ab", "revision": "0123…", "deployed_at": "2026-11-23T10:00:00Z",
//!    "previous": null, "by": "alice@web1", "command": "up --tag 0123456789ab",
//!    "message": "hotfix for #42"}
//! ]}
//! ```
//!
//! Newest last. `by` is `user@host`, or the CI run's address; `message` is the one the
//! command's lock was taken with (`--message`). Records written before them lack both. The runner never deletes images; those named here stay usable for rollback.

use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

const FORMAT: u64 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub image: String,
    pub revision: String,
    pub deployed_at: String,
    pub previous: Option<String>,
    #[serde(default)]
    pub by: String,
    #[serde(default)]
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The snapshot this release's migration took of the database before changing it:
    /// `rollback --with-data` goes back with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<Snapshot>,
}

/// A verified copy of the database from before a migration, in the stack's volume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Its path in the service's container (`/data/snapshots/…`).
    pub file: String,
    /// The schema it is at.
    pub schema: usize,
}

/// Who changed the stack, how, and why: recorded with each release.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Audit {
    pub by: String,
    pub command: String,
    pub message: Option<String>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct History {
    pub releases: Vec<Release>,
}

/// The file as stored.
#[derive(Serialize, Deserialize)]
struct HistoryFile {
    format: u64,
    releases: Vec<Release>,
}

impl History {
    /// Reads the history; a missing file is an empty history, a damaged one an error.
    pub fn load(path: &Path) -> Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(History::default()),
            Err(e) => {
                return Err(e).with_context(|| format!("cannot read the release history {}", path.display()));
            }
        };
        Self::parse(&text).with_context(|| {
            format!("the release history {} is damaged: repair it or move it aside", path.display())
        })
    }

    pub fn parse(text: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct Format {
            format: serde_json::Value,
        }
        let format: Format = serde_json::from_str(text).context("not a release history")?;
        if format.format != FORMAT {
            bail!("unknown format {} (this runner reads format {FORMAT})", format.format);
        }
        let file: HistoryFile = serde_json::from_str(text).context("a release is incomplete")?;
        Ok(History { releases: file.releases })
    }

    pub fn to_json(&self) -> String {
        let file = HistoryFile { format: FORMAT, releases: self.releases.clone() };
        serde_json::to_string_pretty(&file).unwrap_or_default() + "\n"
    }

    /// `rollback --list --json`: the project, the running image, and every recorded
    /// release, newest first, as stored.
    pub fn to_list_json(&self, project: &str, running: Option<&str>) -> String {
        let releases: Vec<&Release> = self.releases.iter().rev().collect();
        serde_json::json!({ "project": project, "running": running, "releases": releases }).to_string()
    }

    pub fn current(&self) -> Option<&Release> {
        self.releases.last()
    }

    /// Appends a release that became ready.
    pub fn record(
        &mut self,
        image: &str,
        revision: &str,
        deployed_at: &str,
        previous: Option<String>,
        audit: Audit,
    ) {
        self.releases.push(Release {
            image: image.to_owned(),
            revision: revision.to_owned(),
            deployed_at: deployed_at.to_owned(),
            previous,
            by: audit.by,
            command: audit.command,
            message: audit.message,
            snapshot: None,
        });
    }

    /// Whether a release already records `file` as its snapshot.
    pub fn has_snapshot(&self, file: &str) -> bool {
        self.releases.iter().any(|r| r.snapshot.as_ref().is_some_and(|s| s.file == file))
    }

    /// The newest record of `image`.
    pub fn latest_of(&self, image: &str) -> Option<&Release> {
        self.find(image)
    }

    /// Records `snapshot` with the newest record of `image`.
    pub fn set_snapshot(&mut self, image: &str, snapshot: Snapshot) {
        if let Some(release) = self.releases.iter_mut().rev().find(|r| r.image == image) {
            release.snapshot = Some(snapshot);
        }
    }

    fn find(&self, image: &str) -> Option<&Release> {
        self.releases.iter().rev().find(|r| r.image == image)
    }

    /// The image a rollback returns to: `to` (a tag or image, which must be in the
    /// history), else the newest release other than what runs (or last ran). `present`
    /// says whether an image is still on the engine. `scope` names the history in errors
    /// ("project logbook", say). Every refusal says that nothing was changed, and lists
    /// the releases there are.
    pub fn rollback_target(
        &self,
        scope: &str,
        running: Option<&str>,
        to: Option<&str>,
        present: impl Fn(&str) -> bool,
    ) -> Result<String> {
        if self.releases.is_empty() {
            bail!("no release history for {scope} yet: `cargo xtask up` or `deploy` records one");
        }
        let known = || format!("known releases (newest first):\n{}", self.table(running));
        let current = running.map(str::to_owned).or_else(|| self.current().map(|r| r.image.clone()));
        let target = match to.map(crate::project::image_name) {
            Some(image) => match self.find(&image) {
                Some(release) => &release.image,
                None => bail!(
                    "{image} is not in the release history of {scope}; nothing was changed\n{}",
                    known()
                ),
            },
            None => match self.releases.iter().rev().find(|r| Some(&r.image) != current.as_ref()) {
                Some(release) => &release.image,
                None => {
                    bail!("there is no earlier release to roll back to; nothing was changed\n{}", known())
                }
            },
        };
        if !present(target) {
            bail!(
                "{target} is in the history but its image is gone from this engine (rebuild or pull it); nothing was changed\n{}",
                known()
            );
        }
        Ok(target.clone())
    }

    /// Newest first, each image once, the running one marked.
    pub fn table(&self, running: Option<&str>) -> String {
        if self.releases.is_empty() {
            return "  (no releases recorded yet)".to_owned();
        }
        let mut seen = Vec::new();
        self.releases
            .iter()
            .rev()
            .filter(|r| {
                let first = !seen.contains(&&r.image);
                seen.push(&r.image);
                first
            })
            .map(|r| {
                let mark = if Some(r.image.as_str()) == running { "*" } else { " " };
                let revision: String = r.revision.chars().take(12).collect();
                let why = r.message.as_deref().map(|m| format!(" {m:?}")).unwrap_or_default();
                let how = if r.command.is_empty() { String::new() } else { format!(" `{}`", r.command) };
                let snapshot = r
                    .snapshot
                    .as_ref()
                    .map(|s| format!(" [snapshot at schema {}]", s.schema))
                    .unwrap_or_default();
                format!(
                    "{mark} {:<28} {revision:<12}  {}  {}{how}{why}{snapshot}",
                    r.image, r.deployed_at, r.by
                )
                .trim_end()
                .to_owned()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// What a switch to a new image does if that image never becomes ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OnFailure {
    /// Bring this image back and wait for it.
    Restore(String),
    /// Leave the failed release in place for diagnosis (asked for, or nothing else to run).
    KeepFailed,
    /// Nothing ran before and nothing can be restored: stop what was started.
    StopNew,
}

/// The decision for one switch, made before anything changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchPlan {
    /// What the new release replaces, as recorded in the history.
    pub previous: Option<String>,
    pub on_failure: OnFailure,
}

/// Plans a switch to `image`: the previous release is what runs now, else the last one
/// recorded (a stopped stack); re-deploying the running image has no previous.
/// `restore_on_failure`: bring the previous release back if `image` fails.
pub fn plan_switch(
    running: Option<&str>,
    history: &History,
    image: &str,
    restore_on_failure: bool,
) -> SwitchPlan {
    let previous = running
        .map(str::to_owned)
        .or_else(|| history.current().map(|r| r.image.clone()))
        .filter(|p| p != image);
    let on_failure = match (&previous, running) {
        (Some(previous), _) if restore_on_failure => OnFailure::Restore(previous.clone()),
        (_, Some(_)) => OnFailure::KeepFailed,
        (Some(_), None) | (None, None) => OnFailure::StopNew,
    };
    SwitchPlan { previous, on_failure }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn release(image: &str, previous: Option<&str>) -> Release {
        Release {
            image: image.into(),
            revision: format!("{}0000000000000", image.trim_start_matches("logbook:")),
            deployed_at: "2026-11-23T10:00:00Z".into(),
            previous: previous.map(Into::into),
            by: String::new(),
            command: String::new(),
            message: None,
            snapshot: None,
        }
    }

    #[test]
    fn the_json_list_is_newest_first_with_every_field() {
        let mut h = History::default();
        h.record("logbook:aaa", "r1", "2026-12-04T10:00:00Z", None, Audit::default());
        h.record("logbook:bbb", "r2", "2026-12-04T11:00:00Z", Some("logbook:aaa".into()), Audit::default());
        h.set_snapshot("logbook:bbb", Snapshot { file: "/data/snapshots/schema-2-x.db".into(), schema: 2 });
        let value: serde_json::Value =
            serde_json::from_str(&h.to_list_json("logbook", Some("logbook:bbb"))).unwrap();
        assert_eq!(value["running"], "logbook:bbb");
        assert_eq!(value["releases"][0]["image"], "logbook:bbb");
        assert_eq!(value["releases"][0]["previous"], "logbook:aaa");
        assert_eq!(value["releases"][0]["snapshot"]["schema"], 2);
        assert_eq!(value["releases"][1]["revision"], "r1");
        assert!(value["releases"][1].get("snapshot").is_none());
    }

    #[test]
    fn the_list_says_who_deployed_each_release_how_and_why() {
        let mut h = History::default();
        h.record("logbook:aaa", "r1", "2026-12-04T10:00:00Z", None, Audit::default());
        let audit = Audit {
            by: "alice@web1".into(),
            command: "up --tag bbb".into(),
            message: Some("hotfix #42".into()),
        };
        h.record("logbook:bbb", "r2", "2026-12-04T11:00:00Z", Some("logbook:aaa".into()), audit);
        let parsed = History::parse(&h.to_json()).unwrap();
        assert_eq!(parsed, h);
        let table = parsed.table(Some("logbook:bbb"));
        assert_eq!(
            table,
            "* logbook:bbb                  r2            2026-12-04T11:00:00Z  alice@web1 `up --tag bbb` \"hotfix #42\"\n  logbook:aaa                  r1            2026-12-04T10:00:00Z"
        );
    }

    fn history(images: &[&str]) -> History {
        let mut history = History::default();
        for image in images {
            let previous = history.current().map(|r| r.image.clone());
            history.record(image, "rev", "2026-11-23T10:00:00Z", previous, Audit::default());
        }
        history
    }

    const ALL_PRESENT: fn(&str) -> bool = |_| true;

    #[test]
    fn history_round_trips_through_its_file() {
        let dir = std::env::temp_dir().join(format!("xtask-history-{}", std::process::id()));
        let path = dir.join("state/releases-logbook.json");
        assert_eq!(History::load(&path).unwrap(), History::default(), "no file is an empty history");
        let mut history = History::default();
        history.releases.push(release("logbook:aaa", None));
        history.releases.push(release("logbook:bbb", Some("logbook:aaa")));
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, history.to_json()).unwrap();
        assert_eq!(History::load(&path).unwrap(), history);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"format\": 1") && text.contains("\"previous\": \"logbook:aaa\""), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_damaged_history_is_a_clear_error() {
        let dir = std::env::temp_dir().join(format!("xtask-damaged-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("releases-logbook.json");
        for (damaged, why) in [
            ("{\"format\": 1, \"releases\": [{\"image\": \"x\"", "not a release history"),
            ("{\"format\": 1, \"releases\": [{\"image\": \"x\"}]}", "a release is incomplete"),
            ("{\"format\": 9, \"releases\": []}", "unknown format 9"),
            ("[]", "not a release history"),
        ] {
            std::fs::write(&path, damaged).unwrap();
            let err = format!("{:#}", History::load(&path).unwrap_err());
            assert!(
                err.contains("is damaged") && err.contains("move it aside") && err.contains(why),
                "{err}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn rollback_goes_to_the_newest_other_release() {
        let h = history(&["logbook:aaa", "logbook:bbb", "logbook:ccc", "logbook:ccc"]);
        let target = |running, to| h.rollback_target("project logbook", running, to, ALL_PRESENT);
        assert_eq!(target(Some("logbook:ccc"), None).unwrap(), "logbook:bbb");
        assert_eq!(target(Some("logbook:bbb"), None).unwrap(), "logbook:ccc");
        // A stopped stack: the last recorded release counts as current.
        assert_eq!(target(None, None).unwrap(), "logbook:bbb");
        assert_eq!(target(Some("logbook:ccc"), Some("aaa")).unwrap(), "logbook:aaa");
        assert_eq!(target(Some("logbook:ccc"), Some("logbook:aaa")).unwrap(), "logbook:aaa");
    }

    #[test]
    fn rollback_refusals_change_nothing_and_list_the_releases() {
        let empty = History::default().rollback_target("project logbook", None, None, ALL_PRESENT);
        assert_eq!(
            empty.unwrap_err().to_string(),
            "no release history for project logbook yet: `cargo xtask up` or `deploy` records one"
        );
        let h = history(&["logbook:aaa", "logbook:bbb"]);
        let unknown = h.rollback_target("project logbook", Some("logbook:bbb"), Some("zzz"), ALL_PRESENT);
        let unknown = unknown.unwrap_err().to_string();
        assert!(unknown.starts_with("logbook:zzz is not in the release history of project logbook; nothing"));
        assert!(unknown.contains("* logbook:bbb") && unknown.contains("  logbook:aaa"), "{unknown}");
        let only = history(&["logbook:aaa", "logbook:aaa"]);
        let nothing = only.rollback_target("project logbook", Some("logbook:aaa"), None, ALL_PRESENT);
        assert!(nothing.unwrap_err().to_string().starts_with("there is no earlier release to roll back to"));
        let gone =
            h.rollback_target("project logbook", Some("logbook:bbb"), None, |image| image != "logbook:aaa");
        let gone = gone.unwrap_err().to_string();
        assert!(gone.starts_with("logbook:aaa is in the history but its image is gone"), "{gone}");
        assert!(gone.contains("nothing was changed"), "{gone}");
    }

    #[test]
    fn the_table_lists_each_image_once_newest_first() {
        let h = history(&["logbook:aaa", "logbook:bbb", "logbook:ccc", "logbook:ccc"]);
        let table = h.table(Some("logbook:ccc"));
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(lines[0].starts_with("* logbook:ccc") && lines[2].starts_with("  logbook:aaa"), "{table}");
        assert_eq!(History::default().table(None), "  (no releases recorded yet)");
    }

    #[test]
    fn a_first_release_that_fails_is_stopped() {
        let plan = plan_switch(None, &History::default(), "logbook:aaa", true);
        assert_eq!(plan, SwitchPlan { previous: None, on_failure: OnFailure::StopNew });
    }

    #[test]
    fn a_failed_switch_restores_what_ran() {
        let h = history(&["logbook:aaa"]);
        let plan = plan_switch(Some("logbook:aaa"), &h, "logbook:bbb", true);
        assert_eq!(plan.previous.as_deref(), Some("logbook:aaa"));
        assert_eq!(plan.on_failure, OnFailure::Restore("logbook:aaa".into()));
        // Without --no-rollback's restore, the failed release stays for diagnosis.
        let plan = plan_switch(Some("logbook:aaa"), &h, "logbook:bbb", false);
        assert_eq!(plan.on_failure, OnFailure::KeepFailed);
    }

    #[test]
    fn a_stopped_stack_restores_its_last_release_or_stops() {
        let h = history(&["logbook:aaa"]);
        let plan = plan_switch(None, &h, "logbook:bbb", true);
        assert_eq!(plan.on_failure, OnFailure::Restore("logbook:aaa".into()));
        let plan = plan_switch(None, &h, "logbook:bbb", false);
        assert_eq!(plan, SwitchPlan { previous: Some("logbook:aaa".into()), on_failure: OnFailure::StopNew });
    }

    #[test]
    fn redeploying_the_running_image_has_nothing_to_restore() {
        let h = history(&["logbook:aaa"]);
        let plan = plan_switch(Some("logbook:aaa"), &h, "logbook:aaa", true);
        assert_eq!(plan, SwitchPlan { previous: None, on_failure: OnFailure::KeepFailed });
        let plan = plan_switch(None, &h, "logbook:aaa", true);
        assert_eq!(plan, SwitchPlan { previous: None, on_failure: OnFailure::StopNew });
    }

    #[test]
    fn recording_appends_newest_last() {
        let mut h = History::default();
        h.record("logbook:aaa", "r1", "t1", None, Audit::default());
        h.record("logbook:bbb", "r2", "t2", Some("logbook:aaa".into()), Audit::default());
        assert_eq!(h.current().unwrap(), &release_with("logbook:bbb", "r2", "t2", Some("logbook:aaa")));
        assert_eq!(h.releases.len(), 2);
    }

    fn release_with(image: &str, revision: &str, at: &str, previous: Option<&str>) -> Release {
        Release {
            image: image.into(),
            revision: revision.into(),
            deployed_at: at.into(),
            previous: previous.map(Into::into),
            by: String::new(),
            command: String::new(),
            message: None,
            snapshot: None,
        }
    }
}

//! Releases: the history of what ran healthy, and health-gated switching between images.
//!
//! The history is a small JSON file per compose project, under the state directory
//! (`.logbook/`, or `LOGBOOK_STATE_DIR`), replaced atomically on every write:
//!
//! ```json
//! {"format": 1, "releases": [
//!   {"image": "logbook:0123456789ab", "revision": "0123…", "deployed_at": "2026-11-23T10:00:00Z",
//!    "previous": null}
//! ]}
//! ```
//!
//! Newest last. An entry is appended each time an image becomes ready through `up`,
//! `rollback` or `deploy`. The runner never deletes images; those named here stay usable
//! for rollback.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};
use xshell::Shell;

use crate::docker::{self, Compose};
use crate::process;
use crate::stack::{self, OnDrop, StackGuard};
use crate::{project, time};

const FORMAT: u64 = 1;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    pub image: String,
    pub revision: String,
    pub deployed_at: String,
    pub previous: Option<String>,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct History {
    pub releases: Vec<Release>,
}

/// Where `project`'s history lives.
pub fn history_path(sh: &Shell, project: &str) -> PathBuf {
    let dir = std::env::var("LOGBOOK_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| sh.current_dir().join(".logbook"));
    dir.join(format!("releases-{project}.json"))
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
        let doc: Value = serde_json::from_str(text).context("not valid JSON")?;
        if doc["format"] != FORMAT {
            bail!("unknown format {} (this runner reads format {FORMAT})", doc["format"]);
        }
        let entries = doc["releases"].as_array().context("no releases list")?;
        let releases = entries
            .iter()
            .map(|r| {
                let field = |name: &str| {
                    r[name].as_str().map(str::to_owned).with_context(|| format!("a release has no {name}"))
                };
                Ok(Release {
                    image: field("image")?,
                    revision: field("revision")?,
                    deployed_at: field("deployed_at")?,
                    previous: r["previous"].as_str().map(str::to_owned),
                })
            })
            .collect::<Result<_>>()?;
        Ok(History { releases })
    }

    pub fn to_json(&self) -> String {
        let releases: Vec<Value> = self
            .releases
            .iter()
            .map(|r| json!({"image": r.image, "revision": r.revision, "deployed_at": r.deployed_at, "previous": r.previous}))
            .collect();
        let mut text = serde_json::to_string_pretty(&json!({"format": FORMAT, "releases": releases}))
            .unwrap_or_default();
        text.push('\n');
        text
    }

    /// Writes the whole file beside its final name, syncs it, then renames it into place:
    /// a crash or Ctrl-C leaves the old history or the new one, never half of either.
    pub fn save(&self, path: &Path) -> Result<()> {
        let dir = path.parent().context("history path has no directory")?;
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let partial = path.with_extension("json.partial");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut file = std::fs::File::create(&partial)?;
            file.write_all(self.to_json().as_bytes())?;
            file.sync_all()?;
            std::fs::rename(&partial, path)?;
            std::fs::File::open(dir)?.sync_all()
        };
        write().with_context(|| format!("cannot write the release history {}", path.display()))
    }

    pub fn current(&self) -> Option<&Release> {
        self.releases.last()
    }

    /// The newest release whose image differs from `current`: what a rollback returns to.
    pub fn previous_to(&self, current: &str) -> Option<&Release> {
        self.releases.iter().rev().find(|r| r.image != current)
    }

    pub fn find(&self, image: &str) -> Option<&Release> {
        self.releases.iter().rev().find(|r| r.image == image)
    }

    /// Newest first, one line each, the running image marked.
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
                format!("{mark} {:<28} {revision:<12}  {}", r.image, r.deployed_at)
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `logbook:abc` stays; `abc` becomes `logbook:abc`.
pub fn image_name(tag: &str) -> String {
    if tag.contains(':') { tag.to_owned() } else { format!("{}:{tag}", project::NAME) }
}

/// The image the service container runs now, if it exists.
pub fn running_image(sh: &Shell, compose: &Compose) -> Result<Option<String>> {
    match stack::container_id(sh, compose)? {
        Some(id) => Ok(Some(process::query(sh, &docker::inspect_format(&id, "{{.Config.Image}}"))?)),
        None => Ok(None),
    }
}

fn image_revision(sh: &Shell, image: &str) -> String {
    let format = "{{index .Config.Labels \"org.opencontainers.image.revision\"}}";
    process::query(sh, &docker::inspect_format(image, format)).unwrap_or_else(|_| "unknown".into())
}

/// How a switch behaves when the new image does not become ready.
#[derive(Debug, Clone, Copy)]
pub struct Gate {
    pub timeout: Duration,
    /// Bring the previous image back automatically.
    pub restore_previous: bool,
}

/// Switches `compose`'s service to `image`, waits until it is ready and records it.
///
/// If it is not ready by the deadline (or the user presses Ctrl-C), the new image's logs
/// and health are printed and, unless disabled, the image that ran before is brought back
/// and waited for. A stack that was not running before is stopped again (volumes kept).
/// Returns the published address.
pub fn deploy(sh: &Shell, compose: &Compose, history_file: &Path, image: &str, gate: Gate) -> Result<String> {
    let compose_new = compose.clone().var("LOGBOOK_IMAGE", image);
    if process::runner().dry_run {
        process::run(sh, &compose_new.up())?;
        return Ok("<published address>".into());
    }
    let mut history = History::load(history_file)?;
    let running = running_image(sh, compose)?;
    if running.is_none() {
        stack::ensure_host_port_free(sh, compose)?;
    }
    // What to return to: what runs now, else the last release recorded.
    let previous =
        running.clone().or_else(|| history.current().map(|r| r.image.clone())).filter(|p| p != image);

    let switched = {
        // Prints the new image's logs and health if it fails; stops a fresh stack.
        let on_drop = if running.is_some() || (previous.is_some() && gate.restore_previous) {
            OnDrop::DiagnoseIfFailed
        } else {
            OnDrop::DownIfFailed
        };
        let guard = StackGuard::new(sh, &compose_new, on_drop);
        let result = process::run(sh, &compose_new.up())
            .and_then(|()| stack::wait_ready(sh, &compose_new, gate.timeout));
        if result.is_ok() {
            guard.succeeded();
        }
        result
    };
    match switched {
        Ok(addr) => {
            history.releases.push(Release {
                image: image.to_owned(),
                revision: image_revision(sh, image),
                deployed_at: time::format_rfc3339_utc(time::now_unix()),
                previous,
            });
            history.save(history_file)?;
            Ok(addr)
        }
        Err(e) => match previous.filter(|_| gate.restore_previous) {
            Some(previous) => {
                process::say(&format!("{image} did not become ready; restoring {previous}"));
                process::clear_interrupt();
                let compose_old = compose.clone().var("LOGBOOK_IMAGE", &previous);
                let restored = process::run(sh, &compose_old.up())
                    .and_then(|()| stack::wait_ready(sh, &compose_old, gate.timeout));
                match restored {
                    Ok(addr) => {
                        bail!("{image} failed: {e:#}\nrestored {previous}, which is ready at http://{addr}")
                    }
                    Err(e2) => bail!("{image} failed: {e:#}\nrestoring {previous} failed too: {e2:#}"),
                }
            }
            None => Err(e.context(format!("{image} did not become ready"))),
        },
    }
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
        }
    }

    #[test]
    fn history_round_trips_through_its_file_atomically() {
        let sh = Shell::new().unwrap();
        let dir = sh.create_temp_dir().unwrap();
        let path = dir.path().join("state/releases-logbook.json");
        assert_eq!(History::load(&path).unwrap(), History::default(), "no file is an empty history");
        let mut history = History::default();
        history.releases.push(release("logbook:aaa", None));
        history.save(&path).unwrap();
        history.releases.push(release("logbook:bbb", Some("logbook:aaa")));
        history.save(&path).unwrap();
        assert_eq!(History::load(&path).unwrap(), history);
        assert!(!path.with_extension("json.partial").exists());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"format\": 1") && text.contains("\"previous\": \"logbook:aaa\""), "{text}");
    }

    #[test]
    fn a_damaged_history_is_a_clear_error() {
        let sh = Shell::new().unwrap();
        let dir = sh.create_temp_dir().unwrap();
        let path = dir.path().join("releases-logbook.json");
        for damaged in
            ["{\"format\": 1, \"releases\": [{\"image\": \"x\"", "{\"format\": 9, \"releases\": []}", "[]"]
        {
            std::fs::write(&path, damaged).unwrap();
            let err = format!("{:#}", History::load(&path).unwrap_err());
            assert!(err.contains("is damaged") && err.contains("move it aside"), "{err}");
        }
    }

    #[test]
    fn rollback_targets_the_newest_other_image() {
        let history = History {
            releases: vec![
                release("logbook:aaa", None),
                release("logbook:bbb", Some("logbook:aaa")),
                release("logbook:ccc", Some("logbook:bbb")),
                release("logbook:ccc", Some("logbook:ccc")),
            ],
        };
        assert_eq!(history.previous_to("logbook:ccc").unwrap().image, "logbook:bbb");
        assert_eq!(history.previous_to("logbook:bbb").unwrap().image, "logbook:ccc");
        assert!(history.find("logbook:aaa").is_some() && history.find("logbook:zzz").is_none());
        let table = history.table(Some("logbook:ccc"));
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "each image once: {table}");
        assert!(lines[0].starts_with("* logbook:ccc") && lines[2].starts_with("  logbook:aaa"), "{table}");
        assert!(History::default().previous_to("logbook:aaa").is_none());
    }

    #[test]
    fn bare_tags_get_the_repository() {
        assert_eq!(image_name("abc"), "logbook:abc");
        assert_eq!(image_name("registry.example/logbook:abc"), "registry.example/logbook:abc");
    }
}

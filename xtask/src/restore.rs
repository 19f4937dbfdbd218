//! `cargo xtask restore FILE`: put a verified backup into the stack's data volume.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use xshell::Shell;

use crate::backup;
use crate::docker::{self, Compose};
use crate::flags::Restore;
use crate::process::{self, Cmd};
use crate::release::{self, History};
use crate::{project, stack};

impl Restore {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let compose = Compose::app(docker::connect(sh)?);
        let history = release::history_path(sh, &compose.project);
        let report = restore(sh, &compose, &history, &self.file, Duration::from_secs(self.timeout))?;
        process::result(&report);
        Ok(())
    }
}

/// Verifies `file` first (nothing is stopped for a bad file), stops the service, replaces
/// the database through a one-off container of the same image (which keeps the old one
/// as a `.bak` in the volume), starts the service and waits until it is ready.
pub fn restore(
    sh: &Shell,
    compose: &Compose,
    history_file: &Path,
    file: &Path,
    timeout: Duration,
) -> Result<String> {
    let size = std::fs::metadata(file)
        .map(|m| m.len())
        .with_context(|| format!("cannot read {}", file.display()))?;
    if size == 0 {
        bail!("{} is empty; nothing was changed", file.display());
    }
    let dry_run = process::runner().dry_run;
    let image = match release::running_image(sh, compose) {
        Ok(Some(image)) => image,
        _ if dry_run => "<image>".to_owned(),
        _ => History::load(history_file)?.current().map(|r| r.image.clone()).with_context(|| {
            format!(
                "project {} has no running service and no release history: `cargo xtask up` first",
                compose.project
            )
        })?,
    };
    backup::verify(sh, &image, file).map_err(|e| e.context("refused; nothing was changed"))?;
    let volume = format!("{}_data", compose.project);

    process::run(sh, &compose.cmd(&["stop", project::NAME]))?;
    let restored = process::capture(sh, &restore_in_container(&image, &volume, file)?, "{}");
    // Whatever happened, the service comes back: on the restored data, or on the old data
    // (a failed restore changes nothing).
    let compose = compose.clone().var("LOGBOOK_IMAGE", &image);
    process::run(sh, &compose.up())?;
    if !dry_run {
        stack::wait_ready(sh, &compose, timeout)?;
    }
    let report: serde_json::Value =
        serde_json::from_str(&restored?).context("logbook restore printed bad JSON")?;
    Ok(format!(
        "restored {} entries from {} into volume {volume}; the replaced database is kept there as {}",
        report["entries"],
        file.display(),
        report["previous"].as_str().unwrap_or("(there was none)")
    ))
}

pub fn restore_in_container(image: &str, volume: &str, file: &Path) -> Result<Cmd> {
    let (mount, path) = docker::mount_file_dir(file, "/restore")?;
    Ok(docker::one_off(
        image,
        &[format!("{volume}:/data"), mount],
        &["restore".to_owned(), "--from".to_owned(), path],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_is_exact() {
        assert_eq!(
            restore_in_container("logbook:1", "logbook_data", Path::new("/srv/b/x.db")).unwrap().to_string(),
            "docker run --rm --network none --volume logbook_data:/data --volume /srv/b:/restore:ro logbook:1 restore --from /restore/x.db"
        );
    }
}

//! `cargo xtask backup`: a consistent copy of the live database, out of the running stack.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use xshell::Shell;

use crate::docker::{self, Compose};
use crate::flags::Backup;
use crate::process::{self, Cmd};
use crate::{project, release, stack, time};

impl Backup {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let compose = Compose::app(docker::connect(sh)?);
        let out = self.out.unwrap_or_else(|| default_backup_path(sh));
        let report = backup(sh, &compose, &out)?;
        if !process::runner().dry_run {
            process::result(&format!(
                "backup: {} ({} bytes, {} entries)",
                out.display(),
                report.bytes,
                report.entries
            ));
        }
        Ok(())
    }
}

fn default_backup_path(sh: &Shell) -> PathBuf {
    let stamp = time::format_rfc3339_utc(time::now_unix()).replace([':', '-'], "");
    sh.current_dir().join("backups").join(format!("{}-{stamp}.db", project::NAME))
}

/// What a verified database file holds, as `logbook verify` reports it.
#[derive(Debug, Default)]
pub struct FileReport {
    pub entries: i64,
    pub bytes: u64,
}

/// Streams `logbook backup --to -` out of the running service into `out` (through a
/// `.partial` file), verifies the copy with the same image, then renames it into place.
pub fn backup(sh: &Shell, compose: &Compose, out: &Path) -> Result<FileReport> {
    if out.exists() {
        bail!("{} already exists; choose another --out", out.display());
    }
    let (container, image) = if process::runner().dry_run {
        ("<container>".to_owned(), "<image>".to_owned())
    } else {
        let container = stack::container_id(sh, compose)?.with_context(|| {
            format!("project {} is not running: start it with `cargo xtask up`", compose.project)
        })?;
        let image = release::running_image(sh, compose)?.unwrap_or_default();
        (container, image)
    };
    let dir = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let partial = PathBuf::from(format!("{}.partial", out.display()));
    let result = process::run_to_file(&exec_backup(&container), &partial)
        .and_then(|()| verify(sh, &image, &partial))
        .and_then(|report| {
            if !process::runner().dry_run {
                std::fs::rename(&partial, out)
                    .with_context(|| format!("cannot rename to {}", out.display()))?;
            }
            Ok(report)
        });
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

pub fn exec_backup(container: &str) -> Cmd {
    Cmd::new("docker").args(["exec", container, "/logbook", "backup", "--to", "-"])
}

/// `logbook verify` in a throwaway container of `image`, with the file's directory
/// mounted read-only and no network: no SQLite is needed on the host.
pub fn verify_in_container(image: &str, file: &Path) -> Result<Cmd> {
    let (mount, path) = docker::mount_file_dir(file, "/check")?;
    Ok(docker::one_off(image, &[mount], &["verify".to_owned(), path]))
}

/// Verifies `file` with `image`'s own `logbook verify`; the error says why it was refused.
pub fn verify(sh: &Shell, image: &str, file: &Path) -> Result<FileReport> {
    let cmd = verify_in_container(image, file)?;
    process::echo(&cmd);
    if process::runner().dry_run {
        return Ok(FileReport::default());
    }
    let output = process::query(sh, &cmd).map_err(|e| {
        let reason = format!("{e:#}");
        let reason =
            reason.lines().rev().find(|l| l.contains("logbook:")).unwrap_or(&reason).trim().to_owned();
        anyhow::anyhow!("{} is not a usable logbook database: {reason}", file.display())
    })?;
    let report: serde_json::Value =
        serde_json::from_str(&output).context("logbook verify printed bad JSON")?;
    Ok(FileReport {
        entries: report["entries"].as_i64().unwrap_or(0),
        bytes: report["bytes"].as_u64().unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_exact() {
        assert_eq!(exec_backup("abc123").to_string(), "docker exec abc123 /logbook backup --to -");
        assert_eq!(
            verify_in_container("logbook:1", Path::new("/srv/backups/x.db")).unwrap().to_string(),
            "docker run --rm --network none --volume /srv/backups:/check:ro logbook:1 verify /check/x.db"
        );
    }
}

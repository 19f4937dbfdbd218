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

/// Restores the replica into a scratch file, verifies it with the running release's
/// image, and prints its age and entry count. Changes nothing in the stack.
fn check_replica(sh: &Shell, compose: &docker::Compose) -> Result<()> {
    let settings = Settings::of(sh, compose).with_context(|| {
        format!("--check-replica: replication is off; set {} (docs/OPERATIONS.md)", replica::URL_VAR)
    })?;
    let scratch = Scratch::new(sh)?;
    let (file, listing) = replica::restore_into(sh, compose, &settings, None, &scratch)?;
    process::needs_effects("verify the replica's copy")?;
    let image = data::image_for(sh, compose, &compose::history_path(sh, compose)?)?;
    let report = data::verify(sh, &image, &file)?;
    let (newest, age) = match listing.as_ref().and_then(|l| l.newest_change()) {
        Some(newest) => (crate::time::format(newest), crate::time::age(newest, SystemTime::now())),
        None => ("unknown".to_owned(), "unknown".to_owned()),
    };
    let bytes = listing.map(|l| l.bytes()).unwrap_or_default();
    process::result(&format!(
        "replica: {} verifies: {} entries; newest change {newest} ({age} ago); {bytes} bytes in the bucket",
        settings.url, report.entries
    ));
    Ok(())
}

fn default_backup_path(sh: &Shell) -> PathBuf {
    let stamp = crate::time::now_rfc3339().replace([':', '-'], "");
    sh.current_dir().join("backups").join(format!("{}-{stamp}.db", project::NAME))
}

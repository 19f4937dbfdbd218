//! `cargo xtask backup`: a consistent copy of the live database, out of the running stack;
//! or, with --check-replica, proof that the off-host replica restores.

use std::path::PathBuf;

use anyhow::Result;
use xshell::Shell;

use crate::flags::Backup;
use crate::outside::docker;
use crate::outside::process;
use crate::project;
use crate::targets::compose;
use crate::targets::compose::data;

impl Backup {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let compose = compose::stack(sh, docker::connect(sh)?);
        if self.check_replica {
            let line = data::check_replica(sh, &compose)?;
            process::result(&line);
            return Ok(());
        }
        let out = self.out.unwrap_or_else(|| default_backup_path(sh));
        // A copy taken in the middle of a switch or a restore could be of either side.
        let wait = crate::outside::state::LockRequest {
            wait: std::time::Duration::from_secs(600),
            reads_only: true,
            ..Default::default()
        };
        let _lock = crate::outside::state::lock(&compose::history_path(sh, &compose)?, &wait)?;
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

fn default_backup_path(sh: &Shell) -> PathBuf {
    let stamp = crate::time::now_rfc3339().replace([':', '-'], "");
    sh.current_dir().join("backups").join(format!("{}-{stamp}.db", project::NAME))
}

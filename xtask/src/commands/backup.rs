//! `cargo xtask backup`: a consistent copy of the live database, out of the running stack.

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
        let out = self.out.unwrap_or_else(|| default_backup_path(sh));
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

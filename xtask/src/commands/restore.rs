//! `cargo xtask restore FILE | --from-replica [--at TIME]`: put a verified backup, or the
//! off-host replica, into the stack's data volume.

use std::time::Duration;

use anyhow::{Context, Result};
use xshell::Shell;

use crate::flags::Restore;
use crate::outside::docker;
use crate::outside::process;
use crate::targets::compose;
use crate::targets::compose::replica::{self, Scratch, Settings};

impl Restore {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let stack = compose::stack(sh, docker::connect(sh)?);
        let history = compose::history_path(sh, &stack);
        let timeout = Duration::from_secs(self.timeout);
        let report = match &self.file {
            Some(file) => compose::data::restore(sh, &stack, &history, file, timeout)?,
            None => {
                let settings = Settings::of(sh, &stack).with_context(|| {
                    format!("--from-replica: replication is off; set {} (docs/OPERATIONS.md)", replica::URL_VAR)
                })?;
                let scratch = Scratch::new(sh)?;
                let file = replica::restore_into(sh, &stack, &settings, self.at, &scratch)?;
                let from = match self.at {
                    Some(at) => format!("the replica at {}", crate::time::format_millis(at)),
                    None => "the replica's newest state".to_owned(),
                };
                process::needs_effects("restore the replica's copy")?;
                compose::data::restore(sh, &stack, &history, &file, timeout)?.replace(
                    &file.display().to_string(),
                    &format!("{from} ({})", settings.url),
                )
            }
        };
        process::result(&report);
        Ok(())
    }
}

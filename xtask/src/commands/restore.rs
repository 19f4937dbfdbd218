//! `cargo xtask restore FILE | --from-replica [--at TIME]`: put a verified backup, or the
//! off-host replica, into the stack's data volume.

use std::time::Duration;

use anyhow::Result;
use xshell::Shell;

use crate::flags::Restore;
use crate::outside::docker;
use crate::outside::process;
use crate::targets::compose;

impl Restore {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let stack = compose::stack(sh, docker::connect(sh)?);
        let history = compose::history_path(sh, &stack)?;
        let timeout = Duration::from_secs(self.timeout);
        let _lock = compose::lock_and_repair(sh, &stack, &history, &self.lock.request(), timeout)?;
        let report = match &self.file {
            Some(file) => {
                compose::data::restore(sh, &stack, &history, file, &file.display().to_string(), timeout)?
            }
            None => compose::data::restore_stack(sh, &stack, &history, self.at, timeout)?,
        };
        process::result(&report);
        Ok(())
    }
}

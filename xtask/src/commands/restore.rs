//! `cargo xtask restore FILE`: put a verified backup into the stack's data volume.

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
        let history = compose::history_path(sh, &stack);
        let report =
            compose::data::restore(sh, &stack, &history, &self.file, Duration::from_secs(self.timeout))?;
        process::result(&report);
        Ok(())
    }
}

//! `cargo xtask up`: build if needed, switch the stack to the image, return once it is ready.

use std::time::Duration;

use anyhow::Result;
use xshell::Shell;

use crate::flags::Up;
use crate::targets::compose::switch;

impl Up {
    pub fn run(self, sh: &Shell) -> Result<()> {
        switch::up(
            sh,
            self.tag.as_deref(),
            self.no_build,
            Duration::from_secs(self.timeout),
            !self.no_rollback,
            &self.lock.request(),
        )
    }
}

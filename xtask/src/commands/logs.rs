//! `cargo xtask logs`: the stack's logs, optionally followed.

use anyhow::Result;
use xshell::Shell;

use crate::flags::Logs;
use crate::outside::docker;
use crate::outside::process;
use crate::targets::compose::{self, monitoring};

impl Logs {
    pub fn run(self, sh: &Shell) -> Result<()> {
        // The monitoring services too, which share the project.
        let compose = monitoring::interpolable(sh, compose::stack(sh, docker::connect(sh)?));
        // Runs with the terminal's stdin, so Ctrl-C and paging behave as in a shell; Ctrl-C
        // is how following ends, not a failure.
        let logs = compose.logs(self.service.as_deref(), self.follow, Some(self.tail));
        // Following runs until the user stops it.
        let logs = if self.follow { logs.limit(process::Limit::Unbounded) } else { logs };
        match process::run(sh, &logs) {
            Err(_) if process::interrupted() => Ok(()),
            other => other,
        }
    }
}

//! `cargo xtask lock status | acquire -m MESSAGE | release`: the stack's lock, and a
//! freeze on deploys that an operator puts and lifts.

use std::time::SystemTime;

use anyhow::Result;
use xshell::Shell;

use crate::flags::{Lock, LockAction};
use crate::outside::state::{self, LockRequest};
use crate::outside::{docker, process};
use crate::targets::compose;

impl Lock {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let stack = compose::stack(sh, docker::connect(sh)?);
        let history = compose::history_path(sh, &stack)?;
        let project = &stack.project;
        match self.action {
            LockAction::Status { json } => {
                let status = state::status(&history)?;
                if json {
                    process::document(&serde_json::to_string(&status)?);
                    return Ok(());
                }
                let now = SystemTime::now();
                process::result(&match (&status.held_by, status.held) {
                    (Some(holder), _) => format!("project {project}: locked by {}", holder.describe(now)),
                    (None, true) => format!("project {project}: locked by a command that is starting"),
                    (None, false) => format!("project {project}: no command holds the lock"),
                });
                if let Some(gone) = &status.left_by {
                    process::result(&format!(
                        "  its last holder, {}, ended without releasing it; the next changing command takes it over",
                        gone.describe(now)
                    ));
                }
                process::result(&match &status.frozen_by {
                    Some(freeze) => {
                        format!(
                            "  deploys frozen by {}; `cargo xtask lock release` lifts it",
                            freeze.describe(now)
                        )
                    }
                    None => "  deploys are not frozen".to_owned(),
                });
                Ok(())
            }
            LockAction::Acquire { message, lock_wait } => {
                if message.trim().is_empty() {
                    anyhow::bail!("--message is empty: say why deploys are frozen");
                }
                let holder = state::freeze(
                    &history,
                    &LockRequest { wait: lock_wait, message: Some(message), reads_only: false },
                )?;
                process::result(&format!(
                    "project {project}: deploys frozen by {}; `cargo xtask lock release` lifts it",
                    holder.describe(SystemTime::now())
                ));
                Ok(())
            }
            LockAction::Release => {
                match state::unfreeze(&history)? {
                    Some(freeze) => process::result(&format!(
                        "project {project}: the freeze by {} is lifted",
                        freeze.describe(SystemTime::now())
                    )),
                    None => process::result(&format!("project {project}: deploys were not frozen")),
                }
                Ok(())
            }
        }
    }
}

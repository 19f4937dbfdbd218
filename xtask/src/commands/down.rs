//! `cargo xtask down`: stop the stack; delete its data only when told to, twice.

use std::io::{BufRead, IsTerminal, Write};

use anyhow::{Result, bail};
use xshell::Shell;

use crate::flags::Down;
use crate::outside::docker;
use crate::outside::process;
use crate::targets::compose;
use crate::targets::compose::monitoring;

impl Down {
    pub fn run(self, sh: &Shell) -> Result<()> {
        // Both files, so monitoring containers and volumes go too.
        let compose = monitoring::interpolable(sh, compose::stack(sh, docker::connect(sh)?));
        if self.volumes && !self.yes {
            confirm_volume_deletion(&compose.project)?;
        }
        let history = compose::history_path(sh, &compose)?;
        let _lock = crate::outside::state::lock(&history, &self.lock.request())?;
        // A planned stop: what the service acknowledged reaches the replica first.
        if compose::replica::is_on(&compose)
            && let Ok(image) = compose::data::image_for(sh, &compose, &history)
        {
            compose::data::drain_before_stop(sh, &compose, &image)?;
        }
        process::run(sh, &compose.down(self.volumes))?;
        // Every container is gone: an unfinished switch has nothing left to repair.
        if let Some(unfinished) = compose::journal::Journal::load(&history).unwrap_or(None) {
            compose::journal::clear(&history)?;
            process::say(&format!(
                "the unfinished switch ({}) is closed: the stack is down",
                unfinished.describe()
            ));
        }
        let what = if self.volumes {
            "stopped; its volumes, and the data in them, are deleted"
        } else {
            "stopped; its data volume is kept"
        };
        process::result(&format!("project {}: {what}", compose.project));
        Ok(())
    }
}

/// Asks on a terminal; refuses outright elsewhere, so scripts never delete data by accident.
#[allow(clippy::print_stderr)] // the prompt
fn confirm_volume_deletion(project: &str) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!(
            "refusing to delete the volumes of project {project} without --yes (no terminal to confirm on); nothing was changed"
        );
    }
    eprint!(
        "Delete the volumes of project {project}, and every entry stored in them? Type 'yes' to confirm: "
    );
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        bail!("not confirmed; nothing was changed");
    }
    Ok(())
}

//! Switching the compose stack between releases, health-gated, as [`release`] plans it.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use xshell::Shell;

use super::{OnDrop, StackGuard};
use crate::outside::docker::{self, Compose};
use crate::outside::{image, process};
use crate::release::{self, History, OnFailure};

/// How a switch behaves when the new image does not become ready.
#[derive(Debug, Clone, Copy)]
pub struct Gate {
    pub timeout: Duration,
    /// Bring the previous image back automatically.
    pub restore_previous: bool,
}

/// `up` and `deploy compose`: the image named by `tag` (pulled from a registry if need
/// be), or this tree's (built if needed), switched to and ready; prints where it listens.
pub fn up(
    sh: &Shell,
    tag: Option<&str>,
    no_build: bool,
    timeout: Duration,
    restore_previous: bool,
) -> Result<()> {
    let program = docker::connect(sh)?;
    let image = match tag {
        Some(tag) => image::resolve(sh, tag)?,
        None => image::ensure(sh, no_build)?,
    };
    let stack = Compose::app(program);
    let history = super::history_path(sh, &stack);
    let addr = switch(sh, &stack, &history, &image, Gate { timeout, restore_previous })?;
    process::result(&format!("{} is ready at http://{addr} (image {image})", crate::project::NAME));
    Ok(())
}

/// Switches `compose`'s service to `image`, waits until it is ready and records it in
/// `history_file`. Returns the published address.
///
/// If it is not ready by the deadline (or the user presses Ctrl-C), the new image's logs
/// and health are printed and [`release::plan_switch`] decides: the previous image is
/// brought back and waited for, the failed one is left for diagnosis, or a stack that was
/// not running before is stopped again (volumes kept).
pub fn switch(sh: &Shell, compose: &Compose, history_file: &Path, image: &str, gate: Gate) -> Result<String> {
    let mut history = History::load(history_file)?;
    let running = super::running_image(sh, compose)?;
    if running.is_none() {
        super::ensure_host_port_free(sh, compose)?;
    }
    let plan = release::plan_switch(running.as_deref(), &history, image, gate.restore_previous);
    let compose_new = compose.clone().var("LOGBOOK_IMAGE", image);
    let switched = {
        let on_drop = if plan.on_failure == OnFailure::StopNew {
            OnDrop::DownIfFailed
        } else {
            OnDrop::DiagnoseIfFailed
        };
        let guard = StackGuard::new(sh, &compose_new, on_drop);
        let result = process::run(sh, &compose_new.up())
            .and_then(|()| super::wait_ready(sh, &compose_new, gate.timeout));
        if result.is_ok() {
            guard.succeeded();
        }
        result
    };
    let error = match switched {
        Ok(addr) => {
            history.record(image, &image::revision(sh, image), &crate::time::now_rfc3339(), plan.previous);
            process::write_file(history_file, &history.to_json())?;
            return Ok(addr);
        }
        Err(e) if process::is_dry_run_end(&e) => return Err(e),
        Err(e) => e,
    };
    match plan.on_failure {
        OnFailure::Restore(previous) => {
            process::say(&format!("{image} did not become ready; restoring {previous}"));
            process::clear_interrupt();
            let compose_old = compose.clone().var("LOGBOOK_IMAGE", &previous);
            let restored = process::run(sh, &compose_old.up())
                .and_then(|()| super::wait_ready(sh, &compose_old, gate.timeout));
            match restored {
                Ok(addr) => {
                    bail!("{image} failed: {error:#}\nrestored {previous}, which is ready at http://{addr}")
                }
                Err(e2) => bail!("{image} failed: {error:#}\nrestoring {previous} failed too: {e2:#}"),
            }
        }
        OnFailure::KeepFailed | OnFailure::StopNew => {
            Err(error.context(format!("{image} did not become ready")))
        }
    }
}

/// Switches `compose` back to `to` (or the newest release other than the running one),
/// health-gated: if that fails, the image that was running is restored. Returns the image.
pub fn rollback(
    sh: &Shell,
    compose: &Compose,
    history_file: &Path,
    to: Option<&str>,
    timeout: Duration,
) -> Result<String> {
    let history = History::load(history_file)?;
    let running = super::running_image(sh, compose)?;
    let scope = format!("project {} ({})", compose.project, history_file.display());
    let target =
        history.rollback_target(&scope, running.as_deref(), to, |image| docker::image_exists(sh, image))?;
    switch(sh, compose, history_file, &target, Gate { timeout, restore_previous: true })?;
    Ok(target)
}

//! Switching the compose stack between releases, health-gated, as [`release`] plans it.
//!
//! With a release running, the switch is start-first: the new container starts beside the
//! old one on the same volume; once it answers, the old one drains and stops, the new one
//! takes the database and becomes ready, and the old one is removed. The proxy holds
//! requests while neither is ready, so no request is refused. A new release that never
//! becomes ready is removed and the old one keeps (or resumes) serving.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use xshell::Shell;

use super::journal::{self, Journal, Step};
use super::{OnDrop, StackGuard};
use crate::outside::docker::{self, Compose};
use crate::outside::process::{self, Cmd};
use crate::outside::{image, proxy};
use crate::project;
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
    lock: &crate::outside::state::LockRequest,
) -> Result<()> {
    let program = docker::connect(sh)?;
    let image = match tag {
        Some(tag) => image::resolve(sh, tag)?,
        None => image::ensure(sh, no_build)?,
    };
    let stack = super::stack(sh, program);
    let history = super::history_path(sh, &stack)?;
    let _lock = crate::outside::state::lock(&history, lock)?;
    let addr = switch(sh, &stack, &history, &image, Gate { timeout, restore_previous })?;
    process::result(&format!("{} is ready at http://{addr} (image {image})", project::NAME));
    Ok(())
}

/// Switches `compose`'s service to `image`, waits until it is ready and records it in
/// `history_file`. Returns the published address. Only one switch runs per project at a
/// time; another is refused, naming the one that runs.
///
/// If it is not ready by the deadline (or the user presses Ctrl-C), the new image's logs
/// are printed and [`release::plan_switch`] decides: the previous image keeps (or resumes)
/// serving, the failed one is left for diagnosis, or a stack that was not running before
/// is stopped again (volumes kept).
pub fn switch(sh: &Shell, compose: &Compose, history_file: &Path, image: &str, gate: Gate) -> Result<String> {
    if let super::Exposure::Refused(line) = super::exposure(sh, compose) {
        bail!("{line}");
    }
    let _lock = crate::outside::state::lock(history_file, &crate::outside::state::LockRequest::default())?;
    journal::repair(sh, compose, history_file, gate.timeout)?;
    let mut history = History::load(history_file)?;
    let running = super::running(sh, compose)?;
    let may_migrate = match &running {
        Some((old, old_image)) if old_image != image => {
            super::schema::check_switch(sh, old, old_image, image)?
        }
        _ => true,
    };
    let replica = check_replication(sh, compose, running.is_some())?;
    check_proxy_config(sh, compose)?;
    let plan = release::plan_switch(
        running.as_ref().map(|(_, i)| i.as_str()),
        &history,
        image,
        gate.restore_previous,
    );
    let compose_new = compose.clone().var("LOGBOOK_IMAGE", image);
    let addr = match &running {
        Some((old, old_image)) if old_image != image => start_first(
            sh,
            &compose_new,
            history_file,
            &mut history,
            (old, old_image),
            &plan,
            (image, may_migrate),
            gate.timeout,
        )?,
        _ => {
            let addr = start_fresh(sh, compose, image, &plan.on_failure, gate.timeout)?;
            crate::targets::record_serving(sh, &mut history, history_file, image, plan.previous)?;
            addr
        }
    };
    // A migration's snapshot goes with the release that took it.
    if let Some((container, _)) = super::running(sh, &compose_new)? {
        super::snapshot::record_taken(sh, &container, image, history_file)?;
    }
    // What it was switched with, for commands run where there is no .env.
    super::settings::record(sh, compose, history_file)?;
    // The new release serves and is recorded; now the sidecar follows it.
    if replica {
        // A start-first switch touches only the service: start the sidecar if it was not
        // running, or recreate it if its settings changed.
        if let Err(e) = process::run(sh, &compose_new.up_services(&[super::replica::SERVICE])) {
            process::say(&format!(
                "warning: the release serves, but the replication sidecar did not start: {e:#}; see `cargo xtask logs {}`",
                super::replica::SERVICE
            ));
        }
    } else {
        // Only once the switch has succeeded: a failed one leaves the old release, which
        // may still rely on the sidecar to checkpoint.
        super::replica::remove_leftovers(sh, compose)?;
    }
    Ok(addr)
}

/// Checks the replica settings before anything changes and says which state replication
/// is in; true when it is on. Wrong settings refuse the switch. Storage that does not
/// answer refuses it too, unless a release already runs and replicates: an outage must not
/// block a release or a rollback (the data is on this host, and the sidecar catches up).
fn check_replication(sh: &Shell, compose: &Compose, release_running: bool) -> Result<bool> {
    use super::replica;
    let Some(settings) = replica::Settings::of(sh, compose) else {
        process::say(&replica::state_line(None, None));
        return Ok(false);
    };
    let unchanged = |e: anyhow::Error| anyhow::anyhow!("{e:#}; nothing was changed");
    replica::check_settings(&settings).map_err(unchanged)?;
    let replicating = release_running
        && replica::sidecars(sh, compose)?.iter().any(|s| s.service == replica::SERVICE && s.running);
    let listing = match replica::reachable_listing(sh, compose, &settings) {
        Ok(listing) => listing,
        // Only an endpoint that does not answer is an outage; a wrong bucket, region or
        // credentials would not heal, and recreating the sidecar with them stops it.
        Err(e) if replicating && e.to_string().starts_with(replica::ENDPOINT_VAR) => {
            process::say(&format!(
                "warning: {e:#}; switching anyway, since replication already runs: it catches up once the storage answers"
            ));
            None
        }
        Err(e) => return Err(unchanged(e)),
    };
    process::say(&replica::state_line(Some(&settings), listing.as_ref()));
    Ok(true)
}

/// Nothing runs (or the same image again): `compose up`, then wait through the proxy.
fn start_fresh(
    sh: &Shell,
    compose: &Compose,
    image: &str,
    on_failure: &OnFailure,
    timeout: Duration,
) -> Result<String> {
    if !super::proxy_running(sh, compose)? {
        super::ensure_host_port_free(sh, compose)?;
    }
    let compose_new = compose.clone().var("LOGBOOK_IMAGE", image);
    let started = {
        let on_drop =
            if *on_failure == OnFailure::StopNew { OnDrop::DownIfFailed } else { OnDrop::DiagnoseIfFailed };
        let guard = StackGuard::new(sh, &compose_new, on_drop);
        let result =
            process::run(sh, &compose_new.up()).and_then(|()| super::wait_ready(sh, &compose_new, timeout));
        if result.is_ok() {
            guard.succeeded();
        }
        result
    };
    let error = match process::outcome(started)? {
        Ok(addr) => return Ok(addr),
        Err(e) => e,
    };
    match on_failure {
        OnFailure::Restore(previous) => {
            process::say(&format!("{image} did not become ready; restoring {previous}"));
            process::clear_interrupt();
            let compose_old = compose.clone().var("LOGBOOK_IMAGE", previous);
            // The failed release may have migrated the database before it failed.
            let restored = process::run(sh, &compose.cmd(&["stop", project::NAME]))
                .and_then(|()| super::snapshot::make_runnable(sh, compose, previous, image))
                .and_then(|()| process::run(sh, &compose_old.up()))
                .and_then(|()| super::wait_ready(sh, &compose_old, timeout));
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

/// Finishes or undoes an unfinished start-first switch however the code leaves it
/// (errors, panics, Ctrl-C, a command past its time limit):
/// - before the new release was ready, every service container but the old one is stopped
///   (it finishes the requests it has) and removed, or the new one kept, stopped, when
///   asked; an old container that was being stopped, or was stopped, is started again,
///   and waited for until it is ready;
/// - once the new release was ready through the proxy (`removing-old`), it goes forward:
///   the old container is removed and the release recorded.
///
/// Exactly one release serves afterwards, never none and never two writers. Only then is
/// the journal cleared; if this fails (or the runner is killed), the journal stays and the
/// next changing command repairs the stack.
struct SwitchGuard<'a> {
    sh: &'a Shell,
    compose: &'a Compose,
    history_file: &'a Path,
    journal: Journal,
    keep_failed: bool,
    timeout: Duration,
    done: bool,
    /// Nothing to finish or undo unless a change was made since it was armed.
    armed: process::ChangeMark,
}

impl SwitchGuard<'_> {
    /// Records the step about to be taken, before it is taken: the guard acts on a step
    /// only once the journal says so.
    fn enter(&mut self, step: Step) -> Result<()> {
        let mut next = self.journal.clone();
        next.step = step;
        next.write(self.history_file)?;
        self.journal = next;
        Ok(())
    }

    fn docker(&self, args: &[&str]) -> Result<()> {
        process::run_cleanup(self.sh, &Cmd::new("docker").args(args.iter().copied()))
    }

    fn finish(&self) -> Result<()> {
        let old = &self.journal.old_container;
        if process::query(self.sh, &docker::inspect_format(old, "{{.Id}}")).is_ok() {
            self.docker(&["rm", "--force", "--volumes", old])?;
        }
        self.journal.record_new_release(self.sh, self.history_file)?;
        process::say(&format!("{} was ready: the switch is finished", self.journal.new_image));
        Ok(())
    }

    fn undo(&self) -> Result<()> {
        let old = &self.journal.old_container;
        // Every service container but the old one: the new one, whether or not the switch
        // had the time to record it.
        let others: Vec<String> = super::containers(self.sh, self.compose)?
            .into_iter()
            .filter(|c| c.service == project::NAME && &c.id != old)
            .map(|c| c.id)
            .collect();
        for id in &others {
            let recorded = self.journal.new_container.as_ref() == Some(id);
            if recorded {
                process::say(&format!("--- last log lines of the new container {} ---", short(id)));
                let _ = self.docker(&["logs", "--tail", "30", id]);
            }
            // Stopped before it is removed: by now it may answer requests, which it
            // finishes (a forced removal would cut them off). It goes first: it may hold
            // the database the old one needs.
            self.docker(&["stop", id])?;
            if recorded && self.keep_failed {
                process::say(&format!(
                    "the failed container {} is kept, stopped, for inspection; the next switch removes it",
                    short(id)
                ));
            } else {
                self.docker(&["rm", "--force", "--volumes", id])?;
            }
        }
        if self.journal.step != Step::StartingNew {
            process::say(&format!("restarting the previous release's container {}", short(old)));
            // A stop that was interrupted may still be draining it: finish it first, so
            // the start is not swallowed by a container about to exit.
            self.docker(&["stop", old])?;
            // The new release had the database: it may have migrated it past the old one.
            if self.journal.may_migrate {
                super::snapshot::make_runnable(
                    self.sh,
                    self.compose,
                    &self.journal.old_image,
                    &self.journal.new_image,
                )?;
            }
            self.docker(&["start", old])?;
        }
        let compose_old = self.compose.clone().var("LOGBOOK_IMAGE", &self.journal.old_image);
        super::wait_ready(self.sh, &compose_old, self.timeout)
            .with_context(|| format!("{} did not become ready again", self.journal.old_image))?;
        Ok(())
    }
}

impl Drop for SwitchGuard<'_> {
    fn drop(&mut self) {
        if self.done || !self.armed.changed_since() {
            return;
        }
        process::clear_interrupt();
        let outcome = if self.journal.step == Step::RemovingOld { self.finish() } else { self.undo() };
        match outcome {
            Ok(()) => {
                let _ = journal::clear(self.history_file);
            }
            Err(e) => process::say(&format!(
                "cannot finish or undo the switch ({e:#}); the journal {} stays, and the next `cargo xtask up` repairs it",
                journal::path(self.history_file).display()
            )),
        }
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The start-first switch from container `old` (running `old_image`) to `compose_new`'s
/// image, each step written to the journal first; returns the published address once the
/// new release is ready, the old one is gone and the release is recorded.
#[allow(clippy::too_many_arguments)]
fn start_first(
    sh: &Shell,
    compose_new: &Compose,
    history_file: &Path,
    history: &mut History,
    (old, old_image): (&str, &str),
    plan: &release::SwitchPlan,
    (new_image, may_migrate): (&str, bool),
    timeout: Duration,
) -> Result<String> {
    let started = Instant::now();
    // The proxy holds the published port; make sure it runs (it is recreated only if its
    // own configuration changed).
    process::run(sh, &compose_new.up_alone(project::PROXY_SERVICE))?;
    remove_leftovers(sh, compose_new, old)?;
    let mut guard = SwitchGuard {
        sh,
        compose: compose_new,
        history_file,
        journal: Journal { may_migrate, ..Journal::begin(old, old_image, new_image, plan.previous.clone()) },
        keep_failed: plan.on_failure == OnFailure::KeepFailed,
        timeout,
        done: false,
        armed: process::ChangeMark::now(),
    };
    guard.enter(Step::StartingNew)?;
    process::run(sh, &compose_new.start_beside(project::NAME))?;
    let new = super::containers_started(sh, compose_new)?
        .into_iter()
        .filter(|c| c.service == project::NAME && c.id != old)
        .map(|c| c.id)
        .find(|id| {
            process::query(sh, &docker::inspect_format(id, "{{.Config.Image}}")).is_ok_and(|i| i == new_image)
        })
        .context("compose started no container of the new image beside the old one")?;
    guard.journal.new_container = Some(new.clone());
    guard.enter(Step::StartingNew)?;
    wait_live(sh, &new, timeout).context("the new release never answered; the previous one keeps serving")?;
    process::say(&format!(
        "  new container {} answers after {:.1}s; draining the old one",
        short(&new),
        started.elapsed().as_secs_f64()
    ));
    guard.enter(Step::StoppingOld)?;
    process::run(sh, &Cmd::new("docker").args(["stop", old]))?;
    guard.enter(Step::TakingOver)?;
    let addr = super::wait_ready(sh, compose_new, timeout)
        .context("the new release did not become ready; the previous one is restarted")?;
    guard.enter(Step::RemovingOld)?;
    process::run(sh, &Cmd::new("docker").args(["rm", "--volumes", old]))?;
    crate::targets::record_serving(sh, history, history_file, new_image, plan.previous.clone())?;
    guard.done = true;
    journal::clear(history_file)?;
    process::say(&format!("  switched in {:.1}s", started.elapsed().as_secs_f64()));
    Ok(addr)
}

/// Service containers other than the one serving: left by a failed switch
/// (`--no-rollback` keeps one for inspection) or an interrupted one. Removed (stopped
/// first, if one runs) before a switch, so Compose never starts one of them as the new
/// release, and never two serve.
fn remove_leftovers(sh: &Shell, compose: &Compose, old: &str) -> Result<()> {
    for leftover in
        super::containers(sh, compose)?.into_iter().filter(|c| c.service == project::NAME && c.id != old)
    {
        if leftover.state == "running" {
            process::run(sh, &Cmd::new("docker").args(["stop", &leftover.id]))?;
        }
        process::say(&format!(
            "removing container {} ({}), left by an earlier switch: it is never adopted as the new release",
            short(&leftover.id),
            leftover.state
        ));
        process::run(sh, &Cmd::new("docker").args(["rm", "--force", "--volumes", &leftover.id]))?;
    }
    Ok(())
}

/// Waits until the container's own process answers `/healthz` (probed inside it, not
/// through Docker's health interval). A container that exits or restarts fails at once.
fn wait_live(sh: &Shell, container: &str, timeout: Duration) -> Result<()> {
    let probe = Cmd::new("docker").args(["exec", container, "/logbook", "healthcheck"]);
    let state = docker::inspect_format(container, "{{.State.Status}} {{.RestartCount}} {{.State.ExitCode}}");
    process::wait_for("the new container to answer", timeout, Duration::from_millis(100), || {
        if process::succeeds(sh, &probe) {
            return Ok(Some(()));
        }
        let state = process::query(sh, &state)?;
        let words: Vec<&str> = state.split_whitespace().collect();
        match words.as_slice() {
            [status, restarts, _] if *status == "restarting" || *restarts != "0" => {
                bail!("the new container keeps exiting and restarting")
            }
            [status @ ("exited" | "dead"), _, code] => {
                bail!("the new container is {status} (exit code {code})")
            }
            _ => Ok(None),
        }
    })
}

/// Builds the proxy's image and refuses a configuration that does not validate, before
/// anything changes.
pub fn check_proxy_config(sh: &Shell, compose: &Compose) -> Result<()> {
    proxy::prepare(sh, |key, default| super::setting(sh, compose, key, default))
        .map(drop)
        .context("nothing was changed")
}

/// Switches `compose` back to `to` (or the newest release other than the running one),
/// health-gated: if that fails, the image that was running keeps serving. Returns the image.
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
    // A release from a registry that is no longer here is pulled again (by its digest).
    let present = |image: &str| {
        docker::image_exists(sh, image) || (image.contains('/') && image::resolve(sh, image).is_ok())
    };
    let target = history.rollback_target(&scope, running.as_deref(), to, present)?;
    switch(sh, compose, history_file, &target, Gate { timeout, restore_previous: true })?;
    Ok(target)
}

//! Where releases go: the compose stack on this host, a Docker Swarm, or Kubernetes. Each
//! target applies the one release policy ([`crate::release`]); `deploy` and `rollback`
//! dispatch here, each target with only its own flags.

pub mod compose;
pub mod k8s;
pub mod swarm;

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use xshell::Shell;

use crate::flags::{Deploy, DeployTarget, Rollback, RollbackCompose, RollbackTarget};
use crate::outside::docker;
use crate::outside::{image, process};
use crate::release::History;

/// Records `image` in `history` as the release now serving (its revision from its label,
/// deployed now) and writes the history to `file`.
pub fn record_serving(
    sh: &Shell,
    history: &mut History,
    file: &Path,
    image: &str,
    previous: Option<String>,
) -> Result<()> {
    let audit = crate::release::Audit {
        by: crate::state::actor(),
        command: crate::state::this_command(),
        message: crate::state::lock_message(),
    };
    record_serving_as(sh, history, file, image, previous, audit)
}

/// [`record_serving`], on behalf of `audit` (a repair finishing another command's switch).
pub fn record_serving_as(
    sh: &Shell,
    history: &mut History,
    file: &Path,
    image: &str,
    previous: Option<String>,
    audit: crate::release::Audit,
) -> Result<()> {
    history.record(image, &image::revision(sh, image), &crate::time::now_rfc3339(), previous, audit);
    process::write_file(file, &history.to_json())
}

impl Deploy {
    pub fn run(self, sh: &Shell) -> Result<()> {
        match self.target {
            DeployTarget::Compose(up) => up.run(sh),
            DeployTarget::Swarm(flags) => {
                let stack = swarm::Stack::new(&flags.stack);
                if flags.remove {
                    if flags.volumes && !flags.yes {
                        bail!("refusing to delete the stack's volume without --yes; nothing was changed");
                    }
                    swarm::remove(sh, &stack, flags.volumes)?;
                    let kept = if flags.volumes { " and its volume" } else { "; its volume is kept" };
                    process::result(&format!("removed swarm stack {}{kept}", flags.stack));
                    return Ok(());
                }
                docker::connect(sh)?;
                let image = image::tag_or_tree(sh, flags.tag.as_deref())?;
                let history = swarm::history_path(sh, &stack)?;
                let addr = swarm::deploy(sh, &stack, &history, &image, Duration::from_secs(flags.timeout))?;
                process::result(&format!("{image} serves on the swarm at http://{addr}"));
                Ok(())
            }
            DeployTarget::K8s(flags) => k8s::deploy(sh, &flags),
        }
    }
}

impl Rollback {
    pub fn run(self, sh: &Shell) -> Result<()> {
        match self.target {
            None => rollback_compose(sh, self.compose),
            Some(RollbackTarget::Compose(flags)) => rollback_compose(sh, flags),
            Some(RollbackTarget::Swarm(flags)) => {
                let stack = swarm::Stack::new(&flags.stack);
                if flags.list {
                    let history = crate::release::History::load(&swarm::history_path(sh, &stack)?)?;
                    process::result(&history.table(None));
                    return Ok(());
                }
                let started = Instant::now();
                let image =
                    swarm::rollback(sh, &stack, flags.to.as_deref(), Duration::from_secs(flags.timeout))?;
                process::result(&format!(
                    "rolled the swarm back to {image}; ready in {:.1}s",
                    started.elapsed().as_secs_f64()
                ));
                Ok(())
            }
            Some(RollbackTarget::K8s(flags)) => {
                k8s::rollback(sh, flags.namespace.as_deref(), Duration::from_secs(flags.timeout))
            }
        }
    }
}

fn rollback_compose(sh: &Shell, flags: RollbackCompose) -> Result<()> {
    let stack = compose::stack(sh, docker::connect(sh)?);
    let history_file = compose::history_path(sh, &stack)?;
    if flags.list {
        let history = crate::release::History::load(&history_file)?;
        let running = compose::running_image(sh, &stack).unwrap_or(None);
        if flags.json {
            process::result(&history.to_list_json(&stack.project, running.as_deref()));
            return Ok(());
        }
        process::result(&format!("releases of project {}, newest first (* = running):", stack.project));
        process::result(&history.table(running.as_deref()));
        return Ok(());
    }
    let _lock = crate::state::lock(&history_file, &flags.lock.request())?;
    let started = Instant::now();
    let timeout = Duration::from_secs(flags.timeout);
    if flags.with_data {
        compose::journal::repair(sh, &stack, &history_file, timeout)?;
        let line =
            compose::snapshot::rollback_with_data(sh, &stack, &history_file, flags.to.as_deref(), timeout)?;
        process::result(&format!("{line}; done in {:.1}s", started.elapsed().as_secs_f64()));
        return Ok(());
    }
    let image = compose::switch::rollback(sh, &stack, &history_file, flags.to.as_deref(), timeout)?;
    process::result(&format!("rolled back to {image}; ready in {:.1}s", started.elapsed().as_secs_f64()));
    Ok(())
}

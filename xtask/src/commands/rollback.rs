//! `cargo xtask rollback`: back to an earlier release, on the compose stack here (the
//! default), a Docker Swarm, or Kubernetes; or, with `--list`, what there is to go back to.

use std::time::{Duration, Instant};

use anyhow::Result;
use xshell::Shell;

use crate::flags::{Rollback, RollbackCompose, RollbackTarget};
use crate::outside::{docker, process};
use crate::targets::{compose, k8s, swarm};

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
            process::document(&history.to_list_json(&stack.project, running.as_deref()));
            return Ok(());
        }
        process::result(&format!("releases of project {}, newest first (* = running):", stack.project));
        process::result(&history.table(running.as_deref()));
        return Ok(());
    }
    let _lock = crate::outside::state::lock(&history_file, &flags.lock.request())?;
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

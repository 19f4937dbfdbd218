//! `cargo xtask rollback`: bring back an earlier healthy release.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use xshell::Shell;

use crate::docker::{self, Compose};
use crate::flags::Rollback;
use crate::process;
use crate::release::{self, Gate, History};

impl Rollback {
    pub fn run(self, sh: &Shell) -> Result<()> {
        if self.target == crate::flags::DeployTarget::Swarm {
            let stack = crate::swarm::Stack::new(&self.stack);
            if self.list {
                let history = History::load(&crate::swarm::history_path(sh, &stack))?;
                process::result(&history.table(None));
                return Ok(());
            }
            let started = Instant::now();
            let image =
                crate::swarm::rollback(sh, &stack, self.to.as_deref(), Duration::from_secs(self.timeout))?;
            process::result(&format!(
                "rolled the swarm back to {image}; ready in {:.1}s",
                started.elapsed().as_secs_f64()
            ));
            return Ok(());
        }
        if self.target == crate::flags::DeployTarget::K8s {
            if self.to.is_some() || self.list {
                bail!(
                    "--to and --list are for the compose target; Kubernetes keeps its own revisions (`kubectl rollout history statefulset/logbook`)"
                );
            }
            crate::deploy::k8s_rollback(sh, self.namespace.as_deref(), Duration::from_secs(self.timeout))?;
            process::result("rolled Kubernetes back to the previous revision");
            return Ok(());
        }
        let compose = Compose::app(docker::connect(sh)?);
        let history_file = release::history_path(sh, &compose.project);
        if self.list {
            let history = History::load(&history_file)?;
            let running = release::running_image(sh, &compose).unwrap_or(None);
            process::result(&format!("releases of project {}, newest first (* = running):", compose.project));
            process::result(&history.table(running.as_deref()));
            return Ok(());
        }
        let started = Instant::now();
        let image =
            rollback(sh, &compose, &history_file, self.to.as_deref(), Duration::from_secs(self.timeout))?;
        process::result(&format!("rolled back to {image}; ready in {:.1}s", started.elapsed().as_secs_f64()));
        Ok(())
    }
}

/// Switches `compose` back to `to` (or the newest release other than the running one),
/// health-gated: if that fails, the image that was running is restored. Returns the image.
pub fn rollback(
    sh: &Shell,
    compose: &Compose,
    history_file: &std::path::Path,
    to: Option<&str>,
    timeout: Duration,
) -> Result<String> {
    let history = History::load(history_file)?;
    let running = release::running_image(sh, compose)?;
    let current = running.clone().or_else(|| history.current().map(|r| r.image.clone()));
    let known = || format!("known releases (newest first):\n{}", history.table(running.as_deref()));
    if history.releases.is_empty() {
        bail!(
            "no release history for project {} yet ({}): `cargo xtask up` records one",
            compose.project,
            history_file.display()
        );
    }
    let target = match to {
        Some(tag) => {
            let image = release::image_name(tag);
            match history.find(&image) {
                Some(release) => release.image.clone(),
                None => bail!("{image} is not in the release history; nothing was changed\n{}", known()),
            }
        }
        None => match current.as_deref().and_then(|c| history.previous_to(c)) {
            Some(release) => release.image.clone(),
            None => bail!("there is no earlier release to roll back to; nothing was changed\n{}", known()),
        },
    };
    if !process::runner().dry_run && !docker::image_exists(sh, &target) {
        bail!(
            "{target} is in the history but its image is gone from this engine (rebuild it); nothing was changed\n{}",
            known()
        );
    }
    release::deploy(sh, compose, history_file, &target, Gate { timeout, restore_previous: true })?;
    Ok(target)
}

//! `cargo xtask deploy`: a release to the compose stack here, a Docker Swarm, or Kubernetes.

use std::time::Duration;

use anyhow::{Result, bail};
use xshell::Shell;

use crate::flags::{Deploy, DeployTarget};
use crate::outside::{docker, image, process};
use crate::targets::{k8s, swarm};

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

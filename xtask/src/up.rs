//! `cargo xtask up`: build if needed, switch the stack to the image, return once it is ready.

use std::time::Duration;

use anyhow::Result;
use xshell::Shell;

use crate::docker::{self, Compose};
use crate::flags::Up;
use crate::release::{self, Gate};
use crate::{process, project, stack};

impl Up {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let program = docker::connect(sh)?;
        let image = match &self.tag {
            Some(tag) => {
                let image = release::image_name(tag);
                if !process::runner().dry_run && !docker::image_exists(sh, &image) {
                    anyhow::bail!(
                        "image {image} does not exist: `docker image ls {}` lists what there is",
                        project::NAME
                    );
                }
                image
            }
            None => stack::ensure_image(sh, self.no_build)?,
        };
        let compose = Compose::app(program);
        let history = release::history_path(sh, &compose.project);
        let gate = Gate { timeout: Duration::from_secs(self.timeout), restore_previous: !self.no_rollback };
        let addr = release::deploy(sh, &compose, &history, &image, gate)?;
        process::result(&format!("{} is ready at http://{addr} (image {image})", project::NAME));
        Ok(())
    }
}

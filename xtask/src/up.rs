//! `cargo xtask up`: build if needed, start the stack, return once it is ready.

use std::time::Duration;

use anyhow::Result;
use xshell::Shell;

use crate::docker::{self, Compose};
use crate::flags::Up;
use crate::process;
use crate::stack::{self, OnDrop, StackGuard};

impl Up {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let program = docker::connect(sh)?;
        let image = match &self.tag {
            Some(tag) => {
                let image =
                    if tag.contains(':') { tag.clone() } else { format!("{}:{tag}", crate::project::NAME) };
                if !process::runner().dry_run && !docker::image_exists(sh, &image) {
                    anyhow::bail!(
                        "image {image} does not exist: `docker image ls {}` lists what there is",
                        crate::project::NAME
                    );
                }
                image
            }
            None => stack::ensure_image(sh, self.no_build)?,
        };
        let compose = Compose::app(program).var("LOGBOOK_IMAGE", &image);
        let addr = start(sh, &compose, Duration::from_secs(self.timeout))?;
        process::result(&format!("{} is ready at http://{addr} (image {image})", crate::project::NAME));
        Ok(())
    }
}

/// Starts (or updates) `compose` and waits until the service is ready. On failure it
/// prints the logs and the health log; a stack that was not running before is stopped
/// again (its volumes are kept). Returns the published address.
pub fn start(sh: &Shell, compose: &Compose, timeout: Duration) -> Result<String> {
    if process::runner().dry_run {
        process::run(sh, &compose.up())?;
        return Ok("<published address>".into());
    }
    let was_running = stack::container_id(sh, compose)?.is_some();
    if !was_running {
        let bind = stack::setting(sh, "LOGBOOK_HOST_BIND", "127.0.0.1");
        let port = stack::setting(sh, "LOGBOOK_HOST_PORT", &crate::project::DEFAULT_HOST_PORT.to_string());
        let port: u16 =
            port.parse().map_err(|_| anyhow::anyhow!("LOGBOOK_HOST_PORT={port} is not a port number"))?;
        stack::ensure_port_free(&bind, port)?;
    }
    let on_drop = if was_running { OnDrop::DiagnoseIfFailed } else { OnDrop::DownIfFailed };
    let guard = StackGuard::new(sh, compose, on_drop);
    process::run(sh, &compose.up())?;
    let addr = stack::published_addr(sh, compose)?;
    stack::wait_ready(sh, compose, &addr, timeout)?;
    guard.succeeded();
    Ok(addr)
}

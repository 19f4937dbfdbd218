//! `cargo xtask build`: the image, tagged with the git revision and `latest`, labelled.

use std::time::Instant;

use anyhow::Result;
use xshell::Shell;

use crate::docker::{self, ImagePlan};
use crate::flags::{Build, Builder};
use crate::process::{self, Cmd};

impl Build {
    pub fn run(self, sh: &Shell) -> Result<()> {
        docker::connect(sh)?;
        let plan = ImagePlan::from_repo(sh)?;
        build(sh, &plan, self.builder)
    }
}

/// Builds `plan`'s image and prints its tags, size and build time.
pub fn build(sh: &Shell, plan: &ImagePlan, builder: Builder) -> Result<()> {
    let started = Instant::now();
    process::run(sh, &docker::build_image(plan, builder))?;
    if process::runner().dry_run {
        return Ok(());
    }
    let took = started.elapsed();
    let size: f64 = process::query(
        sh,
        &Cmd::new("docker").args(["image", "inspect", "--format", "{{.Size}}", &plan.tag]),
    )?
    .parse()
    .unwrap_or(0.0);
    let also = if plan.tag_latest { format!(" (also {})", plan.latest()) } else { String::new() };
    process::result(&format!("built {}{also}: {:.1} MB in {:.1}s", plan.tag, size / 1e6, took.as_secs_f64()));
    Ok(())
}

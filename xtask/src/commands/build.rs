//! `cargo xtask build`: the image, tagged with the git revision and `latest`, labelled;
//! with `--platform`, one image per platform (the others cross-compiled here).

use std::time::Instant;

use anyhow::{Result, bail};
use xshell::Shell;

use crate::flags::{Build, Builder};
use crate::outside::docker;
use crate::outside::image::{self, ImagePlan};
use crate::outside::platform;
use crate::outside::process::{self, Cmd};

impl Build {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let platforms = platform::chosen(&self.platform)?;
        let cross: Vec<_> = platforms.iter().copied().filter(|p| platform::is_cross(*p)).collect();
        // Everything another platform needs is checked before anything is built.
        for &p in &cross {
            platform::require_toolchain(sh, p, false)?;
        }
        docker::connect(sh)?;
        let plan = ImagePlan::from_repo(sh)?;
        if cross.is_empty() {
            return image::build(sh, &plan, self.builder);
        }
        let builder = image::usable_builder(sh, self.builder);
        if builder != Builder::Buildkit {
            bail!(
                "an image for another platform ({}) needs BuildKit, which this docker CLI cannot drive; nothing was built",
                cross.iter().map(|p| p.name()).collect::<Vec<_>>().join(", ")
            );
        }
        // Every image first, then their sizes: a dry run shows every build it can.
        let mut built = Vec::new();
        for p in platforms {
            let started = Instant::now();
            let tag = if platform::is_cross(p) {
                platform::build_image(sh, &plan, p)?
            } else {
                process::run(sh, &image::build_image(&plan, builder))?;
                // Beside the others, this machine's image has a platform tag too.
                let tag = platform::platform_tag(&plan, p);
                process::run(sh, &Cmd::new("docker").args(["tag", &plan.tag, &tag]))?;
                tag
            };
            built.push((p, tag, started.elapsed()));
        }
        for (p, tag, took) in &built {
            let size = image::size_bytes(sh, tag)?;
            process::result(&format!(
                "{}: {tag}, {:.1} MB, built in {:.1}s",
                p.name(),
                size / 1e6,
                took.as_secs_f64()
            ));
        }
        Ok(())
    }
}

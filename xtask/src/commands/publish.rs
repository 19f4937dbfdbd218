//! `cargo xtask publish`: push this tree's image to a registry under its release tags.

use anyhow::{Context, Result, bail};
use xshell::Shell;

use crate::flags::Publish;
use crate::outside::image::ImagePlan;
use crate::outside::platform;
use crate::outside::registry::{push, push_platforms, repository_name};
use crate::outside::{docker, image, process};

impl Publish {
    pub fn run(self, sh: &Shell) -> Result<()> {
        docker::connect(sh)?;
        // Never a rebuild: what is published is the image that was built and tested.
        let local = match &self.image {
            Some(image) if docker::image_exists(sh, image) => image.clone(),
            Some(image) => bail!("image {image} is not here: `docker image ls` lists what there is"),
            None => image::ensure(sh, true).context(
                "publish pushes the image this tree's checks ran on, and never builds one: run `cargo xtask build` (or `cargo xtask ci`) first",
            )?,
        };
        let repository = repository_name(&self.repository)?;
        let (image, tags) = if self.platform.is_empty() {
            push(sh, &local, &repository, self.git_ref.as_deref())?
        } else {
            let plan = ImagePlan::from_repo(sh)?;
            let mut images = Vec::new();
            for &p in &platform::chosen(&self.platform)? {
                let image =
                    if platform::is_cross(p) { platform::platform_tag(&plan, p) } else { local.clone() };
                if !docker::image_exists(sh, &image) {
                    bail!(
                        "the {} image {image} is not here: run `cargo xtask build --platform {}` first",
                        p.name(),
                        p.name()
                    );
                }
                images.push((p.arch(), image));
            }
            push_platforms(sh, &images, &repository, plan.tag_name(), self.git_ref.as_deref())?
        };
        if self.github_output {
            let path = std::env::var("GITHUB_OUTPUT")
                .context("--github-output needs GITHUB_OUTPUT (set by GitHub Actions)")?;
            let mut text = std::fs::read_to_string(&path).unwrap_or_default();
            text.push_str(&format!("image={image}\n"));
            process::write_file(std::path::Path::new(&path), &text)?;
        }
        process::result(&format!("published {image} as {}", tags.join(", ")));
        Ok(())
    }
}

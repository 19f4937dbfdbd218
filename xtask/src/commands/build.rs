//! `cargo xtask build`: the image, tagged with the git revision and `latest`, labelled.

use anyhow::Result;
use xshell::Shell;

use crate::flags::Build;
use crate::outside::docker;
use crate::outside::image::{self, ImagePlan};

impl Build {
    pub fn run(self, sh: &Shell) -> Result<()> {
        docker::connect(sh)?;
        image::build(sh, &ImagePlan::from_repo(sh)?, self.builder)
    }
}

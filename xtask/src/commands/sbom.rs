//! `cargo xtask sbom`: the image's CycloneDX SBOM, written by Trivy from what
//! cargo-auditable recorded in the binary.

use anyhow::{Context, Result};
use xshell::Shell;

use crate::checks::scan::{Trivy, built_image, sbom_components};
use crate::flags::Sbom;
use crate::outside::{process, tools};

impl Sbom {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let image = built_image(sh, self.tag.as_deref())?;
        let trivy = Trivy::find(sh)
            .with_context(|| format!("the SBOM is written by Trivy: {}", tools::TRIVY.fix()))?;
        let output = self.output.clone().unwrap_or_else(|| {
            tools::target_dir(sh)
                .join("sbom")
                .join(format!("{}.cdx.json", image.replace(['/', ':', '@'], "_")))
        });
        let out = sh.create_temp_dir()?;
        process::run(sh, &trivy.sbom(out.path(), &image))?;
        process::needs_effects("read the SBOM")?;
        let sbom =
            std::fs::read_to_string(out.path().join("sbom.cdx.json")).context("trivy wrote no SBOM")?;
        let components = sbom_components(&sbom)?;
        if let Some(dir) = output.parent() {
            process::create_dir_all(dir)?;
        }
        process::write_file(&output, &sbom)?;
        process::result(&format!("sbom: {components} components of {image} in {}", output.display()));
        Ok(())
    }
}

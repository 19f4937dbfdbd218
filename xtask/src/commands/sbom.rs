//! `cargo xtask sbom`: the image's CycloneDX SBOM, written by Trivy from what
//! cargo-auditable recorded in the binary.

use anyhow::{Context, Result};
use xshell::Shell;

use crate::flags::Sbom;
use crate::outside::trivy::Trivy;
use crate::outside::{process, tools};

impl Sbom {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let image = crate::outside::image::built(sh, self.tag.as_deref())?;
        let trivy = Trivy::find(sh)
            .with_context(|| format!("the SBOM is written by Trivy: {}", tools::TRIVY.fix()))?;
        let output = self.output.clone().unwrap_or_else(|| {
            tools::target_dir(sh)
                .join("sbom")
                .join(format!("{}.cdx.json", image.replace(['/', ':', '@'], "_")))
        });
        let out = sh.create_temp_dir()?;
        process::run(sh, &trivy.sbom(out.path(), &image))?;
        let sbom = process::read_written(&out.path().join("sbom.cdx.json"), "trivy wrote no SBOM")?;
        let components = sbom_components(&sbom)?;
        if let Some(dir) = output.parent() {
            process::create_dir_all(dir)?;
        }
        process::write_file(&output, &sbom)?;
        process::result(&format!("sbom: {components} components of {image} in {}", output.display()));
        Ok(())
    }
}

/// How many components a CycloneDX document lists; an SBOM with none is an error.
pub fn sbom_components(text: &str) -> Result<usize> {
    let doc: serde_json::Value = serde_json::from_str(text).context("the SBOM is not valid JSON")?;
    anyhow::ensure!(
        doc["bomFormat"] == "CycloneDX",
        "the SBOM is not CycloneDX (bomFormat {})",
        doc["bomFormat"]
    );
    let count = doc["components"].as_array().map_or(0, Vec::len);
    anyhow::ensure!(count > 0, "the SBOM lists no components: was the binary built with cargo-auditable?");
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sboms_are_counted_and_an_empty_one_is_an_error() {
        let sbom = r#"{"bomFormat":"CycloneDX","components":[{"name":"hyper"},{"name":"serde"}]}"#;
        assert_eq!(sbom_components(sbom).unwrap(), 2);
        assert!(sbom_components(r#"{"bomFormat":"CycloneDX","components":[]}"#).is_err());
        assert!(sbom_components(r#"{"bomFormat":"SPDX"}"#).is_err());
    }
}

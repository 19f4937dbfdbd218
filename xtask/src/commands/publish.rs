//! `cargo xtask publish`: push this tree's image to a registry under its release tags.

use anyhow::{Context, Result};
use xshell::Shell;

use crate::flags::Publish;
use crate::outside::process::{self, Cmd};
use crate::outside::{docker, image};

impl Publish {
    pub fn run(self, sh: &Shell) -> Result<()> {
        docker::connect(sh)?;
        let local = image::ensure(sh, false)?;
        let revision =
            local.rsplit_once(':').map(|(_, tag)| tag.to_owned()).context("the image has no tag")?;
        let repository = self.repository.trim_end_matches('/');
        let tags = release_tags(&revision, self.git_ref.as_deref());
        for tag in &tags {
            let remote = format!("{repository}:{tag}");
            process::run(sh, &Cmd::new("docker").args(["tag", &local, &remote]))?;
            process::run(sh, &Cmd::new("docker").args(["push", &remote]))?;
        }
        let image = format!("{repository}:{revision}");
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

/// The git revision always; for a `vX.Y.Z` tag also `X.Y.Z`, `X.Y` and `X`; for main,
/// `main`. `git_ref` is a full ref (`refs/tags/v1.2.3`) or a branch or tag name (`v1.2.3`).
pub fn release_tags(revision: &str, git_ref: Option<&str>) -> Vec<String> {
    let mut tags = vec![revision.to_owned()];
    let name = git_ref.map(|r| r.trim_start_matches("refs/tags/").trim_start_matches("refs/heads/"));
    match name {
        Some(n) if n.starts_with('v') && n[1..].starts_with(|c: char| c.is_ascii_digit()) => {
            let version = &n[1..];
            let parts: Vec<&str> = version.split('.').collect();
            let numeric = parts.len() == 3
                && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()));
            if numeric {
                tags.extend([version.to_owned(), format!("{}.{}", parts[0], parts[1]), parts[0].to_owned()]);
            } else {
                tags.push(version.to_owned());
            }
        }
        Some("main") => tags.push("main".to_owned()),
        _ => {}
    }
    tags
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_follow_the_ref() {
        assert_eq!(
            release_tags("0123456789ab", Some("refs/tags/v1.2.3")),
            ["0123456789ab", "1.2.3", "1.2", "1"]
        );
        assert_eq!(
            release_tags("0123456789ab", Some("refs/tags/v2.0.0-rc.1")),
            ["0123456789ab", "2.0.0-rc.1"]
        );
        assert_eq!(release_tags("0123456789ab", Some("refs/heads/main")), ["0123456789ab", "main"]);
        assert_eq!(release_tags("0123456789ab", Some("refs/pull/7/merge")), ["0123456789ab"]);
        assert_eq!(release_tags("0123456789ab", None), ["0123456789ab"]);
        assert_eq!(release_tags("0123456789ab", Some("v1.2.3")), ["0123456789ab", "1.2.3", "1.2", "1"]);
        assert_eq!(release_tags("0123456789ab", Some("main")), ["0123456789ab", "main"]);
        assert_eq!(release_tags("0123456789ab", Some("very-feature")), ["0123456789ab"]);
    }
}

//! Registries: pushing an image under its release tags and reading back the digest it
//! got, by which releases are deployed.

use anyhow::{Context, Result, bail};
use xshell::Shell;

use super::process::{self, Cmd};
use super::{docker, image};

/// Tags `local` for `repository` (its revision, and the release tags of `git_ref`) and
/// pushes each; returns `<repository>@<digest>`, by which to deploy it, and the tags.
pub fn push(
    sh: &Shell,
    local: &str,
    repository: &str,
    git_ref: Option<&str>,
) -> Result<(String, Vec<String>)> {
    // The tag a tree's image has (`logbook:0123456789ab`, `-dirty` included), else the
    // revision it was built from.
    let revision = match local.rsplit_once(':') {
        Some((_, tag)) if !tag.contains('/') && !local.contains('@') => tag.to_owned(),
        _ => image::revision(sh, local).chars().take(12).collect(),
    };
    let tags = release_tags(&revision, git_ref);
    for tag in &tags {
        let remote = format!("{repository}:{tag}");
        process::run(sh, &Cmd::new("docker").args(["tag", local, &remote]))?;
        process::run(sh, &Cmd::new("docker").args(["push", &remote])).with_context(|| {
            format!(
                "cannot push {remote}: is {} reachable, and are you logged in (`docker login {0}`)?",
                image::registry_of(repository)
            )
        })?;
    }
    process::needs_effects("read the digest the registry gave the image")?;
    let digests = process::query(sh, &docker::inspect_format(local, "{{json .RepoDigests}}"))?;
    Ok((pushed_digest(&digests, repository)?, tags))
}

/// `ghcr.io/Owner/Logbook` as registries accept it: lower case, no trailing slash.
pub fn repository_name(repository: &str) -> Result<String> {
    let name = repository.trim().trim_end_matches('/').to_ascii_lowercase();
    let parts: Vec<&str> = name.split('/').collect();
    // A port only on a registry host (`127.0.0.1:5000/logbook`); no tag, no digest.
    let valid = !name.is_empty()
        && !name.contains(['@', ' ', '\t'])
        && parts.iter().all(|part| !part.is_empty())
        && parts.iter().enumerate().all(|(i, part)| !part.contains(':') || (i == 0 && parts.len() > 1));
    if !valid {
        bail!("--repository {repository:?} is not a repository name such as ghcr.io/owner/logbook");
    }
    Ok(name)
}

/// `<repository>@sha256:…` from an image's `RepoDigests` (as JSON).
fn pushed_digest(repo_digests: &str, repository: &str) -> Result<String> {
    let digests: Vec<String> = serde_json::from_str(repo_digests)
        .with_context(|| format!("docker inspect printed bad RepoDigests: {repo_digests}"))?;
    digests.into_iter().find(|d| d.split_once('@').is_some_and(|(repo, _)| repo == repository)).with_context(
        || format!("the registry gave no digest for {repository} (RepoDigests: {repo_digests})"),
    )
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
    fn repositories_are_lower_cased_and_checked() {
        assert_eq!(repository_name("ghcr.io/Owner/LogBook/").unwrap(), "ghcr.io/owner/logbook");
        assert_eq!(repository_name("127.0.0.1:5000/logbook").unwrap(), "127.0.0.1:5000/logbook");
        for bad in ["", "ghcr.io//x", "ghcr.io/x:tag", "ghcr.io/x@sha256:0", "a b"] {
            assert!(repository_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_digest_is_the_one_of_the_repository_pushed_to() {
        let digests = r#"["other/x@sha256:aa","127.0.0.1:5000/logbook@sha256:bb"]"#;
        assert_eq!(
            pushed_digest(digests, "127.0.0.1:5000/logbook").unwrap(),
            "127.0.0.1:5000/logbook@sha256:bb"
        );
        assert!(pushed_digest("[]", "ghcr.io/o/l").unwrap_err().to_string().contains("no digest"));
    }

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

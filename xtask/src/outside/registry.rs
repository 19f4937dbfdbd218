//! Registries: pushing an image under its release tags and reading back the digest it
//! got, by which releases are deployed.

use anyhow::{Context, Result, bail};
use xshell::Shell;

use super::process::{self, Cmd};
use std::time::Duration;

use super::{docker, http, image};
use crate::project;

/// The registry image `LocalRegistry` runs unless REGISTRY_IMAGE names another.
const DEFAULT_REGISTRY_IMAGE: &str = "registry:2.8.2";

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
    let digests = process::observe(sh, &docker::inspect_format(local, "{{json .RepoDigests}}"))?;
    Ok((pushed_digest(&digests, repository)?, tags))
}

/// Pushes one image per platform (`(arch, local image)`) as `<repository>:<revision>-<arch>`,
/// then a manifest list over them under each release tag of `git_ref`; returns
/// `<repository>@<digest>` of the list, by which a deploy pulls its host's platform, and
/// the tags.
pub fn push_platforms(
    sh: &Shell,
    images: &[(&str, String)],
    repository: &str,
    revision: &str,
    git_ref: Option<&str>,
) -> Result<(String, Vec<String>)> {
    let mut per_platform = Vec::new();
    for (arch, local) in images {
        let remote = format!("{repository}:{revision}-{arch}");
        process::run(sh, &Cmd::new("docker").args(["tag", local, &remote]))?;
        process::run(sh, &Cmd::new("docker").args(["push", &remote]))
            .with_context(|| format!("cannot push {remote}"))?;
        per_platform.push(remote);
    }
    let tags = release_tags(revision, git_ref);
    let mut digest = String::new();
    for tag in &tags {
        digest = push_index(sh, &format!("{repository}:{tag}"), &per_platform)?;
    }
    Ok((format!("{repository}@{digest}"), tags))
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

/// Whether `reference` is in a registry on this machine, which speaks plain HTTP.
fn on_loopback(reference: &str) -> bool {
    let host = image::registry_of(reference);
    host.starts_with("127.0.0.1") || host.starts_with("localhost")
}

/// `docker manifest <verb…>` for the list `index`: plain HTTP to a registry on loopback.
fn manifest(verb: &[&str], index: &str) -> Cmd {
    let cmd = Cmd::new("docker").arg("manifest").args(verb.iter().copied());
    if on_loopback(index) { cmd.arg("--insecure") } else { cmd }
}

/// `docker manifest create`: the list `index` over images already pushed, one per platform.
pub fn manifest_create(index: &str, images: &[String]) -> Cmd {
    manifest(&["create"], index).args(["--amend", index]).args(images.iter().cloned())
}

/// `docker manifest push`: the list to its registry (and out of the local store).
pub fn manifest_push(index: &str) -> Cmd {
    manifest(&["push", "--purge"], index).arg(index)
}

/// Makes `index` the manifest list of `images` (pushed already) and pushes it; returns
/// the list's digest, by which a deploy pulls the host's platform.
pub fn push_index(sh: &Shell, index: &str, images: &[String]) -> Result<String> {
    process::run(sh, &manifest_create(index, images))?;
    let printed = process::capture(sh, &manifest_push(index))
        .with_context(|| format!("cannot push the manifest list {index}"))?;
    printed
        .lines()
        .map(str::trim)
        .find(|line| line.starts_with("sha256:"))
        .map(str::to_owned)
        .with_context(|| format!("`{}` printed no digest: {printed:?}", manifest_push(index)))
}

/// The platforms (`os/arch`) a manifest list in a registry names.
pub fn index_platforms(sh: &Shell, index: &str) -> Result<Vec<String>> {
    let json = process::query(sh, &manifest(&["inspect"], index).arg(index))?;
    platforms_of(&json).with_context(|| format!("{index} is not a manifest list: {json}"))
}

/// The `os/arch` of each entry of a manifest list, as `docker manifest inspect` prints it.
fn platforms_of(json: &str) -> Option<Vec<String>> {
    let value: serde_json::Value = serde_json::from_str(json).ok()?;
    value["manifests"]
        .as_array()?
        .iter()
        .map(|m| {
            Some(format!("{}/{}", m["platform"]["os"].as_str()?, m["platform"]["architecture"].as_str()?))
        })
        .collect()
}

/// A container registry on a free loopback port, removed (with its storage) when dropped.
pub struct LocalRegistry<'a> {
    pub container: docker::ContainerGuard<'a>,
    pub addr: String,
}

impl<'a> LocalRegistry<'a> {
    pub fn start(sh: &'a Shell) -> Result<Self> {
        let image = std::env::var("REGISTRY_IMAGE").unwrap_or_else(|_| DEFAULT_REGISTRY_IMAGE.to_owned());
        let port = http::free_port()?;
        let name = format!("{}-registry-{}", project::NAME, std::process::id());
        let registry = LocalRegistry {
            container: docker::ContainerGuard::new(sh, name),
            addr: format!("127.0.0.1:{port}"),
        };
        process::run(sh, &run_registry(&image, &registry.container.name, port)).with_context(|| {
            format!("cannot start the registry {image} (set REGISTRY_IMAGE to one you can reach)")
        })?;
        process::wait_for(
            "the registry to answer",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || {
                Ok(http::get(&registry.addr, "/v2/", Duration::from_secs(1))
                    .is_ok_and(|r| r.status == 200)
                    .then_some(()))
            },
        )?;
        Ok(registry)
    }
}

pub fn run_registry(image: &str, name: &str, port: u16) -> Cmd {
    Cmd::new("docker")
        .args(["run", "--detach", "--name", name, "--publish"])
        .arg(format!("127.0.0.1:{port}:5000"))
        .arg(image)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_lists_are_made_and_read() {
        let images =
            ["127.0.0.1:5000/logbook:abc-amd64".to_owned(), "127.0.0.1:5000/logbook:abc-arm64".to_owned()];
        assert_eq!(
            manifest_create("127.0.0.1:5000/logbook:abc", &images).to_string(),
            "docker manifest create --insecure --amend 127.0.0.1:5000/logbook:abc \
             127.0.0.1:5000/logbook:abc-amd64 127.0.0.1:5000/logbook:abc-arm64"
        );
        assert_eq!(
            manifest_push("ghcr.io/o/logbook:abc").to_string(),
            "docker manifest push --purge ghcr.io/o/logbook:abc"
        );
        let listed = r#"{"schemaVersion":2,"manifests":[
            {"digest":"sha256:a","platform":{"architecture":"amd64","os":"linux"}},
            {"digest":"sha256:b","platform":{"architecture":"arm64","os":"linux"}}]}"#;
        assert_eq!(platforms_of(listed).unwrap(), ["linux/amd64", "linux/arm64"]);
        assert_eq!(platforms_of(r#"{"schemaVersion":2,"config":{}}"#), None);
    }

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

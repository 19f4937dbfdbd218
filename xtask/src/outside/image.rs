//! Images: what goes into this tree's image, building it (or reusing it), and finding the
//! one a `--tag` names.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use xshell::Shell;

use super::docker;
use super::process::{self, Cmd};
use crate::flags::Builder;
use crate::project;

/// What the image is built from: the Dockerfile and the files its context lets in
/// (`.dockerignore`).
pub const CONTEXT: &[&str] =
    &["Dockerfile", ".dockerignore", "Cargo.toml", "Cargo.lock", "logbook/", "xtask/Cargo.toml"];

/// The OCI label holding the git revision an image was built from.
pub const REVISION_LABEL: &str = "org.opencontainers.image.revision";

/// What goes into an image: its tags and the facts its labels and `/version` carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePlan {
    /// `logbook:<short sha>[-dirty]`
    pub tag: String,
    pub revision: String,
    pub version: String,
    /// The commit's time: reproducible, so an unchanged tree reuses every cached layer.
    pub created: String,
    pub source: String,
    pub rust_image: Option<String>,
    /// Also tag `logbook:latest` (not for throwaway test images).
    pub tag_latest: bool,
}

impl ImagePlan {
    /// Reads the facts from git and the manifests. Read-only, so it runs under `--dry-run`.
    pub fn from_repo(sh: &Shell) -> Result<Self> {
        let git = |args: &[&str]| process::query(sh, &Cmd::new("git").args(args.iter().copied()));
        let short = git(&["rev-parse", "--short=12", "HEAD"])
            .context("cannot read the git revision (is this a git checkout with a commit?)")?;
        let full = git(&["rev-parse", "HEAD"])?;
        // Dirty only when what the image is built from differs from the commit: a change to
        // the README makes no new image.
        let mut status = vec!["status", "--porcelain", "--"];
        status.extend(CONTEXT);
        let dirty = !git(&status)?.is_empty();
        let created = git(&["show", "-s", "--format=%ct", "HEAD"])?
            .parse::<u64>()
            .map(crate::time::unix_to_rfc3339)
            .context("cannot read the commit time")?;
        let suffix = if dirty { "-dirty" } else { "" };
        let manifest = sh
            .read_file(format!("{}/Cargo.toml", project::NAME))
            .context("cannot read the service manifest")?;
        let workspace = sh.read_file("Cargo.toml").context("cannot read Cargo.toml")?;
        Ok(ImagePlan {
            tag: format!("{}:{short}{suffix}", project::NAME),
            revision: format!("{full}{suffix}"),
            version: toml_string(&manifest, "version").unwrap_or_else(|| "unknown".into()),
            created,
            source: toml_string(&workspace, "repository").unwrap_or_default(),
            rust_image: std::env::var("RUST_IMAGE").ok().filter(|v| !v.is_empty()),
            tag_latest: true,
        })
    }

    /// A throwaway image of the same sources: its own tag, and a revision compiled in that
    /// `/version` tells apart from this one. Never tagged `latest`.
    pub fn variant(&self, suffix: &str) -> ImagePlan {
        ImagePlan {
            tag: format!("{}-{suffix}", self.tag),
            revision: format!("{}-{suffix}", self.revision),
            tag_latest: false,
            ..self.clone()
        }
    }

    /// The tag without the repository: `0123456789ab`, or `0123456789ab-dirty`.
    pub fn tag_name(&self) -> &str {
        self.tag.rsplit_once(':').map_or(self.tag.as_str(), |(_, name)| name)
    }

    /// The build facts the Dockerfile takes as build arguments, for the labels and
    /// `/version`: every image of this tree carries the same, whatever its platform.
    pub fn facts(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [("VERSION", self.version.as_str()), ("REVISION", &self.revision), ("CREATED", &self.created)]
            .into_iter()
            .chain((!self.source.is_empty()).then_some(("SOURCE", self.source.as_str())))
    }

    pub fn latest(&self) -> String {
        format!("{}:latest", project::NAME)
    }

    pub fn is_dirty(&self) -> bool {
        self.tag.ends_with("-dirty")
    }
}

/// The first `key = "value"` in a manifest: enough for `version` and `repository`.
fn toml_string(manifest: &str, key: &str) -> Option<String> {
    manifest.lines().find_map(|line| {
        let (k, v) = line.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned()).filter(|v| !v.is_empty())
    })
}

pub fn build_image(plan: &ImagePlan, builder: Builder) -> Cmd {
    let base = plan.rust_image.as_deref().map(|image| ("RUST_IMAGE", image));
    let mut cmd = Cmd::new("docker").args(["build", "--file", "Dockerfile", "--tag", &plan.tag]);
    if plan.tag_latest {
        cmd = cmd.args(["--tag", &plan.latest()]);
    }
    cmd = with_build_args(cmd, base.into_iter().chain(plan.facts()));
    let buildkit = match builder {
        Builder::Buildkit => "1",
        Builder::Classic => "0",
    };
    cmd.arg(".").env("DOCKER_BUILDKIT", buildkit)
}

/// `cmd` with a `--build-arg KEY=VALUE` for each of `args`.
pub fn with_build_args<'k, 'v>(mut cmd: Cmd, args: impl IntoIterator<Item = (&'k str, &'v str)>) -> Cmd {
    for (key, value) in args {
        cmd = cmd.args(["--build-arg".to_owned(), format!("{key}={value}")]);
    }
    cmd
}

/// The git revision `image` was built from, by its label; "unknown" when it has none.
pub fn revision(sh: &Shell, image: &str) -> String {
    let format = format!("{{{{index .Config.Labels \"{REVISION_LABEL}\"}}}}");
    process::query(sh, &docker::inspect_format(image, &format))
        .ok()
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Builds `plan`'s image and prints its tags, size and build time.
pub fn build(sh: &Shell, plan: &ImagePlan, builder: Builder) -> Result<()> {
    let started = Instant::now();
    let builder = usable_builder(sh, builder);
    process::run(sh, &build_image(plan, builder))?;
    let size = size_bytes(sh, &plan.tag)?;
    let also = if plan.tag_latest { format!(" (also {})", plan.latest()) } else { String::new() };
    process::result(&format!(
        "built {}{also}: {:.1} MB in {:.1}s",
        plan.tag,
        size / 1e6,
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// The size of `image`, in bytes, as the engine reports it (0 when it cannot say).
pub fn size_bytes(sh: &Shell, image: &str) -> Result<f64> {
    let size =
        process::observe(sh, &Cmd::new("docker").args(["image", "inspect", "--format", "{{.Size}}", image]))?;
    Ok(size.parse().unwrap_or(0.0))
}

/// `builder`, unless BuildKit is asked for and this docker CLI cannot drive it: from
/// Docker 23 on, the CLI builds with BuildKit only through its buildx plugin, and refuses
/// to build when that is missing (as some distributions package it). Then the classic
/// builder, which builds the same Dockerfile, with one line saying so.
pub fn usable_builder(sh: &Shell, builder: Builder) -> Builder {
    if builder != Builder::Buildkit {
        return builder;
    }
    let buildx = process::succeeds(sh, &Cmd::new("docker").args(["buildx", "version"]));
    let client = process::query(sh, &Cmd::new("docker").args(["version", "--format", "{{.Client.Version}}"]))
        .unwrap_or_default();
    if buildkit_usable(buildx, &client) {
        return builder;
    }
    process::say(&format!(
        "docker {client} has no buildx plugin, which BuildKit needs from Docker 23 on: building with the classic builder"
    ));
    Builder::Classic
}

/// Whether a docker CLI of version `client` can build with BuildKit: through buildx, or
/// with the BuildKit client built into CLIs before 23.
pub fn buildkit_usable(buildx: bool, client: &str) -> bool {
    let major: Option<u32> = client.split('.').next().and_then(|m| m.parse().ok());
    buildx || major.is_none_or(|m| m < 23)
}

/// The image a `--tag` names, else this tree's, which must have been built already.
pub fn built(sh: &Shell, tag: Option<&str>) -> Result<String> {
    let image = match tag {
        Some(tag) => crate::project::image_name(tag),
        None => ImagePlan::from_repo(sh)?.tag,
    };
    docker::check_engine(sh)?;
    if !docker::image_exists(sh, &image) {
        bail!("image {image} does not exist: run `cargo xtask build` first");
    }
    Ok(image)
}

/// The image for the current tree: reused when a clean tree's tag exists, else built.
pub fn ensure(sh: &Shell, no_build: bool) -> Result<String> {
    let plan = ImagePlan::from_repo(sh)?;
    if no_build {
        if !docker::image_exists(sh, &plan.tag) {
            bail!(
                "image {} does not exist and --no-build was given: run `cargo xtask build` first",
                plan.tag
            );
        }
        return Ok(plan.tag);
    }
    if !plan.is_dirty() && docker::image_exists(sh, &plan.tag) {
        process::say(&format!("image {} is up to date", plan.tag));
        return Ok(plan.tag);
    }
    build(sh, &plan, Builder::Buildkit)?;
    Ok(plan.tag)
}

/// The image a `--tag` names: `abc` is `logbook:abc`; one from a registry is pulled when
/// it is not here yet.
///
/// A registry reference may carry a digest (`ghcr.io/o/logbook@sha256:…`, or
/// `…:tag@sha256:…`): the engine then pulls exactly that image and refuses content that
/// does not match it. Credentials are Docker's own (`docker login`), never the runner's.
pub fn resolve(sh: &Shell, tag: &str) -> Result<String> {
    let image = project::image_name(tag);
    if docker::image_exists(sh, &image) {
        return Ok(image);
    }
    if image.contains('/') {
        process::say(&format!("pulling {image}"));
        process::run(sh, &pull(&image)).with_context(|| {
            let registry = registry_of(&image);
            format!(
                "cannot pull {image} from {registry}: check the reference and its digest, that {registry} is reachable, \
                 and that you are logged in (`docker login {registry}`); nothing was changed"
            )
        })?;
        return Ok(image);
    }
    bail!("image {image} does not exist: `docker image ls {}` lists what there is", project::NAME)
}

pub fn pull(image: &str) -> Cmd {
    Cmd::new("docker").args(["pull", image])
}

/// The registry host of an image reference or repository (`docker.io` when it names none).
pub fn registry_of(reference: &str) -> &str {
    match reference.split_once('/') {
        Some((host, _)) if host.contains(['.', ':']) || host == "localhost" => host,
        _ => "docker.io",
    }
}

/// The image a `--tag` names, or this tree's (built if needed) without one.
pub fn tag_or_tree(sh: &Shell, tag: Option<&str>) -> Result<String> {
    match tag {
        Some(tag) => resolve(sh, tag),
        None => ensure(sh, false),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(rust_image: Option<&str>) -> ImagePlan {
        ImagePlan {
            tag: "logbook:0123456789ab".into(),
            revision: "0123456789abcdef0123456789abcdef01234567".into(),
            version: "0.1.0".into(),
            created: "2026-11-23T10:00:00Z".into(),
            source: "https://example.org/logbook".into(),
            rust_image: rust_image.map(Into::into),
            tag_latest: true,
        }
    }

    #[test]
    fn registries_are_named_from_references() {
        assert_eq!(registry_of("ghcr.io/o/logbook@sha256:ab"), "ghcr.io");
        assert_eq!(registry_of("127.0.0.1:5000/logbook:v1"), "127.0.0.1:5000");
        assert_eq!(registry_of("localhost/logbook"), "localhost");
        assert_eq!(registry_of("owner/logbook:1"), "docker.io");
        assert_eq!(pull("ghcr.io/o/l@sha256:ab").to_string(), "docker pull ghcr.io/o/l@sha256:ab");
    }

    #[test]
    fn build_tags_labels_and_passes_the_base_image_override() {
        assert_eq!(
            build_image(&plan(Some("mirror.local/rust:1.95-slim-bookworm")), Builder::Buildkit).to_string(),
            "DOCKER_BUILDKIT=1 docker build --file Dockerfile --tag logbook:0123456789ab --tag logbook:latest \
             --build-arg RUST_IMAGE=mirror.local/rust:1.95-slim-bookworm --build-arg VERSION=0.1.0 \
             --build-arg REVISION=0123456789abcdef0123456789abcdef01234567 \
             --build-arg CREATED=2026-11-23T10:00:00Z --build-arg SOURCE=https://example.org/logbook ."
        );
        let classic = build_image(&ImagePlan { tag_latest: false, ..plan(None) }, Builder::Classic);
        assert!(!classic.to_string().contains("latest"));
        assert!(!classic.to_string().contains("RUST_IMAGE"));
        assert_eq!(classic.env, [("DOCKER_BUILDKIT".to_owned(), "0".to_owned())]);
    }

    #[test]
    fn a_variant_has_its_own_tag_and_revision_and_never_latest() {
        let v2 = plan(None).variant("drill-v2");
        assert_eq!(v2.tag, "logbook:0123456789ab-drill-v2");
        assert_eq!(v2.revision, "0123456789abcdef0123456789abcdef01234567-drill-v2");
        assert!(!build_image(&v2, Builder::Buildkit).to_string().contains("logbook:latest"));
    }

    #[test]
    fn manifest_values_are_read() {
        let manifest = "[package]\nname = \"logbook\"\nversion = \"0.3.1\"\n";
        assert_eq!(toml_string(manifest, "version").as_deref(), Some("0.3.1"));
        assert_eq!(toml_string(manifest, "repository"), None);
    }

    #[test]
    fn buildkit_needs_buildx_from_docker_23_on() {
        assert!(buildkit_usable(true, "28.2.2"));
        assert!(!buildkit_usable(false, "28.2.2"));
        assert!(!buildkit_usable(false, "23.0.0"));
        assert!(buildkit_usable(false, "20.10.24"));
        // A CLI that does not say: try BuildKit, as asked.
        assert!(buildkit_usable(false, ""));
    }

    #[test]
    fn the_context_holds_everything_the_dockerfile_copies() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).unwrap();
        let mut copied = 0;
        for line in dockerfile.lines().filter(|l| l.starts_with("COPY ") && !l.contains("--from")) {
            let words: Vec<&str> = line.split_whitespace().skip(1).filter(|w| !w.starts_with("--")).collect();
            // Another platform's staged files, named by a build argument, are build output,
            // not part of what makes this tree's image.
            for source in words[..words.len() - 1].iter().filter(|s| !s.starts_with("${")) {
                let inside = CONTEXT
                    .iter()
                    .any(|c| if c.ends_with('/') { source.starts_with(c) } else { source == c });
                assert!(inside, "the Dockerfile copies {source}, which CONTEXT leaves out");
                copied += 1;
            }
        }
        assert!(copied >= 4, "only {copied} sources found in the Dockerfile");
    }
}

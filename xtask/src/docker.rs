//! Docker and Compose: finding them, and building their command lines.
//!
//! Every command is built by a plain function returning a [`Cmd`], so tests can check the
//! exact argv and `--dry-run` can print it.

use anyhow::{Context, Result, bail};
use xshell::Shell;

use crate::flags::Builder;
use crate::process::{self, Cmd};
use crate::project;

/// How to run Compose here: the v2 plugin (`docker compose`) or a standalone v2 binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeProgram(pub Vec<String>);

/// Fails with one actionable line when Docker is missing or its daemon is not running.
pub fn check_engine(sh: &Shell) -> Result<()> {
    let probe = Cmd::new("docker").args(["version", "--format", "{{.Server.Version}}"]);
    match process::query(sh, &probe) {
        Ok(_) => Ok(()),
        Err(_) if !process::succeeds(sh, &Cmd::new("docker").arg("--version")) => {
            bail!(
                "docker is not installed or not on PATH: install Docker Engine (https://docs.docker.com/engine/install/)"
            )
        }
        Err(_) => bail!(
            "the Docker daemon is not running or not reachable: start it (`sudo systemctl start docker`, or open Docker Desktop) and check `docker info`"
        ),
    }
}

/// Finds Compose v2. v1 is refused: it lacks `--format json` and `--wait`.
pub fn discover_compose(sh: &Shell) -> Result<ComposeProgram> {
    let version = |cmd: Cmd| process::query(sh, &cmd.args(["version", "--short"])).ok();
    if let Some(v) = version(Cmd::new("docker").arg("compose")) {
        return compose_from_version(vec!["docker".into(), "compose".into()], &v);
    }
    if let Some(v) = version(Cmd::new("docker-compose")) {
        return compose_from_version(vec!["docker-compose".into()], &v);
    }
    bail!(
        "Docker Compose v2 was not found: install the compose plugin (`docker compose version` should answer)"
    )
}

/// The oldest Compose the compose files work with (`env_file` with `required: false`).
const MIN_COMPOSE: (u32, u32) = (2, 24);

fn compose_from_version(program: Vec<String>, version: &str) -> Result<ComposeProgram> {
    let mut parts = version.trim().trim_start_matches('v').split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if major == 1 {
        bail!(
            "{} is Compose v1 ({version}); v2 or later is required (v1 lacks `ps --format json` and `up --wait`): install the compose plugin",
            program.join(" ")
        );
    }
    if (major, minor) < MIN_COMPOSE {
        bail!(
            "{} is Compose {version}; {}.{} or later is required (for `env_file` with `required: false`): update the compose plugin",
            program.join(" "),
            MIN_COMPOSE.0,
            MIN_COMPOSE.1
        );
    }
    Ok(ComposeProgram(program))
}

/// The engine and Compose, checked once per command. Under `--dry-run`, a missing engine
/// is tolerated and `docker compose` assumed, since nothing will run.
pub fn connect(sh: &Shell) -> Result<ComposeProgram> {
    if process::runner().dry_run {
        return Ok(
            discover_compose(sh).unwrap_or_else(|_| ComposeProgram(vec!["docker".into(), "compose".into()]))
        );
    }
    check_engine(sh)?;
    discover_compose(sh)
}

/// One compose project: which files, which name, which variables.
#[derive(Debug, Clone)]
pub struct Compose {
    pub program: ComposeProgram,
    pub project: String,
    pub files: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Compose's `--env-file`: where it reads variables for the files (default `.env`).
    pub env_file: Option<String>,
}

impl Compose {
    /// The app stack under its usual project name.
    pub fn app(program: ComposeProgram) -> Self {
        Compose {
            program,
            project: project::COMPOSE_PROJECT.to_owned(),
            files: vec![project::COMPOSE_FILE.to_owned()],
            env: Vec::new(),
            env_file: None,
        }
    }

    /// The same project with the monitoring file layered on.
    pub fn with_monitoring(mut self) -> Self {
        if !self.files.iter().any(|f| f == project::MONITORING_COMPOSE_FILE) {
            self.files.push(project::MONITORING_COMPOSE_FILE.to_owned());
        }
        self
    }

    pub fn project(mut self, name: &str) -> Self {
        self.project = name.to_owned();
        self
    }

    pub fn var(mut self, key: &str, value: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    pub fn cmd(&self, args: &[&str]) -> Cmd {
        let (program, pre) =
            self.program.0.split_first().map_or(("docker", &[][..]), |(p, rest)| (p.as_str(), rest));
        let mut cmd = Cmd::new(program).args(pre.iter().cloned()).args(["--project-name", &self.project]);
        if let Some(env_file) = &self.env_file {
            cmd = cmd.args(["--env-file", env_file]);
        }
        for file in &self.files {
            cmd = cmd.args(["--file", file]);
        }
        let mut cmd = cmd.args(args.iter().copied());
        for (k, v) in &self.env {
            cmd = cmd.env(k, v);
        }
        cmd
    }

    pub fn up(&self) -> Cmd {
        // No --remove-orphans: the monitoring services share the project and must survive
        // an app-only `up`.
        self.cmd(&["up", "--detach"])
    }

    /// `up` for the named services only (and what they depend on).
    pub fn up_services(&self, services: &[&str]) -> Cmd {
        let mut args = vec!["up", "--detach"];
        args.extend(services);
        self.cmd(&args)
    }

    pub fn down(&self, volumes: bool) -> Cmd {
        if volumes {
            self.cmd(&["down", "--remove-orphans", "--volumes"])
        } else {
            self.cmd(&["down", "--remove-orphans"])
        }
    }

    pub fn ps_json(&self) -> Cmd {
        self.cmd(&["ps", "--all", "--format", "json"])
    }

    pub fn port(&self, service: &str, container_port: u16) -> Cmd {
        self.cmd(&["port", service, &container_port.to_string()])
    }

    pub fn restart(&self, service: &str) -> Cmd {
        self.cmd(&["restart", service])
    }

    pub fn logs(&self, service: Option<&str>, follow: bool, tail: Option<u32>) -> Cmd {
        let mut args = vec!["logs", "--no-color"];
        let tail = tail.map(|n| n.to_string());
        if let Some(n) = &tail {
            args.extend(["--tail", n]);
        }
        if follow {
            args.push("--follow");
        }
        args.extend(service);
        self.cmd(&args)
    }
}

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
        let dirty = !git(&["status", "--porcelain"])?.is_empty();
        let created = git(&["show", "-s", "--format=%ct", "HEAD"])?
            .parse::<i64>()
            .map(crate::time::format_rfc3339_utc)
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
    let build_args = plan
        .rust_image
        .as_deref()
        .map(|image| ("RUST_IMAGE", image))
        .into_iter()
        .chain([("VERSION", plan.version.as_str()), ("REVISION", &plan.revision), ("CREATED", &plan.created)])
        .chain((!plan.source.is_empty()).then_some(("SOURCE", plan.source.as_str())));
    let mut cmd = Cmd::new("docker").args(["build", "--file", "Dockerfile", "--tag", &plan.tag]);
    if plan.tag_latest {
        cmd = cmd.args(["--tag", &plan.latest()]);
    }
    for (key, value) in build_args {
        cmd = cmd.args(["--build-arg".to_owned(), format!("{key}={value}")]);
    }
    let buildkit = match builder {
        Builder::Buildkit => "1",
        Builder::Classic => "0",
    };
    cmd.arg(".").env("DOCKER_BUILDKIT", buildkit)
}

/// The variable a broken test image sets to a value the service refuses. None of the
/// compose file, the swarm stack or the manifests sets it, so it cannot be overridden.
pub const BROKEN_SETTING: &str = "LOGBOOK_LOG_FORMAT";

/// Builds `tag` from `image` with a setting the service rejects, so it never gets ready:
/// the stand-in for a bad release in smoke tests and drills.
pub fn build_broken_image(sh: &Shell, image: &str, tag: &str) -> Result<()> {
    let dir = sh.create_temp_dir()?;
    sh.write_file(dir.path().join("Dockerfile"), format!("FROM {image}\nENV {BROKEN_SETTING}=yaml\n"))?;
    let context = dir.path().display().to_string();
    process::run(sh, &Cmd::new("docker").args(["build", "--quiet", "--tag", tag, &context]))
}

/// `docker run --rm --network none` of `image` with `volumes`, running `args`: the
/// service's own binary as a tool, with no SQLite needed on the host.
pub fn one_off(image: &str, volumes: &[String], args: &[String]) -> Cmd {
    let mut cmd = Cmd::new("docker").args(["run", "--rm", "--network", "none"]);
    for volume in volumes {
        cmd = cmd.args(["--volume", volume]);
    }
    cmd.arg(image).args(args.iter().cloned())
}

/// A read-only bind mount of `file`'s directory at `at`, and the file's path in there.
pub fn mount_file_dir(file: &std::path::Path, at: &str) -> Result<(String, String)> {
    let file = std::path::absolute(file).with_context(|| format!("bad path {}", file.display()))?;
    let dir = file.parent().context("no directory")?;
    let name = file.file_name().context("no file name")?;
    Ok((format!("{}:{at}:ro", dir.display()), format!("{at}/{}", name.to_string_lossy())))
}

pub fn image_exists(sh: &Shell, image: &str) -> bool {
    process::succeeds(sh, &Cmd::new("docker").args(["image", "inspect", image]))
}

pub fn inspect_format(target: &str, format: &str) -> Cmd {
    Cmd::new("docker").args(["inspect", "--format", format, target])
}

/// Parses `docker compose ps --format json`: one object per line (v2.21+) or one array.
pub fn parse_ps(output: &str) -> Result<Vec<serde_json::Value>> {
    let trimmed = output.trim();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    if trimmed.starts_with('[') {
        let list: serde_json::Value = serde_json::from_str(trimmed).context("compose ps printed bad JSON")?;
        return Ok(list.as_array().cloned().unwrap_or_default());
    }
    trimmed.lines().map(|l| serde_json::from_str(l).context("compose ps printed bad JSON")).collect()
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
    fn compose_commands_name_project_files_and_variables() {
        let compose = Compose::app(ComposeProgram(vec!["docker".into(), "compose".into()]))
            .var("LOGBOOK_IMAGE", "logbook:abc")
            .var("LOGBOOK_IMAGE", "logbook:def");
        assert_eq!(
            compose.up().to_string(),
            "LOGBOOK_IMAGE=logbook:def docker compose --project-name logbook --file docker-compose.yml up --detach"
        );
        let smoke = Compose::app(ComposeProgram(vec!["docker-compose".into()])).project("logbook-smoke-7");
        assert_eq!(
            smoke.down(true).argv(),
            [
                "docker-compose",
                "--project-name",
                "logbook-smoke-7",
                "--file",
                "docker-compose.yml",
                "down",
                "--remove-orphans",
                "--volumes"
            ]
        );
        assert_eq!(
            smoke.logs(Some("logbook"), true, Some(50)).args[4..],
            ["logs", "--no-color", "--tail", "50", "--follow", "logbook"]
        );
        assert_eq!(smoke.logs(None, false, None).args[4..], ["logs", "--no-color"]);
        assert_eq!(smoke.port("logbook", 8080).args[4..], ["port", "logbook", "8080"]);
    }

    #[test]
    fn compose_v1_is_refused_and_v2_accepted() {
        let err = compose_from_version(vec!["docker-compose".into()], "1.29.2").unwrap_err().to_string();
        assert!(err.contains("Compose v1") && err.contains("v2 or later"), "{err}");
        assert!(compose_from_version(vec!["docker-compose".into()], "v2.24.0").is_ok());
        let err = compose_from_version(vec!["docker-compose".into()], "2.20.3").unwrap_err().to_string();
        assert!(err.contains("2.24 or later"), "{err}");
        assert!(compose_from_version(vec!["docker".into(), "compose".into()], "5.6.1").is_ok());
    }

    #[test]
    fn ps_output_in_both_formats() {
        let lines =
            "{\"Service\":\"logbook\",\"State\":\"running\"}\n{\"Service\":\"x\",\"State\":\"exited\"}\n";
        assert_eq!(parse_ps(lines).unwrap().len(), 2);
        let array = r#"[{"Service":"logbook","State":"running"}]"#;
        assert_eq!(parse_ps(array).unwrap()[0]["State"], "running");
        assert!(parse_ps("").unwrap().is_empty());
    }

    #[test]
    fn manifest_values_are_read() {
        let manifest = "[package]\nname = \"logbook\"\nversion = \"0.3.1\"\n";
        assert_eq!(toml_string(manifest, "version").as_deref(), Some("0.3.1"));
        assert_eq!(toml_string(manifest, "repository"), None);
    }
}

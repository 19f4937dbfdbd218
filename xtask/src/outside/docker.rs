//! Docker and Compose: finding them, and building their command lines.
//!
//! Every command is built by a plain function returning a [`Cmd`], so tests can check the
//! exact argv and `--dry-run` can print it.

use anyhow::{Context, Result, bail};
use xshell::Shell;

use super::process::{self, Cmd};
use crate::project;

/// How to run Compose here: the v2 plugin (`docker compose`) or a standalone v2 binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComposeProgram(pub Vec<String>);

/// Fails with one actionable line when Docker is missing or its daemon is not running.
pub fn check_engine(sh: &Shell) -> Result<()> {
    // A daemon that does not answer this in 20 s is wedged; say so rather than hang.
    let probe = Cmd::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .limit(process::Limit::After(std::time::Duration::from_secs(20)));
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

/// The engine and Compose, checked once per command. A dry run checks them too: its
/// read-only queries need them, and it should fail as the real run would.
pub fn connect(sh: &Shell) -> Result<ComposeProgram> {
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
    pub fn with_monitoring(self) -> Self {
        self.with_file(project::MONITORING_COMPOSE_FILE)
    }

    /// The same project with `file` layered on (once).
    pub fn with_file(mut self, file: &str) -> Self {
        if !self.files.iter().any(|f| f == file) {
            self.files.push(file.to_owned());
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
        // an app-only `up`. --no-build: the runner has the image ready (built, or pulled
        // by digest); the compose file's `build:` is for `docker compose up --build` alone.
        self.cmd(&["up", "--detach", "--no-build"])
    }

    /// Starts one more container of `service` beside the running one, which is left as it
    /// is (no dependency touched, nothing recreated): the first half of a start-first switch.
    pub fn start_beside(&self, service: &str) -> Cmd {
        self.cmd(&[
            "up",
            "--detach",
            "--no-build",
            "--no-deps",
            "--no-recreate",
            "--scale",
            &format!("{service}=2"),
            service,
        ])
    }

    /// `up` for `service` alone, without its dependencies.
    pub fn up_alone(&self, service: &str) -> Cmd {
        self.cmd(&["up", "--detach", "--no-deps", service])
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

/// A container this run starts (a test registry, a stand-in S3 endpoint, a proxy for the
/// bench): removed, with its anonymous volumes, however the run leaves scope. Made before
/// the container is started, so a failed start is cleaned up too.
pub struct ContainerGuard<'a> {
    sh: &'a Shell,
    pub name: String,
}

impl<'a> ContainerGuard<'a> {
    pub fn new(sh: &'a Shell, name: String) -> Self {
        ContainerGuard { sh, name }
    }
}

impl Drop for ContainerGuard<'_> {
    fn drop(&mut self) {
        let _ = process::run_cleanup(
            self.sh,
            &Cmd::new("docker").args(["rm", "--force", "--volumes", &self.name]),
        );
    }
}

/// `uid:gid` of whoever runs the runner, for a container that writes files of theirs.
pub fn host_user(sh: &Shell) -> Result<String> {
    let id = |flag: &str| process::query(sh, &Cmd::new("id").arg(flag));
    Ok(format!("{}:{}", id("-u")?, id("-g")?))
}

/// The host's own address as the engine's containers reach it, for a server the runner
/// starts on the host network. The kernel says which address the host uses toward the
/// default bridge's subnet; the engine's `Gateway` field is not read, because a freshly
/// started engine leaves it empty although the bridge has that address.
pub fn host_address_for_containers(sh: &Shell) -> Result<std::net::Ipv4Addr> {
    let subnets = process::query(sh, &bridge_subnets())?;
    let toward = probe_address(&subnets).with_context(|| {
        format!(
            "the default bridge network has no IPv4 subnet (`docker network inspect bridge` gave {subnets:?})"
        )
    })?;
    source_address_toward(toward)
        .with_context(|| format!("the host has no route toward the default bridge ({toward})"))
}

/// The default bridge's subnets, one per line.
pub fn bridge_subnets() -> Cmd {
    inspect_network("bridge", "{{range .IPAM.Config}}{{println .Subnet}}{{end}}")
}

fn inspect_network(network: &str, format: &str) -> Cmd {
    Cmd::new("docker").args(["network", "inspect", "--format", format, network])
}

/// An address inside the first IPv4 subnet listed (`172.17.0.0/16` gives 172.17.0.2): a
/// container's, which the host reaches through its bridge.
fn probe_address(subnets: &str) -> Option<std::net::Ipv4Addr> {
    subnets.lines().find_map(|line| {
        let (base, bits) = line.trim().split_once('/')?;
        let base: std::net::Ipv4Addr = base.parse().ok()?;
        let bits: u32 = bits.parse().ok().filter(|b| *b <= 30)?;
        let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
        Some(std::net::Ipv4Addr::from((u32::from(base) & mask) + 2))
    })
}

/// The local address the kernel would send from toward `peer`. A UDP "connect" only
/// chooses the route: nothing is sent.
pub fn source_address_toward(peer: std::net::Ipv4Addr) -> Result<std::net::Ipv4Addr> {
    let socket = std::net::UdpSocket::bind(("0.0.0.0", 0)).context("cannot open a UDP socket")?;
    socket.connect((peer, 9)).with_context(|| format!("no route to {peer}"))?;
    match socket.local_addr().context("the socket has no local address")?.ip() {
        std::net::IpAddr::V4(ip) if !ip.is_unspecified() => Ok(ip),
        other => bail!("the route to {peer} leaves from {other}, not an IPv4 address of this host"),
    }
}

pub fn image_exists(sh: &Shell, image: &str) -> bool {
    process::succeeds(sh, &Cmd::new("docker").args(["image", "inspect", image]))
}

pub fn inspect_format(target: &str, format: &str) -> Cmd {
    Cmd::new("docker").args(["inspect", "--format", format, target])
}

/// One container, as `docker compose ps --format json` lists it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PsEntry {
    #[serde(rename = "ID")]
    pub id: String,
    pub service: String,
    pub state: String,
    #[serde(default)]
    pub exit_code: i64,
}

/// Parses `docker compose ps --format json`: one object per line (v2.21+) or one array.
pub fn parse_ps(output: &str) -> Result<Vec<PsEntry>> {
    let trimmed = output.trim();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    if trimmed.starts_with('[') {
        return serde_json::from_str(trimmed).context("compose ps printed bad JSON");
    }
    trimmed.lines().map(|l| serde_json::from_str(l).context("compose ps printed bad JSON")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_host_address_comes_from_the_subnet_not_the_gateway() {
        // A freshly started engine's default bridge: a subnet and no gateway.
        assert_eq!(probe_address("172.17.0.0/16\n"), Some("172.17.0.2".parse().unwrap()));
        assert_eq!(probe_address("fd00::/64\n10.1.2.0/24\n"), Some("10.1.2.2".parse().unwrap()));
        assert_eq!(probe_address("10.1.2.77/24"), Some("10.1.2.2".parse().unwrap()));
        assert_eq!(probe_address(""), None);
        assert_eq!(probe_address("<no value>\n"), None);
        assert_eq!(
            bridge_subnets().argv(),
            [
                "docker",
                "network",
                "inspect",
                "--format",
                "{{range .IPAM.Config}}{{println .Subnet}}{{end}}",
                "bridge"
            ]
        );
    }

    #[test]
    fn the_kernel_names_the_source_address_of_a_route() {
        assert_eq!(
            source_address_toward("127.0.0.2".parse().unwrap()).unwrap(),
            std::net::Ipv4Addr::LOCALHOST
        );
    }

    #[test]
    fn compose_commands_name_project_files_and_variables() {
        let compose = Compose::app(ComposeProgram(vec!["docker".into(), "compose".into()]))
            .var("LOGBOOK_IMAGE", "logbook:abc")
            .var("LOGBOOK_IMAGE", "logbook:def");
        assert_eq!(
            compose.up().to_string(),
            "LOGBOOK_IMAGE=logbook:def docker compose --project-name logbook --file docker-compose.yml up --detach --no-build"
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
        assert_eq!(
            smoke.start_beside("logbook").args[4..],
            ["up", "--detach", "--no-build", "--no-deps", "--no-recreate", "--scale", "logbook=2", "logbook"]
        );
        assert_eq!(smoke.up_alone("proxy").args[4..], ["up", "--detach", "--no-deps", "proxy"]);
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
        let lines = "{\"ID\":\"a1\",\"Service\":\"logbook\",\"State\":\"running\",\"Name\":\"n\"}\n\
                     {\"ID\":\"b2\",\"Service\":\"x\",\"State\":\"exited\",\"ExitCode\":78}\n";
        let entries = parse_ps(lines).unwrap();
        assert_eq!((entries[1].id.as_str(), entries[1].exit_code), ("b2", 78));
        let array = r#"[{"ID":"a1","Service":"logbook","State":"running"}]"#;
        assert_eq!(parse_ps(array).unwrap()[0].state, "running");
        assert!(parse_ps("").unwrap().is_empty());
        assert!(parse_ps("{\"Service\":1}").is_err());
    }
}

//! The whole command line of `cargo xtask`. Doc comments here are the `--help` text.

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Operations for the logbook service: build, run, test and ship it.
///
/// Every external command is echoed before it runs; add --dry-run to print them
/// without running anything.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, about, long_about)]
pub struct Xtask {
    /// Print the commands that would run, and run nothing that changes state.
    /// `--dry-run=json` also prints the plan on stdout as one JSON object: each change's
    /// argv and environment, in order, and where the dry run ended (docs/OPERATIONS.md,
    /// "Output for programs").
    #[arg(
        long,
        global = true,
        value_enum,
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "text",
        value_name = "FORMAT"
    )]
    pub dry_run: Option<PlanFormat>,

    #[command(subcommand)]
    pub command: Command,
}

/// How a dry run's plan is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    /// Only the echoed commands, on stderr (the default).
    Text,
    /// Also one JSON object on stdout.
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Build(Build),
    Up(Up),
    Down(Down),
    Status(Status),
    Logs(Logs),
    Smoke(Smoke),
    Rollback(Rollback),
    Backup(Backup),
    Restore(Restore),
    Drill(Drill),
    MonitoringUp(MonitoringUp),
    MonitoringDown(MonitoringDown),
    MonitoringSmoke(MonitoringSmoke),
    Lint(Lint),
    Scan(Scan),
    Sbom(Sbom),
    Publish(Publish),
    Deploy(Deploy),
    SwarmDrill(SwarmDrill),
    ReleaseDrill(ReleaseDrill),
    RecoveryDrill(RecoveryDrill),
    FaultDrill(FaultDrill),
    SchemaDrill(SchemaDrill),
    PlatformSmoke(PlatformSmoke),
    Doctor(Doctor),
    Coverage(Coverage),
    Completions(Completions),
    AuditImage(AuditImage),
    Advisories(Advisories),
    Ci(Ci),
    Bench(Bench),
    Lock(Lock),
}

/// Build the image: tagged `logbook:<git sha>` (with `-dirty` for a modified tree) and
/// `logbook:latest`, with OCI labels. Prints its size and the build time.
///
/// RUST_IMAGE in the environment overrides the build's base image (for mirrors).
///
/// With `--platform`, one image per platform: this machine's built as always, any other
/// cross-compiled here (not emulated) and put in an image by the same Dockerfile, tagged
/// `logbook:<git sha>-<arch>`. Cross-compiling needs zig, cargo-zigbuild and the Rust
/// target (`cargo xtask doctor` names what is missing); it is checked before anything is
/// built.
#[derive(Debug, Args)]
pub struct Build {
    /// Which image builder to use: BuildKit, or the classic builder (for engines without
    /// BuildKit). The Dockerfile supports both; another platform's image needs BuildKit.
    #[arg(long, value_enum, default_value_t = Builder::Buildkit)]
    pub builder: Builder,

    /// The platforms to build for, comma-separated (default: LOGBOOK_PLATFORMS, else this
    /// machine's).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub platform: Vec<Platform>,
}

/// A platform the image is built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum)]
pub enum Platform {
    /// x86-64 Linux
    #[value(name = "linux/amd64")]
    LinuxAmd64,
    /// 64-bit Arm Linux (Graviton, Ampere, Apple silicon under Docker Desktop)
    #[value(name = "linux/arm64")]
    LinuxArm64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Builder {
    /// BuildKit (DOCKER_BUILDKIT=1)
    Buildkit,
    /// the classic builder (DOCKER_BUILDKIT=0)
    Classic,
}

/// Start the stack, or switch it to another image, and return once the service is ready;
/// prints its URL and image, and records the release.
///
/// Builds the image first when this tree's image does not exist yet. If the service does
/// not become ready within the timeout (or on Ctrl-C), prints its last logs and health log
/// and brings back the image that ran before (unless --no-rollback); with nothing to go
/// back to, stops what it started, keeping the data volume. Exits non-zero either way.
/// The host port comes from LOGBOOK_HOST_PORT (environment or .env; default 8080).
#[derive(Debug, Args)]
pub struct Up {
    /// Use the existing image for this tree; fail if it has not been built.
    #[arg(long, conflicts_with = "tag")]
    pub no_build: bool,

    /// Run this image tag (e.g. 0123456789ab, or logbook:0123456789ab) instead of this tree's.
    #[arg(long)]
    pub tag: Option<String>,

    /// Seconds to wait for /readyz to answer 200.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,

    /// If the new image does not become ready, leave it in place instead of restoring the
    /// previous one.
    #[arg(long)]
    pub no_rollback: bool,

    #[command(flatten)]
    pub lock: LockArgs,
}

/// Stop the stack. The data volume is kept unless --volumes is given.
#[derive(Debug, Args)]
pub struct Down {
    /// Also delete the volumes, and every entry in them. Needs --yes, or a confirmation
    /// typed on a terminal.
    #[arg(long)]
    pub volumes: bool,

    /// Confirm --volumes without asking.
    #[arg(long, requires = "volumes")]
    pub yes: bool,

    #[command(flatten)]
    pub lock: LockArgs,
}

/// Show the stack's containers: image tag, state, health and uptime.
#[derive(Debug, Args)]
pub struct Status {
    /// Print one JSON object instead of the table (schema: docs/OPERATIONS.md, "Output for programs").
    #[arg(long)]
    pub json: bool,
}

/// Show the stack's logs.
#[derive(Debug, Args)]
pub struct Logs {
    /// Only this service's logs (default: every service).
    pub service: Option<String>,

    /// Keep following new lines until Ctrl-C.
    #[arg(short, long)]
    pub follow: bool,

    /// How many recent lines to show per container.
    #[arg(long, default_value_t = 100)]
    pub tail: u32,
}

/// Prove the image on the real engine, in a fresh, isolated stack (own project name,
/// free port, own volume): health, readiness, version, a write/read round trip, metrics,
/// persistence across restart, non-root user, Docker health, graceful stop, and that a
/// broken image fails fast. Always tears down; prints the logs when a check fails.
#[derive(Debug, Args)]
pub struct Smoke {
    /// Use the existing image for this tree; fail if it has not been built.
    #[arg(long)]
    pub no_build: bool,

    /// Test this image (a tag, or a full name; pulled if it is not here) instead of this tree's.
    #[arg(long, conflicts_with = "no_build")]
    pub tag: Option<String>,

    /// Check a running deployment at this plain-HTTP address instead (http://HOST:PORT):
    /// health, readiness, version, a write/read round trip (with LOGBOOK_API_TOKEN from
    /// the environment when set) and metrics. Starts and changes nothing else.
    #[arg(long, conflicts_with_all = ["no_build", "tag"])]
    pub url: Option<String>,
}

/// Measure the service: GET and durable POST rates with wrk, p50/p99 latency, the same
/// disk's raw SQLite rate (and the ratio), start-up time and idle stop time, and both rates
/// through the stack's proxy and, for comparison, through the HTTPS front's proxy.
///
/// Builds a release binary and runs it on a free loopback port with a fresh database.
/// Needs wrk on PATH and Docker; builds the proxy's image (from DEBIAN_IMAGE); the HTTPS
/// front's figures need its image (CADDY_IMAGE).
#[derive(Debug, Args)]
pub struct Bench {
    /// Seconds for each load run (GET, POST, raw SQLite).
    #[arg(long, default_value_t = 10)]
    pub duration: u32,

    /// Concurrent HTTP connections for the load runs.
    #[arg(long, default_value_t = 32)]
    pub connections: u32,
}

/// Bring back an earlier release: the one before the running image, or --to TAG.
///
/// Health-gated: if the release does not become ready, the image that was running is
/// restored. The data volume is never touched. The target is the compose stack unless a
/// subcommand names another; `--list` shows what you can go back to.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Rollback {
    /// Roll back on another target than this host's compose stack.
    #[command(subcommand)]
    pub target: Option<RollbackTarget>,

    #[command(flatten)]
    pub compose: RollbackCompose,
}

#[derive(Debug, Subcommand)]
pub enum RollbackTarget {
    /// The compose stack on this Docker engine (the default).
    Compose(RollbackCompose),
    /// A Docker Swarm stack: redeploys an earlier release from the swarm's history.
    Swarm(RollbackSwarm),
    /// Kubernetes: `kubectl rollout undo`, which keeps its own revisions.
    K8s(RollbackK8s),
}

#[derive(Debug, Clone, Args)]
pub struct RollbackCompose {
    /// Roll back to this release (e.g. 0123456789ab or logbook:0123456789ab) instead of the
    /// previous one. It must be in the release history.
    #[arg(long, conflicts_with = "list")]
    pub to: Option<String>,

    /// List the recorded releases, newest first, with their revisions and times, who
    /// deployed each with which command, and why; change nothing.
    #[arg(long)]
    pub list: bool,

    /// With --list: print one JSON object instead of the table (schema:
    /// docs/OPERATIONS.md, "Output for programs").
    #[arg(long, requires = "list")]
    pub json: bool,

    /// Go back across a breaking schema change: restore the snapshot the running release
    /// took before it migrated, carry over every entry appended since (ids and
    /// idempotency keys kept), and start the release before it (or --to). The service
    /// stops while the data moves; the proxy holds requests meanwhile.
    #[arg(long, conflicts_with = "list")]
    pub with_data: bool,

    /// Seconds to wait for /readyz to answer 200.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,

    #[command(flatten)]
    pub lock: LockArgs,
}

#[derive(Debug, Args)]
pub struct RollbackSwarm {
    /// Roll back to this release instead of the previous one; it must be in the swarm's
    /// release history.
    #[arg(long, conflicts_with = "list")]
    pub to: Option<String>,

    /// List the stack's recorded releases, newest first; change nothing.
    #[arg(long)]
    pub list: bool,

    /// The swarm stack's name.
    #[arg(long, default_value = "logbook")]
    pub stack: String,

    /// Seconds to wait for the rollout to be ready.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

#[derive(Debug, Args)]
pub struct RollbackK8s {
    /// The Kubernetes namespace (default: the current context's).
    #[arg(long)]
    pub namespace: Option<String>,

    /// Seconds to wait for the rollout to be ready.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

/// Copy the live database out of the running stack, consistently and without stopping it,
/// then verify the copy (integrity check, entry count) and print its path and size.
///
/// With --check-replica, check the off-host replica instead: restore it into a scratch
/// file, verify that, and print its age and entry count (a daily job: docs/OPERATIONS.md).
#[derive(Debug, Args)]
pub struct Backup {
    /// Where to write the copy (default: backups/logbook-<UTC time>.db). Never overwritten.
    #[arg(long, conflicts_with = "check_replica")]
    pub out: Option<std::path::PathBuf>,

    /// Restore the replica (LOGBOOK_REPLICA_URL) into a scratch file and verify it; changes
    /// nothing. Fails if it cannot be restored or does not verify.
    #[arg(long)]
    pub check_replica: bool,
}

/// Replace the stack's database with a backup file, or with the off-host replica.
///
/// The file (or the replica's restored copy) is verified first; a missing, truncated,
/// foreign or damaged file is refused before anything is stopped. Then the service (and
/// its replication sidecar) stops, the file goes into the data volume (the replaced
/// database is kept there as a timestamped .bak), and the service starts again; prints
/// the restored entry count once it is ready. The proxy keeps running throughout.
#[derive(Debug, Args)]
pub struct Restore {
    /// The backup file, as written by `cargo xtask backup`.
    #[arg(required_unless_present = "from_replica", conflicts_with = "from_replica")]
    pub file: Option<std::path::PathBuf>,

    /// Restore from the replica that LOGBOOK_REPLICA_URL names, instead of a file.
    #[arg(long)]
    pub from_replica: bool,

    /// With --from-replica: the state at this moment (RFC 3339 in UTC, e.g.
    /// 2026-12-01T09:30:00Z) instead of the newest. Refused, with the range the replica
    /// holds, when it is before the replica's oldest file or in the future.
    #[arg(long, requires = "from_replica", value_parser = parse_point_in_time)]
    pub at: Option<std::time::SystemTime>,

    /// Seconds to wait for /readyz to answer 200 after the restore.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,

    #[command(flatten)]
    pub lock: LockArgs,
}

/// How a command that changes the stack takes the stack's lock (docs/OPERATIONS.md, "The
/// stack's state and its lock").
#[derive(Debug, Clone, Args)]
pub struct LockArgs {
    /// How long to wait while another command holds the lock, or deploys are frozen
    /// (e.g. 90s, 10m), instead of refusing at once.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub lock_wait: std::time::Duration,

    /// Why: shown to anyone the lock holds up, and recorded in the release history.
    #[arg(long, short = 'm')]
    pub message: Option<String>,
}

impl LockArgs {
    pub fn request(&self) -> crate::outside::state::LockRequest {
        crate::outside::state::LockRequest {
            wait: self.lock_wait,
            message: self.message.clone(),
            reads_only: false,
        }
    }
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("expected a duration such as 90s or 10m: {e}"))
}

/// See, take or lift the lock of this host's stack (the project LOGBOOK_PROJECT names,
/// default logbook). Every command that changes the stack (up, deploy, rollback, restore,
/// down, monitoring-up/-down) holds it while it runs; `backup` waits for it.
#[derive(Debug, Args)]
pub struct Lock {
    #[command(subcommand)]
    pub action: LockAction,
}

#[derive(Debug, Subcommand)]
pub enum LockAction {
    /// Who holds the lock and since when, whether deploys are frozen and why, and a
    /// holder that died without releasing it. Changes nothing.
    Status {
        /// Print it as one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Freeze deploys with a reason: every changing command is refused (naming you and the
    /// reason) until `lock release`. Waits for, or refuses, a command that runs now.
    Acquire {
        /// Why deploys are frozen (shown to whoever is refused).
        #[arg(long, short = 'm')]
        message: String,

        /// How long to wait for a command that holds the lock now (e.g. 90s, 10m).
        #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
        lock_wait: std::time::Duration,
    },
    /// Lift a freeze put by `lock acquire`.
    Release,
}

fn parse_point_in_time(text: &str) -> Result<std::time::SystemTime, String> {
    crate::time::parse_rfc3339(text)
        .ok_or_else(|| format!("expected an RFC 3339 time in UTC, e.g. 2026-12-01T09:30:00Z, not {text:?}"))
}

/// Rehearse release safety on a throwaway stack: deploy v1 and write entries, switch to v2,
/// roll back, try a broken image (v1 must come back by itself), switch to a release built
/// before the ready port and back, back up, write more, restore. Checks that no entry is lost or invented
/// and reports the rollback time.
#[derive(Debug, Args)]
pub struct Drill {
    /// Use the existing image for this tree as v1; fail if it has not been built.
    #[arg(long)]
    pub no_build: bool,
}

/// Rehearse the loss of the host's data: on a throwaway stack replicating to a local S3
/// endpoint ($RCLONE_IMAGE, default rclone/rclone:1.75.2), append under load, kill -9 the
/// service and its sidecar, remove the data volume, and `up` again: every entry
/// acknowledged before the last sync that reached the storage must come back. Then a
/// point-in-time restore, and a replica outage. Reports the replication lag (p50, p99),
/// the restore time and what was lost; always tears down.
#[derive(Debug, Args)]
pub struct RecoveryDrill {
    /// Use the existing image for this tree; fail if it has not been built.
    #[arg(long)]
    pub no_build: bool,
}

/// Rehearse interruptions: on a throwaway stack, while a client appends and reads through
/// the proxy, interrupt `up` at each step of its switch journal with Ctrl-C, Ctrl-C twice
/// and SIGKILL, then run the next `up`. After each, exactly one release must serve and no
/// acknowledged entry may be lost. Prints a table per step; always tears down.
#[derive(Debug, Args)]
pub struct FaultDrill {
    /// Use the existing image for this tree; fail if it has not been built.
    #[arg(long)]
    pub no_build: bool,
}

/// Rehearse schema changes: build two more releases from a copy of this tree, one with an
/// additive migration and one with a breaking one, then, on a throwaway stack under
/// writes, switch forward and back across both (`rollback`, `rollback --with-data`, and a
/// release that fails after migrating). No request may fail, and no acknowledged entry be
/// lost, duplicated or renumbered. Always tears down.
#[derive(Debug, Args)]
pub struct SchemaDrill {
    /// Use the existing image for this tree; fail if it has not been built.
    #[arg(long)]
    pub no_build: bool,
}

/// Prove the image for every platform, live: build this machine's image and the other
/// platform's (cross-compiled), push both to a throwaway registry on loopback with one
/// manifest list over them, check that the list names both platforms, then run the
/// arm64 image's binary under qemu-aarch64-static: start, `/readyz`, a write and a read.
/// Prints each platform's build time and image size. Always tears down.
#[derive(Debug, Args)]
pub struct PlatformSmoke {
    /// Use the existing image for this tree; fail if it has not been built.
    #[arg(long)]
    pub no_build: bool,
}

/// Rehearse the release path of the workflow, offline: start a container registry on
/// loopback ($REGISTRY_IMAGE, default registry:2.8.2), publish the tested image and a
/// second release to it, remove the local copies, then run the workflow's own staging and
/// production job commands (up by digest, smoke --url) and its rollback job's, on a
/// throwaway project, under writes, each job in a clone of the repository cleaned as a
/// runner's workspace is (`git clean -ffdx`, no `.env` carried over). Then a release that
/// fails its check takes the production job's failure step (rollback). Checks that no
/// entry is lost; always tears down.
#[derive(Debug, Args)]
pub struct ReleaseDrill {
    /// Use the existing image for this tree; fail if it has not been built.
    #[arg(long)]
    pub no_build: bool,
}

/// Start Prometheus and Grafana beside the app (which is started or updated first, as by
/// `up`), and wait until Prometheus scrapes the service as up and Grafana is healthy.
/// Prints their URLs.
///
/// Grafana needs GRAFANA_ADMIN_PASSWORD (environment or .env): it has no default password.
/// Images: PROMETHEUS_IMAGE and GRAFANA_IMAGE override the public ones.
#[derive(Debug, Args)]
pub struct MonitoringUp {
    /// Which monitoring services to start (comma-separated; default: all). For example
    /// `--services prometheus` where no Grafana image can be had.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub services: Vec<MonitoringService>,

    /// Use the existing image for this tree; fail if it has not been built.
    #[arg(long)]
    pub no_build: bool,

    /// Seconds to wait for each service.
    #[arg(long, default_value_t = 90)]
    pub timeout: u64,

    #[command(flatten)]
    pub lock: LockArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MonitoringService {
    /// Prometheus: scrapes the service, evaluates the alert rules
    Prometheus,
    /// Alertmanager: routes firing alerts to the webhook at ALERT_WEBHOOK_URL
    Alertmanager,
    /// Grafana: the provisioned dashboard
    Grafana,
}

/// Stop and remove Prometheus, Alertmanager and Grafana; the app keeps running and their
/// volumes are kept.
#[derive(Debug, Args)]
pub struct MonitoringDown {
    #[command(flatten)]
    pub lock: LockArgs,
}

/// Prove the monitoring stack on a throwaway project: Prometheus comes up, scrapes the
/// service as up, answers a PromQL query for its request counter, and monitoring-down
/// leaves the app serving. Always tears down.
#[derive(Debug, Args)]
pub struct MonitoringSmoke {
    /// Use the existing image for this tree; fail if it has not been built.
    #[arg(long)]
    pub no_build: bool,
}

/// Check the product files: both compose files (`docker compose config`), the Prometheus
/// config and alert rules (promtool check and the rules' unit tests), and that every metric
/// the dashboard and the alerts use is one the service really exports (its live /metrics,
/// which must also pass `promtool check metrics`).
///
/// Uses a local promtool when there is one, else the Prometheus image (PROMETHEUS_IMAGE).
#[derive(Debug, Args)]
pub struct Lint {}

/// Scan the image (and the Dockerfile, compose files and manifests) with Trivy, and fail
/// when a finding is at or above the severity gate.
///
/// Uses a local trivy, else Trivy's image (TRIVY_IMAGE). Findings listed in .trivyignore
/// are suppressed (put the reason in a comment above each). Prints counts by severity and
/// every finding at or above the gate.
#[derive(Debug, Args)]
pub struct Scan {
    /// Scan this image tag instead of this tree's.
    #[arg(long)]
    pub tag: Option<String>,

    /// Severities that fail the scan (comma-separated).
    #[arg(long, default_value = "HIGH,CRITICAL")]
    pub severity: String,

    /// Leave out vulnerabilities that have no fixed version yet.
    #[arg(long)]
    pub ignore_unfixed: bool,

    /// Report format: the summary table only, or also Trivy's JSON or SARIF report.
    #[arg(long, value_enum, default_value_t = ScanFormat::Table)]
    pub format: ScanFormat,

    /// Write the JSON or SARIF report to this file instead of stdout.
    #[arg(long)]
    pub output: Option<std::path::PathBuf>,

    /// The file of suppressed finding ids (inside the project when Trivy runs from its image).
    #[arg(long, default_value = ".trivyignore")]
    pub ignorefile: String,

    /// Fail, rather than skip the vulnerability scan, when Trivy's database cannot be had.
    #[arg(long)]
    pub require_database: bool,

    /// Prove the vulnerability gate instead, with a local trivy and the Trivy cache DIR,
    /// which holds a test database of chosen advisories for crates in the image: the scan
    /// must fail on them, then pass once they are in an ignore file. DIR is read for this
    /// run only; nothing of it is kept or shipped.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["format", "output", "require_database"])]
    pub gate_self_test: Option<std::path::PathBuf>,
}

/// Write the image's CycloneDX SBOM (every crate in the binary, which cargo-auditable
/// records) to target/sbom/<tag>.cdx.json, with Trivy; prints its component count. Scan
/// it later, when new advisories appear, with `trivy sbom <file>`.
#[derive(Debug, Args)]
pub struct Sbom {
    /// The image, instead of this tree's.
    #[arg(long)]
    pub tag: Option<String>,

    /// Where to write it.
    #[arg(long)]
    pub output: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScanFormat {
    /// the summary only
    Table,
    /// Trivy's JSON report
    Json,
    /// SARIF 2.1.0, for GitHub code scanning
    Sarif,
}

/// Check the built image natively, with no extra tool: non-root user (configured and at
/// runtime), HEALTHCHECK, exposed port, OCI labels, a filesystem holding only what belongs,
/// no secret-looking values in history, environment or labels, and the size budget.
#[derive(Debug, Args)]
pub struct AuditImage {
    /// Audit this image tag instead of this tree's.
    #[arg(long)]
    pub tag: Option<String>,

    /// Also build a deliberately bad image and show that every check fails on it.
    #[arg(long)]
    pub self_test: bool,
}

/// Check Cargo.lock's dependencies with cargo-deny (deny.toml): advisories, licenses,
/// banned crates and sources. Where the advisory database cannot be fetched, says so and
/// still runs the other checks.
#[derive(Debug, Args)]
pub struct Advisories {}

/// Push the image built (and tested) for this tree to a registry, never rebuilding it:
/// tagged with the git revision, plus X.Y.Z, X.Y and X for a vX.Y.Z tag, or `main` for the
/// main branch. Prints the digest, by which releases deploy it. Log in to the registry
/// first (`docker login`); credentials never pass through the runner.
#[derive(Debug, Args)]
pub struct Publish {
    /// Where to push, for example ghcr.io/owner/logbook (lower-cased, as registries need).
    #[arg(long)]
    pub repository: String,

    /// The git ref being released: refs/tags/v1.2.3, or a tag or branch name (v1.2.3, main).
    #[arg(long)]
    pub git_ref: Option<String>,

    /// Push this local image instead of this tree's (which must have been built already).
    #[arg(long)]
    pub image: Option<String>,

    /// Also write `image=<repository>@<digest>` to $GITHUB_OUTPUT, for later jobs.
    #[arg(long)]
    pub github_output: bool,

    /// Publish one image per platform under one manifest list, comma-separated (each built
    /// already, by `build --platform`); a deploy by the list's digest pulls the host's.
    #[arg(long, value_enum, value_delimiter = ',', conflicts_with = "image")]
    pub platform: Vec<Platform>,
}

/// Deploy a release to an orchestrator, health-gated, and record it.
#[derive(Debug, Args)]
pub struct Deploy {
    #[command(subcommand)]
    pub target: DeployTarget,
}

#[derive(Debug, Subcommand)]
pub enum DeployTarget {
    /// The compose stack on this Docker engine: exactly what `up` does, with `up`'s flags.
    Compose(Up),
    /// A Docker Swarm stack (deploy/swarm/stack.yml): a start-first rolling update that
    /// Swarm rolls back by itself if the new task is unhealthy. This engine must be a
    /// swarm manager.
    Swarm(DeploySwarm),
    /// Kubernetes, through kubectl's current context: a kustomize overlay applied with
    /// `kubectl apply -k`, then `kubectl rollout status`.
    K8s(DeployK8s),
}

#[derive(Debug, Args)]
pub struct DeploySwarm {
    /// The image tag to deploy (default: this tree's image, built if needed).
    #[arg(long, conflicts_with = "remove")]
    pub tag: Option<String>,

    /// The swarm stack's name.
    #[arg(long, default_value = "logbook")]
    pub stack: String,

    /// Seconds to wait for the rollout to be ready.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,

    /// Remove the stack instead of deploying (its volume stays unless --volumes).
    #[arg(long)]
    pub remove: bool,

    /// With --remove: also delete the stack's data volume. Needs --yes.
    #[arg(long, requires = "remove")]
    pub volumes: bool,

    /// Confirm --volumes.
    #[arg(long, requires = "volumes")]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct DeployK8s {
    /// The image tag to deploy (default: the overlay's own).
    #[arg(long)]
    pub tag: Option<String>,

    /// The kustomize overlay under deploy/k8s/overlays.
    #[arg(long, default_value = "staging")]
    pub overlay: String,

    /// The Kubernetes namespace (default: the current context's).
    #[arg(long)]
    pub namespace: Option<String>,

    /// Print the rendered manifests instead of applying them.
    #[arg(long)]
    pub render: bool,

    /// Seconds to wait for the rollout to be ready.
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

/// Prove Swarm deploys live on a one-node swarm (created for the drill if this engine is in
/// none, and left again): v1 with entries, a start-first rolling update to v2 while a client
/// appends and reads entries through the proxy (no request may fail, no entry may be lost),
/// an unhealthy image that Swarm rolls back, and the stack's removal keeping its volume.
/// Cleans up everything it set up.
#[derive(Debug, Args)]
pub struct SwarmDrill {
    /// Use the existing image for this tree as v1; fail if it has not been built.
    #[arg(long)]
    pub no_build: bool,

    /// Seconds to wait for each rollout.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

/// Check this machine for what the runner uses: docker (client and engine), Compose v2,
/// BuildKit, disk space, trivy, the coverage tools, cargo-nextest, promtool, actionlint and
/// cargo-deny. One line each, with how to fix what is missing. Exits non-zero only when
/// something `up` needs is missing.
#[derive(Debug, Args)]
pub struct Doctor {}

/// Line coverage of the workspace, as lcov and HTML under target/coverage/. Fails when the
/// service's coverage is under the threshold; the runner's and the workspace's figures are
/// printed too. Uses cargo-llvm-cov where LLVM's tools match rustc, else cargo-tarpaulin,
/// and says which ran. Installs nothing: a missing tool is named with how to install it.
#[derive(Debug, Args)]
pub struct Coverage {
    /// Fail when the service's line coverage is below this percentage.
    #[arg(long, default_value_t = DEFAULT_FAIL_UNDER)]
    pub fail_under: f64,
}

/// The line coverage `coverage` and `ci` require of the service unless told otherwise, in percent.
pub const DEFAULT_FAIL_UNDER: f64 = 80.0;

/// Print a shell completion script for `cargo xtask` to stdout.
#[derive(Debug, Args)]
pub struct Completions {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Run the CI pipeline, exactly as GitHub Actions runs it, and summarise each step.
///
/// Steps run in order; after a failure, the steps that do not depend on the failed one
/// still run, so one run shows everything that is broken. Exits non-zero if any step failed.
#[derive(Debug, Args)]
pub struct Ci {
    /// Leave out a step (repeatable, or comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', conflicts_with = "only")]
    pub skip: Vec<CiStep>,

    /// Run only these steps (repeatable, or comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<CiStep>,

    /// Fail, instead of skipping, a step whose tool is missing (for example `scan` without
    /// Trivy). Repeatable, or comma-separated.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub require: Vec<CiStep>,

    /// Run these steps (comma-separated; every step when none is named) even if their
    /// inputs are unchanged since they last passed.
    #[arg(long, value_enum, value_delimiter = ',', num_args = 0..)]
    pub force: Option<Vec<CiStep>>,

    /// Run every step, and consult no record of earlier runs (as on GitHub, where CI=true).
    #[arg(long)]
    pub no_cache: bool,

    /// End with one JSON object of the results instead of the table (schema:
    /// docs/OPERATIONS.md, "Output for programs").
    #[arg(long)]
    pub json: bool,

    /// How many of the steps that share nothing (fmt, clippy, lint, advisories) run at
    /// once, before the others; each one's log is printed whole when all have ended. 1 runs
    /// every step in turn, its output as it comes. Defaults to the number of cores.
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..), default_value_t = default_jobs())]
    pub jobs: u16,
}

/// `ci --jobs` unless told otherwise: the cores this process may use.
fn default_jobs() -> u16 {
    std::thread::available_parallelism().map_or(1, |n| u16::try_from(n.get()).unwrap_or(u16::MAX))
}

/// The steps of `cargo xtask ci`, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CiStep {
    /// cargo fmt --check
    Fmt,
    /// cargo clippy with warnings denied
    Clippy,
    /// cargo xtask lint: compose files, Prometheus config and rules, dashboard metrics
    Lint,
    /// the workspace tests (nextest when installed, else cargo test)
    Test,
    /// cargo xtask coverage: line coverage against the threshold
    Coverage,
    /// cargo xtask build --builder classic: the Dockerfile still builds without BuildKit
    BuildClassic,
    /// cargo xtask build: the image, with BuildKit
    Build,
    /// cargo xtask audit-image --self-test: the image's hardening, proven on the image
    AuditImage,
    /// cargo xtask advisories: cargo-deny on Cargo.lock
    Advisories,
    /// cargo xtask smoke: the image on the real engine
    Smoke,
    /// cargo xtask drill: rollback, automatic restore, backup and restore on the real engine
    Drill,
    /// cargo xtask monitoring-smoke: Prometheus scraping the service on the real engine
    MonitoringSmoke,
    /// cargo xtask swarm-drill: rolling updates and rollback on a live one-node swarm
    SwarmDrill,
    /// cargo xtask release-drill: the workflow's release jobs against a local registry
    ReleaseDrill,
    /// cargo xtask recovery-drill: volume loss, point-in-time restore and a replica outage
    RecoveryDrill,
    /// cargo xtask fault-drill: a switch interrupted at every step, then repaired
    FaultDrill,
    /// cargo xtask schema-drill: additive and breaking migrations, rolled back under writes
    SchemaDrill,
    /// cargo xtask platform-smoke: the amd64 and arm64 images, their manifest list, and
    /// the arm64 binary run under emulation
    PlatformSmoke,
    /// cargo xtask scan: Trivy (skipped when Trivy is not available, unless required)
    Scan,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every subcommand, nested ones included, has help, and so has every flag.
    #[test]
    fn cli_is_well_formed_and_every_flag_has_help() {
        fn visit(cmd: &clap::Command, path: &str, seen: &mut usize) {
            for sub in cmd.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                assert!(sub.get_about().is_some(), "{path} has no help");
                for arg in sub.get_arguments() {
                    assert!(arg.get_help().is_some(), "{path} --{} has no help", arg.get_id());
                }
                *seen += 1;
                visit(sub, &path, seen);
            }
        }
        Xtask::command().debug_assert();
        let mut seen = 0;
        visit(&Xtask::command(), "xtask", &mut seen);
        assert!(seen > 30, "only {seen} subcommands");
    }

    fn parse(args: &str) -> Result<Xtask, clap::Error> {
        Xtask::try_parse_from(std::iter::once("xtask").chain(args.split_whitespace()))
    }

    #[test]
    fn flags_of_another_target_do_not_parse() {
        for (args, flag) in [
            ("deploy compose --render", "--render"),
            ("deploy compose --remove", "--remove"),
            ("deploy compose --overlay production", "--overlay"),
            ("deploy swarm --render", "--render"),
            ("deploy swarm --namespace x", "--namespace"),
            ("deploy k8s --stack s", "--stack"),
            ("deploy k8s --remove", "--remove"),
            ("deploy swarm --tag abc --remove", "--remove"),
            ("deploy swarm --volumes", "--volumes"),
            ("rollback k8s --to abc", "--to"),
            ("rollback compose --stack s", "--stack"),
            ("rollback --to abc swarm", "swarm"),
        ] {
            let err = parse(args).expect_err(args).to_string();
            assert!(err.contains(flag), "`{args}`: the error does not name {flag}: {err}");
        }
        assert!(parse("deploy").is_err(), "deploy needs a target");
    }

    #[test]
    fn each_target_parses_its_own_flags() {
        let Command::Deploy(Deploy { target: DeployTarget::K8s(k8s) }) =
            parse("deploy k8s --overlay production --tag 1.2.3 --render").unwrap().command
        else {
            panic!("expected deploy k8s")
        };
        assert_eq!(
            (k8s.overlay.as_str(), k8s.tag.as_deref(), k8s.render),
            ("production", Some("1.2.3"), true)
        );
        let Command::Deploy(Deploy { target: DeployTarget::Swarm(swarm) }) =
            parse("deploy swarm --remove --volumes --yes").unwrap().command
        else {
            panic!("expected deploy swarm")
        };
        assert!(swarm.remove && swarm.volumes && swarm.yes);
        // Compose is rollback's default target, as `up` has no target either.
        let Command::Rollback(rollback) = parse("rollback --to abc").unwrap().command else { panic!() };
        assert!(rollback.target.is_none());
        assert_eq!(rollback.compose.to.as_deref(), Some("abc"));
        let Command::Rollback(rollback) = parse("rollback swarm --stack s --list").unwrap().command else {
            panic!()
        };
        assert!(matches!(rollback.target, Some(RollbackTarget::Swarm(RollbackSwarm { list: true, .. }))));
    }

    #[test]
    fn ci_steps_parse_comma_separated() {
        let flags = Xtask::try_parse_from(["xtask", "ci", "--skip", "fmt,clippy"]).unwrap();
        let Command::Ci(ci) = flags.command else { panic!("expected ci") };
        assert_eq!(ci.skip, vec![CiStep::Fmt, CiStep::Clippy]);
        assert!(Xtask::try_parse_from(["xtask", "ci", "--skip", "fmt", "--only", "test"]).is_err());
    }

    #[test]
    fn platforms_parse_comma_separated_and_an_unknown_one_lists_the_known() {
        let Command::Build(build) = parse("build --platform linux/amd64,linux/arm64").unwrap().command else {
            panic!("expected build")
        };
        assert_eq!(build.platform, [Platform::LinuxAmd64, Platform::LinuxArm64]);
        let err = parse("build --platform linux/s390x").unwrap_err().to_string();
        assert!(
            err.contains("linux/s390x") && err.contains("linux/amd64") && err.contains("linux/arm64"),
            "{err}"
        );
        assert!(parse("publish --repository r --image x --platform linux/arm64").is_err());
    }

    #[test]
    fn ci_jobs_default_to_the_cores_and_refuse_zero() {
        let Command::Ci(ci) = parse("ci").unwrap().command else { panic!("expected ci") };
        assert_eq!(usize::from(ci.jobs), std::thread::available_parallelism().unwrap().get());
        let Command::Ci(ci) = parse("ci --jobs 3").unwrap().command else { panic!("expected ci") };
        assert_eq!(ci.jobs, 3);
        let err = parse("ci --jobs 0").unwrap_err().to_string();
        assert!(err.contains("--jobs") && err.contains("1.."), "{err}");
        let err = parse("ci --only nosuchstep").unwrap_err().to_string();
        assert!(
            err.contains("nosuchstep") && err.contains("possible values") && err.contains("fmt"),
            "{err}"
        );
    }
}

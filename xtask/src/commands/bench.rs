//! `cargo xtask bench`: the service's throughput, latency, start-up and stop times, and the
//! same disk's raw SQLite rate, all measured in one run so the ratio is honest.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use xshell::Shell;

use crate::commands::drills::harness;
use crate::flags::Bench;
use crate::outside::local_service::{self, LocalService, Profile};
use crate::outside::process::{self, Cmd};
use crate::outside::tools::{self, cargo};
use crate::outside::{docker, http, proxy};
use crate::project;

const POST_SCRIPT: &str = r#"wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"text":"a benchmark entry of ordinary length","tags":["bench"]}'
"#;

/// One wrk run, parsed.
#[derive(Debug, PartialEq)]
pub struct WrkResult {
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

impl Bench {
    pub fn run(self, sh: &Shell) -> Result<()> {
        tools::WRK.require(sh, false)?;
        process::run(sh, &build_release())?;
        let dir = sh.create_temp_dir().context("cannot create a temp dir")?;
        let dir = dir.path();
        // Started first: a dry run ends there, before anything is written.
        let server = LocalService::start(sh, Profile::Release, dir)?;
        let startup = server.started.elapsed();
        let post_script = dir.join("post.lua");
        std::fs::write(&post_script, POST_SCRIPT)?;
        harness::append(&server.addr, "seed", None)?;
        let url = format!("http://{}", server.addr);
        let (c, seconds) = (self.connections, self.duration);
        let get = parse_wrk(&process::capture(sh, &wrk(&format!("{url}/api/entries/1"), c, seconds, None))?)?;
        let post = parse_wrk(&process::capture(
            sh,
            &wrk(&format!("{url}/api/entries"), c, seconds, Some(&post_script)),
        )?)?;
        // The stack's proxy, then the HTTPS front's proxy (over plain HTTP) in the same
        // place, for comparison.
        let through = |addr: &str| -> Result<(WrkResult, WrkResult)> {
            let base = format!("http://{addr}/api/entries");
            let get = parse_wrk(&process::capture(sh, &wrk(&format!("{base}/1"), c, seconds, None))?)?;
            let post = parse_wrk(&process::capture(sh, &wrk(&base, c, seconds, Some(&post_script)))?)?;
            Ok((get, post))
        };
        let mut proxied = Vec::new();
        for kind in [ProxyKind::Stack, ProxyKind::TlsFront] {
            if let Some(proxy) = LocalProxy::start(sh, kind, &server.addr)? {
                let (get, post) = through(&proxy.addr)?;
                proxied.push((kind.label(), get, post));
            }
        }

        let term_sent = Instant::now();
        let exit = server.terminate(sh, Duration::from_secs(15))?;
        let stop = term_sent.elapsed();
        if !exit.success() {
            bail!("the service exited with {exit} after SIGTERM; see its log in {}", dir.display());
        }
        let raw = process::capture(
            sh,
            &sqlite_baseline(&tools::target_dir(sh), &dir.join("baseline.db"), seconds),
        )?;
        let raw_rows = raw
            .strip_prefix("rows_per_sec=")
            .and_then(|v| v.parse::<f64>().ok())
            .with_context(|| format!("unexpected baseline output {raw:?}"))?;
        process::result(&report(c, &get, &post, raw_rows, startup, stop));
        if !proxied.is_empty() {
            process::result(&proxy_table(c, &get, &post, &proxied));
        }
        let replicated_dir = dir.join("replicated");
        std::fs::create_dir(&replicated_dir)?;
        if let Some((replicated, syncs)) = post_replicated(sh, &replicated_dir, &post_script, c, seconds)? {
            process::result(&replica_report(c, &post, &replicated, &syncs));
        }
        Ok(())
    }
}

fn report(
    connections: u32,
    get: &WrkResult,
    post: &WrkResult,
    raw_rows: f64,
    startup: Duration,
    stop: Duration,
) -> String {
    let c = connections;
    [
        format!(
            "GET  /api/entries/{{id}}, {c} connections:  {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
            get.requests_per_sec, get.p50_ms, get.p99_ms
        ),
        format!(
            "POST /api/entries (durable), {c} connections:  {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms",
            post.requests_per_sec, post.p50_ms, post.p99_ms
        ),
        format!("raw SQLite, one insert per durable transaction:  {raw_rows:.0} rows/s"),
        format!("ratio, durable POST / raw SQLite:  {:.2}", post.requests_per_sec / raw_rows),
        format!("process start to /readyz 200:  {:.1} ms", startup.as_secs_f64() * 1e3),
        format!("SIGTERM to exit, idle:  {:.1} ms", stop.as_secs_f64() * 1e3),
    ]
    .join("\n")
}

/// Direct and proxied figures side by side, as a Markdown table, with each path's ratio
/// to direct.
fn proxy_table(
    c: u32,
    get: &WrkResult,
    post: &WrkResult,
    proxied: &[(&str, WrkResult, WrkResult)],
) -> String {
    let cell = |r: &WrkResult, direct: &WrkResult| {
        format!(
            "{:.0} ({:.2}x), p50 {:.2} ms, p99 {:.2} ms",
            r.requests_per_sec,
            r.requests_per_sec / direct.requests_per_sec,
            r.p50_ms,
            r.p99_ms
        )
    };
    let mut out = format!(
        "| path to the service, {c} connections | GET req/s | durable POST req/s |\n|---|---|---|\n| direct | {} | {} |",
        cell(get, get),
        cell(post, post)
    );
    for (label, g, p) in proxied {
        out.push_str(&format!("\n| {label} | {} | {} |", cell(g, get), cell(p, post)));
    }
    out
}

/// Durable POSTs again, on a fresh service with Litestream replicating its database beside
/// it (the replica layer's settings: no automatic checkpoints in the service), to a file
/// replica in `dir`. Returns the run and the syncs Litestream made; None, said in one line,
/// where Docker or the Litestream image is not available.
fn post_replicated(
    sh: &Shell,
    dir: &Path,
    post_script: &Path,
    connections: u32,
    seconds: u32,
) -> Result<Option<(WrkResult, Vec<crate::targets::compose::replica::Synced>)>> {
    let image =
        std::env::var("LITESTREAM_IMAGE").unwrap_or_else(|_| project::DEFAULT_LITESTREAM_IMAGE.to_owned());
    if !docker::image_exists(sh, &image) {
        process::say(&format!(
            "bench: the Litestream image {image} is not here (set LITESTREAM_IMAGE); no replicated figures"
        ));
        return Ok(None);
    }
    let server = LocalService::start_with(sh, Profile::Release, dir, &[("LOGBOOK_WAL_AUTOCHECKPOINT", "0")])?;
    harness::append(&server.addr, "seed", None)?;
    let user = docker::host_user(sh)?;
    let replicator =
        docker::ContainerGuard::new(sh, format!("{}-bench-litestream-{}", project::NAME, std::process::id()));
    let name = &replicator.name;
    let run = Cmd::new("docker")
        .args(["run", "--detach", "--rm", "--name", name, "--network", "none", "--user", &user, "--volume"])
        .arg(format!("{}:/data", dir.display()))
        .args([image.as_str(), "replicate", "/data/logbook.db", "file:///data/replica"]);
    process::capture(sh, &run)?;
    let replica = dir.join("replica");
    process::wait_for(
        "Litestream's first snapshot",
        Duration::from_secs(20),
        Duration::from_millis(50),
        || Ok(crate::targets::compose::replica::level0_syncs(&replica)?.first().map(|_| ())),
    )?;
    let url = format!("http://{}/api/entries", server.addr);
    let run = parse_wrk(&process::capture(sh, &wrk(&url, connections, seconds, Some(post_script)))?)?;
    // The last writes' sync lands within the interval.
    std::thread::sleep(Duration::from_secs(2));
    let syncs = crate::targets::compose::replica::level0_syncs(&replica)?;
    Ok(Some((run, syncs)))
}

fn replica_report(
    c: u32,
    off: &WrkResult,
    on: &WrkResult,
    syncs: &[crate::targets::compose::replica::Synced],
) -> String {
    let bounds = crate::targets::compose::replica::lag_bounds(syncs);
    let at = |q: f64| {
        bounds.get(((bounds.len().max(1) - 1) as f64 * q).round() as usize).copied().unwrap_or_default()
    };
    format!(
        "POST /api/entries (durable) with Litestream replicating, {c} connections:  {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms\n\
         ratio, replicated / not:  {:.2}; replication lag (bound, over {} syncs): p50 {} ms, p99 {} ms, max {} ms",
        on.requests_per_sec,
        on.p50_ms,
        on.p99_ms,
        on.requests_per_sec / off.requests_per_sec,
        bounds.len(),
        at(0.5).as_millis(),
        at(0.99).as_millis(),
        bounds.last().copied().unwrap_or_default().as_millis(),
    )
}

/// Which proxy [`LocalProxy`] runs.
#[derive(Debug, Clone, Copy)]
enum ProxyKind {
    /// The stack's proxy: its image, built here, and `deploy/proxy/haproxy.cfg`.
    Stack,
    /// The HTTPS front (`deploy/proxy/Caddyfile`, CADDY_IMAGE), serving plain HTTP here.
    TlsFront,
}

impl ProxyKind {
    fn label(self) -> &'static str {
        match self {
            ProxyKind::Stack => "the stack's proxy",
            ProxyKind::TlsFront => "the HTTPS front's proxy, plain HTTP (for comparison)",
        }
    }

    /// `docker run` of this proxy on the host's network, listening on loopback at `port`
    /// and passing requests to `upstream` (`host:port`).
    fn run(self, image: &str, name: &str, project_root: &Path, port: u16, upstream: &str) -> Result<Cmd> {
        let (host, upstream_port) = upstream.rsplit_once(':').context("the service has no port")?;
        let (mounts, settings) = match self {
            ProxyKind::Stack => (
                proxy::mounts(project_root).to_vec(),
                vec![
                    format!("LOGBOOK_LISTEN=127.0.0.1:{port}"),
                    format!("LOGBOOK_UPSTREAM={host}"),
                    format!("LOGBOOK_UPSTREAM_PORT={upstream_port}"),
                ],
            ),
            ProxyKind::TlsFront => (
                vec![
                    "--volume".to_owned(),
                    format!("{}/{}:/etc/caddy/Caddyfile:ro", project_root.display(), project::TLS_CONFIG),
                ],
                vec![format!("LOGBOOK_DOMAIN=:{port}"), format!("LOGBOOK_PROXY={upstream}")],
            ),
        };
        let mut cmd = Cmd::new("docker")
            .args(["run", "--detach", "--rm", "--name", name, "--network", "host"])
            .args(mounts);
        for setting in settings {
            cmd = cmd.args(["--env".to_owned(), setting]);
        }
        Ok(cmd.arg(image))
    }
}

/// A proxy in front of a local service, on the host's network and a free port; removed
/// when dropped.
struct LocalProxy<'a> {
    _container: docker::ContainerGuard<'a>,
    addr: String,
}

impl<'a> LocalProxy<'a> {
    /// None, said in one line, where the HTTPS front's image is not here. The stack's proxy
    /// is built when missing.
    fn start(sh: &'a Shell, kind: ProxyKind, upstream: &str) -> Result<Option<Self>> {
        let image = match kind {
            ProxyKind::Stack => proxy::prepare(sh, proxy::from_env)?,
            ProxyKind::TlsFront => {
                let image = proxy::from_env("CADDY_IMAGE", project::DEFAULT_TLS_IMAGE);
                if !docker::image_exists(sh, &image) {
                    process::say(&format!(
                        "bench: the HTTPS front's image {image} is not here (set CADDY_IMAGE); no figures for it"
                    ));
                    return Ok(None);
                }
                image
            }
        };
        let port = http::free_port()?;
        let container =
            docker::ContainerGuard::new(sh, format!("{}-bench-proxy-{}", project::NAME, std::process::id()));
        process::capture(sh, &kind.run(&image, &container.name, &sh.current_dir(), port, upstream)?)?;
        let proxy = LocalProxy { _container: container, addr: format!("127.0.0.1:{port}") };
        local_service::wait_ready_at(&proxy.addr, "the proxy to reach the service")?;
        Ok(Some(proxy))
    }
}

pub fn build_release() -> Cmd {
    cargo().args([
        "build",
        "--release",
        "--locked",
        "-p",
        "logbook",
        "--bin",
        "logbook",
        "--example",
        "sqlite_baseline",
    ])
}

pub fn wrk(url: &str, connections: u32, seconds: u32, script: Option<&Path>) -> Cmd {
    let mut cmd = Cmd::new("wrk").args([
        "--threads".to_owned(),
        "2".to_owned(),
        "--connections".to_owned(),
        connections.to_string(),
        "--duration".to_owned(),
        format!("{seconds}s"),
        "--latency".to_owned(),
    ]);
    if let Some(script) = script {
        cmd = cmd.arg("--script").arg(script.display().to_string());
    }
    cmd.arg(url)
}

pub fn sqlite_baseline(target_dir: &Path, db: &Path, seconds: u32) -> Cmd {
    Cmd::new(target_dir.join("release/examples/sqlite_baseline").display().to_string())
        .arg(db.display().to_string())
        .arg(seconds.to_string())
}

/// Reads requests/s and the 50th and 99th latency percentiles from `wrk --latency` output.
/// Refuses a run with non-2xx answers or socket errors other than the final close.
pub fn parse_wrk(output: &str) -> Result<WrkResult> {
    if let Some(line) = output.lines().find(|l| l.contains("Non-2xx or 3xx responses")) {
        bail!("wrk saw error answers ({}); the figures would be meaningless", line.trim());
    }
    let value_after = |label: &str| -> Option<&str> {
        output.lines().map(str::trim).find_map(|l| l.strip_prefix(label)).map(str::trim)
    };
    let requests_per_sec = value_after("Requests/sec:")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{output}"))?;
    let percentile = |p: &str| {
        value_after(p)
            .and_then(parse_latency)
            .with_context(|| format!("no {p} latency in wrk output:\n{output}"))
    };
    Ok(WrkResult { requests_per_sec, p50_ms: percentile("50%")?, p99_ms: percentile("99%")? })
}

/// wrk prints latencies as `612.00us`, `3.21ms` or `1.02s`; returns milliseconds.
fn parse_latency(text: &str) -> Option<f64> {
    let (number, scale) = if let Some(n) = text.strip_suffix("us") {
        (n, 1e-3)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1e3)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Running 10s test @ http://127.0.0.1:8080/api/entries
  2 threads and 32 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.31ms  512.00us  21.20ms   90.12%
    Req/Sec     7.01k   301.44     7.60k    70.00%
  Latency Distribution
     50%    2.25ms
     75%    2.50ms
     90%    2.80ms
     99%    4.10ms
  139520 requests in 10.00s, 31.27MB read
Requests/sec:  13950.12
Transfer/sec:      3.13MB
";

    #[test]
    fn wrk_output_is_parsed() {
        let r = parse_wrk(SAMPLE).unwrap();
        assert_eq!(r, WrkResult { requests_per_sec: 13950.12, p50_ms: 2.25, p99_ms: 4.10 });
        let errors = SAMPLE.replace("Requests/sec", "  Non-2xx or 3xx responses: 12\nRequests/sec");
        assert!(parse_wrk(&errors).is_err());
        assert!(parse_wrk("nothing").is_err());
    }

    #[test]
    fn latencies_convert_to_milliseconds() {
        assert_eq!(parse_latency("612.00us"), Some(0.612));
        assert_eq!(parse_latency("1.50s"), Some(1500.0));
        assert_eq!(parse_latency("3ms"), Some(3.0));
        assert_eq!(parse_latency("3"), None);
    }

    #[test]
    fn commands_are_exact() {
        assert_eq!(
            wrk("http://h/api", 32, 10, Some(Path::new("/t/post.lua"))).to_string(),
            "wrk --threads 2 --connections 32 --duration 10s --latency --script /t/post.lua http://h/api"
        );
        assert_eq!(
            build_release().to_string().split_once(" build ").map(|(_, rest)| rest),
            Some("--release --locked -p logbook --bin logbook --example sqlite_baseline")
        );
    }

    #[test]
    fn each_proxy_runs_on_loopback_in_front_of_the_service() {
        let root = Path::new("/src");
        assert_eq!(
            ProxyKind::Stack
                .run("logbook-proxy:2.6", "p", root, 18000, "127.0.0.1:9000")
                .unwrap()
                .to_string(),
            "docker run --detach --rm --name p --network host \
             --volume /src/deploy/proxy/haproxy.cfg:/etc/logbook/haproxy.cfg:ro \
             --volume /src/deploy/proxy/hold.lua:/etc/logbook/hold.lua:ro \
             --env LOGBOOK_LISTEN=127.0.0.1:18000 --env LOGBOOK_UPSTREAM=127.0.0.1 --env LOGBOOK_UPSTREAM_PORT=9000 \
             logbook-proxy:2.6"
        );
        assert_eq!(
            ProxyKind::TlsFront.run("caddy:2.11.7", "p", root, 18000, "127.0.0.1:9000").unwrap().to_string(),
            "docker run --detach --rm --name p --network host \
             --volume /src/deploy/proxy/Caddyfile:/etc/caddy/Caddyfile:ro \
             --env LOGBOOK_DOMAIN=:18000 --env LOGBOOK_PROXY=127.0.0.1:9000 caddy:2.11.7"
        );
    }

    /// The duration after `key` on the line that starts with it (trimmed), in `file`, in
    /// milliseconds: `2s`, `"2s"` or `500ms`.
    fn millis_after(file: &str, key: &str) -> u64 {
        let text =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file)).unwrap();
        let values: Vec<u64> = text
            .lines()
            .filter_map(|line| line.trim().strip_prefix(key))
            .map(|value| {
                let value = value.trim().trim_matches('"');
                match value.strip_suffix("ms") {
                    Some(ms) => ms.parse::<u64>().unwrap(),
                    None => value.strip_suffix('s').unwrap().parse::<u64>().unwrap() * 1000,
                }
            })
            .collect();
        assert_eq!(values.len(), 1, "{file}: {key} {values:?}");
        values[0]
    }

    #[test]
    fn every_stack_s_service_outlasts_the_proxy_s_idle_connections() {
        // The proxy keeps connections to the service alive; a stopping service must leave
        // them open until the proxy has closed them, or a POST sent on one is lost. The
        // same holds between the HTTPS front and the proxy.
        let idle = millis_after(project::PROXY_CONFIG, "timeout http-keep-alive ");
        assert!(idle >= 1000);
        for stack in ["docker-compose.yml", "deploy/swarm/stack.yml"] {
            let grace = millis_after(stack, "LOGBOOK_KEEPALIVE_GRACE:");
            assert!(
                grace > idle,
                "{stack}: LOGBOOK_KEEPALIVE_GRACE {grace} ms, the proxy's idle timeout {idle} ms"
            );
        }
        let front_idle = millis_after(project::TLS_CONFIG, "keepalive ");
        assert!(
            front_idle < idle,
            "the HTTPS front keeps idle connections {front_idle} ms, the proxy {idle} ms"
        );
    }
}

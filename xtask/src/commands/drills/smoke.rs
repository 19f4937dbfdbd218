//! `cargo xtask smoke`: the image, proven on a real engine in a fresh, isolated stack.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use xshell::Shell;

use super::harness::{self, REQUEST_TIMEOUT};
use crate::commands::checks::report::Checks;
use crate::flags::Smoke;
use crate::outside::docker::{self, Compose};
use crate::outside::process::{self, Cmd};
use crate::outside::{http, image, proxy, tools};
use crate::project;
use crate::targets::compose::{self, OnDrop, StackGuard, switch};

impl Smoke {
    pub fn run(self, sh: &Shell) -> Result<()> {
        if let Some(url) = &self.url {
            return deployment_checks(&host_port(url)?);
        }
        let program = docker::connect(sh)?;
        let image = match &self.tag {
            Some(tag) => image::resolve(sh, tag)?,
            None => image::ensure(sh, self.no_build)?,
        };
        // As if a user's .env held Grafana's password: it must not reach the service.
        let compose = harness::throwaway_project(program.clone(), "smoke")?
            .var("LOGBOOK_IMAGE", &image)
            .var(CANARY_VAR, CANARY);
        let started = Instant::now();
        let guard = StackGuard::new(sh, &compose, OnDrop::RemoveWithVolumes);
        let mut checks = Checks::stop_at_first();
        switch::check_proxy_config(sh, &compose)?;
        process::run(sh, &compose.up())?;
        let container = container(sh, &compose)?;
        service_checks(sh, &compose, &image, &mut checks)?;
        hardening_checks(sh, &compose, &container, &mut checks)?;
        lifecycle_checks(sh, &container, &mut checks)?;
        checks.run("a broken image fails to come up within the deadline, with its logs shown", || {
            broken_image_is_refused(sh, program.clone(), &image)
        })?;
        checks.run("a proxy configuration with a mistake is refused, naming its file and line", || {
            broken_proxy_config_is_refused(sh)
        })?;
        checks.run("the README's one-line `docker run` serves the image alone, writes included", || {
            readme_docker_run(sh, &image)
        })?;
        checks.run(
            "`docker compose up --build` alone builds the image and serves it (no Rust toolchain)",
            || compose_builds_and_serves(sh, program.clone()),
        )?;
        if tools::CURL.installed(sh) {
            checks.run(
                "with LOGBOOK_DOMAIN, HTTPS is served (the HTTPS front's own CA here) with HSTS, and HTTP redirects",
                || https_is_served(sh, program, &image),
            )?;
        } else {
            checks.skip("HTTPS through the proxy", &tools::CURL.fix());
        }
        guard.succeeded();
        process::result(&format!(
            "smoke: all {} checks passed in {:.1}s",
            checks.passed(),
            started.elapsed().as_secs_f64()
        ));
        Ok(())
    }
}

/// The path for someone with Docker alone: Compose builds the image from the tree and
/// starts the stack. (Under its own image name, so this tree's tags are left alone.)
fn compose_builds_and_serves(sh: &Shell, program: docker::ComposeProgram) -> Result<()> {
    let tag = format!("{}:compose-build-{}", project::NAME, std::process::id());
    let compose = harness::throwaway_project(program, "compose-build")?.var("LOGBOOK_IMAGE", &tag);
    let mut guard = StackGuard::new(sh, &compose, OnDrop::RemoveWithVolumes);
    guard.remove_image(&tag);
    process::run(sh, &compose.cmd(&["up", "--build", "--detach", "--wait"]))?;
    let addr = compose::wait_ready(sh, &compose, Duration::from_secs(30))?;
    harness::expect_status(&addr, "/healthz", 200)?;
    guard.succeeded();
    Ok(())
}

/// `HOST:PORT` of a plain-HTTP URL.
fn host_port(url: &str) -> Result<String> {
    let rest = url.strip_prefix("http://").with_context(|| {
        format!(
            "--url {url:?}: give the plain-HTTP address, http://HOST:PORT (with LOGBOOK_DOMAIN the proxy keeps one on 127.0.0.1:$LOGBOOK_HOST_PORT for this host)"
        )
    })?;
    let host_port = rest.trim_end_matches('/');
    ensure!(
        !host_port.is_empty() && !host_port.contains('/') && host_port.contains(':'),
        "--url {url:?}: expected http://HOST:PORT, with no path"
    );
    Ok(host_port.to_owned())
}

/// The checks a deployment gets after a release: read-only ones, and one round trip
/// (an entry tagged `smoke`: the journal is append-only, so it stays).
fn deployment_checks(addr: &str) -> Result<()> {
    let started = Instant::now();
    let mut checks = Checks::stop_at_first();
    let token = std::env::var("LOGBOOK_API_TOKEN").ok().filter(|t| !t.is_empty());
    checks.run(&format!("{addr}: /healthz and /readyz answer 200"), || {
        harness::expect_status(addr, "/healthz", 200)?;
        harness::expect_status(addr, "/readyz", 200)
    })?;
    checks.run("/version names a revision", || {
        let body = http::get(addr, "/version", REQUEST_TIMEOUT)?.body;
        let version: serde_json::Value =
            serde_json::from_str(&body).with_context(|| format!("/version: {body}"))?;
        let revision = version["revision"].as_str().unwrap_or_default();
        ensure!(!revision.is_empty() && revision != "unknown", "/version answered {body}");
        process::say(&format!("the deployment runs revision {revision}"));
        Ok(())
    })?;
    // The reads above are queries; the write is a change, so a dry run ends at it.
    checks.run("a write then a read round-trips", || {
        let text = format!("smoke check of the deployment at {}", crate::time::now_rfc3339());
        let id = harness::append(addr, &text, token.as_deref())?;
        harness::expect_entry(addr, id, &text)
    })?;
    checks.run("/metrics counts the write", || {
        let metrics = http::get(addr, "/metrics", REQUEST_TIMEOUT)?.body;
        let needle = r#"logbook_http_requests_total{method="POST",route="/api/entries",status="201"}"#;
        ensure!(metrics.contains(needle), "no `{needle}` in /metrics");
        Ok(())
    })?;
    process::result(&format!(
        "smoke: all {} checks of the deployment at {addr} passed in {:.1}s",
        checks.passed(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// A secret the stack's environment holds that is not the service's.
const CANARY_VAR: &str = "GRAFANA_ADMIN_PASSWORD";
const CANARY: &str = "smoke-canary-not-for-the-service";

/// What may be in the service container's environment: its own settings, and what the
/// image sets.
fn allowed_in_service_env(name: &str) -> bool {
    name.starts_with("LOGBOOK_") || matches!(name, "SQLITE_TMPDIR" | "PATH" | "HOSTNAME" | "HOME")
}

fn container(sh: &Shell, compose: &Compose) -> Result<String> {
    compose::service_container(compose::containers_started(sh, compose)?)
        .context("the service container was not created")
}

/// Health, version, a round trip, metrics and persistence across a restart.
fn service_checks(sh: &Shell, compose: &Compose, image: &str, checks: &mut Checks) -> Result<()> {
    let addr = checks.step("/healthz and /readyz answer 200", || {
        let addr = compose::wait_ready(sh, compose, Duration::from_secs(30))?;
        harness::expect_status(&addr, "/healthz", 200)?;
        Ok(addr)
    })?;
    checks.run("/version reports the image's git revision", || {
        let label = image::revision(sh, image);
        ensure!(label != "unknown", "the image carries no revision");
        harness::expect_revision(&addr, &label)
    })?;
    let text = format!("smoke entry {}", std::process::id());
    let id = checks.step("a write then a read round-trips", || {
        let id = harness::append(&addr, &text, None)?;
        harness::expect_entry(&addr, id, &text)?;
        Ok(id)
    })?;
    checks.run("/metrics counts the requests", || {
        let metrics = http::get(&addr, "/metrics", REQUEST_TIMEOUT)?.body;
        let needle = r#"logbook_http_requests_total{method="POST",route="/api/entries",status="201"} 1"#;
        ensure!(metrics.contains(needle), "no `{needle}` in /metrics");
        ensure!(metrics.contains("logbook_entries_appended_total 1"), "appends not counted");
        Ok(())
    })?;
    checks.run("the entry survives `docker compose restart`", || {
        process::run(sh, &compose.restart(project::NAME))?;
        let addr = compose::wait_ready(sh, compose, Duration::from_secs(30))?;
        harness::expect_entry(&addr, id, &text)
    })
}

/// Non-root, read-only, no capabilities: from Docker's configuration and the kernel's view.
fn hardening_checks(sh: &Shell, compose: &Compose, container: &str, checks: &mut Checks) -> Result<()> {
    checks.run("the service runs as a non-root user", || {
        let user = process::query(sh, &docker::inspect_format(container, "{{.Config.User}}"))?;
        ensure!(
            !user.is_empty() && !user.starts_with('0') && !user.starts_with("root"),
            "configured user is {user:?}"
        );
        // The host's view of the running processes: proof beyond the image's configuration.
        let top = process::query(sh, &Cmd::new("docker").args(["top", container, "-o", "pid,uid"]))?;
        let uids: Vec<&str> = top.lines().skip(1).filter_map(|l| l.split_whitespace().nth(1)).collect();
        ensure!(!uids.is_empty() && uids.iter().all(|u| *u != "0"), "process UIDs {uids:?}");
        Ok(())
    })?;
    checks.run("read-only root, all capabilities dropped, no-new-privileges", || {
        let format = "{{.HostConfig.ReadonlyRootfs}} {{json .HostConfig.CapDrop}} {{json .HostConfig.SecurityOpt}} {{.State.Pid}}";
        let host = process::query(sh, &docker::inspect_format(container, format))?;
        let words: Vec<&str> = host.split_whitespace().collect();
        ensure!(words.first() == Some(&"true"), "the root filesystem is writable: {host}");
        ensure!(host.contains("\"ALL\""), "capabilities are not all dropped: {host}");
        ensure!(host.contains("no-new-privileges"), "no-new-privileges is not set: {host}");
        // The kernel's own view of the process, where the host can see it (not through a VM).
        let status = words.last().and_then(|pid| std::fs::read_to_string(format!("/proc/{pid}/status")).ok());
        if let Some(status) = status {
            let field = |name: &str| status.lines().find_map(|l| l.strip_prefix(name)).map_or("?", str::trim).to_owned();
            ensure!(field("CapEff:") == "0000000000000000", "effective capabilities {}", field("CapEff:"));
            ensure!(field("NoNewPrivs:") == "1", "NoNewPrivs is {}", field("NoNewPrivs:"));
        }
        Ok(())
    })?;
    checks.run("only the proxy publishes a port, and it is hardened like the service", || {
        let ports =
            process::query(sh, &docker::inspect_format(container, "{{json .HostConfig.PortBindings}}"))?;
        ensure!(matches!(ports.as_str(), "{}" | "null"), "the service publishes {ports}");
        let proxy = compose::containers(sh, compose)?
            .into_iter()
            .find(|c| c.service == project::PROXY_SERVICE)
            .context("no proxy container")?;
        let format =
            "{{.HostConfig.ReadonlyRootfs}} {{json .HostConfig.CapDrop}} {{json .HostConfig.SecurityOpt}}";
        let host = process::query(sh, &docker::inspect_format(&proxy.id, format))?;
        ensure!(
            host.starts_with("true ") && host.contains("\"ALL\"") && host.contains("no-new-privileges"),
            "the proxy runs with {host}"
        );
        Ok(())
    })?;
    checks.run(
        "the service's environment holds only its own settings (no other secret of the stack)",
        || {
            let env = process::query(sh, &docker::inspect_format(container, "{{json .Config.Env}}"))?;
            let env: Vec<String> = serde_json::from_str(&env).context("docker inspect printed bad JSON")?;
            let names: Vec<&str> =
                env.iter().map(|pair| pair.split_once('=').map_or(pair.as_str(), |(k, _)| k)).collect();
            ensure!(
                !env.iter().any(|pair| pair.contains(CANARY)),
                "{CANARY_VAR}'s value reached the service"
            );
            let foreign: Vec<&&str> = names.iter().filter(|name| !allowed_in_service_env(name)).collect();
            ensure!(foreign.is_empty(), "the service received {foreign:?}");
            Ok(())
        },
    )?;
    checks.run("writes outside /data and /tmp fail", || {
        let backup_to =
            |path: &str| Cmd::new("docker").args(["exec", container, "/logbook", "backup", "--to", path]);
        for denied in ["/etc/probe.db", "/probe.db"] {
            match process::query(sh, &backup_to(denied)) {
                Ok(_) => bail!("wrote {denied}"),
                Err(e) => ensure!(format!("{e:#}").contains("Read-only file system"), "{denied}: {e:#}"),
            }
        }
        for allowed in ["/tmp/probe.db", "/data/probe.db"] {
            process::query(sh, &backup_to(allowed)).with_context(|| format!("cannot write {allowed}"))?;
        }
        Ok(())
    })
}

/// Docker's health status, then a graceful stop.
fn lifecycle_checks(sh: &Shell, container: &str, checks: &mut Checks) -> Result<()> {
    checks.run("Docker's health status reaches healthy", || {
        process::wait_for(
            "Docker's health status",
            Duration::from_secs(45),
            Duration::from_millis(250),
            || {
                let status =
                    process::query(sh, &docker::inspect_format(container, "{{.State.Health.Status}}"))?;
                Ok((status == "healthy").then_some(()))
            },
        )
    })?;
    checks.run("`docker stop` drains gracefully and exits 0 within the grace period", || {
        let started = Instant::now();
        process::run(sh, &Cmd::new("docker").args(["stop", container]))?;
        let took = started.elapsed();
        let exit = process::query(sh, &docker::inspect_format(container, "{{.State.ExitCode}}"))?;
        ensure!(exit == "0", "exit code {exit} after {took:?}");
        let logs = process::query(sh, &Cmd::new("docker").args(["logs", "--tail", "5", container]))?;
        ensure!(logs.contains("shutdown complete"), "no graceful drain in the log:\n{logs}");
        process::say(&format!("  stopped in {} ms", took.as_millis()));
        Ok(())
    })
}

/// The proxy's configuration with one keyword misspelt, in a copy of the project's proxy
/// folder: the check before a switch refuses it, naming the line.
fn broken_proxy_config_is_refused(sh: &Shell) -> Result<()> {
    let image = proxy::image(proxy::from_env);
    let copy = sh.create_temp_dir()?;
    let root = copy.path();
    std::fs::create_dir_all(root.join(project::PROXY_DIR))?;
    let config = sh.read_file(project::PROXY_CONFIG)?;
    let line = config.lines().position(|l| l.trim() == "retries 3").context("no `retries 3` line")? + 1;
    std::fs::write(root.join(project::PROXY_CONFIG), config.replacen("    retries 3", "    retires 3", 1))?;
    std::fs::copy(project::PROXY_HOLD, root.join(project::PROXY_HOLD))?;
    let error = match proxy::check_config(sh, &image, root) {
        Ok(()) => bail!("a configuration with `retires 3` passed the check"),
        Err(e) => e.to_string(),
    };
    let place = format!("{}:{line}", project::PROXY_CONFIG);
    ensure!(
        error.starts_with(&format!("{} does not validate:", project::PROXY_CONFIG))
            && error.contains(&place)
            && error.contains("retires"),
        "the refusal does not name {place} and the keyword: {error}"
    );
    process::say(&format!("  refused: {error}"));
    Ok(())
}

/// The TLS file layered on, with a certificate from the front's own CA (`tls internal`)
/// for `logbook.localhost`: HTTPS answers, checked against that CA, and plain HTTP on the
/// public port redirects to HTTPS.
fn https_is_served(sh: &Shell, program: docker::ComposeProgram, image: &str) -> Result<()> {
    let (http_port, https_port) = (http::free_port()?.to_string(), http::free_port()?.to_string());
    let compose = harness::throwaway_project(program, "smoke-tls")?
        .with_file(project::TLS_COMPOSE_FILE)
        .var("LOGBOOK_DOMAIN", "logbook.localhost")
        .var("LOGBOOK_TLS", "internal")
        .var("LOGBOOK_PUBLIC_BIND", "127.0.0.1")
        .var("LOGBOOK_HTTP_PORT", &http_port)
        .var("LOGBOOK_HTTPS_PORT", &https_port)
        .var("LOGBOOK_IMAGE", image);
    let guard = StackGuard::new(sh, &compose, OnDrop::RemoveWithVolumes);
    process::run(sh, &compose.up())?;
    compose::wait_ready(sh, &compose, Duration::from_secs(30))?;
    let dir = sh.create_temp_dir()?;
    let ca = dir.path().join("root.crt");
    let copy_ca =
        compose.cmd(&["cp", "tls:/data/caddy/pki/authorities/local/root.crt", &ca.display().to_string()]);
    let resolve = |port: &str| format!("logbook.localhost:{port}:127.0.0.1");
    let https = Cmd::new("curl")
        .args(["--silent", "--show-error", "--output", "/dev/null", "--write-out", "%{http_code}"])
        .args(["--cacert".to_owned(), ca.display().to_string(), "--resolve".to_owned(), resolve(&https_port)])
        .arg(format!("https://logbook.localhost:{https_port}/readyz"));
    // The CA and the certificate are made once the proxy starts; poll until both are there.
    process::wait_for(
        "the proxy's certificate",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || {
            Ok((process::query(sh, &copy_ca).is_ok()
                && process::query(sh, &https).is_ok_and(|code| code == "200"))
            .then_some(()))
        },
    )?;
    let redirect = Cmd::new("curl")
        .args([
            "--silent",
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_code} %{redirect_url}",
            "--resolve",
        ])
        .arg(resolve(&http_port))
        .arg(format!("http://logbook.localhost:{http_port}/readyz"));
    let answer = process::query(sh, &redirect)?;
    ensure!(
        answer.ends_with(" https://logbook.localhost/readyz") && answer.starts_with('3'),
        "plain HTTP answered {answer:?}, not a redirect to HTTPS"
    );
    // HSTS over HTTPS; never on plain HTTP, where it would mean nothing.
    let hsts = |cmd: Cmd| -> Result<String> {
        process::query(
            sh,
            &cmd.args(["--output", "/dev/null", "--write-out", "%header{strict-transport-security}"]),
        )
    };
    let over_https = hsts(https.clone())?;
    ensure!(over_https == "max-age=31536000", "HTTPS answered Strict-Transport-Security {over_https:?}");
    let addr = compose::published_addr(sh, &compose)?;
    let over_http = hsts(Cmd::new("curl").arg("--silent").arg(format!("http://{addr}/readyz")))?;
    ensure!(over_http.is_empty(), "plain HTTP answered Strict-Transport-Security {over_http:?}");
    guard.succeeded();
    Ok(())
}

/// The line the README's quick start gives (and the service's refusal repeats).
const README_RUN: &str = "docker run --rm -p 127.0.0.1:8080:8080 ";

/// Runs the README's `docker run` line as written, but detached, on a free port, with a
/// volume and name of its own and this tree's image; then a write and a read.
fn readme_docker_run(sh: &Shell, image: &str) -> Result<()> {
    let readme = sh.read_file("README.md")?;
    let line = readme
        .lines()
        .find(|l| l.starts_with(README_RUN))
        .context("the README shows no `docker run` line")?;
    let port = crate::outside::http::free_port()?;
    let name = format!("{}-first-contact-{}", project::NAME, std::process::id());
    let cmd = first_contact(line, port, &name, image)?;
    struct Remove<'a>(&'a Shell, String);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = process::run_cleanup(
                self.0,
                &Cmd::new("docker").args(["rm", "--force", "--volumes", &self.1]),
            );
            let _ = process::run_cleanup(self.0, &Cmd::new("docker").args(["volume", "rm", &self.1]));
        }
    }
    let _remove = Remove(sh, name.clone());
    process::run(sh, &cmd)?;
    let addr = format!("127.0.0.1:{port}");
    crate::outside::local_service::wait_ready_at(&addr, "the container to be ready")?;
    let id = harness::append(&addr, "first contact", None)?;
    harness::expect_entry(&addr, id, "first contact")
}

/// The README's line, detached and named, on `port`, with volume `name` and `image`.
fn first_contact(line: &str, port: u16, name: &str, image: &str) -> Result<Cmd> {
    let words: Vec<&str> = line.split_whitespace().collect();
    ensure!(words.get(..3) == Some(&["docker", "run", "--rm"][..]), "unexpected line {line:?}");
    let mut cmd = Cmd::new("docker").args(["run", "--rm", "--detach", "--name", name]);
    for word in &words[3..] {
        let word = match *word {
            "127.0.0.1:8080:8080" => format!("127.0.0.1:{port}:8080"),
            "logbook-data:/data" => format!("{name}:/data"),
            "logbook:latest" => image.to_owned(),
            other => other.to_owned(),
        };
        cmd = cmd.arg(word);
    }
    Ok(cmd)
}

/// An image whose configuration is invalid must make `up` fail fast, naming the cause.
fn broken_image_is_refused(sh: &Shell, program: docker::ComposeProgram, image: &str) -> Result<()> {
    let broken = format!("{}-smoke-broken:{}", project::NAME, std::process::id());
    let dir = sh.create_temp_dir()?;
    let compose = harness::throwaway_project(program, "smoke-broken")?;
    let mut guard = StackGuard::new(sh, &compose, OnDrop::RemoveWithVolumes);
    guard.remove_image(&broken);
    harness::build_broken_image(sh, image, &broken)?;
    let started = Instant::now();
    let deadline = Duration::from_secs(30);
    let history = dir.path().join("releases.json");
    let result = switch::switch(
        sh,
        &compose,
        &history,
        &broken,
        switch::Gate { timeout: deadline, restore_previous: false },
    );
    let took = started.elapsed();
    guard.succeeded();
    let message = match result {
        Ok(_) => bail!("the broken image came up"),
        Err(e) => format!("{e:#}"),
    };
    // Generous: failing fast means well before the deadline plus teardown, not a tight bound.
    ensure!(took < deadline + Duration::from_secs(15), "failing took {took:?}");
    ensure!(message.contains(harness::BROKEN_SETTING), "the error does not show the cause:\n{message}");
    process::say(&format!(
        "  refused in {:.1}s: {}",
        took.as_secs_f64(),
        message.lines().next().unwrap_or_default()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_line_runs_detached_on_its_own_port_volume_and_image() {
        let line = "docker run --rm -p 127.0.0.1:8080:8080 -e LOGBOOK_ALLOW_UNAUTHENTICATED=1 -v logbook-data:/data logbook:latest";
        assert_eq!(
            first_contact(line, 41000, "fc", "logbook:abc").unwrap().to_string(),
            "docker run --rm --detach --name fc -p 127.0.0.1:41000:8080 -e LOGBOOK_ALLOW_UNAUTHENTICATED=1 -v fc:/data logbook:abc"
        );
        let readme =
            std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
                .unwrap();
        assert!(readme.lines().any(|l| l == line), "the README's line changed; update this test");
    }

    #[test]
    fn only_plain_http_addresses_are_taken() {
        assert_eq!(host_port("http://127.0.0.1:8080").unwrap(), "127.0.0.1:8080");
        assert_eq!(host_port("http://staging.internal:8080/").unwrap(), "staging.internal:8080");
        assert!(host_port("https://logbook.example.com").unwrap_err().to_string().contains("plain-HTTP"));
        assert!(host_port("http://127.0.0.1:8080/api").is_err());
        assert!(host_port("http://127.0.0.1").is_err());
    }
}

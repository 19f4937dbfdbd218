//! `cargo xtask swarm-drill`: Swarm's rolling updates proven live, on a one-node swarm.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use xshell::Shell;

use crate::docker::{self, ImagePlan};
use crate::flags::{Builder, SwarmDrill};
use crate::process::{self, Cmd};
use crate::smoke::{self, Checks};
use crate::swarm::{self, DATA_LABEL, Stack};
use crate::{http, stack};

const TIMEOUT: Duration = Duration::from_secs(5);
const ENTRIES: usize = 20;

/// Undoes, on drop, exactly what the drill set up: the stack and its volume, the secret,
/// the images, the node label, and the swarm itself only if the drill created it.
struct Cleanup<'a> {
    sh: &'a Shell,
    stack: Stack,
    secret: String,
    images: Vec<String>,
    label_added: Option<String>,
    swarm_created: bool,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        // After Ctrl-C, the waits below must still run; a further Ctrl-C cuts them short.
        process::clear_interrupt();
        let quiet = |args: &[&str]| {
            let _ = process::run_cleanup(self.sh, &Cmd::new("docker").args(args.iter().copied()));
        };
        quiet(&["stack", "rm", &self.stack.name]);
        // The volume is released once the stack's containers are gone.
        let volume = format!("{}_data", self.stack.name);
        let _ = process::wait_for(
            "the stack's containers to go",
            Duration::from_secs(60),
            Duration::from_millis(250),
            || {
                Ok(process::succeeds(self.sh, &Cmd::new("docker").args(["volume", "rm", &volume]))
                    .then_some(()))
            },
        );
        quiet(&["secret", "rm", &self.secret]);
        for image in &self.images {
            quiet(&["image", "rm", "--force", image]);
        }
        if let Some(node) = &self.label_added {
            quiet(&["node", "update", "--label-rm", DATA_LABEL, node]);
        }
        if self.swarm_created {
            quiet(&["swarm", "leave", "--force"]);
        }
    }
}

impl SwarmDrill {
    pub fn run(self, sh: &Shell) -> Result<()> {
        docker::connect(sh)?;
        let v1 = stack::ensure_image(sh, self.no_build)?;
        let pid = std::process::id();
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port().to_string();
        let secret = format!("logbook_drill_{pid}");
        let mut stack = Stack::new(&format!("logbookdrill{pid}"))
            .var("LOGBOOK_HOST_PORT", &port)
            .var("LOGBOOK_API_TOKEN_SECRET", &secret);
        // The routing mesh needs the kernel's IPVS. Without it, publish on the node and
        // update stop-first (one task holds the port at a time), and say so.
        let mesh = std::path::Path::new("/proc/net/ip_vs").exists();
        if !mesh {
            process::say(
                "swarm-drill: this kernel has no IPVS, so Swarm's routing mesh cannot run here: \
                 publishing in host mode with stop-first updates",
            );
            stack = stack.var("LOGBOOK_PUBLISH_MODE", "host").var("LOGBOOK_UPDATE_ORDER", "stop-first");
        }
        if process::runner().dry_run {
            process::run(sh, &stack.deploy(&v1))?;
            return Ok(());
        }
        let mut cleanup = Cleanup {
            sh,
            stack: stack.clone(),
            secret: secret.clone(),
            images: Vec::new(),
            label_added: None,
            swarm_created: false,
        };

        let state =
            process::query(sh, &Cmd::new("docker").args(["info", "--format", "{{.Swarm.LocalNodeState}}"]))?;
        if state != "active" {
            process::say(
                "swarm-drill: this engine is in no swarm; creating a one-node swarm for the drill (it is left again afterwards)",
            );
            process::run(sh, &Cmd::new("docker").args(["swarm", "init", "--advertise-addr", "127.0.0.1"]))?;
            cleanup.swarm_created = true;
        }
        let node = process::query(sh, &Cmd::new("docker").args(["info", "--format", "{{.Swarm.NodeID}}"]))?;
        let labels = process::query(sh, &docker::inspect_format(&node, "{{json .Spec.Labels}}"))?;
        if !labels.contains(&format!("\"{DATA_LABEL}\":\"true\"")) {
            process::run(
                sh,
                &Cmd::new("docker").args([
                    "node",
                    "update",
                    "--label-add",
                    &format!("{DATA_LABEL}=true"),
                    &node,
                ]),
            )?;
            cleanup.label_added = Some(node);
        }
        let token = random_token()?;
        process::query_with_input(sh, &Cmd::new("docker").args(["secret", "create", &secret, "-"]), &token)?;

        let plan = ImagePlan::from_repo(sh)?;
        let v2 = plan.variant("swarm-v2");
        let broken = format!("{v1}-swarm-broken");
        cleanup.images.extend([v2.tag.clone(), broken.clone()]);
        crate::build::build(sh, &v2, Builder::Buildkit)?;
        docker::build_broken_image(sh, &v1, &broken)?;

        let history = sh.create_temp_dir()?;
        let history = history.path().join("releases.json");
        let timeout = Duration::from_secs(self.timeout);
        let auth = format!("Bearer {token}");
        let mut checks = Checks::default();
        let addr = checks.run_value("v1 deploys on the swarm and takes 20 entries", || {
            let addr = swarm::deploy(sh, &stack, &history, &v1, timeout)?;
            for i in 1..=ENTRIES {
                let r = post(&addr, &auth, &format!("swarm {i}"))?;
                ensure!(r.status == 201, "POST answered {}: {}", r.status, r.body);
            }
            Ok(addr)
        })?;

        let update_check = if mesh {
            "a start-first rolling update to v2 fails no request"
        } else {
            "a stop-first update to v2 completes (no routing mesh here: requests fail while no task runs)"
        };
        let (took, failed, total) = checks.run_value(update_check, || {
            let polling = Arc::new(AtomicBool::new(true));
            let (failed, total) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let poller = {
                let (polling, failed, total, addr) =
                    (polling.clone(), failed.clone(), total.clone(), addr.clone());
                std::thread::spawn(move || {
                    let mut n = 0;
                    while polling.load(Ordering::Relaxed) {
                        n = n % ENTRIES + 1;
                        // Entry reads, as a client makes them: during a start-first handover
                        // the new task holds them until it has the database.
                        total.fetch_add(1, Ordering::Relaxed);
                        if !http::get(&addr, &format!("/api/entries/{n}"), TIMEOUT)
                            .is_ok_and(|r| r.status == 200)
                        {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                        std::thread::sleep(Duration::from_millis(20));
                    }
                })
            };
            let started = Instant::now();
            let deployed = swarm::deploy(sh, &stack, &history, &v2.tag, timeout);
            let took = started.elapsed();
            polling.store(false, Ordering::Relaxed);
            poller.join().map_err(|_| anyhow::anyhow!("the poller panicked"))?;
            deployed?;
            smoke::expect_revision(&addr, &v2.revision)?;
            let (failed, total) = (failed.load(Ordering::Relaxed), total.load(Ordering::Relaxed));
            process::say(&format!(
                "  {failed} of {total} requests failed during the update, which took {:.1}s",
                took.as_secs_f64()
            ));
            ensure!(!mesh || failed == 0, "{failed} of {total} requests failed during the rolling update");
            Ok((took, failed, total))
        })?;

        let restored_in =
            checks.run_value("an unhealthy image is rolled back by Swarm; v2 serves every entry", || {
                let started = Instant::now();
                match swarm::deploy(sh, &stack, &history, &broken, timeout) {
                    Ok(_) => bail!("the broken image rolled out"),
                    Err(e) => process::say(&format!(
                        "  refused as expected: {}",
                        format!("{e:#}").lines().next().unwrap_or_default()
                    )),
                }
                let restored =
                    process::wait_for("v2 to serve again", timeout, Duration::from_millis(100), || {
                        Ok(smoke::expect_revision(&addr, &v2.revision).is_ok().then_some(()))
                    });
                let restored_in = started.elapsed();
                restored?;
                for id in 1..=ENTRIES {
                    let r = http::get(&addr, &format!("/api/entries/{id}"), TIMEOUT)?;
                    ensure!(
                        r.status == 200 && r.body.contains(&format!("\"swarm {id}\"")),
                        "entry {id}: {} {}",
                        r.status,
                        r.body
                    );
                }
                Ok(restored_in)
            })?;

        checks.run("removing the stack keeps its volume", || {
            process::run(sh, &stack.remove())?;
            let volume = format!("{}_data", stack.name);
            ensure!(
                process::succeeds(sh, &Cmd::new("docker").args(["volume", "inspect", &volume])),
                "volume {volume} is gone"
            );
            Ok(())
        })?;
        process::result(&format!(
            "swarm-drill: all {} checks passed; {} update {:.1}s with {failed} of {total} requests failed; \
             bad rollout to v2 serving again in {:.1}s",
            checks.passed,
            if mesh { "start-first" } else { "stop-first (host mode)" },
            took.as_secs_f64(),
            restored_in.as_secs_f64()
        ));
        drop(cleanup);
        Ok(())
    }
}

fn post(addr: &str, auth: &str, text: &str) -> Result<http::Response> {
    http::request_with_headers(
        addr,
        "POST",
        "/api/entries",
        &[("Authorization", auth)],
        Some(&format!(r#"{{"text":"{text}"}}"#)),
        TIMEOUT,
    )
}

/// 32 hex characters from the kernel's random source.
fn random_token() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

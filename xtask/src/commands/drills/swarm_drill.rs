//! `cargo xtask swarm-drill`: Swarm's rolling updates proven live, on a one-node swarm.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use xshell::Shell;

use super::harness::{self, Traffic};
use crate::commands::checks::report::Checks;
use crate::flags::{Builder, SwarmDrill};
use crate::outside::image::{self, ImagePlan};
use crate::outside::process::{self, Cmd};
use crate::outside::{docker, http};
use crate::targets::swarm::{self, DATA_LABEL, Stack};

const ENTRIES: i64 = 20;

fn swarm_text(i: i64) -> String {
    format!("swarm {i}")
}

/// Sets up what the drill needs on this engine and undoes, on drop, exactly that: the
/// stack and its volume, the secret, the images, the node label, and the swarm itself
/// only if the drill created it.
struct SwarmSetup<'a> {
    sh: &'a Shell,
    stack: Stack,
    secret: String,
    images: Vec<String>,
    label_added: Option<String>,
    swarm_created: bool,
    /// Nothing to take down unless a change was made since it was armed.
    armed: process::ChangeMark,
}

impl<'a> SwarmSetup<'a> {
    /// Joins (or creates) a one-node swarm, labels the node for the data and creates the
    /// API token secret; returns the token.
    fn prepare(sh: &'a Shell, stack: &Stack, secret: &str) -> Result<(Self, String)> {
        let mut setup = SwarmSetup {
            sh,
            stack: stack.clone(),
            secret: secret.to_owned(),
            images: Vec::new(),
            label_added: None,
            swarm_created: false,
            armed: process::ChangeMark::now(),
        };
        let info = |format: &str| process::query(sh, &Cmd::new("docker").args(["info", "--format", format]));
        if info("{{.Swarm.LocalNodeState}}")? != "active" {
            process::say(
                "swarm-drill: this engine is in no swarm; creating a one-node swarm for the drill (it is left again afterwards)",
            );
            process::run(sh, &Cmd::new("docker").args(["swarm", "init", "--advertise-addr", "127.0.0.1"]))?;
            setup.swarm_created = true;
        }
        // Observed: the swarm may be the one just created.
        let node = process::observe(sh, &Cmd::new("docker").args(["info", "--format", "{{.Swarm.NodeID}}"]))?;
        let labels = process::query(sh, &docker::inspect_format(&node, "{{json .Spec.Labels}}"))?;
        if !labels.contains(&format!("\"{DATA_LABEL}\":\"true\"")) {
            let label = format!("{DATA_LABEL}=true");
            process::run(sh, &Cmd::new("docker").args(["node", "update", "--label-add", &label, &node]))?;
            setup.label_added = Some(node);
        }
        let token = random_token()?;
        process::run_with_input(sh, &Cmd::new("docker").args(["secret", "create", secret, "-"]), &token)?;
        Ok((setup, token))
    }
}

impl Drop for SwarmSetup<'_> {
    fn drop(&mut self) {
        if !self.armed.changed_since() {
            return;
        }
        // After Ctrl-C, the waits below must still run; a further Ctrl-C cuts them short.
        process::clear_interrupt();
        let quiet = |args: &[&str]| {
            let _ = process::run_cleanup(self.sh, &Cmd::new("docker").args(args.iter().copied()));
        };
        quiet(&["stack", "rm", &self.stack.name]);
        // The volumes are released once the stack's containers are gone.
        let volumes = ["data"].map(|v| format!("{}_{v}", self.stack.name));
        let gone = |volume: &String| {
            !process::succeeds(self.sh, &Cmd::new("docker").args(["volume", "inspect", volume]))
                || process::succeeds(self.sh, &Cmd::new("docker").args(["volume", "rm", volume]))
        };
        let wait = (Duration::from_secs(60), Duration::from_millis(250));
        let _ = process::wait_for("the stack's containers to go", wait.0, wait.1, || {
            Ok(volumes.iter().all(gone).then_some(()))
        });
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
    /// Sets up the swarm, then: v1 with entries, a rolling update to v2 under traffic, a
    /// bad rollout rolled back, the stack removed with its volume kept. Each step is its
    /// own check; the setup is undone however the drill ends.
    pub fn run(self, sh: &Shell) -> Result<()> {
        docker::connect(sh)?;
        let v1 = image::ensure(sh, self.no_build)?;
        let pid = std::process::id();
        let secret = format!("logbook_drill_{pid}");
        let stack = Stack::new(&format!("logbookdrill{pid}"))
            .var("LOGBOOK_HOST_PORT", &http::free_port()?.to_string())
            .var("LOGBOOK_API_TOKEN_SECRET", &secret);
        let (mut setup, token) = SwarmSetup::prepare(sh, &stack, &secret)?;
        let plan = ImagePlan::from_repo(sh)?;
        let v2 = plan.variant("swarm-v2");
        let broken = format!("{v1}-swarm-broken");
        setup.images.extend([v2.tag.clone(), broken.clone()]);
        image::build(sh, &v2, Builder::Buildkit)?;
        harness::build_broken_image(sh, &v1, &broken)?;

        let history = sh.create_temp_dir()?;
        let history = history.path().join("releases.json");
        let timeout = Duration::from_secs(self.timeout);
        let mut checks = Checks::stop_at_first();
        let addr = checks.step("v1 deploys on the swarm and takes 20 entries", || {
            let addr = swarm::deploy(sh, &stack, &history, &v1, timeout)?;
            for i in 1..=ENTRIES {
                harness::append(&addr, &swarm_text(i), Some(&token))?;
            }
            Ok(addr)
        })?;
        let (took, traffic) =
            checks.step("a start-first rolling update to v2 under traffic fails no request", || {
                let traffic = Traffic::start(&addr, "swarm update", Some(&token));
                let started = Instant::now();
                let deployed = swarm::deploy(sh, &stack, &history, &v2.tag, timeout);
                let took = started.elapsed();
                let traffic = traffic.stop()?;
                deployed?;
                process::say(&format!(
                    "  traffic during the update ({:.1}s): {}",
                    took.as_secs_f64(),
                    traffic.summary()
                ));
                harness::expect_revision(&addr, &v2.revision)?;
                traffic.expect_no_failures("the rolling update")?;
                harness::expect_acknowledged(&addr, &traffic.acknowledged)?;
                Ok((took, traffic))
            })?;
        let restored_in =
            checks.step("an unhealthy image is rolled back by Swarm; v2 serves every entry", || {
                bad_rollout_is_rolled_back(&addr, &v2.revision, timeout, || {
                    swarm::deploy(sh, &stack, &history, &broken, timeout).map(drop)
                })
            })?;
        checks.run("removing the stack keeps its volume", || {
            process::run(sh, &stack.remove())?;
            let volume = format!("{}_data", stack.name);
            let kept = process::succeeds(sh, &Cmd::new("docker").args(["volume", "inspect", &volume]));
            ensure!(kept, "volume {volume} is gone");
            Ok(())
        })?;
        process::result(&format!(
            "swarm-drill: all {} checks passed; start-first update {:.1}s with {} of {} requests failed, \
             longest wait {} ms; bad rollout to v2 serving again in {:.1}s",
            checks.passed(),
            took.as_secs_f64(),
            traffic.failed,
            traffic.requests,
            traffic.longest.as_millis(),
            restored_in.as_secs_f64()
        ));
        drop(setup);
        Ok(())
    }
}

/// A deploy that must fail, after which `revision` serves every entry again; how long
/// until it did.
fn bad_rollout_is_rolled_back(
    addr: &str,
    revision: &str,
    timeout: Duration,
    deploy: impl FnOnce() -> Result<()>,
) -> Result<Duration> {
    let started = Instant::now();
    match deploy() {
        Ok(()) => bail!("the broken image rolled out"),
        Err(e) => process::say(&format!(
            "  refused as expected: {}",
            format!("{e:#}").lines().next().unwrap_or_default()
        )),
    }
    process::wait_for("the previous release to serve again", timeout, Duration::from_millis(100), || {
        Ok(harness::expect_revision(addr, revision).is_ok().then_some(()))
    })?;
    let restored_in = started.elapsed();
    let first: Vec<(i64, String)> = (1..=ENTRIES).map(|i| (i, swarm_text(i))).collect();
    harness::expect_acknowledged(addr, &first)?;
    Ok(restored_in)
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

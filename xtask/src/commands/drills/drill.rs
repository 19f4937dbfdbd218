//! `cargo xtask drill`: release safety rehearsed end to end on a throwaway stack.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use xshell::Shell;

use super::harness::{self, Traffic, TrafficReport};
use crate::commands::checks::report::Checks;
use crate::flags::{Builder, Drill};
use crate::outside::docker::{self, Compose};
use crate::outside::image::{self, ImagePlan};
use crate::outside::process::{self, Cmd};
use crate::release::History;
use crate::targets::compose::switch::{self, Gate};
use crate::targets::compose::{self, OnDrop, StackGuard, data};

const FIRST_ENTRIES: i64 = 20;

/// No client may wait this long during a switch. The goal is under 500 ms (the drill
/// prints the longest wait); this limit is twice that, so that the pauses a switch used
/// to cause fail the drill without the load of a busy machine doing so.
const WAIT_LIMIT: Duration = Duration::from_secs(1);

fn drill_text(i: i64) -> String {
    format!("drill {i}")
}

/// The images and the place the drill works in.
struct Rehearsal<'a> {
    sh: &'a Shell,
    compose: Compose,
    history: std::path::PathBuf,
    gate: Gate,
    v1: String,
    v1_revision: String,
    v2: ImagePlan,
    broken: String,
}

impl Drill {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let program = docker::connect(sh)?;
        let v1 = image::ensure(sh, self.no_build)?;
        let compose = harness::throwaway_project(program, "drill")?;
        // v2: the same sources with another revision compiled in, so /version tells them apart.
        let plan = ImagePlan::from_repo(sh)?;
        let state = sh.create_temp_dir()?;
        let drill = Rehearsal {
            sh,
            compose,
            history: state.path().join("releases.json"),
            gate: Gate { timeout: Duration::from_secs(60), restore_previous: true },
            v2: plan.variant("drill-v2"),
            broken: format!("{v1}-drill-broken"),
            v1,
            v1_revision: plan.revision,
        };
        let mut guard = StackGuard::new(sh, &drill.compose, OnDrop::RemoveWithVolumes);
        guard.remove_image(&drill.v2.tag);
        guard.remove_image(&drill.broken);
        image::build(sh, &drill.v2, Builder::Buildkit)?;
        harness::build_broken_image(sh, &drill.v1, &drill.broken)?;
        let mut checks = Checks::stop_at_first();
        let (rollback_took, traffic) = drill.releases(&mut checks)?;
        let compared = drill.compare_switches(&mut checks)?;
        drill.crash_and_restart(&mut checks)?;
        drill.backup_and_restore(&mut checks, &state.path().join("drill-backup.db"))?;
        guard.succeeded();
        process::result(&format!(
            "drill: all {} checks passed; rollback to v1 ready in {:.1}s; through three switches {} requests, \
             {} failed, longest wait {} ms; 0 of {} acknowledged entries lost",
            checks.passed(),
            rollback_took.as_secs_f64(),
            traffic.requests,
            traffic.failed,
            traffic.longest.as_millis(),
            traffic.acknowledged.len() as i64 + FIRST_ENTRIES
        ));
        process::result(&compared);
        Ok(())
    }
}

impl Rehearsal<'_> {
    fn switch(&self, image: &str) -> Result<String> {
        switch::switch(self.sh, &self.compose, &self.history, image, self.gate)
    }

    /// Runs `operation` while a client appends and reads through the proxy; no request
    /// may fail or wait [`WAIT_LIMIT`], and every acknowledged entry must be there
    /// afterwards.
    fn under_traffic<T>(
        &self,
        addr: &str,
        label: &str,
        operation: impl FnOnce() -> Result<T>,
    ) -> Result<(T, TrafficReport)> {
        let traffic = Traffic::start(addr, label, None);
        let result = operation();
        let report = traffic.stop()?;
        let value = result?;
        process::say(&format!("  traffic during {label}: {}", report.summary()));
        report.expect_no_failures(label)?;
        ensure!(
            report.longest < WAIT_LIMIT,
            "a request waited {} ms during {label}, {} ms or more",
            report.longest.as_millis(),
            WAIT_LIMIT.as_millis()
        );
        harness::expect_acknowledged(addr, &report.acknowledged)?;
        Ok((value, report))
    }

    /// v1, then v2, rollback and a broken image, each under traffic; returns how long
    /// the rollback took and the traffic seen throughout.
    fn releases(&self, checks: &mut Checks) -> Result<(Duration, TrafficReport)> {
        let addr = checks.step("v1 deploys and takes 20 entries", || {
            let addr = self.switch(&self.v1)?;
            for i in 1..=FIRST_ENTRIES {
                harness::append(&addr, &drill_text(i), None)?;
            }
            Ok(addr)
        })?;
        let mut seen = TrafficReport::default();
        let ((), traffic) =
            checks.step("switching to v2 under traffic: v2 serves, no request fails", || {
                self.under_traffic(&addr, "switch to v2", || {
                    self.switch(&self.v2.tag)?;
                    harness::expect_revision(&addr, &self.v2.revision)
                })
            })?;
        seen.absorb(traffic);
        let (took, traffic) =
            checks.step("rollback under traffic brings v1 back, no request fails", || {
                self.under_traffic(&addr, "rollback", || {
                    let started = Instant::now();
                    let image =
                        switch::rollback(self.sh, &self.compose, &self.history, None, self.gate.timeout)?;
                    let took = started.elapsed();
                    ensure!(image == self.v1, "rolled back to {image}, expected {}", self.v1);
                    harness::expect_revision(&addr, &self.v1_revision)?;
                    Ok(took)
                })
            })?;
        seen.absorb(traffic);
        let ((), traffic) =
            checks.step("a broken image never takes traffic: v1 keeps serving, no request fails", || {
                self.under_traffic(&addr, "a broken release", || {
                    let started = Instant::now();
                    match self.switch(&self.broken) {
                        Ok(_) => bail!("the broken image came up"),
                        Err(e) => process::say(&format!(
                            "  refused as expected after {:.1}s: {}",
                            started.elapsed().as_secs_f64(),
                            e.to_string().lines().next().unwrap_or_default()
                        )),
                    }
                    let running = compose::running_image(self.sh, &self.compose)?;
                    ensure!(running.as_deref() == Some(self.v1.as_str()), "v1 is not running: {running:?}");
                    let current = History::load(&self.history)?.current().map(|r| r.image.clone());
                    ensure!(
                        current.as_deref() == Some(self.v1.as_str()),
                        "the history records {current:?} as current"
                    );
                    harness::expect_revision(&addr, &self.v1_revision)
                })
            })?;
        seen.absorb(traffic);
        checks.run("every entry written before and during the switches is there", || {
            let first: Vec<(i64, String)> = (1..=FIRST_ENTRIES).map(|i| (i, drill_text(i))).collect();
            harness::expect_acknowledged(&addr, &first)?;
            harness::expect_acknowledged(&addr, &seen.acknowledged)
        })?;
        Ok((took, seen))
    }

    /// The same change of release both ways, under traffic, in one run: stop-first (what
    /// `docker compose up` with a new image does alone: the old container stops, then the
    /// new one starts) to v2, then start-first back to v1. Returns the comparison line.
    fn compare_switches(&self, checks: &mut Checks) -> Result<String> {
        let addr = compose::published_addr(self.sh, &self.compose)?;
        let name = "stop-first against start-first, under traffic: the time to the new release serving";
        let compared = checks.run_value(name, || {
            let traffic = Traffic::start(&addr, "a stop-first switch", None);
            let stop_first = time_to_serving(&addr, &self.v2.revision, || {
                let compose_v2 = self.compose.clone().var("LOGBOOK_IMAGE", &self.v2.tag);
                process::run(self.sh, &compose_v2.cmd(&["up", "--detach", "--no-build", "--no-deps", "logbook"]))
            });
            let stop_first_traffic = traffic.stop()?;
            let stop_first = stop_first?;
            let (start_first, start_first_traffic) = self.under_traffic(&addr, "a start-first switch", || {
                time_to_serving(&addr, &self.v1_revision, || self.switch(&self.v1).map(drop))
            })?;
            harness::expect_acknowledged(&addr, &stop_first_traffic.acknowledged)?;
            Ok(format!(
                "switches compared: stop-first serving after {:.1}s ({} of {} requests failed, longest wait {} ms); \
                 start-first serving after {:.1}s ({} failed, longest wait {} ms)",
                stop_first.as_secs_f64(),
                stop_first_traffic.failed,
                stop_first_traffic.requests,
                stop_first_traffic.longest.as_millis(),
                start_first.as_secs_f64(),
                start_first_traffic.failed,
                start_first_traffic.longest.as_millis()
            ))
        })?;
        Ok(compared.unwrap_or_default())
    }

    /// `kill -9` of the service's process from the host: an unexpected death, not a stop
    /// (`docker kill` would count as one, and no restart policy applies to it). Docker's
    /// restart policy brings it back under traffic; nothing acknowledged may be lost.
    fn crash_and_restart(&self, checks: &mut Checks) -> Result<()> {
        let name =
            "kill -9 of the service process: Docker restarts it, it gets ready, nothing acknowledged is lost";
        // Signalling another user's process (the service runs as UID 10001) needs root.
        if process::query(self.sh, &Cmd::new("id").arg("-u"))? != "0" {
            checks.skip(name, "the runner is not root, so it cannot signal the container's process");
            return Ok(());
        }
        checks.run(name, || {
            let addr = compose::published_addr(self.sh, &self.compose)?;
            let container = compose::container_id(self.sh, &self.compose)?.context("no service container")?;
            let state = |field: &str| process::query(self.sh, &docker::inspect_format(&container, field));
            let restarts = state("{{.RestartCount}}")?;
            let pid = state("{{.State.Pid}}")?;
            // Requests in flight when the process dies may fail (it is a crash); what was
            // acknowledged may not be lost.
            let traffic = Traffic::start(&addr, "a crash", None);
            let restarted = (|| {
                process::run(self.sh, &Cmd::new("kill").args(["-KILL", &pid]))?;
                let killed = Instant::now();
                process::wait_for(
                    "Docker to restart the service",
                    Duration::from_secs(60),
                    Duration::from_millis(100),
                    || {
                        let now = state("{{.RestartCount}} {{.State.Running}}")?;
                        Ok((now != format!("{restarts} true") && now.ends_with(" true")).then_some(()))
                    },
                )?;
                compose::wait_ready(self.sh, &self.compose, Duration::from_secs(30))?;
                Ok::<_, anyhow::Error>(killed.elapsed())
            })();
            let report = traffic.stop()?;
            let took = restarted?;
            process::say(&format!(
                "  restarted by Docker and ready {:.1}s after the kill; traffic: {}",
                took.as_secs_f64(),
                report.summary()
            ));
            harness::expect_acknowledged(&addr, &report.acknowledged)?;
            ensure!(!report.acknowledged.is_empty(), "no entry was acknowledged around the crash");
            Ok(())
        })
    }

    fn backup_and_restore(&self, checks: &mut Checks, file: &Path) -> Result<()> {
        checks.run(
            "backup, more writes, restore: exactly the backed-up entries return, and no id is issued twice",
            || {
                let addr = compose::published_addr(self.sh, &self.compose)?;
                let before = harness::all_entries(&addr)?;
                let report = data::backup(self.sh, &self.compose, file)?;
                ensure!(
                    report.entries == before.len() as i64,
                    "the backup holds {} entries of {}",
                    report.entries,
                    before.len()
                );
                let mut issued = 0;
                for i in 1..=5 {
                    issued = harness::append(&addr, &format!("after backup {i}"), None)?;
                }
                let source = file.display().to_string();
                data::restore(self.sh, &self.compose, &self.history, file, &source, self.gate.timeout)?;
                let after: Vec<(i64, String)> =
                    harness::all_entries(&addr)?.into_iter().map(|e| (e.id, e.text)).collect();
                let expected: Vec<(i64, String)> = before.into_iter().map(|e| (e.id, e.text)).collect();
                ensure!(
                    after == expected,
                    "after the restore: {} entries, expected the {} backed up",
                    after.len(),
                    expected.len()
                );
                // The five entries after the backup are gone with the restore, but their ids
                // were seen by a client: the next entry gets a new one.
                let next = harness::append(&addr, "after the restore", None)?;
                ensure!(
                    next > issued,
                    "the restored stack issued id {next}, which it had issued before (up to {issued})"
                );
                Ok(())
            },
        )
    }
}

/// Runs `operation` while a client polls `/version` through the proxy; the time from the
/// start to the first answer from `revision`, measured the same way for any switch.
fn time_to_serving(addr: &str, revision: &str, operation: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let started = Instant::now();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let (addr, revision, done) = (addr.to_owned(), revision.to_owned(), done.clone());
        std::thread::spawn(move || {
            let deadline = started + Duration::from_secs(90);
            while Instant::now() < deadline && !done.load(std::sync::atomic::Ordering::Relaxed) {
                if harness::expect_revision(&addr, &revision).is_ok() {
                    return Some(started.elapsed());
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            None
        })
    };
    let ran = operation();
    if ran.is_err() {
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let served = poller.join().map_err(|_| anyhow::anyhow!("the /version poller panicked"))?;
    ran?;
    served.with_context(|| format!("/version never reported {revision}"))
}

//! `cargo xtask fault-drill`: no interruption leaves the stack needing a person. On a
//! throwaway stack, a client appends and reads through the proxy while `up` switches
//! between two releases; the drill interrupts the switch at each step of its journal with
//! Ctrl-C (SIGINT to the runner's process group), Ctrl-C twice, and SIGKILL of the whole
//! group, then runs the next `up`. After each, exactly one release must serve and no
//! acknowledged entry may be lost; the table says who repaired it, and what clients saw.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use xshell::Shell;

use super::harness::{self, Traffic};
use crate::commands::checks::report::Checks;
use crate::flags::FaultDrill;
use crate::outside::docker::{self, Compose};
use crate::outside::{image, process};
use crate::project;
use crate::targets::compose::journal::{self, Journal, Step};
use crate::targets::compose::{self, OnDrop, StackGuard};

/// How the runner is interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Ctrl-C: SIGINT to the runner's process group (it and the docker CLI it runs).
    Interrupt,
    /// Ctrl-C twice, 100 ms apart: the second exits at once, without cleaning up, unless
    /// the cleanup the first began is already under way.
    InterruptTwice,
    /// SIGKILL to the whole group: no cleanup at all, as when a CI job is cancelled hard.
    Kill,
}

impl Fault {
    const ALL: [Fault; 3] = [Fault::Interrupt, Fault::InterruptTwice, Fault::Kill];

    fn name(self) -> &'static str {
        match self {
            Fault::Interrupt => "SIGINT",
            Fault::InterruptTwice => "SIGINT x2",
            Fault::Kill => "SIGKILL",
        }
    }
}

/// Where in the switch the interruption lands: when the journal names a step, or (the
/// first step, written twice) once it also names the new container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Step(Step),
    NewRecorded,
}

impl Target {
    const ALL: [Target; 5] = [
        Target::Step(Step::StartingNew),
        Target::NewRecorded,
        Target::Step(Step::StoppingOld),
        Target::Step(Step::TakingOver),
        Target::Step(Step::RemovingOld),
    ];

    fn name(self) -> &'static str {
        match self {
            Target::Step(step) => step.name(),
            Target::NewRecorded => "starting-new, container recorded",
        }
    }

    fn reached(self, journal: &Journal) -> bool {
        match self {
            Target::Step(step) => journal.step == step,
            Target::NewRecorded => journal.step == Step::StartingNew && journal.new_container.is_some(),
        }
    }
}

/// One interruption and what followed.
struct Row {
    target: Target,
    fault: Fault,
    /// Whether the signal arrived while the journal named the step (else the switch
    /// passed it first, and the row proves less).
    hit: bool,
    /// Who brought the stack back to one release: the interrupted `up`, or the next one.
    repaired_by: &'static str,
    serving: usize,
    requests: usize,
    failed: usize,
    lost: usize,
    took: Duration,
}

impl FaultDrill {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let program = docker::connect(sh)?;
        let v1 = image::ensure(sh, self.no_build)?;
        let v2 = format!("{v1}-fault-v2");
        let broken = format!("{v1}-fault-broken");
        let compose = harness::throwaway_project(program, "fault")?;
        let scratch = sh.create_temp_dir()?;
        // The runner under test, copied: a rebuild of target/ while the drill runs must not
        // change it.
        let runner = scratch.path().join("xtask");
        // /proc/self/exe: this very binary, even if target/ has been rebuilt since.
        std::fs::copy("/proc/self/exe", &runner).context("cannot copy the runner")?;
        let drill = Drill { sh, compose, runner, state: scratch.path().join("state"), v1, v2 };
        let mut guard = StackGuard::new(sh, &drill.compose, OnDrop::RemoveWithVolumes);
        guard.remove_image(&drill.v2);
        guard.remove_image(&broken);
        harness::build_variant(sh, &drill.v1, &drill.v2)?;
        harness::build_broken_image(sh, &drill.v1, &broken)?;
        let mut checks = Checks::stop_at_first();
        let addr = checks.step("v1 deploys through the runner", || drill.up(&drill.v1.clone()))?;
        let mut rows = Vec::new();
        let mut target = drill.v2.clone();
        for step in Target::ALL {
            for fault in Fault::ALL {
                let name = format!(
                    "{} at {}: then exactly one release serves and no acknowledged entry is lost",
                    fault.name(),
                    step.name()
                );
                let row = checks.step(&name, || drill.interrupt(&addr, &target, step, fault))?;
                rows.push(row);
                target = if target == drill.v1 { drill.v2.clone() } else { drill.v1.clone() };
            }
        }
        checks.run("a failed release kept with --no-rollback is never adopted: the next `up` creates a new container", || {
            drill.kept_failure_is_not_adopted(&broken)
        })?;
        guard.succeeded();
        process::result(&table(&rows));
        let failed: usize = rows.iter().map(|r| r.failed).sum();
        let requests: usize = rows.iter().map(|r| r.requests).sum();
        let missed = rows.iter().filter(|r| !r.hit).count();
        process::result(&format!(
            "fault-drill: all {} checks passed; {} interruptions, {missed} of them after the switch had passed the step; one release served after each; 0 acknowledged entries lost; {failed} of {requests} requests failed",
            checks.passed(),
            rows.len()
        ));
        Ok(())
    }
}

struct Drill<'a> {
    sh: &'a Shell,
    compose: Compose,
    runner: PathBuf,
    state: PathBuf,
    v1: String,
    v2: String,
}

impl Drill<'_> {
    /// The runner as an operator would start it, on the throwaway project: its own
    /// process group, so a signal reaches it and the commands it runs, as a Ctrl-C would.
    fn runner(&self, args: &[&str]) -> Command {
        use std::os::unix::process::CommandExt;
        let mut cmd = Command::new(&self.runner);
        cmd.args(args)
            .env("LOGBOOK_STATE_DIR", &self.state)
            .env("LOGBOOK_PROJECT", &self.compose.project)
            .env("LOGBOOK_ENV_FILE", "/dev/null")
            .env_remove("LOGBOOK_REPLICA_URL")
            .env_remove("LOGBOOK_DOMAIN")
            .stdin(std::process::Stdio::null())
            .process_group(0);
        for (key, value) in &self.compose.env {
            cmd.env(key, value);
        }
        cmd
    }

    /// Runs the runner under test with `args` to its end.
    fn run_runner(&self, args: &[&str]) -> Result<std::process::ExitStatus> {
        let mut child = process::start(&mut self.runner(args))?;
        child.wait().with_context(|| format!("cannot wait for the runner under test ({})", args.join(" ")))
    }

    fn up(&self, image: &str) -> Result<String> {
        let status = self.run_runner(&["up", "--tag", image, "--timeout", "60"])?;
        ensure!(status.success(), "`up --tag {image}` failed ({status})");
        compose::published_addr(self.sh, &self.compose)
    }

    fn history(&self) -> PathBuf {
        self.state.join(format!("releases-{}.json", self.compose.project))
    }

    fn interrupt(&self, addr: &str, target: &str, step: Target, fault: Fault) -> Result<Row> {
        let started = Instant::now();
        let traffic = Traffic::start(addr, &format!("fault {} {}", step.name(), fault.name()), None);
        let outcome = (|| -> Result<(bool, &'static str)> {
            let mut child =
                RunnerChild(process::start(&mut self.runner(&["up", "--tag", target, "--timeout", "60"]))?);
            let hit = wait_for_step(&mut child.0, &self.history(), step)?;
            if hit {
                signal(&child.0, fault)?;
            }
            let exited = wait_exit(&mut child.0, Duration::from_secs(120))?;
            process::say(&format!("  the interrupted runner ended: {exited}"));
            // The next command repairs whatever the interrupted one left; it then switches
            // to the same target, as an operator would run it again.
            let left = Journal::load(&self.history())?.is_some();
            if !left {
                // It finished or undid the switch itself: that must already be one release.
                let serving = self.serving()?;
                ensure!(
                    serving == 1,
                    "{serving} service containers run after the interrupted runner cleaned up"
                );
            }
            let next = self.run_runner(&["up", "--tag", target, "--timeout", "60"])?;
            ensure!(next.success(), "the next `up --tag {target}` failed ({next})");
            Ok((hit, if left { "next up" } else { "itself" }))
        })();
        let report = traffic.stop()?;
        let (hit, repaired_by) = outcome?;
        let serving = self.serving()?;
        ensure!(serving == 1, "{serving} service containers run afterwards, not exactly one");
        ensure!(Journal::load(&self.history())?.is_none(), "the journal is still there after the next `up`");
        let running = compose::running_image(self.sh, &self.compose)?;
        ensure!(running.as_deref() == Some(target), "{running:?} serves, not {target}");
        let held: std::collections::BTreeMap<i64, String> =
            harness::all_entries(addr)?.into_iter().map(|e| (e.id, e.text)).collect();
        let lost = report.acknowledged.iter().filter(|(id, text)| held.get(id) != Some(text)).count();
        ensure!(lost == 0, "{lost} of {} acknowledged entries are lost", report.acknowledged.len());
        process::say(&format!("  traffic: {}", report.summary()));
        // A release refuses no request, interrupted or not: the proxy holds requests while
        // no container is ready, and a container is stopped (drained), never killed, by
        // either the interrupted command or the repair.
        report.expect_no_failures(&format!("{} at {}", fault.name(), step.name()))?;
        Ok(Row {
            target: step,
            fault,
            hit,
            repaired_by,
            serving,
            requests: report.requests,
            failed: report.failed,
            lost,
            took: started.elapsed(),
        })
    }

    fn kept_failure_is_not_adopted(&self, broken: &str) -> Result<()> {
        let serving = compose::running_image(self.sh, &self.compose)?.context("nothing serves")?;
        let target = if serving == self.v1 { self.v2.clone() } else { self.v1.clone() };
        let failed = self.run_runner(&["up", "--tag", broken, "--timeout", "20", "--no-rollback"])?;
        ensure!(!failed.success(), "the broken release came up");
        let kept = compose::containers(self.sh, &self.compose)?
            .into_iter()
            .filter(|c| c.service == project::NAME && c.state != "running")
            .count();
        ensure!(kept == 1, "{kept} stopped service containers are kept, expected the failed one");
        self.up(&target)?;
        ensure!(self.serving()? == 1, "not exactly one release serves");
        let running = compose::running_image(self.sh, &self.compose)?;
        ensure!(running.as_deref() == Some(target.as_str()), "{running:?} serves, not {target}");
        let left = compose::containers(self.sh, &self.compose)?
            .into_iter()
            .filter(|c| c.service == project::NAME && c.state != "running")
            .count();
        ensure!(left == 0, "{left} stopped service containers are left");
        Ok(())
    }

    /// Running service containers: exactly one when one release serves.
    fn serving(&self) -> Result<usize> {
        Ok(compose::containers(self.sh, &self.compose)?
            .iter()
            .filter(|c| c.service == project::NAME && c.state == "running")
            .count())
    }
}

/// Polls the journal until it names `step` (true), or the runner ends first (false: the
/// switch passed the step, or never reached it).
/// The runner under test, killed (with its group) if the drill stops early, so it never
/// races the drill's own teardown.
struct RunnerChild(Child);

impl Drop for RunnerChild {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = Command::new("kill").args(["-KILL", "--", &format!("-{}", self.0.id())]).status();
            let _ = self.0.wait();
        }
    }
}

fn wait_for_step(child: &mut Child, history: &Path, step: Target) -> Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(90);
    while Instant::now() < deadline {
        // A journal caught mid-rename reads as missing, never as damaged.
        if let Ok(Some(journal)) = Journal::load(history)
            && step.reached(&journal)
        {
            return Ok(true);
        }
        if child.try_wait()?.is_some() {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    bail!(
        "the switch did not reach step {} within 90 s (journal {})",
        step.name(),
        journal::path(history).display()
    )
}

fn signal(child: &Child, fault: Fault) -> Result<()> {
    let group = format!("-{}", child.id());
    let kill = |sig: &str| -> Result<()> {
        let status = Command::new("kill").args([sig, "--", &group]).status().context("cannot run kill")?;
        ensure!(status.success(), "kill {sig} -- {group} failed");
        Ok(())
    };
    match fault {
        Fault::Interrupt => kill("-INT"),
        Fault::InterruptTwice => {
            kill("-INT")?;
            std::thread::sleep(Duration::from_millis(100));
            // The group may be gone already: the first signal ended it.
            let _ = kill("-INT");
            Ok(())
        }
        Fault::Kill => kill("-KILL"),
    }
}

fn wait_exit(child: &mut Child, timeout: Duration) -> Result<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            bail!("the interrupted runner did not end within {} s", timeout.as_secs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| step | fault | hit | repaired by | serving after | requests | failed | lost | took |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {:.1}s |\n",
            r.target.name(),
            r.fault.name(),
            if r.hit { "yes" } else { "passed first" },
            r.repaired_by,
            r.serving,
            r.requests,
            r.failed,
            r.lost,
            r.took.as_secs_f64()
        ));
    }
    out.trim_end().to_owned()
}

//! `cargo xtask drill`: release safety rehearsed end to end on a throwaway stack.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use xshell::Shell;

use super::harness::{self, Checks};
use crate::flags::{Builder, Drill};
use crate::outside::docker::{self, Compose};
use crate::outside::image::{self, ImagePlan};
use crate::outside::process;
use crate::release::History;
use crate::targets::compose::switch::{self, Gate};
use crate::targets::compose::{self, OnDrop, StackGuard, data};

const FIRST_ENTRIES: i64 = 20;

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
        image::build_broken_image(sh, &drill.v1, &drill.broken)?;
        let mut checks = Checks::stop_at_first();
        let rollback_took = drill.releases(&mut checks)?;
        drill.backup_and_restore(&mut checks, &state.path().join("drill-backup.db"))?;
        guard.succeeded();
        process::result(&format!(
            "drill: all {} checks passed; rollback to v1 ready in {:.1}s; 0 of {FIRST_ENTRIES} entries lost",
            checks.passed(),
            rollback_took.as_secs_f64()
        ));
        Ok(())
    }
}

impl Rehearsal<'_> {
    fn switch(&self, image: &str) -> Result<String> {
        switch::switch(self.sh, &self.compose, &self.history, image, self.gate)
    }

    /// v1, v2, rollback, and a broken image; returns how long the rollback took.
    fn releases(&self, checks: &mut Checks) -> Result<Duration> {
        let addr = checks.step("v1 deploys and takes 20 entries", || {
            let addr = self.switch(&self.v1)?;
            for i in 1..=FIRST_ENTRIES {
                harness::append(&addr, &drill_text(i), None)?;
            }
            Ok(addr)
        })?;
        checks.run("switching to v2 serves v2's revision", || {
            self.switch(&self.v2.tag)?;
            harness::expect_revision(&addr, &self.v2.revision)
        })?;
        let took = checks.step("rollback brings v1 back, every entry intact", || {
            let started = Instant::now();
            let image = switch::rollback(self.sh, &self.compose, &self.history, None, self.gate.timeout)?;
            let took = started.elapsed();
            ensure!(image == self.v1, "rolled back to {image}, expected {}", self.v1);
            harness::expect_revision(&addr, &self.v1_revision)?;
            harness::expect_entries(&addr, FIRST_ENTRIES, drill_text)?;
            Ok(took)
        })?;
        checks.run("a broken image is replaced by v1 automatically", || {
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
            ensure!(running.as_deref() == Some(self.v1.as_str()), "v1 is not running");
            harness::expect_revision(&addr, &self.v1_revision)?;
            harness::expect_entries(&addr, FIRST_ENTRIES, drill_text)?;
            let current = History::load(&self.history)?.current().map(|r| r.image.clone());
            ensure!(
                current.as_deref() == Some(self.v1.as_str()),
                "the history records {current:?} as current"
            );
            Ok(())
        })?;
        Ok(took)
    }

    fn backup_and_restore(&self, checks: &mut Checks, file: &Path) -> Result<()> {
        checks.run("backup, more writes, restore: exactly the backed-up entries return", || {
            let addr = compose::published_addr(self.sh, &self.compose)?;
            let report = data::backup(self.sh, &self.compose, file)?;
            ensure!(report.entries == FIRST_ENTRIES, "the backup holds {} entries", report.entries);
            for i in 1..=5 {
                harness::append(&addr, &format!("after backup {i}"), None)?;
            }
            let after = |i: i64| {
                if i <= FIRST_ENTRIES { drill_text(i) } else { format!("after backup {}", i - FIRST_ENTRIES) }
            };
            harness::expect_entries(&addr, FIRST_ENTRIES + 5, after)?;
            data::restore(self.sh, &self.compose, &self.history, file, self.gate.timeout)?;
            harness::expect_entries(&addr, FIRST_ENTRIES, drill_text)
        })
    }
}

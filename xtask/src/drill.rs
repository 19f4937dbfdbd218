//! `cargo xtask drill`: release safety rehearsed end to end on a throwaway stack.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use xshell::Shell;

use crate::docker::{self, ImagePlan};
use crate::flags::{Builder, Drill};
use crate::release::{self, Gate, History};
use crate::smoke::{self, Checks};
use crate::stack::{self, OnDrop, StackGuard};
use crate::{backup, http, process, project, restore, rollback};

const TIMEOUT: Duration = Duration::from_secs(5);
const FIRST_ENTRIES: i64 = 20;

impl Drill {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let program = docker::connect(sh)?;
        let v1 = stack::ensure_image(sh, self.no_build)?;
        let pid = std::process::id();
        let compose = smoke::isolated(program, &format!("{}-drill-{pid}", project::NAME))?;
        if process::runner().dry_run {
            process::run(sh, &compose.clone().var("LOGBOOK_IMAGE", &v1).up())?;
            return Ok(());
        }
        // v2: the same sources with another revision compiled in, so /version tells them apart.
        let plan = ImagePlan::from_repo(sh)?;
        let v2 = plan.variant("drill-v2");
        let broken = format!("{v1}-drill-broken");
        let state = sh.create_temp_dir()?;
        let history = state.path().join("releases.json");
        let gate = Gate { timeout: Duration::from_secs(60), restore_previous: true };

        let mut guard = StackGuard::new(sh, &compose, OnDrop::RemoveWithVolumes);
        guard.remove_image(&v2.tag);
        guard.remove_image(&broken);
        crate::build::build(sh, &v2, Builder::Buildkit)?;
        docker::build_broken_image(sh, &v1, &broken)?;

        let mut checks = Checks::default();
        let addr = checks.run_value("v1 deploys and takes 20 entries", || {
            let addr = release::deploy(sh, &compose, &history, &v1, gate)?;
            for i in 1..=FIRST_ENTRIES {
                let r =
                    http::post_json(&addr, "/api/entries", &format!(r#"{{"text":"drill {i}"}}"#), TIMEOUT)?;
                ensure!(r.status == 201, "POST answered {}: {}", r.status, r.body);
            }
            Ok(addr)
        })?;
        checks.run("switching to v2 serves v2's revision", || {
            release::deploy(sh, &compose, &history, &v2.tag, gate)?;
            smoke::expect_revision(&addr, &v2.revision)
        })?;
        let rollback_took = checks.run_value("rollback brings v1 back, every entry intact", || {
            let started = Instant::now();
            let image = rollback::rollback(sh, &compose, &history, None, gate.timeout)?;
            let took = started.elapsed();
            ensure!(image == v1, "rolled back to {image}, expected {v1}");
            smoke::expect_revision(&addr, &plan.revision)?;
            expect_entries(&addr, FIRST_ENTRIES)?;
            Ok(took)
        })?;
        checks.run("a broken image is replaced by v1 automatically", || {
            let started = Instant::now();
            match release::deploy(sh, &compose, &history, &broken, gate) {
                Ok(_) => bail!("the broken image came up"),
                Err(e) => process::say(&format!(
                    "  refused as expected after {:.1}s: {}",
                    started.elapsed().as_secs_f64(),
                    e.to_string().lines().next().unwrap_or_default()
                )),
            }
            ensure!(
                release::running_image(sh, &compose)?.as_deref() == Some(v1.as_str()),
                "v1 is not running"
            );
            smoke::expect_revision(&addr, &plan.revision)?;
            expect_entries(&addr, FIRST_ENTRIES)?;
            let current = History::load(&history)?.current().map(|r| r.image.clone());
            ensure!(current.as_deref() == Some(v1.as_str()), "the history records {current:?} as current");
            Ok(())
        })?;
        checks.run("backup, more writes, restore: exactly the backed-up entries return", || {
            let file = state.path().join("drill-backup.db");
            let report = backup::backup(sh, &compose, &file)?;
            ensure!(report.entries == FIRST_ENTRIES, "the backup holds {} entries", report.entries);
            for i in 1..=5 {
                let r = http::post_json(
                    &addr,
                    "/api/entries",
                    &format!(r#"{{"text":"after backup {i}"}}"#),
                    TIMEOUT,
                )?;
                ensure!(r.status == 201, "POST answered {}", r.status);
            }
            expect_entries(&addr, FIRST_ENTRIES + 5)?;
            restore::restore(sh, &compose, &history, &file, gate.timeout)?;
            expect_entries(&addr, FIRST_ENTRIES)
        })?;
        guard.succeeded();
        process::result(&format!(
            "drill: all {} checks passed; rollback to v1 ready in {:.1}s; 0 of {FIRST_ENTRIES} entries lost",
            checks.passed,
            rollback_took.as_secs_f64()
        ));
        Ok(())
    }
}

/// Exactly entries 1..=count, each with the text the drill wrote.
fn expect_entries(addr: &str, count: i64) -> Result<()> {
    let page: serde_json::Value =
        serde_json::from_str(&http::get(addr, "/api/entries?limit=500", TIMEOUT)?.body)?;
    let ids: Vec<i64> = page["entries"]
        .as_array()
        .context("no entries list")?
        .iter()
        .filter_map(|e| e["id"].as_i64())
        .collect();
    ensure!(ids == (1..=count).collect::<Vec<_>>(), "expected entries 1..={count}, found {ids:?}");
    for id in [1, FIRST_ENTRIES.min(count)] {
        smoke::expect_entry(addr, id, &format!("drill {id}"))?;
    }
    Ok(())
}

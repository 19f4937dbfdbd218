//! `cargo xtask schema-drill`: releases that change the schema, rehearsed on a throwaway
//! stack under writes. Besides this tree's image (v1), it builds two releases from a copy
//! of the tree with one more migration each: v2 adds a table (additive), v3 adds another
//! with a breaking change (it raises the floor). A third image, v3 told to fail right
//! after it migrates, stands for a bad release that changed the data before failing.
//!
//! It switches forward and back across both changes while a client appends (half of its
//! appends with an idempotency key, retried once on failure) and reads through the proxy,
//! and checks that the additive rollback serves, that the breaking one is refused before
//! anything changes and then succeeds with `rollback --with-data`, that the guard brings
//! the previous release back on the snapshot after the bad release, and that across all
//! of it no request failed and no acknowledged entry is lost, duplicated or renumbered.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use xshell::Shell;

use super::harness::{self, Traffic, TrafficReport};
use crate::commands::checks::report::Checks;
use crate::flags::{Builder, SchemaDrill};
use crate::outside::docker::{self, Compose};
use crate::outside::image::{self, ImagePlan};
use crate::outside::process;
use crate::release::History;
use crate::targets::compose::schema::{self, Schema};
use crate::targets::compose::switch::{self, Gate};
use crate::targets::compose::{self, OnDrop, StackGuard, snapshot};

/// Where the migrations are listed, and the line the copies' new ones go before.
const STORAGE: &str = "logbook/src/storage.rs";
const MIGRATIONS_END: &str = "\n];\n\n/// The schema version this build writes and understands.";
/// The line after which the copies can be told to fail, once migrated.
const AFTER_MIGRATING: &str = "    migrate(&mut conn)?;\n";
/// What tells a copy to fail right after migrating (set in the bad release's image).
const FAIL_SETTING: &str = "LOGBOOK_DRILL_FAIL_AFTER_MIGRATING";

const ADDITIVE: &str = r#"
    // schema-drill: additive.
    Migration { sql: "CREATE TABLE drill_additive (note TEXT);", breaking: false },"#;
const BREAKING: &str = r#"
    // schema-drill: breaking.
    Migration { sql: "CREATE TABLE drill_breaking (note TEXT);", breaking: true },"#;

/// How long the proxy holds a request while no release serves (`lb_try_duration`).
const PROXY_HOLD: Duration = Duration::from_secs(20);

/// The images and the stack the drill works on.
struct Rehearsal<'a> {
    sh: &'a Shell,
    compose: Compose,
    history: std::path::PathBuf,
    gate: Gate,
    v1: String,
    v2: String,
    v3: String,
    v3_bad: String,
}

impl SchemaDrill {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let program = docker::connect(sh)?;
        let v1 = image::ensure(sh, self.no_build)?;
        let plan = ImagePlan::from_repo(sh)?;
        let state = sh.create_temp_dir()?;
        let drill = Rehearsal {
            sh,
            compose: harness::throwaway_project(program, "schema")?,
            history: state.path().join("releases.json"),
            gate: Gate { timeout: Duration::from_secs(60), restore_previous: true },
            v1,
            v2: plan.variant("schema-additive").tag,
            v3: plan.variant("schema-breaking").tag,
            v3_bad: plan.variant("schema-breaking-bad").tag,
        };
        let mut guard = StackGuard::new(sh, &drill.compose, OnDrop::RemoveWithVolumes);
        for image in [&drill.v2, &drill.v3, &drill.v3_bad] {
            guard.remove_image(image);
        }
        let started = Instant::now();
        build_with_migrations(sh, &plan.variant("schema-additive"), &[ADDITIVE])?;
        build_with_migrations(sh, &plan.variant("schema-breaking"), &[ADDITIVE, BREAKING])?;
        harness::build_with_setting(sh, &drill.v3, &drill.v3_bad, &format!("{FAIL_SETTING}=1"))?;
        process::say(&format!("built the two releases in {:.0}s", started.elapsed().as_secs_f64()));

        let mut checks = Checks::stop_at_first();
        let traffic = drill.rehearse(&mut checks)?;
        guard.succeeded();
        process::result(&format!(
            "schema-drill: all {} checks passed; {} requests across 6 switches, {} failed, longest wait {} ms; \
             0 of {} acknowledged entries lost, duplicated or renumbered",
            checks.passed(),
            traffic.requests,
            traffic.failed,
            traffic.longest.as_millis(),
            traffic.acknowledged.len()
        ));
        Ok(())
    }
}

/// Builds `plan` from a copy of this tree's build context whose storage has `migrations`
/// added after its own, and can be told to fail once migrated ([`FAIL_SETTING`]).
fn build_with_migrations(sh: &Shell, plan: &ImagePlan, migrations: &[&str]) -> Result<()> {
    process::effect("copy this tree and patch its migrations")?;
    let copy = sh.create_temp_dir()?;
    for file in
        ["Dockerfile", ".dockerignore", "Cargo.toml", "Cargo.lock", "logbook/Cargo.toml", "xtask/Cargo.toml"]
    {
        let to = copy.path().join(file);
        process::create_dir_all(to.parent().context("a file with no directory")?)?;
        std::fs::copy(sh.current_dir().join(file), &to).with_context(|| format!("cannot copy {file}"))?;
    }
    process::run(
        sh,
        &crate::outside::process::Cmd::new("cp")
            .args(["-R", "logbook/src"])
            .arg(copy.path().join("logbook/src").display().to_string()),
    )?;
    let storage = copy.path().join(STORAGE);
    let source = std::fs::read_to_string(&storage).with_context(|| format!("cannot read {STORAGE}"))?;
    let patched = patch_storage(&source, migrations)?;
    std::fs::write(&storage, patched).with_context(|| format!("cannot write the copy's {STORAGE}"))?;
    let _in_copy = sh.push_dir(copy.path());
    image::build(sh, plan, Builder::Buildkit)
}

/// `source` (the storage module) with `migrations` appended to its list, and a failure
/// after migrating when [`FAIL_SETTING`] is set. Fails if the module no longer has the
/// shape this relies on.
fn patch_storage(source: &str, migrations: &[&str]) -> Result<String> {
    ensure!(
        source.matches(MIGRATIONS_END).count() == 1 && source.matches(AFTER_MIGRATING).count() == 1,
        "{STORAGE} no longer has the lines the drill patches; update schema_drill.rs"
    );
    let fail = format!(
        "    if std::env::var_os(\"{FAIL_SETTING}\").is_some() {{\n        \
         return Err(StorageError::Refused(\"failing after migrating, as {FAIL_SETTING} says\".into()));\n    }}\n"
    );
    Ok(source
        .replace(MIGRATIONS_END, &format!("{}{MIGRATIONS_END}", migrations.concat()))
        .replace(AFTER_MIGRATING, &format!("{AFTER_MIGRATING}{fail}")))
}

impl Rehearsal<'_> {
    fn up(&self, image: &str) -> Result<String> {
        switch::switch(self.sh, &self.compose, &self.history, image, self.gate)
    }

    fn serving(&self) -> Result<(String, String)> {
        compose::running(self.sh, &self.compose)?.context("nothing serves")
    }

    /// The live database's schema, asked of the serving container.
    fn database(&self) -> Result<Schema> {
        let (container, _) = self.serving()?;
        schema::ask(self.sh, &schema::in_container(&container))
            .and_then(|r| r.database)
            .context("the serving release does not report the database's schema")
    }

    fn expect(&self, image: &str, version: usize, floor: usize) -> Result<()> {
        let (_, serving) = self.serving()?;
        ensure!(serving == image, "{serving} serves, not {image}");
        let database = self.database()?;
        ensure!(
            database == Schema { version, floor },
            "the database is at schema {} (floor {}), not {version} (floor {floor})",
            database.version,
            database.floor
        );
        Ok(())
    }

    fn snapshot_of(&self, image: &str) -> Option<crate::release::Snapshot> {
        History::load(&self.history).ok()?.latest_of(image)?.snapshot.clone()
    }

    fn rehearse(&self, checks: &mut Checks) -> Result<TrafficReport> {
        let addr = checks.step("v1 (schema 2) deploys", || {
            let addr = self.up(&self.v1)?;
            self.expect(&self.v1, 2, 1)?;
            Ok(addr)
        })?;
        let mut phases = Phases { addr: addr.clone(), rows: Vec::new(), total: TrafficReport::default() };
        let outcome = self.switches(checks, &mut phases);
        process::result(&phases.table());
        outcome?;
        let report = phases.total;
        checks.run("no request failed, and every acknowledged entry is there once, under its id", || {
            report.expect_no_failures("the schema changes")?;
            ensure!(
                report.acknowledged.len() > 20,
                "only {} appends were acknowledged",
                report.acknowledged.len()
            );
            harness::expect_acknowledged(&addr, &report.acknowledged)
        })?;
        Ok(report)
    }

    fn switches(&self, checks: &mut Checks, phases: &mut Phases) -> Result<()> {
        phases.run(
            checks,
            "v2 migrates additively (schema 3, floor 1) after a snapshot it records",
            || {
                self.up(&self.v2)?;
                self.expect(&self.v2, 3, 1)?;
                let snapshot = self.snapshot_of(&self.v2).context("no snapshot recorded with v2")?;
                ensure!(snapshot.schema == 2, "v2's snapshot is at schema {}", snapshot.schema);
                Ok(())
            },
        )?;
        phases.run(checks, "rollback across the additive change: v1 serves on schema 3", || {
            switch::rollback(self.sh, &self.compose, &self.history, None, self.gate.timeout)?;
            self.expect(&self.v1, 3, 1)
        })?;
        phases.run(
            checks,
            "v2 again, then v3 migrates with a breaking change (schema 4, floor 4)",
            || {
                self.up(&self.v2)?;
                self.up(&self.v3)?;
                self.expect(&self.v3, 4, 4)?;
                let snapshot = self.snapshot_of(&self.v3).context("no snapshot recorded with v3")?;
                ensure!(snapshot.schema == 3, "v3's snapshot is at schema {}", snapshot.schema);
                Ok(())
            },
        )?;
        phases.run(
            checks,
            "a plain rollback across the breaking change is refused before anything changes",
            || {
                let (before, _) = self.serving()?;
                let refused =
                    match switch::rollback(self.sh, &self.compose, &self.history, None, self.gate.timeout) {
                        Ok(image) => bail!("the rollback to {image} went ahead"),
                        Err(e) => format!("{e:#}"),
                    };
                ensure!(
                    refused.contains("nothing was changed") && refused.contains("rollback --with-data"),
                    "{refused}"
                );
                let (after, _) = self.serving()?;
                ensure!(before == after, "the serving container changed from {before} to {after}");
                self.expect(&self.v3, 4, 4)
            },
        )?;
        phases.run(
            checks,
            "rollback --with-data: v2 serves on the snapshot, with what v3 took carried over",
            || {
                let line = snapshot::rollback_with_data(
                    self.sh,
                    &self.compose,
                    &self.history,
                    None,
                    self.gate.timeout,
                )?;
                process::say(&format!("  {line}"));
                ensure!(!line.contains("not carried"), "{line}");
                self.expect(&self.v2, 3, 1)
            },
        )?;
        phases.run(
            checks,
            "a release that fails after a breaking migration: v2 serves again, on the snapshot",
            || {
                match self.up(&self.v3_bad) {
                    Ok(_) => bail!("{} became ready", self.v3_bad),
                    Err(e) => process::say(&format!("  refused as it should be: {}", first_line(&e))),
                }
                self.expect(&self.v2, 3, 1)
            },
        )?;
        Ok(())
    }
}

/// Each check runs under its own client traffic, whose figures make a row of the table;
/// all of it adds up to the total the last check judges.
struct Phases {
    addr: String,
    rows: Vec<(String, Duration, TrafficReport)>,
    total: TrafficReport,
}

impl Phases {
    fn run(&mut self, checks: &mut Checks, name: &str, step: impl FnOnce() -> Result<()>) -> Result<()> {
        // The proxy holds requests while no release serves, for up to 20 s: the data moving
        // in `rollback --with-data`, or the guard restoring the snapshot, takes a few.
        let label = format!("schema-drill {}", self.rows.len() + 1);
        let traffic = Traffic::start_within(&self.addr, &label, None, PROXY_HOLD);
        let started = Instant::now();
        let result = checks.run(name, step);
        let took = started.elapsed();
        let report = traffic.stop()?;
        let row = TrafficReport {
            requests: report.requests,
            failed: report.failed,
            longest: report.longest,
            ..TrafficReport::default()
        };
        self.rows.push((name.to_owned(), took, row));
        self.total.absorb(report);
        result
    }

    fn table(&self) -> String {
        let mut out =
            String::from("| check | took | requests | failed | longest wait |\n|---|---|---|---|---|");
        for (name, took, r) in &self.rows {
            out.push_str(&format!(
                "\n| {name} | {:.1}s | {} | {} | {} ms |",
                took.as_secs_f64(),
                r.requests,
                r.failed,
                r.longest.as_millis()
            ));
        }
        out
    }
}

fn first_line(e: &anyhow::Error) -> String {
    format!("{e:#}").lines().next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_copies_get_their_migrations_and_the_failure_switch() {
        let source = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(STORAGE),
        )
        .unwrap();
        let patched = patch_storage(&source, &[ADDITIVE, BREAKING]).unwrap();
        let additive = patched.find("drill_additive").unwrap();
        let breaking = patched.find("drill_breaking").unwrap();
        let end = patched.find(MIGRATIONS_END).unwrap();
        assert!(additive < breaking && breaking < end);
        assert!(patched.contains(&format!("{AFTER_MIGRATING}    if std::env::var_os(\"{FAIL_SETTING}\")")));
        assert!(patch_storage("fn main() {}", &[ADDITIVE]).is_err());
    }
}

//! `cargo xtask ci`: the pipeline GitHub Actions runs, step by step, with a summary.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use xshell::Shell;

use clap::ValueEnum;

use super::ci_cache::{self, Cache};
use crate::commands::checks::{advisories, coverage, lint};
use crate::flags::{
    AuditImage, Build, Builder, Ci, CiStep, DEFAULT_FAIL_UNDER, Drill, FaultDrill, MonitoringSmoke, Platform,
    RecoveryDrill, ReleaseDrill, Scan, ScanFormat, SchemaDrill, Smoke, SwarmDrill,
};
use crate::outside::process::{self, Cmd};
use crate::outside::tools::{self, cargo};
use crate::outside::trivy::Trivy;
use crate::outside::{docker, image};

impl CiStep {
    /// Every step, in the order they run: the order of the enum.
    pub fn all() -> &'static [CiStep] {
        CiStep::value_variants()
    }

    /// The name `--skip` and `--only` take, which is also the subcommand it runs.
    pub fn name(self) -> String {
        self.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default()
    }

    /// Steps whose failure makes this one pointless (a skipped one does not: the image may
    /// exist already).
    fn needs(self) -> &'static [CiStep] {
        match self {
            CiStep::Fmt
            | CiStep::Clippy
            | CiStep::Lint
            | CiStep::Test
            | CiStep::Coverage
            | CiStep::BuildClassic
            | CiStep::Build
            | CiStep::Advisories => &[],
            _ if self.tests_the_image() => &[CiStep::Build],
            CiStep::Scan => &[CiStep::Build],
            _ => &[],
        }
    }

    /// Steps that share nothing with each other while they run (no engine, no image, no
    /// fixed port): with `--jobs` above 1, they run side by side, before the others.
    pub fn runs_beside_others(self) -> bool {
        matches!(self, CiStep::Fmt | CiStep::Clippy | CiStep::Lint | CiStep::Advisories)
    }

    /// The steps that build this tree's image.
    fn builds(self) -> bool {
        matches!(self, CiStep::Build | CiStep::BuildClassic)
    }

    /// The steps that run this tree's image: they need the build, and its id is their input.
    pub fn tests_the_image(self) -> bool {
        matches!(
            self,
            CiStep::AuditImage
                | CiStep::Smoke
                | CiStep::Drill
                | CiStep::MonitoringSmoke
                | CiStep::SwarmDrill
                | CiStep::ReleaseDrill
                | CiStep::RecoveryDrill
                | CiStep::FaultDrill
                | CiStep::SchemaDrill
                | CiStep::PlatformSmoke
        )
    }

    /// Runs the step. `required`: a missing tool fails the step instead of skipping it.
    fn run(self, sh: &Shell, required: bool) -> Result<Outcome> {
        let done = |result: Result<()>| result.map(|()| Outcome::Pass(String::new()));
        match self {
            CiStep::Fmt => done(process::run(sh, &fmt_check())),
            CiStep::Clippy => done(process::run(sh, &clippy())),
            CiStep::Lint => done(lint::lint(sh, true)),
            // The tests render a report through the workflow's jq program.
            CiStep::Test => done(
                tools::JQ
                    .require(sh, true)
                    .and_then(|()| process::run(sh, &tests(tools::NEXTEST.installed(sh)))),
            ),
            CiStep::Coverage => {
                done(tools::JQ.require(sh, true).and_then(|()| coverage::run(sh, DEFAULT_FAIL_UNDER, true)))
            }
            // This machine's image: the other platforms' are platform-smoke's.
            CiStep::BuildClassic => done(Build { builder: Builder::Classic, platform: host_only() }.run(sh)),
            CiStep::Build => done(Build { builder: Builder::Buildkit, platform: host_only() }.run(sh)),
            CiStep::PlatformSmoke => done(crate::commands::drills::platform_smoke::run(sh, true, true)),
            CiStep::Smoke => done(Smoke { no_build: true, tag: None, url: None }.run(sh)),
            CiStep::Drill => done(Drill { no_build: true }.run(sh)),
            CiStep::MonitoringSmoke => done(MonitoringSmoke { no_build: true }.run(sh)),
            CiStep::SwarmDrill => done(SwarmDrill { no_build: true, timeout: 120 }.run(sh)),
            CiStep::ReleaseDrill => done(ReleaseDrill { no_build: true }.run(sh)),
            CiStep::RecoveryDrill => done(RecoveryDrill { no_build: true }.run(sh)),
            CiStep::FaultDrill => done(FaultDrill { no_build: true }.run(sh)),
            CiStep::SchemaDrill => done(SchemaDrill { no_build: true }.run(sh)),
            CiStep::AuditImage => done(AuditImage { tag: None, self_test: true }.run(sh)),
            CiStep::Advisories => advisories::check(sh, true).map(Outcome::Pass),
            CiStep::Scan => scan_step(sh, required),
        }
    }
}

/// This machine's platform alone (none where the image is not built for it: `build`
/// then says so).
fn host_only() -> Vec<Platform> {
    Platform::host().into_iter().collect()
}

/// Where `ci` finds a Trivy cache holding a test database, for the gate's self-test.
pub const TRIVY_TEST_DB_VAR: &str = "LOGBOOK_TRIVY_TEST_DB";

/// The real scan (Trivy installed first when missing), then, where a test database is
/// given, the proof that the vulnerability gate blocks and that the ignore file works.
fn scan_step(sh: &Shell, required: bool) -> Result<Outcome> {
    if Trivy::find(sh).is_none()
        && let Err(e) = tools::TRIVY.require(sh, true)
    {
        if required {
            bail!("trivy is missing, and --require scan was given: {e:#}");
        }
        return Ok(Outcome::Skipped(format!("trivy not found: {e:#}")));
    }
    let scan = |gate_self_test| Scan {
        tag: None,
        severity: "HIGH,CRITICAL".into(),
        ignore_unfixed: false,
        format: ScanFormat::Table,
        output: None,
        ignorefile: ".trivyignore".into(),
        require_database: required,
        gate_self_test,
    };
    scan(None).run(sh)?;
    match std::env::var_os(TRIVY_TEST_DB_VAR) {
        Some(dir) => {
            scan(Some(dir.into())).run(sh)?;
            Ok(Outcome::Pass("the gate proven with a test database".into()))
        }
        None => {
            Ok(Outcome::Pass(format!("gate self-test not run: no test database (set {TRIVY_TEST_DB_VAR})")))
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// Passed, with an optional note (what it could not check, say).
    Pass(String),
    Fail(String),
    Skipped(String),
    /// A dry run ended inside the step: its commands were printed, not run.
    DryRun,
    /// Not run: what it reads is unchanged since the recorded green run.
    Cached(ci_cache::Record),
}

struct StepReport {
    step: CiStep,
    outcome: Outcome,
    took: Option<Duration>,
}

/// A step about to run, and what its cache needs once it has.
struct Pending {
    step: CiStep,
    /// Its key and inputs, when the cache is on.
    keyed: Option<(String, ci_cache::Reads)>,
}

impl Ci {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let started = Instant::now();
        if self.json {
            process::keep_stdout_for_a_document();
        }
        let on_ci = std::env::var("CI").is_ok_and(|v| v == "true");
        // Under --dry-run too: the plan then shows which steps a run would take as cached.
        let cache =
            (!self.no_cache && !on_ci).then(|| Cache::new(&sh.current_dir().join("target").join("ci-cache")));
        if cache.is_none() {
            process::say("ci: every step runs (--no-cache or CI=true)");
        }
        let tree = match &cache {
            Some(_) => ci_cache::tree(sh)?,
            None => Vec::new(),
        };
        let mut reports: Vec<StepReport> = Vec::new();
        // Steps that share nothing run first, side by side, each with its log printed
        // whole once it ends; the table keeps the order of the steps. A dry run's plan is
        // one list in order, so it takes them in turn.
        let jobs = process::parallel_steps(usize::from(self.jobs));
        let beside: Vec<CiStep> = if jobs > 1 {
            CiStep::all().iter().copied().filter(|s| s.runs_beside_others()).collect()
        } else {
            Vec::new()
        };
        let mut batch = Vec::new();
        for &step in &beside {
            match self.decide(sh, step, &reports, cache.as_ref(), &tree) {
                Ok(outcome) => reports.push(StepReport { step, outcome, took: None }),
                Err(pending) => batch.push(pending),
            }
        }
        for (pending, outcome, took) in run_beside(sh, batch, jobs, |sh, step| self.execute(sh, step))? {
            reports.push(self.finish(sh, pending, outcome, took, cache.as_ref())?);
        }
        for &step in CiStep::all().iter().filter(|s| !beside.contains(s)) {
            let report = match self.decide(sh, step, &reports, cache.as_ref(), &tree) {
                Ok(outcome) => StepReport { step, outcome, took: None },
                Err(pending) => {
                    let step_started = Instant::now();
                    let outcome = self.execute(sh, step);
                    self.finish(sh, pending, outcome, step_started.elapsed(), cache.as_ref())?
                }
            };
            reports.push(report);
        }
        reports.sort_by_key(|r| CiStep::all().iter().position(|s| *s == r.step));

        // With --json the table still goes to the log, on stderr.
        process::summary(summary_table(&reports, started.elapsed()).trim_end());
        if self.json {
            process::document(&summary_json(&reports, started.elapsed()));
        }
        let failed: Vec<String> =
            reports.iter().filter(|r| matches!(r.outcome, Outcome::Fail(_))).map(|r| r.step.name()).collect();
        if !failed.is_empty() {
            bail!("ci failed: {}", failed.join(", "));
        }
        Ok(())
    }

    /// What becomes of `step` without running it (left out, not worth running, or cached),
    /// or, as the error, that it runs.
    fn decide(
        &self,
        sh: &Shell,
        step: CiStep,
        reports: &[StepReport],
        cache: Option<&Cache>,
        tree: &[String],
    ) -> std::result::Result<Outcome, Pending> {
        let left_out = if process::interrupted() {
            Some(Outcome::Skipped("not run: interrupted".into()))
        } else if !self.only.is_empty() && !self.only.contains(&step) {
            Some(Outcome::Skipped("not in --only".into()))
        } else if self.skip.contains(&step) {
            Some(Outcome::Skipped("--skip".into()))
        } else {
            step.needs()
                .iter()
                .find(|need| {
                    reports
                        .iter()
                        .any(|r| r.step == **need && matches!(r.outcome, Outcome::Fail(_) | Outcome::DryRun))
                })
                .map(|need| Outcome::Skipped(format!("not run: needs {}", need.name())))
        };
        if let Some(outcome) = left_out {
            return Ok(outcome);
        }
        let forced = self.force.as_ref().is_some_and(|f| f.is_empty() || f.contains(&step));
        // A forced step is keyed too, so that its result replaces the record.
        let keyed =
            cache.and_then(|_| ci_cache::reads(step)).map(|reads| (step_key(sh, &reads, tree), reads));
        let hit = keyed
            .as_ref()
            .zip(cache)
            .filter(|_| !forced)
            .and_then(|((key, _), cache)| cache.hit(step, key))
            .filter(|record| {
                !step.builds()
                    || build_record_holds(step, record.image.as_deref(), tree_image_id(sh).as_deref(), |id| {
                        docker::image_exists(sh, id)
                    })
            });
        match hit {
            Some(record) => Ok(Outcome::Cached(record)),
            None => Err(Pending { step, keyed }),
        }
    }

    /// Runs `step` in a log group, and says how it ended.
    fn execute(&self, sh: &Shell, step: CiStep) -> Outcome {
        let required = self.require.contains(&step);
        let mark = process::ChangeMark::now();
        match process::group(&format!("ci: {}", step.name()), || process::outcome(step.run(sh, required))) {
            // Its changes were printed, not made: it did not pass, it was planned.
            Ok(Ok(Outcome::Pass(_))) if mark.printed_since() => Outcome::DryRun,
            Ok(Ok(outcome)) => outcome,
            Err(end) => {
                process::say(&format!("ci: {}: {end:#}", step.name()));
                Outcome::DryRun
            }
            Ok(Err(e)) => {
                process::say(&format!("ci: {} failed: {e:#}", step.name()));
                Outcome::Fail(format!("{e:#}"))
            }
        }
    }
}

/// Runs `batch` with `execute`, at most `jobs` at a time, each on a thread of its own
/// with its output in `target/ci-logs/<step>.log`, printed whole in the order of the
/// steps once all have ended.
fn run_beside(
    sh: &Shell,
    batch: Vec<Pending>,
    jobs: usize,
    execute: impl Fn(&Shell, CiStep) -> Outcome + Sync,
) -> Result<Vec<(Pending, Outcome, Duration)>> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    // The runner's own logs, not a change to the project: made even by a dry run.
    let logs = sh.current_dir().join("target").join("ci-logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("cannot create {}", logs.display()))?;
    let log_of = |step: CiStep| logs.join(format!("{}.log", step.name()));
    process::say(&format!(
        "ci: {} side by side, at most {jobs} at once: {}",
        batch.len(),
        batch.iter().map(|p| p.step.name()).collect::<Vec<_>>().join(", ")
    ));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let ended: std::sync::Mutex<Vec<Option<(Outcome, Duration)>>> =
        std::sync::Mutex::new(batch.iter().map(|_| None).collect());
    let dir = sh.current_dir();
    std::thread::scope(|scope| {
        for _ in 0..jobs.min(batch.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let Some(pending) = batch.get(i) else { break };
                    let step_started = Instant::now();
                    let outcome = match std::fs::File::create(log_of(pending.step))
                        .map_err(anyhow::Error::from)
                        .and_then(|log| {
                            // A shell of its own: a shell's directory and variables are not shared.
                            let sh = Shell::new()?;
                            sh.change_dir(&dir);
                            Ok(process::logging_to(log, || execute(&sh, pending.step)))
                        }) {
                        Ok(outcome) => outcome,
                        Err(e) => Outcome::Fail(format!("cannot run it beside others: {e:#}")),
                    };
                    ended.lock().unwrap_or_else(|p| p.into_inner())[i] =
                        Some((outcome, step_started.elapsed()));
                }
            });
        }
    });
    let ended = ended.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut results = Vec::new();
    for (pending, ended) in batch.into_iter().zip(ended) {
        process::say(std::fs::read_to_string(log_of(pending.step)).unwrap_or_default().trim_end());
        let (outcome, took) = ended.unwrap_or((Outcome::Fail("it did not end".into()), Duration::ZERO));
        results.push((pending, outcome, took));
    }
    Ok(results)
}

impl Ci {
    /// Records a green result under its key (when the inputs did not change while it ran),
    /// or forgets the step's record otherwise.
    fn finish(
        &self,
        sh: &Shell,
        pending: Pending,
        outcome: Outcome,
        took: Duration,
        cache: Option<&Cache>,
    ) -> Result<StepReport> {
        let Pending { step, keyed } = pending;
        if let (Some(cache), Some((key, reads))) = (cache, keyed) {
            // Inputs edited while the step ran were not what it tested.
            let unchanged = step_key(sh, &reads, &ci_cache::tree(sh)?) == key;
            let passed = (matches!(outcome, Outcome::Pass(_)) && unchanged).then(|| ci_cache::Record {
                key,
                at: crate::time::now_rfc3339(),
                revision: revision(sh),
                seconds: took.as_secs_f64(),
                image: if step.builds() { tree_image_id(sh) } else { None },
            });
            // A planned step says nothing about its last result.
            if !matches!(outcome, Outcome::DryRun) {
                cache.note(step, passed)?;
            }
        }
        Ok(StepReport { step, outcome, took: Some(took) })
    }
}

/// Whether a build's green record still holds: only while the very image it built is
/// there (a dirty tree's tag is shared by every dirty state). The BuildKit build's image is
/// what the live steps test, so the tree's tag must name it. The classic build proves that
/// the Dockerfile builds with that builder; the BuildKit build after it takes the tag, so
/// its image need only still exist.
fn build_record_holds(
    step: CiStep,
    built: Option<&str>,
    tagged: Option<&str>,
    exists: impl Fn(&str) -> bool,
) -> bool {
    match (step, built) {
        (_, None) => false,
        (CiStep::BuildClassic, Some(id)) => exists(id),
        (_, Some(id)) => tagged == Some(id),
    }
}

/// The id of this tree's image, if it is there.
fn tree_image_id(sh: &Shell) -> Option<String> {
    let tag = image::ImagePlan::from_repo(sh).ok()?.tag;
    process::query(sh, &docker::inspect_format(&tag, "{{.Id}}")).ok()
}

/// The key of what `step` reads now.
fn step_key(sh: &Shell, reads: &ci_cache::Reads, tree: &[String]) -> String {
    let image_id = if reads.image { tree_image_id(sh) } else { None };
    ci_cache::measure(sh, reads, tree, image_id.as_deref()).key()
}

/// The commit this tree is at (short), for the record of a green step.
fn revision(sh: &Shell) -> String {
    process::query(sh, &Cmd::new("git").args(["rev-parse", "--short=12", "HEAD"])).unwrap_or_default()
}

pub fn fmt_check() -> Cmd {
    cargo().args(["fmt", "--all", "--", "--check"])
}

pub fn clippy() -> Cmd {
    cargo().args(["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"])
}

pub fn tests(nextest: bool) -> Cmd {
    if nextest {
        cargo().args(["nextest", "run", "--workspace", "--locked", "--no-fail-fast"])
    } else {
        cargo().args(["test", "--workspace", "--locked", "--no-fail-fast"])
    }
}

fn outcome_words(outcome: &Outcome) -> (&'static str, &str) {
    match outcome {
        Outcome::Pass(note) => ("pass", note),
        Outcome::Fail(why) => ("FAIL", why.lines().next().unwrap_or_default()),
        Outcome::Skipped(why) => ("skipped", why),
        Outcome::DryRun => ("dry run", "commands printed, not run"),
        Outcome::Cached(_) => ("cached", ""),
    }
}

/// The note of a cached step: the green run it comes from.
fn cached_note(record: &ci_cache::Record) -> String {
    format!("inputs unchanged since the pass at {} ({}, {:.1}s)", record.at, record.revision, record.seconds)
}

fn seconds(took: Option<Duration>) -> String {
    took.map_or_else(|| "-".to_owned(), |t| format!("{:.1}s", t.as_secs_f64()))
}

fn summary_table(reports: &[StepReport], total: Duration) -> String {
    let width = CiStep::all().iter().map(|s| s.name().len()).max().unwrap_or(0);
    let mut out = format!("\n{:<width$}  result   time     note\n", "step");
    for r in reports {
        let (result, note) = outcome_words(&r.outcome);
        let cached = match &r.outcome {
            Outcome::Cached(record) => cached_note(record),
            _ => String::new(),
        };
        let note = if cached.is_empty() { note } else { cached.as_str() };
        let line = format!("{:<width$}  {:<8} {:<8} {}", r.step.name(), result, seconds(r.took), note);
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let _ = writeln!(out, "{:<width$}  {:<8} {}", "total", "", seconds(Some(total)));
    out
}

/// `ci --json`: each step in order with its result (`pass`, `FAIL`, `skipped`, `dry run`,
/// `cached`), seconds (null when it did not run), note, and for a cached step the green run
/// it comes from; then the total.
fn summary_json(reports: &[StepReport], total: Duration) -> String {
    let steps: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            let (result, note) = outcome_words(&r.outcome);
            let cached_from = match &r.outcome {
                Outcome::Cached(record) => serde_json::to_value(record).unwrap_or_default(),
                _ => serde_json::Value::Null,
            };
            serde_json::json!({
                "step": r.step.name(),
                "result": result,
                "seconds": r.took.map(|t| t.as_secs_f64()),
                "note": note,
                "cached_from": cached_from,
            })
        })
        .collect();
    serde_json::json!({ "steps": steps, "total_seconds": total.as_secs_f64() }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_beside_each_other_overlap_and_keep_their_logs_apart() {
        let sh = Shell::new().unwrap();
        let dir = sh.create_temp_dir().unwrap();
        sh.change_dir(dir.path());
        let steps = [CiStep::Fmt, CiStep::Clippy, CiStep::Lint];
        let run = |jobs| {
            let batch = steps.iter().map(|&step| Pending { step, keyed: None }).collect();
            let started = Instant::now();
            let ended = run_beside(&sh, batch, jobs, |_, step| {
                for i in 0..3 {
                    process::say(&format!("{} says {i}", step.name()));
                    std::thread::sleep(Duration::from_millis(100));
                }
                if step == CiStep::Clippy {
                    Outcome::Fail("red".into())
                } else {
                    Outcome::Pass(String::new())
                }
            })
            .unwrap();
            (ended, started.elapsed())
        };
        let (ended, took) = run(3);
        // In turn, the three would take 900 ms.
        assert!(took < Duration::from_millis(750), "took {took:?}");
        let order: Vec<CiStep> = ended.iter().map(|(pending, _, _)| pending.step).collect();
        assert_eq!(order, steps);
        assert_eq!(ended[1].1, Outcome::Fail("red".into()));
        assert!(ended.iter().all(|(_, _, took)| *took >= Duration::from_millis(300)));
        for step in steps {
            let log = std::fs::read_to_string(dir.path().join(format!("target/ci-logs/{}.log", step.name())))
                .unwrap();
            let expected: Vec<String> = (0..3).map(|i| format!("{} says {i}", step.name())).collect();
            assert_eq!(log.lines().collect::<Vec<_>>(), expected);
        }
        // Two at a time: the third waits for a free one.
        let (_, took) = run(2);
        assert!(took >= Duration::from_millis(600) && took < Duration::from_millis(850), "took {took:?}");
    }

    #[test]
    fn commands_are_exact() {
        assert_eq!(fmt_check().args, ["fmt", "--all", "--", "--check"]);
        assert_eq!(
            clippy().args,
            ["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"]
        );
        assert_eq!(tests(true).args[..2], ["nextest", "run"]);
        assert_eq!(tests(false).args[..1], ["test"]);
    }

    #[test]
    fn summary_lists_every_step_with_its_result_and_time() {
        let reports = vec![
            StepReport {
                step: CiStep::Fmt,
                outcome: Outcome::Pass(String::new()),
                took: Some(Duration::from_millis(1500)),
            },
            StepReport {
                step: CiStep::Clippy,
                outcome: Outcome::Fail("`cargo clippy` failed\nmore".into()),
                took: Some(Duration::from_secs(3)),
            },
            StepReport { step: CiStep::Test, outcome: Outcome::Skipped("--skip".into()), took: None },
        ];
        let table = summary_table(&reports, Duration::from_secs(5));
        let row = |step: &str| -> Vec<&str> {
            table.lines().find(|l| l.starts_with(&format!("{step} "))).unwrap().split_whitespace().collect()
        };
        assert_eq!(row("fmt"), ["fmt", "pass", "1.5s"], "{table}");
        assert_eq!(row("clippy"), ["clippy", "FAIL", "3.0s", "`cargo", "clippy`", "failed"], "{table}");
        assert_eq!(row("test"), ["test", "skipped", "-", "--skip"], "{table}");
        assert_eq!(row("total"), ["total", "5.0s"], "{table}");
        // The result column lines up.
        let at =
            |step: &str, word: &str| table.lines().find(|l| l.starts_with(step)).unwrap().find(word).unwrap();
        assert_eq!(at("fmt", "pass"), at("clippy", "FAIL"));
        assert_eq!(at("fmt", "pass"), at("test", "skipped"));
        let json: serde_json::Value =
            serde_json::from_str(&summary_json(&reports, Duration::from_secs(5))).unwrap();
        assert_eq!(json["steps"][0]["step"], "fmt");
        assert_eq!(json["steps"][0]["result"], "pass");
        assert_eq!(json["steps"][1]["result"], "FAIL");
        assert_eq!(json["steps"][1]["seconds"], 3.0);
        assert!(json["steps"][2]["seconds"].is_null() && json["steps"][2]["cached_from"].is_null());
        assert_eq!(json["total_seconds"], 5.0);
    }

    #[test]
    fn a_build_record_holds_while_its_image_is_there_and_buildkit_s_while_it_is_tagged() {
        let exists = |id: &str| id == "sha256:classic" || id == "sha256:buildkit";
        let tagged = Some("sha256:buildkit");
        assert!(build_record_holds(CiStep::BuildClassic, Some("sha256:classic"), tagged, exists));
        assert!(!build_record_holds(CiStep::BuildClassic, Some("sha256:pruned"), tagged, exists));
        assert!(build_record_holds(CiStep::Build, Some("sha256:buildkit"), tagged, exists));
        assert!(!build_record_holds(CiStep::Build, Some("sha256:classic"), tagged, exists));
        assert!(!build_record_holds(CiStep::Build, Some("sha256:buildkit"), None, exists));
        assert!(!build_record_holds(CiStep::Build, None, tagged, exists));
    }

    /// The workflow's job summary is `ci --json` through .github/ci-summary.jq: every kind
    /// of result renders as one table row, a cached one naming its run, and a note's column
    /// breaks and new lines cannot break the table.
    #[test]
    fn the_workflow_renders_the_json_report_as_the_job_summary() {
        let cached = ci_cache::Record {
            key: "k".into(),
            at: "2026-12-04T10:00:00Z".into(),
            revision: "0123456789ab".into(),
            seconds: 12.34,
            image: None,
        };
        let reports = vec![
            StepReport { step: CiStep::Fmt, outcome: Outcome::Cached(cached), took: None },
            StepReport {
                step: CiStep::Clippy,
                outcome: Outcome::Fail("`cargo clippy` failed: a | b\nnext line".into()),
                took: Some(Duration::from_millis(3040)),
            },
            StepReport {
                step: CiStep::Lint,
                outcome: Outcome::Pass("first\r\nsecond".into()),
                took: Some(Duration::from_secs(9)),
            },
            StepReport { step: CiStep::Test, outcome: Outcome::Skipped("not in --only".into()), took: None },
            StepReport {
                step: CiStep::Build,
                outcome: Outcome::DryRun,
                took: Some(Duration::from_millis(50)),
            },
        ];
        let json = summary_json(&reports, Duration::from_millis(12_345));
        let program = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.github/ci-summary.jq");
        let sh = Shell::new().unwrap();
        let jq = Cmd::new("jq").args(["--raw-output", "--from-file"]).arg(program.display().to_string());
        let markdown = process::query_with_input(&sh, &jq, &json)
            .unwrap_or_else(|e| panic!("{e:#} (this test needs jq: {})", tools::JQ.fix()));
        assert_eq!(
            markdown,
            "### cargo xtask ci\n\n\
             | step | result | time | note |\n\
             |---|---|---|---|\n\
             | fmt | cached | - | inputs unchanged since the pass at 2026-12-04T10:00:00Z (0123456789ab, 12.3s) |\n\
             | clippy | FAIL | 3s | `cargo clippy` failed: a \\| b |\n\
             | lint | pass | 9s | first second |\n\
             | test | skipped | - | not in --only |\n\
             | build | dry run | 0.1s | commands printed, not run |\n\
             \n\
             Total: 12.3s"
        );
    }

    /// Every `--only` list in the GitHub workflow names real steps, and together they run
    /// every step of `cargo xtask ci`: the list comes from the enum itself.
    #[test]
    fn the_ci_workflow_runs_every_step() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.github/workflows/ci.yml");
        let workflow = std::fs::read_to_string(path).unwrap();
        let mut named = std::collections::BTreeSet::new();
        for line in workflow.lines().filter(|l| l.contains("cargo xtask ci")) {
            let words: Vec<&str> = line.split_whitespace().collect();
            for flag in ["--only", "--skip", "--require"] {
                if let Some(i) = words.iter().position(|w| *w == flag) {
                    for step in words[i + 1].split(',') {
                        let known = CiStep::all().iter().any(|s| s.name() == step);
                        assert!(known, "ci.yml: `{flag} {step}` is not a ci step");
                        if flag == "--only" {
                            named.insert(step.to_owned());
                        }
                    }
                }
            }
        }
        for step in CiStep::all() {
            assert!(named.contains(&step.name()), "the ci workflow never runs the `{}` step", step.name());
        }
    }
}

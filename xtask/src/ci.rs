//! `cargo xtask ci`: the pipeline GitHub Actions runs, step by step, with a summary.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use xshell::Shell;

use clap::ValueEnum;

use crate::flags::{Build, Builder, Ci, CiStep, Drill, Lint, MonitoringSmoke, Smoke};
use crate::process::{self, Cmd};

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
            | CiStep::BuildClassic
            | CiStep::Build => &[],
            CiStep::Smoke | CiStep::Drill | CiStep::MonitoringSmoke => &[CiStep::Build],
        }
    }

    fn run(self, sh: &Shell) -> Result<()> {
        match self {
            CiStep::Fmt => process::run(sh, &fmt_check()),
            CiStep::Clippy => process::run(sh, &clippy()),
            CiStep::Lint => Lint {}.run(sh),
            CiStep::Test => process::run(sh, &tests(nextest_installed(sh))),
            CiStep::BuildClassic => Build { builder: Builder::Classic }.run(sh),
            CiStep::Build => Build { builder: Builder::Buildkit }.run(sh),
            CiStep::Smoke => Smoke { no_build: true }.run(sh),
            CiStep::Drill => Drill { no_build: true }.run(sh),
            CiStep::MonitoringSmoke => MonitoringSmoke { no_build: true }.run(sh),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    Pass,
    Fail(String),
    Skipped(String),
}

struct StepReport {
    step: CiStep,
    outcome: Outcome,
    took: Option<Duration>,
}

impl Ci {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let started = Instant::now();
        let mut reports: Vec<StepReport> = Vec::new();
        for &step in CiStep::all() {
            let outcome_before_run = if process::interrupted() {
                Some(Outcome::Skipped("not run: interrupted".into()))
            } else if !self.only.is_empty() && !self.only.contains(&step) {
                Some(Outcome::Skipped("not in --only".into()))
            } else if self.skip.contains(&step) {
                Some(Outcome::Skipped("--skip".into()))
            } else {
                step.needs()
                    .iter()
                    .find(|need| {
                        reports.iter().any(|r| r.step == **need && matches!(r.outcome, Outcome::Fail(_)))
                    })
                    .map(|need| Outcome::Skipped(format!("not run: needs {}", need.name())))
            };
            let report = match outcome_before_run {
                Some(outcome) => StepReport { step, outcome, took: None },
                None => {
                    let step_started = Instant::now();
                    let result = process::group(&format!("ci: {}", step.name()), || step.run(sh));
                    let took = step_started.elapsed();
                    let outcome = match result {
                        Ok(()) => Outcome::Pass,
                        Err(e) => {
                            process::say(&format!("ci: {} failed: {e:#}", step.name()));
                            Outcome::Fail(format!("{e:#}"))
                        }
                    };
                    StepReport { step, outcome, took: Some(took) }
                }
            };
            reports.push(report);
        }

        print_results(&summary_table(&reports, started.elapsed()));
        if let Ok(path) = std::env::var("GITHUB_STEP_SUMMARY") {
            let markdown = summary_markdown(&reports);
            let existing = std::fs::read_to_string(&path).unwrap_or_default();
            if let Err(e) = std::fs::write(&path, existing + &markdown) {
                process::say(&format!("ci: cannot write GITHUB_STEP_SUMMARY ({path}): {e}"));
            }
        }
        let failed: Vec<String> =
            reports.iter().filter(|r| matches!(r.outcome, Outcome::Fail(_))).map(|r| r.step.name()).collect();
        if !failed.is_empty() {
            bail!("ci failed: {}", failed.join(", "));
        }
        Ok(())
    }
}

pub fn fmt_check() -> Cmd {
    Cmd::new("cargo").args(["fmt", "--all", "--", "--check"])
}

pub fn clippy() -> Cmd {
    Cmd::new("cargo").args(["clippy", "--workspace", "--all-targets", "--locked", "--", "-D", "warnings"])
}

pub fn tests(nextest: bool) -> Cmd {
    if nextest {
        Cmd::new("cargo").args(["nextest", "run", "--workspace", "--locked", "--no-fail-fast"])
    } else {
        Cmd::new("cargo").args(["test", "--workspace", "--locked", "--no-fail-fast"])
    }
}

fn nextest_installed(sh: &Shell) -> bool {
    process::succeeds(sh, &Cmd::new("cargo").args(["nextest", "--version"]))
}

fn outcome_words(outcome: &Outcome) -> (&'static str, &str) {
    match outcome {
        Outcome::Pass => ("pass", ""),
        Outcome::Fail(why) => ("FAIL", why.lines().next().unwrap_or_default()),
        Outcome::Skipped(why) => ("skipped", why),
    }
}

fn seconds(took: Option<Duration>) -> String {
    took.map_or_else(|| "-".to_owned(), |t| format!("{:.1}s", t.as_secs_f64()))
}

fn summary_table(reports: &[StepReport], total: Duration) -> String {
    let width = CiStep::all().iter().map(|s| s.name().len()).max().unwrap_or(0);
    let mut out = format!("\n{:<width$}  result   time     note\n", "step");
    for r in reports {
        let (result, note) = outcome_words(&r.outcome);
        let line = format!("{:<width$}  {:<8} {:<8} {}", r.step.name(), result, seconds(r.took), note);
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let _ = writeln!(out, "{:<width$}  {:<8} {}", "total", "", seconds(Some(total)));
    out
}

fn summary_markdown(reports: &[StepReport]) -> String {
    let mut out = String::from("### cargo xtask ci\n\n| step | result | time | note |\n|---|---|---|---|\n");
    for r in reports {
        let (result, note) = outcome_words(&r.outcome);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} |",
            r.step.name(),
            result,
            seconds(r.took),
            note.replace('|', "\\|")
        );
    }
    out
}

#[allow(clippy::print_stdout)]
fn print_results(text: &str) {
    print!("{text}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_exact() {
        assert_eq!(fmt_check().to_string(), "cargo fmt --all -- --check");
        assert_eq!(clippy().to_string(), "cargo clippy --workspace --all-targets --locked -- -D warnings");
        assert_eq!(tests(true).argv()[..3], ["cargo", "nextest", "run"]);
        assert_eq!(tests(false).argv()[..2], ["cargo", "test"]);
    }

    #[test]
    fn summary_lists_every_step_with_its_result_and_time() {
        let reports = vec![
            StepReport { step: CiStep::Fmt, outcome: Outcome::Pass, took: Some(Duration::from_millis(1500)) },
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
        let md = summary_markdown(&reports);
        assert!(md.contains("| clippy | FAIL | 3.0s | `cargo clippy` failed |"), "{md}");
    }
}

//! The GitHub workflows run only `cargo xtask …` (setup steps aside), and only subcommands
//! that exist: CI on GitHub is the same pipeline as `cargo xtask ci` here. (That the ci
//! workflow runs every ci step is a unit test beside the step list, in commands/ci.rs.)
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;
use std::process::{Command, Stdio};

use yaml_rust2::{Yaml, YamlLoader};

fn workflow(name: &str) -> Yaml {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.github/workflows").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    YamlLoader::load_from_str(&text).unwrap().remove(0)
}

/// Every `run:` script in a workflow, with its job and step name.
fn run_steps(doc: &Yaml) -> Vec<(String, String, String)> {
    let mut found = Vec::new();
    for (job_name, job) in doc["jobs"].as_hash().unwrap() {
        for step in job["steps"].as_vec().unwrap() {
            if let Some(script) = step["run"].as_str() {
                let name = step["name"].as_str().unwrap_or_default().to_owned();
                found.push((job_name.as_str().unwrap().to_owned(), name, script.to_owned()));
            }
        }
    }
    found
}

const WORKFLOWS: [&str; 2] = ["ci.yml", "rollback.yml"];

/// Where a job's `cargo xtask ci --json` report goes, and how it reaches the job summary.
const REPORT: &str = r#"--json > "$RUNNER_TEMP/ci.json""#;
/// No report (a setup step failed first): nothing to write, and no second failure.
const SUMMARY: &str = r#"test ! -s "$RUNNER_TEMP/ci.json" || jq --raw-output --from-file .github/ci-summary.jq "$RUNNER_TEMP/ci.json" >> "$GITHUB_STEP_SUMMARY""#;

/// Runs the `jq` program `.github/ci-summary.jq` over `report`.
fn render_summary(report: &str) -> String {
    let program = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.github/ci-summary.jq");
    let mut jq = Command::new("jq")
        .args(["--raw-output", "--from-file"])
        .arg(program)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run jq ({e}); this test needs it: apt-get install jq"));
    std::io::Write::write_all(&mut jq.stdin.take().unwrap(), report.as_bytes()).unwrap();
    let out = jq.wait_with_output().unwrap();
    assert!(out.status.success(), "jq refused the report: {report}");
    String::from_utf8(out.stdout).unwrap()
}

fn xtask(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_xtask")).args(args).output().unwrap()
}

#[test]
fn every_run_step_is_an_existing_xtask_subcommand() {
    let mut checked = 0;
    for file in WORKFLOWS {
        for (job, name, script) in run_steps(&workflow(file)) {
            if name.starts_with("setup:") {
                continue;
            }
            if name.starts_with("summary:") {
                assert_eq!(
                    script, SUMMARY,
                    "{file} job {job}: a summary step renders the ci report, and only that"
                );
                continue;
            }
            for line in script.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let words: Vec<&str> = line.split_whitespace().collect();
                assert!(
                    words.len() >= 3 && words[0] == "cargo" && words[1] == "xtask",
                    "{file} job {job}: `{line}` is not `cargo xtask …`"
                );
                // The subcommand and its target, if it has one (`deploy compose`).
                let sub: Vec<&str> = words[2..].iter().take_while(|w| !w.starts_with('-')).copied().collect();
                let help = xtask(&[&sub[..], &["--help"]].concat());
                assert!(
                    help.status.success(),
                    "{file} job {job}: `cargo xtask {}` does not exist",
                    sub.join(" ")
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 8, "only {checked} steps found");
}

#[test]
fn permissions_are_least_privilege_and_checkouts_keep_no_credentials() {
    for file in WORKFLOWS {
        let doc = workflow(file);
        assert_eq!(doc["permissions"]["contents"].as_str(), Some("read"), "{file}: top-level permissions");
        assert_eq!(doc["permissions"].as_hash().unwrap().len(), 1, "{file}: only contents: read at the top");
        for (job, spec) in doc["jobs"].as_hash().unwrap() {
            for step in spec["steps"].as_vec().unwrap() {
                if step["uses"].as_str().is_some_and(|u| u.starts_with("actions/checkout@")) {
                    assert_eq!(step["with"]["persist-credentials"].as_bool(), Some(false), "{file} {job:?}");
                }
            }
        }
    }
    let ci = workflow("ci.yml");
    assert!(ci["concurrency"]["group"].as_str().is_some());
    assert_eq!(ci["jobs"]["image"]["permissions"]["security-events"].as_str(), Some("write"));
}

/// Each job that runs `cargo xtask ci` keeps its JSON report and, even when a step failed,
/// puts it in the job summary with the next step.
#[test]
fn every_ci_job_puts_its_json_report_in_the_job_summary() {
    let ci = workflow("ci.yml");
    let mut jobs = 0;
    for (job, spec) in ci["jobs"].as_hash().unwrap() {
        let steps = spec["steps"].as_vec().unwrap();
        for (i, step) in steps.iter().enumerate() {
            let Some(script) = step["run"].as_str().filter(|s| s.starts_with("cargo xtask ci ")) else {
                continue;
            };
            assert!(script.ends_with(REPORT), "{job:?}: `{script}` does not end with `{REPORT}`");
            let next = &steps[i + 1];
            assert_eq!(next["run"].as_str(), Some(SUMMARY), "{job:?}: no summary after `{script}`");
            assert_eq!(
                next["if"].as_str(),
                Some("always()"),
                "{job:?}: the summary must be written on failure too"
            );
            jobs += 1;
        }
    }
    assert_eq!(jobs, 4, "the lint, test, coverage and image jobs each run ci");
}

/// `ci --json` prints one JSON document on stdout, whatever the steps' commands print there
/// (the table and their output go to stderr), and the workflow's program renders it.
#[test]
fn ci_json_is_one_document_on_stdout_and_renders_as_the_summary() {
    let fakes = support::FakePrograms::new("ci-json");
    fakes.program(
        "cargo",
        r#"case "$1" in
  fmt) echo "formatting noise on stdout" ;;
  clippy) echo "lint noise on stdout"; echo "warning: a | b" >&2; exit 101 ;;
esac"#,
    );
    let cargo = fakes.dir.join("cargo");
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["ci", "--only", "fmt,clippy", "--jobs", "1", "--no-cache", "--json"])
        .env("CARGO", &cargo)
        .env_remove("GITHUB_ACTIONS")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let (stdout, stderr) =
        (String::from_utf8(out.stdout).unwrap(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(!out.status.success(), "clippy failed, so ci fails: {stderr}");
    assert_eq!(stdout.lines().count(), 1, "stdout is the report alone: {stdout:?}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let steps = report["steps"].as_array().unwrap();
    assert!(steps.len() > 3, "every step, in order: {report}");
    assert_eq!((steps[0]["step"].as_str(), steps[0]["result"].as_str()), (Some("fmt"), Some("pass")));
    assert_eq!((steps[1]["step"].as_str(), steps[1]["result"].as_str()), (Some("clippy"), Some("FAIL")));
    for noise in ["formatting noise on stdout", "lint noise on stdout", "step  ", "total"] {
        assert!(stderr.contains(noise), "{noise:?} belongs on stderr: {stderr}");
    }
    let summary = render_summary(&stdout);
    let rows: Vec<&str> = summary.lines().filter(|l| l.starts_with("| ")).collect();
    assert_eq!(rows.len(), 1 + steps.len(), "{summary}");
    assert!(rows[1].starts_with("| fmt | pass | ") && rows[1].ends_with(" |  |"), "{summary}");
    assert!(
        rows[2].starts_with("| clippy | FAIL | ") && rows[2].contains("failed (exit code 101)"),
        "{summary}"
    );
    assert!(rows[3].starts_with("| lint | skipped | - | not in --only |"), "{summary}");
}

/// Every action is pinned to a full commit, with its version in a comment; no build cache
/// in a workflow that publishes; no trigger that runs with secrets on others' code.
#[test]
fn actions_are_pinned_and_nothing_cached_is_published() {
    for file in WORKFLOWS {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.github/workflows").join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let mut pinned = 0;
        for line in text.lines().map(str::trim).filter(|l| l.starts_with("uses:") || l.starts_with("- uses:"))
        {
            let reference = line.split_whitespace().find(|w| w.contains('@')).unwrap();
            let (_, sha) = reference.split_once('@').unwrap();
            assert!(
                sha.len() == 40 && sha.chars().all(|c| c.is_ascii_hexdigit()),
                "{file}: `{reference}` is not pinned to a commit"
            );
            assert!(line.contains(" # "), "{file}: `{line}` does not say which version the commit is");
            pinned += 1;
        }
        assert!(pinned >= 3, "{file}: only {pinned} actions found");
        assert!(!text.contains("rust-cache") && !text.contains("actions/cache"), "{file}: a build cache");
        assert!(
            !text.contains("workflow_run") && !text.contains("pull_request_target"),
            "{file}: a dangerous trigger"
        );
    }
}

/// The release jobs deploy what the image job published, by digest, check the deployed
/// service, and roll production back only when its own checks fail.
#[test]
fn releases_deploy_the_tested_image_and_check_the_deployment() {
    let ci = workflow("ci.yml");
    let image = &ci["jobs"]["image"];
    assert_eq!(image["outputs"]["image"].as_str(), Some("${{ steps.publish.outputs.image }}"));
    for job in ["staging", "production"] {
        let spec = &ci["jobs"][job];
        assert_eq!(spec["env"]["IMAGE"].as_str(), Some("${{ needs.image.outputs.image }}"), "{job}");
        let runs: Vec<String> = spec["steps"]
            .as_vec()
            .unwrap()
            .iter()
            .filter_map(|s| s["run"].as_str())
            .map(str::to_owned)
            .collect();
        assert!(runs[0].starts_with("cargo xtask up --tag \"$IMAGE\""), "{job}: {runs:?}");
        assert!(runs[1].starts_with("cargo xtask smoke --url "), "{job}: {runs:?}");
    }
    let steps = ci["jobs"]["production"]["steps"].as_vec().unwrap();
    let rollback = steps.iter().find(|s| s["run"].as_str() == Some("cargo xtask rollback")).unwrap();
    assert_eq!(rollback["if"].as_str(), Some("failure() && steps.check.outcome == 'failure'"));
}

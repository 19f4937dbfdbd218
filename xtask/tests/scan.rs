//! `cargo xtask scan` against Trivy's real JSON report format, through a stand-in `trivy`
//! put first on PATH: it records its argv and writes the fixture report it is pointed at.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::FakePrograms;

const STANDIN_TRIVY: &str = r#"
case "$1 $2" in
  "image --download-db-only")
    [ -z "$STANDIN_NO_DB" ] && exit 0
    echo "FATAL init error: failed to download vulnerability DB" >&2; exit 1 ;;
esac
case "$1" in
  --version) echo "Version: 0.76.0"; exit 0 ;;
  image) report="$STANDIN_IMAGE_REPORT" ;;
  fs) report="$STANDIN_CONFIG_REPORT" ;;
  convert) report="$STANDIN_SARIF" ;;
  *) echo "unexpected trivy call: $*" >&2; exit 2 ;;
esac
out=""; previous=""
for arg in "$@"; do [ "$previous" = "--output" ] && out="$arg"; previous="$arg"; done
cp "$report" "$out"
"#;

/// Knows the stand-in image and answers the engine check.
const STANDIN_DOCKER: &str = r#"
case "$1 $2" in
  "image inspect") [ "$3" = "logbook:standin" ] ;;
  "version --format") echo 20.10.24 ;;
  *) echo "unexpected docker call: $*" >&2; exit 2 ;;
esac
"#;

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
    /// Trivy's calls, without the program name.
    calls: Vec<String>,
}

struct Standins(FakePrograms);

impl Standins {
    fn new(name: &str) -> Self {
        let fakes = FakePrograms::new(&format!("scan-{name}"));
        fakes.program("trivy", STANDIN_TRIVY).program("docker", STANDIN_DOCKER);
        Standins(fakes)
    }

    fn scan(&self, image_report: &str, args: &[&str]) -> Run {
        self.scan_with(image_report, args, &[])
    }

    fn scan_with(&self, image_report: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
        let _ = std::fs::remove_file(self.0.dir.join("calls.log"));
        let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .envs(env.iter().copied())
            .arg("scan")
            .args(["--tag", "logbook:standin"])
            .args(args)
            .env("PATH", format!("{}:{}", self.0.dir.display(), std::env::var("PATH").unwrap()))
            .env("STANDIN_IMAGE_REPORT", fixture(image_report))
            .env("STANDIN_CONFIG_REPORT", fixture("config.json"))
            .env("STANDIN_SARIF", fixture("image.sarif"))
            .output()
            .unwrap();
        Run {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            calls: self
                .0
                .calls()
                .iter()
                .filter_map(|c| c.strip_prefix("trivy ").map(str::to_owned))
                .collect(),
        }
    }
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/trivy").join(name)
}

#[test]
fn a_critical_finding_fails_the_gate_and_is_listed() {
    let standins = Standins::new("critical");
    let run = standins.scan("critical.json", &[]);
    assert!(!run.ok, "{}", run.stdout);
    assert!(
        run.stdout.contains(
            "image logbook:standin: 1 CRITICAL, 0 HIGH, 0 MEDIUM, 1 LOW, 0 UNKNOWN; gate HIGH,CRITICAL: FAIL"
        ),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("CVE-2026-31337") && run.stdout.contains("hyper 1.6.0 -> 1.6.1"),
        "{}",
        run.stdout
    );
    assert!(
        !run.stdout.contains("GHSA-4x8q-m2v9-ww7c"),
        "a LOW finding is counted, not listed: {}",
        run.stdout
    );
    assert!(run.stderr.contains("1 finding(s) at or above the gate"), "{}", run.stderr);

    // The stand-in got Trivy's real argv: JSON out, our own gate (exit code 0), the ignore file.
    let image_call = run.calls.iter().find(|c| c.starts_with("image --format")).unwrap();
    assert!(
        image_call.starts_with(
            "image --format json --exit-code 0 --scanners vuln,secret --image-config-scanners misconfig,secret \
             --ignorefile .trivyignore --output "
        ),
        "{image_call}"
    );
    assert!(image_call.ends_with("/image.json logbook:standin"), "{image_call}");
    let repo_call = run.calls.iter().find(|c| c.starts_with("fs ")).unwrap();
    assert!(repo_call.starts_with(
        "fs --format json --exit-code 0 --scanners misconfig,secret --ignorefile .trivyignore --skip-dirs target --output "
    ));
    assert!(repo_call.ends_with("/repo.json ."), "{repo_call}");
}

#[test]
fn without_a_database_vulnerabilities_are_said_to_be_unscanned_never_zero() {
    let standins = Standins::new("no-db");
    let run = standins.scan_with("none.json", &[], &[("STANDIN_NO_DB", "1")]);
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("vulnerability scan skipped: Trivy's database cannot be had here"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("vulnerabilities not scanned (no database)"), "{}", run.stdout);
    let image_call = run.calls.iter().find(|c| c.starts_with("image --format")).unwrap();
    assert!(image_call.contains(" --scanners secret "), "{image_call}");
    let required = standins.scan_with("none.json", &["--require-database"], &[("STANDIN_NO_DB", "1")]);
    assert!(!required.ok && required.stderr.contains("--require-database"), "{}", required.stderr);
}

#[test]
fn the_gate_is_the_callers_to_set() {
    let standins = Standins::new("gate");
    let run = standins.scan("critical.json", &["--severity", "CRITICAL", "--ignore-unfixed"]);
    assert!(!run.ok);
    assert!(run.calls.iter().any(|c| c.contains("--ignore-unfixed logbook:standin")), "{:?}", run.calls);
    let low = standins.scan("low.json", &["--severity", "LOW"]);
    assert!(!low.ok, "a LOW gate fails on a LOW finding: {}", low.stdout);
}

#[test]
fn only_low_findings_pass() {
    let run = Standins::new("low").scan("low.json", &[]);
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("0 CRITICAL, 0 HIGH, 0 MEDIUM, 1 LOW, 0 UNKNOWN; gate HIGH,CRITICAL: pass"),
        "{}",
        run.stdout
    );
}

#[test]
fn no_findings_pass() {
    let run = Standins::new("none").scan("none.json", &[]);
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains(
        "image logbook:standin: 0 CRITICAL, 0 HIGH, 0 MEDIUM, 0 LOW, 0 UNKNOWN; gate HIGH,CRITICAL: pass"
    ));
    assert!(
        run.stdout.contains("repository (Dockerfile, compose, manifests, workflows, secrets): 0 CRITICAL"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("0 vulnerabilities, 0 secrets, 0 misconfigurations"), "{}", run.stdout);
}

#[test]
fn a_malformed_report_is_an_error_not_a_pass() {
    let run = Standins::new("malformed").scan("malformed.json", &[]);
    assert!(!run.ok);
    assert!(run.stderr.contains("not valid JSON"), "{}", run.stderr);
    assert!(!run.stdout.contains("pass"), "{}", run.stdout);
}

#[test]
fn an_ignore_entry_suppresses_its_finding_and_bad_lines_are_named() {
    let standins = Standins::new("ignore");
    let ignorefile = standins.0.dir.join("trivyignore");
    std::fs::write(
        &ignorefile,
        "# hyper: fixed upstream, the service does not parse trailers\nCVE-2026-31337 exp:2999-01-01\nthis is not an id\n",
    )
    .unwrap();
    let run = standins.scan("critical.json", &["--ignorefile", ignorefile.to_str().unwrap()]);
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    assert!(
        run.stdout
            .contains("0 CRITICAL, 0 HIGH, 0 MEDIUM, 1 LOW, 0 UNKNOWN (1 ignored); gate HIGH,CRITICAL: pass"),
        "{}",
        run.stdout
    );
    assert!(run.stderr.contains("trivyignore:3: `this is not an id` is not a finding id"), "{}", run.stderr);
}

#[test]
fn sarif_output_is_checked_and_written() {
    let standins = Standins::new("sarif");
    let out = standins.0.dir.join("out.sarif");
    let run = standins.scan("low.json", &["--format", "sarif", "--output", out.to_str().unwrap()]);
    assert!(run.ok, "{}{}", run.stdout, run.stderr);
    let convert = run.calls.iter().find(|c| c.starts_with("convert ")).unwrap();
    assert!(
        convert.starts_with("convert --format sarif --output ") && convert.ends_with("/image.json"),
        "{convert}"
    );
    let sarif: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(sarif["version"], "2.1.0");
    assert!(sarif["$schema"].as_str().unwrap().contains("sarif"));
    assert_eq!(sarif["runs"][0]["tool"]["driver"]["name"], "Trivy");
    assert!(sarif["runs"][0]["results"].is_array());
}

#[test]
fn a_missing_image_says_to_build_it() {
    let standins = Standins::new("missing");
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["scan", "--tag", "logbook:nope"])
        .env("PATH", format!("{}:{}", standins.0.dir.display(), std::env::var("PATH").unwrap()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("run `cargo xtask build` first"));
}

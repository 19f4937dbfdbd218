//! The whole command line of `cargo xtask`. Doc comments here are the `--help` text.

use clap::{Args, Parser, Subcommand, ValueEnum};

/// Operations for the logbook service: build, run, test and ship it.
///
/// Every external command is echoed before it runs; add --dry-run to print them
/// without running anything.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask", version, about, long_about)]
pub struct Xtask {
    /// Print the commands that would run, and run nothing that changes state.
    #[arg(long, global = true)]
    pub dry_run: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Ci(Ci),
    Bench(Bench),
}

/// Measure the service: GET and durable POST rates with wrk, p50/p99 latency, the same
/// disk's raw SQLite rate (and the ratio), start-up time and idle stop time.
///
/// Builds a release binary and runs it on a free loopback port with a fresh database.
/// Needs wrk on PATH.
#[derive(Debug, Args)]
pub struct Bench {
    /// Seconds for each load run (GET, POST, raw SQLite).
    #[arg(long, default_value_t = 10)]
    pub duration: u32,

    /// Concurrent HTTP connections for the load runs.
    #[arg(long, default_value_t = 32)]
    pub connections: u32,
}

/// Run the CI pipeline, exactly as GitHub Actions runs it, and summarise each step.
///
/// Steps run in order; after a failure, the steps that do not depend on the failed one
/// still run, so one run shows everything that is broken. Exits non-zero if any step failed.
#[derive(Debug, Args)]
pub struct Ci {
    /// Leave out a step (repeatable, or comma-separated).
    #[arg(long, value_enum, value_delimiter = ',', conflicts_with = "only")]
    pub skip: Vec<CiStep>,

    /// Run only these steps (repeatable, or comma-separated).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub only: Vec<CiStep>,
}

/// The steps of `cargo xtask ci`, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CiStep {
    /// cargo fmt --check
    Fmt,
    /// cargo clippy with warnings denied
    Clippy,
    /// the workspace tests (nextest when installed, else cargo test)
    Test,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed_and_every_flag_has_help() {
        Xtask::command().debug_assert();
        for sub in Xtask::command().get_subcommands() {
            assert!(sub.get_about().is_some(), "{} has no help", sub.get_name());
            for arg in sub.get_arguments() {
                assert!(arg.get_help().is_some(), "{} --{} has no help", sub.get_name(), arg.get_id());
            }
        }
    }

    #[test]
    fn ci_steps_parse_comma_separated() {
        let flags = Xtask::try_parse_from(["xtask", "ci", "--skip", "fmt,clippy"]).unwrap();
        let Command::Ci(ci) = flags.command else { panic!("expected ci") };
        assert_eq!(ci.skip, vec![CiStep::Fmt, CiStep::Clippy]);
        assert!(Xtask::try_parse_from(["xtask", "ci", "--skip", "fmt", "--only", "test"]).is_err());
    }
}

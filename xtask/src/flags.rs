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
        let Command::Ci(ci) = flags.command;
        assert_eq!(ci.skip, vec![CiStep::Fmt, CiStep::Clippy]);
        assert!(Xtask::try_parse_from(["xtask", "ci", "--skip", "fmt", "--only", "test"]).is_err());
    }
}

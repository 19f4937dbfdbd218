//! `cargo xtask`: the logbook project's operations runner. This file only dispatches.
//!
//! `commands/` holds every subcommand: the static checks in `commands/checks/`, the live
//! drills with their harness in `commands/drills/`, the rest beside them. `targets/`
//! applies the release policy (`release.rs`) to compose, Swarm and Kubernetes;
//! `outside/` talks to processes, Docker, HTTP and the host's state.
//! docs/ARCHITECTURE.md draws the layers.

mod commands;
mod flags;
mod outside;
mod project;
mod release;
mod targets;
mod time;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use crate::flags::Command;
use crate::outside::process;

fn main() -> ExitCode {
    let flags = flags::Xtask::parse();
    process::init(flags.dry_run.is_some(), flags.dry_run == Some(flags::PlanFormat::Json));
    process::install_interrupt_handler();
    process::finish(run(flags.command))
}

fn run(command: Command) -> anyhow::Result<()> {
    let sh = xshell::Shell::new().context("cannot set up a shell")?;
    sh.change_dir(project_root());
    match command {
        Command::Build(cmd) => cmd.run(&sh),
        Command::Up(cmd) => cmd.run(&sh),
        Command::Down(cmd) => cmd.run(&sh),
        Command::Status(cmd) => cmd.run(&sh),
        Command::Logs(cmd) => cmd.run(&sh),
        Command::Smoke(cmd) => cmd.run(&sh),
        Command::Rollback(cmd) => cmd.run(&sh),
        Command::Backup(cmd) => cmd.run(&sh),
        Command::Restore(cmd) => cmd.run(&sh),
        Command::Drill(cmd) => cmd.run(&sh),
        Command::MonitoringUp(cmd) => cmd.run(&sh),
        Command::MonitoringDown(cmd) => cmd.run(&sh),
        Command::MonitoringSmoke(cmd) => cmd.run(&sh),
        Command::Lint(cmd) => cmd.run(&sh),
        Command::Scan(cmd) => cmd.run(&sh),
        Command::Sbom(cmd) => cmd.run(&sh),
        Command::Publish(cmd) => cmd.run(&sh),
        Command::Deploy(cmd) => cmd.run(&sh),
        Command::SwarmDrill(cmd) => cmd.run(&sh),
        Command::ReleaseDrill(cmd) => cmd.run(&sh),
        Command::RecoveryDrill(cmd) => cmd.run(&sh),
        Command::FaultDrill(cmd) => cmd.run(&sh),
        Command::SchemaDrill(cmd) => cmd.run(&sh),
        Command::PlatformSmoke(cmd) => cmd.run(&sh),
        Command::Doctor(cmd) => cmd.run(&sh),
        Command::Coverage(cmd) => cmd.run(&sh),
        Command::Completions(cmd) => cmd.run(&sh),
        Command::AuditImage(cmd) => cmd.run(&sh),
        Command::Advisories(cmd) => cmd.run(&sh),
        Command::Ci(cmd) => cmd.run(&sh),
        Command::Bench(cmd) => cmd.run(&sh),
        Command::Lock(cmd) => cmd.run(&sh),
    }
}

/// The workspace root, so every subcommand works from any directory.
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

//! `cargo xtask`: the logbook project's operations runner. This file only dispatches.

mod advisories;
mod audit;
mod backup;
mod bench;
mod build;
mod ci;
mod completions;
mod coverage;
mod deploy;
mod docker;
mod doctor;
mod down;
mod drill;
mod flags;
mod http;
mod lint;
mod logs;
mod monitoring;
mod process;
mod project;
mod publish;
mod release;
mod restore;
mod rollback;
mod scan;
mod smoke;
mod stack;
mod status;
mod swarm;
mod swarm_drill;
mod time;
mod up;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let flags = flags::Xtask::parse();
    process::init(flags.dry_run);
    process::install_interrupt_handler();
    let sh = xshell::Shell::new().context("cannot set up a shell")?;
    sh.change_dir(project_root());
    match flags.command {
        flags::Command::Build(cmd) => cmd.run(&sh),
        flags::Command::Up(cmd) => cmd.run(&sh),
        flags::Command::Down(cmd) => cmd.run(&sh),
        flags::Command::Status(cmd) => cmd.run(&sh),
        flags::Command::Logs(cmd) => cmd.run(&sh),
        flags::Command::Smoke(cmd) => cmd.run(&sh),
        flags::Command::Rollback(cmd) => cmd.run(&sh),
        flags::Command::Backup(cmd) => cmd.run(&sh),
        flags::Command::Restore(cmd) => cmd.run(&sh),
        flags::Command::Drill(cmd) => cmd.run(&sh),
        flags::Command::MonitoringUp(cmd) => cmd.run(&sh),
        flags::Command::MonitoringDown(cmd) => cmd.run(&sh),
        flags::Command::MonitoringSmoke(cmd) => cmd.run(&sh),
        flags::Command::Lint(cmd) => cmd.run(&sh),
        flags::Command::Scan(cmd) => cmd.run(&sh),
        flags::Command::Publish(cmd) => cmd.run(&sh),
        flags::Command::Deploy(cmd) => cmd.run(&sh),
        flags::Command::SwarmDrill(cmd) => cmd.run(&sh),
        flags::Command::Doctor(cmd) => cmd.run(&sh),
        flags::Command::Coverage(cmd) => cmd.run(&sh),
        flags::Command::Completions(cmd) => cmd.run(&sh),
        flags::Command::AuditImage(cmd) => cmd.run(&sh),
        flags::Command::Advisories(cmd) => cmd.run(&sh),
        flags::Command::Ci(cmd) => cmd.run(&sh),
        flags::Command::Bench(cmd) => cmd.run(&sh),
    }
}

/// The workspace root, so every subcommand works from any directory.
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

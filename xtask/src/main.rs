//! `cargo xtask`: the logbook project's operations runner. This file only dispatches.

mod bench;
mod ci;
mod flags;
mod http;
mod process;

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;

fn main() -> anyhow::Result<()> {
    let flags = flags::Xtask::parse();
    process::init(flags.dry_run);
    let sh = xshell::Shell::new().context("cannot set up a shell")?;
    sh.change_dir(project_root());
    match flags.command {
        flags::Command::Ci(cmd) => cmd.run(&sh),
        flags::Command::Bench(cmd) => cmd.run(&sh),
    }
}

/// The workspace root, so every subcommand works from any directory.
fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

//! `cargo xtask completions <shell>`: a completion script on stdout.

use std::io::Write;

use anyhow::{Context, Result};
use clap::CommandFactory;
use xshell::Shell;

use crate::flags::{Completions, Xtask};
use crate::outside::process;

impl Completions {
    pub fn run(self, _sh: &Shell) -> Result<()> {
        process::has_no_plan("completions prints a completion script and changes nothing")?;
        let mut script = Vec::new();
        clap_complete::generate(self.shell, &mut Xtask::command(), "cargo-xtask", &mut script);
        let mut stdout = std::io::stdout().lock();
        match stdout.write_all(&script).and_then(|()| stdout.flush()) {
            // A closed pipe (`| head`) is the reader's choice, not a failure.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
            other => other.context("cannot write the completion script"),
        }
    }
}

//! The policy layer between tasks and process spawning.
//!
//! Tasks describe external commands as [`Cmd`] values, built by plain functions that tests
//! can inspect. [`Runner`] decides what happens to them: echo, run, or (with `--dry-run`)
//! only print. It also owns GitHub Actions log groups and progress on long waits.

use std::fmt;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use xshell::Shell;

/// An external command: program, arguments and extra environment. Nothing runs until a
/// [`Runner`] is given it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl Cmd {
    pub fn new(program: impl Into<String>) -> Self {
        Cmd { program: program.into(), args: Vec::new(), env: Vec::new() }
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The argv as one vector, for assertions.
    #[cfg(test)]
    pub fn argv(&self) -> Vec<&str> {
        std::iter::once(self.program.as_str()).chain(self.args.iter().map(String::as_str)).collect()
    }

    fn to_xshell<'a>(&self, sh: &'a Shell) -> xshell::Cmd<'a> {
        let mut cmd = sh.cmd(&self.program).args(&self.args).quiet();
        for (k, v) in &self.env {
            cmd = cmd.env(k, v);
        }
        cmd
    }
}

/// Shell-style rendering, so a printed command can be pasted into a terminal.
impl fmt::Display for Cmd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let words = self
            .env
            .iter()
            .map(|(k, v)| format!("{k}={}", quote(v)))
            .chain(std::iter::once(quote(&self.program)))
            .chain(self.args.iter().map(|a| quote(a)));
        let words: Vec<String> = words.collect();
        f.write_str(&words.join(" "))
    }
}

fn quote(word: &str) -> String {
    let plain =
        !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%^".contains(c));
    if plain { word.to_owned() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}

static RUNNER: std::sync::OnceLock<Runner> = std::sync::OnceLock::new();

/// Sets the process-wide policy from the global flags; called once by `main`.
pub fn init(dry_run: bool) {
    let _ = RUNNER.set(Runner::new(dry_run));
}

/// The process-wide policy (see [`init`]).
pub fn runner() -> &'static Runner {
    RUNNER.get_or_init(|| Runner::new(false))
}

/// [`Runner::run`] under the process-wide policy.
pub fn run(sh: &Shell, cmd: &Cmd) -> Result<()> {
    runner().run(sh, cmd)
}

/// [`Runner::run_cleanup`] under the process-wide policy.
pub fn run_cleanup(sh: &Shell, cmd: &Cmd) -> Result<()> {
    runner().run_cleanup(sh, cmd)
}

/// [`Runner::capture`] under the process-wide policy.
pub fn capture(sh: &Shell, cmd: &Cmd, dry_run_value: &str) -> Result<String> {
    runner().capture(sh, cmd, dry_run_value)
}

/// [`Runner::run_to_file`] under the process-wide policy.
pub fn run_to_file(cmd: &Cmd, file: &std::path::Path) -> Result<()> {
    runner().run_to_file(cmd, file)
}

/// [`Runner::group`] under the process-wide policy.
pub fn group<T>(title: &str, body: impl FnOnce() -> T) -> T {
    runner().group(title, body)
}

/// Runs, echoes or only prints commands, according to the global flags.
pub struct Runner {
    pub dry_run: bool,
    /// True under GitHub Actions: steps become collapsible log groups.
    pub github_actions: bool,
}

impl Runner {
    pub fn new(dry_run: bool) -> Self {
        Runner { dry_run, github_actions: std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true") }
    }

    /// Echoes `cmd`, then runs it with inherited stdio (unless dry-run).
    /// After Ctrl-C, refuses to start anything new.
    pub fn run(&self, sh: &Shell, cmd: &Cmd) -> Result<()> {
        if interrupted() {
            bail!("interrupted; not running `{cmd}`");
        }
        let result = self.run_cleanup(sh, cmd);
        if result.is_err() && interrupted() {
            bail!("interrupted during `{cmd}`");
        }
        result
    }

    /// [`Runner::run`], even after Ctrl-C: for teardown and diagnostics.
    pub fn run_cleanup(&self, sh: &Shell, cmd: &Cmd) -> Result<()> {
        echo(cmd);
        if self.dry_run {
            return Ok(());
        }
        // Through std, so the child inherits stdin too (xshell would give it a null one).
        let mut command: std::process::Command = cmd.to_xshell(sh).into();
        let status = command.status().map_err(|e| spawn_error(cmd, &e))?;
        check_status(cmd, status)
    }

    /// Echoes `cmd`, runs it and returns its trimmed stdout (unless dry-run, which returns
    /// `dry_run_value`). For commands that change things; see [`Runner::query`] otherwise.
    pub fn capture(&self, sh: &Shell, cmd: &Cmd, dry_run_value: &str) -> Result<String> {
        echo(cmd);
        if self.dry_run {
            return Ok(dry_run_value.to_owned());
        }
        query(sh, cmd)
    }

    /// Echoes `cmd > file`, then runs it with stdout written to `file` (unless dry-run).
    pub fn run_to_file(&self, cmd: &Cmd, file: &std::path::Path) -> Result<()> {
        say(&format!("$ {cmd} > {}", quote(&file.display().to_string())));
        if self.dry_run {
            return Ok(());
        }
        let mut expression =
            duct::cmd(&cmd.program, &cmd.args).stdout_path(file).stderr_capture().unchecked();
        for (k, v) in &cmd.env {
            expression = expression.env(k, v);
        }
        let output = expression.run().map_err(|e| spawn_error(cmd, &e))?;
        if !output.status.success() {
            bail!(
                "`{cmd}` failed ({}): {}",
                exit_description(output.status),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(())
    }

    /// Wraps `body` in a GitHub Actions log group, or a plain header line elsewhere.
    pub fn group<T>(&self, title: &str, body: impl FnOnce() -> T) -> T {
        if self.github_actions {
            say(&format!("::group::{title}"));
        } else {
            say(&format!("==> {title}"));
        }
        let result = body();
        if self.github_actions {
            say("::endgroup::");
        }
        result
    }
}

/// Runs a read-only command silently and returns its trimmed stdout. Runs even under
/// `--dry-run`, since it changes nothing; a failure includes the command's stderr.
pub fn query(sh: &Shell, cmd: &Cmd) -> Result<String> {
    let output = cmd.to_xshell(sh).ignore_status().output().map_err(|e| spawn_error(cmd, &e))?;
    if !output.status.success() {
        // Most tools explain themselves on stderr; some (validators) on stdout.
        let stderr = String::from_utf8_lossy(&output.stderr);
        let said = if stderr.trim().is_empty() { String::from_utf8_lossy(&output.stdout) } else { stderr };
        bail!("`{cmd}` failed ({}): {}", exit_description(output.status), said.trim());
    }
    Ok(String::from_utf8(output.stdout)
        .with_context(|| format!("`{cmd}` printed non-UTF-8"))?
        .trim()
        .to_owned())
}

/// [`query`], with `input` on the command's stdin.
pub fn query_with_input(sh: &Shell, cmd: &Cmd, input: &str) -> Result<String> {
    let output = cmd.to_xshell(sh).stdin(input).ignore_status().output().map_err(|e| spawn_error(cmd, &e))?;
    if !output.status.success() {
        bail!(
            "`{cmd}` failed ({}): {}{}",
            exit_description(output.status),
            String::from_utf8_lossy(&output.stdout).trim(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// Whether `cmd` runs and exits 0, quietly. For probing tools.
pub fn succeeds(sh: &Shell, cmd: &Cmd) -> bool {
    cmd.to_xshell(sh)
        .ignore_status()
        .ignore_stdout()
        .ignore_stderr()
        .output()
        .is_ok_and(|o| o.status.success())
}

fn check_status(cmd: &Cmd, status: std::process::ExitStatus) -> Result<()> {
    if status.success() { Ok(()) } else { bail!("`{cmd}` failed ({})", exit_description(status)) }
}

fn exit_description(status: std::process::ExitStatus) -> String {
    match status.code() {
        Some(code) => format!("exit code {code}"),
        None => "killed by a signal".to_owned(),
    }
}

fn spawn_error(cmd: &Cmd, e: &dyn fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("cannot run `{}`: {e}. Is {} installed and on PATH?", cmd, cmd.program)
}

/// Prints the command about to run, shell-style, on stderr.
pub fn echo(cmd: &Cmd) {
    say(&format!("$ {cmd}"));
}

/// One plain line on stdout: a result the user asked for. A closed pipe (`| head`) is
/// the reader's choice, so write errors are ignored rather than panicking as `println!` would.
pub fn result(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Set by SIGINT or SIGTERM, so long waits stop and RAII guards get to clean up.
static INTERRUPTED: std::sync::LazyLock<std::sync::Arc<std::sync::atomic::AtomicBool>> =
    std::sync::LazyLock::new(Default::default);

/// Turns the first Ctrl-C (or SIGTERM) into an error at the next wait, so cleanup runs;
/// a second one exits at once.
pub fn install_interrupt_handler() {
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register_conditional_shutdown(signal, 130, INTERRUPTED.clone());
        let _ = signal_hook::flag::register(signal, INTERRUPTED.clone());
    }
}

/// Forgets an interrupt that has been handled (say, by starting a restore), so the
/// restore's own waits can run; a further Ctrl-C interrupts those.
pub fn clear_interrupt() {
    INTERRUPTED.store(false, std::sync::atomic::Ordering::SeqCst);
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::SeqCst)
}

/// One plain line on stderr: progress and diagnostics, never results.
#[allow(clippy::print_stderr)]
pub fn say(line: &str) {
    eprintln!("{line}");
}

/// Polls `check` until it yields a value or `timeout` passes. Shows a spinner on a
/// terminal, and a plain line every few seconds elsewhere (CI logs).
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let started = Instant::now();
    let spinner = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(Duration::from_millis(100));
        bar
    });
    let mut last_line = Instant::now();
    let result = loop {
        if interrupted() {
            break Err(anyhow::anyhow!("interrupted while waiting for {what}"));
        }
        match check() {
            Ok(Some(value)) => break Ok(value),
            Ok(None) => {}
            Err(e) => break Err(e),
        }
        let elapsed = started.elapsed();
        if elapsed >= timeout {
            break Err(anyhow::anyhow!("timed out after {}s waiting for {what}", timeout.as_secs()));
        }
        match &spinner {
            Some(bar) => bar.set_message(format!("waiting for {what} ({}s)", elapsed.as_secs())),
            None if last_line.elapsed() >= Duration::from_secs(5) => {
                say(&format!(
                    "  still waiting for {what} ({}s of {}s)",
                    elapsed.as_secs(),
                    timeout.as_secs()
                ));
                last_line = Instant::now();
            }
            None => {}
        }
        std::thread::sleep(interval);
    };
    if let Some(bar) = spinner {
        bar.finish_and_clear();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_quotes_only_what_needs_it() {
        let cmd = Cmd::new("docker")
            .args(["build", "--label", "org.opencontainers.image.title=logbook", "."])
            .arg("it's here")
            .arg("")
            .env("DOCKER_BUILDKIT", "1");
        assert_eq!(
            cmd.to_string(),
            r"DOCKER_BUILDKIT=1 docker build --label org.opencontainers.image.title=logbook . 'it'\''s here' ''"
        );
    }

    #[test]
    fn dry_run_runs_nothing() {
        let sh = Shell::new().unwrap();
        let runner = Runner { dry_run: true, github_actions: false };
        runner.run(&sh, &Cmd::new("false")).unwrap();
        assert_eq!(runner.capture(&sh, &Cmd::new("no-such-program"), "placeholder").unwrap(), "placeholder");
    }

    #[test]
    fn failures_name_the_command_and_its_exit_code() {
        let sh = Shell::new().unwrap();
        let runner = Runner { dry_run: false, github_actions: false };
        let err = runner.run(&sh, &Cmd::new("sh").args(["-c", "exit 3"])).unwrap_err().to_string();
        assert_eq!(err, "`sh -c 'exit 3'` failed (exit code 3)");
        let err = runner.run(&sh, &Cmd::new("no-such-program-xyz")).unwrap_err().to_string();
        assert!(err.contains("Is no-such-program-xyz installed"), "{err}");
        let err = query(&sh, &Cmd::new("sh").args(["-c", "echo oops >&2; exit 1"])).unwrap_err().to_string();
        assert!(err.contains("exit code 1") && err.contains("oops"), "{err}");
    }

    #[test]
    fn wait_for_polls_until_ready_or_deadline() {
        let mut calls = 0;
        let value = wait_for("three calls", Duration::from_secs(5), Duration::from_millis(1), || {
            calls += 1;
            Ok((calls == 3).then_some(calls))
        })
        .unwrap();
        assert_eq!(value, 3);
        let err = wait_for("never", Duration::from_millis(30), Duration::from_millis(5), || Ok(None::<()>));
        assert!(err.unwrap_err().to_string().contains("timed out"));
    }
}

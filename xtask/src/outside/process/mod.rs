//! The policy layer between tasks and process spawning.
//!
//! Tasks describe external commands as [`Cmd`] values, built by plain functions that tests
//! can inspect. [`Runner`] decides what happens to them: echo, run, or (with `--dry-run`)
//! only print. It also owns GitHub Actions log groups and progress on long waits.
//!
//! Split by concern: [`cmd`] (what a command is), [`files`] (files the runner writes,
//! through the same policy), [`signals`] (Ctrl-C), [`wait`] (polling with progress); the
//! policy itself, running and querying, and the output lines are here.

mod cmd;
mod files;
mod output;
mod signals;
mod wait;

use cmd::quote;
pub use cmd::{Cmd, Limit, QUERY_LIMIT, RUN_LIMIT};
pub use files::{
    create_dir_all, create_dir_with_mode, observe_size, place_new, read_written, remove_file, unique_beside,
    write_file, write_file_with_mode,
};
use output::route_child_output;
pub use output::{document, echo, keep_stdout_for_a_document, logging_to, result, say, summary};
pub use signals::{clear_interrupt, install_interrupt_handler, interrupted};
pub use wait::wait_for;

use std::fmt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use xshell::Shell;

static RUNNER: std::sync::OnceLock<Runner> = std::sync::OnceLock::new();

/// Sets the process-wide policy from the global flags; called once by `main`.
pub fn init(dry_run: bool, json_plan: bool) {
    let _ = RUNNER.set(Runner::with_plan(dry_run, json_plan));
}

/// The process-wide policy (see [`init`]).
fn runner() -> &'static Runner {
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
pub fn capture(sh: &Shell, cmd: &Cmd) -> Result<String> {
    runner().capture(sh, cmd)
}

/// [`Runner::run_with_input`] under the process-wide policy.
pub fn run_with_input(sh: &Shell, cmd: &Cmd, input: &str) -> Result<()> {
    runner().run_with_input(sh, cmd, input)
}

/// [`Runner::run_to_file`] under the process-wide policy.
pub fn run_to_file(cmd: &Cmd, file: &Path) -> Result<()> {
    runner().run_to_file(cmd, file)
}

/// [`Runner::group`] under the process-wide policy.
pub fn group<T>(title: &str, body: impl FnOnce() -> T) -> T {
    runner().group(title, body)
}

/// Why a dry run stops: the next step needs the effect of a command that was only printed
/// (a container to wait for, the output of a build). `main` reports it as the normal end
/// of a dry run.
#[derive(Debug)]
pub struct DryRunEnd {
    /// What the runner would have done next, for the closing line.
    pub next: String,
}

impl fmt::Display for DryRunEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dry run ends here: next the runner would {}, which needs the commands above to have run",
            self.next
        )
    }
}

impl std::error::Error for DryRunEnd {}

/// Runs, echoes or only prints commands, according to the global flags. Commands that
/// change something go through it; read-only queries ([`query`]) always run.
pub struct Runner {
    dry_run: bool,
    /// True under GitHub Actions: steps become collapsible log groups.
    github_actions: bool,
    /// Changes printed but not made (dry run): what follows them cannot be observed.
    skipped: AtomicUsize,
    /// Changes made for real: whether a guard has anything to clean up.
    made: AtomicUsize,
    /// With `--dry-run --format json`: the changes it would make, for the plan it prints.
    plan: Option<std::sync::Mutex<Vec<Planned>>>,
    /// Stdout carries one JSON document (the plan, or a `--json` report): result lines and
    /// the commands' own output go to stderr instead.
    stdout_is_a_document: AtomicBool,
}

/// One change a dry run printed: a command, or an effect the runner has itself.
#[derive(Debug, Clone)]
enum Planned {
    Command(Cmd),
    Effect(String),
}

impl Planned {
    fn to_json(&self) -> serde_json::Value {
        match self {
            Planned::Command(cmd) => serde_json::json!({
                "argv": std::iter::once(&cmd.program).chain(&cmd.args).collect::<Vec<_>>(),
                "env": cmd.env.iter().cloned().collect::<std::collections::BTreeMap<_, _>>(),
            }),
            Planned::Effect(what) => serde_json::json!({ "effect": what }),
        }
    }
}

impl Runner {
    pub fn new(dry_run: bool) -> Self {
        Self::with_plan(dry_run, false)
    }

    /// A runner that, under `dry_run`, also keeps the plan for `--format json`.
    pub fn with_plan(dry_run: bool, json_plan: bool) -> Self {
        Runner {
            dry_run,
            github_actions: std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true"),
            skipped: AtomicUsize::new(0),
            made: AtomicUsize::new(0),
            plan: (dry_run && json_plan).then(|| std::sync::Mutex::new(Vec::new())),
            stdout_is_a_document: AtomicBool::new(dry_run && json_plan),
        }
    }

    /// The plan as `--dry-run --format json` prints it: the subcommand's argv, each change
    /// in order, and where the dry run ended, if it did before the end.
    fn plan_json(&self, ended_before: Option<&str>) -> Option<String> {
        let plan = self.plan.as_ref()?.lock().unwrap_or_else(|p| p.into_inner());
        let argv: Vec<String> = std::env::args().skip(1).filter(|a| a != "xtask").collect();
        Some(
            serde_json::json!({
                "command": argv,
                "changes": plan.iter().map(Planned::to_json).collect::<Vec<_>>(),
                "ended_before": ended_before,
            })
            .to_string(),
        )
    }

    /// Echoes a change; true when it must really be made (false: a dry run, counted, and
    /// with `--format json` kept for the plan).
    fn change(&self, shown: &str) -> bool {
        self.change_as(shown, Planned::Effect(shown.to_owned()))
    }

    /// [`Runner::change`] of an external command, kept in the plan with its argv.
    fn change_cmd(&self, cmd: &Cmd, shown: &str) -> bool {
        self.change_as(shown, Planned::Command(cmd.clone()))
    }

    fn change_as(&self, shown: &str, planned: Planned) -> bool {
        say(&format!("$ {shown}"));
        if self.dry_run {
            self.skipped.fetch_add(1, Ordering::SeqCst);
            if let Some(plan) = &self.plan {
                plan.lock().unwrap_or_else(|p| p.into_inner()).push(planned);
            }
            return false;
        }
        self.made.fetch_add(1, Ordering::SeqCst);
        true
    }

    /// Ends a dry run before a step that would observe skipped changes.
    fn observable(&self, next: impl FnOnce() -> String) -> Result<()> {
        if self.skipped.load(Ordering::SeqCst) > 0 {
            return Err(DryRunEnd { next: next() }.into());
        }
        Ok(())
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
        if !self.change_cmd(cmd, &cmd.to_string()) {
            return Ok(());
        }
        // Through std, so the child inherits stdin too (xshell would give it a null one).
        let mut command: std::process::Command = cmd.to_xshell(sh).into();
        route_child_output(&mut command).with_context(|| format!("cannot route the output of `{cmd}`"))?;
        let mut child = command.spawn().map_err(|e| spawn_error(cmd, &e))?;
        let status = wait_within(cmd, &mut child, cmd.limit_or(RUN_LIMIT))?;
        check_status(cmd, status)
    }

    /// Echoes `cmd`, runs it and returns its trimmed stdout. A dry run ends here, since
    /// the output cannot be had without running it. For commands that change things; see
    /// [`query`] otherwise.
    pub fn capture(&self, sh: &Shell, cmd: &Cmd) -> Result<String> {
        if !self.change_cmd(cmd, &cmd.to_string()) {
            return Err(DryRunEnd { next: format!("use what `{}` prints", cmd.program) }.into());
        }
        query(sh, cmd)
    }

    /// Echoes `cmd < (input)` and runs it with `input` on its stdin (unless dry-run). The
    /// input is never echoed: it may be a secret.
    pub fn run_with_input(&self, sh: &Shell, cmd: &Cmd, input: &str) -> Result<()> {
        if !self.change_cmd(cmd, &format!("{cmd} < (input)")) {
            return Ok(());
        }
        query_with_input(sh, cmd, input).map(drop)
    }

    /// Echoes `cmd > file`, then runs it with stdout written to `file` (unless dry-run).
    pub fn run_to_file(&self, cmd: &Cmd, file: &Path) -> Result<()> {
        if !self.change_cmd(cmd, &format!("{cmd} > {}", quote(&file.display().to_string()))) {
            return Ok(());
        }
        // Created new (O_EXCL): never over an existing file, nor through a planted symlink.
        let out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(file)
            .with_context(|| format!("cannot create {} (it must not exist yet)", file.display()))?;
        let mut expression = duct::cmd(&cmd.program, &cmd.args).stdout_file(out).stderr_capture().unchecked();
        for (k, v) in &cmd.env {
            expression = expression.env(k, v);
        }
        let ran = expression.run().map_err(|e| spawn_error(cmd, &e)).and_then(|output| {
            if output.status.success() {
                return Ok(());
            }
            bail!(
                "`{cmd}` failed ({}): {}",
                exit_description(output.status),
                String::from_utf8_lossy(&output.stderr).trim()
            )
        });
        // The file is this run's (created new above): a failed command leaves nothing behind.
        if ran.is_err() {
            let _ = std::fs::remove_file(file);
        }
        ran
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

/// A read-only command that reads what earlier commands of this run changed (the size of
/// the image just built, say): [`query`], except that a dry run ends here.
pub fn observe(sh: &Shell, cmd: &Cmd) -> Result<String> {
    runner().observable(|| format!("read `{cmd}`"))?;
    query(sh, cmd)
}

/// [`observe`], reading a command that fails as an empty answer (a rollout that has no pod
/// yet, say): only the end of a dry run is an error.
pub fn observe_or_empty(sh: &Shell, cmd: &Cmd) -> Result<String> {
    runner().observable(|| format!("read `{cmd}`"))?;
    Ok(query(sh, cmd).unwrap_or_default())
}

/// Ends a dry run before a step that depends on what the commands above changed;
/// does nothing in a real run. `next` says what that step is. For the I/O layer's own
/// steps that no command runs (a process it starts through another library, say).
pub fn needs_effects(next: &str) -> Result<()> {
    runner().observable(|| next.to_owned())
}

/// [`observe`], echoed: a read the user should see happen (a verification, say).
pub fn observe_echoed(sh: &Shell, cmd: &Cmd) -> Result<String> {
    runner().observable(|| format!("read `{cmd}`"))?;
    echo(cmd);
    query(sh, cmd)
}

/// Starts `command` as a child the caller controls (waits for, signals): echoed. A dry run
/// ends here, since what follows needs the process.
pub fn start(command: &mut std::process::Command) -> Result<std::process::Child> {
    let argv: Vec<String> = std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|a| quote(&a.to_string_lossy()))
        .collect();
    let shown = argv.join(" ");
    if !runner().change(&shown) {
        return Err(DryRunEnd { next: format!("use the process `{shown}`") }.into());
    }
    route_child_output(command).with_context(|| format!("cannot route the output of `{shown}`"))?;
    command.spawn().with_context(|| format!("cannot start `{shown}`"))
}

/// Refuses `--dry-run=json` for a subcommand that has no plan to print, whose output is
/// not JSON (`why` says what it prints instead); does nothing otherwise.
pub fn has_no_plan(why: &str) -> Result<()> {
    if runner().plan.is_some() {
        bail!("--dry-run=json: there is no plan to print: {why}; run it without --dry-run");
    }
    Ok(())
}

/// Splits a result for code that handles a failure (a restore, a diagnosis, a warning):
/// the end of a dry run is no failure to handle, so it comes back as the error, to pass on
/// with `?`; a real outcome, failed or not, comes back inside.
pub fn outcome<T>(result: Result<T>) -> Result<Result<T>> {
    match result {
        Err(e) if is_dry_run_end(&e) => Err(e),
        real => Ok(real),
    }
}

/// Whether `error` is, or wraps, the end of a dry run.
fn is_dry_run_end(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| cause.is::<DryRunEnd>())
}

/// How many changes this run had made, and printed without making, at a point: a guard
/// armed there has something to undo only if a change was made since (a dry run makes
/// none), and a step that printed a change since did not really pass.
#[derive(Debug, Clone, Copy)]
pub struct ChangeMark {
    made: usize,
    printed: usize,
}

impl ChangeMark {
    pub fn now() -> Self {
        ChangeMark {
            made: runner().made.load(Ordering::SeqCst),
            printed: runner().skipped.load(Ordering::SeqCst),
        }
    }

    pub fn changed_since(self) -> bool {
        runner().made.load(Ordering::SeqCst) > self.made
    }

    /// Whether a change was printed and not made since (under `--dry-run`).
    pub fn printed_since(self) -> bool {
        runner().skipped.load(Ordering::SeqCst) > self.printed
    }
}

/// How many steps may run at once when `requested`: one under `--dry-run`, whose plan is
/// one list in order.
pub fn parallel_steps(requested: usize) -> usize {
    if is_dry_run() { 1 } else { requested }
}

/// What `main` makes of a subcommand's result: its exit code, and the error printed as a
/// command line tool prints it (the message and its causes on one line). A backtrace is
/// shown only when asked for with XTASK_BACKTRACE=1, whatever RUST_BACKTRACE says.
pub fn finish(result: Result<()>) -> std::process::ExitCode {
    let dry_run_note = || {
        let skipped = runner().skipped.load(Ordering::SeqCst);
        if runner().dry_run {
            say(&format!("dry run: {skipped} change(s) printed above, none made"));
        }
    };
    let print_plan = |ended_before: Option<&str>| {
        if let Some(json) = runner().plan_json(ended_before) {
            use std::io::Write;
            let _ = writeln!(std::io::stdout().lock(), "{json}");
        }
    };
    match result {
        Ok(()) => {
            dry_run_note();
            print_plan(None);
            std::process::ExitCode::SUCCESS
        }
        Err(e) if is_dry_run_end(&e) => {
            let end = e.chain().find_map(|c| c.downcast_ref::<DryRunEnd>());
            if let Some(end) = end {
                say(&end.to_string());
            }
            dry_run_note();
            print_plan(end.map(|end| end.next.as_str()));
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            if std::env::var("XTASK_BACKTRACE").is_ok_and(|v| v == "1") {
                say(&format!("error: {e:?}"));
            } else {
                say(&format!("error: {e:#}"));
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// A check that has to start a container (a one-off that reads, say): echoed, then run
/// for its trimmed stdout. Under --dry-run it is shown and not run (None), and the dry run
/// goes on: it changes nothing the commands after it depend on.
pub fn probe(sh: &Shell, cmd: &Cmd) -> Result<Option<String>> {
    say(&format!("$ {cmd}"));
    if is_dry_run() {
        return Ok(None);
    }
    // The container it starts may leave a network or volume for a guard to remove.
    runner().made.fetch_add(1, Ordering::SeqCst);
    query(sh, cmd).map(Some)
}

/// Whether this run only prints what it would change.
pub fn is_dry_run() -> bool {
    runner().dry_run
}

/// An effect the runner has itself, not through a command (an HTTP request, say): under
/// `--dry-run` the dry run ends here, naming it, since what follows depends on it.
pub fn effect(what: &str) -> Result<()> {
    if is_dry_run() {
        return Err(DryRunEnd { next: what.to_owned() }.into());
    }
    Ok(())
}

/// Runs a read-only command silently and returns its trimmed stdout. Runs even under
/// `--dry-run`, since it changes nothing; a failure includes the command's stderr.
pub fn query(sh: &Shell, cmd: &Cmd) -> Result<String> {
    let output = output_within(sh, cmd, None)?;
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

/// A read-only check (a linter, a validator): echoed, and run even under --dry-run, since
/// it changes nothing. A failure carries the tool's own explanation.
pub fn check(sh: &Shell, cmd: &Cmd) -> Result<()> {
    echo(cmd);
    query(sh, cmd).map(drop)
}

/// [`query`], with `input` on the command's stdin.
pub fn query_with_input(sh: &Shell, cmd: &Cmd, input: &str) -> Result<String> {
    let output = output_within(sh, cmd, Some(input))?;
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
    output_within(sh, cmd, None).is_ok_and(|o| o.status.success())
}

/// Waits for `child` for at most `limit`; past it, kills it and fails, naming the command
/// and the limit. Inside a switch, that is an interruption like any other: the switch's
/// guard undoes it, or its journal has the next command repair it.
fn wait_within(
    cmd: &Cmd,
    child: &mut std::process::Child,
    limit: Option<Duration>,
) -> Result<std::process::ExitStatus> {
    let Some(limit) = limit else { return child.wait().map_err(|e| spawn_error(cmd, &e)) };
    let started = Instant::now();
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait().map_err(|e| spawn_error(cmd, &e))? {
            return Ok(status);
        }
        if started.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "`{cmd}` did not finish within {} and was stopped (a wedged engine or a stalled transfer?)",
                humantime::format_duration(limit)
            );
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Runs `cmd` quietly (with `input` on its stdin, else none) for its output, waiting at
/// most its limit ([`QUERY_LIMIT`] by default).
fn output_within(sh: &Shell, cmd: &Cmd, input: Option<&str>) -> Result<std::process::Output> {
    use std::io::{Read, Write};
    use std::process::Stdio;
    let mut command: std::process::Command = cmd.to_xshell(sh).into();
    command.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = command.spawn().map_err(|e| spawn_error(cmd, &e))?;
    // Each pipe is read on a thread of its own, which hands over what it read once the pipe
    // closes. A grandchild that inherited a pipe and outlives the command (a plugin, a
    // helper) keeps it open: then what was read by a short while after the exit is used.
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        let (sender, receiver) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            let _ = sender.send(bytes);
        });
        receiver
    };
    let stdout = read(child.stdout.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    let stderr = read(child.stderr.take().map(|p| Box::new(p) as Box<dyn Read + Send>));
    if let (Some(mut stdin), Some(input)) = (child.stdin.take(), input) {
        let input = input.to_owned();
        std::thread::spawn(move || {
            let _ = stdin.write_all(input.as_bytes());
        });
    }
    let status = wait_within(cmd, &mut child, cmd.limit_or(QUERY_LIMIT))?;
    let collected =
        |r: std::sync::mpsc::Receiver<Vec<u8>>| r.recv_timeout(Duration::from_secs(5)).unwrap_or_default();
    Ok(std::process::Output { status, stdout: collected(stdout), stderr: collected(stderr) })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_end_of_a_dry_run_is_passed_on_and_a_real_failure_handed_over() {
        let end: Result<()> = Err(anyhow::Error::new(DryRunEnd { next: "wait".into() }).context("in a step"));
        assert!(outcome(end).is_err(), "the end of a dry run, even wrapped, is passed on");
        let failed = outcome::<()>(Err(anyhow::anyhow!("refused"))).unwrap();
        assert_eq!(failed.unwrap_err().to_string(), "refused");
        assert_eq!(outcome(Ok(7)).unwrap().unwrap(), 7);
    }

    #[test]
    fn a_guard_s_mark_sees_the_changes_made_after_it() {
        let sh = Shell::new().unwrap();
        let mark = ChangeMark::now();
        run(&sh, &Cmd::new("true")).unwrap();
        assert!(mark.changed_since());
        // A process the caller controls counts as a change, and is really started.
        let later = ChangeMark::now();
        let status = start(std::process::Command::new("true").stdin(std::process::Stdio::null()))
            .unwrap()
            .wait()
            .unwrap();
        assert!(status.success() && later.changed_since());
    }

    #[test]
    fn an_observed_failure_reads_as_empty_and_an_answer_as_itself() {
        let sh = Shell::new().unwrap();
        assert_eq!(observe_or_empty(&sh, &Cmd::new("false")).unwrap(), "");
        assert_eq!(observe_or_empty(&sh, &Cmd::new("echo").arg("True")).unwrap(), "True");
    }

    #[test]
    fn output_to_a_file_goes_only_to_a_new_one_and_a_failure_leaves_none() {
        let sh = Shell::new().unwrap();
        let dir = sh.create_temp_dir().unwrap();
        let runner = Runner::new(false);
        let file = dir.path().join("out.txt");
        runner.run_to_file(&Cmd::new("sh").args(["-c", "echo written"]), &file).unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "written\n");
        // Never over an existing file.
        let again = runner.run_to_file(&Cmd::new("sh").args(["-c", "echo other"]), &file).unwrap_err();
        assert!(format!("{again:#}").contains("must not exist yet"), "{again:#}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "written\n");
        // A failed command leaves no file behind, and its error says why.
        let failed_file = dir.path().join("failed.txt");
        let failed = Cmd::new("sh").args(["-c", "echo partial; echo broken >&2; exit 3"]);
        let err = runner.run_to_file(&failed, &failed_file).unwrap_err();
        assert!(format!("{err:#}").contains("broken"), "{err:#}");
        assert!(!failed_file.exists());
        // A dry run prints it and writes nothing.
        let dry = Runner::new(true);
        dry.run_to_file(&Cmd::new("sh").args(["-c", "echo x"]), &dir.path().join("dry.txt")).unwrap();
        assert!(!dir.path().join("dry.txt").exists());
    }

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
    fn dry_run_runs_nothing_and_ends_where_an_effect_is_needed() {
        let sh = Shell::new().unwrap();
        let dir = sh.create_temp_dir().unwrap();
        let runner = Runner::new(true);
        runner.observable(|| "nothing".into()).unwrap();
        runner.run(&sh, &Cmd::new("false")).unwrap();
        runner.run_to_file(&Cmd::new("false"), &dir.path().join("out")).unwrap();
        assert!(!dir.path().join("out").exists());
        let end = runner.capture(&sh, &Cmd::new("no-such-program")).unwrap_err();
        assert!(end.downcast_ref::<DryRunEnd>().is_some(), "{end}");
        let end = runner.observable(|| "wait for the service".into()).unwrap_err();
        assert_eq!(
            end.to_string(),
            "dry run ends here: next the runner would wait for the service, which needs the commands above to have run"
        );
        assert_eq!((runner.skipped.load(Ordering::SeqCst), runner.made.load(Ordering::SeqCst)), (3, 0));
    }

    #[test]
    fn a_real_run_counts_what_it_changed() {
        let sh = Shell::new().unwrap();
        let runner = Runner::new(false);
        runner.run(&sh, &Cmd::new("true")).unwrap();
        assert_eq!(runner.capture(&sh, &Cmd::new("echo").arg("out")).unwrap(), "out");
        runner.observable(|| unreachable!()).unwrap();
        assert_eq!((runner.skipped.load(Ordering::SeqCst), runner.made.load(Ordering::SeqCst)), (0, 2));
    }

    #[test]
    fn files_are_written_whole() {
        let sh = Shell::new().unwrap();
        let dir = sh.create_temp_dir().unwrap();
        let path = dir.path().join("state/releases.json");
        write_file(&path, "one").unwrap();
        write_file(&path, "two").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
        assert_eq!(std::fs::read_dir(path.parent().unwrap()).unwrap().count(), 1, "no partial file left");
    }

    #[test]
    fn a_command_past_its_limit_is_stopped_and_named() {
        let sh = Shell::new().unwrap();
        let slow = Cmd::new("sleep").arg("30").limit(Limit::After(Duration::from_millis(300)));
        let started = Instant::now();
        let err = query(&sh, &slow).unwrap_err().to_string();
        assert!(err.starts_with("`sleep 30` did not finish within 300ms and was stopped"), "{err}");
        let err = Runner::new(false).run(&sh, &slow).unwrap_err().to_string();
        assert!(err.contains("did not finish within 300ms"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5), "the limit was not kept");
        assert!(!succeeds(&sh, &slow));
        // Output and input still pass through, and a quick command is not held up.
        let echo = Cmd::new("sh").args(["-c", "cat; echo out; echo err >&2"]);
        assert_eq!(query_with_input(&sh, &echo, "in\n").unwrap(), "in\nout");
        assert_eq!(Cmd::new("true").limit, Limit::Default);
    }

    #[test]
    fn failures_name_the_command_and_its_exit_code() {
        let sh = Shell::new().unwrap();
        let runner = Runner::new(false);
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

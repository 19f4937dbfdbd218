//! What the runner prints: lines for people on stderr, results on stdout (or one JSON
//! document, which stdout then holds alone), and the step log a thread of `ci --jobs`
//! writes instead of the terminal.

use std::sync::atomic::Ordering;

use super::{Cmd, runner};

/// Prints the command about to run, shell-style, on stderr.
pub fn echo(cmd: &Cmd) {
    say(&format!("$ {cmd}"));
}

/// One plain line on stdout: a result the user asked for. A closed pipe (`| head`) is
/// the reader's choice, so write errors are ignored rather than panicking as `println!` would.
/// After a change that a dry run only printed, there is no real result to report, so
/// nothing is printed.
pub fn result(line: &str) {
    if runner().skipped.load(Ordering::SeqCst) == 0 {
        summary(line);
    }
}

/// From here on, stdout is for one JSON document alone, so that a program can read it
/// whole: result lines, and the output of the commands run, go to stderr.
pub fn keep_stdout_for_a_document() {
    runner().stdout_is_a_document.store(true, Ordering::SeqCst);
}

/// The one JSON document a `--json` subcommand prints, on stdout; not under
/// `--dry-run=json`, whose plan is the document. Unlike a result line, it is printed after
/// a change that a dry run only printed: a document says itself what was only planned
/// (`ci --json`'s `dry run` steps), or comes from a subcommand that changes nothing.
pub fn document(json: &str) {
    use std::io::Write;
    if runner().plan.is_some() || to_step_log(json) {
        return;
    }
    let _ = writeln!(std::io::stdout().lock(), "{json}");
}

/// A closing summary that says itself which steps only printed their changes (the `ci`
/// table): a [`result`], printed after a dry run's printed changes too.
pub fn summary(text: &str) {
    use std::io::Write;
    if to_step_log(text) {
        return;
    }
    if runner().stdout_is_a_document.load(Ordering::SeqCst) {
        say(text);
        return;
    }
    let _ = writeln!(std::io::stdout().lock(), "{text}");
}

/// One plain line on stderr: progress and diagnostics, never results.
#[allow(clippy::print_stderr)]
pub fn say(line: &str) {
    if !to_step_log(line) {
        eprintln!("{line}");
    }
}

thread_local! {
    /// Where this thread's output goes instead of the terminal: the log of a `ci` step
    /// that runs beside others, printed whole once it ends.
    static STEP_LOG: std::cell::RefCell<Option<std::fs::File>> = const { std::cell::RefCell::new(None) };
}

/// Runs `body` with this thread's output written to `log` instead of the terminal: the
/// lines said, the results, and the output of every command it runs.
pub fn logging_to<T>(log: std::fs::File, body: impl FnOnce() -> T) -> T {
    /// Puts the terminal back, also when `body` panics.
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            STEP_LOG.with(|current| current.borrow_mut().take());
        }
    }
    STEP_LOG.with(|current| *current.borrow_mut() = Some(log));
    let _restore = Restore;
    body()
}

/// Writes `line` to this thread's step log; false when it has none.
fn to_step_log(line: &str) -> bool {
    use std::io::Write;
    STEP_LOG.with(|current| match current.borrow_mut().as_mut() {
        Some(log) => {
            let _ = writeln!(log, "{line}");
            true
        }
        None => false,
    })
}

/// Where a child's output goes: this thread's step log, when it has one; else the
/// terminal, but its stdout to stderr while stdout is kept for a document.
pub(super) fn route_child_output(command: &mut std::process::Command) -> std::io::Result<()> {
    use std::os::fd::AsFd;
    STEP_LOG.with(|current| {
        if let Some(log) = current.borrow().as_ref() {
            command.stdout(log.try_clone()?).stderr(log.try_clone()?);
        } else if runner().stdout_is_a_document.load(Ordering::SeqCst) {
            command.stdout(std::io::stderr().as_fd().try_clone_to_owned()?);
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use xshell::Shell;

    use super::super::run;

    use super::*;

    #[test]
    fn a_step_log_takes_the_thread_s_lines_and_its_commands_output() {
        let sh = Shell::new().unwrap();
        let dir = sh.create_temp_dir().unwrap();
        let path = dir.path().join("step.log");
        let log = std::fs::File::create(&path).unwrap();
        let echo = Cmd::new("sh").args(["-c", "echo to-stdout; echo to-stderr >&2"]);
        logging_to(log, || {
            say("a line said");
            result("a result");
            run(&sh, &echo).unwrap();
        });
        let logged = std::fs::read_to_string(&path).unwrap();
        for expected in ["a line said\n", "a result\n", "$ sh -c", "to-stdout\n", "to-stderr\n"] {
            assert!(logged.contains(expected), "{expected:?} missing from {logged:?}");
        }
        // The terminal is back once the body ends.
        assert!(!to_step_log("not logged"));
    }
}

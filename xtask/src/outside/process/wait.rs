//! Polling with a deadline, and progress while it lasts.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::Result;

use super::{interrupted, runner, say};

/// Polls `check` until it yields a value or `timeout` passes. Shows a spinner on a
/// terminal, and a plain line every few seconds elsewhere (CI logs). A dry run that has
/// skipped a change ends here: there is nothing to wait for.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    interval: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    runner().observable(|| format!("wait for {what}"))?;
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

//! PASS/FAIL reporting, one line per check as it happens: for the checks here and the
//! drills alike.

use anyhow::{Context, Result, bail};

use crate::outside::process;

/// Prints one PASS or FAIL line per check, as it happens.
pub struct Checks {
    passed: Vec<String>,
    failed: Vec<String>,
    /// Stop at the first failure (drills, whose steps build on each other), or run every
    /// check and report all failures at the end (lint, audit).
    stop_at_first: bool,
}

impl Checks {
    /// For steps that build on each other: the first failure ends the run.
    pub fn stop_at_first() -> Self {
        Checks { passed: Vec::new(), failed: Vec::new(), stop_at_first: true }
    }

    /// For independent checks: every one runs; [`Checks::finish`] fails if any did.
    pub fn keep_going() -> Self {
        Checks { passed: Vec::new(), failed: Vec::new(), stop_at_first: false }
    }

    pub fn run(&mut self, name: &str, check: impl FnOnce() -> Result<()>) -> Result<()> {
        self.run_value(name, check).map(|_| ())
    }

    /// Runs a check that yields a value for the next ones. With `keep_going`, a failed
    /// check yields `None` and the run goes on.
    pub fn run_value<T>(&mut self, name: &str, check: impl FnOnce() -> Result<T>) -> Result<Option<T>> {
        // The end of a dry run is not a failed check: it is passed on.
        match process::outcome(check())? {
            Ok(value) => {
                self.passed.push(name.to_owned());
                process::result(&format!("PASS  {name}"));
                Ok(Some(value))
            }
            Err(e) => {
                process::result(&format!("FAIL  {name}: {e:#}"));
                self.failed.push(name.to_owned());
                if self.stop_at_first { Err(e.context(format!("check failed: {name}"))) } else { Ok(None) }
            }
        }
    }

    /// [`Checks::run_value`] for steps whose value the next ones need.
    pub fn step<T>(&mut self, name: &str, check: impl FnOnce() -> Result<T>) -> Result<T> {
        self.run_value(name, check)?.with_context(|| format!("check failed: {name}"))
    }

    /// A check that cannot run here, said so plainly.
    pub fn skip(&mut self, name: &str, why: &str) {
        process::result(&format!("SKIP  {name}: {why}"));
    }

    pub fn passed(&self) -> usize {
        self.passed.len()
    }

    /// The names of the checks that passed, in order.
    pub fn passes(&self) -> &[String] {
        &self.passed
    }

    /// The names of the checks that failed, in order.
    pub fn failures(&self) -> &[String] {
        &self.failed
    }

    /// Ok with the number passed, or an error naming every failed check.
    pub fn finish(self, what: &str) -> Result<usize> {
        if !self.failures().is_empty() {
            bail!("{what} failed: {}", self.failures().join("; "));
        }
        Ok(self.passed.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_at_first_ends_the_run_and_keep_going_collects() {
        let mut checks = Checks::stop_at_first();
        checks.run("fine", || Ok(())).unwrap();
        let err = checks.run("broken", || bail!("no")).unwrap_err();
        assert_eq!(format!("{err:#}"), "check failed: broken: no");
        assert_eq!(checks.passed(), 1);

        let mut checks = Checks::keep_going();
        checks.run("a", || bail!("no")).unwrap();
        assert_eq!(checks.run_value("b", || Ok(7)).unwrap(), Some(7));
        checks.run("c", || bail!("no")).unwrap();
        assert_eq!(checks.failures(), ["a", "c"]);
        assert_eq!(checks.finish("lint").unwrap_err().to_string(), "lint failed: a; c");
        assert_eq!(Checks::keep_going().finish("lint").unwrap(), 0);
    }

    #[test]
    fn a_dry_run_end_is_not_a_failure() {
        let mut checks = Checks::keep_going();
        let end = checks.run("waits", || Err(process::DryRunEnd { next: "wait".into() }.into()));
        assert!(end.is_err());
        assert!(checks.failures().is_empty());
    }
}

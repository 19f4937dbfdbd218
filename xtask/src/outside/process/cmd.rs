//! What an external command is: program, arguments, environment and time limit, shown
//! shell-style. Nothing here runs anything.

use std::fmt;
use std::time::Duration;

use xshell::Shell;

/// An external command: program, arguments and extra environment. Nothing runs until a
/// [`Runner`] is given it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub limit: Limit,
}

/// How long the runner waits for a command before it stops it and fails, naming it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Limit {
    /// [`QUERY_LIMIT`] for a read-only query, [`RUN_LIMIT`] for anything else.
    #[default]
    Default,
    After(Duration),
    /// Only for what runs until the user stops it (`logs -f`).
    Unbounded,
}

/// A query (`docker inspect`, `compose ps`, a probe) answers in seconds; one that does not
/// has a wedged engine behind it.
pub const QUERY_LIMIT: Duration = Duration::from_secs(120);
/// A change (a build, a pull, a test run, a drain) may take minutes, not hours.
pub const RUN_LIMIT: Duration = Duration::from_secs(30 * 60);

impl Cmd {
    pub fn new(program: impl Into<String>) -> Self {
        Cmd { program: program.into(), args: Vec::new(), env: Vec::new(), limit: Limit::Default }
    }

    /// Waits at most `limit` for it (instead of the default).
    pub fn limit(mut self, limit: Limit) -> Self {
        self.limit = limit;
        self
    }

    pub(super) fn limit_or(&self, default: Duration) -> Option<Duration> {
        match self.limit {
            Limit::Default => Some(default),
            Limit::After(limit) => Some(limit),
            Limit::Unbounded => None,
        }
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

    pub(super) fn to_xshell<'a>(&self, sh: &'a Shell) -> xshell::Cmd<'a> {
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

pub(super) fn quote(word: &str) -> String {
    let plain =
        !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@,+%^".contains(c));
    if plain { word.to_owned() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}

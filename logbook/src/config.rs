//! Configuration, read from environment variables only.
//!
//! A bad value is reported as one line naming the variable, the value (never for secrets)
//! and what was expected, so an operator can fix it without reading source code.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

pub const DEFAULT_PORT: u16 = 8080;

/// Every variable the service reads.
pub const KNOWN: &[&str] = &[
    "LOGBOOK_BIND",
    "LOGBOOK_PORT",
    "LOGBOOK_DB_PATH",
    "LOGBOOK_LOG",
    "LOGBOOK_LOG_FORMAT",
    "LOGBOOK_SHUTDOWN_TIMEOUT",
    "LOGBOOK_DRAIN_DELAY",
    "LOGBOOK_LOCK_WAIT",
    "LOGBOOK_API_TOKEN",
    "LOGBOOK_API_TOKEN_FILE",
];

#[derive(Debug, Clone)]
pub struct Config {
    pub bind: IpAddr,
    pub port: u16,
    pub db_path: PathBuf,
    pub log_filter: String,
    pub log_format: LogFormat,
    pub shutdown_timeout: Duration,
    pub drain_delay: Duration,
    /// How long to wait at start for another process to release the database.
    pub lock_wait: Duration,
    pub api_token: Option<Secret>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// A value that must never reach a log line: `Debug` and `Display` print a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// Compares in time independent of where the first difference is.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        if expected.len() != candidate.len() {
            return false;
        }
        expected.iter().zip(candidate).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// One bad variable. `value` is `None` for secrets, which are never echoed.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub var: &'static str,
    pub value: Option<String>,
    pub expected: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "invalid {}={:?}: expected {}", self.var, value, self.expected),
            None => write!(f, "invalid {}: expected {}", self.var, self.expected),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Reads the process environment. A value that is not UTF-8 is refused rather than
    /// guessed at (a mangled LOGBOOK_DB_PATH would open some other file).
    pub fn from_env() -> Result<Self, ConfigError> {
        for (name, value) in std::env::vars_os() {
            let name = name.to_string_lossy();
            if let Some(var) = KNOWN.iter().find(|known| **known == name)
                && value.to_str().is_none()
            {
                return Err(ConfigError { var, value: None, expected: "a UTF-8 value".into() });
            }
        }
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads configuration through `lookup`, so tests need not touch the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |var: &'static str| lookup(var).filter(|v| !v.is_empty()).map(|v| (var, v));

        let bind = match get("LOGBOOK_BIND") {
            None => IpAddr::from([0, 0, 0, 0]),
            Some((var, v)) => {
                v.parse().map_err(|_| invalid(var, &v, "an IP address such as 0.0.0.0 or 127.0.0.1"))?
            }
        };
        let port = match get("LOGBOOK_PORT") {
            None => DEFAULT_PORT,
            Some((var, v)) => {
                v.parse().map_err(|_| invalid(var, &v, "an integer from 0 to 65535 (0 picks a free port)"))?
            }
        };
        let db_path =
            get("LOGBOOK_DB_PATH").map_or_else(|| PathBuf::from("logbook.db"), |(_, v)| PathBuf::from(v));
        let log_filter = match get("LOGBOOK_LOG") {
            None => "info".to_owned(),
            Some((var, v)) => {
                tracing_subscriber::EnvFilter::try_new(&v).map_err(|_| {
                    invalid(var, &v, "a log filter such as info, debug or logbook=debug,warn")
                })?;
                v
            }
        };
        let log_format = match get("LOGBOOK_LOG_FORMAT") {
            None => LogFormat::Json,
            Some((var, v)) => match v.as_str() {
                "json" => LogFormat::Json,
                "text" => LogFormat::Text,
                _ => return Err(invalid(var, &v, "json or text")),
            },
        };
        let shutdown_timeout = duration_var(&get, "LOGBOOK_SHUTDOWN_TIMEOUT", Duration::from_secs(10))?;
        if shutdown_timeout.is_zero() {
            let raw = lookup("LOGBOOK_SHUTDOWN_TIMEOUT").unwrap_or_default();
            return Err(invalid(
                "LOGBOOK_SHUTDOWN_TIMEOUT",
                &raw,
                "a duration above zero such as 10s or 500ms",
            ));
        }
        let drain_delay = duration_var(&get, "LOGBOOK_DRAIN_DELAY", Duration::ZERO)?;
        let lock_wait = duration_var(&get, "LOGBOOK_LOCK_WAIT", Duration::from_secs(30))?;
        let api_token = match (get("LOGBOOK_API_TOKEN"), get("LOGBOOK_API_TOKEN_FILE")) {
            (Some(_), Some(_)) => {
                return Err(ConfigError {
                    var: "LOGBOOK_API_TOKEN",
                    value: None,
                    expected: "either LOGBOOK_API_TOKEN or LOGBOOK_API_TOKEN_FILE, not both".into(),
                });
            }
            (Some((_, token)), None) => Some(Secret(token)),
            (None, Some((var, path))) => Some(read_token_file(var, &path)?),
            (None, None) => None,
        };
        Ok(Config {
            bind,
            port,
            db_path,
            log_filter,
            log_format,
            shutdown_timeout,
            drain_delay,
            lock_wait,
            api_token,
        })
    }
}

fn invalid(var: &'static str, value: &str, expected: &str) -> ConfigError {
    ConfigError { var, value: Some(value.to_owned()), expected: expected.to_owned() }
}

fn duration_var(
    get: &impl Fn(&'static str) -> Option<(&'static str, String)>,
    var: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match get(var) {
        None => Ok(default),
        Some((var, v)) => parse_duration(&v).ok_or_else(|| {
            invalid(var, &v, "a duration such as 10s, 500ms or 2m (bare numbers are seconds)")
        }),
    }
}

/// Parses `250ms`, `10s`, `2m` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok()?;
    match unit {
        "" | "s" => Some(Duration::from_secs(n)),
        "ms" => Some(Duration::from_millis(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        _ => None,
    }
}

fn read_token_file(var: &'static str, path: &str) -> Result<Secret, ConfigError> {
    let content = std::fs::read_to_string(path)
        .map_err(|e| invalid(var, path, &format!("a readable file holding the API token ({e})")))?;
    let token = content.trim_end_matches(['\r', '\n']);
    if token.is_empty() {
        return Err(invalid(var, path, "a file holding a non-empty API token"));
    }
    Ok(Secret(token.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let c = config(&[]).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.bind.to_string(), "0.0.0.0");
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(c.drain_delay, Duration::ZERO);
        assert!(c.api_token.is_none());
    }

    #[test]
    fn bad_values_name_the_variable_the_value_and_the_expectation() {
        let err = config(&[("LOGBOOK_PORT", "eighty")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"invalid LOGBOOK_PORT="eighty": expected an integer from 0 to 65535 (0 picks a free port)"#
        );
        assert_eq!(config(&[("LOGBOOK_PORT", "70000")]).unwrap_err().var, "LOGBOOK_PORT");
        assert_eq!(config(&[("LOGBOOK_BIND", "localhost")]).unwrap_err().var, "LOGBOOK_BIND");
        assert_eq!(config(&[("LOGBOOK_LOG_FORMAT", "xml")]).unwrap_err().var, "LOGBOOK_LOG_FORMAT");
        assert_eq!(config(&[("LOGBOOK_LOG", "info,[")]).unwrap_err().var, "LOGBOOK_LOG");
        assert_eq!(
            config(&[("LOGBOOK_SHUTDOWN_TIMEOUT", "soon")]).unwrap_err().var,
            "LOGBOOK_SHUTDOWN_TIMEOUT"
        );
        assert_eq!(
            config(&[("LOGBOOK_SHUTDOWN_TIMEOUT", "0ms")]).unwrap_err().to_string(),
            r#"invalid LOGBOOK_SHUTDOWN_TIMEOUT="0ms": expected a duration above zero such as 10s or 500ms"#
        );
    }

    #[test]
    fn durations_accept_units() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("-1s"), None);
        assert_eq!(parse_duration("1h"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn secrets_are_never_echoed() {
        let err = config(&[("LOGBOOK_API_TOKEN", "hunter2"), ("LOGBOOK_API_TOKEN_FILE", "/x")]).unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
        let c = config(&[("LOGBOOK_API_TOKEN", "hunter2")]).unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(c.api_token.unwrap().matches(b"hunter2"));
    }

    #[test]
    fn token_file_is_read_and_trimmed() {
        let dir = std::env::temp_dir().join(format!("logbook-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "s3cret\n").unwrap();
        let c = config(&[("LOGBOOK_API_TOKEN_FILE", file.to_str().unwrap())]).unwrap();
        assert!(c.api_token.unwrap().matches(b"s3cret"));
        std::fs::write(&file, "\n").unwrap();
        assert!(config(&[("LOGBOOK_API_TOKEN_FILE", file.to_str().unwrap())]).is_err());
        let missing = config(&[("LOGBOOK_API_TOKEN_FILE", "/nonexistent/token")]).unwrap_err();
        assert_eq!(missing.var, "LOGBOOK_API_TOKEN_FILE");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

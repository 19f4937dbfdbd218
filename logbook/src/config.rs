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
    "LOGBOOK_READY_PORT",
    "LOGBOOK_DB_PATH",
    "LOGBOOK_LOG",
    "LOGBOOK_LOG_FORMAT",
    "LOGBOOK_SHUTDOWN_TIMEOUT",
    "LOGBOOK_DRAIN_DELAY",
    "LOGBOOK_KEEPALIVE_GRACE",
    "LOGBOOK_LOCK_WAIT",
    "LOGBOOK_API_TOKEN",
    "LOGBOOK_API_TOKEN_FILE",
    "LOGBOOK_READ_TOKEN",
    "LOGBOOK_READ_TOKEN_FILE",
    "LOGBOOK_ALLOW_UNAUTHENTICATED",
    "LOGBOOK_MAX_CONNECTIONS",
    "LOGBOOK_BODY_TIMEOUT",
    "LOGBOOK_REQUEST_TIMEOUT",
    "LOGBOOK_WRITE_TIMEOUT",
    "LOGBOOK_WAL_AUTOCHECKPOINT",
];

/// Default cap on open connections. Each may hold a 64 KiB header buffer, a 1 MiB body
/// and a 1 MiB response page, so 256 of them stay within a 256 MiB container even at worst.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

#[derive(Debug, Clone)]
pub struct Config {
    pub bind: IpAddr,
    pub port: u16,
    /// LOGBOOK_READY_PORT: a second port, serving the same routes, that takes connections
    /// only while the service holds the database (from its opening until shutdown
    /// starts). A proxy without health checks of its own then never sends a request to a
    /// release that cannot answer it yet: the refused connection is retried elsewhere.
    pub ready_port: Option<u16>,
    pub db_path: PathBuf,
    pub log_filter: String,
    pub log_format: LogFormat,
    pub shutdown_timeout: Duration,
    pub drain_delay: Duration,
    /// LOGBOOK_KEEPALIVE_GRACE: at shutdown, how long a kept-alive connection with no
    /// request in progress stays open for its client to close; a request on it meanwhile
    /// is answered, with `Connection: close`. Above the idle timeout of a proxy in front,
    /// the service never closes a connection as the proxy sends a request on it.
    pub keepalive_grace: Duration,
    /// How long to wait at start for another process to release the database.
    pub lock_wait: Duration,
    pub api_token: Option<Secret>,
    /// LOGBOOK_READ_TOKEN(_FILE): when set, reads and /metrics need it (or the API token).
    pub read_token: Option<Secret>,
    /// LOGBOOK_ALLOW_UNAUTHENTICATED: writes without a token on a non-loopback address.
    pub allow_unauthenticated: bool,
    /// Open connections beyond this wait in the kernel's backlog (LOGBOOK_MAX_CONNECTIONS).
    pub max_connections: usize,
    /// Longest a client may take to send a request body, from the request's arrival.
    pub body_timeout: Duration,
    /// Longest a request may take to be answered (a 408 after that).
    pub request_timeout: Duration,
    /// Longest a write to a client may wait for it to read; a client that stops reading
    /// is disconnected after that.
    pub write_timeout: Duration,
    /// WAL pages after which a commit folds the WAL into the database (SQLite's
    /// `wal_autocheckpoint`); 0 leaves checkpoints to a replication sidecar.
    pub wal_autocheckpoint: u32,
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

    /// Compares in a time that depends only on the candidate's length (which its sender
    /// knows): neither where the first difference is nor the secret's length shows. Every
    /// candidate byte is compared, against the secret repeated, and a length mismatch
    /// counts as one more difference.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        if expected.is_empty() {
            return false;
        }
        let mut diff = usize::from(expected.len() != candidate.len());
        for (i, byte) in candidate.iter().enumerate() {
            diff |= usize::from(byte ^ expected[i % expected.len()]);
        }
        std::hint::black_box(diff) == 0
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

        // Loopback unless told otherwise: the image sets 0.0.0.0, where a token is required.
        let bind = match get("LOGBOOK_BIND") {
            None => IpAddr::from([127, 0, 0, 1]),
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
        let ready_port = match get("LOGBOOK_READY_PORT") {
            None => None,
            Some((var, v)) => {
                let expected = match port {
                    0 => "an integer from 0 to 65535".to_owned(),
                    port => format!("an integer from 0 to 65535 other than LOGBOOK_PORT ({port})"),
                };
                Some(
                    v.parse()
                        .ok()
                        .filter(|p| *p == 0 || *p != port)
                        .ok_or_else(|| invalid(var, &v, &expected))?,
                )
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
        let shutdown_timeout = positive_duration(&get, "LOGBOOK_SHUTDOWN_TIMEOUT", Duration::from_secs(10))?;
        let drain_delay = duration_var(&get, "LOGBOOK_DRAIN_DELAY", Duration::ZERO)?;
        let keepalive_grace = duration_var(&get, "LOGBOOK_KEEPALIVE_GRACE", Duration::ZERO)?;
        // The grace is part of the shutdown timeout, which cuts off everything left.
        if keepalive_grace >= shutdown_timeout {
            let raw = lookup("LOGBOOK_KEEPALIVE_GRACE").unwrap_or_default();
            return Err(invalid(
                "LOGBOOK_KEEPALIVE_GRACE",
                &raw,
                &format!("a duration below LOGBOOK_SHUTDOWN_TIMEOUT ({}s)", shutdown_timeout.as_secs_f64()),
            ));
        }
        let lock_wait = duration_var(&get, "LOGBOOK_LOCK_WAIT", Duration::from_secs(30))?;
        let (api_token, read_token, allow_unauthenticated) = read_auth(&lookup, &get)?;
        let max_connections = match get("LOGBOOK_MAX_CONNECTIONS") {
            None => DEFAULT_MAX_CONNECTIONS,
            Some((var, v)) => v
                .parse()
                .ok()
                .filter(|n| *n >= 1)
                .ok_or_else(|| invalid(var, &v, "an integer of at least 1"))?,
        };
        let body_timeout = positive_duration(&get, "LOGBOOK_BODY_TIMEOUT", Duration::from_secs(10))?;
        // A request may wait LOGBOOK_LOCK_WAIT for the database during a switch; it must not
        // time out before that wait gives its own answer.
        let request_timeout =
            positive_duration(&get, "LOGBOOK_REQUEST_TIMEOUT", lock_wait + Duration::from_secs(30))?;
        if request_timeout <= lock_wait {
            let raw = lookup("LOGBOOK_REQUEST_TIMEOUT").unwrap_or_default();
            return Err(invalid(
                "LOGBOOK_REQUEST_TIMEOUT",
                &raw,
                &format!("a duration above LOGBOOK_LOCK_WAIT ({}s)", lock_wait.as_secs()),
            ));
        }
        let write_timeout = positive_duration(&get, "LOGBOOK_WRITE_TIMEOUT", Duration::from_secs(10))?;
        let wal_autocheckpoint = match get("LOGBOOK_WAL_AUTOCHECKPOINT") {
            None => crate::storage::DEFAULT_WAL_AUTOCHECKPOINT,
            Some((var, v)) => v
                .parse()
                .map_err(|_| invalid(var, &v, "a number of pages (0 turns automatic checkpoints off)"))?,
        };
        Ok(Config {
            bind,
            port,
            ready_port,
            db_path,
            log_filter,
            log_format,
            shutdown_timeout,
            drain_delay,
            keepalive_grace,
            lock_wait,
            api_token,
            read_token,
            allow_unauthenticated,
            max_connections,
            body_timeout,
            request_timeout,
            write_timeout,
            wal_autocheckpoint,
        })
    }
}

/// The one line that runs the image as it is, published on this machine only (the README
/// shows it): what the refusal to serve writes unauthenticated suggests.
pub const FIRST_CONTACT: &str = "docker run --rm -p 127.0.0.1:8080:8080 -e LOGBOOK_ALLOW_UNAUTHENTICATED=1 -v logbook-data:/data logbook:latest";

impl Config {
    /// For serving: refuses to take anyone's writes from the network unless told to.
    /// Loopback, a token, or LOGBOOK_ALLOW_UNAUTHENTICATED=1 pass; the operator
    /// commands (backup, restore) listen on nothing and need no such check.
    pub fn check_exposure(&self) -> Result<(), ConfigError> {
        if self.api_token.is_some() || self.bind.is_loopback() || self.allow_unauthenticated {
            return Ok(());
        }
        Err(ConfigError {
            var: "LOGBOOK_API_TOKEN",
            value: None,
            expected: format!(
                "a token (LOGBOOK_API_TOKEN or LOGBOOK_API_TOKEN_FILE) for writes on LOGBOOK_BIND={}, \
                 which is not loopback; or LOGBOOK_ALLOW_UNAUTHENTICATED=1 to accept anyone's writes. \
                 In a container published on this machine only: {FIRST_CONTACT}",
                self.bind
            ),
        })
    }
}

/// The write token, the read token, and whether writes without a token are allowed.
fn read_auth(
    lookup: &impl Fn(&str) -> Option<String>,
    get: &impl Fn(&'static str) -> Option<(&'static str, String)>,
) -> Result<(Option<Secret>, Option<Secret>, bool), ConfigError> {
    // Set but empty is a mistake (a template left unfilled), never "authentication off".
    for var in
        ["LOGBOOK_API_TOKEN", "LOGBOOK_API_TOKEN_FILE", "LOGBOOK_READ_TOKEN", "LOGBOOK_READ_TOKEN_FILE"]
    {
        if lookup(var).is_some_and(|v| v.is_empty()) {
            return Err(ConfigError {
                var,
                value: None,
                expected: "a non-empty value (unset it to accept unauthenticated writes)".into(),
            });
        }
    }
    let api_token = token(&get, "LOGBOOK_API_TOKEN", "LOGBOOK_API_TOKEN_FILE")?;
    let read_token = token(&get, "LOGBOOK_READ_TOKEN", "LOGBOOK_READ_TOKEN_FILE")?;
    let allow_unauthenticated = match get("LOGBOOK_ALLOW_UNAUTHENTICATED") {
        None => false,
        Some((var, v)) => match v.as_str() {
            "1" | "true" => true,
            "0" | "false" => false,
            _ => return Err(invalid(var, &v, "1 or 0")),
        },
    };
    Ok((api_token, read_token, allow_unauthenticated))
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

/// [`duration_var`], refusing zero (a timeout of nothing would refuse every request).
fn positive_duration(
    get: &impl Fn(&'static str) -> Option<(&'static str, String)>,
    var: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let duration = duration_var(get, var, default)?;
    match get(var) {
        Some((var, v)) if duration.is_zero() => {
            Err(invalid(var, &v, "a duration above zero such as 10s or 500ms"))
        }
        _ => Ok(duration),
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

/// A token from `var`, or from the file `file_var` names (a Docker or Kubernetes secret);
/// both set is an error.
fn token(
    get: &impl Fn(&'static str) -> Option<(&'static str, String)>,
    var: &'static str,
    file_var: &'static str,
) -> Result<Option<Secret>, ConfigError> {
    match (get(var), get(file_var)) {
        (Some(_), Some(_)) => {
            Err(ConfigError { var, value: None, expected: format!("either {var} or {file_var}, not both") })
        }
        (Some((_, token)), None) => Ok(Some(Secret(token))),
        (None, Some((file_var, path))) => read_token_file(file_var, &path).map(Some),
        (None, None) => Ok(None),
    }
}

fn read_token_file(var: &'static str, path: &str) -> Result<Secret, ConfigError> {
    let content = std::fs::read_to_string(path)
        .map_err(|e| invalid(var, path, &format!("a readable file holding the token ({e})")))?;
    let token = content.trim_end_matches(['\r', '\n']);
    if token.is_empty() {
        return Err(invalid(var, path, "a file holding a non-empty token"));
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
        assert_eq!(c.bind.to_string(), "127.0.0.1");
        assert_eq!(c.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(c.request_timeout, c.lock_wait + Duration::from_secs(30));
        assert_eq!(c.wal_autocheckpoint, 1000);
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(c.drain_delay, Duration::ZERO);
        assert_eq!(c.keepalive_grace, Duration::ZERO);
        assert!(c.api_token.is_none());
        assert_eq!(c.ready_port, None);
    }

    #[test]
    fn the_keepalive_grace_ends_before_the_shutdown_timeout() {
        let c = config(&[("LOGBOOK_KEEPALIVE_GRACE", "2s")]).unwrap();
        assert_eq!(c.keepalive_grace, Duration::from_secs(2));
        assert_eq!(
            config(&[("LOGBOOK_KEEPALIVE_GRACE", "10s")]).unwrap_err().to_string(),
            r#"invalid LOGBOOK_KEEPALIVE_GRACE="10s": expected a duration below LOGBOOK_SHUTDOWN_TIMEOUT (10s)"#
        );
        assert_eq!(
            config(&[("LOGBOOK_KEEPALIVE_GRACE", "soon")]).unwrap_err().var,
            "LOGBOOK_KEEPALIVE_GRACE"
        );
    }

    #[test]
    fn the_ready_port_is_a_port_of_its_own() {
        assert_eq!(config(&[("LOGBOOK_READY_PORT", "8081")]).unwrap().ready_port, Some(8081));
        assert_eq!(
            config(&[("LOGBOOK_READY_PORT", "8080")]).unwrap_err().to_string(),
            r#"invalid LOGBOOK_READY_PORT="8080": expected an integer from 0 to 65535 other than LOGBOOK_PORT (8080)"#
        );
        assert_eq!(config(&[("LOGBOOK_READY_PORT", "http")]).unwrap_err().var, "LOGBOOK_READY_PORT");
        assert_eq!(
            config(&[("LOGBOOK_PORT", "0"), ("LOGBOOK_READY_PORT", "-1")]).unwrap_err().to_string(),
            r#"invalid LOGBOOK_READY_PORT="-1": expected an integer from 0 to 65535"#
        );
        // Two free ports picked by the system never collide.
        let both_free = config(&[("LOGBOOK_PORT", "0"), ("LOGBOOK_READY_PORT", "0")]).unwrap();
        assert_eq!(both_free.ready_port, Some(0));
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
    fn an_empty_token_is_an_error_not_auth_off() {
        for var in ["LOGBOOK_API_TOKEN", "LOGBOOK_API_TOKEN_FILE"] {
            let err = config(&[(var, "")]).unwrap_err();
            assert_eq!(err.var, var);
            assert!(err.to_string().contains("non-empty"), "{err}");
        }
    }

    #[test]
    fn writes_open_to_the_network_need_a_token_or_an_explicit_opt_out() {
        let exposure = |vars: &[(&str, &str)]| config(vars).unwrap().check_exposure();
        let err = exposure(&[("LOGBOOK_BIND", "0.0.0.0")]).unwrap_err();
        assert_eq!(err.var, "LOGBOOK_API_TOKEN");
        assert!(err.to_string().contains("LOGBOOK_ALLOW_UNAUTHENTICATED=1"), "{err}");
        assert!(exposure(&[("LOGBOOK_BIND", "0.0.0.0"), ("LOGBOOK_API_TOKEN", "t")]).is_ok());
        assert!(exposure(&[("LOGBOOK_BIND", "0.0.0.0"), ("LOGBOOK_ALLOW_UNAUTHENTICATED", "1")]).is_ok());
        assert!(exposure(&[("LOGBOOK_BIND", "::1")]).is_ok());
        assert!(exposure(&[]).is_ok(), "the default address is loopback");
        assert_eq!(
            config(&[("LOGBOOK_ALLOW_UNAUTHENTICATED", "yes")]).unwrap_err().var,
            "LOGBOOK_ALLOW_UNAUTHENTICATED"
        );
    }

    #[test]
    fn limits_are_checked() {
        assert_eq!(config(&[("LOGBOOK_MAX_CONNECTIONS", "0")]).unwrap_err().var, "LOGBOOK_MAX_CONNECTIONS");
        assert_eq!(config(&[("LOGBOOK_BODY_TIMEOUT", "0s")]).unwrap_err().var, "LOGBOOK_BODY_TIMEOUT");
        let err = config(&[("LOGBOOK_WAL_AUTOCHECKPOINT", "-1")]).unwrap_err();
        assert!(err.var == "LOGBOOK_WAL_AUTOCHECKPOINT" && err.to_string().contains("0 turns"), "{err}");
        assert_eq!(config(&[("LOGBOOK_WAL_AUTOCHECKPOINT", "0")]).unwrap().wal_autocheckpoint, 0);
        let err = config(&[("LOGBOOK_LOCK_WAIT", "30s"), ("LOGBOOK_REQUEST_TIMEOUT", "30s")]).unwrap_err();
        assert_eq!(err.var, "LOGBOOK_REQUEST_TIMEOUT");
        assert!(err.to_string().contains("above LOGBOOK_LOCK_WAIT"), "{err}");
        let c = config(&[("LOGBOOK_MAX_CONNECTIONS", "8"), ("LOGBOOK_WRITE_TIMEOUT", "1s")]).unwrap();
        assert_eq!((c.max_connections, c.write_timeout), (8, Duration::from_secs(1)));
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
    fn a_read_token_is_one_or_the_other_and_never_empty() {
        let c = config(&[("LOGBOOK_READ_TOKEN", "reader")]).unwrap();
        assert!(c.read_token.unwrap().matches(b"reader"));
        assert!(config(&[]).unwrap().read_token.is_none());
        let both = config(&[("LOGBOOK_READ_TOKEN", "a"), ("LOGBOOK_READ_TOKEN_FILE", "/x")]).unwrap_err();
        assert_eq!(both.var, "LOGBOOK_READ_TOKEN");
        assert!(both.to_string().contains("not both"), "{both}");
        let empty = config(&[("LOGBOOK_READ_TOKEN", "")]).unwrap_err();
        assert_eq!((empty.var, empty.value), ("LOGBOOK_READ_TOKEN", None));
        let missing = config(&[("LOGBOOK_READ_TOKEN_FILE", "/nonexistent/read-token")]).unwrap_err();
        assert_eq!(missing.var, "LOGBOOK_READ_TOKEN_FILE");
    }

    #[test]
    fn a_token_matches_only_itself_whatever_its_length() {
        let token = Secret::new("s3cret");
        assert!(token.matches(b"s3cret"));
        for other in [&b""[..], b"s", b"s3cre", b"s3crets", b"s3cret s3cret", b"s3cres", b"S3cret"] {
            assert!(!token.matches(other), "{:?} matched", String::from_utf8_lossy(other));
        }
        // A candidate that repeats the token is still not the token.
        assert!(!Secret::new("ab").matches(b"abab"));
        assert!(!Secret::new("").matches(b""));
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

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;
use std::time::Instant;

use tokio::signal::unix::{Signal, SignalKind, signal};

use logbook::archive::ArchiveError;
use logbook::config::Config;
use logbook::server::ServeError;
use logbook::{archive, build_info, healthcheck, server, telemetry};

/// Exit codes, documented in the README.
const EXIT_RUNTIME: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_CONFIG: u8 = 78;

const USAGE: &str = "\
logbook: an append-only journal over HTTP on embedded SQLite

Usage:
  logbook [serve]             serve HTTP (configured by LOGBOOK_* environment variables)
  logbook healthcheck         exit 0 if the local /healthz answers 200, else 1
  logbook backup --to FILE    write a consistent, verified copy of LOGBOOK_DB_PATH to FILE
                              while the service runs (FILE '-' writes it to stdout)
  logbook verify FILE         check that FILE is a complete logbook database; count its entries
  logbook restore --from FILE [--carry EXPORT]
                              replace LOGBOOK_DB_PATH with FILE, keeping the old one as .bak
                              (only while the service is stopped); with --carry, add the
                              entries of EXPORT (from `export`) keeping their ids
  logbook export --after ID --to FILE
                              write the entries after ID, with their idempotency keys, to
                              FILE as JSON lines
  logbook schema              print the schema this build knows and writes, that of the
                              database at LOGBOOK_DB_PATH if there is one, and the
                              snapshots taken before its migrations (as JSON)
  logbook version             print version and git revision
  logbook help                print this help

Environment: LOGBOOK_BIND, LOGBOOK_PORT, LOGBOOK_READY_PORT, LOGBOOK_DB_PATH, LOGBOOK_LOG,
LOGBOOK_LOG_FORMAT, LOGBOOK_SHUTDOWN_TIMEOUT, LOGBOOK_DRAIN_DELAY, LOGBOOK_KEEPALIVE_GRACE, LOGBOOK_LOCK_WAIT, LOGBOOK_API_TOKEN,
LOGBOOK_API_TOKEN_FILE, LOGBOOK_READ_TOKEN, LOGBOOK_READ_TOKEN_FILE, LOGBOOK_ALLOW_UNAUTHENTICATED, LOGBOOK_MAX_CONNECTIONS,
LOGBOOK_BODY_TIMEOUT, LOGBOOK_REQUEST_TIMEOUT, LOGBOOK_WRITE_TIMEOUT,
LOGBOOK_WAL_AUTOCHECKPOINT.
";

#[allow(clippy::print_stdout, clippy::print_stderr)]
fn main() -> ExitCode {
    let started = Instant::now();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();

    match args.as_slice() {
        [] | ["serve"] => {
            let config = match load_config() {
                Ok(c) => c,
                Err(code) => return code,
            };
            if let Err(e) = config.check_exposure() {
                eprintln!("logbook: {e}");
                return ExitCode::from(EXIT_CONFIG);
            }
            telemetry::init_logging(&config.log_filter, config.log_format);
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("logbook: cannot start the async runtime: {e}");
                    return ExitCode::from(EXIT_RUNTIME);
                }
            };
            match runtime.block_on(serve(config, started)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(ServeError::Config(line)) => {
                    eprintln!("logbook: {line}");
                    ExitCode::from(EXIT_CONFIG)
                }
                Err(ServeError::Runtime(line)) => {
                    tracing::error!(error = %line, "fatal");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
        ["healthcheck"] => {
            let config = match load_config() {
                Ok(c) => c,
                Err(code) => return code,
            };
            match healthcheck::probe(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("logbook healthcheck: {e}");
                    ExitCode::from(1)
                }
            }
        }
        // With `--to -` the backup itself is on stdout, so the report goes to stderr.
        ["backup", "--to", dest] => report(with_config(|config| backup(&config.db_path, dest)), *dest == "-"),
        ["verify", file] => report(archive::verify_file(Path::new(file)).map_err(fail), false),
        // Needs no other setting: the runner asks an image, and a running container, this.
        ["schema"] => {
            let db =
                std::env::var_os("LOGBOOK_DB_PATH").filter(|p| !p.is_empty()).unwrap_or("logbook.db".into());
            report(archive::schema_report(Path::new(&db)).map_err(fail), false)
        }
        ["restore", "--from", file] => {
            report(with_config(|config| archive::restore(Path::new(file), &config.db_path, None)), false)
        }
        ["restore", "--from", file, "--carry", carry] => report(
            with_config(|config| archive::restore(Path::new(file), &config.db_path, Some(Path::new(carry)))),
            false,
        ),
        ["export", "--after", after, "--to", to] => match after.parse::<i64>() {
            Ok(after) => {
                report(with_config(|config| archive::export(&config.db_path, after, Path::new(to))), false)
            }
            Err(_) => {
                eprintln!("logbook: --after takes an entry id (a whole number), not {after:?}");
                ExitCode::from(EXIT_USAGE)
            }
        },
        ["version" | "--version" | "-V"] => {
            println!(
                "logbook {} ({}, built {})",
                build_info::VERSION,
                build_info::REVISION,
                build_info::BUILD_TIME
            );
            ExitCode::SUCCESS
        }
        ["help" | "--help" | "-h"] => {
            print!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("logbook: unrecognised arguments {args:?}\n\n{USAGE}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// Binds, installs the signal handlers and serves. The first SIGTERM or SIGINT starts the
/// graceful shutdown; a second one exits at once (nothing acknowledged is lost: every 201
/// follows a durable commit).
async fn serve(config: Config, started: Instant) -> Result<(), ServeError> {
    let listeners = server::bind(&config).await?;
    let mut signals = Signals::install()
        .map_err(|e| ServeError::Runtime(format!("cannot install signal handlers: {e}")))?;
    let (first, shutdown) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = first.send(signals.next().await);
        let second = signals.next().await;
        tracing::warn!(signal = second, "second signal; exiting at once");
        std::process::exit(server::EXIT_FORCED);
    });
    server::serve(config, listeners, async { shutdown.await.unwrap_or("shutdown") }, started).await
}

struct Signals {
    term: Signal,
    int: Signal,
    /// Held, never read: a file-size limit (RLIMIT_FSIZE) then fails the write that hits
    /// it, which the service reports, instead of killing the process.
    _file_size: Signal,
}

/// SIGXFSZ on Linux.
const SIGXFSZ: i32 = 25;

impl Signals {
    fn install() -> std::io::Result<Self> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            _file_size: signal(SignalKind::from_raw(SIGXFSZ))?,
        })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Reads the environment; a bad value is one line on stderr and exit code 78.
#[allow(clippy::print_stderr)]
fn load_config() -> Result<Config, ExitCode> {
    Config::from_env().map_err(|e| {
        eprintln!("logbook: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

/// Runs `operation` with the environment's configuration; a bad value exits 78 first.
fn with_config<T>(operation: impl FnOnce(&Config) -> Result<T, ArchiveError>) -> Result<T, ExitCode> {
    let config = load_config()?;
    operation(&config).map_err(fail)
}

/// Backs up to `dest`, or with `-`, to a temporary file beside the database that is then
/// streamed to stdout (so a shell-less container can hand a backup to `docker exec`).
/// Only a temporary file this process created is removed.
fn backup(db: &Path, dest: &str) -> Result<archive::FileReport, ArchiveError> {
    if dest != "-" {
        return archive::backup(db, Path::new(dest));
    }
    let dir = db.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    // Reserved under a name nobody else has (created exclusively), then freed for the
    // backup, which itself never places a file over an existing one.
    let reserved = archive::create_new_beside(&dir.join(".logbook-backup"), "db")?;
    let _ = std::fs::remove_file(&reserved);
    let report = archive::backup(db, &reserved)?;
    let streamed = std::fs::File::open(&reserved).and_then(|mut file| {
        let mut stdout = std::io::stdout().lock();
        std::io::copy(&mut file, &mut stdout).and_then(|_| stdout.flush())
    });
    let _ = std::fs::remove_file(&reserved);
    streamed.map_err(|e| ArchiveError::File(format!("cannot write the backup to stdout: {e}")))?;
    Ok(report)
}

/// Prints a successful operator command's report as one JSON line.
#[allow(clippy::print_stdout, clippy::print_stderr)]
fn report<T: serde::Serialize>(result: Result<T, ExitCode>, to_stderr: bool) -> ExitCode {
    match result {
        Ok(value) => {
            let line = serde_json::to_string(&value).unwrap_or_default();
            if to_stderr {
                eprintln!("{line}")
            } else {
                println!("{line}")
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

/// Prints `message` as one line on stderr; the exit code for a failed operator command.
#[allow(clippy::print_stderr)]
fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("logbook: {message}");
    ExitCode::from(EXIT_RUNTIME)
}

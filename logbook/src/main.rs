use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use logbook::config::Config;
use logbook::server::ServeError;
use logbook::{build_info, healthcheck, server, storage, telemetry};

/// Exit codes, documented in the README.
const EXIT_RUNTIME: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_CONFIG: u8 = 78;

const USAGE: &str = "\
logbook: an append-only journal over HTTP on embedded SQLite

Usage:
  logbook [serve]          serve HTTP (configured by LOGBOOK_* environment variables)
  logbook healthcheck      exit 0 if the local /healthz answers 200, else 1
  logbook backup --to FILE write a consistent, verified copy of LOGBOOK_DB_PATH to FILE
  logbook version          print version and git revision
  logbook help             print this help

Environment: LOGBOOK_BIND, LOGBOOK_PORT, LOGBOOK_DB_PATH, LOGBOOK_LOG, LOGBOOK_LOG_FORMAT,
LOGBOOK_SHUTDOWN_TIMEOUT, LOGBOOK_DRAIN_DELAY, LOGBOOK_API_TOKEN, LOGBOOK_API_TOKEN_FILE.
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
            telemetry::init_logging(&config.log_filter, config.log_format);
            let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("logbook: cannot start the async runtime: {e}");
                    return ExitCode::from(EXIT_RUNTIME);
                }
            };
            match runtime.block_on(server::serve(config, started)) {
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
        ["backup", "--to", dest] => {
            let config = match load_config() {
                Ok(c) => c,
                Err(code) => return code,
            };
            match storage::backup(&config.db_path, &PathBuf::from(dest)) {
                Ok(report) => {
                    println!("backup: {} entries, {} bytes -> {dest}", report.entries, report.bytes);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("logbook backup: {e}");
                    ExitCode::from(EXIT_RUNTIME)
                }
            }
        }
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

/// Reads the environment; a bad value is one line on stderr and exit code 78.
#[allow(clippy::print_stderr)]
fn load_config() -> Result<Config, ExitCode> {
    Config::from_env().map_err(|e| {
        eprintln!("logbook: {e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

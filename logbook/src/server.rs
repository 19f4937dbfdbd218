//! Serving, and the shutdown sequence.
//!
//! On SIGTERM or SIGINT: readiness turns 503 at once, the listener keeps accepting for
//! `LOGBOOK_DRAIN_DELAY` (so balancers see the 503), then stops; in-flight requests get
//! `LOGBOOK_SHUTDOWN_TIMEOUT` to finish; queued appends are committed, the WAL is
//! checkpointed and the database closed. A second signal exits at once, which loses
//! nothing acknowledged because every 201 follows a durable commit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::config::Config;
use crate::http::{AppState, router};
use crate::storage;

/// Exit code for a second signal during shutdown (128 + SIGINT, by shell convention).
pub const EXIT_FORCED: i32 = 130;

/// Why the service could not start or run.
#[derive(Debug)]
pub enum ServeError {
    /// The environment names something unusable (database path, listen address).
    Config(String),
    Runtime(String),
}

struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        Ok(Signals { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

pub async fn serve(config: Config, started: Instant) -> Result<(), ServeError> {
    let mut signals = Signals::install()
        .map_err(|e| ServeError::Runtime(format!("cannot install signal handlers: {e}")))?;
    let metrics = crate::telemetry::init_metrics().map_err(ServeError::Runtime)?;

    let db_path = config.db_path.clone();
    let (storage, writer) = tokio::task::spawn_blocking(move || storage::open(&db_path))
        .await
        .map_err(|e| ServeError::Runtime(e.to_string()))?
        .map_err(|e| {
            ServeError::Config(format!(
                "cannot use LOGBOOK_DB_PATH={:?}: {e} (expected a writable file path in an existing directory)",
                config.db_path.display().to_string()
            ))
        })?;

    let addr = SocketAddr::new(config.bind, config.port);
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        ServeError::Config(format!(
            "cannot listen on {addr} (LOGBOOK_BIND={}, LOGBOOK_PORT={}): {e}",
            config.bind, config.port
        ))
    })?;
    let local = listener.local_addr().map_err(|e| ServeError::Runtime(e.to_string()))?;

    let draining = Arc::new(AtomicBool::new(false));
    let state = AppState {
        storage,
        draining: draining.clone(),
        api_token: config.api_token.clone(),
        metrics,
        started,
    };
    let (stop_accepting, stop_signal) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(
        axum::serve(listener, router(state))
            .with_graceful_shutdown(async {
                let _ = stop_signal.await;
            })
            .into_future(),
    );
    tracing::info!(
        addr = %local,
        db = %config.db_path.display(),
        version = crate::build_info::VERSION,
        revision = crate::build_info::REVISION,
        auth = config.api_token.is_some(),
        startup_ms = started.elapsed().as_millis() as u64,
        "listening"
    );

    let signal_name = tokio::select! {
        name = signals.next() => name,
        result = &mut server => {
            return Err(ServeError::Runtime(format!("server stopped unexpectedly: {result:?}")));
        }
    };
    let shutdown_started = Instant::now();
    draining.store(true, Ordering::SeqCst);
    tracing::info!(
        signal = signal_name,
        drain_delay_ms = config.drain_delay.as_millis() as u64,
        timeout_ms = config.shutdown_timeout.as_millis() as u64,
        "shutdown started; readiness is now 503"
    );

    tokio::select! {
        _ = tokio::time::sleep(config.drain_delay) => {}
        name = signals.next() => exit_now(name),
    }
    let _ = stop_accepting.send(());
    tokio::select! {
        result = &mut server => {
            if let Ok(Err(e)) = result {
                tracing::warn!(error = %e, "server ended with an error while draining");
            }
        }
        _ = tokio::time::sleep(config.shutdown_timeout) => {
            // A stuck client (say, half a request header) must not hold the process past
            // the orchestrator's grace period, which would end in SIGKILL.
            tracing::warn!("in-flight requests did not finish within LOGBOOK_SHUTDOWN_TIMEOUT; closing them");
            server.abort();
        }
        name = signals.next() => exit_now(name),
    }

    // Commit what is queued, checkpoint, close. Appends arriving later are refused (503).
    tokio::task::spawn_blocking(move || writer.close())
        .await
        .map_err(|e| ServeError::Runtime(format!("closing storage failed: {e}")))?;
    tracing::info!(elapsed_ms = shutdown_started.elapsed().as_millis() as u64, "shutdown complete");
    Ok(())
}

fn exit_now(signal_name: &str) -> ! {
    tracing::warn!(signal = signal_name, "second signal; exiting at once");
    std::process::exit(EXIT_FORCED);
}

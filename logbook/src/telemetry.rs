//! Logs (JSON or text, to stdout) and the Prometheus recorder.

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::build_info;
use crate::config::LogFormat;

/// Request latency buckets, in seconds. Explicit buckets make the exporter emit real
/// histograms (without them it emits summaries, which `histogram_quantile` cannot use).
const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

pub fn init_logging(filter: &str, format: LogFormat) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stdout);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
    // Panics go through tracing, so they stay one JSON line and reach the log pipeline.
    std::panic::set_hook(Box::new(|info| {
        let location = info.location().map(|l| format!("{}:{}", l.file(), l.line()));
        let payload = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(panic = %payload, location = location.as_deref().unwrap_or("unknown"), "panic");
    }));
}

/// Installs the global metrics recorder, describes every metric, and schedules upkeep
/// (the exporter does none by itself, so histograms would grow without bound).
/// Idempotent: a process (or a test binary serving several times) installs it once.
pub fn init_metrics() -> Result<PrometheusHandle, String> {
    static HANDLE: std::sync::Mutex<Option<PrometheusHandle>> = std::sync::Mutex::new(None);
    let mut installed = HANDLE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(handle) = installed.as_ref() {
        return Ok(handle.clone());
    }
    let handle = install_metrics()?;
    *installed = Some(handle.clone());
    Ok(handle)
}

fn install_metrics() -> Result<PrometheusHandle, String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("logbook_http_request_duration_seconds".into()),
            LATENCY_BUCKETS,
        )
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full("logbook_write_batch_size".into()), BATCH_BUCKETS)
        })
        .map_err(|e| e.to_string())?
        .install_recorder()
        .map_err(|e| e.to_string())?;
    describe();
    metrics::gauge!("logbook_build_info",
        "version" => build_info::VERSION, "revision" => build_info::REVISION)
    .set(1.0);
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "logbook_http_requests_total",
        "HTTP requests answered, by method, route template and status."
    );
    describe_histogram!(
        "logbook_http_request_duration_seconds",
        Unit::Seconds,
        "Time from request received to response ready, by method and route template."
    );
    describe_gauge!("logbook_http_requests_in_flight", "HTTP requests being handled now.");
    describe_counter!("logbook_entries_appended_total", "Entries durably committed.");
    describe_histogram!(
        "logbook_write_batch_size",
        "Appends committed per durable transaction (group commit)."
    );
    describe_counter!("logbook_storage_errors_total", "Storage operations that failed, by operation.");
    describe_counter!(
        "logbook_http_connection_cap_reached_total",
        "Times the open connections reached LOGBOOK_MAX_CONNECTIONS and new ones had to wait."
    );
    describe_gauge!("logbook_build_info", "Always 1; labelled with the running version and git revision.");
    describe_gauge!(
        "logbook_database_size_bytes",
        Unit::Bytes,
        "Size of the database file and its write-ahead log, at the last scrape."
    );
    describe_gauge!(
        "logbook_database_wal_bytes",
        Unit::Bytes,
        "Size of the database's write-ahead log, at the last scrape: it grows until a checkpoint folds it back."
    );
    describe_gauge!(
        "logbook_wal_autocheckpoint_pages",
        "LOGBOOK_WAL_AUTOCHECKPOINT: 0 when checkpoints are left to the replication sidecar."
    );
    describe_gauge!(
        "logbook_data_volume_free_bytes",
        Unit::Bytes,
        "Space left for the database on its filesystem (for unprivileged writers), at the last scrape."
    );
    describe_gauge!(
        "logbook_data_volume_size_bytes",
        Unit::Bytes,
        "Size of the filesystem that holds the database."
    );
    // Export zeroes from the start, so rate() and alerts see the series before the first event.
    metrics::counter!("logbook_entries_appended_total").absolute(0);
    metrics::counter!("logbook_http_connection_cap_reached_total").absolute(0);
    for op in ["append", "read"] {
        metrics::counter!("logbook_storage_errors_total", "op" => op).absolute(0);
    }
}

/// Sets the disk gauges for the database at `db`: its size (with its WAL), and the free
/// space and size of the filesystem holding it. Measured when scraped, so always current;
/// a figure that cannot be read is left as it was.
pub fn record_disk(db: &std::path::Path) {
    let size =
        |suffix: &str| std::fs::metadata(format!("{}{suffix}", db.display())).map(|m| m.len()).unwrap_or(0);
    metrics::gauge!("logbook_database_size_bytes").set((size("") + size("-wal")) as f64);
    metrics::gauge!("logbook_database_wal_bytes").set(size("-wal") as f64);
    let dir = db.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    if let Ok(fs) = rustix::fs::statvfs(dir) {
        metrics::gauge!("logbook_data_volume_free_bytes").set((fs.f_bavail * fs.f_frsize) as f64);
        metrics::gauge!("logbook_data_volume_size_bytes").set((fs.f_blocks * fs.f_frsize) as f64);
    }
}

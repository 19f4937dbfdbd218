//! The raw SQLite baseline for docs/PERFORMANCE.md: one insert per durable transaction,
//! with the service's own pragmas (WAL, synchronous=FULL) and schema, on the same disk.
//!
//! Usage: sqlite_baseline <database file> <seconds>. Prints `rows_per_sec=<n>`.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::{Duration, Instant};

use rusqlite::Connection;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(path), Some(seconds)) = (args.next(), args.next()) else {
        eprintln!("usage: sqlite_baseline <database file> <seconds>");
        std::process::exit(2);
    };
    let duration = Duration::from_secs_f64(seconds.parse()?);
    let conn = Connection::open(&path)?;
    conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS entries (
             id INTEGER PRIMARY KEY AUTOINCREMENT, text TEXT NOT NULL,
             tags TEXT NOT NULL DEFAULT '[]', created_at TEXT NOT NULL)",
    )?;
    let mut insert = conn.prepare(
        "INSERT INTO entries (text, tags, created_at)
         VALUES (?1, '[]', strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
    )?;
    let started = Instant::now();
    let mut rows = 0u64;
    while started.elapsed() < duration {
        // Autocommit: each execute is its own durable transaction.
        insert.execute(["a benchmark entry of ordinary length"])?;
        rows += 1;
    }
    println!("rows_per_sec={:.0}", rows as f64 / started.elapsed().as_secs_f64());
    Ok(())
}

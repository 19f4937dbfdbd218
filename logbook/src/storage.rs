//! Embedded SQLite storage.
//!
//! One writer thread owns the only read-write connection. Appends queue up while the
//! previous commit is syncing and are committed together in one durable transaction
//! (group commit), so throughput grows with concurrency while every acknowledged entry
//! is on disk. Reads use their own connections, which WAL mode never blocks.

use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

/// Identifies a logbook database file (`PRAGMA application_id`), so foreign files are refused.
pub const APPLICATION_ID: i32 = 0x4C42_4B31; // "LBK1"

/// One schema change. An additive one leaves the database usable by releases that predate
/// it (they ignore what it adds); a breaking one does not.
struct Migration {
    sql: &'static str,
    breaking: bool,
}

/// Schema migrations, applied in order. The database records two numbers:
/// - `logbook_schema.version`: how many have run (the schema it is at);
/// - `PRAGMA user_version`: the floor, the number of the last breaking one. A release that
///   knows fewer migrations than the floor cannot use the database and refuses it; one that
///   knows at least that many runs on it, whatever additive migrations came after.
///
/// Releases before there was a floor read `user_version` as the schema version and refuse
/// a larger one: keeping the floor there keeps them running on additive changes too.
const MIGRATIONS: &[Migration] = &[
    // 1: the journal itself.
    Migration {
        sql: "CREATE TABLE entries (
                  id         INTEGER PRIMARY KEY AUTOINCREMENT,
                  text       TEXT    NOT NULL,
                  tags       TEXT    NOT NULL DEFAULT '[]',
                  created_at TEXT    NOT NULL
              );",
        breaking: true,
    },
    // 2: idempotency keys, stored with their entry in one transaction; and where the
    // schema version lives from now on. Additive: release 1 ignores both.
    Migration {
        sql: "CREATE TABLE idempotency_keys (
                  key        TEXT    PRIMARY KEY,
                  entry_id   INTEGER NOT NULL,
                  created_at TEXT    NOT NULL
              ) WITHOUT ROWID;
              CREATE TABLE logbook_schema (version INTEGER NOT NULL);
              INSERT INTO logbook_schema (version) VALUES (1);",
        breaking: false,
    },
];

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// The oldest schema a database written by this build needs a release to know: the last
/// breaking migration. An image carries it, with [`SCHEMA_VERSION`], in its labels.
pub const SCHEMA_FLOOR: usize = floor_of(MIGRATIONS.len());

const fn floor_of(applied: usize) -> usize {
    let mut floor = 0;
    let mut i = 0;
    while i < applied {
        if MIGRATIONS[i].breaking {
            floor = i + 1;
        }
        i += 1;
    }
    floor
}

/// The most appends committed in one transaction.
const MAX_BATCH: usize = 256;
/// Appends waiting for the writer; beyond this, handlers wait (backpressure).
const QUEUE_DEPTH: usize = 4096;
const READERS: usize = 2;
/// After a failed commit, readiness stays off at least this long before a probe commit
/// may turn it back on.
pub const PROBE_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Entry {
    pub id: i64,
    pub text: String,
    pub tags: Vec<String>,
    pub created_at: String,
}

#[derive(Debug, Clone)]
pub struct NewEntry {
    pub text: String,
    pub tags: Vec<String>,
    /// The client's `Idempotency-Key`: an append repeated with it is stored once.
    pub key: Option<String>,
}

/// What an append did: stored the entry, or found it stored under the same key already.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub entry: Entry,
    pub replayed: bool,
}

#[derive(Debug)]
pub enum StorageError {
    /// The writer is shutting down or gone; the entry was not stored.
    Closed,
    /// The file is not one this build can serve (foreign, or a newer schema).
    Refused(String),
    /// Another process holds the database's lock.
    Locked(String),
    /// A stored row cannot be read back (its tags are not a JSON list, say).
    Corrupt(String),
    /// The idempotency key was used before, for another entry (its id).
    KeyReused(i64),
    Io(std::io::Error),
    Sqlite(rusqlite::Error),
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageError::Closed => f.write_str("storage is shut down"),
            StorageError::Refused(why) | StorageError::Locked(why) | StorageError::Corrupt(why) => {
                f.write_str(why)
            }
            StorageError::KeyReused(id) => {
                write!(f, "the idempotency key was used for entry {id}, with another body")
            }
            StorageError::Io(e) => write!(f, "{e}"),
            StorageError::Sqlite(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StorageError {}

impl From<rusqlite::Error> for StorageError {
    fn from(e: rusqlite::Error) -> Self {
        StorageError::Sqlite(e)
    }
}

type Reply = oneshot::Sender<Result<Appended, StorageError>>;

enum Command {
    Append(NewEntry, Reply, Instant),
    /// A tiny write transaction, to learn whether commits work again after failing.
    Probe(oneshot::Sender<bool>),
    Close,
}

/// Handle shared by request handlers. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    writer: mpsc::Sender<Command>,
    readers: Arc<Readers>,
    health: Arc<WriterHealth>,
}

/// What the writer thread tells readiness: are commits failing, or stuck?
struct WriterHealth {
    /// Commits that failed in a row; any success resets it.
    failures: AtomicU32,
    /// When the last commit failed, in microseconds after `epoch`.
    failed_at_us: AtomicU64,
    last_error: Mutex<String>,
    /// When the oldest append of the commit under way was queued, in microseconds after
    /// `epoch` (0: no commit under way).
    oldest_queued_us: AtomicU64,
    epoch: Instant,
}

impl WriterHealth {
    fn new() -> Self {
        WriterHealth {
            failures: AtomicU32::new(0),
            failed_at_us: AtomicU64::new(0),
            last_error: Mutex::new(String::new()),
            oldest_queued_us: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn commit_started(&self, oldest_queued: Instant) {
        let us = oldest_queued.saturating_duration_since(self.epoch).as_micros() as u64;
        self.oldest_queued_us.store(us.max(1), Ordering::SeqCst);
    }

    fn commit_ended(&self, result: Result<(), String>) {
        self.oldest_queued_us.store(0, Ordering::SeqCst);
        match result {
            Ok(()) => self.failures.store(0, Ordering::SeqCst),
            Err(e) => {
                *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = e;
                self.failed_at_us.store(self.epoch.elapsed().as_micros() as u64, Ordering::SeqCst);
                self.failures.fetch_add(1, Ordering::SeqCst);
            }
        }
    }
}

/// Whether the service can take writes, as `/readyz` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ready,
    /// The last `failures` commits failed (a full disk, say); `error` is the last reason.
    Failing {
        failures: u32,
        error: String,
    },
    /// An append has waited this long for its commit (a stuck disk, a held lock).
    Stalled {
        waited: Duration,
    },
    /// The writer has stopped.
    Closed,
}

struct Readers {
    conns: Vec<Mutex<Connection>>,
    next: AtomicUsize,
}

/// Owns the writer thread; `close` commits what is queued, checkpoints and joins it.
pub struct WriterHandle {
    writer: mpsc::Sender<Command>,
    thread: Option<JoinHandle<()>>,
    _lock: std::fs::File,
}

/// SQLite's own default: a commit that leaves this many WAL pages folds them back.
pub const DEFAULT_WAL_AUTOCHECKPOINT: u32 = 1000;

/// Opens (creating if needed) the database, migrates it and starts the writer thread.
pub fn open(path: &Path) -> Result<(Storage, WriterHandle), StorageError> {
    open_locked(path, lock(path)?, DEFAULT_WAL_AUTOCHECKPOINT)
}

/// [`open`], with the database's lock (see [`lock`]) already taken. `wal_autocheckpoint`
/// is in pages; 0 leaves checkpoints to someone else (Litestream, which must see every
/// WAL frame before it is folded back: its own checkpoints are timed to its syncs).
pub fn open_locked(
    path: &Path,
    lock: std::fs::File,
    wal_autocheckpoint: u32,
) -> Result<(Storage, WriterHandle), StorageError> {
    let mut conn = open_writer(path)?;
    conn.pragma_update(None, "wal_autocheckpoint", wal_autocheckpoint)?;
    migrate(&mut conn)?;
    let conns = (0..READERS).map(|_| open_reader(path).map(Mutex::new)).collect::<Result<Vec<_>, _>>()?;
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    let health = Arc::new(WriterHealth::new());
    let writer_health = health.clone();
    let thread = std::thread::Builder::new()
        .name("logbook-writer".into())
        .spawn(move || writer_loop(conn, rx, &writer_health))
        .map_err(StorageError::Io)?;
    let storage = Storage {
        writer: tx.clone(),
        readers: Arc::new(Readers { conns, next: AtomicUsize::new(0) }),
        health,
    };
    Ok((storage, WriterHandle { writer: tx, thread: Some(thread), _lock: lock }))
}

/// Takes the exclusive lock `<db>.lock`, held for as long as the returned file lives, so
/// that two services (two containers on one volume, say) or a restore never write the same
/// database at once. The lock is the kernel's: it ends with the process, however it ends.
pub fn lock(db: &Path) -> Result<std::fs::File, StorageError> {
    let path = std::path::PathBuf::from(format!("{}.lock", db.display()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(StorageError::Io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            return Err(StorageError::Locked(format!(
                "another logbook process is using this database (it holds {})",
                path.display()
            )));
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(StorageError::Io(e)),
    }
    Ok(file)
}

/// [`lock`], for what replaces the database: then SQLite itself is asked too. The side
/// file only orders processes that use it; a process that has the database open (a
/// service whose lock file was removed, say) holds SQLite's shared lock, so SQLite's
/// exclusive lock is refused. (The service itself does not ask: a reader beside it, such
/// as a replication sidecar, may rightly keep the database open.)
pub fn lock_exclusive(db: &Path) -> Result<std::fs::File, StorageError> {
    let file = lock(db)?;
    if !unshared(db)? {
        return Err(StorageError::Locked(
            "the database is open in another process (a running service?), though no process holds its lock file"
                .into(),
        ));
    }
    Ok(file)
}

/// True unless another connection has `db` open, proven by taking SQLite's exclusive lock
/// (and letting it go at once). A file that does not exist yet is not shared.
fn unshared(db: &Path) -> Result<bool, StorageError> {
    if !db.exists() {
        return Ok(true);
    }
    let conn =
        Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    conn.pragma_update(None, "locking_mode", "EXCLUSIVE")?;
    match conn.execute_batch("BEGIN EXCLUSIVE; ROLLBACK;") {
        Ok(()) => Ok(true),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if matches!(e.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) =>
        {
            Ok(false)
        }
        // Not SQLite at all, say: leave that to the caller's own checks.
        Err(_) => Ok(true),
    }
}

fn open_writer(path: &Path) -> Result<Connection, StorageError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // Refuse a foreign file before changing anything in it (WAL mode is persistent).
    let app_id: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let has_tables: bool = conn.query_row("SELECT count(*) > 0 FROM sqlite_schema", [], |r| r.get(0))?;
    if app_id != APPLICATION_ID && (app_id != 0 || has_tables) {
        return Err(StorageError::Refused("the file is an SQLite database but not a logbook one".into()));
    }
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StorageError::Refused(format!("journal_mode is {mode}, WAL is required")));
    }
    // FULL: in WAL mode, every commit syncs the log before it returns.
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

fn open_reader(path: &Path) -> Result<Connection, rusqlite::Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

fn migrate(conn: &mut Connection) -> Result<(), StorageError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let (floor, version) = schema_of(&tx)?;
    check_compatible(floor, version)?;
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.execute_batch(migration.sql)?;
        let applied = index + 1;
        if migration.breaking {
            tx.pragma_update(None, "user_version", applied as i64)?;
        }
        if applied >= 2 {
            tx.execute("UPDATE logbook_schema SET version = ?1", [applied as i64])?;
        }
        tracing::info!(version = applied, breaking = migration.breaking, "applied schema migration");
    }
    if version > SCHEMA_VERSION {
        tracing::info!(
            schema = version,
            floor,
            known = SCHEMA_VERSION,
            "the database is at a newer schema, whose changes since this build are additive: serving it"
        );
    }
    tx.pragma_update(None, "application_id", APPLICATION_ID)?;
    Ok(tx.commit()?)
}

/// The database's floor and schema version (see [`MIGRATIONS`]).
pub fn schema_of(conn: &Connection) -> Result<(usize, usize), rusqlite::Error> {
    let floor: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let floor = usize::try_from(floor).unwrap_or(usize::MAX);
    let has_version_table: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'logbook_schema'",
        [],
        |r| r.get(0),
    )?;
    // Before the version had a table of its own, user_version counted every migration.
    let version = if has_version_table {
        let v: i64 = conn.query_row("SELECT version FROM logbook_schema", [], |r| r.get(0))?;
        usize::try_from(v).unwrap_or(usize::MAX)
    } else {
        floor
    };
    Ok((floor, version))
}

/// Whether this build may run on a database at schema `version` with floor `floor`.
fn check_compatible(floor: usize, version: usize) -> Result<(), StorageError> {
    if floor > SCHEMA_VERSION {
        return Err(StorageError::Refused(format!(
            "the database is at schema {version} and needs a release that knows schema {floor} or later; \
             this build knows up to {SCHEMA_VERSION}"
        )));
    }
    Ok(())
}

fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<Command>, health: &WriterHealth) {
    let mut batch: Vec<(NewEntry, Reply)> = Vec::with_capacity(MAX_BATCH);
    // Probes that arrive behind appends learn the answer from those appends' commit.
    let mut probes: Vec<oneshot::Sender<bool>> = Vec::new();
    let mut closing = false;
    while !closing {
        let oldest_queued = match rx.blocking_recv() {
            Some(Command::Append(entry, reply, queued)) => {
                batch.push((entry, reply));
                queued
            }
            Some(Command::Probe(reply)) => {
                let _ = reply.send(probe(&mut conn, health));
                continue;
            }
            Some(Command::Close) | None => break,
        };
        // Whatever queued up during the last commit goes into this one.
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Command::Append(entry, reply, _)) => batch.push((entry, reply)),
                Ok(Command::Probe(reply)) => probes.push(reply),
                Ok(Command::Close) => {
                    closing = true;
                    break;
                }
                Err(_) => break,
            }
        }
        health.commit_started(oldest_queued);
        let committed = commit_batch(&mut conn, &mut batch, health);
        for probe in probes.drain(..) {
            let _ = probe.send(committed);
        }
    }
    // Anything still queued after Close is refused, so no caller waits forever.
    rx.close();
    while let Ok(cmd) = rx.try_recv() {
        match cmd {
            Command::Append(_, reply, _) => {
                let _ = reply.send(Err(StorageError::Closed));
            }
            Command::Probe(reply) => {
                let _ = reply.send(false);
            }
            Command::Close => {}
        }
    }
    // Fold the WAL into the main file. Never block on a reader that outlived the drain.
    let _ = conn.busy_timeout(Duration::ZERO);
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
        tracing::warn!(error = %e, "final checkpoint skipped; the WAL will be replayed at next start");
    }
    if let Err((_, e)) = conn.close() {
        tracing::warn!(error = %e, "closing the database failed");
    }
}

/// Commits a write that changes nothing visible (the application id, rewritten as it is),
/// so that it needs what an append needs: the write lock and room for a WAL frame.
fn probe(conn: &mut Connection, health: &WriterHealth) -> bool {
    health.commit_started(Instant::now());
    let result = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .and_then(|tx| {
            tx.pragma_update(None, "application_id", APPLICATION_ID)?;
            tx.commit()
        })
        .map_err(|e| e.to_string());
    let ok = result.is_ok();
    if ok {
        tracing::info!("a probe commit succeeded; writes work again");
    }
    health.commit_ended(result);
    ok
}

/// Commits `batch` in one transaction and answers each append; true if it committed.
fn commit_batch(conn: &mut Connection, batch: &mut Vec<(NewEntry, Reply)>, health: &WriterHealth) -> bool {
    metrics::histogram!("logbook_write_batch_size").record(batch.len() as f64);
    match insert_all(conn, batch) {
        Ok(outcomes) => {
            health.commit_ended(Ok(()));
            let stored = outcomes.iter().filter(|o| matches!(o, Ok(a) if !a.replayed)).count();
            metrics::counter!("logbook_entries_appended_total").increment(stored as u64);
            for ((_, reply), outcome) in batch.drain(..).zip(outcomes) {
                let _ = reply.send(outcome);
            }
            true
        }
        Err(e) => {
            health.commit_ended(Err(e.to_string()));
            metrics::counter!("logbook_storage_errors_total", "op" => "append").increment(1);
            tracing::error!(error = %e, entries = batch.len(), "append transaction failed");
            for (_, reply) in batch.drain(..) {
                let _ = reply.send(Err(StorageError::Sqlite(clone_error(&e))));
            }
            false
        }
    }
}

fn clone_error(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, msg) => rusqlite::Error::SqliteFailure(*code, msg.clone()),
        other => rusqlite::Error::InvalidParameterName(other.to_string()),
    }
}

/// Stores the batch in one transaction. An append whose key is already stored is not
/// stored again: it gets the entry stored under that key (the same body), or a refusal
/// (another body). Earlier appends of the same batch count: they are in the transaction.
fn insert_all(
    conn: &mut Connection,
    batch: &[(NewEntry, Reply)],
) -> Result<Vec<Result<Appended, StorageError>>, rusqlite::Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO entries (text, tags, created_at)
             VALUES (?1, ?2, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
             RETURNING id, created_at",
        )?;
        let mut find_key = tx.prepare_cached(
            "SELECT e.id, e.text, e.tags, e.created_at
             FROM idempotency_keys k JOIN entries e ON e.id = k.entry_id WHERE k.key = ?1",
        )?;
        let mut keep_key = tx.prepare_cached(
            "INSERT INTO idempotency_keys (key, entry_id, created_at)
             VALUES (?1, ?2, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
        )?;
        for (entry, _) in batch {
            if let Some(key) = &entry.key
                && let Some(stored) = find_key.query_row([key], row_to_entry).optional()?
            {
                outcomes.push(if stored.text == entry.text && stored.tags == entry.tags {
                    Ok(Appended { entry: stored, replayed: true })
                } else {
                    Err(StorageError::KeyReused(stored.id))
                });
                continue;
            }
            let tags = serde_json::to_string(&entry.tags).unwrap_or_else(|_| "[]".into());
            let (id, created_at): (i64, String) =
                insert.query_row(params![entry.text, tags], |r| Ok((r.get(0)?, r.get(1)?)))?;
            if let Some(key) = &entry.key {
                keep_key.execute(params![key, id])?;
            }
            let stored = Entry { id, text: entry.text.clone(), tags: entry.tags.clone(), created_at };
            outcomes.push(Ok(Appended { entry: stored, replayed: false }));
        }
    }
    tx.commit()?;
    Ok(outcomes)
}

impl Storage {
    /// Appends one entry; returns once it is durably committed.
    pub async fn append(&self, entry: NewEntry) -> Result<Entry, StorageError> {
        self.append_keyed(entry).await.map(|appended| appended.entry)
    }

    /// Appends one entry, or (its key already stored, with the same body) returns the
    /// entry stored under that key.
    pub async fn append_keyed(&self, entry: NewEntry) -> Result<Appended, StorageError> {
        let (reply, response) = oneshot::channel();
        let queued = Instant::now();
        self.writer.send(Command::Append(entry, reply, queued)).await.map_err(|_| StorageError::Closed)?;
        response.await.map_err(|_| StorageError::Closed)?
    }

    pub async fn get(&self, id: i64) -> Result<Option<Entry>, StorageError> {
        self.read(move |conn| {
            conn.prepare_cached("SELECT id, text, tags, created_at FROM entries WHERE id = ?1")?
                .query_row([id], row_to_entry)
                .optional()
        })
        .await
    }

    /// Visits the entries with an id above `after`, oldest first (keyset pagination), at
    /// most `limit` of them and only one at a time in memory, until `step` returns false.
    /// Returns `state` as `step` left it.
    pub async fn fold<T: Send + 'static>(
        &self,
        after: i64,
        limit: u32,
        mut state: T,
        mut step: impl FnMut(&mut T, Entry) -> bool + Send + 'static,
    ) -> Result<T, StorageError> {
        self.read(move |conn| {
            let mut query = conn.prepare_cached(
                "SELECT id, text, tags, created_at FROM entries WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let mut rows = query.query(params![after, limit])?;
            while let Some(row) = rows.next()? {
                if !step(&mut state, row_to_entry(row)?) {
                    break;
                }
            }
            Ok(state)
        })
        .await
    }

    /// True when the writer is running and a read answers.
    pub async fn ready(&self) -> bool {
        !self.writer.is_closed() && self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(()))).await.is_ok()
    }

    /// Whether writes work: `Stalled` once the oldest append in a commit has waited
    /// `stall_after`; `Failing` after a failed commit, until a commit succeeds. From
    /// `PROBE_AFTER` after the last failure, a probe commit is tried (bounded by
    /// `stall_after`), so readiness comes back once the cause is gone, with no traffic
    /// needed; the pause keeps a nearly full disk, where a small probe fits but appends
    /// do not, from flapping readiness faster than a balancer can follow.
    pub async fn health(&self, stall_after: Duration) -> Health {
        if self.writer.is_closed() {
            return Health::Closed;
        }
        let queued_us = self.health.oldest_queued_us.load(Ordering::SeqCst);
        if queued_us != 0 {
            let waited = self.health.epoch.elapsed().saturating_sub(Duration::from_micros(queued_us));
            if waited >= stall_after {
                return Health::Stalled { waited };
            }
        }
        if self.health.failures.load(Ordering::SeqCst) == 0 {
            return Health::Ready;
        }
        let failed_at = Duration::from_micros(self.health.failed_at_us.load(Ordering::SeqCst));
        let (reply, answer) = oneshot::channel();
        if self.health.epoch.elapsed().saturating_sub(failed_at) >= PROBE_AFTER
            && self.writer.try_send(Command::Probe(reply)).is_ok()
            && let Ok(Ok(true)) = tokio::time::timeout(stall_after, answer).await
        {
            return Health::Ready;
        }
        let error = self.health.last_error.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Health::Failing { failures: self.health.failures.load(Ordering::SeqCst), error }
    }

    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, StorageError> {
        let readers = self.readers.clone();
        let result = tokio::task::spawn_blocking(move || {
            let index = readers.next.fetch_add(1, Ordering::Relaxed) % readers.conns.len();
            let conn = readers.conns[index].lock().unwrap_or_else(|p| p.into_inner());
            query(&conn)
        })
        .await
        .map_err(|_| StorageError::Closed)?;
        result.map_err(|e| {
            metrics::counter!("logbook_storage_errors_total", "op" => "read").increment(1);
            tracing::error!(error = %e, op = "read", "storage error");
            match e {
                rusqlite::Error::FromSqlConversionFailure(_, _, why) => {
                    StorageError::Corrupt(why.to_string())
                }
                e => StorageError::Sqlite(e),
            }
        })
    }
}

/// A stored row as an entry; tags that are not a JSON list of strings are an error
/// naming the entry, never silently empty.
fn row_to_entry(row: &rusqlite::Row<'_>) -> Result<Entry, rusqlite::Error> {
    let id: i64 = row.get(0)?;
    let tags: String = row.get(2)?;
    let tags = serde_json::from_str(&tags).map_err(|e| {
        let why = format!("entry {id} has unreadable tags ({e})");
        rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, why.into())
    })?;
    Ok(Entry { id, text: row.get(1)?, tags, created_at: row.get(3)? })
}

impl WriterHandle {
    /// Commits every append queued so far, refuses later ones, checkpoints and closes.
    /// Blocks: call it from a blocking context.
    pub fn close(mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = self.writer.blocking_send(Command::Close);
            let _ = thread.join();
        }
    }
}

/// Early exits (a failed bind, say) still checkpoint and close the database. Drop may run
/// inside the async runtime, where waiting for queue space is not allowed, so it only
/// closes when the request fits at once.
impl Drop for WriterHandle {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take()
            && self.writer.try_send(Command::Close).is_ok()
        {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_db(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("logbook-storage-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir.join("test.db")
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn appends_read_back_in_order_and_survive_reopen() {
        let path = temp_db("reopen");
        let (storage, writer) = open(&path).unwrap();
        for i in 0..5 {
            let e = storage
                .append(NewEntry { text: format!("entry {i}"), tags: vec!["t".into()], key: None })
                .await
                .unwrap();
            assert_eq!(e.id, i + 1);
        }
        let page = storage
            .fold(2, 2, Vec::new(), |ids, entry| {
                ids.push(entry.id);
                true
            })
            .await
            .unwrap();
        assert_eq!(page, vec![3, 4]);
        tokio::task::spawn_blocking(move || writer.close()).await.unwrap();
        assert!(matches!(
            storage.append(NewEntry { text: "late".into(), tags: vec![], key: None }).await,
            Err(StorageError::Closed)
        ));
        // Its readers still have the file open: nothing may replace it now.
        assert!(matches!(lock_exclusive(&path), Err(StorageError::Locked(_))));
        drop(storage);

        let (storage, writer) = open(&path).unwrap();
        assert_eq!(storage.get(5).await.unwrap().unwrap().text, "entry 4");
        assert_eq!(storage.get(6).await.unwrap(), None);
        tokio::task::spawn_blocking(move || writer.close()).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_commit_held_up_makes_writes_stalled_until_it_goes_through() {
        let path = temp_db("stalled");
        let (storage, writer) = open(&path).unwrap();
        assert_eq!(storage.health(Duration::from_millis(200)).await, Health::Ready);
        // Another connection holds the write lock, as a stuck disk or a foreign writer would.
        let blocker = Connection::open(&path).unwrap();
        blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
        let appending = {
            let storage = storage.clone();
            tokio::spawn(async move {
                storage.append(NewEntry { text: "held".into(), tags: vec![], key: None }).await
            })
        };
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match storage.health(Duration::from_millis(200)).await {
                Health::Stalled { waited } => {
                    assert!(waited >= Duration::from_millis(200));
                    break;
                }
                other => assert!(Instant::now() < deadline, "still {other:?} while the commit is held"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        blocker.execute_batch("ROLLBACK").unwrap();
        assert_eq!(appending.await.unwrap().unwrap().id, 1, "the held append commits once let through");
        assert_eq!(storage.health(Duration::from_millis(200)).await, Health::Ready);
        drop(storage);
        tokio::task::spawn_blocking(move || writer.close()).await.unwrap();
    }

    /// With automatic checkpoints off (a replication sidecar checkpoints instead), the WAL
    /// keeps every frame; with them on, it is folded back and reused.
    #[tokio::test(flavor = "multi_thread")]
    async fn automatic_checkpoints_can_be_left_to_a_sidecar() {
        async fn wal_after_appends(name: &str, autocheckpoint: u32) -> u64 {
            let path = temp_db(name);
            let (storage, writer) = open_locked(&path, lock(&path).unwrap(), autocheckpoint).unwrap();
            for i in 0..300 {
                storage
                    .append(NewEntry {
                        text: format!("entry {i} {}", "x".repeat(3000)),
                        tags: vec![],
                        key: None,
                    })
                    .await
                    .unwrap();
            }
            let wal = std::fs::metadata(format!("{}-wal", path.display())).unwrap().len();
            drop(storage);
            tokio::task::spawn_blocking(move || writer.close()).await.unwrap();
            wal
        }
        let kept = wal_after_appends("autocheckpoint-off", 0).await;
        let folded = wal_after_appends("autocheckpoint-on", 20).await;
        let by_default = wal_after_appends("autocheckpoint-default", DEFAULT_WAL_AUTOCHECKPOINT).await;
        assert!(kept > 1200 * 4096, "every frame stays in the WAL: {kept} bytes");
        assert!(folded < kept / 4, "checkpoints fold the WAL back: {folded} against {kept} bytes");
        assert!(kept > by_default, "0 is not the default: {kept} against {by_default} bytes");
    }

    /// A database as a release would leave it: `floor` in user_version, `version` in the
    /// version table (none: a release from before the table), one entry.
    fn database_at(name: &str, floor: i64, version: Option<i64>) -> std::path::PathBuf {
        let path = temp_db(name);
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {floor};
             {} INSERT INTO entries (text, created_at) VALUES ('old', '2026-12-01T00:00:00Z');",
            MIGRATIONS[0].sql
        ))
        .unwrap();
        if let Some(version) = version {
            conn.execute_batch(MIGRATIONS[1].sql).unwrap();
            conn.execute("UPDATE logbook_schema SET version = ?1", [version]).unwrap();
        }
        drop(conn);
        path
    }

    fn floor_and_version(path: &std::path::Path) -> (i64, i64) {
        let conn = Connection::open(path).unwrap();
        let floor = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        let version = conn.query_row("SELECT version FROM logbook_schema", [], |r| r.get(0)).unwrap();
        (floor, version)
    }

    #[test]
    fn additive_migrations_leave_the_floor_where_older_releases_can_run() {
        assert_eq!((SCHEMA_FLOOR, SCHEMA_VERSION), (1, 2));
        // A new database: at the newest schema, with the floor of its last breaking change.
        let fresh = temp_db("schema-fresh");
        let (_, writer) = open(&fresh).unwrap();
        writer.close();
        assert_eq!(floor_and_version(&fresh), (1, 2));
        // One written by release 1 (no version table) is migrated, its floor kept at 1:
        // release 1, which refuses a user_version above 1, still runs on it.
        let old = database_at("schema-old", 1, None);
        let (_, writer) = open(&old).unwrap();
        writer.close();
        assert_eq!(floor_and_version(&old), (1, 2));
        // A later release's additive changes (version 5, floor 1): this build runs on it.
        let newer = database_at("schema-additive", 1, Some(5));
        let (_, writer) = open(&newer).unwrap();
        writer.close();
        assert_eq!(floor_and_version(&newer), (1, 5), "an older build must not lower the version");
    }

    #[test]
    fn a_database_past_this_build_s_floor_is_refused_naming_both_versions() {
        let breaking = database_at("schema-breaking", 3, Some(3));
        let err = open(&breaking).err().expect("a database needing schema 3 must be refused").to_string();
        assert_eq!(
            err,
            "the database is at schema 3 and needs a release that knows schema 3 or later; this build knows up to 2"
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_repeated_key_stores_its_entry_once_even_after_a_restart() {
        let path = temp_db("idempotency");
        let keyed =
            |text: &str, key: &str| NewEntry { text: text.into(), tags: vec![], key: Some(key.into()) };
        let (storage, writer) = open(&path).unwrap();
        let first = storage.append_keyed(keyed("pay 10", "k1")).await.unwrap();
        assert!(!first.replayed);
        // Repeated at once, and concurrently: one entry, the same id each time.
        let (a, b) = tokio::join!(
            storage.append_keyed(keyed("pay 10", "k1")),
            storage.append_keyed(keyed("pay 10", "k1"))
        );
        assert_eq!(
            (a.unwrap(), b.unwrap()),
            (Appended { replayed: true, ..first.clone() }, Appended { replayed: true, ..first.clone() })
        );
        // Two new keys in one batch, the second repeating the first: stored once.
        let (c, d) = tokio::join!(
            storage.append_keyed(keyed("pay 20", "k2")),
            storage.append_keyed(keyed("pay 20", "k2"))
        );
        let (c, d) = (c.unwrap(), d.unwrap());
        assert_eq!(c.entry.id, d.entry.id);
        assert!(c.replayed != d.replayed, "exactly one of the two stored it");
        assert!(matches!(storage.append_keyed(keyed("pay 99", "k1")).await, Err(StorageError::KeyReused(1))));
        tokio::task::spawn_blocking(move || writer.close()).await.unwrap();
        drop(storage);
        let (storage, writer) = open(&path).unwrap();
        let again = storage.append_keyed(keyed("pay 10", "k1")).await.unwrap();
        assert_eq!(again, Appended { replayed: true, ..first });
        let unkeyed =
            storage.append(NewEntry { text: "pay 10".into(), tags: vec![], key: None }).await.unwrap();
        assert_eq!(unkeyed.id, 3, "an append without a key is always stored");
        tokio::task::spawn_blocking(move || writer.close()).await.unwrap();
    }

    #[test]
    fn foreign_sqlite_files_are_refused() {
        let path = temp_db("foreign");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE other (x)").unwrap();
        drop(conn);
        let err = open(&path).err().expect("a foreign database must be refused");
        assert!(err.to_string().contains("not a logbook"), "{err}");
        let mode: String =
            Connection::open(&path).unwrap().query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "delete", "a refused file must be left as it was");
    }

    #[test]
    fn commits_are_synced_and_logged_ahead() {
        let path = temp_db("pragmas");
        let conn = open_writer(&path).unwrap();
        let synchronous: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap();
        assert_eq!(synchronous, 2, "synchronous must be FULL: a kill -9 test cannot tell NORMAL apart");
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
    }

    #[test]
    fn a_database_open_elsewhere_is_locked_even_without_the_lock_file() {
        let path = temp_db("unshared");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (x);").unwrap();
        let err = lock_exclusive(&path).expect_err("a database open elsewhere must be refused");
        assert!(err.to_string().contains("open in another process"), "{err}");
        drop(conn);
        lock_exclusive(&path).unwrap();
    }

    #[test]
    fn one_database_one_writer() {
        let path = temp_db("lock");
        let first = lock(&path).unwrap();
        let err = lock(&path).expect_err("a second lock must be refused");
        assert!(err.to_string().contains("another logbook process"), "{err}");
        drop(first);
        lock(&path).unwrap();
    }
}

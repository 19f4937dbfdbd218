//! Embedded SQLite storage.
//!
//! One writer thread owns the only read-write connection. Appends queue up while the
//! previous commit is syncing and are committed together in one durable transaction
//! (group commit), so throughput grows with concurrency while every acknowledged entry
//! is on disk. Reads use their own connections, which WAL mode never blocks.

use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, TransactionBehavior, params};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

/// Identifies a logbook database file (`PRAGMA application_id`), so foreign files are refused.
pub const APPLICATION_ID: i32 = 0x4C42_4B31; // "LBK1"

/// Schema migrations, applied in order; `PRAGMA user_version` records how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: the journal itself.
    "CREATE TABLE entries (
         id         INTEGER PRIMARY KEY AUTOINCREMENT,
         text       TEXT    NOT NULL,
         tags       TEXT    NOT NULL DEFAULT '[]',
         created_at TEXT    NOT NULL
     );",
];

/// The schema version this build writes and understands.
pub const SCHEMA_VERSION: usize = MIGRATIONS.len();

/// The most appends committed in one transaction.
const MAX_BATCH: usize = 256;
/// Appends waiting for the writer; beyond this, handlers wait (backpressure).
const QUEUE_DEPTH: usize = 4096;
const READERS: usize = 2;

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

type Reply = oneshot::Sender<Result<Entry, StorageError>>;

enum Command {
    Append(NewEntry, Reply),
    Close,
}

/// Handle shared by request handlers. Cheap to clone.
#[derive(Clone)]
pub struct Storage {
    writer: mpsc::Sender<Command>,
    readers: std::sync::Arc<Readers>,
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

/// Opens (creating if needed) the database, migrates it and starts the writer thread.
pub fn open(path: &Path) -> Result<(Storage, WriterHandle), StorageError> {
    open_locked(path, lock(path)?)
}

/// [`open`], with the database's lock (see [`lock`]) already taken.
pub fn open_locked(path: &Path, lock: std::fs::File) -> Result<(Storage, WriterHandle), StorageError> {
    let mut conn = open_writer(path)?;
    migrate(&mut conn)?;
    let conns = (0..READERS).map(|_| open_reader(path).map(Mutex::new)).collect::<Result<Vec<_>, _>>()?;
    let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
    let thread = std::thread::Builder::new()
        .name("logbook-writer".into())
        .spawn(move || writer_loop(conn, rx))
        .map_err(StorageError::Io)?;
    let storage = Storage {
        writer: tx.clone(),
        readers: std::sync::Arc::new(Readers { conns, next: AtomicUsize::new(0) }),
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
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StorageError::Locked(format!(
            "another logbook process is using this database (it holds {})",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StorageError::Io(e)),
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
    let version: i64 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let version = usize::try_from(version).unwrap_or(usize::MAX);
    if version > MIGRATIONS.len() {
        return Err(StorageError::Refused(format!(
            "the database schema is version {version}, newer than this build knows ({})",
            MIGRATIONS.len()
        )));
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
        tracing::info!(version = index + 1, "applied schema migration");
    }
    tx.pragma_update(None, "application_id", APPLICATION_ID)?;
    Ok(tx.commit()?)
}

fn writer_loop(mut conn: Connection, mut rx: mpsc::Receiver<Command>) {
    let mut batch: Vec<(NewEntry, Reply)> = Vec::with_capacity(MAX_BATCH);
    let mut closing = false;
    while !closing {
        match rx.blocking_recv() {
            Some(Command::Append(entry, reply)) => batch.push((entry, reply)),
            Some(Command::Close) | None => break,
        }
        // Whatever queued up during the last commit goes into this one.
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(Command::Append(entry, reply)) => batch.push((entry, reply)),
                Ok(Command::Close) => {
                    closing = true;
                    break;
                }
                Err(_) => break,
            }
        }
        commit_batch(&mut conn, &mut batch);
    }
    // Anything still queued after Close is refused, so no caller waits forever.
    rx.close();
    while let Ok(cmd) = rx.try_recv() {
        if let Command::Append(_, reply) = cmd {
            let _ = reply.send(Err(StorageError::Closed));
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

fn commit_batch(conn: &mut Connection, batch: &mut Vec<(NewEntry, Reply)>) {
    metrics::histogram!("logbook_write_batch_size").record(batch.len() as f64);
    match insert_all(conn, batch) {
        Ok(stored) => {
            metrics::counter!("logbook_entries_appended_total").increment(stored.len() as u64);
            for ((_, reply), entry) in batch.drain(..).zip(stored) {
                let _ = reply.send(Ok(entry));
            }
        }
        Err(e) => {
            metrics::counter!("logbook_storage_errors_total", "op" => "append").increment(1);
            tracing::error!(error = %e, entries = batch.len(), "append transaction failed");
            for (_, reply) in batch.drain(..) {
                let _ = reply.send(Err(StorageError::Sqlite(clone_error(&e))));
            }
        }
    }
}

fn clone_error(e: &rusqlite::Error) -> rusqlite::Error {
    match e {
        rusqlite::Error::SqliteFailure(code, msg) => rusqlite::Error::SqliteFailure(*code, msg.clone()),
        other => rusqlite::Error::InvalidParameterName(other.to_string()),
    }
}

fn insert_all(conn: &mut Connection, batch: &[(NewEntry, Reply)]) -> Result<Vec<Entry>, rusqlite::Error> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut stored = Vec::with_capacity(batch.len());
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO entries (text, tags, created_at)
             VALUES (?1, ?2, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
             RETURNING id, created_at",
        )?;
        for (entry, _) in batch {
            let tags = serde_json::to_string(&entry.tags).unwrap_or_else(|_| "[]".into());
            let (id, created_at) =
                insert.query_row(params![entry.text, tags], |r| Ok((r.get(0)?, r.get(1)?)))?;
            stored.push(Entry { id, text: entry.text.clone(), tags: entry.tags.clone(), created_at });
        }
    }
    tx.commit()?;
    Ok(stored)
}

impl Storage {
    /// Appends one entry; returns once it is durably committed.
    pub async fn append(&self, entry: NewEntry) -> Result<Entry, StorageError> {
        let (reply, response) = oneshot::channel();
        self.writer.send(Command::Append(entry, reply)).await.map_err(|_| StorageError::Closed)?;
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

    /// Entries with an id above `after`, oldest first (keyset pagination).
    pub async fn list(&self, after: i64, limit: u32) -> Result<Vec<Entry>, StorageError> {
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT id, text, tags, created_at FROM entries WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?
            .query_map(params![after, limit], row_to_entry)?
            .collect()
        })
        .await
    }

    /// True when the writer is running and a read answers.
    pub async fn ready(&self) -> bool {
        !self.writer.is_closed() && self.read(|conn| conn.query_row("SELECT 1", [], |_| Ok(()))).await.is_ok()
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
                .append(NewEntry { text: format!("entry {i}"), tags: vec!["t".into()] })
                .await
                .unwrap();
            assert_eq!(e.id, i + 1);
        }
        let page = storage.list(2, 2).await.unwrap();
        assert_eq!(page.iter().map(|e| e.id).collect::<Vec<_>>(), vec![3, 4]);
        tokio::task::spawn_blocking(move || writer.close()).await.unwrap();
        assert!(matches!(
            storage.append(NewEntry { text: "late".into(), tags: vec![] }).await,
            Err(StorageError::Closed)
        ));

        let (storage, writer) = open(&path).unwrap();
        assert_eq!(storage.get(5).await.unwrap().unwrap().text, "entry 4");
        assert_eq!(storage.get(6).await.unwrap(), None);
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
    fn one_database_one_writer() {
        let path = temp_db("lock");
        let first = lock(&path).unwrap();
        let err = lock(&path).expect_err("a second lock must be refused");
        assert!(err.to_string().contains("another logbook process"), "{err}");
        drop(first);
        lock(&path).unwrap();
    }
}

//! Whole-file operations for operators: backup, verify and restore.
//!
//! Every file this writes appears under its final name only once it is complete, synced
//! and verified; until then it lives under a `.partial-<pid>` name, removed on failure.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

use crate::storage::{APPLICATION_ID, SCHEMA_VERSION};

/// Why an archive operation failed; the message names the file and what to do.
#[derive(Debug)]
pub enum ArchiveError {
    /// The file is not a complete logbook database this build can serve.
    Unusable(String),
    /// A file could not be created, read, synced or moved, or already exists.
    File(String),
    /// SQLite refused an operation on a database that is otherwise usable.
    Database(String),
    /// Another process holds the database: the service is still running.
    InUse(String),
}

impl std::fmt::Display for ArchiveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArchiveError::Unusable(why)
            | ArchiveError::File(why)
            | ArchiveError::Database(why)
            | ArchiveError::InUse(why) => f.write_str(why),
        }
    }
}

impl std::error::Error for ArchiveError {}

/// What a verified database file holds.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct FileReport {
    pub entries: i64,
    pub bytes: u64,
    pub schema_version: i64,
}

#[derive(Debug, Serialize)]
pub struct RestoreReport {
    pub entries: i64,
    /// Where the replaced database was kept, if there was one.
    pub previous: Option<PathBuf>,
    /// The highest id the replaced database had issued: the restored one issues ids after
    /// it, never one a client has already seen.
    pub ids_after: Option<i64>,
}

/// The schema a build knows, or a database is at: its version, and its floor (the oldest
/// schema a release must know to use it).
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Schema {
    pub version: usize,
    pub floor: usize,
}

/// What `logbook schema` prints: this build's schema, and the database's, if it exists.
#[derive(Debug, Serialize)]
pub struct SchemaReport {
    pub build: Schema,
    pub database: Option<Schema>,
}

pub fn schema_report(db: &Path) -> Result<SchemaReport, ArchiveError> {
    let build = Schema { version: SCHEMA_VERSION, floor: crate::storage::SCHEMA_FLOOR };
    if !db.exists() {
        return Ok(SchemaReport { build, database: None });
    }
    let conn = open_to_check(db)
        .map_err(|e| ArchiveError::Unusable(format!("cannot open {}: {e}", db.display())))?;
    let (floor, version) = crate::storage::schema_of(&conn)
        .map_err(|e| ArchiveError::Unusable(format!("cannot read the schema of {}: {e}", db.display())))?;
    Ok(SchemaReport { build, database: Some(Schema { version, floor }) })
}

/// Checks that `path` is a complete logbook database this build can serve: the SQLite
/// header, the logbook application id, a schema no newer than this build's, and
/// `PRAGMA integrity_check`. Opens it read-only.
pub fn verify_file(path: &Path) -> Result<FileReport, ArchiveError> {
    let shown = path.display();
    let mut header = [0u8; 16];
    let bytes =
        std::fs::metadata(path).map_err(|e| ArchiveError::File(format!("cannot read {shown}: {e}")))?.len();
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .map_err(|_| ArchiveError::Unusable(format!("{shown} is not an SQLite database (too short)")))?;
    if &header != b"SQLite format 3\0" {
        return Err(ArchiveError::Unusable(format!("{shown} is not an SQLite database")));
    }
    let conn =
        open_to_check(path).map_err(|e| ArchiveError::Unusable(format!("cannot open {shown}: {e}")))?;
    let report = check(&conn).map_err(|e| ArchiveError::Unusable(format!("{shown}: {e}")))?;
    Ok(FileReport { bytes, ..report })
}

/// Opens `path` read-only. A WAL-mode file alone (as a replica restore writes it: no
/// `-wal` or `-journal` beside it) is opened as immutable, so it needs no `-shm` created
/// beside it and can be checked where it lies, on a read-only mount too.
fn open_to_check(path: &Path) -> rusqlite::Result<Connection> {
    let beside = |suffix: &str| Path::new(&format!("{}{suffix}", path.display())).exists();
    // The header's write version (byte 18) is 2 for a WAL-mode database.
    let mut header = [0u8; 19];
    let wal_mode = File::open(path).and_then(|mut f| f.read_exact(&mut header)).is_ok() && header[18] == 2;
    let alone = !beside("-wal") && !beside("-journal");
    let Some(shown) = path.to_str().filter(|_| wal_mode && alone) else {
        return Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY);
    };
    let mut uri = String::from("file:");
    for c in shown.chars() {
        match c {
            '%' | '?' | '#' => uri.push_str(&format!("%{:02X}", c as u32)),
            c => uri.push(c),
        }
    }
    uri.push_str("?immutable=1");
    Connection::open_with_flags(uri, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI)
}

/// The reasons `verify_file` gives, without the file's name.
fn check(conn: &Connection) -> Result<FileReport, String> {
    let pragma = |name: &str| -> Result<i64, String> {
        conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0)).map_err(|e| format!("unreadable ({e})"))
    };
    if pragma("application_id")? != i64::from(APPLICATION_ID) {
        return Err("not a logbook database".into());
    }
    let (floor, version) = crate::storage::schema_of(conn).map_err(|e| format!("unreadable ({e})"))?;
    if floor > SCHEMA_VERSION {
        return Err(format!(
            "at schema {version}, it needs a release that knows schema {floor} or later; this build knows up to {SCHEMA_VERSION}"
        ));
    }
    let schema_version = version as i64;
    let integrity: String =
        conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).map_err(|e| format!("damaged ({e})"))?;
    if integrity != "ok" {
        return Err(format!("damaged: {integrity}"));
    }
    let entries = conn
        .query_row("SELECT count(*) FROM entries", [], |r| r.get(0))
        .map_err(|e| format!("cannot count entries ({e})"))?;
    Ok(FileReport { entries, bytes: 0, schema_version })
}

/// Copies the live database at `source` to `dest` as one consistent snapshot, in rollback
/// (non-WAL) mode so the copy is one self-contained file. Writers are not blocked.
/// Never overwrites `dest`.
pub fn backup(source: &Path, dest: &Path) -> Result<FileReport, ArchiveError> {
    if dest.exists() {
        return Err(ArchiveError::File(format!("{} already exists; choose a new file name", dest.display())));
    }
    let src = Connection::open_with_flags(source, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|e| ArchiveError::Unusable(format!("cannot open {}: {e}", source.display())))?;
    src.busy_timeout(Duration::from_secs(5)).map_err(database)?;
    let app_id: i32 = src.query_row("PRAGMA application_id", [], |r| r.get(0)).map_err(|e| {
        ArchiveError::Unusable(format!("{} is not a readable SQLite database: {e}", source.display()))
    })?;
    if app_id != APPLICATION_ID {
        return Err(ArchiveError::Unusable(format!("{} is not a logbook database", source.display())));
    }
    write_verified(
        dest,
        |partial| {
            let mut dst = Connection::open(partial)
                .map_err(|e| ArchiveError::File(format!("cannot create {}: {e}", partial.display())))?;
            {
                let copy = rusqlite::backup::Backup::new(&src, &mut dst).map_err(database)?;
                // One step copies every page under a single read transaction: a consistent snapshot.
                match copy.step(-1).map_err(|e| ArchiveError::Database(format!("backup failed: {e}")))? {
                    rusqlite::backup::StepResult::Done => {}
                    other => {
                        return Err(ArchiveError::Database(format!(
                            "backup did not complete ({other:?}): the database was busy; try again"
                        )));
                    }
                }
            }
            dst.pragma_update(None, "journal_mode", "DELETE").map_err(database)?;
            dst.close().map_err(|(_, e)| database(e))
        },
        Placement::New,
    )
}

/// Replaces the database at `db` with the verified file `from`. The replaced database is
/// first kept as `<db>.<UTC time>.bak` (a self-contained copy, its WAL included). Run only
/// while the service is stopped.
pub fn restore(from: &Path, db: &Path) -> Result<RestoreReport, ArchiveError> {
    verify_file(from)?;
    // Held until the restore is done: a running service (or a second restore) refuses it.
    let _lock = crate::storage::lock_exclusive(db)
        .map_err(|e| ArchiveError::InUse(format!("{e}; stop the service first")))?;
    // Read before anything moves: the replaced database is where the highest id issued
    // is known.
    let issued = if db.exists() { highest_issued(db)? } else { None };
    let previous = if db.exists() {
        let stamp: String = Connection::open_in_memory()
            .and_then(|c| c.query_row("SELECT strftime('%Y%m%dT%H%M%SZ', 'now')", [], |r| r.get(0)))
            .map_err(database)?;
        let kept = PathBuf::from(format!("{}.{stamp}.bak", db.display()));
        backup(db, &kept)
            .map_err(|e| ArchiveError::File(format!("cannot keep the current database: {e}")))?;
        Some(kept)
    } else {
        None
    };
    let copied = write_verified(
        db,
        |partial| {
            std::fs::copy(from, partial)
                .map_err(|e| ArchiveError::File(format!("cannot copy {}: {e}", from.display())))?;
            match issued {
                Some(issued) => raise_sequence(partial, issued),
                None => Ok(()),
            }
        },
        // A WAL left beside the old file would be replayed into the restored one.
        Placement::Replace(&|| {
            for stale in ["-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{stale}", db.display()));
            }
        }),
    )?;
    Ok(RestoreReport { entries: copied.entries, previous, ids_after: issued })
}

/// The highest entry id `db` has issued: SQLite's AUTOINCREMENT sequence, which never
/// goes back (or the highest id stored, should the sequence be missing).
fn highest_issued(db: &Path) -> Result<Option<i64>, ArchiveError> {
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| ArchiveError::Unusable(format!("cannot open {}: {e}", db.display())))?;
    conn.query_row(
        "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'entries'), 0),
                    coalesce((SELECT max(id) FROM entries), 0))",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| (n > 0).then_some(n))
    .map_err(|e| ArchiveError::Unusable(format!("cannot read the ids {} issued: {e}", db.display())))
}

/// Makes `file` issue ids after `issued`: its sequence is raised to it (never lowered).
fn raise_sequence(file: &Path, issued: i64) -> Result<(), ArchiveError> {
    let conn = Connection::open(file)
        .map_err(|e| ArchiveError::File(format!("cannot open {}: {e}", file.display())))?;
    let raised = conn
        .execute("UPDATE sqlite_sequence SET seq = max(seq, ?1) WHERE name = 'entries'", [issued])
        .map_err(database)?;
    if raised == 0 {
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('entries', ?1)", [issued])
            .map_err(database)?;
    }
    conn.close().map_err(|(_, e)| database(e))
}

/// How a verified file takes its final name.
enum Placement<'a> {
    /// Only if nothing has that name yet, checked atomically (a hard link cannot overwrite).
    New,
    /// Over whatever is there, after running the given step.
    Replace(&'a dyn Fn()),
}

/// Writes `dest` through `write(partial)`, syncs and verifies the partial file, then gives
/// it its final name as `placement` says. The partial file is removed on any failure.
fn write_verified(
    dest: &Path,
    write: impl FnOnce(&Path) -> Result<(), ArchiveError>,
    placement: Placement<'_>,
) -> Result<FileReport, ArchiveError> {
    let partial = create_new_beside(dest, "partial")?;
    let result = write(&partial).and_then(|()| sync(&partial)).and_then(|()| verify_file(&partial)).and_then(
        |report| {
            let placed = match placement {
                Placement::New => {
                    std::fs::hard_link(&partial, dest).and_then(|()| std::fs::remove_file(&partial))
                }
                Placement::Replace(before) => {
                    before();
                    std::fs::rename(&partial, dest)
                }
            };
            placed.map_err(|e| {
                ArchiveError::File(format!("cannot move the copy to {}: {e}", dest.display()))
            })?;
            sync_dir(dest);
            Ok(report)
        },
    );
    if result.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    result
}

/// Creates a new, empty file `<path>.<tag>-<unique>` in `path`'s directory, never opening
/// one that exists (O_EXCL, which also refuses to follow a symlink planted there), so the
/// file is ours to write and to remove. Created here first, so a refusal carries the
/// operating system's reason (a read-only filesystem, say) rather than SQLite's.
pub fn create_new_beside(path: &Path, tag: &str) -> Result<PathBuf, ArchiveError> {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    for attempt in 0..100u32 {
        let candidate = with_suffix(path, &format!("{tag}-{}-{nanos:x}-{attempt}", std::process::id()));
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&candidate) {
            Ok(_) => return Ok(candidate),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(ArchiveError::File(format!("cannot create {}: {e}", candidate.display()))),
        }
    }
    Err(ArchiveError::File(format!(
        "cannot create a new file beside {}: every name tried exists",
        path.display()
    )))
}

fn database(e: rusqlite::Error) -> ArchiveError {
    ArchiveError::Database(e.to_string())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}.{suffix}", path.display()))
}

fn sync(path: &Path) -> Result<(), ArchiveError> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| ArchiveError::File(format!("cannot sync {}: {e}", path.display())))
}

/// Makes a rename durable. Best effort: not every filesystem can sync a directory.
fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
}

//! Whole-file operations for operators: backup, verify and restore.
//!
//! Every file this writes appears under its final name only once it is complete, synced
//! and verified; until then it lives under a `.partial-<pid>` name, removed on failure.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension};
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
    /// The highest entry id it holds (0 when it holds none).
    pub last_id: i64,
}

#[derive(Debug, Serialize)]
pub struct RestoreReport {
    pub entries: i64,
    /// Where the replaced database was kept, if there was one.
    pub previous: Option<PathBuf>,
    /// The highest id the replaced database had issued: the restored one issues ids after
    /// it, never one a client has already seen.
    pub ids_after: Option<i64>,
    /// Entries carried over from an export (`--carry`), kept with their ids.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub carried: Option<usize>,
    /// Entries of the export that could not be carried over, each with the reason; they
    /// stay in the export file.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_carried: Vec<String>,
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
    /// The snapshots taken before migrations, oldest first (see [`snapshot_before_migrating`]).
    pub snapshots: Vec<Snapshot>,
}

/// A verified copy of the database taken just before a migration changed it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Snapshot {
    pub file: PathBuf,
    /// The schema the database was at: the releases that ran on it can run on this copy.
    pub version: usize,
}

/// Where the snapshots of database `db` are kept: `snapshots/` beside it.
pub fn snapshot_dir(db: &Path) -> PathBuf {
    db.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).join("snapshots")
}

/// Before a migration changes `db`, copies it, verified, to
/// `snapshots/schema-<version>-<UTC time>.db` beside it, so a release that ran on the
/// old schema can come back on it (`restore --from`, with `--carry` for what was
/// appended since). Run with the database's lock held, before migrating: the copy then
/// holds every acknowledged entry. Does nothing for a database that will not migrate
/// (new, current, or not a logbook file, which the open refuses).
pub fn snapshot_before_migrating(db: &Path) -> Result<Option<PathBuf>, ArchiveError> {
    // What cannot be read as a logbook database is left to the open, which refuses it
    // with its own reason; only a copy that cannot be written stops the start here.
    let version = (|| {
        if !db.is_file() {
            return None;
        }
        let conn = open_to_check(db).ok()?;
        let app_id: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0)).ok()?;
        (app_id == APPLICATION_ID).then(|| crate::storage::schema_of(&conn).ok().map(|s| s.1))?
    })();
    let Some(version) = version else { return Ok(None) };
    if version == 0 || version >= SCHEMA_VERSION {
        return Ok(None);
    }
    // A release that keeps failing before its migration commits restarts, and would copy
    // the database again each time: the last copy at this schema serves while it still
    // holds the same entries.
    let live = verify_as(db, Accept::AnySchema).ok().map(|r| (r.entries, r.last_id));
    if let Some(last) = snapshots(db).into_iter().rev().find(|s| s.version == version)
        && live.is_some()
        && verify_file(&last.file).ok().map(|r| (r.entries, r.last_id)) == live
    {
        return Ok(Some(last.file));
    }
    let dir = snapshot_dir(db);
    std::fs::create_dir_all(&dir)
        .map_err(|e| ArchiveError::File(format!("cannot create {}: {e}", dir.display())))?;
    let dest = dir.join(format!("schema-{version}-{}.db", utc_stamp()?));
    backup(db, &dest)?;
    Ok(Some(dest))
}

/// The snapshots beside `db`, oldest first (their names sort by time).
pub fn snapshots(db: &Path) -> Vec<Snapshot> {
    let Ok(dir) = std::fs::read_dir(snapshot_dir(db)) else { return Vec::new() };
    let mut found: Vec<(String, Snapshot)> = dir
        .filter_map(|entry| {
            let file = entry.ok()?.path();
            let name = file.file_name()?.to_str()?;
            let (version, stamp) = name.strip_prefix("schema-")?.strip_suffix(".db")?.split_once('-')?;
            let version = version.parse().ok()?;
            Some((stamp.to_owned(), Snapshot { file, version }))
        })
        .collect();
    // By the time they were taken (the stamp sorts as text), not by schema number.
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found.into_iter().map(|(_, snapshot)| snapshot).collect()
}

/// The current UTC time as `20261204T145012.345Z`, from SQLite (the crate has no clock library).
fn utc_stamp() -> Result<String, ArchiveError> {
    Connection::open_in_memory()
        .and_then(|c| c.query_row("SELECT strftime('%Y%m%dT%H%M%fZ', 'now')", [], |r| r.get(0)))
        .map_err(database)
}

pub fn schema_report(db: &Path) -> Result<SchemaReport, ArchiveError> {
    let build = Schema { version: SCHEMA_VERSION, floor: crate::storage::SCHEMA_FLOOR };
    if !db.exists() {
        return Ok(SchemaReport { build, database: None, snapshots: snapshots(db) });
    }
    let conn = open_to_check(db)
        .map_err(|e| ArchiveError::Unusable(format!("cannot open {}: {e}", db.display())))?;
    let (floor, version) = crate::storage::schema_of(&conn)
        .map_err(|e| ArchiveError::Unusable(format!("cannot read the schema of {}: {e}", db.display())))?;
    Ok(SchemaReport { build, database: Some(Schema { version, floor }), snapshots: snapshots(db) })
}

/// Checks that `path` is a complete logbook database this build can serve: the SQLite
/// header, the logbook application id, a schema no newer than this build's, and
/// `PRAGMA integrity_check`. Opens it read-only.
pub fn verify_file(path: &Path) -> Result<FileReport, ArchiveError> {
    verify_as(path, Accept::Servable)
}

/// Which schemas a verification accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Accept {
    /// Only one this build can serve.
    Servable,
    /// Any: the copy a restore keeps of the database it replaces, which may have been
    /// migrated past this build (a rollback across a breaking change).
    AnySchema,
}

fn verify_as(path: &Path, accept: Accept) -> Result<FileReport, ArchiveError> {
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
    let report = check(&conn, accept).map_err(|e| ArchiveError::Unusable(format!("{shown}: {e}")))?;
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
fn check(conn: &Connection, accept: Accept) -> Result<FileReport, String> {
    let pragma = |name: &str| -> Result<i64, String> {
        conn.query_row(&format!("PRAGMA {name}"), [], |r| r.get(0)).map_err(|e| format!("unreadable ({e})"))
    };
    if pragma("application_id")? != i64::from(APPLICATION_ID) {
        return Err("not a logbook database".into());
    }
    let (floor, version) = crate::storage::schema_of(conn).map_err(|e| format!("unreadable ({e})"))?;
    if floor > SCHEMA_VERSION && accept == Accept::Servable {
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
    let (entries, last_id) = conn
        .query_row("SELECT count(*), coalesce(max(id), 0) FROM entries", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .map_err(|e| format!("cannot count entries ({e})"))?;
    Ok(FileReport { entries, bytes: 0, schema_version, last_id })
}

/// Copies the live database at `source` to `dest` as one consistent snapshot, in rollback
/// (non-WAL) mode so the copy is one self-contained file. Writers are not blocked.
/// Never overwrites `dest`.
pub fn backup(source: &Path, dest: &Path) -> Result<FileReport, ArchiveError> {
    copy_as(source, dest, Accept::Servable)
}

fn copy_as(source: &Path, dest: &Path, accept: Accept) -> Result<FileReport, ArchiveError> {
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
        accept,
    )
}

/// One entry as `export` writes it, one JSON object per line, and `restore --carry` reads it.
#[derive(Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct Exported {
    pub id: i64,
    pub text: String,
    pub tags: serde_json::Value,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ExportReport {
    pub entries: usize,
    pub file: PathBuf,
}

/// Writes every entry of `db` with an id above `after` to `to`, one JSON object per line
/// ([`Exported`]), with its idempotency key: what a rollback across a schema change carries
/// onto the snapshot it restores. Never overwrites `to`.
pub fn export(db: &Path, after: i64, to: &Path) -> Result<ExportReport, ArchiveError> {
    use std::io::Write;
    if to.exists() {
        return Err(ArchiveError::File(format!("{} already exists; choose a new file name", to.display())));
    }
    let conn = open_to_check(db)
        .map_err(|e| ArchiveError::Unusable(format!("cannot open {}: {e}", db.display())))?;
    let keyed = has_table(&conn, "idempotency_keys").map_err(database)?;
    let query = if keyed {
        "SELECT e.id, e.text, e.tags, e.created_at, k.key FROM entries e
         LEFT JOIN idempotency_keys k ON k.entry_id = e.id WHERE e.id > ?1 ORDER BY e.id"
    } else {
        "SELECT id, text, tags, created_at, NULL FROM entries WHERE id > ?1 ORDER BY id"
    };
    let mut lines = Vec::new();
    let mut statement = conn.prepare(query).map_err(database)?;
    let rows = statement
        .query_map([after], |r| {
            let tags: String = r.get(2)?;
            Ok(Exported {
                id: r.get(0)?,
                text: r.get(1)?,
                tags: serde_json::from_str(&tags).unwrap_or(serde_json::Value::String(tags)),
                created_at: r.get(3)?,
                idempotency_key: r.get(4)?,
            })
        })
        .map_err(database)?;
    for row in rows {
        let line = serde_json::to_string(&row.map_err(database)?)
            .map_err(|e| ArchiveError::Database(e.to_string()))?;
        lines.push(line);
    }
    let partial = create_new_beside(to, "partial")?;
    let written = File::create(&partial)
        .and_then(|mut f| {
            for line in &lines {
                writeln!(f, "{line}")?;
            }
            f.sync_all()
        })
        .and_then(|()| std::fs::hard_link(&partial, to));
    let _ = std::fs::remove_file(&partial);
    written.map_err(|e| ArchiveError::File(format!("cannot write {}: {e}", to.display())))?;
    sync_dir(to);
    Ok(ExportReport { entries: lines.len(), file: to.to_owned() })
}

fn has_table(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    conn.query_row("SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1", [name], |r| {
        r.get(0)
    })
}

/// The entries an export wrote, every line checked.
fn read_carry(carry: &Path) -> Result<Vec<Exported>, ArchiveError> {
    let text = std::fs::read_to_string(carry)
        .map_err(|e| ArchiveError::File(format!("cannot read {}: {e}", carry.display())))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(number, line)| {
            serde_json::from_str(line).map_err(|e| {
                ArchiveError::Unusable(format!(
                    "{} line {}: not an exported entry ({e})",
                    carry.display(),
                    number + 1
                ))
            })
        })
        .collect()
}

/// Adds the exported entries in `carry` to the database file `file`, keeping their ids and
/// idempotency keys, in one transaction. An entry whose id the file already holds is
/// skipped when it is the same entry, and reported otherwise, as is one that cannot be
/// inserted; returns how many were added, and the reports.
fn carry_into(file: &Path, carry: &Path) -> Result<(usize, Vec<String>), ArchiveError> {
    let entries = read_carry(carry)?;
    let mut conn = Connection::open(file)
        .map_err(|e| ArchiveError::File(format!("cannot open {}: {e}", file.display())))?;
    let keyed = has_table(&conn, "idempotency_keys").map_err(database)?;
    let tx = conn.transaction().map_err(database)?;
    let (mut carried, mut refused) = (0, Vec::new());
    for entry in entries {
        let tags = entry.tags.to_string();
        let present: Option<(String, String)> = tx
            .query_row("SELECT text, tags FROM entries WHERE id = ?1", [entry.id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(database)?;
        match present {
            Some((text, stored))
                if text == entry.text
                    && serde_json::from_str::<serde_json::Value>(&stored).ok()
                        == Some(entry.tags.clone()) =>
            {
                continue;
            }
            Some(_) => {
                refused.push(format!("entry {}: the snapshot holds another entry with that id", entry.id));
                continue;
            }
            None => {}
        }
        let inserted = tx
            .execute(
                "INSERT INTO entries (id, text, tags, created_at) VALUES (?1, ?2, ?3, ?4)",
                rusqlite::params![entry.id, entry.text, tags, entry.created_at],
            )
            .and_then(|_| match (&entry.idempotency_key, keyed) {
                (Some(key), true) => tx.execute(
                    "INSERT OR IGNORE INTO idempotency_keys (key, entry_id, created_at) VALUES (?1, ?2, ?3)",
                    rusqlite::params![key, entry.id, entry.created_at],
                ),
                _ => Ok(0),
            });
        match inserted {
            Ok(_) => carried += 1,
            Err(e) => refused.push(format!("entry {}: {e}", entry.id)),
        }
    }
    tx.commit().map_err(database)?;
    conn.close().map_err(|(_, e)| database(e))?;
    Ok((carried, refused))
}

/// Replaces the database at `db` with the verified file `from`, and with `carry`, adds the
/// entries exported there (see [`export`]) keeping their ids. The replaced database is
/// first kept as `<db>.<UTC time>.bak` (a self-contained copy, its WAL included). Run only
/// while the service is stopped.
pub fn restore(from: &Path, db: &Path, carry: Option<&Path>) -> Result<RestoreReport, ArchiveError> {
    verify_file(from)?;
    // A carry file that cannot be read is refused before anything is written.
    if let Some(carry) = carry {
        read_carry(carry)?;
    }
    // Held until the restore is done: a running service (or a second restore) refuses it.
    let _lock = crate::storage::lock_exclusive(db)
        .map_err(|e| ArchiveError::InUse(format!("{e}; stop the service first")))?;
    // Read before anything moves: the replaced database is where the highest id issued
    // is known.
    let issued = if db.exists() { highest_issued(db)? } else { None };
    let previous = if db.exists() {
        let kept = PathBuf::from(format!("{}.{}.bak", db.display(), utc_stamp()?));
        copy_as(db, &kept, Accept::AnySchema)
            .map_err(|e| ArchiveError::File(format!("cannot keep the current database: {e}")))?;
        Some(kept)
    } else {
        None
    };
    let mut outcome = None;
    let copied = write_verified(
        db,
        |partial| {
            std::fs::copy(from, partial)
                .map_err(|e| ArchiveError::File(format!("cannot copy {}: {e}", from.display())))?;
            if let Some(carry) = carry {
                outcome = Some(carry_into(partial, carry)?);
            }
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
        Accept::Servable,
    )?;
    let (carried, not_carried) = outcome.map_or((None, Vec::new()), |(n, refused)| (Some(n), refused));
    Ok(RestoreReport { entries: copied.entries, previous, ids_after: issued, carried, not_carried })
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
    accept: Accept,
) -> Result<FileReport, ArchiveError> {
    let partial = create_new_beside(dest, "partial")?;
    let result = write(&partial)
        .and_then(|()| sync(&partial))
        .and_then(|()| verify_as(&partial, accept))
        .and_then(|report| {
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
        });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{self, NewEntry};

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("logbook-archive-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A database holding `texts`, the last of them appended with an idempotency key.
    async fn database_with(db: &Path, texts: &[&str]) {
        let (storage, writer) = storage::open(db).unwrap();
        for (i, text) in texts.iter().enumerate() {
            let key = (i + 1 == texts.len()).then(|| format!("key-{text}"));
            storage.append(NewEntry { text: (*text).into(), tags: vec!["t".into()], key }).await.unwrap();
        }
        tokio::task::spawn_blocking(move || writer.close()).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_snapshot_is_taken_only_before_a_migration() {
        let dir = temp_dir("snapshot");
        let db = dir.join("logbook.db");
        assert_eq!(snapshot_before_migrating(&db).unwrap(), None, "no database yet");
        database_with(&db, &["one", "two"]).await;
        assert_eq!(snapshot_before_migrating(&db).unwrap(), None, "already at this build's schema");

        // As if written by the release before the last migration.
        Connection::open(&db).unwrap().execute("UPDATE logbook_schema SET version = 1", []).unwrap();
        let file = snapshot_before_migrating(&db).unwrap().expect("a snapshot");
        assert!(file.starts_with(dir.join("snapshots")), "{}", file.display());
        let report = verify_file(&file).unwrap();
        assert_eq!((report.entries, report.last_id, report.schema_version), (2, 2, 1));
        assert_eq!(snapshots(&db), vec![Snapshot { file, version: 1 }]);
        assert_eq!(schema_report(&db).unwrap().snapshots.len(), 1);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_restore_carries_what_was_appended_after_its_snapshot_keeping_ids_and_keys() {
        let dir = temp_dir("carry");
        let db = dir.join("logbook.db");
        database_with(&db, &["one", "two", "three"]).await;
        let snapshot = dir.join("snapshot.db");
        backup(&db, &snapshot).unwrap();
        database_with(&db, &["four", "five"]).await;

        let export_file = dir.join("since.jsonl");
        let exported = export(&db, verify_file(&snapshot).unwrap().last_id, &export_file).unwrap();
        assert_eq!(exported.entries, 2);
        assert!(export(&db, 3, &export_file).is_err(), "an export never replaces a file");
        // A line for an entry the snapshot already holds, as an export from before it would have.
        let mut lines = std::fs::read_to_string(&export_file).unwrap();
        lines.push_str(r#"{"id":3,"text":"three","tags":["t"],"created_at":"2026-12-04T00:00:00Z"}"#);
        lines.push('\n');
        lines.push_str(r#"{"id":2,"text":"not two","tags":[],"created_at":"2026-12-04T00:00:00Z"}"#);
        std::fs::write(&export_file, lines).unwrap();

        let report = restore(&snapshot, &db, Some(&export_file)).unwrap();
        assert_eq!(report.entries, 5);
        assert_eq!(report.carried, Some(2));
        assert_eq!(
            report.not_carried,
            vec!["entry 2: the snapshot holds another entry with that id".to_owned()]
        );

        let (storage, writer) = storage::open(&db).unwrap();
        let five = storage.get(5).await.unwrap().expect("entry 5 kept its id");
        assert_eq!(five.text, "five");
        // Its key came along: a retry is answered with it, not stored again.
        let retry = NewEntry { text: "five".into(), tags: vec!["t".into()], key: Some("key-five".into()) };
        let replay = storage.append_keyed(retry).await.unwrap();
        assert!(replay.replayed && replay.entry.id == 5, "{replay:?}");
        let next = storage.append(NewEntry { text: "six".into(), tags: vec![], key: None }).await.unwrap();
        assert_eq!(next.id, 6, "no id is issued twice");
        tokio::task::spawn_blocking(move || writer.close()).await.unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_restore_keeps_a_database_migrated_past_this_build() {
        let dir = temp_dir("newer");
        let db = dir.join("logbook.db");
        database_with(&db, &["one"]).await;
        let snapshot = dir.join("snapshot.db");
        backup(&db, &snapshot).unwrap();
        // A later release's breaking change: this build could not serve it.
        Connection::open(&db).unwrap().pragma_update(None, "user_version", 99).unwrap();
        assert!(verify_file(&db).is_err());
        let report = restore(&snapshot, &db, None).unwrap();
        let kept = report.previous.expect("the replaced database is kept");
        assert!(kept.exists(), "{}", kept.display());
        assert_eq!(verify_file(&db).unwrap().entries, 1);
    }

    #[test]
    fn snapshots_are_listed_by_when_they_were_taken_not_by_schema() {
        let dir = temp_dir("order");
        let db = dir.join("logbook.db");
        std::fs::create_dir_all(snapshot_dir(&db)).unwrap();
        for name in ["schema-10-20261204T100000.000Z.db", "schema-9-20261204T110000.000Z.db", "notes.txt"] {
            std::fs::write(snapshot_dir(&db).join(name), "").unwrap();
        }
        let versions: Vec<usize> = snapshots(&db).iter().map(|s| s.version).collect();
        assert_eq!(versions, [10, 9], "the newest last");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_release_that_restarts_before_migrating_reuses_its_snapshot() {
        let dir = temp_dir("again");
        let db = dir.join("logbook.db");
        database_with(&db, &["one"]).await;
        Connection::open(&db).unwrap().execute("UPDATE logbook_schema SET version = 1", []).unwrap();
        let first = snapshot_before_migrating(&db).unwrap().unwrap();
        assert_eq!(
            snapshot_before_migrating(&db).unwrap(),
            Some(first.clone()),
            "nothing changed: the same copy"
        );
        assert_eq!(snapshots(&db).len(), 1);
    }
}

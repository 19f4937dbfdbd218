//! The binary's command line: configuration errors, `healthcheck` and `backup`.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use support::{Server, TempDir, open_db, run};

const EXIT_CONFIG: i32 = 78;

#[test]
fn each_bad_variable_stops_startup_with_one_clear_line() {
    let dir = TempDir::new("config");
    let db = dir.path().join("ok.db");
    let db = db.to_str().unwrap();
    let cases: &[(&str, &str, &str)] = &[
        ("LOGBOOK_PORT", "http", "expected an integer from 0 to 65535"),
        ("LOGBOOK_PORT", "-1", "expected an integer"),
        ("LOGBOOK_PORT", "99999", "expected an integer"),
        ("LOGBOOK_SHUTDOWN_TIMEOUT", "forever", "expected a duration"),
        ("LOGBOOK_SHUTDOWN_TIMEOUT", "0ms", "above zero"),
        ("LOGBOOK_DRAIN_DELAY", "1h", "expected a duration"),
        ("LOGBOOK_LOG_FORMAT", "yaml", "expected json or text"),
        ("LOGBOOK_BIND", "everywhere", "expected an IP address"),
        ("LOGBOOK_DB_PATH", "/nonexistent-dir/logbook.db", "expected a writable file path"),
        ("LOGBOOK_DB_PATH", "/proc/logbook.db", "expected a writable file path"),
        ("LOGBOOK_DB_PATH", dir.path().to_str().unwrap(), "expected a writable file path"),
    ];
    for (var, value, expected) in cases {
        let env = [("LOGBOOK_DB_PATH", db), ("LOGBOOK_PORT", "0"), (var, value)];
        let (code, stdout, stderr) = run(&[], &env);
        assert_eq!(code, EXIT_CONFIG, "{var}={value}: stderr {stderr}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{var}={value}: expected one line, got {stderr:?}");
        let line = lines[0];
        assert!(line.contains(var) && line.contains(value) && line.contains(expected), "{line}");
        assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
        let _ = stdout;
    }
}

#[test]
fn unsafe_auth_settings_stop_startup_with_one_line_naming_the_variable() {
    let dir = TempDir::new("auth-config");
    let db = dir.path().join("ok.db");
    let db = db.to_str().unwrap();
    let cases: &[(&[(&str, &str)], &str)] = &[
        (&[("LOGBOOK_API_TOKEN", "")], "LOGBOOK_API_TOKEN: expected a non-empty value"),
        (&[("LOGBOOK_API_TOKEN_FILE", "")], "LOGBOOK_API_TOKEN_FILE: expected a non-empty value"),
        (&[("LOGBOOK_BIND", "0.0.0.0")], "LOGBOOK_ALLOW_UNAUTHENTICATED=1"),
        // The line to copy, as the README shows it.
        (&[("LOGBOOK_BIND", "0.0.0.0")], logbook::config::FIRST_CONTACT),
    ];
    for (vars, expected) in cases {
        let mut env = vec![("LOGBOOK_DB_PATH", db), ("LOGBOOK_PORT", "0")];
        env.extend_from_slice(vars);
        let (code, _, stderr) = run(&[], &env);
        assert_eq!(code, EXIT_CONFIG, "{vars:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{vars:?}: {stderr:?}");
        assert!(stderr.contains(expected), "{vars:?}: {stderr}");
    }
}

#[test]
fn a_taken_port_is_named() {
    let server = Server::start(&[]);
    let dir = TempDir::new("port");
    let db = dir.path().join("x.db");
    let port = server.addr.port().to_string();
    let env =
        [("LOGBOOK_DB_PATH", db.to_str().unwrap()), ("LOGBOOK_PORT", &port), ("LOGBOOK_BIND", "127.0.0.1")];
    let (code, _, stderr) = run(&[], &env);
    assert_eq!(code, EXIT_CONFIG, "{stderr}");
    assert!(stderr.contains(&format!("LOGBOOK_PORT={port}")) && stderr.contains("in use"), "{stderr}");
}

#[test]
fn a_secret_in_a_bad_config_is_not_echoed() {
    let (code, _, stderr) =
        run(&[], &[("LOGBOOK_API_TOKEN", "s3cr3t-value"), ("LOGBOOK_API_TOKEN_FILE", "/x")]);
    assert_eq!(code, EXIT_CONFIG);
    assert!(stderr.contains("LOGBOOK_API_TOKEN") && !stderr.contains("s3cr3t-value"), "{stderr}");
}

#[test]
fn unknown_arguments_are_a_usage_error() {
    let (code, _, stderr) = run(&["frobnicate"], &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("Usage:"));
    let (code, stdout, _) = run(&["--help"], &[]);
    assert_eq!(code, 0);
    assert!(stdout.contains("logbook healthcheck"));
}

#[test]
fn healthcheck_reports_the_local_service() {
    let server = Server::start(&[]);
    let port = server.addr.port().to_string();
    let up = run(&["healthcheck"], &[("LOGBOOK_PORT", &port)]);
    assert_eq!(up.0, 0, "{up:?}");
    drop(server);
    let (code, _, stderr) = run(&["healthcheck"], &[("LOGBOOK_PORT", &port)]);
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot connect"), "{stderr}");
}

#[test]
fn backup_under_concurrent_writes_is_consistent_and_verified() {
    let server = Server::start(&[]);
    for i in 0..50 {
        server.post_json("/api/entries", &format!(r#"{{"text":"seed {i}"}}"#));
    }
    let writing = Arc::new(AtomicBool::new(true));
    let writer = {
        let (writing, addr) = (writing.clone(), server.addr);
        std::thread::spawn(move || {
            let mut n = 0;
            while writing.load(Ordering::Relaxed) {
                let body = format!(r#"{{"text":"during backup {n}"}}"#);
                let r = support::request(
                    addr,
                    "POST",
                    "/api/entries",
                    &[("Content-Type", "application/json")],
                    Some(body.as_bytes()),
                )
                .unwrap();
                assert_eq!(r.status, 201);
                n += 1;
            }
            n
        })
    };
    let out = TempDir::new("backup");
    let db = server.db.to_str().unwrap().to_owned();
    let mut copies = Vec::new();
    for i in 0..3 {
        let dest = out.path().join(format!("copy-{i}.db"));
        let (code, stdout, stderr) =
            run(&["backup", "--to", dest.to_str().unwrap()], &[("LOGBOOK_DB_PATH", &db)]);
        assert_eq!(code, 0, "{stderr}");
        let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        assert!(
            report["entries"].as_i64().unwrap() >= 50 && report["bytes"].as_u64().unwrap() > 0,
            "{stdout}"
        );
        copies.push(dest);
    }
    writing.store(false, Ordering::Relaxed);
    let during = writer.join().unwrap();
    assert!(during > 0, "no write ran during the backups");

    for copy in &copies {
        let conn = open_db(copy);
        let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok");
        // A snapshot: ids are exactly 1..=count with no gaps.
        let (count, max): (i64, i64) = conn
            .query_row("SELECT count(*), max(id) FROM entries", [], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap();
        assert!(count >= 50);
        assert_eq!(count, max);
        let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "delete", "a backup is one self-contained file");
    }
    let leftovers = std::fs::read_dir(out.path())
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains("partial"))
        .count();
    assert_eq!(leftovers, 0, "partial files left behind");

    // Never overwrite, and refuse what is not a logbook database.
    let (code, _, stderr) =
        run(&["backup", "--to", copies[0].to_str().unwrap()], &[("LOGBOOK_DB_PATH", &db)]);
    assert_eq!(code, 1);
    assert!(stderr.contains("already exists"), "{stderr}");
    let foreign = out.path().join("foreign.db");
    open_db(&foreign).execute_batch("CREATE TABLE t (x)").unwrap();
    let dest = out.path().join("never.db");
    let (code, _, stderr) =
        run(&["backup", "--to", dest.to_str().unwrap()], &[("LOGBOOK_DB_PATH", foreign.to_str().unwrap())]);
    assert_eq!(code, 1);
    assert!(stderr.contains("not a logbook database"), "{stderr}");
    assert!(!dest.exists());
}

/// Runs the binary with stdout captured as bytes (a backup streamed to stdout).
fn run_binary_stdout(args: &[&str], env: &[(&str, &str)]) -> (i32, Vec<u8>, String) {
    let out = support::bare_command().args(args).envs(env.iter().copied()).output().unwrap();
    (out.status.code().unwrap_or(-1), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn backup_to_stdout_streams_a_verified_database_and_leaves_nothing_behind() {
    let server = Server::start(&[]);
    for i in 0..10 {
        server.post_json("/api/entries", &format!(r#"{{"text":"entry {i}"}}"#));
    }
    let db = server.db.to_str().unwrap().to_owned();
    // Files named as earlier versions named their temporary files, for the small pids a
    // container's processes get: not this process's, so never touched.
    let dir = server.db.parent().unwrap().to_owned();
    let strangers: Vec<_> = (1..=64)
        .flat_map(|pid| {
            [format!(".logbook-backup-{pid}.db"), format!(".logbook-backup-{pid}.db.partial-{pid}")]
        })
        .map(|name| dir.join(name))
        .collect();
    for stranger in &strangers {
        std::fs::write(stranger, "not ours").unwrap();
    }
    let (code, bytes, stderr) = run_binary_stdout(&["backup", "--to", "-"], &[("LOGBOOK_DB_PATH", &db)]);
    for stranger in &strangers {
        assert_eq!(std::fs::read_to_string(stranger).unwrap(), "not ours", "{}", stranger.display());
        std::fs::remove_file(stranger).unwrap();
    }
    assert_eq!(code, 0, "{stderr}");
    assert!(bytes.starts_with(b"SQLite format 3\0"));
    assert!(stderr.contains(r#""entries":10"#), "the report goes to stderr: {stderr}");
    let out = TempDir::new("stdout-backup");
    let copy = out.path().join("copy.db");
    std::fs::write(&copy, &bytes).unwrap();
    let (code, stdout, _) = run(&["verify", copy.to_str().unwrap()], &[]);
    assert_eq!(code, 0);
    assert!(stdout.contains(r#""entries":10"#), "{stdout}");
    let leftovers: Vec<_> = std::fs::read_dir(server.db.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.contains("backup"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn verify_refuses_missing_truncated_foreign_and_non_sqlite_files() {
    let dir = TempDir::new("verify");
    let good = dir.path().join("good.db");
    {
        let server = Server::start_with_db(&dir.path().join("live.db"), &[]);
        for i in 0..200 {
            server.post_json("/api/entries", &format!(r#"{{"text":"entry {i} {}"}}"#, "x".repeat(200)));
        }
        let live = dir.path().join("live.db");
        let (code, _, stderr) =
            run(&["backup", "--to", good.to_str().unwrap()], &[("LOGBOOK_DB_PATH", live.to_str().unwrap())]);
        assert_eq!(code, 0, "{stderr}");
    }
    let bytes = std::fs::read(&good).unwrap();
    let truncated = dir.path().join("truncated.db");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a database at all, just some text").unwrap();
    let foreign = dir.path().join("foreign.db");
    open_db(&foreign).execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);").unwrap();
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();

    let (code, stdout, _) = run(&["verify", good.to_str().unwrap()], &[]);
    assert_eq!(code, 0);
    assert!(stdout.contains(r#""entries":200"#) && stdout.contains(r#""schema_version":2"#), "{stdout}");
    for (file, reason) in [
        (dir.path().join("missing.db"), "cannot read"),
        (truncated, "truncated.db"),
        (text, "not an SQLite database"),
        (foreign, "not a logbook database"),
        (empty, "not an SQLite database"),
    ] {
        let (code, _, stderr) = run(&["verify", file.to_str().unwrap()], &[]);
        assert_eq!(code, 1, "{} was accepted", file.display());
        assert!(stderr.contains(reason) && stderr.lines().count() == 1, "{stderr}");
    }
}

/// A replica restore writes a WAL-mode file with no `-wal` beside it; it is checked where
/// it lies, creating nothing there (so a read-only mount works).
#[test]
fn verify_checks_a_wal_mode_file_alone_without_creating_files_beside_it() {
    let dir = TempDir::new("verify-wal");
    let live = dir.path().join("live.db");
    let mut server = Server::start_with_db(&live, &[]);
    for i in 0..3 {
        server.post_json("/api/entries", &format!(r#"{{"text":"entry {i}"}}"#));
    }
    server.signal("TERM");
    assert!(server.wait_exit(std::time::Duration::from_secs(10)).success());
    let alone_dir = dir.path().join("restored");
    std::fs::create_dir(&alone_dir).unwrap();
    let alone = alone_dir.join("logbook.db");
    std::fs::copy(&live, &alone).unwrap();
    assert_eq!(std::fs::read(&alone).unwrap()[18], 2, "the copy must be a WAL-mode file");

    let (code, stdout, stderr) = run(&["verify", alone.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains(r#""entries":3"#), "{stdout}");
    let beside: Vec<_> = std::fs::read_dir(&alone_dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(beside, ["logbook.db"], "verify created files beside the checked one");
}

#[test]
fn restore_replaces_the_database_and_keeps_the_old_one() {
    let dir = TempDir::new("restore");
    let live = dir.path().join("live.db");
    let backup = dir.path().join("backup.db");
    let env = [("LOGBOOK_DB_PATH", live.to_str().unwrap())];
    let mut server = Server::start_with_db(&live, &[]);
    for i in 0..5 {
        server.post_json("/api/entries", &format!(r#"{{"text":"before {i}"}}"#));
    }
    assert_eq!(run(&["backup", "--to", backup.to_str().unwrap()], &env).0, 0);
    for i in 0..3 {
        server.post_json("/api/entries", &format!(r#"{{"text":"after {i}"}}"#));
    }
    // Stopped by SIGKILL: the newest entries may live only in the WAL, which the kept
    // copy must include.
    server.signal("KILL");
    server.wait_exit(std::time::Duration::from_secs(5));

    let bad = dir.path().join("bad.db");
    std::fs::write(&bad, b"SQLite format 3\0 but nothing else").unwrap();
    let (code, _, stderr) = run(&["restore", "--from", bad.to_str().unwrap()], &env);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(support::stored_entries(&live).len(), 8, "a refused restore must not touch the database");

    let (code, stdout, stderr) = run(&["restore", "--from", backup.to_str().unwrap()], &env);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["entries"], 5);
    let kept = std::path::PathBuf::from(report["previous"].as_str().unwrap());
    assert!(kept.to_str().unwrap().ends_with(".bak"));
    assert_eq!(support::stored_entries(&kept).len(), 8, "the kept copy has every entry, WAL included");

    assert_eq!(report["ids_after"], 8, "{stdout}");

    let restarted = Server::start_with_db(&live, &[]);
    assert_eq!(restarted.get("/api/entries").json()["entries"].as_array().unwrap().len(), 5);
    assert_eq!(restarted.get("/api/entries/5").json()["text"], "before 4");
    assert_eq!(restarted.get("/api/entries/6").status, 404);
    // Ids 6 to 8 were issued (and seen by clients) before the restore: never again.
    let appended = restarted.post_json("/api/entries", r#"{"text":"after the restore"}"#);
    assert_eq!(appended.json()["id"], 9, "an id issued before the restore was issued again");
}

#[test]
fn one_database_serves_one_process_and_restore_waits_for_it_to_stop() {
    let server = Server::start(&[]);
    let db = server.db.to_str().unwrap().to_owned();
    let (code, _, stderr) =
        run(&[], &[("LOGBOOK_DB_PATH", &db), ("LOGBOOK_PORT", "0"), ("LOGBOOK_LOCK_WAIT", "0")]);
    assert_eq!(code, EXIT_CONFIG, "{stderr}");
    assert!(stderr.contains("another logbook process is using this database"), "{stderr}");

    let dir = TempDir::new("restore-live");
    let backup = dir.path().join("b.db");
    assert_eq!(run(&["backup", "--to", backup.to_str().unwrap()], &[("LOGBOOK_DB_PATH", &db)]).0, 0);
    let (code, _, stderr) =
        run(&["restore", "--from", backup.to_str().unwrap()], &[("LOGBOOK_DB_PATH", &db)]);
    assert_eq!(code, 1);
    assert!(stderr.contains("stop the service first"), "{stderr}");
    assert_eq!(server.get("/readyz").status, 200, "the running service is untouched");
}

#[test]
fn schema_names_what_the_build_knows_and_what_the_database_is_at() {
    let dir = TempDir::new("schema");
    let db = dir.path().join("logbook.db");
    let env = [("LOGBOOK_DB_PATH", db.to_str().unwrap())];
    let (code, stdout, stderr) = run(&["schema"], &env);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), r#"{"build":{"version":2,"floor":1},"database":null,"snapshots":[]}"#);
    let mut server = Server::start_with_db(&db, &[]);
    server.post_json("/api/entries", r#"{"text":"one"}"#);
    // Read while the service runs, as the runner asks a running container.
    let (code, stdout, stderr) = run(&["schema"], &env);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.trim(),
        r#"{"build":{"version":2,"floor":1},"database":{"version":2,"floor":1},"snapshots":[]}"#
    );
    server.signal("TERM");
    server.wait_exit(std::time::Duration::from_secs(10));
}

#[test]
fn export_names_a_bad_id_and_restore_a_missing_carry_file() {
    let dir = TempDir::new("export");
    let db = dir.path().join("logbook.db");
    let env = [("LOGBOOK_DB_PATH", db.to_str().unwrap())];
    let to = dir.path().join("since.jsonl");
    let (code, _, stderr) = run(&["export", "--after", "ten", "--to", to.to_str().unwrap()], &env);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--after takes an entry id (a whole number), not \"ten\""), "{stderr}");
    let backup = dir.path().join("backup.db");
    let mut server = Server::start_with_db(&db, &[]);
    server.post_json("/api/entries", r#"{"text":"one"}"#);
    assert_eq!(run(&["backup", "--to", backup.to_str().unwrap()], &env).0, 0);
    server.signal("TERM");
    server.wait_exit(std::time::Duration::from_secs(10));
    let missing = dir.path().join("missing.jsonl");
    let (code, _, stderr) =
        run(&["restore", "--from", backup.to_str().unwrap(), "--carry", missing.to_str().unwrap()], &env);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("cannot read") && stderr.contains("missing.jsonl"), "{stderr}");
    let (code, stdout, _) = run(&["verify", db.to_str().unwrap()], &env);
    assert_eq!(code, 0);
    assert!(stdout.contains(r#""entries":1"#), "a failed restore changes nothing: {stdout}");
}

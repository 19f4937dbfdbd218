//! The stack's lock, across processes: a freeze refuses every changing command naming who
//! froze it and why; a command that holds the lock refuses another, or makes it wait with
//! --lock-wait; a holder that died is reported and taken over. The runner runs against a
//! stand-in docker, with its state in a scratch directory.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::FakePrograms;

fn setup(name: &str) -> (FakePrograms, PathBuf) {
    let state = std::env::temp_dir().join(format!("xtask-lock-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    std::fs::create_dir_all(&state).unwrap();
    let mut fakes = FakePrograms::new(&format!("lock-{name}"));
    fakes.program("docker", support::DOCKER).program("git", support::GIT);
    fakes.env = vec![
        ("LOGBOOK_STATE_DIR".into(), state.display().to_string()),
        ("FAKE_IMAGES".into(), "logbook:aaaaaaaaaaaa".into()),
    ];
    (fakes, state)
}

fn holder_json(pid: u32, command: &str) -> String {
    format!(
        r#"{{"by":"bob@web2","host":"web2","pid":{pid},"command":"{command}","since":"2026-12-04T10:00:00Z","message":"deploying the fix"}}"#
    )
}

/// Holds the lock file as another runner would, with its holder record.
fn hold(state: &Path) -> std::fs::File {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(state.join("releases-logbook.lock"))
        .unwrap();
    file.try_lock().unwrap();
    file.set_len(0).unwrap();
    file.write_all(holder_json(4242, "up --tag abc").as_bytes()).unwrap();
    file
}

#[test]
fn a_freeze_refuses_changes_naming_who_and_why_until_released() {
    let (fakes, state) = setup("freeze");
    let (ok, out) = fakes.xtask(&["lock", "acquire", "-m", "incident 42: hold deploys"]);
    assert!(ok, "{out}");
    assert!(out.contains("deploys frozen by "), "{out}");
    for command in [
        &["up", "--tag", "aaaaaaaaaaaa", "--dry-run"][..],
        &["rollback", "--dry-run"],
        &["down", "--dry-run"],
        &["monitoring-down", "--dry-run"],
    ] {
        let (ok, out) = fakes.xtask(command);
        assert!(!ok, "{command:?} ran while frozen:\n{out}");
        assert!(out.contains("deploys are frozen by "), "{command:?}: {out}");
        assert!(out.contains("\"incident 42: hold deploys\""), "{command:?}: {out}");
        assert!(out.contains("`cargo xtask lock release` lifts the freeze"), "{command:?}: {out}");
    }
    let (ok, out) = fakes.xtask(&["lock", "status", "--json"]);
    assert!(ok, "{out}");
    let status: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(status["frozen_by"]["message"], "incident 42: hold deploys");
    assert_eq!(status["frozen_by"]["command"], "lock acquire -m incident 42: hold deploys");
    assert!(status["held_by"].is_null(), "{out}");
    let (ok, out) = fakes.xtask(&["lock", "release"]);
    assert!(ok && out.contains("is lifted"), "{out}");
    let (ok, out) = fakes.xtask(&["up", "--tag", "aaaaaaaaaaaa", "--dry-run"]);
    assert!(ok, "{out}");
    let (ok, out) = fakes.xtask(&["lock", "acquire", "-m", " "]);
    assert!(!ok && out.contains("--message is empty"), "{out}");
    std::fs::remove_dir_all(&state).unwrap();
}

#[test]
fn a_held_lock_refuses_another_command_or_makes_it_wait() {
    let (fakes, state) = setup("held");
    let held = hold(&state);
    let (ok, out) = fakes.xtask(&["down"]);
    assert!(!ok, "down ran while another command held the lock:\n{out}");
    assert!(out.contains("the stack is locked by bob@web2 (pid 4242, `up --tag abc`), for "), "{out}");
    assert!(out.contains(": \"deploying the fix\"; nothing was changed"), "{out}");
    assert!(!fakes.calls().iter().any(|c| c.contains(" down")), "compose down ran: {:?}", fakes.calls());
    let (ok, out) = fakes.xtask(&["lock", "status"]);
    assert!(ok && out.contains("locked by bob@web2"), "{out}");
    // Released while the second command waits: it goes ahead.
    let releaser = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        held.set_len(0).unwrap();
        drop(held);
    });
    let started = Instant::now();
    let (ok, out) = fakes.xtask(&["down", "--lock-wait", "20s"]);
    releaser.join().unwrap();
    assert!(ok, "{out}");
    assert!(out.contains("waiting up to 20s"), "{out}");
    assert!(started.elapsed() >= Duration::from_millis(600), "it did not wait");
    assert!(fakes.calls().iter().any(|c| c.contains(" down")), "compose down did not run");
    let (ok, out) = fakes.xtask(&["down", "--lock-wait", "soon"]);
    assert!(!ok && out.contains("expected a duration such as 90s or 10m"), "{out}");
    std::fs::remove_dir_all(&state).unwrap();
}

#[test]
fn a_holder_that_died_is_reported_and_taken_over() {
    let (fakes, state) = setup("dead");
    // A record left by a runner that was killed: the file is not locked.
    std::fs::write(state.join("releases-logbook.lock"), holder_json(999_999, "up")).unwrap();
    let (ok, out) = fakes.xtask(&["lock", "status"]);
    assert!(ok && out.contains("ended without releasing it"), "{out}");
    let (ok, out) = fakes.xtask(&["down"]);
    assert!(ok, "{out}");
    assert!(out.contains("the lock's previous holder, bob@web2 (pid 999999, `up`)"), "{out}");
    assert!(out.contains("is gone without releasing it; taking it over"), "{out}");
    let left = std::fs::read_to_string(state.join("releases-logbook.lock")).unwrap();
    assert!(left.is_empty(), "a clean exit leaves a holder record: {left}");
    std::fs::remove_dir_all(&state).unwrap();
}

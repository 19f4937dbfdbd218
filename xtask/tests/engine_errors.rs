//! What a user sees when Docker or Compose is missing or too old: one actionable line,
//! with no backtrace even where RUST_BACKTRACE is set, as on many developer machines.
#![allow(clippy::unwrap_used)]

mod support;

use support::FakePrograms;

/// Runs `cargo xtask status` with PATH holding only the given stand-ins.
fn status_with(name: &str, scripts: &[(&str, &str)]) -> String {
    let mut fakes = FakePrograms::new(&format!("engine-{name}"));
    fakes.inherit_path = false; // only the stand-ins: a system-wide docker stays out of sight
    for (program, body) in scripts {
        fakes.program(program, body);
    }
    let (ok, output) = fakes.xtask_with(&["status"], &[("RUST_BACKTRACE", "1")]);
    assert!(!ok, "{output}");
    output
}

#[test]
fn docker_missing_says_so() {
    let err = status_with("missing", &[]);
    assert_eq!(
        err.trim(),
        "error: docker is not installed or not on PATH: install Docker Engine (https://docs.docker.com/engine/install/)"
    );
}

#[test]
fn daemon_down_says_how_to_start_it() {
    let docker = r#"case "$1" in --version) echo 'Docker version 20.10.24' ;; *) echo 'Cannot connect to the Docker daemon' >&2; exit 1 ;; esac"#;
    let err = status_with("daemon", &[("docker", docker)]);
    assert!(err.contains("Docker daemon is not running") && err.contains("systemctl start docker"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line, no backtrace: {err}");
}

#[test]
fn compose_v1_is_refused() {
    let docker = r#"case "$1" in compose) exit 1 ;; *) echo 20.10.24 ;; esac"#;
    let err = status_with("v1", &[("docker", docker), ("docker-compose", "echo 1.29.2")]);
    assert!(err.contains("Compose v1") && err.contains("v2 or later"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn a_backtrace_is_shown_only_when_asked_for() {
    let mut fakes = FakePrograms::new("engine-backtrace");
    fakes.inherit_path = false;
    let (ok, output) = fakes.xtask_with(&["status"], &[("XTASK_BACKTRACE", "1"), ("RUST_BACKTRACE", "1")]);
    assert!(!ok);
    assert!(output.contains("docker is not installed") && output.contains("Stack backtrace"), "{output}");
}

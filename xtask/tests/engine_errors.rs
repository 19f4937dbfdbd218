//! What a user sees when Docker or Compose is missing or too old: one actionable line.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

/// Runs `cargo xtask status` with PATH holding only the given stand-in scripts.
fn status_with(name: &str, scripts: &[(&str, &str)]) -> String {
    let dir = std::env::temp_dir().join(format!("xtask-engine-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (program, body) in scripts {
        let path = dir.join(program);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .arg("status")
        .env("PATH", &dir) // only the stand-ins: a system-wide docker stays out of sight
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn docker_missing_says_so() {
    let err = status_with("missing", &[]);
    assert!(err.contains("docker is not installed"), "{err}");
}

#[test]
fn daemon_down_says_how_to_start_it() {
    let docker = r#"case "$1" in --version) echo 'Docker version 20.10.24' ;; *) echo 'Cannot connect to the Docker daemon' >&2; exit 1 ;; esac"#;
    let err = status_with("daemon", &[("docker", docker)]);
    assert!(err.contains("Docker daemon is not running") && err.contains("systemctl start docker"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn compose_v1_is_refused() {
    let docker = r#"case "$1" in compose) exit 1 ;; *) echo 20.10.24 ;; esac"#;
    let err = status_with("v1", &[("docker", docker), ("docker-compose", "echo 1.29.2")]);
    assert!(err.contains("Compose v1") && err.contains("v2 or later"), "{err}");
}

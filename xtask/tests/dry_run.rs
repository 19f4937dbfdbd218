//! `--dry-run` prints the exact commands and changes nothing: every call reaching `docker`
//! is recorded by a stand-in on PATH, and only read-only queries may appear.
#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

struct FakeDocker {
    dir: PathBuf,
}

impl FakeDocker {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("xtask-dry-run-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let script = dir.join("docker");
        // Answers the discovery queries like Compose v2; says no image exists.
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$*\" >> '{}'\ncase \"$*\" in\n  'compose version --short') echo 2.30.0 ;;\n  'image inspect'*) exit 1 ;;\nesac\n",
                dir.join("calls.log").display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        FakeDocker { dir }
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn xtask(&self, args: &[&str]) -> (bool, String) {
        let path = format!("{}:{}", self.dir.display(), std::env::var("PATH").unwrap());
        let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
            .args(args)
            .env("PATH", path)
            .env("RUST_IMAGE", "mirror.example/rust:1.95-slim-bookworm")
            .env_remove("GITHUB_ACTIONS")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }

    fn assert_only_queries(&self) {
        for call in self.calls() {
            let read_only = call == "compose version --short" || call.starts_with("image inspect");
            assert!(read_only, "--dry-run ran `docker {call}`");
        }
    }
}

impl Drop for FakeDocker {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn in_git_checkout() -> bool {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.git").exists()
}

#[test]
fn up_dry_run_prints_the_exact_commands_and_runs_nothing() {
    if !in_git_checkout() {
        return; // the image tag comes from git; a source tarball has none
    }
    let docker = FakeDocker::new("up");
    let (ok, output) = docker.xtask(&["up", "--dry-run"]);
    assert!(ok, "{output}");
    let build = output
        .lines()
        .find(|l| l.starts_with("$ DOCKER_BUILDKIT=1 docker build "))
        .expect("no build command printed");
    assert!(build.contains(" --file Dockerfile --tag logbook:"), "{build}");
    assert!(build.contains(" --tag logbook:latest "), "{build}");
    assert!(build.contains(" --build-arg RUST_IMAGE=mirror.example/rust:1.95-slim-bookworm "), "{build}");
    assert!(build.contains(" --build-arg REVISION="), "{build}");
    assert!(build.ends_with(" ."), "{build}");
    let up = output.lines().find(|l| l.contains(" up --detach")).expect("no compose up printed");
    assert!(up.starts_with("$ LOGBOOK_IMAGE=logbook:"), "{up}");
    assert!(
        up.ends_with("docker compose --project-name logbook --file docker-compose.yml up --detach"),
        "{up}"
    );
    docker.assert_only_queries();
    assert!(!docker.calls().is_empty(), "the stand-in docker was never consulted");
}

#[test]
fn down_and_smoke_dry_runs_change_nothing() {
    let docker = FakeDocker::new("down");
    let (ok, output) = docker.xtask(&["down", "--volumes", "--yes", "--dry-run"]);
    assert!(ok, "{output}");
    assert!(
        output.contains(
            "docker compose --project-name logbook --file docker-compose.yml --file docker-compose.monitoring.yml down --remove-orphans --volumes"
        ),
        "{output}"
    );
    let (ok, output) = docker.xtask(&["logs", "-f", "logbook", "--dry-run"]);
    assert!(ok, "{output}");
    assert!(output.contains("logs --no-color --tail 100 --follow logbook"), "{output}");
    if in_git_checkout() {
        let (ok, output) = docker.xtask(&["smoke", "--no-build", "--dry-run"]);
        assert!(ok, "{output}");
        assert!(output.contains("--project-name logbook-smoke-"), "{output}");
    }
    docker.assert_only_queries();
}

#[test]
fn volumes_are_never_deleted_without_confirmation() {
    let docker = FakeDocker::new("refuse");
    let out = Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["down", "--volumes"])
        .env("PATH", format!("{}:{}", docker.dir.display(), std::env::var("PATH").unwrap()))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("without --yes") && stderr.contains("nothing was changed"), "{stderr}");
    assert!(!docker.calls().iter().any(|c| c.contains("down")), "{:?}", docker.calls());
}

#[test]
fn k8s_deploy_dry_run_prints_apply_and_rollout_and_runs_neither() {
    let docker = FakeDocker::new("k8s");
    let kubectl = docker.dir.join("kubectl");
    std::fs::write(
        &kubectl,
        format!("#!/bin/sh\necho \"kubectl $*\" >> '{}'\n", docker.dir.join("calls.log").display()),
    )
    .unwrap();
    std::fs::set_permissions(&kubectl, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (ok, output) = docker.xtask(&[
        "deploy",
        "--target",
        "k8s",
        "--overlay",
        "production",
        "--tag",
        "1.2.3",
        "--dry-run",
    ]);
    assert!(ok, "{output}");
    assert!(output.contains("$ kubectl apply -k target/k8s-deploy"), "{output}");
    assert!(output.contains("$ kubectl rollout status statefulset/logbook --timeout 300s"), "{output}");
    let calls = docker.calls();
    assert_eq!(calls, ["kubectl version --client"], "only the read-only probe may run");
    let (ok, output) = docker.xtask(&["deploy", "--target", "k8s", "--overlay", "nowhere", "--dry-run"]);
    assert!(!ok && output.contains("no overlay \"nowhere\"") && output.contains("production"), "{output}");
}

#[test]
fn swarm_deploy_dry_run_prints_the_stack_deploy_and_runs_nothing() {
    let docker = FakeDocker::new("swarm");
    let (ok, output) = docker.xtask(&["deploy", "--target", "swarm", "--tag", "0123456789ab", "--dry-run"]);
    assert!(ok, "{output}");
    assert!(
        output.contains("$ LOGBOOK_IMAGE=logbook:0123456789ab docker stack deploy --compose-file deploy/swarm/stack.yml --resolve-image never logbook"),
        "{output}"
    );
    let (ok, output) =
        docker.xtask(&["deploy", "--target", "swarm", "--remove", "--volumes", "--yes", "--dry-run"]);
    assert!(ok && output.contains("$ docker stack rm logbook"), "{output}");
    assert!(output.contains("$ docker volume rm logbook_data"), "{output}");
    docker.assert_only_queries();
}

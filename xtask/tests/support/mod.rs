//! Stand-in programs on PATH for the runner's tests: each records its argv and answers
//! the queries the runner makes, so tests see exactly which commands ran.
#![allow(dead_code, clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A directory of recording stand-ins, put first on PATH for the runner.
pub struct FakePrograms {
    pub dir: PathBuf,
    /// Environment for every run of the runner.
    pub env: Vec<(String, String)>,
    /// Whether the real PATH follows the stand-ins (false: only the stand-ins exist).
    pub inherit_path: bool,
}

/// What the stand-in docker answers. Images listed in $FAKE_IMAGES exist; with
/// $FAKE_RUNNING set, the compose project has a running service container. The running
/// release's database is at schema $FAKE_DB_VERSION (default 2) with floor $FAKE_DB_FLOOR
/// (default 1); every image knows schema $FAKE_IMAGE_SCHEMA (default 2) with floor
/// $FAKE_IMAGE_FLOOR (default 1).
pub const DOCKER: &str = r#"
case "$*" in
  'exec c0ffee /logbook schema') echo "{\"build\":{\"version\":2,\"floor\":1},\"database\":{\"version\":${FAKE_DB_VERSION:-2},\"floor\":${FAKE_DB_FLOOR:-1}}}" ;;
  'run --rm --network none --entrypoint /logbook '*' schema') echo "{\"build\":{\"version\":${FAKE_IMAGE_SCHEMA:-2},\"floor\":${FAKE_IMAGE_FLOOR:-1}},\"database\":null}" ;;
  'version --format {{.Server.Version}}'|'version --format {{.Client.Version}}') echo 20.10.24 ;;
  --version) echo 'Docker version 20.10.24' ;;
  'compose version --short') echo 2.30.0 ;;
  'image inspect --format {{.Size}} '*) exit 1 ;;
  'image inspect '*) for i in $FAKE_IMAGES; do [ "$3" = "$i" ] && { echo '[{"Size":5000000,"Config":{}}]'; exit 0; }; done; exit 1 ;;
  compose*' ps --all --format json') [ -n "$FAKE_RUNNING" ] && echo '{"ID":"c0ffee","Service":"logbook","State":"running"}' ;;
  compose*' config --format json') echo '{"services":{"proxy":{"image":"logbook-proxy:2.6"},"tls":{"image":"caddy:2.11.7"},"prometheus":{"image":"prom/prometheus:v3.5.0"},"alertmanager":{"image":"prom/alertmanager:v0.25.0"},"grafana":{"image":"grafana/grafana:12.2.0"}}}' ;;
  'inspect --format {{.Config.Image}} c0ffee') echo logbook:aaaaaaaaaaaa ;;
  'inspect c0ffee') echo '[{"Name":"/logbook-logbook-1","Config":{"Image":"logbook:aaaaaaaaaaaa","Labels":{"com.docker.compose.service":"logbook"}},"State":{"Status":"running","StartedAt":"2026-11-23T10:00:00Z"}}]' ;;
  'info --format {{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}') echo 'active true' ;;
  'info --format {{.Swarm.LocalNodeState}}') echo active ;;
  'info --format {{.Swarm.NodeID}}') echo node1 ;;
  'network inspect --format {{range .IPAM.Config}}{{println .Subnet}}{{end}} bridge') echo 172.17.0.0/16 ;;
  'node ls'*) echo node1 ;;
  'service inspect'*) exit 1 ;;
  'run --rm --network none '*' verify '*) echo '{"entries":3,"bytes":4096}' ;;
  'pull '*) [ -n "$FAKE_PULL_FAILS" ] && { echo 'Error response from daemon: manifest unknown' >&2; exit 1; } ;;
esac
exit 0
"#;

/// A clean checkout at a fixed commit, whatever the real one is (or if there is none).
pub const GIT: &str = r#"
case "$*" in
  'rev-parse --short=12 HEAD') echo 0123456789ab ;;
  'rev-parse HEAD') echo 0123456789abcdef0123456789abcdef01234567 ;;
  'show -s --format=%ct HEAD') echo 1795430854 ;;
esac
exit 0
"#;

/// kubectl: a client, and a kustomize that renders one container of the project's image.
pub const KUBECTL: &str = r#"
case "$1" in
  kustomize) printf 'kind: StatefulSet\nspec:\n  template:\n    spec:\n      containers:\n        - image: ghcr.io/logbook-dev/logbook:0.1.0\n' ;;
esac
exit 0
"#;

impl FakePrograms {
    pub fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("xtask-fakes-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        FakePrograms { dir, env: Vec::new(), inherit_path: true }
    }

    /// Adds a stand-in `program` that records its argv, then runs `body` (sh).
    pub fn program(&self, program: &str, body: &str) -> &Self {
        let log = self.dir.join("calls.log");
        let script = format!("#!/bin/sh\necho \"{program} $*\" >> '{}'\n{body}\n", log.display());
        let path = self.dir.join(program);
        std::fs::write(&path, script).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        self
    }

    /// Every call any stand-in received, as `program args…`.
    pub fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Runs `cargo xtask <args>`; whether it succeeded, and stdout then stderr.
    pub fn xtask(&self, args: &[&str]) -> (bool, String) {
        self.xtask_with(args, &[])
    }

    pub fn xtask_with(&self, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
        let path = if self.inherit_path {
            format!("{}:{}", self.dir.display(), std::env::var("PATH").unwrap())
        } else {
            self.dir.display().to_string()
        };
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
        cmd.args(args).env("PATH", path).env_remove("GITHUB_ACTIONS").stdin(std::process::Stdio::null());
        for (k, v) in self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).chain(env.iter().copied()) {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        (out.status.success(), text)
    }
}

impl Drop for FakePrograms {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Every file below `root` (but `target/` and `.git/`), with its size and modification time.
pub fn snapshot(root: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut found = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().map(Result::unwrap) {
            let path = entry.path();
            let name = entry.file_name();
            if name == "target" || name == ".git" {
                continue;
            }
            let meta = entry.metadata().unwrap();
            if meta.is_dir() {
                dirs.push(path.clone());
            }
            found.push((path, meta.len(), meta.modified().unwrap()));
        }
    }
    found.sort();
    found
}

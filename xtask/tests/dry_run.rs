//! `--dry-run` prints the exact commands and changes nothing: every subcommand runs against
//! recording stand-ins for docker, git, kubectl and the other tools, and only read-only
//! queries may reach them; nothing in the checkout or the state directory changes.
#![allow(clippy::unwrap_used)]

mod support;

use std::path::Path;

use support::FakePrograms;

const TREE_IMAGE: &str = "logbook:0123456789ab";

fn fakes(name: &str, state: &Path) -> FakePrograms {
    let mut fakes = FakePrograms::new(name);
    fakes
        .program("docker", support::DOCKER)
        .program("git", support::GIT)
        .program("kubectl", support::KUBECTL);
    for (program, answer) in
        [("promtool", "promtool 2.42.0"), ("trivy", "Version: 0.76.0"), ("wrk", "wrk 4.2.0")]
    {
        fakes.program(program, &format!("echo '{answer}'"));
    }
    fakes.program("kubernetes-validate", "echo 1.37.0").program("actionlint", "echo 1.17.0");
    // The cross toolchain, present: zig (through Python), cargo-zigbuild, the Rust target.
    fakes
        .program("python3", r#"[ "$1 $2 $3" = "-m ziglang version" ] && { echo 0.17.1; exit 0; }; exit 1"#)
        .program("cargo-zigbuild", "echo 'cargo-zigbuild 0.24.1'")
        .program("qemu-aarch64-static", "echo 'qemu-aarch64 version 7.2.0'")
        .program(
            "rustup",
            r#"[ "$*" = "target list --installed" ] && echo aarch64-unknown-linux-musl; exit 0"#,
        );
    // Cargo finds its subcommands on PATH: these answer `cargo <tool> --version`.
    for tool in ["llvm-cov", "tarpaulin", "deny"] {
        fakes.program(&format!("cargo-{tool}"), &format!("echo 'cargo-{tool} 1.0.0'"));
    }
    fakes.env = vec![
        ("RUST_IMAGE".into(), "mirror.example/rust:1.95-slim-bookworm".into()),
        ("LOGBOOK_STATE_DIR".into(), state.display().to_string()),
    ];
    fakes
}

/// Whether a recorded call only reads: Docker and Compose queries, validators, probes.
fn read_only(call: &str) -> bool {
    let words: Vec<&str> = call.split_whitespace().collect();
    match words.as_slice() {
        ["docker", "compose", rest @ ..] => {
            let mut rest = rest.iter();
            while let Some(word) = rest.next() {
                match *word {
                    "--project-name" | "--file" | "--env-file" => {
                        rest.next();
                    }
                    sub => return matches!(sub, "version" | "ps" | "config" | "port" | "logs"),
                }
            }
            false
        }
        ["docker", "run", "--rm", "--network", "none", .., "verify", _] => true,
        ["docker", "run", "--rm", "--network", "none", "--entrypoint", "/logbook", _, "schema"] => true,
        ["docker", "exec", _, "/logbook", "schema"] => true,
        ["docker", "buildx", "version"] => true,
        ["docker", "run", "--rm", "--network", "none", .., "check-config", _] => true,
        ["docker", "run", "--rm", "--network", "none", .., "databases"] => true,
        ["docker", "run", "--rm", "--network", "none", .., "-c", "-f", _] => true,
        [
            "docker",
            "run",
            "--rm",
            "--network",
            "none",
            ..,
            "caddy",
            "validate",
            "--config",
            _,
            "--adapter",
            "caddyfile",
        ] => true,
        ["docker", first, ..] => {
            matches!(*first, "version" | "--version" | "inspect" | "info" | "history" | "ps")
                || call.starts_with("docker image inspect")
                || ["network inspect", "node ls", "secret inspect", "service inspect", "volume inspect"]
                    .iter()
                    .any(|q| call.starts_with(&format!("docker {q}")))
        }
        ["kubectl", "version", "--client"] | ["kubectl", "kustomize", _] => true,
        ["rustup", "target", "list", "--installed"] | ["python3", "-m", "ziglang", "version"] => true,
        ["git", ..]
        | ["promtool", ..]
        | ["kubernetes-validate", ..]
        | ["actionlint", ..]
        | ["zizmor", ..]
        | ["hadolint", ..]
        | ["shellcheck", ..] => true,
        [.., "--version"] => true,
        _ => false,
    }
}

#[test]
fn every_subcommand_dry_runs_without_changing_anything() {
    let state = tempdir("state");
    let swarm_history = r#"{"format": 1, "releases": [
        {"image": "logbook:aaaaaaaaaaaa", "revision": "a", "deployed_at": "2026-11-23T10:00:00Z", "previous": null,
         "snapshot": {"file": "/data/snapshots/schema-2-20261123T100000.000Z.db", "schema": 2}},
        {"image": "logbook:bbbbbbbbbbbb", "revision": "b", "deployed_at": "2026-11-23T11:00:00Z", "previous": "logbook:aaaaaaaaaaaa"}]}"#;
    std::fs::write(state.join("releases-logbook.json"), swarm_history).unwrap();
    std::fs::write(state.join("releases-swarm-logbook.json"), swarm_history).unwrap();
    let backup_file = state.join("../backup-to-restore.db");
    std::fs::write(&backup_file, "SQLite format 3\0").unwrap();
    let credentials = state.join("replica-credentials");
    std::fs::write(&credentials, "[default]\naws_access_key_id = K\naws_secret_access_key = S\n").unwrap();
    let credentials = credentials.display().to_string();
    let fakes = fakes("all", &state);
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let before = (support::snapshot(&checkout), support::snapshot(&state));

    let images = format!("{TREE_IMAGE} logbook:aaaaaaaaaaaa logbook:bbbbbbbbbbbb");
    let present: &[(&str, &str)] = &[("FAKE_IMAGES", &images), ("FAKE_RUNNING", "1")];
    let restore = format!("restore {}", backup_file.display());
    let both_platforms = format!("{images} {TREE_IMAGE}-arm64");
    let cross_built: &[(&str, &str)] = &[("FAKE_IMAGES", &both_platforms), ("FAKE_RUNNING", "1")];
    let replicated: &[(&str, &str)] = &[
        ("FAKE_IMAGES", &images),
        ("FAKE_RUNNING", "1"),
        ("LOGBOOK_REPLICA_URL", "s3://bucket/logbook"),
        ("LOGBOOK_REPLICA_CREDENTIALS_FILE", &credentials),
    ];
    let runs: Vec<(&str, &[(&str, &str)])> = vec![
        ("build", &[]),
        ("build --builder classic", &[]),
        ("build --platform linux/amd64,linux/arm64", &[]),
        ("platform-smoke --no-build", present),
        ("publish --repository registry.example/logbook --platform linux/amd64,linux/arm64", cross_built),
        ("up", &[]),
        ("up --tag aaaaaaaaaaaa --no-rollback", present),
        ("down --volumes --yes", &[]),
        ("status", present),
        ("status", &[]),
        ("status --json", &[]),
        ("logs -f logbook", &[]),
        ("smoke --no-build", present),
        ("rollback", present),
        ("rollback --list", &[]),
        ("rollback --list --json", &[]),
        ("rollback --with-data --to bbbbbbbbbbbb", present),
        ("status --json", present),
        ("rollback compose --to aaaaaaaaaaaa", present),
        ("rollback swarm", present),
        ("rollback swarm --list", &[]),
        ("rollback k8s", &[]),
        ("backup", present),
        (&restore, present),
        ("up --tag aaaaaaaaaaaa", replicated),
        ("backup --check-replica", replicated),
        ("restore --from-replica", replicated),
        ("restore --from-replica --at 2026-12-01T09:30:00Z", replicated),
        ("recovery-drill --no-build", present),
        ("drill --no-build", present),
        ("fault-drill --no-build", present),
        ("schema-drill --no-build", present),
        ("lock status", &[]),
        ("lock acquire -m maintenance", &[]),
        ("lock release", &[]),
        ("monitoring-up --services prometheus,alertmanager --no-build", present),
        ("monitoring-down", &[]),
        ("monitoring-smoke --no-build", present),
        ("lint", &[]),
        ("scan", present),
        ("sbom", present),
        ("release-drill --no-build", present),
        ("publish --repository registry.example/logbook --git-ref v1.2.3", present),
        ("deploy compose --tag aaaaaaaaaaaa", present),
        ("deploy swarm --tag aaaaaaaaaaaa", present),
        ("deploy swarm --remove --volumes --yes", &[]),
        ("deploy k8s --overlay production --tag 1.2.3", &[]),
        ("deploy k8s --render", &[]),
        ("swarm-drill --no-build", present),
        ("doctor", &[]),
        ("coverage", &[]),
        ("completions bash", &[]),
        ("audit-image", present),
        ("advisories", &[]),
        ("ci", present),
        ("ci --json --no-cache", present),
        ("bench", &[]),
    ];
    let mut failures = Vec::new();
    for (args, env) in &runs {
        let mut argv: Vec<&str> = args.split_whitespace().collect();
        argv.push("--dry-run");
        let (ok, output) = fakes.xtask_with(&argv, env);
        if !ok {
            failures.push(format!("`{args} --dry-run` failed:\n{output}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    let changed: Vec<String> = fakes.calls().into_iter().filter(|c| !read_only(c)).collect();
    assert!(changed.is_empty(), "--dry-run ran commands that change things: {changed:#?}");
    assert!(
        fakes.calls().iter().any(|c| c.starts_with("docker compose")),
        "the stand-ins were never consulted"
    );
    assert_eq!(support::snapshot(&checkout), before.0, "a dry run changed files in the checkout");
    assert_eq!(support::snapshot(&state), before.1, "a dry run changed the state directory");
    std::fs::remove_dir_all(state.parent().unwrap()).unwrap();
}

#[test]
fn a_json_plan_lists_each_change_with_its_argv() {
    let state = tempdir("plan");
    let fakes = fakes("plan", &state);
    let (ok, output) = fakes.xtask(&["down", "--volumes", "--yes", "--dry-run=json"]);
    assert!(ok, "{output}");
    let line = output.lines().find(|l| l.starts_with('{')).expect("no JSON plan printed");
    let plan: serde_json::Value = serde_json::from_str(line).unwrap();
    let argv: Vec<&str> =
        plan["changes"][0]["argv"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(argv[..2], ["docker", "compose"], "{plan}");
    assert_eq!(argv[argv.len() - 3..], ["down", "--remove-orphans", "--volumes"], "{plan}");
    assert!(plan["ended_before"].is_null(), "{plan}");
    assert_eq!(plan["command"][0], "down");
    // A plan that ends early says where.
    let (ok, output) = fakes.xtask(&["up", "--dry-run=json"]);
    assert!(ok, "{output}");
    let plan: serde_json::Value =
        serde_json::from_str(output.lines().find(|l| l.starts_with('{')).unwrap()).unwrap();
    assert_eq!(plan["changes"][0]["argv"][1], "build", "{plan}");
    assert_eq!(plan["changes"][0]["env"]["DOCKER_BUILDKIT"], "1", "{plan}");
    assert!(plan["ended_before"].is_string(), "{plan}");
    std::fs::remove_dir_all(state.parent().unwrap()).unwrap();
}

#[test]
fn up_prints_the_exact_commands_and_stops_before_waiting() {
    let state = tempdir("up");
    let fakes = fakes("up", &state);
    let (ok, output) = fakes.xtask(&["up", "--dry-run"]);
    assert!(ok, "{output}");
    let build = output
        .lines()
        .find(|l| l.starts_with("$ DOCKER_BUILDKIT=1 docker build "))
        .expect("no build printed");
    assert_eq!(
        build,
        "$ DOCKER_BUILDKIT=1 docker build --file Dockerfile --tag logbook:0123456789ab --tag logbook:latest \
         --build-arg RUST_IMAGE=mirror.example/rust:1.95-slim-bookworm --build-arg VERSION=0.1.0 \
         --build-arg REVISION=0123456789abcdef0123456789abcdef01234567 --build-arg CREATED=2026-11-23T10:47:34Z \
         --build-arg SOURCE=https://github.com/logbook-dev/logbook ."
    );
    // The build is only printed, so reading the new image's size is where the dry run ends.
    assert!(
        output.contains("dry run ends here: next the runner would read `docker image inspect"),
        "{output}"
    );
    assert!(output.contains("dry run: 1 change(s) printed above, none made"), "{output}");
    assert!(!output.contains("is ready at"), "a dry run reported a result it did not get:\n{output}");

    let (ok, output) = fakes.xtask_with(&["up", "--dry-run"], &[("FAKE_IMAGES", TREE_IMAGE)]);
    assert!(ok, "{output}");
    assert!(output.contains("image logbook:0123456789ab is up to date"), "{output}");
    let up = output.lines().find(|l| l.contains(" up --detach")).expect("no compose up printed");
    // Published on loopback alone, writes need no token: the runner says so to the service.
    assert_eq!(
        up,
        "$ LOGBOOK_ALLOW_UNAUTHENTICATED=1 LOGBOOK_IMAGE=logbook:0123456789ab docker compose --project-name logbook --file docker-compose.yml up --detach --no-build"
    );
    assert!(
        output.contains("dry run ends here: next the runner would wait for the service to be ready"),
        "{output}"
    );

    // Published further without a token: refused before anything changes, with one line.
    for (key, value) in [("LOGBOOK_HOST_BIND", "0.0.0.0"), ("LOGBOOK_DOMAIN", "logbook.example.com")] {
        let env = [("FAKE_IMAGES", TREE_IMAGE), (key, value)];
        let (ok, output) = fakes.xtask_with(&["up", "--dry-run"], &env);
        assert!(!ok, "{key}={value} without a token was published:\n{output}");
        assert!(output.contains("refusing to publish the service"), "{output}");
        assert!(output.contains("set LOGBOOK_API_TOKEN (or LOGBOOK_API_TOKEN_FILE)"), "{output}");
        assert!(!output.contains(" up --detach"), "{output}");
        // A token, or the user's own choice, lets it through; the runner adds nothing.
        for extra in [("LOGBOOK_API_TOKEN", "s3cret"), ("LOGBOOK_ALLOW_UNAUTHENTICATED", "1")] {
            let env = [("FAKE_IMAGES", TREE_IMAGE), (key, value), extra];
            let (ok, output) = fakes.xtask_with(&["up", "--dry-run"], &env);
            assert!(ok, "{key}={value} with {extra:?}:\n{output}");
            let up = output.lines().find(|l| l.contains(" up --detach")).expect("no compose up printed");
            assert!(!up.contains("LOGBOOK_ALLOW_UNAUTHENTICATED"), "{up}");
        }
    }
    std::fs::remove_dir_all(state.parent().unwrap()).unwrap();
}

#[test]
fn deploys_print_each_target_s_commands() {
    let state = tempdir("targets");
    let fakes = fakes("targets", &state);
    let (ok, output) =
        fakes.xtask(&["deploy", "k8s", "--overlay", "production", "--tag", "1.2.3", "--dry-run"]);
    assert!(ok, "{output}");
    assert!(output.contains("$ kubectl apply -f - < (input)"), "{output}");
    assert!(output.contains("$ kubectl rollout status statefulset/logbook --timeout 300s"), "{output}");
    let (ok, output) = fakes.xtask(&["deploy", "k8s", "--tag", "1.2.3", "--render", "--dry-run"]);
    assert!(ok && output.contains("- image: ghcr.io/logbook-dev/logbook:1.2.3"), "{output}");
    let (ok, output) = fakes.xtask(&["deploy", "k8s", "--overlay", "nowhere", "--dry-run"]);
    assert!(
        !ok && output.contains("no overlay \"nowhere\"") && output.contains("production, staging"),
        "{output}"
    );

    let images = [("FAKE_IMAGES", "logbook:0123456789ab")];
    let (ok, output) = fakes.xtask_with(&["deploy", "swarm", "--tag", "0123456789ab", "--dry-run"], &images);
    assert!(ok, "{output}");
    let deploy = output.lines().find(|l| l.contains("docker stack deploy")).expect("no stack deploy printed");
    // The proxy's configuration is a Swarm config named by its content's hash.
    assert!(
        deploy.starts_with("$ LOGBOOK_IMAGE=logbook:0123456789ab LOGBOOK_PROXY_CONFIG_HASH="),
        "{deploy}"
    );
    assert!(
        deploy.ends_with(
            " docker stack deploy --compose-file deploy/swarm/stack.yml --resolve-image never logbook"
        ),
        "{deploy}"
    );
    let (ok, output) = fakes.xtask(&["deploy", "swarm", "--remove", "--volumes", "--yes", "--dry-run"]);
    assert!(ok && output.contains("$ docker stack rm logbook"), "{output}");
    assert!(!output.contains("removed swarm stack"), "{output}");
    std::fs::remove_dir_all(state.parent().unwrap()).unwrap();
}

#[test]
fn volumes_are_never_deleted_without_confirmation() {
    let state = tempdir("refuse");
    let fakes = fakes("refuse", &state);
    let (ok, output) = fakes.xtask(&["down", "--volumes"]);
    assert!(!ok);
    assert!(output.contains("without --yes") && output.contains("nothing was changed"), "{output}");
    assert!(!fakes.calls().iter().any(|c| c.contains(" down")), "{:?}", fakes.calls());
    std::fs::remove_dir_all(state.parent().unwrap()).unwrap();
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("xtask-dry-run-{}-{name}/state", std::process::id()));
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A release from a registry that cannot be pulled (a wrong digest, a failed login, an
/// unreachable registry) is refused in a line naming the reference and the registry, and
/// the running release is left alone: no compose command that changes anything runs.
#[test]
fn an_image_that_cannot_be_pulled_changes_nothing() {
    let state = tempdir("pull-fails");
    let fakes = fakes("pull-fails", &state);
    let reference =
        "ghcr.io/owner/logbook@sha256:0000000000000000000000000000000000000000000000000000000000000000";
    let (ok, output) =
        fakes.xtask_with(&["up", "--tag", reference], &[("FAKE_PULL_FAILS", "1"), ("FAKE_RUNNING", "1")]);
    assert!(!ok, "{output}");
    assert!(output.contains(&format!("cannot pull {reference} from ghcr.io")), "{output}");
    assert!(output.contains("docker login ghcr.io") && output.contains("nothing was changed"), "{output}");
    let changed: Vec<String> =
        fakes.calls().into_iter().filter(|c| !read_only(c) && !c.starts_with("docker pull")).collect();
    assert!(changed.is_empty(), "a failed pull went on to change things: {changed:#?}");
}

/// Wrong replica settings stop `up` before anything changes, with one line naming the
/// setting.
#[test]
fn bad_replica_settings_refuse_up_before_anything_changes() {
    let state = tempdir("replica-settings");
    let credentials = state.join("replica-credentials");
    std::fs::write(&credentials, "[default]\naws_access_key_id = K\n").unwrap();
    let credentials = credentials.display().to_string();
    let fakes = fakes("replica-settings", &state);
    let images = format!("{TREE_IMAGE} logbook:aaaaaaaaaaaa");
    let base = [("FAKE_IMAGES", images.as_str()), ("FAKE_RUNNING", "1")];
    for (url, file, names) in [
        ("bucket-without-scheme", credentials.as_str(), "LOGBOOK_REPLICA_URL"),
        ("s3://bucket/logbook", "", "LOGBOOK_REPLICA_CREDENTIALS_FILE"),
        ("s3://bucket/logbook", credentials.as_str(), "aws_secret_access_key"),
    ] {
        let mut env = base.to_vec();
        env.extend([("LOGBOOK_REPLICA_URL", url), ("LOGBOOK_REPLICA_CREDENTIALS_FILE", file)]);
        let (ok, output) = fakes.xtask_with(&["up", "--tag", "aaaaaaaaaaaa"], &env);
        assert!(!ok, "{url} {file:?} was accepted:\n{output}");
        let error: Vec<&str> = output.lines().filter(|l| l.starts_with("error:")).collect();
        assert!(
            error.len() == 1 && error[0].contains(names) && error[0].contains("nothing was changed"),
            "{output}"
        );
    }
    let changed: Vec<String> = fakes.calls().into_iter().filter(|c| !read_only(c)).collect();
    assert!(changed.is_empty(), "a refused `up` changed things: {changed:#?}");
    std::fs::remove_dir_all(state.parent().unwrap()).unwrap();
}

/// A checkout with no `.env` (a cleaned CI workspace, a fresh clone) uses the settings the
/// stack was last switched with, from its state on the host: its layers and token stay.
#[test]
fn a_bare_checkout_uses_the_settings_the_stack_was_started_with() {
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    if checkout.join(".env").exists() {
        // The checkout's own .env wins, as it should; this case needs a checkout without one
        // (CI's clean clone is one).
        eprintln!("skipped: this checkout has a .env");
        return;
    }
    let state = tempdir("bare-checkout");
    let recorded = state.join("releases-logbook.env");
    std::fs::write(&recorded, "LOGBOOK_DOMAIN=logbook.example.com\nLOGBOOK_API_TOKEN=s3cret\n").unwrap();
    let fakes = fakes("bare-checkout", &state);
    let env = [("FAKE_IMAGES", "logbook:aaaaaaaaaaaa")];
    let (ok, output) = fakes.xtask_with(&["up", "--tag", "aaaaaaaaaaaa", "--dry-run"], &env);
    assert!(ok, "{output}");
    assert!(
        output.contains("no .env here: using the settings project logbook was last switched with"),
        "{output}"
    );
    let up = output.lines().find(|l| l.contains(" up --detach")).expect("no compose up printed");
    assert!(up.contains(&format!("--env-file {}", recorded.display())), "{up}");
    assert!(up.contains("--file docker-compose.tls.yml"), "the TLS layer was dropped: {up}");
    // A token is recorded: the runner does not open writes.
    assert!(!up.contains("LOGBOOK_ALLOW_UNAUTHENTICATED"), "{up}");
    // LOGBOOK_ENV_FILE, when given, is used instead.
    let (ok, output) = fakes.xtask_with(
        &["up", "--tag", "aaaaaaaaaaaa", "--dry-run"],
        &[("FAKE_IMAGES", "logbook:aaaaaaaaaaaa"), ("LOGBOOK_ENV_FILE", "/dev/null")],
    );
    assert!(ok && !output.contains("docker-compose.tls.yml"), "{output}");
    std::fs::remove_dir_all(state.parent().unwrap()).unwrap();
}

/// A switch the database's schema forbids is refused before anything changes: a release
/// that does not know the database's floor, or a breaking migration while a release that
/// could not come back serves.
#[test]
fn a_switch_the_schema_forbids_is_refused_before_anything_changes() {
    let state = tempdir("schema");
    let fakes = fakes("schema", &state);
    let images = format!("{TREE_IMAGE} logbook:aaaaaaaaaaaa");
    let base = [("FAKE_IMAGES", images.as_str()), ("FAKE_RUNNING", "1")];
    let up = ["up", "--no-build", "--dry-run"];
    let (ok, output) = fakes.xtask_with(&up, &base);
    assert!(ok, "{output}");
    assert!(output.contains("$ docker exec c0ffee /logbook schema"), "the schema was not asked:\n{output}");
    for (extra, says) in [
        (
            [("FAKE_DB_VERSION", "3"), ("FAKE_DB_FLOOR", "3")],
            "knows schema up to 2, but the database is at schema 3",
        ),
        (
            [("FAKE_IMAGE_SCHEMA", "3"), ("FAKE_IMAGE_FLOOR", "3")],
            "migrates the database to schema 3 with a breaking change",
        ),
    ] {
        let env: Vec<(&str, &str)> = base.iter().copied().chain(extra).collect();
        let (ok, output) = fakes.xtask_with(&up, &env);
        assert!(!ok, "{extra:?} was switched to:\n{output}");
        assert!(output.contains(says) && output.contains("nothing was changed"), "{output}");
        assert!(!output.contains(" up --detach"), "a container was started:\n{output}");
    }
    std::fs::remove_dir_all(state.parent().unwrap()).unwrap();
}

/// A switch interrupted after the new release took over, whose new container is gone: the
/// next changing command repairs it first, back to the old release, and a dry run shows
/// how (start the old container) without touching the journal.
#[test]
fn an_unfinished_switch_is_repaired_first_and_the_dry_run_shows_how() {
    let state = tempdir("repair");
    let journal = r#"{"format": 1, "by": "ops@host", "command": "cargo xtask up", "pid": 1,
        "started_at": "2026-12-04T10:00:00Z", "old_container": "c0ffee", "old_image": "logbook:aaaaaaaaaaaa",
        "new_image": "logbook:bbbbbbbbbbbb", "previous": null, "new_container": "beef",
        "step": "taking-over", "may_migrate": false}"#;
    let journal_file = state.join("releases-logbook.journal");
    std::fs::write(&journal_file, journal).unwrap();
    let fakes = fakes("repair", &state);
    let images = format!("{TREE_IMAGE} logbook:aaaaaaaaaaaa logbook:bbbbbbbbbbbb");
    // `status` says so, and changes nothing.
    let (ok, output) = fakes.xtask_with(&["status"], &[("FAKE_RUNNING", "1")]);
    assert!(ok && output.contains("unfinished switch: ") && output.contains("repairs it"), "{output}");
    let (ok, output) =
        fakes.xtask_with(&["up", "--dry-run"], &[("FAKE_IMAGES", &images), ("FAKE_RUNNING", "1")]);
    assert!(ok, "{output}");
    assert!(output.contains("found an unfinished switch"), "{output}");
    assert!(output.contains("$ docker start c0ffee"), "{output}");
    let changed: Vec<String> = fakes.calls().into_iter().filter(|c| !read_only(c)).collect();
    assert!(changed.is_empty(), "--dry-run ran commands that change things: {changed:#?}");
    assert_eq!(std::fs::read_to_string(&journal_file).unwrap(), journal);
    std::fs::remove_dir_all(state.parent().unwrap()).unwrap();
}

/// `ci --dry-run` plans: a step whose commands were only printed reads `dry run`, never
/// `pass`, and no record of a result is written or removed.
#[test]
fn a_dry_run_of_ci_plans_its_steps_and_records_nothing() {
    let state = tempdir("ci-plan");
    let fakes = fakes("ci-plan", &state);
    let records = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/ci-cache");
    let read = |step: &str| std::fs::read(records.join(format!("{step}.json"))).ok();
    let before = (read("fmt"), read("clippy"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["ci", "--only", "fmt,clippy", "--dry-run", "--json"])
        .env("PATH", format!("{}:{}", fakes.dir.display(), std::env::var("PATH").unwrap()))
        .envs(fakes.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env_remove("CI")
        .env_remove("GITHUB_ACTIONS")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for (i, step) in ["fmt", "clippy"].into_iter().enumerate() {
        assert_eq!(report["steps"][i]["step"], step, "{report}");
        assert_eq!(report["steps"][i]["result"], "dry run", "{report}");
    }
    assert!(stderr.contains("fmt --all -- --check"), "the plan shows the command: {stderr}");
    assert_eq!((read("fmt"), read("clippy")), before, "a dry run changed the records of results");
    std::fs::remove_dir_all(state.parent().unwrap()).unwrap();
}

/// `--dry-run=json` on a subcommand with no plan is a clear error, never its text output
/// in place of the JSON.
#[test]
fn a_json_plan_of_a_subcommand_without_one_is_refused() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_xtask"))
        .args(["completions", "bash", "--dry-run=json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "no script in place of the plan: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.contains("there is no plan to print: completions prints a completion script"), "{stderr}");
}

//! `cargo xtask audit-image`: the image's hardening, checked natively with the Docker CLI.

use std::collections::BTreeSet;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use xshell::Shell;

use super::report::Checks;
use crate::flags::AuditImage;
use crate::outside::docker;
use crate::outside::image::ImagePlan;
use crate::outside::process::{self, Cmd};
use crate::project;

/// Every path the runtime image may hold: the binary, the user database, `/tmp` and the
/// data directory; the rest is what Docker adds to any container (mount points, resolv.conf).
/// A token shaped like a GitHub one, for the self-test's bad image: written in two
/// pieces, so a secret scanner reading this source does not take it for a leak.
const FAKE_TOKEN: &str = concat!("gh", "p_0123456789abcdefghijklmnopqrstuvwxyzAB");

const ALLOWED_PATHS: &[&str] = &[
    "logbook",
    "etc/",
    "etc/passwd",
    "etc/group",
    "data/",
    "tmp/",
    // Created by Docker in every container filesystem.
    ".dockerenv",
    "dev/",
    "dev/console",
    "dev/pts/",
    "dev/shm/",
    "etc/hostname",
    "etc/hosts",
    "etc/mtab",
    "etc/resolv.conf",
    "proc/",
    "sys/",
];

/// Names that must never ship, whatever the allow-list says.
const FORBIDDEN: &[&str] = &[".bak", "backups/", ".env", ".git", "target/", "tests/", ".rs", "Cargo.toml"];

/// Keys whose values are secrets (lowercase, matched as substrings of the key).
const SECRET_KEYS: &[&str] = &[
    "token",
    "secret",
    "password",
    "passwd",
    "api_key",
    "apikey",
    "private_key",
    "access_key",
    "credential",
];

/// Prefixes of well-known credential formats.
const SECRET_PREFIXES: &[&str] =
    &["ghp_", "gho_", "ghs_", "github_pat_", "glpat-", "xoxb-", "xoxp-", "sk_live_", "AKIA", "-----BEGIN"];

impl AuditImage {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let image = match &self.tag {
            Some(tag) => project::image_name(tag),
            None => ImagePlan::from_repo(sh)?.tag,
        };
        docker::check_engine(sh)?;
        if !docker::image_exists(sh, &image) {
            bail!("image {image} does not exist: run `cargo xtask build` first");
        }
        let checks = audit(sh, &image, true)?;
        if self.self_test {
            self_test(sh, &image)?;
        }
        let passed = checks.finish(&format!("audit-image on {image}"))?;
        process::result(&format!("audit-image: all {passed} checks passed on {image}"));
        Ok(())
    }
}

/// Runs every check on `image`, printing a PASS or FAIL line for each. `runs_here`: the
/// image is of this machine's platform, so the check of its running process can run.
pub fn audit(sh: &Shell, image: &str, runs_here: bool) -> Result<Checks> {
    let inspect: Value =
        serde_json::from_str(&process::query(sh, &Cmd::new("docker").args(["image", "inspect", image]))?)?;
    let config = &inspect[0]["Config"];
    let size = inspect[0]["Size"].as_u64().unwrap_or(0);
    let history_cmd = Cmd::new("docker").args(["history", "--no-trunc", "--format", "{{.CreatedBy}}", image]);
    let history = process::query(sh, &history_cmd)?;
    let mut checks = Checks::keep_going();
    checks.run("the configured user is not root", || check_user(config))?;
    if runs_here {
        checks.run("the running process is not UID 0", || check_running_uid(sh, image))?;
    } else {
        checks.skip(
            "the running process is not UID 0",
            "an image of another platform does not run on this engine",
        );
    }
    checks.run("HEALTHCHECK is set", || check_healthcheck(config))?;
    checks.run("the service port is exposed", || check_port(config))?;
    checks.run("the OCI labels are set", || check_labels(config))?;
    checks.run("the filesystem holds only what belongs", || {
        list_files(sh, image).and_then(|files| check_files(&files))
    })?;
    checks.run("no secret in history, environment or labels", || check_secrets(config, &history))?;
    checks.run("the image is within its size budget", || check_size(size))?;
    Ok(checks)
}

pub fn check_user(config: &Value) -> Result<()> {
    let user = config["User"].as_str().unwrap_or_default();
    let name = user.split(':').next().unwrap_or_default();
    ensure!(
        !name.is_empty() && name != "0" && name != "root",
        "the image runs as {:?}",
        if user.is_empty() { "root (no USER)" } else { user }
    );
    Ok(())
}

fn check_running_uid(sh: &Shell, image: &str) -> Result<()> {
    let name = format!("{}-audit-{}", project::NAME, std::process::id());
    // With a token, as the image refuses to take anyone's writes on 0.0.0.0 without one.
    let run = Cmd::new("docker").args([
        "run",
        "--detach",
        "--rm",
        "--name",
        &name,
        "--tmpfs",
        "/tmp",
        "--env",
        "LOGBOOK_API_TOKEN=audit-only",
        image,
    ]);
    process::capture(sh, &run).context("the image does not start")?;
    let top = process::wait_for(
        "the audited container's process",
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(100),
        || Ok(process::query(sh, &Cmd::new("docker").args(["top", &name, "-o", "pid,uid"])).ok()),
    );
    let _ = process::run_cleanup(sh, &Cmd::new("docker").args(["rm", "--force", "--volumes", &name]));
    let uids: Vec<String> =
        top?.lines().skip(1).filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned)).collect();
    ensure!(!uids.is_empty(), "no process was running");
    ensure!(uids.iter().all(|u| u != "0"), "processes run as UIDs {uids:?}");
    Ok(())
}

pub fn check_healthcheck(config: &Value) -> Result<()> {
    let test = config["Healthcheck"]["Test"].as_array().cloned().unwrap_or_default();
    ensure!(!test.is_empty() && test[0] != "NONE", "no HEALTHCHECK");
    Ok(())
}

pub fn check_port(config: &Value) -> Result<()> {
    let port = format!("{}/tcp", project::CONTAINER_PORT);
    ensure!(config["ExposedPorts"].get(&port).is_some(), "{port} is not exposed");
    Ok(())
}

pub fn check_labels(config: &Value) -> Result<()> {
    let missing: Vec<&str> = ["revision", "version", "created", "source"]
        .into_iter()
        .filter(|key| {
            let value =
                config["Labels"][format!("org.opencontainers.image.{key}")].as_str().unwrap_or_default();
            value.is_empty() || value == "unknown"
        })
        .collect();
    ensure!(missing.is_empty(), "missing or unknown: {}", missing.join(", "));
    Ok(())
}

/// The paths in a created (not started) container's filesystem.
fn list_files(sh: &Shell, image: &str) -> Result<Vec<String>> {
    let id = process::capture(sh, &Cmd::new("docker").args(["create", image]))?;
    let dir = sh.create_temp_dir()?;
    let tar = dir.path().join("fs.tar");
    let exported =
        process::query(sh, &Cmd::new("docker").args(["export", "--output", &tar.display().to_string(), &id]));
    let _ = process::run_cleanup(sh, &Cmd::new("docker").args(["rm", "--volumes", &id]));
    exported?;
    let listing = process::query(sh, &Cmd::new("tar").args(["-tf", &tar.display().to_string()]))?;
    Ok(listing.lines().map(|l| l.trim_start_matches("./").to_owned()).filter(|l| !l.is_empty()).collect())
}

pub fn check_files(files: &[String]) -> Result<()> {
    let allowed: BTreeSet<&str> = ALLOWED_PATHS.iter().copied().collect();
    let forbidden: Vec<&String> =
        files.iter().filter(|f| FORBIDDEN.iter().any(|bad| f.contains(bad))).collect();
    let unexpected: Vec<&String> = files.iter().filter(|f| !allowed.contains(f.as_str())).collect();
    ensure!(forbidden.is_empty(), "forbidden files: {forbidden:?}");
    ensure!(unexpected.is_empty(), "files beyond the binary, passwd, group, /data and /tmp: {unexpected:?}");
    Ok(())
}

pub fn check_secrets(config: &Value, history: &str) -> Result<()> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    let split =
        |text: &str| text.split_once('=').map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()));
    for env in config["Env"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        pairs.extend(split(env));
    }
    for (k, v) in config["Labels"].as_object().into_iter().flatten() {
        pairs.push((k.clone(), v.as_str().unwrap_or_default().to_owned()));
    }
    for word in history.split_whitespace() {
        pairs.extend(split(word));
    }
    let mut found: Vec<String> = pairs
        .iter()
        .filter(|(k, v)| {
            let key = k.to_ascii_lowercase();
            let secret_key = SECRET_KEYS.iter().any(|s| key.contains(s)) && !key.ends_with("_file");
            secret_key && !v.is_empty() && !v.starts_with('$')
        })
        .map(|(k, _)| format!("{k}=…"))
        .collect();
    let everything = format!("{config} {history}");
    for word in everything.split(|c: char| c.is_whitespace() || "\"'=,[]{}".contains(c)) {
        if let Some(prefix) =
            SECRET_PREFIXES.iter().find(|p| word.starts_with(**p) && word.len() >= p.len() + 12)
        {
            found.push(format!("{prefix}…"));
        }
    }
    found.sort();
    found.dedup();
    ensure!(found.is_empty(), "secret-looking values: {}", found.join(", "));
    Ok(())
}

pub fn check_size(bytes: u64) -> Result<()> {
    let budget = project::IMAGE_SIZE_BUDGET_MB * 1_000_000;
    ensure!(
        bytes <= budget,
        "{:.1} MB is over the {} MB budget",
        bytes as f64 / 1e6,
        project::IMAGE_SIZE_BUDGET_MB
    );
    Ok(())
}

/// Builds an image with every flaw the audit looks for (the real binary, run as root, no
/// healthcheck, port or labels, stray files, a token in its environment, over the size
/// budget) and requires each check to fail on it.
fn self_test(sh: &Shell, good_image: &str) -> Result<()> {
    let dir = sh.create_temp_dir()?;
    let path = |name: &str| dir.path().join(name);
    sh.write_file(
        path("Dockerfile"),
        format!(
            "FROM scratch\nCOPY --from={good_image} /logbook /logbook\nCOPY notes.bak /backups/notes.bak\n\
             COPY .env /app/.env\nCOPY padding /padding\nENV API_TOKEN={FAKE_TOKEN}\n\
             USER 0\nENTRYPOINT [\"/logbook\"]\n"
        ),
    )?;
    sh.write_file(path("notes.bak"), "old data")?;
    sh.write_file(path(".env"), "LOGBOOK_API_TOKEN=do-not-ship")?;
    let padding_len = usize::try_from(project::IMAGE_SIZE_BUDGET_MB * 1_000_000 + 1).unwrap_or(usize::MAX);
    sh.write_file(path("padding"), vec![b'x'; padding_len])?;
    let bad = format!("{}-audit-bad:{}", project::NAME, std::process::id());
    process::run(
        sh,
        &Cmd::new("docker").args(["build", "--quiet", "--tag", &bad, &dir.path().display().to_string()]),
    )?;
    process::say(&format!("self-test: auditing the deliberately bad image {bad}; every check must fail"));
    let checks = audit(sh, &bad, true);
    let _ = process::run_cleanup(sh, &Cmd::new("docker").args(["image", "rm", "--force", &bad]));
    let passed = checks?.passes().to_vec();
    ensure!(passed.is_empty(), "self-test: these checks passed on a bad image: {}", passed.join("; "));
    process::result("self-test: every check failed on the bad image, as it must");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn users_and_labels() {
        assert!(check_user(&json!({"User": "10001:10001"})).is_ok());
        for bad in ["", "0", "root", "0:0", "root:root"] {
            assert!(check_user(&json!({"User": bad})).is_err(), "{bad}");
        }
        let labels = |rev: &str| {
            json!({"Labels": {
            "org.opencontainers.image.revision": rev, "org.opencontainers.image.version": "0.1.0",
            "org.opencontainers.image.created": "2026-11-23T00:00:00Z", "org.opencontainers.image.source": "https://x"}})
        };
        assert!(check_labels(&labels("abc")).is_ok());
        assert!(check_labels(&labels("unknown")).unwrap_err().to_string().contains("revision"));
        assert!(check_healthcheck(&json!({"Healthcheck": {"Test": ["NONE"]}})).is_err());
        assert!(check_port(&json!({"ExposedPorts": {"8080/tcp": {}}})).is_ok());
        assert!(check_port(&json!({})).is_err());
    }

    #[test]
    fn files_beyond_the_list_or_forbidden_ones_fail() {
        let good: Vec<String> = ALLOWED_PATHS.iter().map(|s| s.to_string()).collect();
        assert!(check_files(&good).is_ok());
        let mut with_backup = good.clone();
        with_backup.push("data/old.bak".into());
        assert!(check_files(&with_backup).unwrap_err().to_string().contains("forbidden"));
        let mut with_shell = good;
        with_shell.push("bin/sh".into());
        assert!(check_files(&with_shell).unwrap_err().to_string().contains("bin/sh"));
    }

    #[test]
    fn secrets_are_found_but_pointers_and_references_are_not() {
        let clean =
            json!({"Env": ["LOGBOOK_PORT=8080", "LOGBOOK_API_TOKEN_FILE=/run/secrets/token"], "Labels": {}});
        assert!(check_secrets(&clean, "RUN |1 TOKEN=$TOKEN /bin/sh -c build").is_ok());
        let env = json!({"Env": ["DB_PASSWORD=hunter2"], "Labels": {}});
        let err = check_secrets(&env, "").unwrap_err().to_string();
        assert!(err.contains("DB_PASSWORD=…") && !err.contains("hunter2"), "{err}");
        let history = format!("/bin/sh -c #(nop)  ENV X={FAKE_TOKEN}");
        let history = history.as_str();
        assert!(check_secrets(&clean, history).is_err());
        assert!(check_secrets(&json!({"Labels": {"aws": "AKIAIOSFODNN7EXAMPLE"}}), "").is_err());
    }

    #[test]
    fn size_budget() {
        assert!(check_size(5_900_000).is_ok());
        assert!(check_size(project::IMAGE_SIZE_BUDGET_MB * 1_000_000 + 1).is_err());
    }
}

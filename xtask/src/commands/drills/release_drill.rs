//! `cargo xtask release-drill`: the release path of the workflow, run here. A registry on
//! loopback stands in for GHCR; the workflow's own job commands, read from the workflow
//! files, deploy by digest to a throwaway project, check it, and roll it back. Each job
//! runs in a clone of the repository cleaned as `actions/checkout` cleans a runner's
//! workspace (`git clean -ffdx`, so no `.env` is carried over), and a release that fails
//! its check takes the workflow's failure path.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use xshell::Shell;
use yaml_rust2::YamlLoader;

use super::harness::{self, Traffic};
use crate::commands::checks::report::Checks;
use crate::flags::{Builder, ReleaseDrill};
use crate::outside::docker;
use crate::outside::image::{self, ImagePlan};
use crate::outside::process::{self, Cmd};
use crate::outside::registry::{self, LocalRegistry};
use crate::project;
use crate::targets::compose::{OnDrop, StackGuard};

/// The workflow whose release jobs are rehearsed, and the one that rolls back by hand.
const RELEASE_WORKFLOW: &str = ".github/workflows/ci.yml";
const ROLLBACK_WORKFLOW: &str = ".github/workflows/rollback.yml";
/// The token the rehearsed deployment requires, as production's would.
const DRILL_TOKEN: &str = "release-drill-token";

impl ReleaseDrill {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let started = Instant::now();
        let program = docker::connect(sh)?;
        let v1 = image::ensure(sh, self.no_build)?;
        let v1_revision = image::revision(sh, &v1);
        let v2 = ImagePlan::from_repo(sh)?.variant("release-v2");
        let compose = harness::throwaway_project(program, "release")?;
        let port = compose.env.iter().find(|(k, _)| k == "LOGBOOK_HOST_PORT").map(|(_, v)| v.clone());
        let addr = format!("127.0.0.1:{}", port.context("the throwaway project has no port")?);
        let mut guard = StackGuard::new(sh, &compose, OnDrop::RemoveWithVolumes);
        guard.remove_image(&v2.tag);
        let _history = HistoryCleanup(crate::targets::compose::history_path(sh, &compose)?);
        image::build(sh, &v2, Builder::Buildkit)?;
        // A release that becomes ready but fails its check: its reads need a token the
        // check does not have (the image's own /etc/passwd, as a read token file).
        let unreadable = format!("{v1}-release-unreadable");
        guard.remove_image(&unreadable);
        harness::build_with_setting(sh, &v1, &unreadable, "LOGBOOK_READ_TOKEN_FILE=/etc/passwd")?;
        let workspace = Workspace::clone(sh)?;
        let registry = LocalRegistry::start(sh)?;
        let repository = format!("{}/{}", registry.addr, project::NAME);

        let mut checks = Checks::stop_at_first();
        let (d1, _) = checks
            .step("the tested image is published to the registry, and its digest read", || {
                registry::push(sh, &v1, &repository, Some("main"))
            })?;
        let (d2, _) = checks
            .step("a second release is published", || registry::push(sh, &v2.tag, &repository, None))?;
        // The second release is throwaway: what the pull brings back goes with the stack.
        guard.remove_image(&d2);
        let _copies = checks.step("the local copies are removed, so every deploy must pull", || {
            LocalCopies::remove(sh, &v1, &repository, &[v2.tag.as_str()], &d1)
        })?;
        let jobs = JobEnv { sh, project: &compose.project, addr: &addr, workspace: &workspace };
        checks.run(
            "staging: the workflow's job pulls the tested image by digest, deploys and checks it",
            || jobs.run(RELEASE_WORKFLOW, "staging", &[("IMAGE", &d1)]),
        )?;
        let mut acknowledged = Vec::new();
        for n in 0..10 {
            let text = format!("release drill entry {n}");
            acknowledged.push((harness::append(&addr, &text, Some(DRILL_TOKEN))?, text));
        }
        let traffic = Traffic::start(&addr, "release drill", Some(DRILL_TOKEN));
        checks.run("production: the workflow's job deploys the second release under writes", || {
            jobs.run(RELEASE_WORKFLOW, "production", &[("IMAGE", &d2)])
        })?;
        checks.run("the rollback workflow brings the first release back by digest", || {
            jobs.run(ROLLBACK_WORKFLOW, "rollback", &[("ROLLBACK_TO", &d1)])?;
            harness::expect_revision(&addr, &v1_revision)
        })?;
        let report = traffic.stop()?;
        checks.run("no request failed during the releases, and every acknowledged entry is there", || {
            report.expect_no_failures("the releases")?;
            acknowledged.extend(report.acknowledged.iter().cloned());
            harness::expect_acknowledged(&addr, &acknowledged)
        })?;
        checks.run(
            "a release that fails its check: the production job's failure step rolls back to the one before",
            || {
                let (d3, _) = registry::push(sh, &unreadable, &repository, None)?;
                let failed = jobs.run_failing(RELEASE_WORKFLOW, "production", &[("IMAGE", &d3)])?;
                process::say(&format!("  the job's step failed as expected: {failed}"));
                harness::expect_revision(&addr, &v1_revision)?;
                harness::expect_acknowledged(&addr, &acknowledged)
            },
        )?;
        guard.succeeded();
        process::result(&format!(
            "release-drill: all {} checks passed in {:.1}s: publish, pull by digest, staging, production, rollback; \
             {} requests during the releases, {} failed, longest wait {} ms; 0 of {} acknowledged entries lost",
            checks.passed(),
            started.elapsed().as_secs_f64(),
            report.requests,
            report.failed,
            report.longest.as_millis(),
            acknowledged.len()
        ));
        Ok(())
    }
}

/// What the release jobs find on their hosts, here: the throwaway project on its own port,
/// a token required for writes, and a workspace cleaned before every job.
struct JobEnv<'a> {
    sh: &'a Shell,
    project: &'a str,
    addr: &'a str,
    workspace: &'a Workspace,
}

impl JobEnv<'_> {
    /// Runs the `run:` lines of `job` in `workflow`, in order, as GitHub's bash would, with
    /// `cargo xtask` being this runner, in the cleaned workspace; steps that run only on
    /// failure are left out.
    fn run(&self, workflow: &str, job: &str, inputs: &[(&str, &str)]) -> Result<()> {
        self.workspace.clean(self.sh)?;
        for step in self.steps(workflow, job)?.into_iter().filter(|s| !s.on_failure) {
            for line in &step.commands {
                self.run_line(workflow, job, line, inputs)?;
            }
        }
        Ok(())
    }

    /// Runs `job` expecting one of its steps to fail: the steps after it are skipped and
    /// its `if: failure()` steps run instead, which must succeed. Returns the failure.
    fn run_failing(&self, workflow: &str, job: &str, inputs: &[(&str, &str)]) -> Result<String> {
        self.workspace.clean(self.sh)?;
        let steps = self.steps(workflow, job)?;
        let mut failed = None;
        for step in steps.iter().filter(|s| !s.on_failure) {
            for line in &step.commands {
                if let Err(e) = self.run_line(workflow, job, line, inputs) {
                    failed = Some(format!("{e:#}"));
                    break;
                }
            }
            if failed.is_some() {
                break;
            }
        }
        let failed = failed.with_context(|| format!("{workflow} job {job}: no step failed"))?;
        let recovery: Vec<&JobStep> = steps.iter().filter(|s| s.on_failure).collect();
        ensure!(!recovery.is_empty(), "{workflow} job {job} has no step for a failure");
        for line in recovery.iter().flat_map(|s| &s.commands) {
            self.run_line(workflow, job, line, inputs)?;
        }
        Ok(failed)
    }

    fn steps(&self, workflow: &str, job: &str) -> Result<Vec<JobStep>> {
        let text = self.sh.read_file(workflow).with_context(|| format!("cannot read {workflow}"))?;
        job_steps(&text, job).with_context(|| format!("{workflow}: job {job}"))
    }

    fn run_line(&self, workflow: &str, job: &str, line: &str, inputs: &[(&str, &str)]) -> Result<()> {
        ensure!(line.starts_with("cargo xtask "), "{workflow} job {job}: `{line}` is not `cargo xtask …`");
        let port = self.addr.rsplit_once(':').map_or("8080", |(_, port)| port);
        // As written, through cargo, as on the runner, in the workspace's own clone. No
        // LOGBOOK_ENV_FILE: a runner's workspace has no .env, so the stack's recorded
        // settings apply.
        let mut cmd = Cmd::new("bash")
            .args(["-c", &format!("cd {} && {line}", self.workspace.checkout.display())])
            .env("CARGO_TARGET_DIR", self.workspace.target.display().to_string())
            .env("LOGBOOK_PROJECT", self.project)
            .env("LOGBOOK_HOST_BIND", "127.0.0.1")
            .env("LOGBOOK_HOST_PORT", port)
            .env("LOGBOOK_API_TOKEN", DRILL_TOKEN);
        for (key, value) in inputs {
            cmd = cmd.env(*key, *value);
        }
        process::say(&format!("{workflow} job {job}: {line}"));
        process::run(self.sh, &cmd).with_context(|| format!("{workflow} job {job}: `{line}` failed"))
    }
}

/// A clone of the repository, as a self-hosted runner's workspace: cleaned before every
/// job as `actions/checkout` does (`git clean -ffdx`). Its builds go to a target
/// directory of their own, outside it, kept between runs.
struct Workspace {
    checkout: std::path::PathBuf,
    target: std::path::PathBuf,
    _dir: xshell::TempDir,
}

impl Workspace {
    fn clone(sh: &Shell) -> Result<Self> {
        let dir = sh.create_temp_dir()?;
        let checkout = dir.path().join("checkout");
        let root = sh.current_dir();
        process::say("  the jobs run in a clone of this repository's HEAD, cleaned before each job");
        process::run(
            sh,
            &Cmd::new("git")
                .args(["clone", "--quiet", "--no-hardlinks"])
                .arg(root.display().to_string())
                .arg(checkout.display().to_string()),
        )?;
        let target = crate::outside::tools::target_dir(sh).join("release-drill-workspace");
        Ok(Workspace { checkout, target, _dir: dir })
    }

    /// Leaves what a runner leaves behind (a `.env` that would send the jobs to a port
    /// where nothing listens), then cleans as `actions/checkout` does.
    fn clean(&self, sh: &Shell) -> Result<()> {
        std::fs::write(
            self.checkout.join(".env"),
            "LOGBOOK_HOST_PORT=1\nLOGBOOK_DOMAIN=left.behind.example\n",
        )?;
        process::run(
            sh,
            &Cmd::new("git")
                .arg("-C")
                .arg(self.checkout.display().to_string())
                .args(["clean", "-ffdx", "--quiet"]),
        )?;
        ensure!(!self.checkout.join(".env").exists(), "git clean left .env in the workspace");
        Ok(())
    }
}

/// One step of a workflow job: its `run:` lines, and whether it runs only on failure.
struct JobStep {
    on_failure: bool,
    commands: Vec<String>,
}

#[cfg(test)]
/// The `run:` lines of a job's steps, in order, leaving out steps that run only when an
/// earlier one failed (`if: failure() …`).
pub fn job_commands(workflow: &str, job: &str) -> Result<Vec<String>> {
    let commands: Vec<String> =
        job_steps(workflow, job)?.into_iter().filter(|s| !s.on_failure).flat_map(|s| s.commands).collect();
    ensure!(!commands.is_empty(), "job {job} runs nothing");
    Ok(commands)
}

/// A job's steps that run commands, in order.
fn job_steps(workflow: &str, job: &str) -> Result<Vec<JobStep>> {
    let docs = YamlLoader::load_from_str(workflow).context("the workflow is not valid YAML")?;
    let steps = docs
        .first()
        .and_then(|doc| doc["jobs"][job]["steps"].as_vec())
        .with_context(|| format!("no job {job} with steps"))?;
    Ok(steps
        .iter()
        .filter_map(|step| {
            let script = step["run"].as_str()?;
            Some(JobStep {
                on_failure: step["if"].as_str().is_some_and(|c| c.contains("failure()")),
                commands: script
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect(),
            })
        })
        .collect())
}

/// Local images taken off the engine, so that deploys must pull them. The tested one is
/// saved first, with its local tags, and put back however the drill ends.
struct LocalCopies<'a> {
    sh: &'a Shell,
    archive: std::path::PathBuf,
    /// The reference the deploys pull `kept` by, dropped again once its tags are back.
    pulled_as: String,
    _dir: xshell::TempDir,
}

impl<'a> LocalCopies<'a> {
    /// Saves `kept` (with its tags but those of `repository`), then removes it and each of
    /// `discarded` by image id: every tag goes, and the image itself.
    fn remove(
        sh: &'a Shell,
        kept: &str,
        repository: &str,
        discarded: &[&str],
        pulled_as: &str,
    ) -> Result<Self> {
        let tags = process::observe(sh, &docker::inspect_format(kept, "{{json .RepoTags}}"))?;
        let tags: Vec<String> = serde_json::from_str(&tags).context("docker inspect printed bad RepoTags")?;
        let pushed = format!("{repository}:");
        let local: Vec<&str> = tags.iter().map(String::as_str).filter(|t| !t.starts_with(&pushed)).collect();
        let dir = sh.create_temp_dir()?;
        let archive = dir.path().join("images.tar");
        process::run(sh, &save(&local, &archive))?;
        let copies = LocalCopies { sh, archive, pulled_as: pulled_as.to_owned(), _dir: dir };
        for image in std::iter::once(kept).chain(discarded.iter().copied()) {
            let id = process::query(sh, &docker::inspect_format(image, "{{.Id}}"))?;
            process::run(sh, &Cmd::new("docker").args(["image", "rm", "--force", &id]))?;
            if docker::image_exists(sh, &id) {
                bail!("{image} ({id}) is still on the engine after removal: is a container using it?");
            }
        }
        Ok(copies)
    }
}

impl Drop for LocalCopies<'_> {
    fn drop(&mut self) {
        let _ = process::run_cleanup(self.sh, &load(&self.archive));
        if docker::image_exists(self.sh, &self.pulled_as) {
            let _ = process::run_cleanup(self.sh, &Cmd::new("docker").args(["image", "rm", &self.pulled_as]));
        }
    }
}

pub fn save(images: &[&str], archive: &Path) -> Cmd {
    Cmd::new("docker")
        .args(["save", "--output"])
        .arg(archive.display().to_string())
        .args(images.iter().copied())
}

pub fn load(archive: &Path) -> Cmd {
    Cmd::new("docker").args(["load", "--quiet", "--input"]).arg(archive.display().to_string())
}

/// The throwaway project's release history and lock, removed with it.
struct HistoryCleanup(std::path::PathBuf);

impl Drop for HistoryCleanup {
    fn drop(&mut self) {
        for path in [self.0.clone(), self.0.with_extension("lock")] {
            if path.exists() {
                let _ = process::remove_file(&path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jobs_commands_are_read_in_order_without_failure_steps() {
        let workflow = "jobs:\n  production:\n    steps:\n      - uses: x@y\n      - run: cargo xtask up --tag \"$IMAGE\"\n      - id: check\n        run: cargo xtask smoke --url http://127.0.0.1:8080\n      - if: failure() && steps.check.outcome == 'failure'\n        run: cargo xtask rollback\n";
        assert_eq!(
            job_commands(workflow, "production").unwrap(),
            ["cargo xtask up --tag \"$IMAGE\"", "cargo xtask smoke --url http://127.0.0.1:8080"]
        );
        assert!(job_commands(workflow, "staging").is_err());
        let steps = job_steps(workflow, "production").unwrap();
        let failure: Vec<(bool, String)> =
            steps.iter().map(|s| (s.on_failure, s.commands.join(";"))).collect();
        assert_eq!(
            failure,
            [
                (false, "cargo xtask up --tag \"$IMAGE\"".to_owned()),
                (false, "cargo xtask smoke --url http://127.0.0.1:8080".to_owned()),
                (true, "cargo xtask rollback".to_owned()),
            ]
        );
    }

    #[test]
    fn the_real_release_jobs_deploy_then_check() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for (file, job) in
            [(RELEASE_WORKFLOW, "staging"), (RELEASE_WORKFLOW, "production"), (ROLLBACK_WORKFLOW, "rollback")]
        {
            let text = std::fs::read_to_string(root.join(file)).unwrap();
            let commands = job_commands(&text, job).unwrap();
            assert!(commands.len() >= 2, "{file} {job}: {commands:?}");
            assert!(
                commands.last().unwrap().starts_with("cargo xtask smoke --url "),
                "{file} {job}: {commands:?}"
            );
        }
    }

    #[test]
    fn commands_are_exact() {
        assert_eq!(
            registry::run_registry("registry:2.8.2", "logbook-registry-1", 5000).to_string(),
            "docker run --detach --name logbook-registry-1 --publish 127.0.0.1:5000:5000 registry:2.8.2"
        );
        let archive = Path::new("/tmp/x/images.tar");
        assert_eq!(
            save(&["a:1", "b:2"], archive).to_string(),
            "docker save --output /tmp/x/images.tar a:1 b:2"
        );
        assert_eq!(load(archive).to_string(), "docker load --quiet --input /tmp/x/images.tar");
    }
}

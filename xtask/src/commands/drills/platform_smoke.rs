//! `cargo xtask platform-smoke`: every platform's image, proven here. The other
//! platform's image is cross-compiled and built, both go to a registry on loopback under
//! one manifest list, the list must name both platforms, and the arm64 binary, taken out
//! of its image, must serve under qemu: start, `/readyz`, a write and a read.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use xshell::Shell;

use super::harness;
use crate::commands::checks::audit;
use crate::commands::checks::report::Checks;
use crate::flags::{Platform, PlatformSmoke};
use crate::outside::image::{self, ImagePlan};
use crate::outside::local_service::wait_ready_at;
use crate::outside::process::{self, Cmd};
use crate::outside::registry::{self, LocalRegistry};
use crate::outside::{docker, http, platform, tools};

impl PlatformSmoke {
    pub fn run(self, sh: &Shell) -> Result<()> {
        run(sh, self.no_build, false)
    }
}

/// The smoke; with `install`, the cross toolchain's missing pieces are installed first
/// (as `ci` does).
pub fn run(sh: &Shell, no_build: bool, install: bool) -> Result<()> {
    let host = Platform::host().context("this machine is not a platform the image is built for")?;
    let other = match host {
        Platform::LinuxAmd64 => Platform::LinuxArm64,
        Platform::LinuxArm64 => Platform::LinuxAmd64,
    };
    platform::require_toolchain(sh, other, install)?;
    // Only an arm64 binary needs the emulator here; on an arm64 machine the amd64 one would
    // need its own, which this smoke does not cover.
    if other == Platform::LinuxArm64 {
        tools::QEMU_AARCH64.require(sh, install)?;
    }
    docker::connect(sh)?;
    let plan = ImagePlan::from_repo(sh)?;
    let host_image = image::ensure(sh, no_build)?;
    let mut checks = Checks::stop_at_first();
    let started = Instant::now();
    let other_image = checks
        .step(&format!("the {} image is cross-compiled and built", other.name()), || {
            platform::build_image(sh, &plan, other)
        })?;
    let cross_built_in = started.elapsed();
    checks.run(&format!("the {} image passes the image audit", other.name()), || {
        audit::audit(sh, &other_image, false)?.finish(&format!("audit-image on {other_image}")).map(drop)
    })?;
    let (host_size, other_size) = (image::size_bytes(sh, &host_image)?, image::size_bytes(sh, &other_image)?);

    let registry = LocalRegistry::start(sh)?;
    let repository = format!("{}/{}", registry.addr, crate::project::NAME);
    let revision = plan.tag_name();
    let index = format!("{repository}:{revision}");
    // The registry's names for the images, and the pull below, are removed however it ends.
    let mut local_names = UntagOnDrop { sh, references: Vec::new() };
    local_names.references.extend([host, other].map(|p| format!("{index}-{}", p.arch())));
    // As `publish --platform` pushes them.
    let (published, _) = checks.step("both images are pushed, under one manifest list", || {
        let images = [(host.arch(), host_image.clone()), (other.arch(), other_image.clone())];
        registry::push_platforms(sh, &images, &repository, revision, None)
    })?;
    checks.run("the manifest list names linux/amd64 and linux/arm64", || {
        let listed = registry::index_platforms(sh, &index)?;
        for p in [Platform::LinuxAmd64, Platform::LinuxArm64] {
            if !listed.iter().any(|l| l == p.name()) {
                bail!("{index} lists {listed:?}, not {}", p.name());
            }
        }
        Ok(())
    })?;
    local_names.references.push(published.clone());
    checks.run("a pull by the list's digest gets this machine's platform", || {
        process::run(sh, &image::pull(&published))?;
        let arch = process::query(sh, &docker::inspect_format(&published, "{{.Architecture}}"))?;
        if arch != host.arch() {
            bail!("{published} pulled as {arch}, not {}", host.arch());
        }
        Ok(())
    })?;
    let ready_in = if other == Platform::LinuxArm64 {
        checks
            .step("the arm64 binary, from its image, serves under qemu: /readyz, a write, a read", || {
                serve_under_qemu(sh, &other_image)
            })?
    } else {
        Duration::ZERO
    };
    drop(registry);
    let passed = checks.finish("platform-smoke")?;
    process::result(&format!(
        "platform-smoke: all {passed} checks passed; {} {host_image}: {:.1} MB; {} {other_image}: {:.1} MB ({:.2}x), \
         cross-compiled and built in {:.1}s; manifest list {published}; the arm64 binary under qemu ready in {} ms",
        host.name(),
        host_size / 1e6,
        other.name(),
        other_size / 1e6,
        other_size / host_size.max(1.0),
        cross_built_in.as_secs_f64(),
        ready_in.as_millis()
    ));
    Ok(())
}

/// Takes the binary out of `image`, runs it under qemu-aarch64-static on a free loopback
/// port with a fresh database, and checks a write and a read; returns how long it took
/// to be ready.
fn serve_under_qemu(sh: &Shell, image: &str) -> Result<Duration> {
    let dir = sh.create_temp_dir().context("cannot create a temp dir")?;
    let binary = dir.path().join("logbook");
    let container =
        docker::ContainerGuard::new(sh, format!("{}-platform-{}", crate::project::NAME, std::process::id()));
    process::run(sh, &Cmd::new("docker").args(["create", "--name", &container.name, image]))?;
    process::run(
        sh,
        &Cmd::new("docker").args([
            "cp".to_owned(),
            format!("{}:/logbook", container.name),
            binary.display().to_string(),
        ]),
    )?;
    drop(container);
    let port = http::free_port()?;
    let addr = format!("127.0.0.1:{port}");
    let started = Instant::now();
    process::effect("run the arm64 binary under qemu-aarch64-static")?;
    let server = duct::cmd!(tools::QEMU_AARCH64.name, &binary, "serve")
        .env("LOGBOOK_BIND", "127.0.0.1")
        .env("LOGBOOK_PORT", port.to_string())
        .env("LOGBOOK_DB_PATH", dir.path().join("logbook.db"))
        .env("LOGBOOK_ALLOW_UNAUTHENTICATED", "1")
        .stdout_path(dir.path().join("server.log"))
        .stderr_to_stdout()
        .unchecked()
        .start()
        .context("cannot start qemu-aarch64-static")?;
    let _stop = KillOnDrop(&server);
    let ready = wait_ready_at(&addr, "the arm64 binary under qemu to be ready").map(|()| started.elapsed());
    let ready = ready.with_context(|| {
        let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
        format!("its output: {}", log.trim())
    })?;
    let id = harness::append(&addr, "written under qemu", None)?;
    harness::expect_entry(&addr, id, "written under qemu")?;
    Ok(ready)
}

/// Local names of images, removed when dropped (the images stay under their other tags).
struct UntagOnDrop<'a> {
    sh: &'a Shell,
    references: Vec<String>,
}

impl Drop for UntagOnDrop<'_> {
    fn drop(&mut self) {
        for reference in &self.references {
            let _ = process::run_cleanup(self.sh, &Cmd::new("docker").args(["image", "rm", reference]));
        }
    }
}

/// Kills the emulated service however the check ends.
struct KillOnDrop<'a>(&'a duct::Handle);

impl Drop for KillOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

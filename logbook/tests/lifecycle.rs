//! Shutdown, crash and restart behaviour of the real binary under concurrent writes.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use support::{Server, TempDir, request, stored_entries};

const WRITERS: usize = 16;

/// Writers that POST until the server stops answering, recording every acknowledged entry.
struct Load {
    acked: Arc<Mutex<BTreeMap<i64, String>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(server: &Server) -> Load {
        let acked = Arc::new(Mutex::new(BTreeMap::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..WRITERS)
            .map(|w| {
                let (acked, stop, addr) = (acked.clone(), stop.clone(), server.addr);
                std::thread::spawn(move || {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let text = format!("writer {w} entry {n}");
                        n += 1;
                        let body = format!(r#"{{"text":"{text}"}}"#);
                        let json = ("Content-Type", "application/json");
                        match request(addr, "POST", "/api/entries", &[json], Some(body.as_bytes())) {
                            Ok(r) if r.status == 201 => {
                                let id = r.json()["id"].as_i64().unwrap();
                                acked.lock().unwrap().insert(id, text);
                            }
                            Ok(r) => assert!(r.status == 503, "unexpected answer while stopping: {r:?}"),
                            Err(_) => {} // refused or reset: not acknowledged, so nothing is owed
                        }
                    }
                })
            })
            .collect();
        Load { acked, stop, threads }
    }

    fn wait_for_acks(&self, at_least: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.acked.lock().unwrap().len() < at_least {
            assert!(Instant::now() < deadline, "fewer than {at_least} writes acknowledged in 20 s");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn finish(self) -> BTreeMap<i64, String> {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.acked).unwrap().into_inner().unwrap()
    }
}

fn assert_all_present(acked: &BTreeMap<i64, String>, db: &std::path::Path) {
    let stored: BTreeMap<i64, String> = stored_entries(db).into_iter().collect();
    for (id, text) in acked {
        assert_eq!(stored.get(id), Some(text), "acknowledged entry {id} is missing or changed");
    }
}

#[test]
fn sigterm_under_load_drains_loses_nothing_and_exits_zero() {
    let mut server = Server::start(&[("LOGBOOK_DRAIN_DELAY", "400ms")]);
    let load = Load::start(&server);
    load.wait_for_acks(200);

    // Poll readiness on fresh connections from the moment the signal is sent.
    let readiness = Arc::new(Mutex::new(Vec::new()));
    let polling = Arc::new(AtomicBool::new(true));
    let poller = {
        let (readiness, polling, addr) = (readiness.clone(), polling.clone(), server.addr);
        std::thread::spawn(move || {
            while polling.load(Ordering::Relaxed) {
                if let Ok(r) = request(addr, "GET", "/readyz", &[], None) {
                    readiness.lock().unwrap().push(r.status);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(15));
    polling.store(false, Ordering::Relaxed);
    poller.join().unwrap();
    let acked = load.finish();

    assert_eq!(status.code(), Some(0), "logs:\n{}", server.logs().join("\n"));
    assert!(readiness.lock().unwrap().contains(&503), "readiness never answered 503 while draining");
    assert_all_present(&acked, &server.db);
    let logs = server.logs().join("\n");
    assert!(logs.contains("shutdown started") && logs.contains("shutdown complete"), "{logs}");
    // The final checkpoint folded the WAL into the main file.
    let wal = server.db.with_extension("db-wal");
    assert!(std::fs::metadata(&wal).map_or(0, |m| m.len()) == 0, "WAL left non-empty");
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_write() {
    let dir = TempDir::new("kill");
    let db = dir.path().join("logbook.db");
    let mut server = Server::start_with_db(&db, &[]);
    let load = Load::start(&server);
    load.wait_for_acks(300);
    server.signal("KILL");
    let status = server.wait_exit(Duration::from_secs(5));
    assert_eq!(status.signal(), Some(9));
    let acked = load.finish();
    assert!(acked.len() >= 300);
    assert_all_present(&acked, &db);

    // The service itself starts on the recovered file and serves the entries.
    let restarted = Server::start_with_db(&db, &[]);
    let last = *acked.keys().last().unwrap();
    assert_eq!(restarted.get(&format!("/api/entries/{last}")).status, 200);
}

#[test]
fn idle_sigterm_and_sigint_exit_zero_promptly() {
    for signal in ["TERM", "INT"] {
        let mut server = Server::start(&[]);
        assert_eq!(server.get("/healthz").status, 200);
        let sent = Instant::now();
        server.signal(signal);
        let status = server.wait_exit(Duration::from_secs(5));
        assert_eq!(status.code(), Some(0), "SIG{signal}");
        // Generous: an idle stop waits for nothing, so it is far under the 10 s shutdown timeout.
        assert!(sent.elapsed() < Duration::from_secs(5), "SIG{signal} took {:?}", sent.elapsed());
    }
}

#[test]
fn a_stuck_client_cannot_hold_shutdown_past_the_timeout() {
    let mut server = Server::start(&[("LOGBOOK_SHUTDOWN_TIMEOUT", "1s")]);
    // Half a request header: the server waits for the rest, forever unless bounded.
    let mut stuck = TcpStream::connect(server.addr).unwrap();
    stuck.write_all(b"POST /api/entries HTTP/1.1\r\nHost: x\r\n").unwrap();
    server.get("/healthz"); // the stuck connection is accepted by now
    let sent = Instant::now();
    server.signal("TERM");
    let status = server.wait_exit(Duration::from_secs(8));
    assert_eq!(status.code(), Some(0));
    let took = sent.elapsed();
    // It waits the 1 s timeout, then closes the stuck connection instead of waiting for it.
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(6), "took {took:?}");
    assert!(server.logs().join("\n").contains("did not finish within LOGBOOK_SHUTDOWN_TIMEOUT"));
}

#[test]
fn a_second_signal_exits_at_once() {
    let mut server = Server::start(&[("LOGBOOK_DRAIN_DELAY", "30s")]);
    server.signal("TERM");
    server.wait_for_log("shutdown started", Duration::from_secs(5));
    let sent = Instant::now();
    server.signal("INT");
    let status = server.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(130));
    // At once: a third of the 30 s drain delay it cut short is a generous bound.
    assert!(sent.elapsed() < Duration::from_secs(10), "took {:?}", sent.elapsed());
}

#[test]
fn data_survives_a_restart() {
    let dir = TempDir::new("restart");
    let db = dir.path().join("logbook.db");
    let mut first = Server::start_with_db(&db, &[]);
    assert_eq!(first.post_json("/api/entries", r#"{"text":"before restart"}"#).status, 201);
    first.signal("TERM");
    assert_eq!(first.wait_exit(Duration::from_secs(5)).code(), Some(0));
    let second = Server::start_with_db(&db, &[]);
    assert_eq!(second.get("/api/entries/1").json()["text"], "before restart");
    assert_eq!(second.post_json("/api/entries", r#"{"text":"after"}"#).json()["id"], 2);
}

#[test]
fn a_new_process_takes_over_when_the_old_one_lets_go() {
    // A start-first rolling update: the new process starts while the old one still serves.
    let dir = TempDir::new("handover");
    let db = dir.path().join("logbook.db");
    let mut old = Server::start_with_db(&db, &[]);
    assert_eq!(old.post_json("/api/entries", r#"{"text":"from the old process"}"#).status, 201);

    let mut new = Server::start_listening(&db, &[("LOGBOOK_LOCK_WAIT", "20s")]);
    new.wait_for_log("waiting for the database lock", Duration::from_secs(5));
    assert_eq!(new.get("/healthz").status, 200, "alive while it waits");
    let waiting = new.get("/readyz");
    assert_eq!((waiting.status, waiting.json()["status"].as_str()), (503, Some("starting")));

    // A request that reaches the new process now waits for the database instead of failing.
    let addr = new.addr;
    let reader = std::thread::spawn(move || request(addr, "GET", "/api/entries/1", &[], None).unwrap());
    wait_for_requests_in_flight(&new, 1);
    old.signal("TERM");
    assert_eq!(old.wait_exit(Duration::from_secs(10)).code(), Some(0));

    let read = reader.join().unwrap();
    assert_eq!(read.status, 200, "{read:?}");
    assert_eq!(read.json()["text"], "from the old process");
    new.wait_for_log("\"ready\"", Duration::from_secs(5));
    assert_eq!(new.get("/readyz").status, 200);
    assert_eq!(new.post_json("/api/entries", r#"{"text":"from the new process"}"#).json()["id"], 2);
}

#[test]
fn the_ready_port_takes_connections_only_while_the_service_holds_the_database() {
    // What a proxy without health checks relies on: a refused connection it can retry on
    // another release, never a request held by one that cannot answer it yet.
    let dir = TempDir::new("ready-port");
    let db = dir.path().join("logbook.db");
    let ready_env =
        [("LOGBOOK_READY_PORT", "0"), ("LOGBOOK_DRAIN_DELAY", "3s"), ("LOGBOOK_LOCK_WAIT", "20s")];
    let mut old = Server::start_with_db(&db, &ready_env);
    let old_ready = old.ready_addr.expect("the listening line names the ready port");
    assert_eq!(request(old_ready, "GET", "/readyz", &[], None).unwrap().status, 200);

    let mut new = Server::start_listening(&db, &ready_env);
    new.wait_for_log("waiting for the database lock", Duration::from_secs(5));
    let new_ready = new.ready_addr.unwrap();
    let refused = request(new_ready, "GET", "/api/entries", &[], None).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused, "{refused}");
    assert_eq!(new.get("/healthz").status, 200, "the main port answers probes meanwhile");

    // Shutdown closes the ready port at once, while the main port drains for 3 s.
    old.signal("TERM");
    old.wait_for_log("shutdown started", Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(2);
    let closed = loop {
        match request(old_ready, "GET", "/readyz", &[], None) {
            Err(e) => break e,
            Ok(_) => {
                assert!(Instant::now() < deadline, "the ready port still takes connections while draining")
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(closed.kind(), std::io::ErrorKind::ConnectionRefused, "{closed}");
    assert_eq!(old.get("/readyz").status, 503, "the main port still answers during the drain delay");
    assert_eq!(old.wait_exit(Duration::from_secs(10)).code(), Some(0));

    new.wait_for_log("\"ready\"", Duration::from_secs(10));
    let served = request(new_ready, "GET", "/readyz", &[], None).unwrap();
    assert_eq!(served.status, 200, "{served:?}");
}

#[test]
fn connections_queued_on_the_ready_port_at_shutdown_are_served_not_reset() {
    // At the connection cap nothing is accepted: connections to the ready port wait in
    // its backlog, with their requests sent, as a proxy's would.
    let mut server = Server::start(&[("LOGBOOK_READY_PORT", "0"), ("LOGBOOK_MAX_CONNECTIONS", "1")]);
    let mut idle = TcpStream::connect(server.addr).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let mut first = [0u8; 12];
    std::io::Read::read_exact(&mut idle, &mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200", "the kept-alive connection was not answered");
    server.wait_for_log("connection cap reached", Duration::from_secs(5));
    let ready = server.ready_addr.unwrap();
    let mut queued: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut stream = TcpStream::connect(ready).unwrap();
            stream
                .write_all(b"GET /api/entries HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
                .unwrap();
            stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            stream
        })
        .collect();
    server.signal("TERM");
    for (i, stream) in queued.iter_mut().enumerate() {
        let mut answer = Vec::new();
        std::io::Read::read_to_end(stream, &mut answer)
            .unwrap_or_else(|e| panic!("queued connection {i}: {e}"));
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "queued connection {i} got {answer:?}");
    }
    assert_eq!(server.wait_exit(Duration::from_secs(15)).code(), Some(0));
}

#[test]
fn a_connection_that_has_sent_nothing_when_shutdown_starts_still_gets_its_answer() {
    // A proxy's new connection can be accepted a moment before its request is read; the
    // HTTP layer's own graceful shutdown would close it unanswered, and the proxy, having
    // sent the request, could not retry it.
    let mut server = Server::start(&[("LOGBOOK_DRAIN_DELAY", "0s")]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Connections are accepted in the order they came: once a later one is answered,
    // this one has been accepted too, and waits for its first bytes.
    assert_eq!(request(server.addr, "GET", "/healthz", &[], None).unwrap().status, 200);
    server.signal("TERM");
    server.wait_for_log("closing connections once answered", Duration::from_secs(5));
    let post = b"POST /api/entries HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"text\":\"late\"}";
    // Without the grace, the connection is already closed: the write or the read fails.
    let mut answer = Vec::new();
    let _ = stream.write_all(post).and_then(|()| std::io::Read::read_to_end(&mut stream, &mut answer));
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer:?}");
    assert_eq!(server.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert_eq!(stored_entries(&server.db).len(), 1);
}

/// Reads one response from a kept-alive connection: its head, then a `Content-Length` body.
fn read_one_response(stream: &mut TcpStream) -> std::io::Result<String> {
    let mut bytes = Vec::new();
    let mut byte = [0u8; 1];
    while !bytes.ends_with(b"\r\n\r\n") {
        if std::io::Read::read(stream, &mut byte)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        bytes.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&bytes).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|line| line.strip_prefix("content-length:"))
        .map_or(0, |n| n.trim().parse::<usize>().unwrap());
    let mut body = vec![0u8; length];
    std::io::Read::read_exact(stream, &mut body)?;
    Ok(format!("{head}{}", String::from_utf8_lossy(&body)))
}

/// A kept-alive connection, used once before SIGTERM and once after the service starts
/// closing connections: what the second request gets.
fn second_request_after_sigterm(env: &[(&str, &str)]) -> (Server, std::io::Result<String>) {
    let mut server = Server::start(env);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    let first = read_one_response(&mut stream).unwrap();
    assert!(first.starts_with("http/1.1 200") && !first.contains("connection: close"), "{first:?}");
    server.signal("TERM");
    server.wait_for_log("closing connections once answered", Duration::from_secs(5));
    // What a proxy does with a pooled connection it believes open.
    std::thread::sleep(Duration::from_millis(300));
    let post = b"POST /api/entries HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{\"text\":\"late\"}";
    let second = stream.write_all(post).and_then(|()| read_one_response(&mut stream));
    (server, second)
}

#[test]
fn a_kept_alive_connection_is_answered_through_the_keepalive_grace_then_closed() {
    // Through the grace, a request on a connection the client kept alive is answered and
    // told to close the connection: the client never sends on a connection that is closing.
    let (mut server, second) =
        second_request_after_sigterm(&[("LOGBOOK_DRAIN_DELAY", "0s"), ("LOGBOOK_KEEPALIVE_GRACE", "2s")]);
    let second = second.unwrap();
    assert!(second.starts_with("http/1.1 201") && second.contains("connection: close"), "{second:?}");
    assert_eq!(server.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert_eq!(stored_entries(&server.db).len(), 1);
}

#[test]
fn without_a_keepalive_grace_an_idle_connection_closes_at_shutdown() {
    // The race the grace removes: the request sent on the closed connection is lost, and
    // its sender cannot know whether it was stored.
    let (mut server, second) = second_request_after_sigterm(&[("LOGBOOK_DRAIN_DELAY", "0s")]);
    assert!(second.is_err(), "{second:?}");
    assert_eq!(server.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert_eq!(stored_entries(&server.db).len(), 0);
}

#[test]
fn an_idle_kept_alive_connection_holds_shutdown_up_for_the_grace_only() {
    let mut server = Server::start(&[("LOGBOOK_DRAIN_DELAY", "0s"), ("LOGBOOK_KEEPALIVE_GRACE", "1500ms")]);
    let mut idle = TcpStream::connect(server.addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n").unwrap();
    read_one_response(&mut idle).unwrap();
    let signalled = Instant::now();
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(15)).code(), Some(0));
    let took = signalled.elapsed();
    assert!(took >= Duration::from_millis(1400) && took < Duration::from_secs(5), "shutdown took {took:?}");
}

#[test]
fn a_connection_that_never_sends_holds_shutdown_up_only_briefly() {
    // The grace for a first request is not the shutdown timeout: a silent client (a port
    // scanner, say) costs about a second, not LOGBOOK_SHUTDOWN_TIMEOUT.
    let mut server = Server::start(&[("LOGBOOK_DRAIN_DELAY", "0s"), ("LOGBOOK_SHUTDOWN_TIMEOUT", "20s")]);
    let _silent = TcpStream::connect(server.addr).unwrap();
    assert_eq!(request(server.addr, "GET", "/healthz", &[], None).unwrap().status, 200);
    let signalled = Instant::now();
    server.signal("TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(15)).code(), Some(0));
    let took = signalled.elapsed();
    assert!(took >= Duration::from_millis(900) && took < Duration::from_secs(5), "shutdown took {took:?}");
    let logs = server.logs().join("\n");
    assert!(!logs.contains("did not finish within"), "{logs}");
}

#[test]
fn a_taken_ready_port_fails_the_start_naming_the_variable() {
    let dir = TempDir::new("ready-port-taken");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let output = support::bare_command()
        .env("LOGBOOK_PORT", "0")
        .env("LOGBOOK_READY_PORT", &port)
        .env("LOGBOOK_DB_PATH", dir.path().join("logbook.db"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains(&format!("LOGBOOK_READY_PORT={port}")), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn stopping_while_waiting_for_the_database_answers_waiting_requests_at_once() {
    let dir = TempDir::new("stop-waiting");
    let db = dir.path().join("logbook.db");
    let _holder = Server::start_with_db(&db, &[]);
    let mut waiting =
        Server::start_listening(&db, &[("LOGBOOK_LOCK_WAIT", "60s"), ("LOGBOOK_SHUTDOWN_TIMEOUT", "20s")]);
    waiting.wait_for_log("waiting for the database lock", Duration::from_secs(5));
    let addr = waiting.addr;
    let reader = std::thread::spawn(move || request(addr, "GET", "/api/entries", &[], None).unwrap());
    wait_for_requests_in_flight(&waiting, 1);
    let sent = Instant::now();
    waiting.signal("TERM");
    let answer = reader.join().unwrap();
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.json()["error"], "starting");
    assert_eq!(waiting.wait_exit(Duration::from_secs(10)).code(), Some(0));
    assert!(sent.elapsed() < Duration::from_secs(5), "took {:?}", sent.elapsed());
}

/// Polls the server's own `/metrics` until `others` requests besides that poll are in
/// flight: the request a test sent is inside the server, waiting.
fn wait_for_requests_in_flight(server: &Server, others: u32) {
    let needle = format!("logbook_http_requests_in_flight {}", others + 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.get("/metrics").body.lines().any(|l| l == needle) {
        assert!(Instant::now() < deadline, "no request in flight after 10 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

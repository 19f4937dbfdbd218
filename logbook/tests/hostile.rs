//! Hostile clients and faults, against the real binary on loopback: uploads that stall,
//! clients that never read, a full disk, a removed lock file. Each measures what the issue
//! of record asked for and prints it, so `cargo test -- --nocapture` shows the figures.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use support::{Server, TempDir};

const TOKEN: &str = "hostile-test-token";
const MIB: u64 = 1024 * 1024;

/// Resident memory of a process, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() * 1024
}

/// The status code of the first response on `stream`, or None if it closed without one.
fn read_status(stream: &mut TcpStream) -> Option<u16> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&raw).split_whitespace().nth(1)?.parse().ok()
}

/// Reads until the server closes; true if it did within `within`.
fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

fn post_head(addr: SocketAddr, length: u64, token: Option<&str>, extra: &str) -> String {
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    format!(
        "POST /api/entries HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n{auth}{extra}\r\n"
    )
}

#[test]
fn stalled_unauthenticated_uploads_are_refused_before_their_body() {
    let server = Server::start(&[("LOGBOOK_API_TOKEN", TOKEN)]);
    let before = rss_bytes(server.pid());
    let addr = server.addr;
    // 200 uploads that send all but the last byte of a 1 MiB body, and never that byte.
    let uploads: Vec<_> = (0..200)
        .map(|_| {
            std::thread::spawn(move || {
                let mut stream = TcpStream::connect(addr).unwrap();
                stream.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
                stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                stream.write_all(post_head(addr, MIB, None, "").as_bytes()).unwrap();
                // The server answers without reading, so this stops early; that is the point.
                let _ = stream.write_all(&vec![b' '; MIB as usize - 1]);
                let status = read_status(&mut stream);
                (status, stream)
            })
        })
        .collect();
    let mut peak = 0;
    let mut answered = Vec::new();
    for upload in uploads {
        peak = peak.max(rss_bytes(server.pid()));
        answered.push(upload.join().unwrap());
    }
    let refused = answered.iter().filter(|(status, _)| *status == Some(401)).count();
    let growth = peak.saturating_sub(before);
    println!("200 stalled unauthenticated 1 MiB uploads: {refused} answered 401; RSS growth {growth} bytes");
    // A 401 can be lost to the reset that follows an unread body; none may hang or pass.
    assert!(answered.iter().all(|(status, _)| matches!(status, None | Some(401))));
    assert!(refused >= 150, "only {refused} of 200 got their 401");
    assert!(growth < 32 * MIB, "RSS grew by {growth} bytes");
}

#[test]
fn a_declared_body_over_the_limit_gets_413_without_100_continue() {
    let server = Server::start(&[("LOGBOOK_API_TOKEN", TOKEN)]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = post_head(server.addr, 10_000_000, Some(TOKEN), "Expect: 100-continue\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    assert_eq!(read_status(&mut stream), Some(413), "the first answer must be the refusal, not 100 Continue");
}

#[test]
fn a_client_that_sends_an_oversized_body_without_waiting_reads_the_413() {
    let server = Server::start(&[("LOGBOOK_API_TOKEN", TOKEN)]);
    let mut stream = TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // As Python's urllib and many SDKs do: the whole body, then the answer.
    // More than the kernel buffers on loopback, so the body must really be read.
    let length = 15 * 1024 * 1024;
    let head = post_head(server.addr, length as u64, Some(TOKEN), "");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&vec![b'x'; length]).expect("the body is read, not cut off");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&answer).contains("body_too_large") {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reading the answer failed: {e}"),
        }
    }
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""error":"body_too_large""#), "{answer}");
}

#[test]
fn bodies_that_stall_are_cut_off_at_the_body_timeout() {
    let server = Server::start(&[
        ("LOGBOOK_API_TOKEN", TOKEN),
        ("LOGBOOK_BODY_TIMEOUT", "1s"),
        ("LOGBOOK_MAX_CONNECTIONS", "2000"),
    ]);
    // 1,000 authorised uploads that send one byte of body and then nothing.
    let mut stalled: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let mut stream = TcpStream::connect(server.addr).unwrap();
            stream.write_all(post_head(server.addr, 100, Some(TOKEN), "").as_bytes()).unwrap();
            stream.write_all(b"{").unwrap();
            stream
        })
        .collect();
    let opened = Instant::now();
    let mut timed_out = 0;
    for stream in &mut stalled {
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        if read_status(stream) == Some(408) {
            timed_out += 1;
        }
        assert!(closed_within(stream, Duration::from_secs(5)), "a stalled upload was left open");
    }
    let all_closed = opened.elapsed();
    println!(
        "1000 stalled bodies: {timed_out} answered 408, all closed {all_closed:?} after the last opened"
    );
    assert_eq!(timed_out, 1000);
    assert!(all_closed < Duration::from_secs(4), "closing took {all_closed:?} with a 1 s body timeout");
}

#[test]
fn clients_that_never_read_hold_little_memory_and_are_cut_off() {
    let server = Server::start(&[("LOGBOOK_WRITE_TIMEOUT", "1s")]);
    // Entries of control characters, six bytes each in JSON: a page is its 1 MiB budget.
    let text = format!("x{}", "\u{1}".repeat(9_999));
    let body = serde_json::json!({ "text": text }).to_string();
    for _ in 0..40 {
        assert_eq!(server.post_json("/api/entries", &body).status, 201);
    }
    let before = rss_bytes(server.pid());
    // 20 clients each ask for 30 maximal pages at once and read none of them.
    let request = format!("GET /api/entries?limit=500 HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
    let mut readers: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut stream = TcpStream::connect(server.addr).unwrap();
            stream.write_all(request.repeat(30).as_bytes()).unwrap();
            stream
        })
        .collect();
    let started = Instant::now();
    let mut peak = 0;
    while started.elapsed() < Duration::from_secs(3) {
        peak = peak.max(rss_bytes(server.pid()));
        std::thread::sleep(Duration::from_millis(50));
    }
    let growth = peak.saturating_sub(before);
    // Now read: each connection must end (cut off) well before its 30 pages are through.
    let mut cut_off = 0;
    for stream in &mut readers {
        let mut received = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        loop {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => received += n as u64,
            }
        }
        if received < 30 * MIB {
            cut_off += 1;
        }
    }
    println!("20 clients not reading 30 pages each: RSS growth {growth} bytes; {cut_off} cut off");
    assert!(growth < 32 * MIB, "RSS grew by {growth} bytes");
    assert_eq!(cut_off, 20, "a client that stops reading must be disconnected");
    assert_eq!(server.get("/readyz").status, 200, "the service is unharmed");
}

/// `prlimit`, which must be installed (util-linux): the disk-full test needs it.
fn prlimit() -> String {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("prlimit"))
        .find(|path| path.is_file());
    found.expect("prlimit (util-linux) is needed to simulate a full disk").display().to_string()
}

#[test]
fn a_full_disk_turns_readiness_off_and_back_on_without_losing_an_acknowledged_entry() {
    let dir = TempDir::new("disk-full");
    let db = dir.path().join("logbook.db");
    // Files may grow to 512 KiB (soft limit, which this test may raise again): a full disk.
    let prlimit = prlimit();
    let command = support::wrapped_command(&[&prlimit, "--fsize=524288:unlimited", "--"]);
    let mut server = Server::start_command(command, &db, &[]);
    server.wait_for_log("\"ready\"", Duration::from_secs(20));
    let text = "y".repeat(8_000);
    let body = serde_json::json!({ "text": text }).to_string();
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    while refused == 0 {
        let answer = server.post_json("/api/entries", &body);
        match answer.status {
            201 => acknowledged.push(answer.json()["id"].as_i64().unwrap()),
            503 => refused += 1,
            other => panic!("append answered {other}: {}", answer.body),
        }
        assert!(acknowledged.len() < 1000, "the file size limit never took effect");
    }
    let failed_at = Instant::now();
    let ready = server.get("/readyz");
    let unready_after = failed_at.elapsed();
    println!(
        "full disk: {} acknowledged, then /readyz {} after {unready_after:?}: {}",
        acknowledged.len(),
        ready.status,
        ready.body
    );
    assert_eq!(ready.status, 503, "{}", ready.body);
    assert_eq!(ready.json()["status"], "writes_failing");
    assert!(unready_after < Duration::from_secs(1));
    assert_eq!(server.get(&format!("/api/entries/{}", acknowledged[0])).status, 200, "reads still work");

    // Space comes back: readiness returns by itself (no write needed), appends work again.
    let raised = Command::new(&prlimit)
        .args(["--pid", &server.pid().to_string(), "--fsize=unlimited"])
        .status()
        .unwrap();
    assert!(raised.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.get("/readyz").status != 200 {
        assert!(Instant::now() < deadline, "still unready after space came back");
        std::thread::sleep(Duration::from_millis(20));
    }
    let answer = server.post_json("/api/entries", &body);
    assert_eq!(answer.status, 201, "{}", answer.body);
    acknowledged.push(answer.json()["id"].as_i64().unwrap());
    drop(server);

    // Every acknowledged entry survived, after a restart too.
    let server = Server::start_with_db(&db, &[]);
    for id in &acknowledged {
        assert_eq!(server.get(&format!("/api/entries/{id}")).status, 200, "entry {id} was lost");
    }
}

#[test]
fn restore_is_refused_while_the_service_runs_even_without_its_lock_file() {
    let dir = TempDir::new("lockless");
    let db = dir.path().join("logbook.db");
    let server = Server::start_with_db(&db, &[]);
    for n in 0..3 {
        assert_eq!(server.post_json("/api/entries", &format!(r#"{{"text": "before {n}"}}"#)).status, 201);
    }
    let backup = dir.path().join("backup.db");
    let made = support::bare_command()
        .env("LOGBOOK_DB_PATH", &db)
        .args(["backup", "--to", backup.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    assert_eq!(server.post_json("/api/entries", r#"{"text": "after the backup"}"#).status, 201);

    std::fs::remove_file(format!("{}.lock", db.display())).unwrap();
    let restore = support::bare_command()
        .env("LOGBOOK_DB_PATH", &db)
        .args(["restore", "--from", backup.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&restore.stderr);
    assert!(!restore.status.success(), "restore replaced a live database");
    assert!(stderr.contains("open in another process"), "{stderr}");
    // Nothing was replaced: the service still holds all four entries and takes a fifth.
    assert_eq!(server.post_json("/api/entries", r#"{"text": "still live"}"#).status, 201);
    let page = server.get("/api/entries").json();
    assert_eq!(page["entries"].as_array().unwrap().len(), 5, "{page}");
}

#[test]
fn what_the_http_layer_refuses_is_counted_and_our_limits_answer_json() {
    let server = Server::start(&[]);
    for garbage in ["NOT A REQUEST\r\n\r\n", "GET / HTTP/1.1\r\nbad header line\r\n\r\n"] {
        let mut stream = TcpStream::connect(server.addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(garbage.as_bytes()).unwrap();
        assert_eq!(read_status(&mut stream), Some(400), "{garbage:?}");
    }
    let long = server.get(&format!("/api/entries?after={}", "1".repeat(9 * 1024)));
    assert_eq!((long.status, long.json()["error"].as_str()), (414, Some("uri_too_long")));
    let metrics = server.get("/metrics").body;
    let unparsed = metrics
        .lines()
        .find(|l| l.starts_with("logbook_http_requests_total") && l.contains(r#"route="unparsed""#))
        .unwrap_or_else(|| panic!("no unparsed requests counted:\n{metrics}"));
    assert!(unparsed.contains(r#"status="400""#) && unparsed.ends_with(" 2"), "{unparsed}");
    assert!(metrics.contains(r#"status="414""#), "the 414 is counted");
}

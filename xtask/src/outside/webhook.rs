//! A webhook receiver: what an alert's journey ends at in the monitoring smoke test. It
//! answers every request 200 and keeps what was posted, with when it arrived.

use std::net::TcpListener;
use std::time::Duration;

use anyhow::{Context, Result};

/// Listens on every interface (containers reach it through the
/// engine's gateway, `host.docker.internal`), on a free port, until dropped.
pub struct WebhookReceiver {
    pub port: u16,
    received: std::sync::Arc<std::sync::Mutex<Vec<(std::time::Instant, String)>>>,
    running: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl WebhookReceiver {
    pub fn start() -> Result<Self> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let listener = TcpListener::bind("0.0.0.0:0").context("cannot listen for webhooks")?;
        listener.set_nonblocking(true).context("cannot listen for webhooks")?;
        let port = listener.local_addr()?.port();
        let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let running = std::sync::Arc::new(AtomicBool::new(true));
        let (store, alive) = (received.clone(), running.clone());
        std::thread::spawn(move || {
            while alive.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Some(body) = read_post(stream) {
                            store
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner)
                                .push((std::time::Instant::now(), body));
                        }
                    }
                    // Nothing yet: look again shortly (and notice when to stop).
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(WebhookReceiver { port, received, running })
    }

    /// When the first body containing every one of `needles` arrived, if one has.
    pub fn arrived(&self, needles: &[&str]) -> Option<std::time::Instant> {
        let received = self.received.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        received.iter().find(|(_, body)| needles.iter().all(|n| body.contains(n))).map(|(at, _)| *at)
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        self.running.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Reads one request (head and `Content-Length` body) and answers 200; the body, if any.
fn read_post(mut stream: std::net::TcpStream) -> Option<String> {
    use std::io::{Read, Write};
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let body_start = loop {
        let n = stream.read(&mut buf).ok().filter(|n| *n > 0)?;
        raw.extend_from_slice(&buf[..n]);
        if let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
    };
    let head = String::from_utf8_lossy(&raw[..body_start]).to_ascii_lowercase();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while raw.len() < body_start + length {
        let n = stream.read(&mut buf).ok().filter(|n| *n > 0)?;
        raw.extend_from_slice(&buf[..n]);
    }
    let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    Some(String::from_utf8_lossy(&raw[body_start..]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outside::http::request_with_headers;

    #[test]
    fn the_webhook_receiver_keeps_what_is_posted() {
        let receiver = WebhookReceiver::start().unwrap();
        let addr = format!("127.0.0.1:{}", receiver.port);
        let body = r#"{"status":"firing","alerts":[{"labels":{"alertname":"LogbookDown"}}]}"#;
        let answer =
            request_with_headers(&addr, "POST", "/alerts", &[], Some(body), Duration::from_secs(5)).unwrap();
        assert_eq!(answer.status, 200);
        // The receiver keeps the body once it has answered: poll, with a deadline.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while receiver.arrived(&["\"LogbookDown\""]).is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(receiver.arrived(&["\"LogbookDown\"", "\"firing\""]).is_some());
        assert!(receiver.arrived(&["\"resolved\""]).is_none());
    }
}

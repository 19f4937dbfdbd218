//! A bare HTTP/1.1 GET over std's TcpStream: enough to probe the service's endpoints
//! without an HTTP client dependency.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use anyhow::{Context, Result, anyhow};

pub struct Response {
    pub status: u16,
    pub body: String,
}

pub fn get(host_port: &str, path: &str, timeout: Duration) -> Result<Response> {
    request(host_port, "GET", path, None, timeout)
}

pub fn post_json(host_port: &str, path: &str, body: &str, timeout: Duration) -> Result<Response> {
    request(host_port, "POST", path, Some(body), timeout)
}

fn request(
    host_port: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    timeout: Duration,
) -> Result<Response> {
    request_with_headers(host_port, method, path, &[], body, timeout)
}

/// A request with extra headers (`Authorization`, say).
pub fn request_with_headers(
    host_port: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    timeout: Duration,
) -> Result<Response> {
    let addr: SocketAddr = host_port
        .to_socket_addrs()
        .with_context(|| format!("bad address {host_port}"))?
        .next()
        .ok_or_else(|| anyhow!("{host_port} resolves to nothing"))?;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {host_port}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if let Some(body) = body {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    head.push_str(body.unwrap_or_default());
    stream.write_all(head.as_bytes())?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse(&raw).ok_or_else(|| anyhow!("malformed HTTP response from {host_port}{path}"))
}

fn parse(raw: &[u8]) -> Option<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.lines().next()?.split_whitespace().nth(1)?.parse().ok()?;
    Some(Response { status, body: body.to_owned() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_body() {
        let r = parse(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 2\r\n\r\n{}").unwrap();
        assert_eq!((r.status, r.body.as_str()), (503, "{}"));
        assert!(parse(b"garbage").is_none());
    }

    #[test]
    fn a_closed_port_is_an_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        assert!(get(&addr, "/healthz", Duration::from_secs(1)).is_err());
    }
}

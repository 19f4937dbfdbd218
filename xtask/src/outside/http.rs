//! HTTP to the service and its neighbours (Prometheus, the deployed stack), over a small
//! blocking client: chunked bodies, a deadline for the whole exchange, and errors that
//! name the request. Any status is an answer; callers decide what they expected.

use std::net::TcpListener;
use std::time::Duration;

use anyhow::{Context, Result};

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: String,
}

pub fn get(host_port: &str, path: &str, timeout: Duration) -> Result<Response> {
    request_with_headers(host_port, "GET", path, &[], None, timeout)
}

/// A request with extra headers (`Authorization`, say); a body is sent as JSON.
pub fn request_with_headers(
    host_port: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
    timeout: Duration,
) -> Result<Response> {
    let url = format!("http://{host_port}{path}");
    if method != "GET" {
        // A request that changes something: a dry run ends here, naming it.
        super::process::effect(&format!("send {method} {url}"))?;
    }
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        // Loopback and the compose network only: a proxy from the environment would be wrong.
        .proxy(None)
        .max_redirects(0)
        .build()
        .into();
    let exchange = || -> std::result::Result<Response, ureq::Error> {
        let mut response = match (method, body) {
            ("GET", None) => with_headers(agent.get(&url), headers).call()?,
            ("POST", Some(body)) => with_headers(agent.post(&url), headers)
                .header("Content-Type", "application/json")
                .send(body)?,
            _ => return Err(ureq::Error::BadUri(format!("unsupported request {method} with body {body:?}"))),
        };
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string()?;
        Ok(Response { status, body })
    };
    exchange().with_context(|| format!("{method} {url}"))
}

fn with_headers<B>(
    mut request: ureq::RequestBuilder<B>,
    headers: &[(&str, &str)],
) -> ureq::RequestBuilder<B> {
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request
}

/// A loopback port that was free a moment ago, for a throwaway server or stack; never one
/// this process was given before. A port handed out is not bound until its server starts,
/// so without that memory two servers of one drill (a stack and a registry, say) could be
/// given the same port, and the later one would fail to bind it.
pub fn free_port() -> Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    first_not_given(&mut given, || {
        let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free loopback port")?;
        Ok(listener.local_addr()?.port())
    })
}

/// The first port `next` offers that is not in `given`, which it joins.
fn first_not_given(given: &mut Vec<u16>, mut next: impl FnMut() -> Result<u16>) -> Result<u16> {
    for _ in 0..100 {
        let port = next()?;
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
    anyhow::bail!("no loopback port free that this process was not given already")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};

    #[test]
    fn a_free_port_is_never_given_twice() {
        // The kernel may offer a port again once its probe socket is closed.
        let mut offers = [5000, 5000, 5000, 5001].into_iter();
        let mut given = Vec::new();
        assert_eq!(first_not_given(&mut given, || Ok(offers.next().unwrap())).unwrap(), 5000);
        assert_eq!(first_not_given(&mut given, || Ok(offers.next().unwrap())).unwrap(), 5001);
        assert!(first_not_given(&mut given, || Ok(5000)).is_err());
        assert_ne!(free_port().unwrap(), free_port().unwrap());
    }

    /// Serves one connection with `answer`, returning the request head it read.
    fn serve_once(answer: &'static str) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                head.push_str(&line);
            }
            let length = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(str::to_owned))
                .and_then(|n| n.trim().parse::<usize>().ok())
                .unwrap_or(0);
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            reader.get_mut().write_all(answer.as_bytes()).unwrap();
            head + &String::from_utf8_lossy(&body)
        });
        (addr, handle)
    }

    #[test]
    fn chunked_bodies_and_error_statuses_are_answers() {
        let (addr, server) = serve_once(
            "HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3\r\n:1}\r\n0\r\n\r\n",
        );
        let response = get(&addr, "/readyz", Duration::from_secs(5)).unwrap();
        assert_eq!((response.status, response.body.as_str()), (503, "{\"a\":1}"));
        assert!(server.join().unwrap().starts_with("GET /readyz HTTP/1.1"));
    }

    #[test]
    fn posts_send_json_and_headers() {
        let (addr, server) = serve_once("HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}");
        let response = request_with_headers(
            &addr,
            "POST",
            "/api/entries",
            &[("Authorization", "Bearer t")],
            Some(r#"{"text":"x"}"#),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(response.status, 201);
        let request = server.join().unwrap().to_ascii_lowercase();
        assert!(
            request.contains("authorization: bearer t") && request.contains("content-type: application/json")
        );
        assert!(request.ends_with(r#"{"text":"x"}"#), "{request}");
    }

    #[test]
    fn a_closed_port_and_a_silent_server_are_errors_naming_the_request() {
        let port = free_port().unwrap();
        let err = format!(
            "{:#}",
            get(&format!("127.0.0.1:{port}"), "/healthz", Duration::from_secs(2)).unwrap_err()
        );
        assert!(err.starts_with(&format!("GET http://127.0.0.1:{port}/healthz")), "{err}");
        let silent = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let started = std::time::Instant::now();
        assert!(get(&addr, "/healthz", Duration::from_millis(300)).is_err());
        assert!(started.elapsed() < Duration::from_secs(10), "the deadline was not kept");
    }
}

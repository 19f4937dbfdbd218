//! The service end to end: the real binary over real HTTP, for what needs a process of its
//! own (the process-wide metrics, its logs). Every kind of bad input is in_process.rs,
//! through the router alone.

#![allow(clippy::unwrap_used)] // test code: a failed unwrap is a failed test

mod support;

use support::{Server, request};

fn assert_json_error(response: &support::Response, status: u16, code: &str) {
    assert_eq!(response.status, status, "{response:?}");
    let body = response.json();
    assert_eq!(body["error"], code, "{response:?}");
    assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()), "{response:?}");
}

#[test]
fn probes_version_and_metrics_answer() {
    let server = Server::start(&[]);
    assert_eq!(server.get("/healthz").status, 200);
    let ready = server.get("/readyz");
    assert_eq!((ready.status, ready.json()["status"].as_str()), (200, Some("ready")));

    let version = server.get("/version").json();
    assert_eq!(version["version"], env!("CARGO_PKG_VERSION"));
    assert!(version["revision"].is_string());
    assert!(version["build_time"].is_string());
    assert!(version["uptime_seconds"].is_u64());

    server.post_json("/api/entries", r#"{"text":"counted"}"#);
    server.get("/nope");
    let metrics = server.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(metrics.header("content-type").unwrap().starts_with("text/plain"));
    for needle in [
        r#"logbook_http_requests_total{method="POST",route="/api/entries",status="201"} 1"#,
        r#"logbook_http_requests_total{method="GET",route="unmatched",status="404"} 1"#,
        r#"logbook_http_requests_total{method="GET",route="/healthz",status="200"} 1"#,
        "logbook_entries_appended_total 1",
        r#"logbook_storage_errors_total{op="append"} 0"#,
        "# TYPE logbook_http_request_duration_seconds histogram",
        r#"logbook_http_request_duration_seconds_bucket{method="POST",route="/api/entries",le="+Inf"} 1"#,
        "logbook_build_info{",
        "# HELP logbook_storage_errors_total",
    ] {
        assert!(metrics.body.contains(needle), "missing {needle} in:\n{}", metrics.body);
    }
}

#[test]
fn entries_round_trip() {
    let server = Server::start(&[]);
    let created = server.post_json("/api/entries", r#"{"text":"deployed v1.2","tags":["deploy","prod"]}"#);
    assert_eq!(created.status, 201, "{created:?}");
    let entry = created.json();
    assert_eq!(entry["id"], 1);
    assert_eq!(entry["text"], "deployed v1.2");
    assert_eq!(entry["tags"], serde_json::json!(["deploy", "prod"]));
    assert!(entry["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(created.header("location"), Some("/api/entries/1"));

    let fetched = server.get("/api/entries/1");
    assert_eq!(fetched.status, 200);
    assert_eq!(fetched.json(), entry);

    let no_tags = server.post_json("/api/entries", r#"{"text":"ünïcödé ✓"}"#).json();
    assert_eq!(no_tags["tags"], serde_json::json!([]));
    assert_eq!(server.get("/api/entries/2").json()["text"], "ünïcödé ✓");
}

#[test]
fn writes_need_the_token_when_one_is_set_and_it_never_reaches_the_logs() {
    let token = "tok-9f8e7d6c5b4a";
    let server = Server::start(&[("LOGBOOK_API_TOKEN", token), ("LOGBOOK_LOG", "debug")]);
    let body = br#"{"text":"guarded"}"#;
    let json = ("Content-Type", "application/json");
    let bearer = format!("Bearer {token}");

    let anonymous = request(server.addr, "POST", "/api/entries", &[json], Some(body)).unwrap();
    assert_json_error(&anonymous, 401, "unauthorized");
    let wrong =
        request(server.addr, "POST", "/api/entries", &[json, ("Authorization", "Bearer nope")], Some(body))
            .unwrap();
    assert_json_error(&wrong, 401, "unauthorized");
    // A token in the query string or an unknown header must not leak either.
    let leaky = request(
        server.addr,
        "POST",
        &format!("/api/entries?token={token}"),
        &[json, ("X-Api-Key", token), ("Authorization", &bearer)],
        Some(body),
    )
    .unwrap();
    assert_eq!(leaky.status, 201, "{leaky:?}");
    assert_eq!(server.get("/api/entries/1").status, 200, "reads need no token");
    server.get(&format!("/api/entries?token={token}"));

    let logs = server.logs().join("\n");
    assert!(logs.contains("\"request\""), "expected access log lines:\n{logs}");
    assert!(!logs.contains(token), "the token leaked into the logs:\n{logs}");
}

#[test]
fn logs_are_one_json_object_per_line() {
    let mut server = Server::start(&[]);
    server.get("/healthz");
    server.wait_for_log("\"/healthz\"", std::time::Duration::from_secs(5));
    for line in server.logs() {
        let value: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(value["level"].is_string() && value["timestamp"].is_string(), "{line}");
    }
}

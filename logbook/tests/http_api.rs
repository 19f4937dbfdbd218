//! Every endpoint and every kind of bad input, over real HTTP against the real binary.

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
fn pagination_walks_every_entry_once() {
    let server = Server::start(&[]);
    let empty = server.get("/api/entries").json();
    assert_eq!(empty["entries"], serde_json::json!([]));
    assert!(empty["next_after"].is_null());

    for i in 1..=7 {
        assert_eq!(server.post_json("/api/entries", &format!(r#"{{"text":"e{i}"}}"#)).status, 201);
    }
    // Pages of 3: 3, 3, 1 entries; the last page has no continuation.
    let mut after = 0;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = server.get(&format!("/api/entries?after={after}&limit=3")).json();
        pages += 1;
        for e in page["entries"].as_array().unwrap() {
            seen.push(e["id"].as_i64().unwrap());
        }
        match page["next_after"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(seen, (1..=7).collect::<Vec<_>>());
    assert_eq!(pages, 3);

    // A page that ends exactly at the last entry points on; the next page is empty.
    let exact = server.get("/api/entries?after=4&limit=3").json();
    assert_eq!(exact["next_after"], 7);
    let beyond = server.get("/api/entries?after=7").json();
    assert_eq!(beyond["entries"], serde_json::json!([]));
    assert!(beyond["next_after"].is_null());
    assert_eq!(server.get("/api/entries?after=1000").json()["entries"], serde_json::json!([]));
    assert_eq!(server.get("/api/entries?limit=500").json()["entries"].as_array().unwrap().len(), 7);
    assert_eq!(server.get("/api/entries").json()["entries"].as_array().unwrap().len(), 7);
}

#[test]
fn bad_bodies_get_json_4xx() {
    let server = Server::start(&[]);
    let cases: &[(&str, u16, &str)] = &[
        ("{not json", 400, "invalid_body"),
        ("", 400, "invalid_body"),
        (r#"{"text": 5}"#, 422, "invalid_body"),
        (r#"{"text": "x", "tags": "a"}"#, 422, "invalid_body"),
        (r#"{"text": "x", "colour": "red"}"#, 422, "invalid_body"),
        (r#"{"tags": ["a"]}"#, 422, "invalid_body"),
        (r#"[1, 2]"#, 422, "invalid_body"),
        (r#"{"text": ""}"#, 400, "invalid_text"),
        (r#"{"text": "   \n\t"}"#, 400, "invalid_text"),
        (r#"{"text": "x", "tags": [""]}"#, 400, "invalid_tags"),
        (r#"{"text": "x", "tags": ["has space"]}"#, 400, "invalid_tags"),
    ];
    for (body, status, code) in cases {
        let response = server.post_json("/api/entries", body);
        assert_json_error(&response, *status, code);
    }

    let too_long = format!(r#"{{"text":"{}"}}"#, "a".repeat(10_001));
    assert_json_error(&server.post_json("/api/entries", &too_long), 400, "invalid_text");
    let at_limit = format!(r#"{{"text":"{}"}}"#, "é".repeat(10_000));
    assert_eq!(server.post_json("/api/entries", &at_limit).status, 201);
    let many_tags = format!(r#"{{"text":"x","tags":[{}]}}"#, vec![r#""t""#; 17].join(","));
    assert_json_error(&server.post_json("/api/entries", &many_tags), 400, "invalid_tags");

    let huge = format!(r#"{{"text":"{}"}}"#, "a".repeat(1024 * 1024 + 1));
    assert_json_error(&server.post_json("/api/entries", &huge), 413, "body_too_large");

    let no_type = request(server.addr, "POST", "/api/entries", &[], Some(br#"{"text":"x"}"#)).unwrap();
    assert_json_error(&no_type, 415, "unsupported_media_type");

    // Nothing bad was stored: only the one valid entry exists.
    assert_eq!(server.get("/api/entries").json()["entries"].as_array().unwrap().len(), 1);
}

#[test]
fn bad_queries_ids_routes_and_methods_get_json_4xx() {
    let server = Server::start(&[]);
    for query in [
        "after=abc",
        "after=-1",
        "limit=0",
        "limit=501",
        "limit=-5",
        "limit=1.5",
        "limt=3",
        "after=99999999999999999999",
    ] {
        assert_json_error(&server.get(&format!("/api/entries?{query}")), 400, "invalid_query");
    }
    assert_json_error(&server.get("/api/entries/42"), 404, "not_found");
    for id in ["abc", "0", "-3", "1.5", "99999999999999999999"] {
        assert_json_error(&server.get(&format!("/api/entries/{id}")), 400, "invalid_id");
    }
    assert_json_error(&server.get("/api/nothing"), 404, "not_found");
    assert_json_error(&server.get("/"), 404, "not_found");
    for (method, path) in [("DELETE", "/api/entries/1"), ("PUT", "/api/entries"), ("POST", "/healthz")] {
        let response = request(server.addr, method, path, &[], None).unwrap();
        assert_json_error(&response, 405, "method_not_allowed");
        assert!(response.header("allow").is_some());
    }
    let metrics = server.get("/metrics").body;
    assert!(!metrics.contains("status=\"5"), "a bad input produced a 5xx:\n{metrics}");
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

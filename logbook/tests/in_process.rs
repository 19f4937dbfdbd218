//! The service in-process: the router called directly (`oneshot`, no socket) for validation
//! and error mapping, and `serve` on a loopback listener with a shutdown the test controls.
#![allow(clippy::unwrap_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use logbook::config::{Config, Secret};
use logbook::http::{AppState, MAX_BODY_BYTES, MAX_PAGE_BYTES, MAX_URI_BYTES, router};
use logbook::storage::{self, Storage, WriterHandle};
use serde_json::{Value, json};
use support::TempDir;
use tower::ServiceExt;

const TOKEN: &str = "s3cret-token";

/// A router over a real database file; the writer is closed when dropped.
struct App {
    state: AppState,
    writer: Option<WriterHandle>,
    _dir: TempDir,
}

impl App {
    fn new(token: Option<&str>) -> Self {
        let dir = TempDir::new("router");
        let db = dir.path().join("logbook.db");
        let (storage, writer) =
            storage::open_locked(&db, storage::lock(&db).unwrap(), storage::DEFAULT_WAL_AUTOCHECKPOINT)
                .unwrap();
        let state = AppState { db_path: db, ..state(Some(storage), token) };
        App { state, writer: Some(writer), _dir: dir }
    }

    async fn call(&self, request: Request<Body>) -> (StatusCode, Value) {
        let (status, _, body) = self.call_with_headers(request).await;
        (status, body)
    }

    /// [`App::call`], with the response's headers.
    async fn call_with_headers(&self, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
        let response = router(self.state.clone()).oneshot(request).await.unwrap();
        let (status, headers) = (response.status(), response.headers().clone());
        let bytes = axum::body::to_bytes(response.into_body(), 4 * MAX_BODY_BYTES).await.unwrap();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, headers, body)
    }

    async fn get(&self, uri: &str) -> (StatusCode, Value) {
        self.call(Request::get(uri).body(Body::empty()).unwrap()).await
    }

    async fn post(&self, body: impl Into<Body>, token: Option<&str>) -> (StatusCode, Value) {
        let mut request = Request::post("/api/entries").header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        self.call(request.body(body.into()).unwrap()).await
    }
}

impl Drop for App {
    fn drop(&mut self) {
        // Closing blocks; not on the test's runtime thread.
        if let Some(writer) = self.writer.take() {
            let _ = std::thread::spawn(move || writer.close()).join();
        }
    }
}

fn state(storage: Option<Storage>, token: Option<&str>) -> AppState {
    AppState {
        storage: tokio::sync::watch::channel(storage).1,
        storage_wait: Duration::from_millis(50),
        draining: Arc::new(AtomicBool::new(false)),
        api_token: token.map(Secret::new),
        read_token: None,
        metrics: logbook::telemetry::init_metrics().unwrap(),
        started: Instant::now(),
        db_path: std::path::PathBuf::from("logbook.db"),
        body_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(30),
        ready_port: None,
    }
}

/// The status, and the error code of a JSON error body.
fn error_of(answer: &(StatusCode, Value)) -> (StatusCode, &str) {
    (answer.0, answer.1["error"].as_str().unwrap_or("<not a JSON error>"))
}

#[tokio::test]
async fn bad_bodies_get_a_4xx_naming_the_problem() {
    let app = App::new(None);
    for (body, status, code) in [
        ("{not json", StatusCode::BAD_REQUEST, "invalid_body"),
        ("", StatusCode::BAD_REQUEST, "invalid_body"),
        (r#"{"text": 7}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        (r#"{"text": "x", "tags": "a"}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        (r#"{"text": "x", "extra": 1}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        (r#"{"tags": ["a"]}"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        (r#"[1, 2]"#, StatusCode::UNPROCESSABLE_ENTITY, "invalid_body"),
        (r#"{"text": ""}"#, StatusCode::BAD_REQUEST, "invalid_text"),
        (r#"{"text": "   \n\t"}"#, StatusCode::BAD_REQUEST, "invalid_text"),
        (r#"{"text": "x", "tags": [""]}"#, StatusCode::BAD_REQUEST, "invalid_tags"),
        (r#"{"text": "x", "tags": ["has space"]}"#, StatusCode::BAD_REQUEST, "invalid_tags"),
    ] {
        let answer = app.post(body, None).await;
        assert_eq!(error_of(&answer), (status, code), "{body}: {answer:?}");
        assert!(answer.1["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}: {answer:?}");
    }
    let long = json!({ "text": "x".repeat(10_001) }).to_string();
    assert_eq!(error_of(&app.post(long, None).await), (StatusCode::BAD_REQUEST, "invalid_text"));
    let tags = json!({ "text": "x", "tags": vec!["t"; 17] }).to_string();
    assert_eq!(error_of(&app.post(tags, None).await), (StatusCode::BAD_REQUEST, "invalid_tags"));
    let huge = vec![b' '; MAX_BODY_BYTES + 1];
    assert_eq!(error_of(&app.post(huge, None).await), (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"));
    let plain =
        Request::post("/api/entries").header(header::CONTENT_TYPE, "text/plain").body(Body::from("x"));
    let answer = app.call(plain.unwrap()).await;
    assert_eq!(error_of(&answer), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"));
    let untyped = Request::post("/api/entries").body(Body::from(r#"{"text":"x"}"#));
    let answer = app.call(untyped.unwrap()).await;
    assert_eq!(error_of(&answer), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type"));
    // At the limit, counted in characters: stored. Nothing bad was.
    let at_limit = json!({ "text": "é".repeat(10_000) }).to_string();
    assert_eq!(app.post(at_limit, None).await.0, StatusCode::CREATED);
    assert_eq!(app.get("/api/entries").await.1["entries"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn pagination_walks_every_entry_once() {
    let app = App::new(None);
    let (_, empty) = app.get("/api/entries").await;
    assert_eq!((empty["entries"].clone(), empty["next_after"].clone()), (json!([]), Value::Null));
    for i in 1..=7 {
        assert_eq!(
            app.post(json!({ "text": format!("e{i}") }).to_string(), None).await.0,
            StatusCode::CREATED
        );
    }
    // Pages of 3: 3, 3, 1 entries; the last page has no continuation.
    let (mut after, mut seen, mut pages) = (0, Vec::new(), 0);
    loop {
        let (_, page) = app.get(&format!("/api/entries?after={after}&limit=3")).await;
        pages += 1;
        seen.extend(page["entries"].as_array().unwrap().iter().map(|e| e["id"].as_i64().unwrap()));
        match page["next_after"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!((seen, pages), ((1..=7).collect::<Vec<_>>(), 3));
    // A page that ends exactly at the last entry points on; the next page is empty.
    assert_eq!(app.get("/api/entries?after=4&limit=3").await.1["next_after"], 7);
    let (_, beyond) = app.get("/api/entries?after=7").await;
    assert_eq!((beyond["entries"].clone(), beyond["next_after"].clone()), (json!([]), Value::Null));
    assert_eq!(app.get("/api/entries?after=1000").await.1["entries"], json!([]));
    for all in ["/api/entries?limit=500", "/api/entries"] {
        assert_eq!(app.get(all).await.1["entries"].as_array().unwrap().len(), 7, "{all}");
    }
}

#[tokio::test]
async fn bad_queries_ids_routes_and_methods_get_json_4xx() {
    let app = App::new(None);
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
        let uri = format!("/api/entries?{query}");
        assert_eq!(error_of(&app.get(&uri).await), (StatusCode::BAD_REQUEST, "invalid_query"), "{uri}");
    }
    assert_eq!(error_of(&app.get("/api/entries/42").await), (StatusCode::NOT_FOUND, "not_found"));
    for id in ["abc", "0", "-3", "1.5", "99999999999999999999"] {
        let uri = format!("/api/entries/{id}");
        assert_eq!(error_of(&app.get(&uri).await), (StatusCode::BAD_REQUEST, "invalid_id"), "{uri}");
    }
    for uri in ["/api/nothing", "/"] {
        assert_eq!(error_of(&app.get(uri).await), (StatusCode::NOT_FOUND, "not_found"), "{uri}");
    }
    for (method, uri) in [("DELETE", "/api/entries/1"), ("PUT", "/api/entries"), ("POST", "/healthz")] {
        let request = Request::builder().method(method).uri(uri).body(Body::empty()).unwrap();
        let (status, headers, body) = app.call_with_headers(request).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::METHOD_NOT_ALLOWED, Some("method_not_allowed"))
        );
        assert!(headers.contains_key(header::ALLOW), "{method} {uri}");
    }
}

#[tokio::test]
async fn entries_round_trip_and_pages_follow_their_cursor() {
    let app = App::new(None);
    for i in 1..=3 {
        let (status, entry) =
            app.post(json!({ "text": format!("e{i}"), "tags": ["t"] }).to_string(), None).await;
        assert_eq!((status, entry["id"].as_i64()), (StatusCode::CREATED, Some(i)), "{entry}");
    }
    let (status, entry) = app.get("/api/entries/2").await;
    assert_eq!(
        (status, entry["text"].as_str(), entry["tags"][0].as_str()),
        (StatusCode::OK, Some("e2"), Some("t"))
    );
    let (_, page) = app.get("/api/entries?after=0&limit=2").await;
    assert_eq!((page["entries"].as_array().unwrap().len(), page["next_after"].as_i64()), (2, Some(2)));
    let (_, rest) = app.get("/api/entries?after=2&limit=2").await;
    assert_eq!((rest["entries"][0]["id"].as_i64(), rest["next_after"].as_i64()), (Some(3), None));
    assert_eq!(error_of(&app.get("/api/entries/99").await), (StatusCode::NOT_FOUND, "not_found"));
    for bad in
        ["/api/entries?limit=0", "/api/entries?limit=501", "/api/entries?after=-1", "/api/entries?after=x"]
    {
        assert_eq!(app.get(bad).await.0, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(error_of(&app.get(bad).await).1, "invalid_query", "{bad}");
    }
    assert_eq!(error_of(&app.get("/api/entries/abc").await), (StatusCode::BAD_REQUEST, "invalid_id"));
    assert_eq!(error_of(&app.get("/nowhere").await), (StatusCode::NOT_FOUND, "not_found"));
}

#[tokio::test]
async fn writes_need_the_token_when_one_is_set() {
    let app = App::new(Some(TOKEN));
    let body = r#"{"text": "guarded"}"#;
    assert_eq!(error_of(&app.post(body, None).await), (StatusCode::UNAUTHORIZED, "unauthorized"));
    assert_eq!(error_of(&app.post(body, Some("wrong")).await), (StatusCode::UNAUTHORIZED, "unauthorized"));
    assert_eq!(app.post(body, Some(TOKEN)).await.0, StatusCode::CREATED);
    assert_eq!(app.get("/api/entries/1").await.0, StatusCode::OK, "reads need no token");
}

#[tokio::test]
async fn reads_and_metrics_need_the_read_token_or_the_api_token_when_one_is_set() {
    let mut app = App::new(Some(TOKEN));
    let get = |uri: &str, token: Option<&str>| {
        let mut request = Request::get(uri);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        request.body(Body::empty()).unwrap()
    };
    // No read token: reads are open, as before.
    assert_eq!(app.post(r#"{"text":"one"}"#, Some(TOKEN)).await.0, StatusCode::CREATED);
    assert_eq!(app.call(get("/api/entries", None)).await.0, StatusCode::OK);
    app.state.read_token = Some(Secret::new("reader"));
    for uri in ["/api/entries", "/api/entries/1", "/metrics"] {
        let refused = app.call(get(uri, None)).await;
        assert_eq!(error_of(&refused), (StatusCode::UNAUTHORIZED, "unauthorized"), "{uri}");
        assert!(refused.1["message"].as_str().unwrap().contains("LOGBOOK_READ_TOKEN"), "{uri}");
        assert_eq!(app.call(get(uri, Some("wrong"))).await.0, StatusCode::UNAUTHORIZED, "{uri}");
        assert_eq!(app.call(get(uri, Some("reader"))).await.0, StatusCode::OK, "{uri}");
        assert_eq!(app.call(get(uri, Some(TOKEN))).await.0, StatusCode::OK, "{uri} with the API token");
    }
    // Probes stay open: orchestrators and the proxy carry no token.
    for uri in ["/healthz", "/readyz", "/version"] {
        assert_eq!(app.call(get(uri, None)).await.0, StatusCode::OK, "{uri}");
    }
    // The read token does not let anyone write.
    assert_eq!(app.post(r#"{"text":"two"}"#, Some("reader")).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_repeated_idempotency_key_returns_the_stored_entry_and_a_reused_one_is_a_conflict() {
    let app = App::new(None);
    let post = |body: &'static str, key: &[u8]| {
        Request::post("/api/entries")
            .header(header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", axum::http::HeaderValue::from_bytes(key).unwrap())
            .body(Body::from(body))
            .unwrap()
    };
    let send = |request: Request<Body>| async {
        let response = router(app.state.clone()).oneshot(request).await.unwrap();
        let replayed = response.headers().get("idempotency-replayed").map(|v| v.to_str().unwrap().to_owned());
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), MAX_BODY_BYTES).await.unwrap();
        (status, serde_json::from_slice::<Value>(&bytes).unwrap(), replayed)
    };
    let (status, first, replayed) = send(post(r#"{"text":"pay 10"}"#, b"order-42")).await;
    assert_eq!((status, replayed), (StatusCode::CREATED, None));
    // The client retries (its answer was lost): the same entry, said to be a replay.
    let (status, again, replayed) = send(post(r#"{"text":"pay 10"}"#, b"order-42")).await;
    assert_eq!((status, replayed.as_deref()), (StatusCode::CREATED, Some("true")));
    assert_eq!(again, first);
    // The same key for another body is a mistake, not a new entry.
    let (status, conflict, _) = send(post(r#"{"text":"pay 99"}"#, b"order-42")).await;
    assert_eq!((status, conflict["error"].as_str()), (StatusCode::CONFLICT, Some("idempotency_key_reused")));
    for bad in [&b""[..], &[b'k'; 256][..], b"tab\there", b"caf\xc3\xa9"] {
        let (status, body, _) = send(post(r#"{"text":"x"}"#, bad)).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::BAD_REQUEST, Some("invalid_idempotency_key")),
            "{bad:?}"
        );
        assert!(body["message"].as_str().unwrap().contains("Idempotency-Key"), "{body}");
    }
    let (status, _, _) = send(post(r#"{"text":"x"}"#, &[b'k'; 255])).await;
    assert_eq!(status, StatusCode::CREATED, "255 bytes is allowed");
    // One entry for the three posts of order-42.
    let listed = app.get("/api/entries").await.1;
    let texts: Vec<&str> =
        listed["entries"].as_array().unwrap().iter().map(|e| e["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["pay 10", "x"]);
}

#[tokio::test]
async fn invisible_and_reordering_text_is_refused_naming_the_field() {
    let app = App::new(None);
    for (text, tags, code) in [
        ("\u{200B}\u{200B}", json!([]), "invalid_text"),
        (" \u{FEFF}\u{2060} ", json!([]), "invalid_text"),
        ("pay \u{202E}gnp.exe", json!([]), "invalid_text"),
        ("isolate \u{2067}x", json!([]), "invalid_text"),
        ("fine", json!(["ok", "zero\u{200B}width"]), "invalid_tags"),
        ("fine", json!(["\u{202D}ltr"]), "invalid_tags"),
    ] {
        let body = json!({ "text": text, "tags": tags }).to_string();
        let answer = app.post(body, None).await;
        assert_eq!(error_of(&answer), (StatusCode::BAD_REQUEST, code), "{text:?} {tags}: {answer:?}");
    }
    // Other scripts, emoji (a zero-width joiner inside a sequence) and visible text are fine.
    for text in ["naïve café", "日本語", "👩\u{200D}💻 deploys", "a\u{200B}b"] {
        let body = json!({ "text": text, "tags": ["é"] }).to_string();
        assert_eq!(app.post(body, None).await.0, StatusCode::CREATED, "{text:?}");
    }
}

#[tokio::test]
async fn a_page_stops_at_its_byte_budget_and_the_cursor_reaches_every_entry() {
    let app = App::new(None);
    // Control characters take six bytes each in JSON: each entry is about 60 KB.
    let text = format!("x{}", "\u{1}".repeat(9_999));
    for _ in 0..40 {
        assert_eq!(app.post(json!({ "text": text }).to_string(), None).await.0, StatusCode::CREATED);
    }
    let (mut after, mut seen, mut pages) = (0, 0, 0);
    loop {
        let response = router(app.state.clone())
            .oneshot(
                Request::get(format!("/api/entries?limit=500&after={after}")).body(Body::empty()).unwrap(),
            )
            .await
            .unwrap();
        let bytes = axum::body::to_bytes(response.into_body(), 4 * MAX_PAGE_BYTES).await.unwrap();
        assert!(bytes.len() <= MAX_PAGE_BYTES, "a page of {} bytes", bytes.len());
        let page: Value = serde_json::from_slice(&bytes).unwrap();
        let entries = page["entries"].as_array().unwrap();
        assert!(!entries.is_empty());
        seen += entries.len();
        pages += 1;
        match page["next_after"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(seen, 40, "every entry once");
    assert!(pages >= 3, "40 entries of 60 KB take several 1 MiB pages, not {pages}");
}

#[tokio::test]
async fn oversized_requests_are_refused_before_the_body_with_json() {
    let app = App::new(Some(TOKEN));
    // Declared too large: refused before authentication and before any byte is read.
    let declared = Request::post("/api/entries")
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, "10000000")
        .header(header::EXPECT, "100-continue")
        .body(Body::empty())
        .unwrap();
    assert_eq!(error_of(&app.call(declared).await), (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large"));
    let long = format!("/api/entries?after={}", "1".repeat(MAX_URI_BYTES));
    assert_eq!(error_of(&app.get(&long).await), (StatusCode::URI_TOO_LONG, "uri_too_long"));
    let mut big = Request::get("/api/entries");
    for n in 0..40 {
        big = big.header(format!("x-filler-{n}"), "v".repeat(500));
    }
    let answer = app.call(big.body(Body::empty()).unwrap()).await;
    assert_eq!(error_of(&answer), (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "headers_too_large"));
}

#[tokio::test]
async fn readiness_lists_each_check_with_its_result_latency_and_the_time() {
    let app = App::new(None);
    let (status, body) = app.get("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ready");
    let time = body["time"].as_str().unwrap();
    assert!(time.len() == 24 && time.starts_with("20") && time.ends_with('Z'), "{time}");
    let names: Vec<&str> =
        body["checks"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        ["not_shutting_down", "database_open", "database_reads", "database_writes", "ready_port"]
    );
    for check in body["checks"].as_array().unwrap() {
        assert_eq!(check["ok"], true, "{check}");
        assert!(check["latency_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "{check}");
        assert!(check["reason"].is_null(), "{check}");
    }
    // A ready port that does not listen yet fails its check, and readiness with it.
    let listening = Arc::new(AtomicBool::new(false));
    let unarmed = AppState { ready_port: Some(listening.clone()), ..app.state.clone() };
    let (status, body) = App::call_with(&unarmed, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        (body["status"].as_str(), body["reason"].as_str()),
        (Some("starting"), Some("the ready port does not listen yet"))
    );
    assert_eq!(body["checks"][4]["ok"], false);
    assert_eq!(body["checks"][3]["ok"], true, "the other checks still run: {body}");
    listening.store(true, std::sync::atomic::Ordering::SeqCst);
    let (status, _) = App::call_with(&unarmed, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn readiness_follows_storage_and_shutdown() {
    let app = App::new(None);
    assert_eq!(app.get("/readyz").await.0, StatusCode::OK);
    app.state.draining.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(app.get("/readyz").await.0, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(app.get("/healthz").await.0, StatusCode::OK, "alive while draining");
    // A database not open yet: live, not ready, and requests that need it wait, then 503.
    let waiting = state(None, None);
    let (status, _) = App::call_with(&waiting, Request::get("/readyz").body(Body::empty()).unwrap()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, body) =
        App::call_with(&waiting, Request::get("/api/entries/1").body(Body::empty()).unwrap()).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("starting")));
}

#[tokio::test]
async fn version_and_metrics_describe_the_build() {
    let app = App::new(None);
    let (status, version) = app.get("/version").await;
    assert_eq!(status, StatusCode::OK);
    for field in ["version", "revision", "build_time", "uptime_seconds"] {
        assert!(!version[field].is_null(), "/version has no {field}: {version}");
    }
    let response =
        router(app.state.clone()).oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await;
    let response = response.unwrap();
    let content_type = response.headers()[header::CONTENT_TYPE].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let text = axum::body::to_bytes(response.into_body(), MAX_BODY_BYTES).await.unwrap();
    assert!(String::from_utf8_lossy(&text).contains("logbook_build_info"));
}

#[tokio::test]
async fn metrics_report_the_database_size_and_the_space_left_for_it() {
    let app = App::new(None);
    assert_eq!(app.post(r#"{"text": "weighs something"}"#, None).await.0, StatusCode::CREATED);
    let response = router(app.state.clone()).oneshot(Request::get("/metrics").body(Body::empty()).unwrap());
    let bytes = axum::body::to_bytes(response.await.unwrap().into_body(), MAX_BODY_BYTES).await.unwrap();
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let gauge = |name: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name}:\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let on_disk = std::fs::metadata(app._dir.path().join("logbook.db")).unwrap().len() as f64;
    assert!(gauge("logbook_database_size_bytes") >= on_disk, "{text}");
    let (free, size) = (gauge("logbook_data_volume_free_bytes"), gauge("logbook_data_volume_size_bytes"));
    assert!(free > 0.0 && free <= size, "free {free} of {size}");
}

#[tokio::test]
async fn corrupt_stored_tags_are_an_error_naming_the_entry() {
    let app = App::new(None);
    assert_eq!(app.post(r#"{"text": "fine"}"#, None).await.0, StatusCode::CREATED);
    let conn = rusqlite::Connection::open(app._dir.path().join("logbook.db")).unwrap();
    conn.execute("UPDATE entries SET tags = 'not json' WHERE id = 1", []).unwrap();
    let answer = app.get("/api/entries/1").await;
    assert_eq!(error_of(&answer), (StatusCode::INTERNAL_SERVER_ERROR, "corrupt_entry"), "{answer:?}");
    assert!(answer.1["message"].as_str().unwrap().contains("entry 1"), "{answer:?}");
    assert_eq!(error_of(&app.get("/api/entries").await).0, StatusCode::INTERNAL_SERVER_ERROR);
}

impl App {
    async fn call_with(state: &AppState, request: Request<Body>) -> (StatusCode, Value) {
        let response = router(state.clone()).oneshot(request).await.unwrap();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), MAX_BODY_BYTES).await.unwrap();
        (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
    }
}

/// `serve` on a real listener: answers over TCP, and on shutdown commits what it
/// acknowledged and returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_answers_then_shuts_down_keeping_every_acknowledged_entry() {
    let dir = TempDir::new("serve");
    let db = dir.path().join("logbook.db");
    let mut config = Config::from_lookup(|_| None).unwrap();
    config.db_path = db.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(logbook::server::serve(
        config,
        listener,
        async move {
            let _ = stopped.await;
            "test"
        },
        Instant::now(),
    ));
    let client = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !support::request(addr, "GET", "/readyz", &[], None).is_ok_and(|r| r.status == 200) {
            assert!(Instant::now() < deadline, "never ready");
            std::thread::sleep(Duration::from_millis(5));
        }
        let json = [("Content-Type", "application/json")];
        (1..=5)
            .map(|i| {
                let body = format!(r#"{{"text":"in-process {i}"}}"#);
                support::request(addr, "POST", "/api/entries", &json, Some(body.as_bytes())).unwrap().status
            })
            .collect::<Vec<_>>()
    });
    let statuses = client.await.unwrap();
    assert_eq!(statuses, [201; 5]);
    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(20), server).await.unwrap().unwrap().unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    let count: i64 = conn.query_row("SELECT count(*) FROM entries", [], |r| r.get(0)).unwrap();
    assert_eq!(count, 5);
}

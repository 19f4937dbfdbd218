//! The HTTP API: routes, validation, JSON errors, and request metrics.

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Path, Query, Request, State};
use axum::handler::Handler;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::json;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::timeout::{RequestBodyDeadlineLayer, TimeoutError, TimeoutLayer};

use crate::build_info;
use crate::config::Secret;
use crate::storage::{Entry, Health, NewEntry, Storage, StorageError};

pub const MAX_BODY_BYTES: usize = 1024 * 1024;
/// A page of entries stops before this many bytes of JSON, even short of `limit`.
pub const MAX_PAGE_BYTES: usize = 1024 * 1024;
/// Longer request targets get a 414, all request headers together beyond this a 431.
/// Both sit below the HTTP layer's own limits, so the answer is ours: JSON, and counted.
pub const MAX_URI_BYTES: usize = 8 * 1024;
pub const MAX_HEADER_BYTES: usize = 16 * 1024;
/// An append that has waited this long for its commit makes the service unready.
pub const WRITE_STALL_AFTER: Duration = Duration::from_secs(5);
pub const MAX_TEXT_CHARS: usize = 10_000;
pub const MAX_TAGS: usize = 16;
pub const MAX_TAG_CHARS: usize = 64;
pub const DEFAULT_PAGE: u32 = 50;
pub const MAX_PAGE: u32 = 500;

#[derive(Clone)]
pub struct AppState {
    /// None until the database is open: the service listens (and answers /healthz) while
    /// it waits for the database lock, for instance during a start-first rolling update.
    pub storage: tokio::sync::watch::Receiver<Option<Storage>>,
    /// How long a request waits for the database before it gets a 503 (LOGBOOK_LOCK_WAIT).
    pub storage_wait: std::time::Duration,
    pub draining: Arc<AtomicBool>,
    pub api_token: Option<Secret>,
    /// When set, reads and /metrics need it, or the API token.
    pub read_token: Option<Secret>,
    pub metrics: PrometheusHandle,
    pub started: Instant,
    /// The database file, whose size and free space `/metrics` reports.
    pub db_path: std::path::PathBuf,
    /// LOGBOOK_BODY_TIMEOUT and LOGBOOK_REQUEST_TIMEOUT.
    pub body_timeout: Duration,
    pub request_timeout: Duration,
    /// With a ready port configured (LOGBOOK_READY_PORT): whether it listens now.
    pub ready_port: Option<Arc<AtomicBool>>,
}

impl AppState {
    /// The open storage; while the service is still waiting for the database, the request
    /// waits too (so a start-first update answers slowly instead of failing), up to a bound.
    async fn storage(&self) -> Result<Storage, ApiError> {
        let mut ready = self.storage.clone();
        let opened = match tokio::time::timeout(self.storage_wait, ready.wait_for(Option::is_some)).await {
            Ok(Ok(storage)) => storage.clone(),
            _ => None,
        };
        opened.ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "starting",
                "the service is waiting for its database; retry shortly",
            )
        })
    }
}

pub fn router(state: AppState) -> Router {
    let (body_timeout, request_timeout) = (state.body_timeout, state.request_timeout);
    Router::new()
        // From the request's arrival: a body trickled in byte by byte still ends in time.
        // Only where a body is read, so other requests carry no timer for it.
        .route(
            "/api/entries",
            get(list_entries).post(append_entry.layer(RequestBodyDeadlineLayer::new(body_timeout))),
        )
        .route("/api/entries/{id}", get(get_entry))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/version", get(version))
        .route("/metrics", get(metrics))
        .method_not_allowed_fallback(method_not_allowed)
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, request_timeout))
        // Before any body is read, so a refused upload costs nothing (and gets no 100
        // Continue); and error answers made without a body get a JSON one.
        .layer(middleware::from_fn(refuse_early))
        // Outermost, so 404s, 405s, 408s, 413s and panics are all counted.
        .layer(middleware::from_fn(track_request))
        .with_state(state)
}

/// An error answer: a status and a JSON body `{"error": code, "message": text}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into() }
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.code, "message": self.message }))).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        if caused_by::<TimeoutError>(&rejection) {
            return ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the request body did not arrive within LOGBOOK_BODY_TIMEOUT",
            );
        }
        let code = match rejection.status() {
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            _ => "invalid_body",
        };
        let status =
            if rejection.status().is_client_error() { rejection.status() } else { StatusCode::BAD_REQUEST };
        ApiError::new(status, code, rejection.body_text())
    }
}

/// True if `error` or any error behind it is an `E`.
fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<E>() {
            return true;
        }
        next = e.source();
    }
    false
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the service is shutting down; retry against another instance",
            ),
            StorageError::KeyReused(id) => ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_reused",
                format!(
                    "this Idempotency-Key was used for entry {id}, with another body; use a new key for a new entry"
                ),
            ),
            // Stored data that cannot be read back is the service's fault, not a passing one.
            StorageError::Corrupt(why) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "corrupt_entry", why)
            }
            // Logged where it happened, in storage.
            _ => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "storage failed; retry later",
            ),
        }
    }
}

/// `axum::Json`, with rejections turned into our JSON errors.
pub struct JsonBody<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let Json(value) = Json::<T>::from_request(req, state).await?;
        Ok(JsonBody(value))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppendRequest {
    text: String,
    #[serde(default)]
    tags: Vec<String>,
}

/// The header whose value makes a repeated append store its entry once.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set on the answer to a repeated append: the entry was stored before, under that key.
pub const IDEMPOTENCY_REPLAYED: &str = "idempotency-replayed";
const MAX_KEY_BYTES: usize = 255;

async fn append_entry(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    // Before a byte of the body is read: an unauthorised upload costs no memory.
    authorize(&state, request.headers())?;
    let key = idempotency_key(request.headers())?;
    let JsonBody(request) = JsonBody::<AppendRequest>::from_request(request, &state).await?;
    let entry = NewEntry { key, ..validate(request)? };
    let appended = state.storage().await?.append_keyed(entry).await?;
    let location = HeaderValue::from_str(&format!("/api/entries/{}", appended.entry.id))
        .unwrap_or_else(|_| HeaderValue::from_static("/api/entries"));
    let mut response =
        (StatusCode::CREATED, [(header::LOCATION, location)], Json(appended.entry)).into_response();
    if appended.replayed {
        response.headers_mut().insert(IDEMPOTENCY_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// The `Idempotency-Key` header, if any: 1 to 255 bytes of printable ASCII.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(IDEMPOTENCY_KEY) else { return Ok(None) };
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > MAX_KEY_BYTES || !bytes.iter().all(|b| (0x20..=0x7e).contains(b)) {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            format!("Idempotency-Key must be 1 to {MAX_KEY_BYTES} bytes of printable ASCII"),
        ));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

fn authorize(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.api_token else { return Ok(()) };
    match bearer(headers) {
        Some(candidate) if token.matches(candidate) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "writes need the header Authorization: Bearer <LOGBOOK_API_TOKEN>",
        )),
    }
}

/// Reads (entries and /metrics) are open unless LOGBOOK_READ_TOKEN is set; then the read
/// token or the API token lets them through. Both are compared whatever the first gives,
/// so the time says nothing about which one matched.
fn authorize_read(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(read) = &state.read_token else { return Ok(()) };
    let candidate = bearer(headers).unwrap_or_default();
    let by_read = read.matches(candidate);
    let by_write = state.api_token.as_ref().is_some_and(|t| t.matches(candidate));
    if by_read | by_write {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "reads need the header Authorization: Bearer <LOGBOOK_READ_TOKEN>",
    ))
}

fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
}

fn validate(request: AppendRequest) -> Result<NewEntry, ApiError> {
    if request.text.chars().all(invisible) {
        return Err(ApiError::bad_request("invalid_text", "text must have a visible character"));
    }
    let chars = request.text.chars().count();
    if chars > MAX_TEXT_CHARS {
        return Err(ApiError::bad_request(
            "invalid_text",
            format!("text is {chars} characters; the limit is {MAX_TEXT_CHARS}"),
        ));
    }
    if let Some(c) = request.text.chars().find(|c| bidi_control(*c)) {
        return Err(ApiError::bad_request(
            "invalid_text",
            format!(
                "text holds the bidirectional control U+{:04X}, which can disguise what it says",
                c as u32
            ),
        ));
    }
    if request.tags.len() > MAX_TAGS {
        return Err(ApiError::bad_request("invalid_tags", format!("at most {MAX_TAGS} tags are allowed")));
    }
    for tag in &request.tags {
        let len = tag.chars().count();
        if len == 0 || len > MAX_TAG_CHARS || tag.chars().any(|c| invisible(c) || bidi_control(c)) {
            return Err(ApiError::bad_request(
                "invalid_tags",
                format!(
                    "each tag must be 1 to {MAX_TAG_CHARS} visible characters: no whitespace, control, \
                     zero-width or bidirectional control characters"
                ),
            ));
        }
    }
    Ok(NewEntry { text: request.text, tags: request.tags, key: None })
}

/// Characters that show nothing: whitespace, controls, and zero-width ones.
fn invisible(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(c, '\u{200B}'..='\u{200D}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}' | '\u{180E}' | '\u{034F}')
}

/// Characters that reorder the text around them (the "Trojan Source" ones).
fn bidi_control(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListParams {
    after: Option<i64>,
    limit: Option<u32>,
}

async fn list_entries(
    State(state): State<AppState>,
    headers: HeaderMap,
    params: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    authorize_read(&state, &headers)?;
    let Query(params) = params.map_err(|e| {
        ApiError::bad_request(
            "invalid_query",
            format!("{}; expected after=<id ≥ 0> and limit=<1..{MAX_PAGE}>", e.body_text()),
        )
    })?;
    let after = params.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::bad_request("invalid_query", "after must be 0 or a positive entry id"));
    }
    let limit = params.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::bad_request("invalid_query", format!("limit must be from 1 to {MAX_PAGE}")));
    }
    let page = state.storage().await?.fold(after, limit, Page::new(limit), Page::push).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], page.finish()).into_response())
}

/// A page of entries, serialised as the rows arrive: `{"entries":[...],"next_after":id}`.
/// It stops at `limit` entries or before `MAX_PAGE_BYTES`, whichever comes first (always
/// holding at least one entry), and `next_after` tells the client where to go on.
struct Page {
    body: Vec<u8>,
    limit: u32,
    count: u32,
    last_id: Option<i64>,
    full: bool,
}

impl Page {
    fn new(limit: u32) -> Self {
        Page { body: b"{\"entries\":[".to_vec(), limit, count: 0, last_id: None, full: false }
    }

    /// Adds `entry`, or refuses it (false) when it would take the page over its budget.
    fn push(&mut self, entry: Entry) -> bool {
        let mark = self.body.len();
        if self.count > 0 {
            self.body.push(b',');
        }
        // Serialising plain data into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut self.body, &entry);
        if self.count > 0 && self.body.len() > MAX_PAGE_BYTES - 64 {
            self.body.truncate(mark);
            self.full = true;
            return false;
        }
        self.count += 1;
        self.last_id = Some(entry.id);
        true
    }

    fn finish(mut self) -> Vec<u8> {
        // A full page may have more behind it; the client continues from the last id.
        let next_after = self.last_id.filter(|_| self.full || self.count == self.limit);
        let _ = match next_after {
            Some(id) => write!(self.body, "],\"next_after\":{id}}}"),
            None => write!(self.body, "],\"next_after\":null}}"),
        };
        self.body
    }
}

async fn get_entry(
    State(state): State<AppState>,
    headers: HeaderMap,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Response, ApiError> {
    authorize_read(&state, &headers)?;
    let id = match id {
        Ok(Path(id)) if id > 0 => id,
        _ => return Err(ApiError::bad_request("invalid_id", "the entry id must be a positive integer")),
    };
    match state.storage().await?.get(id).await? {
        Some(entry) => Ok(Json(entry).into_response()),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no entry with id {id}"))),
    }
}

async fn healthz() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

/// The current UTC time, RFC 3339 with milliseconds (the crate has no clock library).
fn utc_now() -> String {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let (days, secs) = ((since.as_secs() / 86_400) as i64, since.as_secs() % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60,
        since.subsec_millis()
    )
}

/// One readiness check: its name, and the reason it fails (`None` when it passes).
struct Check {
    name: &'static str,
    failure: Option<(&'static str, String)>,
    took: Duration,
}

/// Runs `check`, timing it; it returns the status and reason it fails with, if it does.
async fn check(name: &'static str, check: impl Future<Output = Option<(&'static str, String)>>) -> Check {
    let started = Instant::now();
    let failure = check.await;
    Check { name, failure, took: started.elapsed() }
}

/// 200 when every check passes. The body names each check (not shutting down, the database
/// open, answering reads, taking writes, the ready port listening) with its result and
/// latency, and the time; when one fails, `status` and `reason` are the first failure's.
async fn readyz(State(state): State<AppState>) -> Response {
    let storage = state.storage.borrow().clone();
    let not_open =
        || Some(("starting", "waiting for the database lock (another release may still hold it)".into()));
    let checks = [
        check("not_shutting_down", async {
            state.draining.load(Ordering::SeqCst).then(|| ("draining", "the service is shutting down".into()))
        })
        .await,
        check("database_open", async { if storage.is_some() { None } else { not_open() } }).await,
        check("database_reads", async {
            match &storage {
                Some(storage) if storage.ready().await => None,
                Some(_) => Some(("storage_unavailable", "the database does not answer reads".into())),
                None => not_open(),
            }
        })
        .await,
        check("database_writes", async {
            let Some(storage) = &storage else { return not_open() };
            match storage.health(WRITE_STALL_AFTER).await {
                Health::Ready => None,
                Health::Failing { failures, error } => {
                    Some(("writes_failing", format!("the last {failures} commit(s) failed: {error}")))
                }
                Health::Stalled { waited } => Some((
                    "writes_stalled",
                    format!("an append has waited {} ms for its commit", waited.as_millis()),
                )),
                Health::Closed => Some(("storage_unavailable", "the writer has stopped".into())),
            }
        })
        .await,
        check("ready_port", async {
            match &state.ready_port {
                Some(listening) if !listening.load(Ordering::SeqCst) => {
                    Some(("starting", "the ready port does not listen yet".into()))
                }
                _ => None,
            }
        })
        .await,
    ];
    let listed: Vec<serde_json::Value> = checks
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "ok": c.failure.is_none(),
                "latency_ms": (c.took.as_secs_f64() * 1e6).round() / 1e3,
                "reason": c.failure.as_ref().map(|(_, reason)| reason),
            })
        })
        .collect();
    let time = utc_now();
    match checks.iter().find_map(|c| c.failure.as_ref()) {
        None => Json(json!({ "status": "ready", "time": time, "checks": listed })).into_response(),
        Some((status, reason)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": status, "reason": reason, "time": time, "checks": listed })),
        )
            .into_response(),
    }
}

async fn version(State(state): State<AppState>) -> Response {
    Json(json!({
        "version": build_info::VERSION,
        "revision": build_info::REVISION,
        "build_time": build_info::BUILD_TIME,
        "uptime_seconds": state.started.elapsed().as_secs(),
    }))
    .into_response()
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    authorize_read(&state, &headers)?;
    crate::telemetry::record_disk(&state.db_path);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], state.metrics.render())
        .into_response())
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

async fn method_not_allowed(method: Method) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on this route"),
    )
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    // The panic itself is logged by the panic hook, through tracing.
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error").into_response()
}

/// Refuses, before any of the body is read, what the limits would refuse anyway: a request
/// target or headers too long, or a declared body above the limit.
async fn refuse_early(request: Request, next: Next) -> Response {
    match refusal(&request) {
        Some(refused) => {
            if refused.status == StatusCode::PAYLOAD_TOO_LARGE {
                discard_body(request).await;
            }
            refused.into_response()
        }
        None => json_errors(next.run(request).await),
    }
}

/// The most of a refused body that is read and thrown away, and for how long.
const DISCARD_BYTES: u64 = 16 * 1024 * 1024;
const DISCARD_TIME: Duration = Duration::from_secs(5);

/// Reads and throws away the body of a refused upload whose client did not wait for
/// `100 Continue`, up to [`DISCARD_BYTES`] and [`DISCARD_TIME`], chunk by chunk (nothing
/// is kept). That client writes the whole body before it reads the answer: closing the
/// connection on unread data would make the kernel reset it, and the client would see a
/// broken pipe instead of the 413 (nginx's lingering close does the same). A client that
/// waits, or a body over the bound, is answered at once.
async fn discard_body(request: Request) {
    use axum::body::HttpBody;
    let waits = request
        .headers()
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(u64::MAX);
    if waits || declared > DISCARD_BYTES {
        return;
    }
    let mut body = std::pin::pin!(request.into_body());
    let _ = tokio::time::timeout(DISCARD_TIME, async {
        while let Some(Ok(_)) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {}
    })
    .await;
}

fn refusal(request: &Request) -> Option<ApiError> {
    let target = request.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > MAX_URI_BYTES {
        return Some(ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is {target} bytes; the limit is {MAX_URI_BYTES}"),
        ));
    }
    let headers: usize =
        request.headers().iter().map(|(name, value)| name.as_str().len() + value.len() + 4).sum();
    if headers > MAX_HEADER_BYTES {
        return Some(ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!("the request headers are {headers} bytes; the limit is {MAX_HEADER_BYTES}"),
        ));
    }
    let declared = request.headers().get(header::CONTENT_LENGTH)?.to_str().ok()?.parse::<u64>().ok()?;
    (declared > MAX_BODY_BYTES as u64).then(|| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the body is {declared} bytes; the limit is {MAX_BODY_BYTES}"),
        )
    })
}

/// Gives a JSON body to error answers made without one (the request timeout's 408, say),
/// so every error a client gets reads the same way.
fn json_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error())
        || response.headers().contains_key(header::CONTENT_TYPE)
    {
        return response;
    }
    let (code, message) = match status {
        StatusCode::REQUEST_TIMEOUT => {
            ("request_timeout", "the request took longer than LOGBOOK_REQUEST_TIMEOUT")
        }
        _ => ("error", status.canonical_reason().unwrap_or("error")),
    };
    ApiError::new(status, code, message).into_response()
}

/// Decrements the in-flight gauge however the request ends, cancellation included.
struct InFlight;

impl InFlight {
    fn start() -> Self {
        metrics::gauge!("logbook_http_requests_in_flight").increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("logbook_http_requests_in_flight").decrement(1.0);
    }
}

/// Counts and times every request, labelled by route template (never the raw path, which
/// could carry ids or secrets), and writes one access log line without query or headers.
async fn track_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let _in_flight = InFlight::start();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    metrics::counter!("logbook_http_requests_total",
        "method" => method, "route" => route.clone(), "status" => status.to_string())
    .increment(1);
    metrics::histogram!("logbook_http_request_duration_seconds", "method" => method, "route" => route.clone())
        .record(elapsed.as_secs_f64());
    tracing::info!(method, route, status, duration_us = elapsed.as_micros() as u64, "request");
    response
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

//! Serving, and the shutdown sequence.
//!
//! On SIGTERM or SIGINT: readiness turns 503 and the ready port (if any) stops listening
//! at once; the main listener keeps accepting for `LOGBOOK_DRAIN_DELAY` (so balancers see
//! the 503), then stops; in-flight requests get `LOGBOOK_SHUTDOWN_TIMEOUT` to finish (a
//! connection that has sent nothing yet gets `FIRST_REQUEST_GRACE` to send its request).
//! From the first signal every response says `Connection: close`, and a kept-alive
//! connection with nothing in progress stays open for `LOGBOOK_KEEPALIVE_GRACE`, for its
//! client to close: a proxy whose idle timeout is shorter never sends a request on a
//! connection just as the service closes it (a POST it could not safely send again);
//! queued appends are committed, the WAL is checkpointed and the database closed. A second
//! signal exits at once, which loses nothing acknowledged because every 201 follows a
//! durable commit.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::http::{AppState, router};
use crate::storage::{self, Storage, StorageError, WriterHandle};

/// Exit code for a second signal during shutdown (128 + SIGINT, by shell convention).
pub const EXIT_FORCED: i32 = 130;

/// Why the service could not start or run.
#[derive(Debug)]
pub enum ServeError {
    /// The environment names something unusable (database path, listen address).
    Config(String),
    Runtime(String),
}

/// What the service listens on. The main socket takes connections from the start (probes
/// and metrics answer at once; requests wait for the database). The ready port, when
/// configured, is bound at once, so a port already in use fails the start, but listens
/// only while the service holds the database: until then a proxy's connection is refused
/// and goes elsewhere.
pub struct Listeners {
    pub main: TcpListener,
    pub ready: Option<TcpSocket>,
}

impl From<TcpListener> for Listeners {
    fn from(main: TcpListener) -> Self {
        Listeners { main, ready: None }
    }
}

/// Binds the sockets; a taken port or a bad address is a configuration error.
pub async fn bind(config: &Config) -> Result<Listeners, ServeError> {
    let taken = |var: &str, port: u16, e: std::io::Error| {
        ServeError::Config(format!(
            "cannot listen on {} (LOGBOOK_BIND={}, {var}={port}): {e}",
            SocketAddr::new(config.bind, port),
            config.bind
        ))
    };
    let main = TcpListener::bind(SocketAddr::new(config.bind, config.port))
        .await
        .map_err(|e| taken("LOGBOOK_PORT", config.port, e))?;
    let ready = match config.ready_port {
        None => None,
        Some(port) => Some(
            bind_only(SocketAddr::new(config.bind, port))
                .map_err(|e| taken("LOGBOOK_READY_PORT", port, e))?,
        ),
    };
    Ok(Listeners { main, ready })
}

/// A socket bound to `addr` and not listening: the kernel refuses connections to it.
fn bind_only(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// Connections waiting to be accepted on the ready port once it listens.
const READY_BACKLOG: u32 = 1024;

/// Accepts what already waits in `listener`'s backlog, without waiting for more, and
/// serves it (past the connection cap, by at most the backlog): closing a listener resets
/// the connections still queued in it, on which a proxy has already sent a request that
/// it would not retry (a POST).
async fn accept_queued(server: &mut Server, listener: TcpListener) {
    // Asked of the socket itself: tokio's readiness can lag behind the kernel's queue.
    let Ok(listener) = listener.into_std() else { return };
    for _ in 0..READY_BACKLOG {
        match listener.accept() {
            Ok((stream, addr)) => {
                let stream = stream.set_nonblocking(true).and_then(|()| TcpStream::from_std(stream));
                match stream {
                    Ok(stream) => server.accept(Ok((stream, addr))).await,
                    Err(e) => tracing::warn!(error = %e, "a queued connection could not be served"),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            // One connection that went away while queued; the others are still there.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionAborted | std::io::ErrorKind::ConnectionReset
                ) => {}
            Err(e) => {
                tracing::warn!(error = %e, "accepting the ready port's queued connections failed");
                break;
            }
        }
    }
}

/// Accepts on `listener`; with none (the ready port before it listens), waits forever.
async fn accept_on(listener: Option<&TcpListener>) -> std::io::Result<(TcpStream, SocketAddr)> {
    match listener {
        Some(listener) => listener.accept().await,
        None => std::future::pending().await,
    }
}

/// Serves on `listeners` until `shutdown` resolves (with what asked for it, a signal's name
/// say), then shuts down as the module documents. `started` is when the process began,
/// for the start-up time in the log. A second signal is the caller's to handle.
///
/// A start-up, then the listener loop, then the shutdown. Listening comes first: /healthz
/// answers while the database lock is awaited (a start-first rolling update overlaps the
/// old and new process). The ready port listens once the database is open and closes as
/// shutdown starts.
pub async fn serve(
    config: Config,
    listeners: impl Into<Listeners>,
    shutdown: impl Future<Output = &'static str>,
    started: Instant,
) -> Result<(), ServeError> {
    let mut running = Running::start(config, listeners.into(), started)?;
    let (reason, failed) = tokio::select! {
        reason = shutdown => (reason, None),
        stopped = running.run() => match stopped {
            // A database that cannot be used: nothing was served from it, nothing to drain.
            Stopped::Unusable(e) => return Err(e),
            Stopped::ReadyPortTaken(e) => ("the ready port failed", Some(e)),
        },
    };
    running.shut_down(reason).await?;
    failed.map_or(Ok(()), Err)
}

/// Why the listener loop ended on its own.
enum Stopped {
    /// The database could not be opened: the error to exit with, at once.
    Unusable(ServeError),
    /// Another process took the ready port: shut down as for a signal, then exit with it.
    ReadyPortTaken(ServeError),
}

/// The service once started: listening, with its database opening or open.
struct Running {
    config: Config,
    started: Instant,
    server: Server,
    listener: TcpListener,
    /// The ready port, bound and not listening until the database is open.
    ready_socket: Option<TcpSocket>,
    ready_addr: Option<SocketAddr>,
    ready: Option<TcpListener>,
    ready_listening: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
    /// Hands the database to the requests waiting for it.
    opened: watch::Sender<Option<Storage>>,
    opening: tokio::task::JoinHandle<Result<(Storage, WriterHandle), ServeError>>,
    writer: Option<WriterHandle>,
}

impl Running {
    /// Metrics, the router, and the database's opening under way; logs "listening".
    fn start(config: Config, listeners: Listeners, started: Instant) -> Result<Self, ServeError> {
        let metrics = crate::telemetry::init_metrics().map_err(ServeError::Runtime)?;
        metrics::gauge!("logbook_wal_autocheckpoint_pages").set(f64::from(config.wal_autocheckpoint));
        let Listeners { main: listener, ready: ready_socket } = listeners;
        let local = listener.local_addr().map_err(|e| ServeError::Runtime(e.to_string()))?;
        let ready_addr = match &ready_socket {
            Some(socket) => Some(socket.local_addr().map_err(|e| ServeError::Runtime(e.to_string()))?),
            None => None,
        };
        let draining = Arc::new(AtomicBool::new(false));
        let ready_listening = Arc::new(AtomicBool::new(false));
        let (opened, storage) = watch::channel(None);
        let opening =
            tokio::spawn(open_storage(config.db_path.clone(), config.lock_wait, config.wal_autocheckpoint));
        let state = AppState {
            storage,
            draining: draining.clone(),
            api_token: config.api_token.clone(),
            read_token: config.read_token.clone(),
            storage_wait: config.lock_wait,
            metrics,
            started,
            db_path: config.db_path.clone(),
            body_timeout: config.body_timeout,
            request_timeout: config.request_timeout,
            ready_port: ready_socket.as_ref().map(|_| ready_listening.clone()),
        };
        let app = router(state)
            .layer(axum::middleware::map_response_with_state(draining.clone(), close_when_draining));
        let server = Server::new(app, config.max_connections, config.write_timeout, config.keepalive_grace);
        tracing::info!(
            addr = %local,
            ready_addr = ready_addr.map(|a| a.to_string()),
            db = %config.db_path.display(),
            version = crate::build_info::VERSION,
            revision = crate::build_info::REVISION,
            auth = config.api_token.is_some(),
            read_auth = config.read_token.is_some(),
            max_connections = config.max_connections,
            startup_ms = started.elapsed().as_millis() as u64,
            "listening"
        );
        Ok(Running {
            config,
            started,
            server,
            listener,
            ready_socket,
            ready_addr,
            ready: None,
            ready_listening,
            draining,
            opened,
            opening,
            writer: None,
        })
    }

    /// The listener loop: accepts on both ports, and turns ready once the database is
    /// open. Ends only when something stops the service from within; a shutdown cancels
    /// it (each step is safe to cancel: a connection is either accepted and running, or
    /// still in the kernel's backlog).
    async fn run(&mut self) -> Stopped {
        loop {
            tokio::select! {
                result = &mut self.opening, if self.writer.is_none() => {
                    let opened = result.map_err(|e| ServeError::Runtime(e.to_string())).and_then(|r| r);
                    let (storage, handle) = match opened {
                        Ok(opened) => opened,
                        Err(e) => return Stopped::Unusable(e),
                    };
                    self.opened.send_replace(Some(storage));
                    self.writer = Some(handle);
                    if let Err(e) = self.listen_on_ready_port() {
                        return Stopped::ReadyPortTaken(e);
                    }
                    tracing::info!(startup_ms = self.started.elapsed().as_millis() as u64, "ready");
                }
                accepted = self.listener.accept(), if self.server.has_room() => self.server.accept(accepted).await,
                accepted = accept_on(self.ready.as_ref()), if self.server.has_room() => {
                    self.server.accept(accepted).await;
                }
                Some(_) = self.server.connections.join_next() => {}
            }
        }
    }

    /// The ready port starts listening, now that the database is open.
    fn listen_on_ready_port(&mut self) -> Result<(), ServeError> {
        let Some(socket) = self.ready_socket.take() else { return Ok(()) };
        match socket.listen(READY_BACKLOG) {
            Ok(listener) => {
                self.ready = Some(listener);
                self.ready_listening.store(true, Ordering::SeqCst);
                Ok(())
            }
            // Another process took the port since it was bound (SO_REUSEADDR allows that
            // until one listens).
            Err(e) => Err(ServeError::Config(format!(
                "cannot listen on {} (LOGBOOK_READY_PORT={}): {e}",
                self.ready_addr.map_or_else(String::new, |a| a.to_string()),
                self.config.ready_port.unwrap_or_default()
            ))),
        }
    }

    /// The shutdown: the ready port first, then the drain, then the database.
    async fn shut_down(self, reason: &'static str) -> Result<(), ServeError> {
        let Running {
            config,
            mut server,
            listener,
            ready_socket,
            ready,
            ready_listening,
            draining,
            opened,
            opening,
            writer,
            ..
        } = self;
        // New connections to the ready port are refused from now on, so a proxy sends them
        // to the next release at once; the main port follows after the drain delay. Those
        // already queued are served first.
        if let Some(listener) = ready {
            ready_listening.store(false, Ordering::SeqCst);
            accept_queued(&mut server, listener).await;
        }
        drop(ready_socket);
        opening.abort();
        // Requests still waiting for a database that never opened get their 503 now.
        drop(opened);
        let shutdown_started = drain(server, listener, &config, &draining, reason).await;
        // Commit what is queued, checkpoint, close. Appends arriving later are refused (503).
        if let Some(writer) = writer {
            tokio::task::spawn_blocking(move || writer.close())
                .await
                .map_err(|e| ServeError::Runtime(format!("closing storage failed: {e}")))?;
        }
        tracing::info!(elapsed_ms = shutdown_started.elapsed().as_millis() as u64, "shutdown complete");
        Ok(())
    }
}

/// The shutdown sequence up to closing storage: readiness 503, keep accepting for the
/// drain delay (so balancers see the 503 before the refusal), stop accepting, then give
/// in-flight requests the shutdown timeout before closing what is left.
async fn drain(
    mut server: Server,
    listener: TcpListener,
    config: &Config,
    draining: &AtomicBool,
    reason: &'static str,
) -> Instant {
    let shutdown_started = Instant::now();
    draining.store(true, Ordering::SeqCst);
    tracing::info!(
        signal = reason,
        drain_delay_ms = config.drain_delay.as_millis() as u64,
        timeout_ms = config.shutdown_timeout.as_millis() as u64,
        "shutdown started; readiness is now 503"
    );
    let delay = tokio::time::sleep(config.drain_delay);
    tokio::pin!(delay);
    loop {
        tokio::select! {
            _ = &mut delay => break,
            accepted = listener.accept(), if server.has_room() => server.accept(accepted).await,
            Some(_) = server.connections.join_next() => {}
        }
    }
    drop(listener);
    let Server { shutdown, mut connections, .. } = server;
    tracing::info!(connections = connections.len(), "no longer accepting; closing connections once answered");
    shutdown.send_replace(true);
    let timeout = tokio::time::sleep(config.shutdown_timeout);
    tokio::pin!(timeout);
    loop {
        tokio::select! {
            joined = connections.join_next() => if joined.is_none() { break },
            () = &mut timeout => {
                // A stuck client (say, half a request header) must not hold the process
                // past the orchestrator's grace period, which would end in SIGKILL.
                tracing::warn!(
                    connections = connections.len(),
                    "in-flight requests did not finish within LOGBOOK_SHUTDOWN_TIMEOUT; closing them"
                );
                connections.abort_all();
                break;
            }
        }
    }
    // Wait for aborted connections to let go of their state.
    while connections.join_next().await.is_some() {}
    shutdown_started
}

/// From shutdown on, every response closes its connection: the client opens its next one
/// elsewhere (to the next release, through a proxy), rather than on a connection that is
/// about to close.
async fn close_when_draining(
    axum::extract::State(draining): axum::extract::State<Arc<AtomicBool>>,
    mut response: axum::response::Response,
) -> axum::response::Response {
    if draining.load(Ordering::SeqCst) {
        response
            .headers_mut()
            .insert(axum::http::header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    }
    response
}

/// Takes the database lock, waiting up to `lock_wait` for another process (the previous
/// release, still draining) to let go of it, then opens and migrates the database.
async fn open_storage(
    path: PathBuf,
    lock_wait: Duration,
    wal_autocheckpoint: u32,
) -> Result<(Storage, WriterHandle), ServeError> {
    let unusable = |e: StorageError| {
        let shown = path.display().to_string();
        ServeError::Config(match e {
            StorageError::Locked(why) => format!(
                "cannot use LOGBOOK_DB_PATH={shown:?}: {why}, still after LOGBOOK_LOCK_WAIT={}s; stop the other process",
                lock_wait.as_secs()
            ),
            StorageError::Refused(why) => format!("cannot use LOGBOOK_DB_PATH={shown:?}: {why}"),
            e => format!(
                "cannot use LOGBOOK_DB_PATH={shown:?}: {e} (expected a writable file path in an existing directory)"
            ),
        })
    };
    let deadline = Instant::now() + lock_wait;
    let mut waiting = false;
    let lock = loop {
        match storage::lock(&path) {
            Ok(lock) => break lock,
            Err(StorageError::Locked(why)) if Instant::now() < deadline => {
                if !waiting {
                    tracing::info!(reason = %why, wait_s = lock_wait.as_secs(), "waiting for the database lock");
                    waiting = true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(unusable(e)),
        }
    };
    let opening = path.clone();
    tokio::task::spawn_blocking(move || {
        // With the lock held, nothing else writes: the snapshot holds every acknowledged entry.
        match crate::archive::snapshot_before_migrating(&opening) {
            Ok(Some(file)) => tracing::info!(snapshot = %file.display(), "took a snapshot before migrating"),
            Ok(None) => {}
            Err(e) => {
                return Err(StorageError::Refused(format!(
                    "cannot take the snapshot before migrating ({e}); nothing was migrated"
                )));
            }
        }
        storage::open_locked(&opening, lock, wal_autocheckpoint)
    })
    .await
    .map_err(|e| ServeError::Runtime(e.to_string()))?
    .map_err(unusable)
}

/// Longest a client may take to send a request's head; slower connections are closed.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// The most a request head may take in memory; beyond it the HTTP layer answers 431.
/// Limits of our own (`http::MAX_HEADER_BYTES`) answer first, with a JSON body.
const MAX_HEAD_BUFFER: usize = 64 * 1024;

/// HTTP/1.1 connections, each a task in `connections`, watched for graceful shutdown.
/// At `max_connections` open, no more are accepted: new ones wait in the kernel's backlog
/// until one closes, so a flood of idle or slow clients cannot exhaust memory.
struct Server {
    app: axum::Router,
    http: http1::Builder,
    /// Turns true when the listeners stop accepting (after the drain delay): each
    /// connection then finishes the request it has and closes.
    shutdown: watch::Sender<bool>,
    connections: JoinSet<()>,
    max_connections: usize,
    write_timeout: Duration,
    keepalive_grace: Duration,
    /// Whether the cap was reached and not yet left, so the log says it once per episode.
    at_cap: bool,
}

impl Server {
    fn new(
        app: axum::Router,
        max_connections: usize,
        write_timeout: Duration,
        keepalive_grace: Duration,
    ) -> Self {
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).max_buf_size(MAX_HEAD_BUFFER);
        Server {
            app,
            http,
            shutdown: watch::Sender::new(false),
            connections: JoinSet::new(),
            max_connections,
            write_timeout,
            keepalive_grace,
            at_cap: false,
        }
    }

    /// True while another connection may be accepted; says so in the log when the cap is
    /// reached, and again once there is room.
    fn has_room(&mut self) -> bool {
        let room = self.connections.len() < self.max_connections;
        if room == self.at_cap {
            self.at_cap = !room;
            if room {
                tracing::info!(max_connections = self.max_connections, "below the connection cap again");
            } else {
                metrics::counter!("logbook_http_connection_cap_reached_total").increment(1);
                tracing::warn!(
                    max_connections = self.max_connections,
                    "connection cap reached (LOGBOOK_MAX_CONNECTIONS); new connections wait until one closes"
                );
            }
        }
        room
    }

    async fn accept(&mut self, accepted: std::io::Result<(TcpStream, SocketAddr)>) {
        match accepted {
            Ok((stream, _)) => {
                // A client that stops reading its answer is cut off rather than holding it.
                let mut stream = tokio_io_timeout::TimeoutStream::new(stream);
                stream.set_write_timeout(Some(self.write_timeout));
                let (stream, first_bytes) = FirstBytes::new(Box::pin(stream));
                let service = TowerToHyperService::new(self.app.clone());
                let connection = self.http.serve_connection(TokioIo::new(stream), service);
                let shutdown = self.shutdown.subscribe();
                let keepalive_grace = self.keepalive_grace;
                self.connections.spawn(async move {
                    tokio::pin!(connection);
                    let result = tokio::select! {
                        result = connection.as_mut() => result,
                        () = time_to_close(shutdown, keepalive_grace, first_bytes) => {
                            connection.as_mut().graceful_shutdown();
                            connection.await
                        }
                    };
                    if let Err(e) = result {
                        count_unparsed(&e);
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                });
            }
            Err(e) => {
                // Out of file descriptors, say: back off instead of spinning.
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// How long, once connections are told to close, one that has sent nothing yet gets to
/// send its first bytes.
/// A proxy sends it right after connecting, so it is normally already there: the grace
/// only bounds what a silent client can hold shutdown up by.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// Resolves when a connection may be closed once its request in progress (if any) is
/// answered: `keepalive_grace` after connections are told to close, and once it has sent
/// its first bytes (or had `FIRST_REQUEST_GRACE` to). The HTTP layer's graceful shutdown
/// closes a connection it has read nothing from, even when its request already waits in
/// the socket: a connection accepted just as shutdown starts would lose a request that a
/// proxy cannot retry, since it was sent.
async fn time_to_close(
    mut shutdown: watch::Receiver<bool>,
    keepalive_grace: Duration,
    mut first_bytes: watch::Receiver<bool>,
) {
    // The sender is set before it is dropped, so this resolves either way.
    let _ = shutdown.wait_for(|started| *started).await;
    // Meanwhile each request on it is answered with `Connection: close`, which ends it.
    tokio::time::sleep(keepalive_grace).await;
    let _ = tokio::time::timeout(FIRST_REQUEST_GRACE, first_bytes.wait_for(|seen| *seen)).await;
}

/// A connection's stream that says when its first bytes have been read.
struct FirstBytes<S> {
    inner: S,
    seen: Option<watch::Sender<bool>>,
}

impl<S> FirstBytes<S> {
    fn new(inner: S) -> (Self, watch::Receiver<bool>) {
        let (seen, receiver) = watch::channel(false);
        (FirstBytes { inner, seen: Some(seen) }, receiver)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstBytes<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        // Bytes, the end of the stream or an error: either way, no longer waiting for them.
        if polled.is_ready()
            && let Some(seen) = self.seen.take()
        {
            seen.send_replace(true);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstBytes<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// A request the HTTP layer could not parse never reaches the router; the HTTP layer
/// answers it (400 or 431, no body) and closes. Count it with the others, so the
/// error-ratio alert sees it.
fn count_unparsed(error: &hyper::Error) {
    if !error.is_parse() {
        return;
    }
    let status = if error.is_parse_too_large() { "431" } else { "400" };
    metrics::counter!("logbook_http_requests_total",
        "method" => "other", "route" => "unparsed", "status" => status)
    .increment(1);
}

//! Serving one listener: accept, shed load, TLS, HTTP/1 and HTTP/2 with timeouts, drain.
//!
//! Accepting never waits for anything but the kernel: a connection over the listener's budget
//! (in all, or from one client) is closed as soon as it is accepted, and everything slow — the
//! TLS handshake, reading a request — happens in the connection's own task under a deadline.
//! So silent connections, half-finished handshakes and clients dribbling a header a byte at a
//! time can't keep anyone else out: they cost one budget slot each until their deadline.
//!
//! Deadlines (from `[server]`):
//! - a new connection must finish its TLS handshake and send a whole first request head
//!   within `header_timeout_secs` of being accepted, or it is closed;
//! - each later HTTP/1 request head must be whole within `header_timeout_secs` of its first
//!   byte;
//! - a connection with no request in flight for `idle_timeout_secs` is shut down (HTTP/1 and
//!   HTTP/2 alike; hyper's own header-read timer, set to the same, backs this up for HTTP/1).
//!
//! A request is in flight until its response body is finished, so event streams (SSE) are never
//! idle; an upgraded WebSocket leaves hyper altogether and keeps its connection slot until it
//! closes.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::config::ServerConfig;
use crate::http::extract::ClientAddr;

/// HTTP/2 streams one connection may have open at once.
const H2_MAX_CONCURRENT_STREAMS: u32 = 64;
/// Largest request head accepted, HTTP/1 (read buffer) and HTTP/2 (header list) alike.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// HTTP/2 keep-alive: ping a quiet connection this often, close it if the ping isn't answered.
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// How often a listener at its limit says so in the log.
const LIMIT_WARNING_EVERY: Duration = Duration::from_secs(60);

/// The kernel's queue of connections waiting for `accept`.
const LISTEN_BACKLOG: u32 = 1024;

/// Binds a listening socket with a backlog of [`LISTEN_BACKLOG`] (tokio's default is 128): a
/// burst of connections waits in the kernel's queue for the accept loop instead of having its
/// SYNs dropped and retried a second or more later.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// What a listener enforces, from `[server]`.
#[derive(Debug, Clone)]
pub struct ListenerOptions {
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
}

impl ListenerOptions {
    pub fn from_config(server: &ServerConfig) -> Self {
        ListenerOptions {
            max_connections: usize::try_from(server.max_connections).unwrap_or(usize::MAX),
            max_connections_per_address: usize::try_from(server.max_connections_per_address)
                .unwrap_or(usize::MAX),
            header_timeout: Duration::from_secs(server.header_timeout_secs),
            idle_timeout: Duration::from_secs(server.idle_timeout_secs),
        }
    }
}

/// A listener's connection budget: in all, and per client (IPv4 address or IPv6 /64).
/// Loopback clients count only in all: they are this machine, and on the agent listener every
/// incus agent arrives from loopback through its proxy device, so a per-address cap there would
/// be one cap for all agents together.
pub struct ConnectionLimits {
    max_total: usize,
    max_per_client: usize,
    state: Mutex<LimitState>,
}

#[derive(Default)]
struct LimitState {
    total: usize,
    per_client: HashMap<IpAddr, usize>,
    last_warning: Option<Instant>,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverLimit {
    Total,
    Client,
}

/// One connection's place in the budget, given back when dropped. It travels with the
/// connection's I/O, so an upgraded WebSocket keeps it for as long as it is open.
pub struct Slot {
    limits: Arc<ConnectionLimits>,
    client: Option<IpAddr>,
}

impl ConnectionLimits {
    pub fn new(max_total: usize, max_per_client: usize) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            max_total,
            max_per_client,
            state: Mutex::new(LimitState::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LimitState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, OverLimit> {
        let client = (!ip.to_canonical().is_loopback()).then(|| crate::peer::group(ip));
        let mut state = self.lock();
        let refused = if state.total >= self.max_total {
            Some(OverLimit::Total)
        } else if client
            .is_some_and(|c| state.per_client.get(&c).copied().unwrap_or(0) >= self.max_per_client)
        {
            Some(OverLimit::Client)
        } else {
            None
        };
        if let Some(why) = refused {
            let now = Instant::now();
            if state
                .last_warning
                .is_none_or(|t| now.duration_since(t) >= LIMIT_WARNING_EVERY)
            {
                state.last_warning = Some(now);
                tracing::warn!(
                    %ip,
                    limit = ?why,
                    open = state.total,
                    "refusing connections: over the listener's connection limit \
                     ([server] max_connections, max_connections_per_address)"
                );
            }
            return Err(why);
        }
        state.total += 1;
        if let Some(c) = client {
            *state.per_client.entry(c).or_default() += 1;
        }
        Ok(Slot {
            limits: self.clone(),
            client,
        })
    }

    /// Connections holding a slot now.
    pub fn open(&self) -> usize {
        self.lock().total
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut state = self.limits.lock();
        state.total = state.total.saturating_sub(1);
        if let Some(c) = self.client {
            if let Some(n) = state.per_client.get_mut(&c) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    state.per_client.remove(&c);
                }
            }
        }
    }
}

/// The hyper server settings every listener shares.
fn http_builder(options: &ListenerOptions) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.idle_timeout)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        // No extended CONNECT (RFC 8441): the chat WebSocket is an HTTP/1.1 upgrade only, so
        // its Origin check has one form to guard (revoke::websockets_over_http2_are_not_possible).
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEADER_BYTES as u32)
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    builder
}

/// Serves `app` on `tcp` (over TLS when `tls` is given) until `shutdown` turns true, then waits
/// for the connections it is serving to finish (in-flight requests complete; streams end on
/// the same signal).
pub async fn serve(
    tcp: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    options: ListenerOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits =
        ConnectionLimits::new(options.max_connections, options.max_connections_per_address);
    let builder = Arc::new(http_builder(&options));
    // Every connection task holds a receiver; `closed()` resolves when the last one is gone.
    let (all_closed, close_rx) = watch::channel(());
    loop {
        let accepted = tokio::select! {
            accepted = tcp.accept() => accepted,
            _ = shutdown.wait_for(|stopping| *stopping) => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = limits.admit(peer.ip()) else {
            drop(stream);
            continue;
        };
        // Latency only: a socket that refuses TCP_NODELAY still works.
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            peer,
            slot,
            tls: tls.clone(),
            app: app.clone(),
            builder: builder.clone(),
            options: options.clone(),
            shutdown: shutdown.clone(),
            _open: close_rx.clone(),
        };
        tokio::spawn(connection.run(stream));
    }
    drop(close_rx);
    drop(tcp);
    all_closed.closed().await;
}

/// One accepted connection and what it needs to serve itself.
struct Connection {
    peer: SocketAddr,
    slot: Slot,
    tls: Option<TlsAcceptor>,
    app: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    options: ListenerOptions,
    shutdown: watch::Receiver<bool>,
    /// Held until the connection ends, so the listener's drain can wait for it.
    _open: watch::Receiver<()>,
}

impl Connection {
    async fn run(self, tcp: TcpStream) {
        let Connection {
            peer,
            slot,
            tls,
            app,
            builder,
            options,
            mut shutdown,
            _open,
        } = self;
        // One deadline for the handshake and the first request head together.
        let first_request_by = Instant::now() + options.header_timeout;
        let stream = match tls {
            None => Stream::Plain(tcp),
            Some(acceptor) => {
                match tokio::time::timeout_at(first_request_by, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => Stream::Tls(Box::new(tls)),
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "TLS handshake timed out");
                        return;
                    }
                }
            }
        };
        let activity = Arc::new(Activity::new(
            first_request_by,
            options.header_timeout,
            options.idle_timeout,
        ));
        let io = TokioIo::new(Tracked {
            stream,
            activity: activity.clone(),
            head_deadline: None,
            head_deadline_armed: false,
            _slot: slot,
        });
        let service = {
            let activity = activity.clone();
            hyper::service::service_fn(move |mut request: Request<Incoming>| {
                let in_flight = Activity::begin(&activity, request.version());
                request
                    .extensions_mut()
                    .insert(ConnectInfo(ClientAddr(peer)));
                let response = app.clone().oneshot(request);
                async move {
                    let response = match response.await {
                        Ok(response) => response,
                        Err(never) => match never {},
                    };
                    Ok::<_, Infallible>(response.map(|body| TrackedBody {
                        body,
                        _in_flight: in_flight,
                    }))
                }
            })
        };
        let connection = builder.serve_connection_with_upgrades(io, service);
        tokio::pin!(connection);
        let mut closing = false;
        loop {
            let check_at = (!closing).then(|| activity.next_check(Instant::now()));
            tokio::select! {
                result = connection.as_mut() => {
                    // hyper is done with it; an upgraded WebSocket may go on with the stream,
                    // and its frames are not request heads.
                    activity.detach();
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = shutdown.wait_for(|stopping| *stopping), if !closing => {
                    connection.as_mut().graceful_shutdown();
                    closing = true;
                }
                _ = tokio::time::sleep_until(check_at.unwrap_or_else(Instant::now)), if check_at.is_some() => {
                    match activity.verdict(Instant::now()) {
                        Verdict::TooSlow => {
                            tracing::debug!(%peer, "closing a connection whose request head did not arrive in time");
                            return;
                        }
                        Verdict::Idle => {
                            connection.as_mut().graceful_shutdown();
                            closing = true;
                        }
                        Verdict::Fine => {}
                    }
                }
            }
        }
    }
}

/// Requests on one connection: how many began, how many are in flight (response body not
/// finished), when the last one began or ended, and when the next HTTP/1 head began arriving.
struct Activity {
    state: Mutex<ActivityState>,
    first_request_by: Instant,
    header_timeout: Duration,
    idle_timeout: Duration,
}

struct ActivityState {
    requests: u64,
    in_flight: usize,
    last_change: Instant,
    /// Set by the first request: an HTTP/2 connection's bytes between requests are frames
    /// (pings, window updates), not the start of a request head.
    http2: bool,
    /// When bytes arrived with nothing in flight on an HTTP/1 connection: a head began.
    head_started: Option<Instant>,
    /// hyper let go of the stream (an upgrade): no more request heads.
    detached: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Fine,
    /// A request head (the first one, or one that began arriving) is not whole in time.
    TooSlow,
    /// Nothing in flight for the idle timeout.
    Idle,
}

impl Activity {
    fn new(first_request_by: Instant, header_timeout: Duration, idle_timeout: Duration) -> Self {
        Activity {
            state: Mutex::new(ActivityState {
                requests: 0,
                in_flight: 0,
                last_change: Instant::now(),
                http2: false,
                head_started: None,
                detached: false,
            }),
            first_request_by,
            header_timeout,
            idle_timeout,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ActivityState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn begin(this: &Arc<Self>, version: hyper::Version) -> InFlight {
        let mut state = this.lock();
        state.requests += 1;
        state.in_flight += 1;
        state.last_change = Instant::now();
        state.head_started = None;
        state.http2 |= version == hyper::Version::HTTP_2;
        InFlight(this.clone())
    }

    /// The connection read some bytes. When they begin a new HTTP/1 request head, returns
    /// the time that head must be whole by.
    fn read(&self) -> Option<Instant> {
        let mut state = self.lock();
        if state.requests > 0
            && state.in_flight == 0
            && !state.http2
            && !state.detached
            && state.head_started.is_none()
        {
            let now = Instant::now();
            state.head_started = Some(now);
            return Some(now + self.header_timeout);
        }
        None
    }

    /// Whether a request head that began arriving is still not whole at `now`, past its
    /// deadline.
    fn head_too_slow(&self, now: Instant) -> bool {
        let state = self.lock();
        state.in_flight == 0
            && !state.detached
            && state
                .head_started
                .is_some_and(|started| now >= started + self.header_timeout)
    }

    fn detach(&self) {
        self.lock().detached = true;
    }

    /// When to look at this connection next.
    fn next_check(&self, now: Instant) -> Instant {
        let state = self.lock();
        if state.requests == 0 {
            self.first_request_by
        } else if state.in_flight > 0 {
            now + self.idle_timeout
        } else if let Some(started) = state.head_started {
            (started + self.header_timeout).min(state.last_change + self.idle_timeout)
        } else {
            state.last_change + self.idle_timeout
        }
    }

    fn verdict(&self, now: Instant) -> Verdict {
        let state = self.lock();
        if state.requests == 0 {
            if now >= self.first_request_by {
                return Verdict::TooSlow;
            }
            return Verdict::Fine;
        }
        if state.in_flight > 0 {
            return Verdict::Fine;
        }
        if state
            .head_started
            .is_some_and(|started| now >= started + self.header_timeout)
        {
            return Verdict::TooSlow;
        }
        if now >= state.last_change + self.idle_timeout {
            return Verdict::Idle;
        }
        Verdict::Fine
    }
}

/// A request in flight; dropped with its response body.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut state = self.0.lock();
        state.in_flight = state.in_flight.saturating_sub(1);
        state.last_change = Instant::now();
        state.head_started = None;
    }
}

/// A response body that keeps its request counted as in flight until it is finished.
struct TrackedBody {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// A connection's byte stream together with its budget slot, so the slot lives exactly as
/// long as the socket, wherever the socket goes (hyper, or an upgraded WebSocket). Reads are
/// reported to the connection's [`Activity`], which is how a new request head is noticed.
struct Tracked {
    stream: Stream,
    activity: Arc<Activity>,
    /// Set when a later request head begins: it must be whole by then. The stream enforces
    /// it itself (a read past it fails, which ends the connection) rather than waking the
    /// connection's task to re-arm a timer: that wake cost a cross-thread futex per request.
    head_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    head_deadline_armed: bool,
    _slot: Slot,
}

impl AsyncRead for Tracked {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = match &mut this.stream {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        };
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            if let Some(deadline) = this.activity.read() {
                match this.head_deadline.as_mut() {
                    Some(sleep) => sleep.as_mut().reset(deadline),
                    None => this.head_deadline = Some(Box::pin(tokio::time::sleep_until(deadline))),
                }
                this.head_deadline_armed = true;
            }
            return polled;
        }
        if polled.is_pending() && this.head_deadline_armed {
            if let Some(sleep) = this.head_deadline.as_mut() {
                if sleep.as_mut().poll(cx).is_ready() {
                    this.head_deadline_armed = false;
                    if this.activity.head_too_slow(Instant::now()) {
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the request head did not arrive in time",
                        )));
                    }
                }
            }
        }
        polled
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(s) => s.is_write_vectored(),
            Stream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_budget_holds_in_all_and_per_client_and_slots_come_back() {
        let limits = ConnectionLimits::new(5, 2);
        let a1 = limits.admit(ip("192.0.2.1")).unwrap();
        let _a2 = limits.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(limits.admit(ip("192.0.2.1")).err(), Some(OverLimit::Client));
        // One IPv6 client is its /64.
        let _b1 = limits.admit(ip("2001:db8:0:1::1")).unwrap();
        let _b2 = limits.admit(ip("2001:db8:0:1::2")).unwrap();
        assert_eq!(
            limits.admit(ip("2001:db8:0:1::3")).err(),
            Some(OverLimit::Client)
        );
        drop(a1);
        let _a3 = limits.admit(ip("192.0.2.1")).unwrap();
        let _c = limits.admit(ip("192.0.2.3")).unwrap();
        assert_eq!(limits.open(), 5);
        assert_eq!(limits.admit(ip("192.0.2.4")).err(), Some(OverLimit::Total));
    }

    #[test]
    fn loopback_counts_only_in_all() {
        let limits = ConnectionLimits::new(4, 1);
        let held: Vec<_> = (0..3)
            .map(|_| limits.admit(ip("127.0.0.1")).unwrap())
            .collect();
        let _mapped = limits.admit(ip("::ffff:127.0.0.1")).unwrap();
        assert_eq!(limits.admit(ip("::1")).err(), Some(OverLimit::Total));
        drop(held);
        assert_eq!(limits.open(), 1);
    }

    #[test]
    fn verdicts_follow_the_deadlines() {
        let t0 = Instant::now();
        let header = Duration::from_secs(10);
        let idle = Duration::from_secs(60);
        let activity = Arc::new(Activity::new(t0 + header, header, idle));
        // Before the first request: the first-request deadline.
        assert_eq!(activity.next_check(t0), t0 + header);
        assert_eq!(activity.verdict(t0), Verdict::Fine);
        assert_eq!(activity.verdict(t0 + header), Verdict::TooSlow);
        let request = Activity::begin(&activity, hyper::Version::HTTP_11);
        // In flight (a stream, a long answer): never idle, however long; bytes read then are
        // its body, not a new head.
        activity.read();
        assert_eq!(activity.verdict(t0 + 100 * idle), Verdict::Fine);
        drop(request);
        let ended = activity.lock().last_change;
        assert_eq!(activity.next_check(ended), ended + idle);
        assert_eq!(activity.verdict(ended + idle), Verdict::Idle);
        // The next head begins: it has the header timeout from its first byte.
        activity.read();
        let started = activity.lock().head_started.unwrap();
        assert_eq!(activity.next_check(started), started + header);
        assert_eq!(activity.verdict(started + header), Verdict::TooSlow);
        // Its request arrives in time: back to normal.
        drop(Activity::begin(&activity, hyper::Version::HTTP_11));
        assert_eq!(activity.lock().head_started, None);
    }

    #[test]
    fn http2_frames_between_requests_are_not_a_slow_head() {
        let t0 = Instant::now();
        let header = Duration::from_secs(10);
        let idle = Duration::from_secs(60);
        let activity = Arc::new(Activity::new(t0 + header, header, idle));
        drop(Activity::begin(&activity, hyper::Version::HTTP_2));
        activity.read(); // a PING acknowledgement
        let ended = activity.lock().last_change;
        assert_eq!(activity.verdict(ended + header), Verdict::Fine);
        assert_eq!(activity.verdict(ended + idle), Verdict::Idle);
    }
}

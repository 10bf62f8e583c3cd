//! Bounds on HTTP: open connections (with an idle timeout), requests in flight and their time, live feeds.

use std::sync::Arc;
use std::time::Duration;

/// Bounds on the requests of the `/api` routes (health and metrics stay outside them, so probes
/// answer under load).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// Requests served at once; past it a request is answered 429 `overloaded` at once.
    pub max_in_flight: usize,
    /// A request not answered in this time is answered 504 `timeout`: its outcome is unknown
    /// (a command may have been recorded; the same Idempotency-Key tells). A live feed's stream is
    /// not bounded by it, only its start.
    pub request_timeout: Duration,
}

/// A TCP listener that holds at most `max` connections open: past it, new connections wait in
/// the kernel's listen backlog until one closes (and `causeway_http_connections_waiting` says
/// so), instead of each taking memory and a task. A connection on which nothing is read or
/// written for `idle` is closed, so idle keep-alive or trickling clients cannot hold the places
/// (a live feed writes a keep-alive comment every 15 s).
#[derive(Debug)]
pub struct BoundedListener {
    inner: tokio::net::TcpListener,
    room: Arc<tokio::sync::Semaphore>,
    idle: Duration,
}

impl BoundedListener {
    /// At most `max` connections of `inner` at once, each closed after `idle` without traffic.
    pub fn new(inner: tokio::net::TcpListener, max: usize, idle: Duration) -> Self {
        let max = max.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        Self { inner, room: Arc::new(tokio::sync::Semaphore::new(max)), idle }
    }
}

/// A connection of a [`BoundedListener`]: its place is given back when it closes.
#[derive(Debug)]
pub struct BoundedStream {
    io: tokio::net::TcpStream,
    _place: tokio::sync::OwnedSemaphorePermit,
    idle: Duration,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl BoundedStream {
    /// Some traffic: the idle deadline moves.
    fn active(&mut self) {
        let next = tokio::time::Instant::now() + self.idle;
        self.deadline.as_mut().reset(next);
    }

    /// Nothing moved: has the connection been idle too long?
    fn idle_for_too_long(&mut self, cx: &mut std::task::Context<'_>) -> bool {
        std::future::Future::poll(self.deadline.as_mut(), cx).is_ready()
    }

    fn poll_io<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        poll: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        use std::task::Poll;
        match poll {
            Poll::Ready(r) => {
                self.active();
                Poll::Ready(r)
            }
            Poll::Pending if self.idle_for_too_long(cx) => {
                metrics::counter!("causeway_http_idle_closed_total").increment(1);
                Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "idle connection closed")))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl axum::serve::Listener for BoundedListener {
    type Io = BoundedStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let place = match self.room.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                metrics::gauge!("causeway_http_connections_waiting").set(1.0);
                tracing::warn!("at the bound of open HTTP connections; new ones wait");
                let p = self.room.clone().acquire_owned().await;
                metrics::gauge!("causeway_http_connections_waiting").set(0.0);
                match p {
                    Ok(p) => p,
                    // The semaphore is never closed; wait forever rather than serve unbounded.
                    Err(_) => std::future::pending().await,
                }
            }
        };
        let (io, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        // Small answers go out at once.
        let _ = io.set_nodelay(true);
        let deadline = Box::pin(tokio::time::sleep(self.idle));
        (BoundedStream { io, _place: place, idle: self.idle, deadline }, addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

impl tokio::io::AsyncRead for BoundedStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let poll = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        self.poll_io(cx, poll)
    }
}

impl tokio::io::AsyncWrite for BoundedStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let poll = std::pin::Pin::new(&mut self.io).poll_write(cx, buf);
        self.poll_io(cx, poll)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let poll = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.poll_io(cx, poll)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self { max_in_flight: 1024, request_timeout: Duration::from_secs(30) }
    }
}

/// The bound on live feeds (`GET /api/events/live`): how many at once, how many events each may
/// have waiting for a slow client, and how long a client may leave its buffer full before it is
/// dropped.
#[derive(Debug, Clone)]
pub struct LiveFeeds {
    pub(crate) open: Arc<tokio::sync::Semaphore>,
    pub(crate) max: usize,
    /// Events waiting for one client at most.
    pub buffer: usize,
    /// A client that reads nothing while its buffer is full this long is disconnected.
    pub stall: Duration,
}

impl LiveFeeds {
    /// At most `max` feeds at once.
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, tokio::sync::Semaphore::MAX_PERMITS);
        Self {
            open: Arc::new(tokio::sync::Semaphore::new(max)),
            max,
            buffer: 256,
            stall: Duration::from_secs(30),
        }
    }

    /// Feeds open now.
    pub fn open(&self) -> usize {
        self.max.saturating_sub(self.open.available_permits())
    }
}

impl Default for LiveFeeds {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_LIVE_FEEDS)
    }
}

/// The default bound on live feeds at once.
pub const DEFAULT_MAX_LIVE_FEEDS: usize = 64;

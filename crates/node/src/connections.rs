//! The connections a node holds, so that none can be held against it.
//!
//! Every accepted connection has a [`Conn`] here: how many requests it has in flight and
//! when it was last busy. A connection with nothing in flight is *idle* (a client between
//! keep-alive requests) or *silent* (a client that never finished a request). Idle and
//! silent connections are closed by their timeouts, and when the node is at its
//! connection limit the longest-idle one is closed to make way for a new client: a
//! client that sends nothing cannot lock the others out.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// One accepted connection's state, shared by its task and the service it runs.
#[derive(Debug)]
pub(crate) struct Conn {
    id: u64,
    registry: Arc<Registry>,
    /// Requests (HTTP/2 streams) being answered now.
    in_flight: AtomicUsize,
    /// Of those, requests still waiting for their body (see [`TrackedBody`]).
    receiving: AtomicUsize,
    /// Requests started on this connection.
    started: AtomicU64,
    /// Nanoseconds after the registry's epoch when the connection was last busy.
    last_busy: AtomicU64,
    /// Nanoseconds after the epoch (plus one; zero: none) when bytes of a request not yet
    /// started first arrived: a request head is on its way.
    head_since: AtomicU64,
    /// Set when the accept loop chose this connection to make way for a new one.
    evicted: AtomicBool,
    wake: Notify,
}

impl Conn {
    /// A guard that counts one request in flight until it is dropped.
    pub(crate) fn start_request(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.started.fetch_add(1, Ordering::Relaxed);
        self.head_since.store(0, Ordering::Release);
        self.touch();
        RequestGuard { conn: self.clone() }
    }

    fn touch(&self) {
        self.last_busy
            .store(self.registry.nanos_since_epoch(), Ordering::Release);
    }

    fn is_idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// Every request in flight is still waiting for its body: a slow (or stalled) upload,
    /// which may make way for a new client as an idle connection does.
    pub(crate) fn is_stalled(&self) -> bool {
        let in_flight = self.in_flight.load(Ordering::Acquire);
        in_flight > 0 && self.receiving.load(Ordering::Acquire) >= in_flight
    }

    fn last_busy(&self) -> Instant {
        self.registry.epoch + Duration::from_nanos(self.last_busy.load(Ordering::Acquire))
    }

    /// Bytes arrived on the connection: with no request in flight, they begin a head.
    fn received(&self) {
        if self.is_idle() && self.head_since.load(Ordering::Acquire) == 0 {
            let now = self.registry.nanos_since_epoch().saturating_add(1);
            let began =
                self.head_since
                    .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
            if began.is_ok() {
                // The watcher may be waiting for the idle deadline: the header-read one
                // is nearer now.
                self.wake.notify_one();
            }
        }
    }

    /// When this connection, if no request starts, is to be closed. `None` while a
    /// request is in flight. Otherwise `header_read` after the first byte of a request
    /// head arrived, or after the connection was accepted while it never sent one;
    /// `idle` after its last request.
    pub(crate) fn deadline(&self, header_read: Duration, idle: Duration) -> Option<Instant> {
        if !self.is_idle() {
            return None;
        }
        let head_since = self.head_since.load(Ordering::Acquire);
        if head_since > 0 {
            let since = self.registry.epoch + Duration::from_nanos(head_since - 1);
            return Some(since + header_read);
        }
        let wait = if self.started.load(Ordering::Relaxed) == 0 {
            header_read
        } else {
            idle
        };
        Some(self.last_busy() + wait)
    }

    /// True when the connection may still be writing the answer to its last request:
    /// it is then closed gracefully rather than dropped.
    pub(crate) fn may_be_answering(&self) -> bool {
        self.started.load(Ordering::Relaxed) > 0 && self.head_since.load(Ordering::Acquire) == 0
    }

    /// True once the accept loop asked this connection to close, and it is still idle or
    /// stalled on a body.
    pub(crate) fn should_make_way(&self) -> bool {
        self.evicted.load(Ordering::Acquire) && (self.is_idle() || self.is_stalled())
    }

    /// Which connection makes way first: one that never sent a request, then one stalled
    /// on a request body, then an idle keep-alive one; `None` for a busy connection.
    fn eviction_class(&self) -> Option<u8> {
        if self.is_idle() {
            Some(if self.started.load(Ordering::Relaxed) == 0 {
                0
            } else {
                2
            })
        } else if self.is_stalled() {
            Some(1)
        } else {
            None
        }
    }

    /// Completes when the connection is asked to make way or a request on it ends.
    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.registry.lock().remove(&self.id);
        self.registry.changed.notify_waiters();
    }
}

/// A connection's byte stream, telling its [`Conn`] when bytes arrive.
#[derive(Debug)]
pub(crate) struct Watched<S> {
    inner: S,
    conn: Arc<Conn>,
}

impl<S> Watched<S> {
    pub(crate) fn new(inner: S, conn: Arc<Conn>) -> Watched<S> {
        Watched { inner, conn }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.conn.received();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
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

/// Counts a request as in flight on its connection while it lives.
#[derive(Debug)]
pub(crate) struct RequestGuard {
    conn: Arc<Conn>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.conn.touch();
        if self.conn.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.conn.wake.notify_one();
            self.conn.registry.changed.notify_waiters();
        }
    }
}

/// A request's body, counted as awaited on its connection until it ends (or is dropped):
/// what lets a connection stalled on a body make way for a new client.
#[derive(Debug)]
pub struct TrackedBody {
    inner: Incoming,
    receiving: Option<Arc<Conn>>,
}

impl TrackedBody {
    pub(crate) fn new(inner: Incoming, conn: &Arc<Conn>) -> TrackedBody {
        let receiving = (!inner.is_end_stream()).then(|| {
            conn.receiving.fetch_add(1, Ordering::AcqRel);
            conn.clone()
        });
        TrackedBody { inner, receiving }
    }

    fn done(&mut self) {
        if let Some(conn) = self.receiving.take() {
            conn.receiving.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.done();
    }
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) || self.inner.is_end_stream() {
            self.done();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Every open connection of a node.
#[derive(Debug)]
pub(crate) struct Registry {
    epoch: Instant,
    next_id: AtomicU64,
    conns: Mutex<HashMap<u64, std::sync::Weak<Conn>>>,
    /// Notified when a connection closes or becomes idle.
    changed: Notify,
}

impl Registry {
    pub(crate) fn new() -> Arc<Registry> {
        Arc::new(Registry {
            epoch: Instant::now(),
            next_id: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            changed: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<u64, std::sync::Weak<Conn>>> {
        // A panic while holding the lock leaves the map usable: recover it.
        self.conns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn nanos_since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Registers a newly accepted connection.
    pub(crate) fn open(self: &Arc<Self>) -> Arc<Conn> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            id,
            registry: self.clone(),
            in_flight: AtomicUsize::new(0),
            receiving: AtomicUsize::new(0),
            started: AtomicU64::new(0),
            last_busy: AtomicU64::new(self.nanos_since_epoch()),
            head_since: AtomicU64::new(0),
            evicted: AtomicBool::new(false),
            wake: Notify::new(),
        });
        self.lock().insert(id, Arc::downgrade(&conn));
        conn
    }

    /// Connections open now.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    /// Asks the connection that has been idle longest (one that never sent a request
    /// first) to close. False when every connection is busy.
    pub(crate) fn make_way(&self) -> bool {
        let victim = self
            .lock()
            .values()
            .filter_map(std::sync::Weak::upgrade)
            .filter(|c| !c.evicted.load(Ordering::Acquire))
            .filter_map(|c| Some((c.eviction_class()?, c.last_busy(), c)))
            .min_by_key(|(class, last_busy, _)| (*class, *last_busy))
            .map(|(_, _, c)| c);
        match victim {
            Some(conn) => {
                conn.evicted.store(true, Ordering::Release);
                conn.wake.notify_one();
                true
            }
            None => false,
        }
    }

    /// Waits until there is room for one more connection below `limit`, asking an idle
    /// connection to make way when there is none. Returns at once below the limit.
    pub(crate) async fn room(&self, limit: usize) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let open = self.len();
            if open < limit {
                return;
            }
            // Connections asked to make way close shortly; count them as gone.
            let leaving = self
                .lock()
                .values()
                .filter_map(std::sync::Weak::upgrade)
                .filter(|c| c.evicted.load(Ordering::Acquire))
                .count();
            if open - leaving < limit || self.make_way() {
                return;
            }
            changed.await;
        }
    }

    /// Waits until every connection has closed.
    pub(crate) async fn drained(&self) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.len() == 0 {
                return;
            }
            changed.await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_silent_connection_makes_way_before_an_idle_one_and_a_busy_one_never() {
        let registry = Registry::new();
        let used = registry.open();
        drop(used.start_request());
        let silent = registry.open();
        let busy = registry.open();
        let _request = busy.start_request();
        assert!(registry.make_way());
        assert!(silent.should_make_way());
        assert!(!used.should_make_way());
        assert!(registry.make_way());
        assert!(used.should_make_way());
        assert!(!registry.make_way(), "the busy connection stays");
        assert!(!busy.should_make_way());
    }

    #[test]
    fn deadlines_follow_the_header_and_idle_timeouts() {
        let registry = Registry::new();
        let conn = registry.open();
        let header = Duration::from_secs(10);
        let idle = Duration::from_secs(60);
        let accepted = conn.last_busy();
        assert_eq!(conn.deadline(header, idle), Some(accepted + header));
        let request = conn.start_request();
        assert_eq!(conn.deadline(header, idle), None);
        drop(request);
        let deadline = conn.deadline(header, idle).unwrap();
        assert!(deadline >= accepted + idle);
        conn.received();
        let head = conn.deadline(header, idle).unwrap();
        assert!(
            head < deadline,
            "a head on its way gets the header-read timeout"
        );
        drop(conn.start_request());
        assert_eq!(conn.deadline(header, idle), Some(conn.last_busy() + idle));
    }

    #[test]
    fn a_closed_connection_leaves_the_registry() {
        let registry = Registry::new();
        let conn = registry.open();
        assert_eq!(registry.len(), 1);
        drop(conn);
        assert_eq!(registry.len(), 0);
    }
}

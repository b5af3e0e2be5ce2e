//! Timestamps taken at the socket: a wrapper around a connection's stream that records
//! when the first byte of a request is handed to the kernel and when the last byte of its
//! response is taken from it. Service time measured between these leaves out what the
//! HTTP client and the runtime do before the write and after the read (building and
//! encoding the request, parsing the response, waking tasks, arming the timeout). What is
//! left against the wire (`bench/fidelity.sh`) is mostly the runtime's wake-up after the
//! response arrives, which wrk's event loop pays too.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Not yet stamped.
const UNSET: u64 = u64::MAX;

/// The stamps of one connection's current exchange, in nanoseconds since `base`.
#[derive(Debug)]
pub struct Stamps {
    base: Instant,
    first_write: AtomicU64,
    last_read: AtomicU64,
}

impl Stamps {
    /// Stamps counted from now.
    pub fn new() -> Arc<Stamps> {
        Arc::new(Stamps {
            base: Instant::now(),
            first_write: AtomicU64::new(UNSET),
            last_read: AtomicU64::new(UNSET),
        })
    }

    /// Forgets the last exchange: the next write starts a new one.
    pub fn reset(&self) {
        self.first_write.store(UNSET, Ordering::Relaxed);
        self.last_read.store(UNSET, Ordering::Relaxed);
    }

    fn now(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(UNSET - 1)
    }

    fn at(&self, nanos: u64) -> Option<Instant> {
        (nanos != UNSET).then(|| self.base + Duration::from_nanos(nanos))
    }

    /// Stamps a write, when it is the exchange's first: a request written in several
    /// pieces started with the first.
    fn mark_write(&self) {
        let _ = self.first_write.compare_exchange(
            UNSET,
            self.now(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// When the exchange's first byte was written, and its last byte read.
    pub fn exchange(&self) -> Option<(Instant, Instant)> {
        let first = self.at(self.first_write.load(Ordering::Relaxed))?;
        let last = self.at(self.last_read.load(Ordering::Relaxed))?;
        (last >= first).then_some((first, last))
    }
}

/// A stream that stamps its writes and reads into [`Stamps`].
#[derive(Debug)]
pub struct Stamped<T> {
    inner: T,
    stamps: Arc<Stamps>,
}

impl<T> Stamped<T> {
    /// Wraps `inner`.
    pub fn new(inner: T, stamps: Arc<Stamps>) -> Stamped<T> {
        Stamped { inner, stamps }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Stamped<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            let now = self.stamps.now();
            self.stamps.last_read.store(now, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Stamped<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.stamps.mark_write();
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.stamps.mark_write();
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

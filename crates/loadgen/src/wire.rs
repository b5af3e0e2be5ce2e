//! Timestamps taken at the socket: a wrapper around a connection's TCP stream that records
//! when the first byte of a request is handed to the kernel and when the last segment of
//! its response reached the host. Service time measured between these leaves out what the
//! HTTP client and the runtime do before the write and after the read (building and
//! encoding the request, parsing the response, waking tasks, arming the timeout).
//!
//! The read side comes from the kernel: the socket asks for receive timestamps
//! (`SO_TIMESTAMPNS`, which TCP supports: each read carries the time its last segment was
//! taken in by the network stack), so the event loop's wake-up after a response arrives,
//! 30-45 µs on these machines and what wrk counts too, is not counted as the target's
//! time. A read without that stamp is stamped when it returns (late, never early): the
//! option refused, a clock step in between, or an answer that came in before the host
//! switched stamping on. Linux does that from a work queue after the first socket on the
//! host asks (`net_enable_timestamp`, `net/core/dev.c`), so when no other socket had
//! stamps on, the first exchanges of a run can be without them: 14 of 40 fresh test
//! processes here had their first answer unstamped.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use nix::sys::time::TimeSpec;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// Not yet stamped.
const UNSET: u64 = u64::MAX;

/// Longest a held write spins for its due time (the pacer releases requests a few tens of
/// microseconds early; this bound only guards against a due time far off).
pub const MAX_HOLD: Duration = Duration::from_millis(1);
const MAX_HOLD_NANOS: u64 = MAX_HOLD.as_nanos() as u64;

/// The stamps of one connection's current exchange, in nanoseconds since `base`.
#[derive(Debug)]
pub struct Stamps {
    base: Instant,
    first_write: AtomicU64,
    last_read: AtomicU64,
    /// The exchange's first write waits (spinning) until this time: a paced request is
    /// encoded and handed to the connection ahead of its due time, and only the write
    /// itself waits for it (see [`Stamps::hold_until`]).
    not_before: AtomicU64,
}

impl Stamps {
    /// Stamps counted from now.
    pub fn new() -> Arc<Stamps> {
        Arc::new(Stamps {
            base: Instant::now(),
            first_write: AtomicU64::new(UNSET),
            last_read: AtomicU64::new(UNSET),
            not_before: AtomicU64::new(UNSET),
        })
    }

    /// Forgets the last exchange: the next write starts a new one.
    pub fn reset(&self) {
        self.first_write.store(UNSET, Ordering::Relaxed);
        self.last_read.store(UNSET, Ordering::Relaxed);
        self.not_before.store(UNSET, Ordering::Relaxed);
    }

    /// Holds the next exchange's first write until `due` (after [`Stamps::reset`]): the
    /// write spins out what is left, so the request leaves at its due time however long
    /// the client took to get it ready. Only a short wait is spun (at most
    /// [`MAX_HOLD`]); a due time further off is not waited for here.
    pub fn hold_until(&self, due: Instant) {
        if let Some(nanos) = due.checked_duration_since(self.base) {
            let nanos = u64::try_from(nanos.as_nanos()).unwrap_or(UNSET - 1);
            self.not_before.store(nanos, Ordering::Relaxed);
        }
    }

    /// Spins until the held write's due time, if there is one (once per exchange).
    fn wait_for_due(&self) {
        let held = self.not_before.swap(UNSET, Ordering::Relaxed);
        if held == UNSET {
            return;
        }
        let limit = self.now().saturating_add(MAX_HOLD_NANOS);
        let until = held.min(limit);
        while self.now() < until {
            std::hint::spin_loop();
        }
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
        if self.first_write.load(Ordering::Relaxed) == UNSET {
            self.wait_for_due();
        }
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

/// Longest gap between a segment's arrival and its read that is taken at its word: beyond
/// it, the wall clock must have stepped, and the read's own time is used.
const MAX_READ_DELAY: Duration = Duration::from_secs(1);

/// Size of each thread's read buffer. The kernel reads into it and what it read is copied
/// into the caller's buffer: safe code cannot hand the kernel the caller's uninitialised
/// memory, zeroing that on every read would cost more than copying the bytes read, and one
/// buffer per runtime thread (reads never wait while holding it) costs nothing per
/// connection.
const READ_BUFFER: usize = 64 * 1024;

thread_local! {
    static READ_SPACE: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; READ_BUFFER].into_boxed_slice());
}

/// A TCP stream that stamps its writes and reads into [`Stamps`].
#[derive(Debug)]
pub struct Stamped {
    inner: TcpStream,
    stamps: Arc<Stamps>,
    /// Room for one read's control messages (the receive timestamp).
    control: Vec<u8>,
}

impl Stamped {
    /// Wraps `inner`, asking the kernel for receive timestamps (best effort: without them
    /// reads are stamped when they return).
    pub fn new(inner: TcpStream, stamps: Arc<Stamps>) -> Stamped {
        if let Err(e) = setsockopt(&inner, sockopt::ReceiveTimestampns, &true) {
            tracing::debug!(error = %e, "no kernel receive timestamps on this socket");
        }
        Stamped {
            inner,
            stamps,
            control: nix::cmsg_space!(TimeSpec),
        }
    }

    /// One non-blocking read into `dst`: how many bytes, and when the kernel took in the
    /// last of them (wall clock), if it said.
    ///
    /// A read that takes less than `dst` has drained the socket, and its readiness is
    /// cleared then, as tokio's own stream does: otherwise the next read (right after the
    /// next request is written) would be one more system call only to be told `EAGAIN`.
    /// `try_io` clears readiness only when its closure says `WouldBlock`, so a short read
    /// hands its result out through `short` and says so; the readiness cleared is the one
    /// seen before the read, so an event that came in meanwhile is not lost.
    fn read_stamped(&mut self, dst: &mut [u8]) -> io::Result<(usize, Option<SystemTime>)> {
        let fd = self.inner.as_raw_fd();
        let control = &mut self.control;
        let mut short = None;
        let read = self.inner.try_io(Interest::READABLE, || {
            let max = dst.len();
            let mut iov = [io::IoSliceMut::new(dst)];
            let msg = recvmsg::<()>(fd, &mut iov, Some(control), MsgFlags::MSG_DONTWAIT)
                .map_err(io::Error::from)?;
            let arrived = msg.cmsgs().ok().and_then(|mut cmsgs| {
                cmsgs.find_map(|c| match c {
                    ControlMessageOwned::ScmTimestampns(t) => wall_time(t),
                    _ => None,
                })
            });
            if msg.bytes > 0 && msg.bytes < max {
                short = Some((msg.bytes, arrived));
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok((msg.bytes, arrived))
        });
        match (read, short) {
            (_, Some(done)) => Ok(done),
            (read, None) => read,
        }
    }

    /// What came in while the connection was idle: `None` when nothing did, `Some(0)`
    /// when the server closed (or reset) it, `Some(n)` when bytes are waiting. A server
    /// drops idle keep-alive connections after its own timeout (5 s in Node.js), and a
    /// request written into such a socket would be counted as an error. Costs a system
    /// call only when the socket has had an event since it was last drained, which a
    /// drained idle socket has not.
    pub fn idle_input(&self) -> Option<usize> {
        let mut byte = [std::mem::MaybeUninit::uninit(); 1];
        let mut buf = ReadBuf::uninit(&mut byte);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.inner.poll_peek(&mut cx, &mut buf) {
            Poll::Pending => None,
            Poll::Ready(Ok(n)) => Some(n),
            Poll::Ready(Err(_)) => Some(0),
        }
    }
}

/// A kernel timestamp as a wall-clock time (`None` if it is before 1970).
fn wall_time(t: TimeSpec) -> Option<SystemTime> {
    let secs = u64::try_from(t.tv_sec()).ok()?;
    let nanos = u32::try_from(t.tv_nsec()).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

impl AsyncRead for Stamped {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(this.inner.poll_read_ready(cx))?;
            let read = READ_SPACE.with_borrow_mut(|space| {
                let max = buf.remaining().min(space.len());
                let read = this.read_stamped(&mut space[..max]);
                if let Ok((n, _)) = read {
                    buf.put_slice(&space[..n]);
                }
                read
            });
            match read {
                Ok((n, arrived)) => {
                    if n > 0 {
                        let now = this.stamps.now();
                        // The kernel's stamp is wall-clock time: carry it over as the
                        // delay before this read, on the monotonic clock.
                        let delay = arrived
                            .and_then(|a| SystemTime::now().duration_since(a).ok())
                            .filter(|d| *d < MAX_READ_DELAY)
                            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0));
                        let at = now.saturating_sub(delay);
                        this.stamps.last_read.store(at, Ordering::Relaxed);
                    }
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for Stamped {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// An answer that waited in the socket while the event loop was busy is stamped when
    /// it arrived, not when it was read: the loop's lateness is not the target's.
    ///
    /// The first answer can come in before the host switched stamping on (see the module
    /// doc), so the test makes a few exchanges and asks that one used the kernel's time.
    #[tokio::test(flavor = "current_thread")]
    async fn a_late_read_is_stamped_when_the_answer_arrived() {
        const ATTEMPTS: usize = 10;
        const BUSY: Duration = Duration::from_millis(50);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let (answered, answers) = std::sync::mpsc::channel();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().expect("accept");
            let mut ping = [0; 4];
            while socket.read_exact(&mut ping).is_ok() {
                socket.write_all(b"pong").expect("answer");
                answered.send(()).expect("the test waits");
            }
        });
        let stamps = Stamps::new();
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let mut stream = Stamped::new(tcp, stamps.clone());
        let mut early = Vec::new();
        for _ in 0..ATTEMPTS {
            stamps.reset();
            stream.write_all(b"ping").await.expect("write");
            // Block the only runtime thread while the answer is already in the socket.
            answers.recv().expect("the server answered");
            std::thread::sleep(BUSY);
            let mut pong = [0; 4];
            stream.read_exact(&mut pong).await.expect("read");
            let returned = Instant::now();
            assert_eq!(&pong, b"pong");
            let (first, last) = stamps.exchange().expect("both stamps");
            assert!(last >= first);
            if returned - last >= BUSY {
                drop(stream);
                server.join().expect("the server ends");
                return;
            }
            early.push(returned - last);
        }
        panic!(
            "in {ATTEMPTS} exchanges the reads were stamped {early:?} before they returned: \
             the kernel's receive time was never used"
        );
    }

    /// A held write leaves no earlier than its due time (the pacer releases requests
    /// ahead of it), and a due time far off is not spun for.
    #[tokio::test(flavor = "current_thread")]
    async fn a_held_write_waits_for_its_due_time_within_a_bound() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = std::thread::spawn(move || listener.accept().expect("accept"));
        let stamps = Stamps::new();
        let tcp = TcpStream::connect(addr).await.expect("connect");
        let mut stream = Stamped::new(tcp, stamps.clone());
        let _peer = server.join().expect("accepted");

        stamps.reset();
        let due = Instant::now() + Duration::from_micros(300);
        stamps.hold_until(due);
        stream.write_all(b"a").await.expect("write");
        let first = stamps.at(stamps.first_write.load(Ordering::Relaxed));
        assert!(
            first.expect("stamped") >= due,
            "written before its due time"
        );

        stamps.reset();
        let asked = Instant::now();
        stamps.hold_until(asked + Duration::from_secs(60));
        stream.write_all(b"b").await.expect("write");
        let waited = asked.elapsed();
        assert!(waited >= MAX_HOLD, "{waited:?}");
        assert!(waited < Duration::from_secs(10), "spun for {waited:?}");
    }
}

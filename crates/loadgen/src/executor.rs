//! The one request executor: a connection that sends a request and reads the whole answer.
//!
//! Each load-generator connection holds its own TCP connection (not a pooled client's; TLS
//! with ALPN for `https://`): HTTP/1.1 goes through the fast exchange of [`crate::h1`],
//! HTTP/2 (and HTTP/1.1 with `--std-client`) through hyper's client, so the number of
//! connections and the cost of (re)connecting are the generator's to control and to
//! count: every socket's connect time and TLS handshake time are recorded apart from the
//! requests' latency.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::spec::LoadSpec;

use meshload_process::ErrorKind;

/// What one request came to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exchange {
    /// When its first byte was written and its last byte read, at the socket (`None`
    /// when it failed before that).
    pub wire: Option<(Instant, Instant)>,
    /// HTTP status, or -1 when none arrived.
    pub code: i32,
    /// Why no status arrived.
    pub error: Option<ErrorKind>,
    /// Response size in bytes (head and body).
    pub size_bytes: u64,
    /// Response head size in bytes (status line and headers).
    pub header_bytes: u64,
}

impl Exchange {
    fn failed(kind: ErrorKind) -> Exchange {
        Exchange {
            wire: None,
            code: -1,
            error: Some(kind),
            size_bytes: 0,
            header_bytes: 0,
        }
    }
}

/// What every connection of a run sends.
#[derive(Debug)]
pub struct Target {
    addr: SocketAddr,
    /// The request as HTTP/1.1 sends it (a path, and `Host`).
    h1_request: Request<Full<Bytes>>,
    /// The request as HTTP/2 sends it (an absolute URI: `:authority` comes from it).
    h2_request: Request<Full<Bytes>>,
    /// The request as the fast HTTP/1.1 exchange writes it (`None`: hyper's client sends
    /// every request; see [`LoadSpec::fast_http1`]).
    fast_request: Option<crate::h1::Request>,
    /// h2c with prior knowledge on `http://`.
    h2: bool,
    tls: Option<crate::tls::Tls>,
    timeout: Duration,
}

impl Target {
    /// The request of `spec`, sent to `addr` (resolved once, before the run).
    pub fn new(spec: &LoadSpec, addr: SocketAddr) -> Target {
        let mut h2_request = Request::new(Full::new(spec.payload.clone()));
        *h2_request.method_mut() = spec.method.clone();
        *h2_request.headers_mut() = spec.headers.clone();
        *h2_request.uri_mut() = spec.uri.clone();
        let mut h1_request = copy(&h2_request);
        let path = spec.uri.path_and_query().map_or("/", |p| p.as_str());
        *h1_request.uri_mut() = path
            .parse::<Uri>()
            .unwrap_or_else(|_| Uri::from_static("/"));
        if !h1_request.headers().contains_key(HOST) {
            let host = spec.uri.authority().map_or("", |a| a.as_str());
            if let Ok(value) = HeaderValue::from_str(host) {
                h1_request.headers_mut().insert(HOST, value);
            }
        }
        // `--h2` speaks HTTP/2 on every socket; without it, only those ALPN gives h2 do.
        let fast_request = spec.fast_http1().then(|| {
            crate::h1::Request::new(&spec.method, path, h1_request.headers(), &spec.payload)
        });
        Target {
            addr,
            fast_request,
            h1_request,
            h2_request,
            h2: spec.h2,
            tls: spec.tls.clone(),
            timeout: spec.timeout,
        }
    }
}

fn copy(request: &Request<Full<Bytes>>) -> Request<Full<Bytes>> {
    let mut req = Request::new(request.body().clone());
    *req.method_mut() = request.method().clone();
    *req.uri_mut() = request.uri().clone();
    *req.headers_mut() = request.headers().clone();
    req
}

/// What opening sockets cost a run (Fortio reports connection times apart from request
/// latency too): connect and TLS handshake times, the protocols ALPN chose, and the
/// first certificate problem met.
#[derive(Debug, Clone)]
pub struct ConnectionStats {
    /// Sockets opened (Fortio's `SocketCount`).
    pub sockets: u64,
    /// TCP connect times, ns.
    pub connect: Histogram<u64>,
    /// TLS handshake times, ns (empty without TLS).
    pub tls_handshake: Histogram<u64>,
    /// Sockets on which ALPN chose h2.
    pub alpn_h2: u64,
    /// Sockets on which ALPN chose http/1.1.
    pub alpn_http1: u64,
    /// Sockets whose server chose no protocol (HTTP/1.1 is spoken, or h2 with `--h2`).
    pub alpn_none: u64,
    /// Why a certificate was refused, the first time one was.
    pub certificate_problem: Option<String>,
}

impl Default for ConnectionStats {
    fn default() -> Self {
        let histogram = || Histogram::new(3).expect("3 significant digits are valid");
        ConnectionStats {
            sockets: 0,
            connect: histogram(),
            tls_handshake: histogram(),
            alpn_h2: 0,
            alpn_http1: 0,
            alpn_none: 0,
            certificate_problem: None,
        }
    }
}

impl ConnectionStats {
    fn record(histogram: &mut Histogram<u64>, d: Duration) {
        let _ = histogram.record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1));
    }
}

/// How a connection sends: the fast HTTP/1.1 exchange on its own stream, or hyper's
/// client, whose I/O runs in a task of its own. (Polling hyper's HTTP/1.1 connection in
/// the requesting task instead was tried: at c=1 it moved the reported service time by
/// nothing measurable, and at c=50 it cost 10-20% of the maximum rate.)
enum Sender {
    Fast(FastConnection),
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// A connection of the fast HTTP/1.1 exchange: its stream and its read buffer.
struct FastConnection {
    io: Box<dyn Stream>,
    buf: Vec<u8>,
}

impl FastConnection {
    fn sender(io: Box<dyn Stream>) -> Sender {
        Sender::Fast(FastConnection {
            io,
            buf: Vec::new(),
        })
    }
}

/// The byte stream of a fast connection, plain or encrypted.
trait Stream: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {
    /// The connection cannot carry the next request: the server closed it while it was
    /// idle (see [`crate::wire::Stamped::idle_input`]), or sent what no request asked for.
    fn unusable(&self) -> bool;
}

impl Stream for crate::wire::Stamped {
    fn unusable(&self) -> bool {
        self.idle_input().is_some()
    }
}

impl Stream for tokio_rustls::client::TlsStream<crate::wire::Stamped> {
    /// Only a close: a TLS 1.3 server sends its session tickets after the handshake, and
    /// they wait in the socket until the first answer is read.
    fn unusable(&self) -> bool {
        self.get_ref().0.idle_input() == Some(0)
    }
}

/// What the sockets of every connection of a run cost, shared: sockets open rarely, and
/// one set of histograms for the run (rather than one per connection, which took 100 KiB
/// of heap per connection once a connect time was recorded) keeps memory flat in `c`.
pub type SharedStats = Arc<std::sync::Mutex<ConnectionStats>>;

/// The shared socket figures (a panicked connection task leaves them as they were).
pub fn lock_stats(stats: &SharedStats) -> std::sync::MutexGuard<'_, ConnectionStats> {
    stats
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One load-generator connection; reconnects after a failure.
pub struct Connection {
    target: Arc<Target>,
    sender: Option<Sender>,
    /// The current socket's write and read stamps.
    stamps: Arc<crate::wire::Stamps>,
    /// What the run's sockets cost so far.
    stats: SharedStats,
}

impl Connection {
    /// A connection that will open its socket on first use (or on [`Connection::warm_up`]),
    /// recording what its sockets cost in `stats`.
    pub fn new(target: Arc<Target>, stats: SharedStats) -> Connection {
        Connection {
            target,
            sender: None,
            stamps: crate::wire::Stamps::new(),
            stats,
        }
    }

    /// Records into the shared figures (never held across an await).
    fn with_stats(&self, f: impl FnOnce(&mut ConnectionStats)) {
        f(&mut lock_stats(&self.stats));
    }

    /// Whether a socket is open (warmed up, or left by the last request).
    pub fn is_open(&self) -> bool {
        self.sender.is_some()
    }

    /// Opens the socket ahead of the run so the first request does not pay for it;
    /// a failure here is left for the first request to report.
    pub async fn warm_up(&mut self) {
        let timeout = self.target.timeout;
        if let Ok(Ok(sender)) = tokio::time::timeout(timeout, self.connect()).await {
            self.sender = Some(sender);
        }
    }

    async fn connect(&mut self) -> Result<Sender, ErrorKind> {
        self.with_stats(|s| s.sockets += 1);
        let started = Instant::now();
        let stream = TcpStream::connect(self.target.addr)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionRefused => ErrorKind::Refused,
                _ => ErrorKind::Connect,
            })?;
        let took = started.elapsed();
        self.with_stats(|s| ConnectionStats::record(&mut s.connect, took));
        let _ = stream.set_nodelay(true);
        let stream = crate::wire::Stamped::new(stream, self.stamps.clone());
        let fast = self.target.fast_request.is_some();
        let Some(tls) = &self.target.tls else {
            if fast {
                return Ok(FastConnection::sender(Box::new(stream)));
            }
            return handshake(TokioIo::new(stream), self.target.h2).await;
        };
        let started = Instant::now();
        let done = match tls.handshake(stream).await {
            Ok(done) => done,
            Err(e) => {
                return Err(match crate::tls::certificate_problem(&e) {
                    Some(problem) => {
                        self.with_stats(|s| {
                            s.certificate_problem.get_or_insert(problem);
                        });
                        ErrorKind::Tls
                    }
                    None => match ErrorKind::of_io(&e) {
                        ErrorKind::Other => ErrorKind::Tls,
                        kind => kind,
                    },
                });
            }
        };
        let took = started.elapsed();
        self.with_stats(|s| {
            ConnectionStats::record(&mut s.tls_handshake, took);
            let chosen = match done.alpn.as_deref() {
                Some(b"h2") => &mut s.alpn_h2,
                Some(_) => &mut s.alpn_http1,
                None => &mut s.alpn_none,
            };
            *chosen += 1;
        });
        // `--h2` forces HTTP/2 whatever ALPN said (a server may still accept its preface).
        let h2 = self.target.h2 || done.alpn.as_deref() == Some(b"h2");
        if fast && !h2 {
            return Ok(FastConnection::sender(Box::new(done.stream)));
        }
        handshake(TokioIo::new(done.stream), h2).await
    }

    /// Sends one request and reads the whole response, within the timeout. With `due`,
    /// the request is made ready at once but its first byte is written no earlier than
    /// `due` (a paced request released a little ahead of its time).
    pub async fn send(&mut self, due: Option<Instant>) -> Exchange {
        let timeout = self.target.timeout;
        match tokio::time::timeout(timeout, self.exchange(due)).await {
            Ok(Ok(mut exchange)) => {
                exchange.wire = self.stamps.exchange();
                exchange
            }
            Ok(Err(kind)) => {
                self.sender = None;
                Exchange::failed(kind)
            }
            Err(_) => {
                // The connection's state is unknown after a timeout: start afresh.
                self.sender = None;
                Exchange::failed(ErrorKind::Timeout)
            }
        }
    }

    async fn exchange(&mut self, due: Option<Instant>) -> Result<Exchange, ErrorKind> {
        let ready = match &mut self.sender {
            Some(Sender::Fast(f)) => !f.io.unusable(),
            Some(Sender::H1(s)) => s.ready().await.is_ok(),
            Some(Sender::H2(s)) => s.ready().await.is_ok(),
            None => false,
        };
        if !ready {
            // Boxed: connecting (a TLS handshake's state is kilobytes) is rare, and held
            // inline it made every request's future 9 KiB, copied several times per
            // request (two thirds of the generator's instructions, under callgrind).
            self.sender = Some(Box::pin(self.connect()).await?);
        }
        // From here on, the socket's first write is this request's.
        self.stamps.reset();
        if let Some(due) = due {
            self.stamps.hold_until(due);
        }
        let target = &self.target;
        let (answer, reusable) = match self.sender.as_mut().expect("connected above") {
            Sender::Fast(f) => {
                let request = target.fast_request.as_ref().expect("a fast target");
                let answer = crate::h1::exchange(&mut *f.io, &mut f.buf, request).await?;
                let exchange = Exchange {
                    wire: None,
                    code: i32::from(answer.code),
                    error: None,
                    size_bytes: answer.size_bytes,
                    header_bytes: answer.header_bytes,
                };
                (exchange, answer.reusable)
            }
            // Boxed: hyper's request future is large, and held inline it would make the
            // fast exchange's future (copied several times per request) as large.
            Sender::H1(s) => {
                let request = copy(&target.h1_request);
                (
                    Box::pin(hyper_exchange(s.send_request(request))).await?,
                    true,
                )
            }
            Sender::H2(s) => {
                let request = copy(&target.h2_request);
                (
                    Box::pin(hyper_exchange(s.send_request(request))).await?,
                    true,
                )
            }
        };
        if !reusable {
            self.sender = None;
        }
        Ok(answer)
    }
}

/// A request through hyper's client: its response, read whole.
async fn hyper_exchange(
    sent: impl Future<Output = hyper::Result<http::Response<hyper::body::Incoming>>>,
) -> Result<Exchange, ErrorKind> {
    let response = sent.await.map_err(|e| ErrorKind::of_error(&e))?;
    read_response(response).await
}

/// The status and sizes of a response, its whole body read and counted but not kept (as
/// the fast client does): an endless or huge body costs one frame of memory, and ends
/// with the request's timeout.
async fn read_response(
    response: http::Response<hyper::body::Incoming>,
) -> Result<Exchange, ErrorKind> {
    let header_bytes = head_size(&response);
    let code = i32::from(response.status().as_u16());
    let mut body = response.into_body();
    let mut body_bytes = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ErrorKind::of_error(&e))?;
        if let Some(data) = frame.data_ref() {
            body_bytes += data.len() as u64;
        }
    }
    Ok(Exchange {
        wire: None,
        code,
        error: None,
        size_bytes: header_bytes + body_bytes,
        header_bytes,
    })
}

/// The HTTP/1.1 or HTTP/2 handshake over a connected (and maybe encrypted) stream.
async fn handshake<T>(io: TokioIo<T>, h2: bool) -> Result<Sender, ErrorKind>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    if h2 {
        let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| ErrorKind::of_error(&e))?;
        tokio::spawn(conn);
        Ok(Sender::H2(sender))
    } else {
        // One flat buffer per request rather than vectored writes: the head and a load
        // test's (small) body in one `write` cost about 4% less CPU per request here
        // (`/usr/bin/time` over 300,000 requests, 6 of 7 interleaved pairs); hyper copies
        // the body into it, which a large payload pays for.
        let (sender, conn) = http1::Builder::new()
            .writev(false)
            .handshake(io)
            .await
            .map_err(|e| ErrorKind::of_error(&e))?;
        tokio::spawn(conn);
        Ok(Sender::H1(sender))
    }
}

/// Bytes of the status line and headers as HTTP/1.1 puts them on the wire.
fn head_size<B>(response: &http::Response<B>) -> u64 {
    let status_line = "HTTP/1.1 200 OK\r\n".len() as u64;
    let headers: usize = response
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    status_line + headers as u64 + 2
}

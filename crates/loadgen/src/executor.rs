//! The one request executor: a connection that sends a request and reads the whole answer.
//!
//! Each load-generator connection holds its own TCP connection (HTTP/1.1 or h2c handshake
//! done here, not by a pooled client), so the number of connections and the cost of
//! (re)connecting are the generator's to control and to count.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::spec::LoadSpec;

/// Why a request got no HTTP status (counted as code -1, as Fortio does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// The connection was refused.
    Refused,
    /// Connecting failed otherwise (unreachable, no route, ...).
    Connect,
    /// No complete answer within the timeout.
    Timeout,
    /// The connection was reset or closed before the answer was complete.
    Reset,
    /// The peer spoke something that is not HTTP.
    Protocol,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// The name used in results and summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Refused => "refused",
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Other => "other",
        }
    }

    fn of_io(err: &std::io::Error) -> ErrorKind {
        use std::io::ErrorKind as Io;
        match err.kind() {
            Io::ConnectionRefused => ErrorKind::Refused,
            Io::ConnectionReset | Io::ConnectionAborted | Io::BrokenPipe | Io::UnexpectedEof => {
                ErrorKind::Reset
            }
            Io::TimedOut => ErrorKind::Timeout,
            _ => ErrorKind::Other,
        }
    }

    fn of_hyper(err: &hyper::Error) -> ErrorKind {
        let mut source = std::error::Error::source(err);
        while let Some(e) = source {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return ErrorKind::of_io(io);
            }
            source = e.source();
        }
        if err.is_incomplete_message() || err.is_closed() || err.is_canceled() {
            ErrorKind::Reset
        } else if err.is_parse() {
            ErrorKind::Protocol
        } else {
            ErrorKind::Other
        }
    }
}

/// What one request came to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exchange {
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
    request: Request<Full<Bytes>>,
    h2: bool,
    timeout: Duration,
}

impl Target {
    /// The request of `spec`, sent to `addr` (resolved once, before the run).
    pub fn new(spec: &LoadSpec, addr: SocketAddr) -> Target {
        let mut request = Request::new(Full::new(spec.payload.clone()));
        *request.method_mut() = spec.method.clone();
        *request.headers_mut() = spec.headers.clone();
        if spec.h2 {
            // HTTP/2 takes the authority from an absolute URI.
            *request.uri_mut() = spec.uri.clone();
        } else {
            let path = spec.uri.path_and_query().map_or("/", |p| p.as_str());
            *request.uri_mut() = path
                .parse::<Uri>()
                .unwrap_or_else(|_| Uri::from_static("/"));
            if !request.headers().contains_key(HOST) {
                let host = spec.uri.authority().map_or("", |a| a.as_str());
                if let Ok(value) = HeaderValue::from_str(host) {
                    request.headers_mut().insert(HOST, value);
                }
            }
        }
        Target {
            addr,
            request,
            h2: spec.h2,
            timeout: spec.timeout,
        }
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let mut req = Request::new(self.request.body().clone());
        *req.method_mut() = self.request.method().clone();
        *req.uri_mut() = self.request.uri().clone();
        *req.headers_mut() = self.request.headers().clone();
        req
    }
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

/// One load-generator connection; reconnects after a failure.
pub struct Connection {
    target: Arc<Target>,
    sender: Option<Sender>,
    /// Sockets opened so far (Fortio's `SocketCount`).
    pub sockets: u64,
}

impl Connection {
    /// A connection that will open its socket on first use (or on [`Connection::warm_up`]).
    pub fn new(target: Arc<Target>) -> Connection {
        Connection {
            target,
            sender: None,
            sockets: 0,
        }
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
        self.sockets += 1;
        let stream = TcpStream::connect(self.target.addr)
            .await
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::ConnectionRefused => ErrorKind::Refused,
                _ => ErrorKind::Connect,
            })?;
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(stream);
        if self.target.h2 {
            let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| ErrorKind::of_hyper(&e))?;
            tokio::spawn(conn);
            Ok(Sender::H2(sender))
        } else {
            let (sender, conn) = http1::handshake(io)
                .await
                .map_err(|e| ErrorKind::of_hyper(&e))?;
            tokio::spawn(conn);
            Ok(Sender::H1(sender))
        }
    }

    /// Sends one request and reads the whole response, within the timeout.
    pub async fn send(&mut self) -> Exchange {
        let timeout = self.target.timeout;
        match tokio::time::timeout(timeout, self.exchange()).await {
            Ok(Ok(exchange)) => exchange,
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

    async fn exchange(&mut self) -> Result<Exchange, ErrorKind> {
        let ready = match &mut self.sender {
            Some(Sender::H1(s)) => s.ready().await.is_ok(),
            Some(Sender::H2(s)) => s.ready().await.is_ok(),
            None => false,
        };
        if !ready {
            self.sender = Some(self.connect().await?);
        }
        let request = self.target.request();
        let response = match self.sender.as_mut().expect("connected above") {
            Sender::H1(s) => s.send_request(request).await,
            Sender::H2(s) => s.send_request(request).await,
        }
        .map_err(|e| ErrorKind::of_hyper(&e))?;
        let header_bytes = head_size(&response);
        let code = i32::from(response.status().as_u16());
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| ErrorKind::of_hyper(&e))?;
        let body_bytes = body.to_bytes().len() as u64;
        Ok(Exchange {
            code,
            error: None,
            size_bytes: header_bytes + body_bytes,
            header_bytes,
        })
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

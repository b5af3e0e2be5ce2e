//! Accepting connections: HTTP/1.1 and h2c on one port, bounded, with a graceful drain.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::config::{Limits, NodeConfig};
pub use crate::connections::TrackedBody as RequestBody;
use crate::connections::{Conn, Registry, Watched};

use crate::handler::Node;

/// Errors that stop a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
}

/// A bound node, ready to serve.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    node: Arc<Node>,
}

impl Server {
    /// Binds the listen address; the node does not serve until [`Server::run`].
    pub async fn bind(config: NodeConfig) -> Result<Server, NodeError> {
        let addr = config.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| NodeError::Bind { addr, source })?;
        Ok(Server {
            listener,
            node: Arc::new(Node::new(config)),
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes, with the protections of [`serve_guarded`].
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let limits = self.node.limits().clone();
        let node = self.node;
        serve_guarded(self.listener, &limits, shutdown, move |req| {
            let node = node.clone();
            async move { node.handle(req).await }
        })
        .await;
    }
}

/// Serves `handle` on `listener` with a node's protections until `shutdown` completes,
/// then stops accepting and drains in-flight requests for at most the drain timeout:
/// the node's server, and meshload's REST and results servers too.
///
/// Connections are bounded by the limits: a connection that has not sent a whole request
/// head within the header-read timeout, or stays idle between requests for the idle
/// timeout, is closed, and at the connection limit the longest-idle connection (or one
/// stalled on a request body) makes way for a new one (see the `connections` module).
pub async fn serve_guarded<H, F, B>(
    listener: TcpListener,
    limits: &Limits,
    shutdown: impl Future<Output = ()>,
    handle: H,
) where
    H: Fn(http::Request<RequestBody>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = http::Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let limits = limits.clone();
    let builder = connection_builder(&limits);
    let registry = Registry::new();
    let (stopping, _) = watch::channel(false);
    let limit = limits.max_connections.max(1);
    tokio::pin!(shutdown);
    loop {
        // A client first, then room for it: a connection makes way only when someone is
        // waiting for its slot (made before, room would close a client that had just
        // connected and not yet sent its request). With every connection busy, the new one
        // waits here, accepted but not read, as it would in the backlog.
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        tokio::select! {
            () = registry.room(limit) => {}
            () = &mut shutdown => break,
        }
        let _ = stream.set_nodelay(true);
        let conn = registry.open();
        tokio::spawn(serve_connection(
            stream,
            conn,
            &builder,
            handle.clone(),
            limits.clone(),
            stopping.subscribe(),
        ));
    }
    drop(listener);
    tracing::info!("shutting down: draining in-flight requests");
    let _ = stopping.send(true);
    tokio::select! {
        () = registry.drained() => tracing::info!("drained"),
        () = tokio::time::sleep(limits.drain_timeout) => {
            tracing::warn!(timeout = ?limits.drain_timeout, "drain timed out; closing");
        }
    }
}

/// Serves one accepted connection with `handle` until it ends, or until its guards or the
/// server's stop close it: a connection closed by a stop gets the drain timeout to finish
/// what it is answering, one closed by a guard a short grace, and one with nothing to
/// finish (silent, part of a head, stalled on a body) none.
fn serve_connection<H, F, B>(
    stream: TcpStream,
    conn: Arc<Conn>,
    builder: &auto::Builder<TokioExecutor>,
    handle: H,
    limits: Limits,
    mut stopping: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static
where
    H: Fn(http::Request<RequestBody>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = http::Response<B>> + Send + 'static,
    B: hyper::body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = Watched::new(stream, conn.clone());
    let served = conn.clone();
    let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let request = served.start_request();
        let req = req.map(|body| RequestBody::new(body, &served));
        let response = handle(req);
        async move {
            // In flight until its body is sent, not only until its head is: a body that
            // streams for minutes (a REST run) keeps its connection busy, never idle.
            let response = response.await.map(|body| Answer {
                body,
                _request: request,
            });
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    let http = builder
        .serve_connection(TokioIo::new(stream), service)
        .into_owned();
    async move {
        tokio::pin!(http);
        let reason = loop {
            match watch_connection(&conn, &limits, &mut stopping, http.as_mut()).await {
                Watch::Ended(result) => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "connection ended with an error");
                    }
                    return;
                }
                Watch::Close(reason) => break reason,
                Watch::Continue => {}
            }
        };
        tracing::debug!(?reason, "closing connection");
        if reason != Close::Stop && (!conn.may_be_answering() || conn.is_stalled()) {
            return;
        }
        http.as_mut().graceful_shutdown();
        let grace = if reason == Close::Stop {
            limits.drain_timeout
        } else {
            CLOSE_GRACE
        };
        let _ = tokio::time::timeout(grace, http).await;
    }
}

/// An answer's body, holding its request in flight on the connection until it is dropped
/// (sent whole, or the connection gone).
struct Answer<B> {
    body: B,
    _request: crate::connections::RequestGuard,
}

impl<B: hyper::body::Body + Unpin> hyper::body::Body for Answer<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<B::Data>, B::Error>>> {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// How long a connection asked to close may take to finish the response it is writing.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// Why a connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Close {
    /// The server is stopping: in-flight requests get the drain timeout.
    Stop,
    /// Its header-read or idle timeout passed.
    Timeout,
    /// It was idle, silent or stalled at the connection limit: a new client needs its slot.
    MakeWay,
}

/// What happened while a connection was watched.
enum Watch<E> {
    /// The connection ended by itself.
    Ended(Result<(), E>),
    /// The connection is to be closed, for this reason.
    Close(Close),
    /// Nothing to do yet: watch again.
    Continue,
}

/// Waits for the connection to end, for its deadline (header-read or idle timeout), for
/// a request to make way, or for the node to stop.
async fn watch_connection<F, E>(
    conn: &Conn,
    limits: &Limits,
    stopping: &mut watch::Receiver<bool>,
    http: std::pin::Pin<&mut F>,
) -> Watch<E>
where
    F: Future<Output = Result<(), E>>,
{
    let deadline = conn.deadline(limits.header_read_timeout, limits.idle_timeout);
    let timer =
        tokio::time::sleep_until(deadline.map_or_else(far_future, tokio::time::Instant::from_std));
    tokio::select! {
        result = http => Watch::Ended(result),
        () = conn.woken() => {
            if conn.should_make_way() {
                Watch::Close(Close::MakeWay)
            } else {
                Watch::Continue
            }
        }
        () = timer => {
            let expired = conn
                .deadline(limits.header_read_timeout, limits.idle_timeout)
                .is_some_and(|d| d <= Instant::now());
            if expired { Watch::Close(Close::Timeout) } else { Watch::Continue }
        }
        changed = stopping.changed() => {
            if changed.is_err() || *stopping.borrow() { Watch::Close(Close::Stop) } else { Watch::Continue }
        }
    }
}

fn far_future() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(86_400 * 365)
}

fn connection_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let max_header_bytes = limits.max_header_bytes;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        // The connection watcher enforces the header-read timeout, which hyper would also
        // apply to idle keep-alive connections.
        .header_read_timeout(None)
        // hyper refuses buffers under 8 KiB; the buffer bounds the request head.
        .max_buf_size(max_header_bytes.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(1024);
    builder
}

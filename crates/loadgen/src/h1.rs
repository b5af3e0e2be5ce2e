//! The fast HTTP/1.1 exchange: a request encoded once and written as-is, and an answer
//! parsed in place (with `httparse`, the parser hyper itself uses) and counted rather
//! than collected.
//!
//! A load generator sends the same request over and over and keeps nothing of the answer
//! but its status and size. hyper's client is general: every request is built, queued to
//! the connection's own task and encoded; every answer's headers go into a new header map
//! and its body into buffers handed back across tasks. Under callgrind that was about
//! 18,000 instructions per request here, and it left meshload at 0.93-0.95x wrk's maximum
//! rate. Fortio has the same two clients for the same reason: its default "fast client"
//! and, with `-stdclient`, Go's own. So has meshload: `--std-client` (and every HTTP/2
//! connection) goes through hyper.
//!
//! The framing follows RFC 9112, section 6.3: no body for `HEAD`, 1xx, 204 and 304; a
//! chunked transfer coding; `Content-Length`; otherwise the body ends when the server
//! closes. Interim (1xx) answers are skipped. A connection is kept only when both sides
//! want it kept and nothing was left over after the answer.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, Method};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use meshload_process::ErrorKind;

/// Most header lines accepted in one answer (hyper's default too).
const MAX_HEADERS: usize = 100;

/// Longest answer head accepted, and longest chunk-size line or trailer section (hyper's
/// default read buffer limit is about 400 KiB).
const MAX_HEAD: usize = 400 * 1024;

/// Room a connection's read buffer starts with, and is cut back to after a larger answer
/// (so memory stays flat in the number of connections).
const BUFFER: usize = 8 * 1024;

/// Most room asked for at once while reading a long body.
const BODY_READ: usize = 64 * 1024;

/// A request as its bytes go on the wire.
#[derive(Debug, Clone)]
pub struct Request {
    bytes: Bytes,
    /// `HEAD`: the answer has no body whatever its headers say.
    head: bool,
    /// The request asked the server to close the connection after answering.
    close: bool,
}

impl Request {
    /// Encodes `method path HTTP/1.1`, the headers (`Host` among them) and the body, with
    /// a `Content-Length` unless the headers give one. The body is written as it is, so
    /// the headers must not ask for a transfer coding: such requests go through hyper's
    /// client, which encodes them ([`crate::LoadSpec::fast_http1`]).
    pub fn new(method: &Method, path: &str, headers: &HeaderMap, body: &Bytes) -> Request {
        debug_assert!(!headers.contains_key(TRANSFER_ENCODING));
        let mut out = BytesMut::with_capacity(64 + path.len() + body.len() + 32 * headers.len());
        out.put_slice(method.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(path.as_bytes());
        out.put_slice(b" HTTP/1.1\r\n");
        for (name, value) in headers {
            out.put_slice(name.as_str().as_bytes());
            out.put_slice(b": ");
            out.put_slice(value.as_bytes());
            out.put_slice(b"\r\n");
        }
        let wants_length =
            !body.is_empty() || matches!(*method, Method::POST | Method::PUT | Method::PATCH);
        if wants_length && !headers.contains_key(CONTENT_LENGTH) {
            out.put_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
        }
        out.put_slice(b"\r\n");
        out.put_slice(body);
        let close = headers
            .get_all(CONNECTION)
            .iter()
            .any(|v| has_token(v.as_bytes(), b"close"));
        Request {
            bytes: out.freeze(),
            head: *method == Method::HEAD,
            close,
        }
    }
}

/// What an answer came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    /// The final status.
    pub code: u16,
    /// Bytes of the answer as framed on the wire (interim answers, head and body).
    pub size_bytes: u64,
    /// Bytes of the final answer's head (status line, headers and the empty line).
    pub header_bytes: u64,
    /// The connection may carry the next request.
    pub reusable: bool,
}

/// How the body of an answer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

/// The parts of an answer's head that matter here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    len: usize,
    code: u16,
    body: Body,
    /// The server will close (or asked to): the connection is not reused.
    close: bool,
}

/// A token of a comma-separated header value, compared as ASCII case-insensitively.
fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Parses an answer head at the start of `bytes`: `None` while it is incomplete.
fn parse_head(bytes: &[u8], request_head: bool) -> Result<Option<Head>, ErrorKind> {
    // Uninitialised: filling 100 empty headers first cost more than parsing a short head.
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        bytes,
        &mut headers,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if bytes.len() <= MAX_HEAD => return Ok(None),
        Ok(httparse::Status::Partial) | Err(_) => return Err(ErrorKind::Protocol),
    };
    let code = response.code.ok_or(ErrorKind::Protocol)?;
    let mut length: Option<u64> = None;
    let mut coded = false;
    let mut chunked = false;
    let mut close = false;
    let mut keep_alive = false;
    for header in response.headers.iter() {
        let name = header.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let value = header.value.trim_ascii();
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
                return Err(ErrorKind::Protocol);
            }
            let n: u64 = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or(ErrorKind::Protocol)?;
            if length.is_some_and(|l| l != n) {
                return Err(ErrorKind::Protocol);
            }
            length = Some(n);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            coded = true;
            // Only the last coding says how the message ends.
            chunked = header
                .value
                .rsplit(|&b| b == b',')
                .next()
                .is_some_and(|t| t.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"connection") {
            close |= has_token(header.value, b"close");
            keep_alive |= has_token(header.value, b"keep-alive");
        }
    }
    // HTTP/1.0 closes unless it says otherwise.
    if response.version == Some(0) && !keep_alive {
        close = true;
    }
    let body = if request_head || (100..200).contains(&code) || code == 204 || code == 304 {
        Body::Empty
    } else if coded {
        // A transfer coding other than a final chunked one: the body ends at the close.
        if chunked {
            Body::Chunked
        } else {
            Body::UntilClose
        }
    } else if let Some(n) = length {
        Body::Length(n)
    } else {
        Body::UntilClose
    };
    close |= body == Body::UntilClose;
    Ok(Some(Head {
        len,
        code,
        body,
        close,
    }))
}

/// A connection's read side: its buffer, what of it is consumed, and what the current
/// answer took so far.
struct Reader<'a, S: ?Sized> {
    io: &'a mut S,
    buf: &'a mut Vec<u8>,
    start: usize,
    consumed: u64,
}

impl<S: AsyncRead + Unpin + ?Sized> Reader<'_, S> {
    /// The bytes read and not consumed yet.
    fn available(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        self.consumed += n as u64;
    }

    /// Reads more, with room for at least `want` bytes; `false` at the end of the stream.
    async fn fill(&mut self, want: usize) -> Result<bool, ErrorKind> {
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.reserve(want.clamp(1, BODY_READ));
        let n = self
            .io
            .read_buf(self.buf)
            .await
            .map_err(|e| ErrorKind::of_io(&e))?;
        Ok(n > 0)
    }

    /// Reads more, or fails: the stream ended (cleanly) inside an answer.
    async fn more(&mut self, want: usize) -> Result<(), ErrorKind> {
        if self.fill(want).await? {
            Ok(())
        } else {
            Err(ErrorKind::Closed)
        }
    }

    /// Skips `n` bytes of body.
    async fn skip(&mut self, mut n: u64) -> Result<(), ErrorKind> {
        loop {
            let here = (self.available().len() as u64).min(n);
            self.consume(here as usize);
            n -= here;
            if n == 0 {
                return Ok(());
            }
            self.more(usize::try_from(n).unwrap_or(usize::MAX)).await?;
        }
    }

    /// Reads the next answer head, skipping interim (1xx) answers.
    async fn head(&mut self, request_head: bool) -> Result<Head, ErrorKind> {
        loop {
            match parse_head(self.available(), request_head)? {
                Some(head) if head.code == 101 => return Err(ErrorKind::Protocol),
                Some(head) if (100..200).contains(&head.code) => self.consume(head.len),
                Some(head) => {
                    self.consume(head.len);
                    return Ok(head);
                }
                None => self.more(BUFFER).await?,
            }
        }
    }

    /// Reads a chunked body to its end, trailers included.
    async fn chunked(&mut self) -> Result<(), ErrorKind> {
        loop {
            let size = loop {
                match httparse::parse_chunk_size(self.available()) {
                    Ok(httparse::Status::Complete((len, size))) => {
                        self.consume(len);
                        break size;
                    }
                    Ok(httparse::Status::Partial) if self.available().len() <= MAX_HEAD => {
                        self.more(BUFFER).await?;
                    }
                    _ => return Err(ErrorKind::Protocol),
                }
            };
            if size == 0 {
                return self.trailers().await;
            }
            self.skip(size).await?;
            while self.available().len() < 2 {
                self.more(2).await?;
            }
            if &self.available()[..2] != b"\r\n" {
                return Err(ErrorKind::Protocol);
            }
            self.consume(2);
        }
    }

    /// The trailer section after the last chunk, up to its empty line.
    async fn trailers(&mut self) -> Result<(), ErrorKind> {
        loop {
            match trailers_len(self.available())? {
                Some(len) => {
                    self.consume(len);
                    return Ok(());
                }
                None => self.more(BUFFER).await?,
            }
        }
    }
}

/// The length of a trailer section at the start of `bytes`, empty line included: `None`
/// while it is incomplete. (Not inlined in an `async fn`: its fields array, held across
/// an await, would make every request's future kilobytes larger.)
fn trailers_len(bytes: &[u8]) -> Result<Option<usize>, ErrorKind> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(bytes, &mut fields) {
        Ok(httparse::Status::Complete((len, _))) => Ok(Some(len)),
        Ok(httparse::Status::Partial) if bytes.len() <= MAX_HEAD => Ok(None),
        _ => Err(ErrorKind::Protocol),
    }
}

/// Writes `request` and reads its whole answer. `buf` is the connection's read buffer,
/// kept between requests.
pub async fn exchange<S>(
    io: &mut S,
    buf: &mut Vec<u8>,
    request: &Request,
) -> Result<Answer, ErrorKind>
where
    S: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    io.write_all(&request.bytes)
        .await
        .map_err(|e| ErrorKind::of_io(&e))?;
    io.flush().await.map_err(|e| ErrorKind::of_io(&e))?;
    buf.clear();
    let mut reader = Reader {
        io,
        buf,
        start: 0,
        consumed: 0,
    };
    let head = reader.head(request.head).await?;
    match head.body {
        Body::Empty => {}
        Body::Length(n) => reader.skip(n).await?,
        Body::Chunked => reader.chunked().await?,
        Body::UntilClose => loop {
            let here = reader.available().len();
            reader.consume(here);
            if !reader.fill(BODY_READ).await? {
                break;
            }
        },
    }
    // Anything after the answer is nothing this connection can account for.
    let leftover = !reader.available().is_empty();
    let answer = Answer {
        code: head.code,
        size_bytes: reader.consumed,
        header_bytes: head.len as u64,
        reusable: !head.close && !request.close && !leftover,
    };
    if buf.capacity() > BUFFER {
        *buf = Vec::with_capacity(BUFFER);
    }
    Ok(answer)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use tokio::io::AsyncWriteExt;

    fn get() -> Request {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("example"));
        Request::new(&Method::GET, "/x?y=1", &headers, &Bytes::new())
    }

    /// Serves `answer` (in pieces of `piece` bytes, to cut it everywhere) to one request
    /// and returns what the exchange made of it, with what the server read.
    async fn answer_with(
        request: &Request,
        answer: &[u8],
        piece: usize,
    ) -> Result<Answer, ErrorKind> {
        let (mut client, mut server) = tokio::io::duplex(1 << 20);
        let answer = answer.to_vec();
        let expected = request.bytes.len();
        let server = tokio::spawn(async move {
            let mut got = vec![0; expected];
            server.read_exact(&mut got).await.expect("the request");
            for part in answer.chunks(piece) {
                server.write_all(part).await.expect("answer");
                tokio::task::yield_now().await;
            }
            // The server closes once it has answered.
            got
        });
        let mut buf = Vec::new();
        let result = exchange(&mut client, &mut buf, request).await;
        let got = server.await.expect("server");
        assert_eq!(got, request.bytes.to_vec());
        result
    }

    async fn answer(answer: &[u8]) -> Result<Answer, ErrorKind> {
        // Whole, and cut into 1-byte and 7-byte pieces: all three read alike.
        let whole = answer_with(&get(), answer, usize::MAX).await;
        for piece in [1, 7] {
            assert_eq!(
                answer_with(&get(), answer, piece).await,
                whole,
                "in {piece}-byte pieces"
            );
        }
        whole
    }

    #[test]
    fn requests_are_encoded_once_with_their_framing() {
        let mut headers = HeaderMap::new();
        headers.insert("host", HeaderValue::from_static("h:1"));
        headers.insert("x-a", HeaderValue::from_static("1"));
        let get = Request::new(&Method::GET, "/", &headers, &Bytes::new());
        assert_eq!(
            &get.bytes[..],
            b"GET / HTTP/1.1\r\nhost: h:1\r\nx-a: 1\r\n\r\n"
        );
        let post = Request::new(&Method::POST, "/p", &headers, &Bytes::from("abc"));
        assert_eq!(
            &post.bytes[..],
            b"POST /p HTTP/1.1\r\nhost: h:1\r\nx-a: 1\r\ncontent-length: 3\r\n\r\nabc"
        );
        let empty_post = Request::new(&Method::POST, "/", &HeaderMap::new(), &Bytes::new());
        assert_eq!(
            &empty_post.bytes[..],
            b"POST / HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
        );
        headers.insert("connection", HeaderValue::from_static("Close"));
        assert!(Request::new(&Method::GET, "/", &headers, &Bytes::new()).close);
    }

    #[tokio::test]
    async fn a_length_framed_answer_is_counted_and_the_connection_kept() {
        let text = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\nhello";
        let a = answer(text).await.unwrap();
        assert_eq!(
            a,
            Answer {
                code: 200,
                size_bytes: text.len() as u64,
                header_bytes: (text.len() - 5) as u64,
                reusable: true
            }
        );
    }

    #[tokio::test]
    async fn a_chunked_answer_is_read_to_its_trailers() {
        let text = b"HTTP/1.1 201 Created\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
            4;ext=1\r\nwiki\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: 1\r\n\r\n";
        let a = answer(text).await.unwrap();
        assert_eq!(
            (a.code, a.size_bytes, a.reusable),
            (201, text.len() as u64, true)
        );
        let bad = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nwikiXX0\r\n\r\n";
        assert_eq!(answer(bad).await, Err(ErrorKind::Protocol));
    }

    #[tokio::test]
    async fn an_answer_without_length_ends_with_the_connection() {
        let text = b"HTTP/1.1 200 OK\r\n\r\nuntil the end";
        let a = answer(text).await.unwrap();
        assert_eq!((a.size_bytes, a.reusable), (text.len() as u64, false));
        // A transfer coding that is not chunked last ends at the close too.
        let text = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\nraw";
        assert!(!answer(text).await.unwrap().reusable);
    }

    #[tokio::test]
    async fn bodiless_answers_and_interim_ones() {
        for code in ["204 No Content", "304 Not Modified"] {
            let text = format!("HTTP/1.1 {code}\r\nContent-Length: 10\r\n\r\n");
            let a = answer(text.as_bytes()).await.unwrap();
            assert_eq!(
                (a.size_bytes, a.reusable),
                (text.len() as u64, true),
                "{code}"
            );
        }
        let head = Request::new(&Method::HEAD, "/", &HeaderMap::new(), &Bytes::new());
        let text = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n";
        let a = answer_with(&head, text, usize::MAX).await.unwrap();
        assert_eq!(
            (a.code, a.size_bytes, a.reusable),
            (200, text.len() as u64, true)
        );
        let text = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
        let a = answer(text).await.unwrap();
        assert_eq!(
            (a.code, a.size_bytes, a.header_bytes),
            (200, text.len() as u64, 38)
        );
        let upgrade = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n";
        assert_eq!(answer(upgrade).await, Err(ErrorKind::Protocol));
    }

    #[tokio::test]
    async fn connections_the_server_closes_are_not_kept() {
        let closing =
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n";
        assert!(!answer(closing).await.unwrap().reusable);
        let old = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n";
        assert!(!answer(old).await.unwrap().reusable);
        let old_kept = b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n";
        assert!(answer(old_kept).await.unwrap().reusable);
        let extra = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nab";
        assert!(
            !answer_with(&get(), extra, usize::MAX)
                .await
                .unwrap()
                .reusable
        );
    }

    #[tokio::test]
    async fn broken_answers_are_errors_of_their_kind() {
        assert_eq!(
            answer(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").await,
            Err(ErrorKind::Closed)
        );
        assert_eq!(
            answer(b"HTTP/1.1 200 OK\r\nCont").await,
            Err(ErrorKind::Closed)
        );
        assert_eq!(answer(b"").await, Err(ErrorKind::Closed));
        assert_eq!(
            answer(b"SSH-2.0-OpenSSH\r\n\r\n").await,
            Err(ErrorKind::Protocol)
        );
        let two_lengths = b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab";
        assert_eq!(answer(two_lengths).await, Err(ErrorKind::Protocol));
        let signed = b"HTTP/1.1 200 OK\r\nContent-Length: +1\r\n\r\na";
        assert_eq!(answer(signed).await, Err(ErrorKind::Protocol));
        let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
        huge.extend(std::iter::repeat_n(b'a', MAX_HEAD + 10));
        assert_eq!(
            answer_with(&get(), &huge, 4096).await,
            Err(ErrorKind::Protocol)
        );
    }

    #[tokio::test]
    async fn a_long_body_leaves_the_buffer_small() {
        let body = vec![b'x'; 3 * BODY_READ + 17];
        let mut text =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        let head = text.len();
        text.extend(&body);
        let (mut client, mut server) = tokio::io::duplex(1 << 16);
        let request = get();
        let len = request.bytes.len();
        let serve = tokio::spawn(async move {
            let mut got = vec![0; len];
            server.read_exact(&mut got).await.unwrap();
            server.write_all(&text).await.unwrap();
            server
        });
        let mut buf = Vec::new();
        let a = exchange(&mut client, &mut buf, &request).await.unwrap();
        let _server = serve.await.unwrap();
        assert_eq!(a.size_bytes, (head + body.len()) as u64);
        assert!(buf.capacity() <= BUFFER, "{}", buf.capacity());
    }
}

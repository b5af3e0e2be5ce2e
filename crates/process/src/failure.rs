//! Why an HTTP exchange got no answer, in one vocabulary: the load generator counts its
//! failed requests by these kinds (`ErrorKinds` in results) and a node labels its failed
//! backend calls with them (`meshload_node_backend_calls_total{code=...}`).

use std::fmt;

/// Why a request got no HTTP status (counted as code -1, as Fortio does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ErrorKind {
    /// The connection was refused.
    Refused,
    /// Connecting failed otherwise (unreachable, no route, ...).
    Connect,
    /// No complete answer within the timeout.
    Timeout,
    /// The connection was reset (RST) before the answer was complete.
    Reset,
    /// The server closed the connection cleanly (end of stream) before the answer was
    /// complete: a body cut short, or no answer at all.
    Closed,
    /// The peer spoke something that is not HTTP.
    Protocol,
    /// The TLS handshake failed (a refused certificate, or the server refused us).
    Tls,
    /// Anything else.
    Other,
}

impl ErrorKind {
    /// The name used in results, summaries and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Refused => "refused",
            ErrorKind::Connect => "connect",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Reset => "reset",
            ErrorKind::Closed => "closed",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Tls => "tls",
            ErrorKind::Other => "other",
        }
    }

    /// The kind of an I/O error.
    pub fn of_io(err: &std::io::Error) -> ErrorKind {
        use std::io::ErrorKind as Io;
        match err.kind() {
            Io::ConnectionRefused => ErrorKind::Refused,
            Io::ConnectionReset | Io::ConnectionAborted | Io::BrokenPipe => ErrorKind::Reset,
            Io::UnexpectedEof => ErrorKind::Closed,
            Io::TimedOut => ErrorKind::Timeout,
            _ => ErrorKind::Other,
        }
    }

    /// The kind of a failed exchange, from the first I/O error in its chain of causes, else
    /// from what hyper says of it.
    pub fn of_error(err: &(dyn std::error::Error + 'static)) -> ErrorKind {
        let mut hyper = None;
        let mut current = Some(err);
        while let Some(e) = current {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                return ErrorKind::of_io(io);
            }
            hyper = hyper.or_else(|| e.downcast_ref::<hyper::Error>());
            current = e.source();
        }
        match hyper {
            Some(h) if h.is_incomplete_message() => ErrorKind::Closed,
            Some(h) if h.is_closed() || h.is_canceled() => ErrorKind::Reset,
            Some(h) if h.is_parse() => ErrorKind::Protocol,
            _ => ErrorKind::Other,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Call(std::io::Error);

    impl fmt::Display for Call {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "backend call")
        }
    }

    impl std::error::Error for Call {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn io_errors_are_classified_through_their_chain() {
        let io = |k| std::io::Error::from(k);
        use std::io::ErrorKind as Io;
        for (kind, expected) in [
            (Io::ConnectionRefused, ErrorKind::Refused),
            (Io::ConnectionReset, ErrorKind::Reset),
            (Io::BrokenPipe, ErrorKind::Reset),
            (Io::UnexpectedEof, ErrorKind::Closed),
            (Io::TimedOut, ErrorKind::Timeout),
            (Io::PermissionDenied, ErrorKind::Other),
        ] {
            assert_eq!(ErrorKind::of_error(&io(kind)), expected, "{kind:?}");
            assert_eq!(ErrorKind::of_error(&Call(io(kind))), expected, "{kind:?}");
        }
        assert_eq!(ErrorKind::of_error(&std::fmt::Error), ErrorKind::Other);
    }
}

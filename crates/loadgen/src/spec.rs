//! What a load test asks for, validated before anything is sent.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, Method, Uri};
use meshload_config::limits;

/// The options of one load test as a user gives them (flags, a config file, a REST call).
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Target URL (`http://host:port/path`).
    pub url: String,
    /// Total requests per second over all connections; 0 means as fast as possible.
    pub qps: f64,
    /// Connections, each sending one request at a time.
    pub connections: usize,
    /// How long to send; `None` with `requests` unset means until stopped.
    pub duration: Option<Duration>,
    /// Exact number of requests (takes precedence over `duration`, as in Fortio).
    pub requests: Option<u64>,
    /// Percentiles to report, in percent (50, 99.9, ...).
    pub percentiles: Vec<f64>,
    /// Stagger connections evenly within one interval.
    pub uniform: bool,
    /// Move each due time by up to ±10% of the interval.
    pub jitter: bool,
    /// Do not send faster than the rate to catch up after falling behind.
    pub nocatchup: bool,
    /// Extra request headers, `Name: value`.
    pub headers: Vec<String>,
    /// Request body; a body makes the request a POST.
    pub payload: Option<Bytes>,
    /// Timeout of one request (connect, response and body).
    pub timeout: Duration,
    /// Free-form labels stored in the result.
    pub labels: String,
    /// HTTP/2: with prior knowledge (h2c) on `http://`; the only protocol offered by ALPN
    /// on `https://` (where ALPN otherwise picks h2 or http/1.1).
    pub h2: bool,
    /// How an `https://` target is trusted.
    pub tls: crate::tls::TlsOptions,
    /// Pace with sleeps alone: no spinning before due times (saves about 4% of a core at
    /// 1,000 req/s; requests then leave about 100 µs late at the median).
    pub coarse_pacing: bool,
    /// Send HTTP/1.1 with hyper's general client rather than the fast exchange of
    /// [`crate::h1`] (Fortio's `-stdclient`). HTTP/2 always goes through hyper.
    pub std_client: bool,
    /// Connect to these addresses instead of resolving the URL's host (connection `i`
    /// uses address `i mod n`), keeping the URL's authority as `Host`: how the local
    /// backend spreads load over a service's replicas.
    pub connect_to: Vec<std::net::SocketAddr>,
}

impl Default for LoadOptions {
    /// Fortio's defaults: 8 requests per second over 4 connections for 5 seconds.
    fn default() -> Self {
        LoadOptions {
            url: String::new(),
            qps: 8.0,
            connections: 4,
            duration: Some(Duration::from_secs(5)),
            requests: None,
            percentiles: DEFAULT_PERCENTILES.to_vec(),
            uniform: false,
            jitter: false,
            nocatchup: false,
            headers: Vec::new(),
            payload: None,
            timeout: DEFAULT_TIMEOUT,
            labels: String::new(),
            h2: false,
            tls: crate::tls::TlsOptions::default(),
            coarse_pacing: false,
            std_client: false,
            connect_to: Vec::new(),
        }
    }
}

/// How long one request may take when no timeout is given (Fortio's default is 3 s too).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);

/// Percentiles reported when none are asked for.
pub const DEFAULT_PERCENTILES: [f64; 5] = [50.0, 75.0, 90.0, 99.0, 99.9];

/// A problem with one option.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{option}: {problem}")]
pub struct SpecError {
    /// The option at fault, as the user named it.
    pub option: &'static str,
    /// What is wrong, quoting the bad value.
    pub problem: String,
}

/// Every problem found in a set of options.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecErrors(pub Vec<SpecError>);

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        write!(f, "{}", parts.join("; "))
    }
}

impl std::error::Error for SpecErrors {}

/// When a run stops by itself.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stop {
    /// After exactly this many requests.
    Requests(u64),
    /// When this much time has passed since the start.
    Duration(Duration),
    /// Only when stopped from outside.
    Never,
}

/// A validated load test: the only form the generator accepts.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Target URL.
    pub uri: Uri,
    /// `host:port` to connect to.
    pub authority: String,
    /// Requests per second in total; `None` is as fast as possible.
    pub qps: Option<f64>,
    /// Connections.
    pub connections: usize,
    /// When the run ends.
    pub stop: Stop,
    /// Percentiles to report, in percent.
    pub percentiles: Vec<f64>,
    /// Stagger connections.
    pub uniform: bool,
    /// Jitter due times.
    pub jitter: bool,
    /// Skip missed slots instead of catching up.
    pub nocatchup: bool,
    /// GET, or POST with a payload.
    pub method: Method,
    /// Headers sent with every request (Host included for HTTP/1.1).
    pub headers: HeaderMap,
    /// Request body.
    pub payload: Bytes,
    /// Per-request timeout.
    pub timeout: Duration,
    /// Labels stored in the result.
    pub labels: String,
    /// HTTP/2 only (h2c on `http://`).
    pub h2: bool,
    /// The TLS client of an `https://` target.
    pub tls: Option<crate::tls::Tls>,
    /// The options as given, kept for the result.
    pub options: LoadOptions,
}

impl LoadSpec {
    /// Validates options, reporting every problem at once. Long on purpose: one
    /// independent check per option, read top to bottom.
    pub fn try_new(options: LoadOptions) -> Result<LoadSpec, SpecErrors> {
        let mut errors = Vec::new();
        let mut bad =
            |option: &'static str, problem: String| errors.push(SpecError { option, problem });
        let uri = match parse_url(&options.url) {
            Ok(uri) => Some(uri),
            Err(problem) => {
                bad("url", problem);
                None
            }
        };
        // The bounds are the config's and the CLI's too (`meshload_config::limits`).
        if let Err(problem) = limits::qps(options.qps) {
            bad("qps", problem);
        }
        if let Err(problem) = limits::connections(options.connections as u64) {
            bad("connections", problem);
        }
        if let Some(Err(problem)) = options.requests.map(limits::requests) {
            bad("requests", problem);
        }
        if let Some(Err(problem)) = options.duration.map(limits::duration) {
            bad("duration", problem);
        }
        if let Err(problem) = limits::timeout(options.timeout) {
            bad("timeout", problem);
        }
        let payload_len = options.payload.as_ref().map_or(0, |p| p.len() as u64);
        if let Err(problem) = limits::payload(payload_len) {
            bad("payload", problem);
        }
        if options.percentiles.len() > limits::MAX_PERCENTILES {
            bad(
                "percentiles",
                format!(
                    "{} percentiles is more than {}",
                    options.percentiles.len(),
                    limits::MAX_PERCENTILES
                ),
            );
        }
        for &p in &options.percentiles {
            if !(p > 0.0 && p <= 100.0) {
                bad(
                    "percentiles",
                    format!("{p} is not a percentile (0 < p <= 100)"),
                );
            }
        }
        if options.headers.len() > limits::MAX_HEADERS {
            bad(
                "header",
                format!(
                    "{} headers is more than {}",
                    options.headers.len(),
                    limits::MAX_HEADERS
                ),
            );
        }
        let mut headers = HeaderMap::new();
        for line in &options.headers {
            match parse_header(line) {
                Ok((name, value)) => {
                    headers.append(name, value);
                }
                Err(problem) => bad("header", problem),
            }
        }
        let tls = match &uri {
            Some(u) if u.scheme_str() == Some("https") => {
                match crate::tls::Tls::new(u.host().unwrap_or_default(), &options.tls, options.h2) {
                    Ok(tls) => Some(tls),
                    Err(e) => {
                        bad("cacert", e.to_string());
                        None
                    }
                }
            }
            _ => None,
        };
        if !errors.is_empty() {
            return Err(SpecErrors(errors));
        }
        let uri = uri.expect("a URL error was reported above");
        let authority = authority_of(&uri);
        let stop = match (options.requests, options.duration) {
            (Some(n), _) => Stop::Requests(n),
            (None, Some(d)) if !d.is_zero() => Stop::Duration(d),
            (None, _) => Stop::Never,
        };
        let payload = options.payload.clone().unwrap_or_default();
        let method = if options.payload.is_some() {
            Method::POST
        } else {
            Method::GET
        };
        Ok(LoadSpec {
            uri,
            authority,
            qps: (options.qps > 0.0).then_some(options.qps),
            connections: options.connections,
            stop,
            percentiles: options.percentiles.clone(),
            uniform: options.uniform,
            jitter: options.jitter,
            nocatchup: options.nocatchup,
            method,
            headers,
            payload,
            timeout: options.timeout,
            labels: options.labels.clone(),
            h2: options.h2,
            tls,
            options,
        })
    }
}

impl LoadSpec {
    /// What the options ask for that cannot all be used, one line each: connections
    /// that the rate (or the request count) leaves idle most of the time.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let c = self.connections;
        if let Some(qps) = self.qps
            && c as f64 > qps
        {
            out.push(format!(
                "c={c} is more connections than {qps} req/s keeps busy: each sends once every {:.2}s (they are staggered, so the rate holds)",
                c as f64 / qps
            ));
        }
        if let Stop::Requests(n) = self.stop
            && (c as u64) > n
        {
            out.push(format!(
                "c={c} is more connections than the {n} requests: only {n} send"
            ));
        }
        if self.transfer_coded() && !self.hyper_asked_for() {
            out.push(
                "a Transfer-Encoding header: HTTP/1.1 goes through hyper's client (as with \
                 --std-client), which encodes the body, rather than the fast one"
                    .into(),
            );
        }
        out
    }

    /// HTTP/1.1 goes through the fast exchange of [`crate::h1`] rather than hyper's
    /// client: not with `--h2` or `--std-client`, nor for a request with a
    /// `Transfer-Encoding` header (hyper's client encodes its body; the fast one writes
    /// bodies as they are).
    pub fn fast_http1(&self) -> bool {
        !self.hyper_asked_for() && !self.transfer_coded()
    }

    /// `--h2` or `--std-client`: hyper's client for every request.
    fn hyper_asked_for(&self) -> bool {
        self.h2 || self.options.std_client
    }

    fn transfer_coded(&self) -> bool {
        self.headers.contains_key(http::header::TRANSFER_ENCODING)
    }
}

fn parse_url(url: &str) -> Result<Uri, String> {
    let uri: Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL ({e})"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("{url:?} is not an http:// or https:// URL")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    Ok(uri)
}

fn authority_of(uri: &Uri) -> String {
    let host = uri.host().unwrap_or_default();
    let default = if uri.scheme_str() == Some("https") {
        443
    } else {
        80
    };
    format!("{host}:{}", uri.port_u16().unwrap_or(default))
}

fn parse_header(line: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = line
        .split_once(':')
        .ok_or_else(|| format!("{line:?} is not `Name: value`"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("{line:?} has an invalid header name"))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("{line:?} has an invalid header value"))?;
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(url: &str) -> LoadOptions {
        LoadOptions {
            url: url.into(),
            ..LoadOptions::default()
        }
    }

    #[test]
    fn a_transfer_coding_is_said_to_use_hypers_client() {
        let mut o = opts("http://h:1/");
        o.headers = vec!["Transfer-Encoding: chunked".into()];
        let said = LoadSpec::try_new(o.clone()).expect("valid").warnings();
        assert!(
            said.iter().any(|w| w.contains("hyper's client")),
            "{said:?}"
        );
        assert!(!LoadSpec::try_new(o.clone()).expect("valid").fast_http1());
        o.std_client = true;
        assert!(LoadSpec::try_new(o).expect("valid").warnings().is_empty());
        let plain = LoadSpec::try_new(opts("http://h:1/")).expect("valid");
        assert!(plain.fast_http1());
    }

    #[test]
    fn valid_options_become_a_spec() {
        let mut o = opts("http://127.0.0.1:8080/x?y=1");
        o.headers = vec!["X-Test: 1".into()];
        o.requests = Some(10);
        let spec = LoadSpec::try_new(o).expect("valid");
        assert_eq!(spec.authority, "127.0.0.1:8080");
        assert_eq!(spec.stop, Stop::Requests(10));
        assert_eq!(spec.headers["x-test"], "1");
        assert_eq!(spec.method, Method::GET);
        assert_eq!(
            LoadSpec::try_new(opts("http://h/"))
                .expect("valid")
                .authority,
            "h:80"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut o = opts("ftp://x/");
        o.qps = -1.0;
        o.connections = 0;
        o.headers = vec!["nocolon".into()];
        o.percentiles = vec![150.0];
        let errors = LoadSpec::try_new(o).expect_err("invalid").0;
        let options: Vec<&str> = errors.iter().map(|e| e.option).collect();
        assert_eq!(
            options,
            ["url", "qps", "connections", "percentiles", "header"]
        );
    }

    #[test]
    fn zero_duration_runs_until_stopped_and_qps_zero_is_max() {
        let mut o = opts("http://127.0.0.1:1/");
        o.duration = Some(Duration::ZERO);
        o.qps = 0.0;
        let spec = LoadSpec::try_new(o).expect("valid");
        assert_eq!(spec.stop, Stop::Never);
        assert_eq!(spec.qps, None);
    }
}

//! HTTPS for the load generator: rustls with the aws-lc-rs provider (the graph's only
//! one), trusting the system's roots, a `--cacert` file or PEM text (what a REST call
//! gives: a server never reads a file that a request names), or nothing at all with
//! `--insecure`; ALPN offers h2 and http/1.1 (only h2 with `--h2`). A certificate the
//! client refuses is one line naming the host and the reason, and ends the test before
//! it starts: it is not a slow request.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How a test trusts its HTTPS target.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsOptions {
    /// Trust these CA certificates (instead of the system's roots).
    pub ca: Option<Ca>,
    /// Accept any certificate (curl's and Fortio's `-k`).
    pub insecure: bool,
}

/// Where the CA certificates a test trusts come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Ca {
    /// A PEM file the user named on the command line or in a config.
    File(PathBuf),
    /// PEM text (a REST call's `cacert`, or the file a server was started with).
    Pem(String),
}

/// The largest CA bundle read or accepted (the system's whole bundle is about 220 KB).
pub const MAX_CA_BYTES: usize = 1024 * 1024;

impl Ca {
    /// The PEM text: a file is read up to [`MAX_CA_BYTES`], never further (`/dev/zero`).
    pub fn pem(&self) -> Result<std::borrow::Cow<'_, str>, TlsError> {
        match self {
            Ca::Pem(text) if text.len() > MAX_CA_BYTES => Err(TlsError::CaPem(format!(
                "{} bytes is more than the most accepted, {MAX_CA_BYTES}",
                text.len()
            ))),
            Ca::Pem(text) => Ok(text.into()),
            Ca::File(path) => {
                use std::io::Read as _;
                let bad = |reason: String| TlsError::CaFile {
                    path: path.display().to_string(),
                    reason,
                };
                let mut bytes = Vec::new();
                std::fs::File::open(path)
                    .and_then(|f| f.take(MAX_CA_BYTES as u64 + 1).read_to_end(&mut bytes))
                    .map_err(|e| bad(e.to_string()))?;
                if bytes.len() > MAX_CA_BYTES {
                    return Err(bad(format!("larger than {MAX_CA_BYTES} bytes")));
                }
                String::from_utf8(bytes)
                    .map(Into::into)
                    .map_err(|_| bad("not PEM text".into()))
            }
        }
    }

    fn error(&self, reason: String) -> TlsError {
        match self {
            Ca::File(path) => TlsError::CaFile {
                path: path.display().to_string(),
                reason,
            },
            Ca::Pem(_) => TlsError::CaPem(reason),
        }
    }
}

/// Why HTTPS cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file cannot be read.
    #[error("--cacert {path}: {reason}")]
    CaFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The CA's PEM text is not usable.
    #[error("the PEM text: {0}")]
    CaPem(String),
    /// The host is not a name a certificate can be for.
    #[error("{0:?} is not a TLS server name")]
    ServerName(String),
    /// rustls refused the configuration.
    #[error("cannot set up TLS")]
    Config(#[source] rustls::Error),
}

/// The TLS client of one test.
#[derive(Clone)]
pub struct Tls {
    connector: TlsConnector,
    server_name: ServerName<'static>,
    /// The host the certificate must name.
    pub host: String,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("host", &self.host).finish()
    }
}

/// What a TLS handshake agreed on.
pub struct Handshake {
    /// The encrypted stream.
    pub stream: TlsStream<crate::wire::Stamped>,
    /// The protocol ALPN chose (`h2`, `http/1.1`), if the server chose one.
    pub alpn: Option<Vec<u8>>,
}

impl Tls {
    /// The client for `host`, trusting what `options` say; `h2_only` offers only h2.
    pub fn new(host: &str, options: &TlsOptions, h2_only: bool) -> Result<Tls, TlsError> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(TlsError::Config)?;
        let mut config = if options.insecure {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny(provider)))
                .with_no_client_auth()
        } else {
            builder
                .with_root_certificates(roots(options.ca.as_ref())?)
                .with_no_client_auth()
        };
        config.alpn_protocols = if h2_only {
            vec![b"h2".to_vec()]
        } else {
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let server_name = ServerName::try_from(bare.to_string())
            .map_err(|_| TlsError::ServerName(host.to_string()))?;
        Ok(Tls {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
            host: bare.to_string(),
        })
    }

    /// The handshake over a connected socket.
    pub async fn handshake(&self, tcp: crate::wire::Stamped) -> std::io::Result<Handshake> {
        let stream = self
            .connector
            .connect(self.server_name.clone(), tcp)
            .await?;
        let alpn = stream.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        Ok(Handshake { stream, alpn })
    }
}

/// The system's roots, or the certificates of `ca`.
fn roots(ca: Option<&Ca>) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match ca {
        Some(ca) => {
            let pem = ca.pem()?;
            let certs: Vec<CertificateDer<'static>> =
                rustls_pki_types::pem::PemObject::pem_slice_iter(pem.as_bytes())
                    .collect::<Result<_, _>>()
                    .map_err(|e| ca.error(e.to_string()))?;
            if certs.is_empty() {
                return Err(ca.error("no PEM certificate in it".into()));
            }
            for cert in certs {
                store.add(cert).map_err(|e| ca.error(e.to_string()))?;
            }
        }
        None => {
            // Roots the system cannot parse are skipped, as browsers and curl skip them.
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = store.add(cert);
            }
        }
    }
    Ok(store)
}

/// The reason a certificate was refused, in words (`expired`, `unknown issuer`, ...),
/// when `err` is a certificate error.
pub fn certificate_problem(err: &std::io::Error) -> Option<String> {
    let inner = err.get_ref()?.downcast_ref::<rustls::Error>()?;
    let why = match inner {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired",
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "not valid yet"
            }
            CertificateError::UnknownIssuer => {
                "unknown issuer (trust its CA with --cacert FILE, or accept any certificate with -k)"
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "wrong name (the certificate is for another host)"
            }
            CertificateError::Revoked => "revoked",
            CertificateError::BadSignature => "bad signature",
            CertificateError::BadEncoding => "badly encoded",
            other => return Some(format!("{other:?}")),
        },
        rustls::Error::NoCertificatesPresented => "the server presented no certificate",
        rustls::Error::AlertReceived(alert) => {
            return Some(format!("the server refused: {alert:?}"));
        }
        _ => return None,
    };
    Some(why.to_string())
}

/// `--insecure`: every certificate is accepted; signatures are still checked with the
/// provider's algorithms so the handshake itself stays well-formed.
#[derive(Debug)]
struct AcceptAny(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

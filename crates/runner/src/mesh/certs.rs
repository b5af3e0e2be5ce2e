//! A run's own certificate authority (rcgen): a CA made for the run and one certificate
//! per service, naming it (`service-<node>.<ns>.svc.cluster.local`), for TLS between
//! sidecars. The files live in the run's temporary folder and go with it.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use super::envoy::TlsFiles;

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// rcgen refused.
    #[error("cannot make a certificate")]
    Make(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("cannot write {path}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The run's CA, written to `dir/ca.pem`.
pub struct RunCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
    dir: PathBuf,
    ca_file: PathBuf,
}

impl std::fmt::Debug for RunCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunCa").field("dir", &self.dir).finish()
    }
}

/// Writes a certificate or key readable by this user alone (0600), and only as a new file:
/// one already there (planted in the folder) is an error, never overwritten or trusted.
fn write(path: &Path, text: &str) -> Result<(), CertError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .map_err(|source| CertError::Write {
            path: path.display().to_string(),
            source,
        })
}

impl RunCa {
    /// A new CA whose files go into `dir` (which must exist).
    pub fn new(dir: &Path) -> Result<RunCa, CertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "meshload run CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let ca_file = dir.join("ca.pem");
        write(&ca_file, &issuer.pem())?;
        Ok(RunCa {
            issuer,
            dir: dir.to_path_buf(),
            ca_file,
        })
    }

    /// The CA certificate's file.
    pub fn ca_file(&self) -> &Path {
        &self.ca_file
    }

    /// A certificate for `dns_name` (server and client use), as `<stem>.pem` and
    /// `<stem>-key.pem`.
    pub fn issue(&self, stem: &str, dns_name: &str) -> Result<TlsFiles, CertError> {
        self.issue_for(stem, dns_name, &[])
    }

    /// The same, naming the workloads it speaks for too (`spiffe://...` URIs, as Istio's
    /// identities are): a node proxy's.
    pub fn issue_for(
        &self,
        stem: &str,
        dns_name: &str,
        uris: &[String],
    ) -> Result<TlsFiles, CertError> {
        let mut params = CertificateParams::new(vec![dns_name.to_string()])?;
        for uri in uris {
            params
                .subject_alt_names
                .push(rcgen::SanType::URI(uri.as_str().try_into()?));
        }
        params.distinguished_name.push(DnType::CommonName, dns_name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let files = TlsFiles {
            ca: self.ca_file.clone(),
            cert: self.dir.join(format!("{stem}.pem")),
            key: self.dir.join(format!("{stem}-key.pem")),
        };
        write(&files.cert, &cert.pem())?;
        write(&files.key, &key.serialize_pem())?;
        Ok(files)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    #[test]
    fn keys_are_private_and_a_planted_file_is_never_used() {
        let folder = tempfile::tempdir().expect("a folder");
        let ca = RunCa::new(folder.path()).expect("a CA");
        let files = ca.issue("node-a", "node-a.perf").expect("issued");
        for path in [ca.ca_file(), files.cert.as_path(), files.key.as_path()] {
            let mode = std::fs::metadata(path).expect("there").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        }
        // Planted before the sidecar's own is written: refused, not trusted.
        std::fs::write(folder.path().join("node-b-key.pem"), "planted").expect("write");
        assert!(ca.issue("node-b", "node-b.perf").is_err());
    }
}

//! TLS client configuration with rustls (ring provider) and the webpki roots.
//!
//! Certificates are always verified: against the webpki roots plus any CA files given.
//! There is deliberately no option to skip verification.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore};

use crate::error::{shown_path, Error};

/// TLS settings of a client.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// PEM files with CA certificates to trust besides the webpki roots. Default: none.
    pub ca_files: Vec<PathBuf>,
    /// PEM file with the client certificate chain, for mutual TLS. Default: none.
    pub client_cert: Option<PathBuf>,
    /// PEM file with the client's private key, for mutual TLS. Default: none.
    pub client_key: Option<PathBuf>,
    /// Start TLS before the server's INFO (nats-server `handshake_first`). Default: false.
    pub tls_first: bool,
    /// Require TLS even for `nats://` URLs. Default: false.
    pub required: bool,
    /// The name to verify in the server's certificate, instead of the URL's host.
    /// Default: the URL's host.
    pub server_name: Option<String>,
}

/// A whole bundle of public CAs is about 200 KiB.
const MAX_PEM_FILE: u64 = 16 << 20;

fn read_pem(path: &Path) -> Result<Vec<u8>, Error> {
    crate::files::read_bounded(path, MAX_PEM_FILE)
        .map_err(|why| Error::Tls(format!("{}: {why}", shown_path(path))))
}

fn pem_error(path: &Path, e: &rustls::pki_types::pem::Error) -> Error {
    // The file was read already (`read_pem`): what is left is its content.
    let why = match e {
        rustls::pki_types::pem::Error::NoItemsFound => "no PEM item found".to_owned(),
        other => format!("not valid PEM ({other:?})"),
    };
    Error::Tls(format!("{}: {why}", shown_path(path)))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, &e))?;
    if certs.is_empty() {
        return Err(Error::Tls(format!(
            "{}: no certificate found",
            shown_path(path)
        )));
    }
    Ok(certs)
}

/// Builds the rustls configuration for `opts`.
pub fn client_config(opts: &TlsOptions) -> Result<Arc<ClientConfig>, Error> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    for path in &opts.ca_files {
        for cert in load_certs(path)? {
            roots.add(cert).map_err(|e| {
                Error::Tls(format!(
                    "{}: unusable CA certificate: {}",
                    shown_path(path),
                    describe_error(&e)
                ))
            })?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(describe_error(&e)))?
        .with_root_certificates(roots);
    let config = match (&opts.client_cert, &opts.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = load_certs(cert)?;
            let key_der =
                PrivateKeyDer::from_pem_slice(&read_pem(key)?).map_err(|e| pem_error(key, &e))?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                Error::Tls(format!(
                    "client certificate {} and key {} do not fit together: {}",
                    shown_path(cert),
                    shown_path(key),
                    describe_error(&e)
                ))
            })?
        }
        (Some(_), None) => {
            return Err(Error::Tls(
                "a client certificate was given without its key".into(),
            ))
        }
        (None, Some(_)) => {
            return Err(Error::Tls(
                "a client key was given without its certificate".into(),
            ))
        }
    };
    Ok(Arc::new(config))
}

/// The server name to verify: a DNS name or an IP address (IPv6 without brackets).
pub fn server_name(host: &str) -> Result<ServerName<'static>, Error> {
    ServerName::try_from(host.to_owned())
        .map_err(|_| Error::Tls(format!("{host:?} is not a valid server name for TLS")))
}

/// A readable reason for a rustls error.
pub fn describe_error(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(c) => {
            let why = match c {
                CertificateError::UnknownIssuer => {
                    "signed by an unknown issuer (is the CA in the trusted roots?)".to_owned()
                }
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    format!("not valid for the server's name ({c:?})")
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "expired".to_owned()
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "not valid yet".to_owned()
                }
                CertificateError::BadSignature => "bad signature".to_owned(),
                CertificateError::Revoked => "revoked".to_owned(),
                other => format!("{other:?}"),
            };
            format!("invalid server certificate: {why}")
        }
        rustls::Error::AlertReceived(alert) => {
            format!("the server refused the handshake (alert: {alert:?})")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_builds() {
        client_config(&TlsOptions::default()).unwrap();
    }

    #[test]
    fn missing_and_bad_files_are_named() {
        let opts = TlsOptions {
            ca_files: vec![PathBuf::from("/nonexistent/ca.pem")],
            ..TlsOptions::default()
        };
        let e = client_config(&opts).unwrap_err();
        assert_eq!(e.to_string(), "tls: /nonexistent/ca.pem: file not found");

        let dir = std::env::temp_dir().join(format!("arn-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let garbage = dir.join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let opts = TlsOptions {
            ca_files: vec![garbage.clone()],
            ..TlsOptions::default()
        };
        let e = client_config(&opts).unwrap_err().to_string();
        assert!(
            e.contains("garbage.pem") && e.contains("no certificate found"),
            "{e}"
        );
        let opts = TlsOptions {
            client_cert: Some(garbage),
            ..TlsOptions::default()
        };
        let e = client_config(&opts).unwrap_err().to_string();
        assert_eq!(e, "tls: a client certificate was given without its key");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn server_names() {
        server_name("localhost").unwrap();
        server_name("127.0.0.1").unwrap();
        server_name("::1").unwrap();
        assert!(server_name("bad name!").is_err());
    }
}

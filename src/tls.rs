//! TLS client configuration with rustls (ring provider) and the webpki roots.
//!
//! Certificates are always verified: against the webpki roots, the operating system's CA
//! certificates (unless [`TlsOptions::system_roots`] is off) and any CA files given.
//! There is deliberately no option to skip verification.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{CertificateError, ClientConfig, RootCertStore};

use crate::error::{shown_path, Error};

/// TLS settings of a client.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// PEM files with CA certificates to trust besides the webpki roots (and the system's).
    /// Default: none.
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
    /// Trust the operating system's CA certificates too, found where OpenSSL (and so
    /// Python's `ssl.create_default_context`) finds them: the file `SSL_CERT_FILE` names,
    /// or else the first of the usual bundles that exists (`/etc/ssl/certs/ca-certificates.crt`,
    /// `/etc/pki/tls/certs/ca-bundle.crt`, ...), and the files in the directories of
    /// `SSL_CERT_DIR`. They are read at each connect; one that cannot be read or parsed is
    /// passed over, as OpenSSL does. Default: true.
    pub system_roots: bool,
}

impl Default for TlsOptions {
    fn default() -> Self {
        TlsOptions {
            ca_files: Vec::new(),
            client_cert: None,
            client_key: None,
            tls_first: false,
            required: false,
            server_name: None,
            system_roots: true,
        }
    }
}

/// Where Linux distributions and the BSDs keep the bundle of the system's CA certificates
/// (Debian, Ubuntu, Arch, Alpine; Fedora and RHEL; openSUSE; RHEL 7 and later; Alpine, the
/// BSDs and macOS).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
    "/etc/ssl/cert.pem",
];

/// The files holding the system's CA certificates, given the environment (`var`) and which
/// paths exist: `SSL_CERT_FILE`, else the first bundle of [`SYSTEM_BUNDLES`] that exists; then
/// every entry of each directory `SSL_CERT_DIR` lists (colon-separated), in name order.
fn system_root_files(
    var: impl Fn(&str) -> Option<OsString>,
    exists: impl Fn(&Path) -> bool,
    list_dir: impl Fn(&Path) -> Vec<PathBuf>,
) -> Vec<PathBuf> {
    let set = |name: &str| var(name).filter(|v| !v.is_empty());
    let mut files: Vec<PathBuf> = match set("SSL_CERT_FILE") {
        Some(file) => vec![PathBuf::from(file)],
        None => SYSTEM_BUNDLES
            .iter()
            .map(PathBuf::from)
            .find(|p| exists(p))
            .into_iter()
            .collect(),
    };
    if let Some(dirs) = set("SSL_CERT_DIR") {
        for dir in std::env::split_paths(&dirs) {
            let mut entries = list_dir(&dir);
            entries.sort();
            files.extend(entries);
        }
    }
    files
}

fn list_dir(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// Adds the system's CA certificates to `roots`; what cannot be read or parsed is passed
/// over (a directory also holds other files). Returns how many were added.
fn add_system_roots(roots: &mut RootCertStore) -> usize {
    let files = system_root_files(|name| std::env::var_os(name), Path::exists, list_dir);
    let mut added = 0;
    for path in files {
        let Ok(pem) = read_pem(&path) else {
            continue;
        };
        // A malformed item ends the file: what follows it cannot be told apart from it.
        let certs = CertificateDer::pem_slice_iter(&pem).map_while(Result::ok);
        added += roots.add_parsable_certificates(certs).0;
    }
    added
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
    if opts.system_roots {
        add_system_roots(&mut roots);
    }
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
    fn system_roots_are_found_where_openssl_looks() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let only = |wanted: &'static str| move |p: &Path| p == Path::new(wanted);
        let no_dir = |_: &Path| Vec::new();
        let paths = |v: &[&str]| v.iter().map(PathBuf::from).collect::<Vec<_>>();

        // The first bundle that exists.
        let found = system_root_files(env(&[]), only("/etc/ssl/ca-bundle.pem"), no_dir);
        assert_eq!(found, paths(&["/etc/ssl/ca-bundle.pem"]));
        assert!(system_root_files(env(&[]), |_| false, no_dir).is_empty());
        // SSL_CERT_FILE wins, existing or not (OpenSSL looks nowhere else); empty is unset.
        let found = system_root_files(env(&[("SSL_CERT_FILE", "/x/ca.pem")]), |_| true, no_dir);
        assert_eq!(found, paths(&["/x/ca.pem"]));
        let found = system_root_files(env(&[("SSL_CERT_FILE", "")]), |_| true, no_dir);
        assert_eq!(found, paths(&["/etc/ssl/certs/ca-certificates.crt"]));
        // Every entry of each SSL_CERT_DIR directory, in name order, after the file.
        let listing = |dir: &Path| match dir.to_str() {
            Some("/d1") => paths(&["/d1/b.pem", "/d1/a.pem"]),
            Some("/d2") => paths(&["/d2/c.pem"]),
            _ => Vec::new(),
        };
        let found = system_root_files(env(&[("SSL_CERT_DIR", "/d1:/d2")]), |_| false, listing);
        assert_eq!(found, paths(&["/d1/a.pem", "/d1/b.pem", "/d2/c.pem"]));
    }

    #[test]
    fn server_names() {
        server_name("localhost").unwrap();
        server_name("127.0.0.1").unwrap();
        server_name("::1").unwrap();
        assert!(server_name("bad name!").is_err());
    }
}

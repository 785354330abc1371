//! TLS client configuration with rustls (ring provider) and the webpki roots.
//!
//! Certificates are always verified: against the webpki roots, the operating system's CA
//! certificates (unless [`TlsOptions::system_roots`] is off) and any CA files given.
//! There is deliberately no option to skip verification.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, TrustAnchor};
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
    /// Trust the operating system's CA certificates too, as OpenSSL (and so Python's
    /// `ssl.create_default_context`) finds them: the file `SSL_CERT_FILE` names, or else
    /// the first of the distributions' bundles that exists
    /// (`/etc/ssl/certs/ca-certificates.crt`, `/etc/pki/tls/certs/ca-bundle.crt`, ...),
    /// and the hash-named files (`5ad8a5d6.0`, as `c_rehash` makes them) of the directories
    /// `SSL_CERT_DIR` lists. Read once, and again when one of these changes; what cannot
    /// be read or parsed is passed over, as OpenSSL does. Default: true.
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

/// Where the system's CA certificates are, given the environment (`var`) and which paths
/// exist: the file `SSL_CERT_FILE` names, else the first bundle of [`SYSTEM_BUNDLES`] that
/// exists; and the directories `SSL_CERT_DIR` lists (colon-separated).
fn system_sources(
    var: impl Fn(&str) -> Option<OsString>,
    exists: impl Fn(&Path) -> bool,
) -> (Option<PathBuf>, Vec<PathBuf>) {
    let set = |name: &str| var(name).filter(|v| !v.is_empty());
    let file = match set("SSL_CERT_FILE") {
        Some(file) => Some(PathBuf::from(file)),
        None => SYSTEM_BUNDLES.iter().map(PathBuf::from).find(|p| exists(p)),
    };
    let dirs = set("SSL_CERT_DIR")
        .map(|dirs| std::env::split_paths(&dirs).collect())
        .unwrap_or_default();
    (file, dirs)
}

/// A name OpenSSL looks up in a certificate directory: the subject hash and a sequence
/// number, `5ad8a5d6.0` (`c_rehash` makes them; `.r0` are revocation lists).
fn is_hash_name(name: &str) -> bool {
    match name.split_once('.') {
        Some((hash, n)) => {
            hash.len() == 8
                && hash.bytes().all(|b| b.is_ascii_hexdigit())
                && !n.is_empty()
                && n.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

/// The hash-named entries of `dir`, in name order (none if it cannot be listed).
fn hash_named_entries(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_str().is_some_and(is_hash_name))
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// At most this much is read for the system's CA certificates (a bundle is about 200 KiB).
const MAX_SYSTEM_PEM: usize = 64 << 20;

/// The trust anchors of the system's CA certificates in `file` and the hash-named files of
/// `dirs`, each certificate once. What cannot be read or parsed is passed over, as OpenSSL
/// does.
fn read_system_roots(file: Option<&Path>, dirs: &[PathBuf]) -> Vec<TrustAnchor<'static>> {
    let paths = file
        .map(Path::to_path_buf)
        .into_iter()
        .chain(dirs.iter().flat_map(|d| hash_named_entries(d)));
    let mut read = 0;
    let mut seen = HashSet::new();
    let mut certs = Vec::new();
    for path in paths {
        let Ok(pem) = read_pem(&path) else {
            continue;
        };
        read += pem.len();
        if read > MAX_SYSTEM_PEM {
            break;
        }
        // A malformed item ends the file: what follows it cannot be told apart from it.
        for cert in CertificateDer::pem_slice_iter(&pem).map_while(Result::ok) {
            if seen.insert(cert.to_vec()) {
                certs.push(cert);
            }
        }
    }
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(certs);
    store.roots
}

/// What the system's roots were read from, with each path's length and modification time.
type Sources = Vec<(PathBuf, Option<(u64, SystemTime)>)>;

/// The system's roots as last read, and from what: read again only when one of those
/// files or directories changed (or the environment names others).
static SYSTEM_ROOTS: Mutex<Option<(Sources, Arc<Vec<TrustAnchor<'static>>>)>> = Mutex::new(None);

fn system_roots() -> Arc<Vec<TrustAnchor<'static>>> {
    let (file, dirs) = system_sources(|name| std::env::var_os(name), Path::exists);
    let stamp = |p: &Path| {
        std::fs::metadata(p)
            .ok()
            .and_then(|m| Some((m.len(), m.modified().ok()?)))
    };
    let sources: Sources = file
        .iter()
        .chain(dirs.iter())
        .map(|p| (p.clone(), stamp(p)))
        .collect();
    let mut cached = SYSTEM_ROOTS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((from, roots)) = cached.as_ref() {
        if *from == sources {
            return Arc::clone(roots);
        }
    }
    let roots = Arc::new(read_system_roots(file.as_deref(), &dirs));
    *cached = Some((sources, Arc::clone(&roots)));
    roots
}

/// A whole bundle of public CAs is about 200 KiB.
const MAX_PEM_FILE: u64 = 16 << 20;

fn read_pem(path: &Path) -> Result<Vec<u8>, Error> {
    crate::files::read_bounded(path, MAX_PEM_FILE)
        .map_err(|why| Error::Tls(format!("{}: {why}", shown_path(path))))
}

/// Why the PEM text `pem` of `path` gave nothing usable. Says nothing of the content but
/// its section markers.
fn pem_error(path: &Path, pem: &[u8], e: &rustls::pki_types::pem::Error) -> Error {
    use rustls::pki_types::pem::Error as Pem;
    // The file was read already (`read_pem`): what is left is its content.
    // `BEGIN ENCRYPTED PRIVATE KEY` (PKCS#8: no item the parser knows), or
    // `Proc-Type: 4,ENCRYPTED` inside a traditional key (not base64).
    let encrypted = pem.windows(9).any(|w| w == b"ENCRYPTED");
    let why = match e {
        Pem::NoItemsFound | Pem::Base64Decode(_) if encrypted => {
            "an encrypted private key: give it decrypted".to_owned()
        }
        Pem::NoItemsFound => "no PEM item found".to_owned(),
        Pem::MissingSectionEnd { end_marker } => {
            let marker = String::from_utf8_lossy(end_marker);
            let label = marker.trim_matches('-').trim_start_matches("END ");
            format!("not valid PEM: no \"-----END {label}-----\" line (cut short?)")
        }
        Pem::IllegalSectionStart { .. } => "not valid PEM: a malformed BEGIN line".to_owned(),
        Pem::Base64Decode(_) => "not valid PEM: what is inside is not base64".to_owned(),
        other => format!("not valid PEM ({other})"),
    };
    Error::Tls(format!("{}: {why}", shown_path(path)))
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read_pem(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(path, &pem, &e))?;
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
        roots.roots.extend(system_roots().iter().cloned());
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
            let key_pem = read_pem(key)?;
            let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
                .map_err(|e| pem_error(key, &key_pem, &e))?;
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
            use rustls::AlertDescription as A;
            let why = match alert {
                A::CertificateRequired => "it requires a client certificate (give one, with its key)",
                A::BadCertificate
                | A::UnknownCA
                | A::CertificateUnknown
                | A::UnsupportedCertificate
                | A::CertificateExpired
                | A::CertificateRevoked
                | A::AccessDenied => "it does not accept the client certificate",
                _ => "",
            };
            match why {
                "" => format!("the server refused the handshake (alert: {alert:?})"),
                why => format!("the server refused the handshake: {why} (alert: {alert:?})"),
            }
        }
        // What came back is no TLS record: the server speaks plain NATS first.
        rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType) => {
            "the server answered in plain text, not TLS (TLS first needs handshake_first in the server's tls block; otherwise turn tls_first off)".to_owned()
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
    fn unusable_keys_say_why_without_their_content() {
        let key = Path::new("/etc/nats/client-key.pem");
        let said = |pem: &str| {
            let e = PrivateKeyDer::from_pem_slice(pem.as_bytes()).unwrap_err();
            pem_error(key, pem.as_bytes(), &e).to_string()
        };
        assert_eq!(
            said("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA\n"),
            "tls: /etc/nats/client-key.pem: not valid PEM: no \"-----END PRIVATE KEY-----\" line (cut short?)"
        );
        assert_eq!(
            said("-----BEGIN ENCRYPTED PRIVATE KEY-----\nMC4CAQAw\n-----END ENCRYPTED PRIVATE KEY-----\n"),
            "tls: /etc/nats/client-key.pem: an encrypted private key: give it decrypted"
        );
        assert_eq!(
            said("-----BEGIN RSA PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nDEK-Info: AES-128-CBC,00\n\nMIIE\n-----END RSA PRIVATE KEY-----\n"),
            "tls: /etc/nats/client-key.pem: an encrypted private key: give it decrypted"
        );
        assert_eq!(
            said("-----BEGIN PRIVATE KEY-----\n%%%%\n-----END PRIVATE KEY-----\n"),
            "tls: /etc/nats/client-key.pem: not valid PEM: what is inside is not base64"
        );
        assert_eq!(
            said("no key here"),
            "tls: /etc/nats/client-key.pem: no PEM item found"
        );
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
        let file = |p: &str| Some(PathBuf::from(p));

        // The first bundle that exists.
        let (found, dirs) = system_sources(env(&[]), only("/etc/ssl/ca-bundle.pem"));
        assert_eq!((found, dirs), (file("/etc/ssl/ca-bundle.pem"), vec![]));
        assert_eq!(system_sources(env(&[]), |_| false), (None, vec![]));
        // SSL_CERT_FILE wins, existing or not (OpenSSL looks nowhere else); empty is unset.
        let (found, _) = system_sources(env(&[("SSL_CERT_FILE", "/x/ca.pem")]), |_| true);
        assert_eq!(found, file("/x/ca.pem"));
        let (found, _) = system_sources(env(&[("SSL_CERT_FILE", "")]), |_| true);
        assert_eq!(found, file("/etc/ssl/certs/ca-certificates.crt"));
        let (_, dirs) = system_sources(env(&[("SSL_CERT_DIR", "/d1:/d2")]), |_| false);
        assert_eq!(dirs, [PathBuf::from("/d1"), PathBuf::from("/d2")]);

        // In a directory, only the names OpenSSL looks up.
        for name in ["5ad8a5d6.0", "002C0B4F.12"] {
            assert!(is_hash_name(name), "{name}");
        }
        for name in [
            "5ad8a5d6.r0",
            "5ad8a5d6",
            "5ad8a5d.0",
            "ca.pem",
            "5ad8a5d6.",
            "ca-certificates.crt",
        ] {
            assert!(!is_hash_name(name), "{name}");
        }
    }

    #[test]
    fn a_certificate_in_the_bundle_and_the_directory_is_one_root() {
        let dir = std::env::temp_dir().join(format!("arn-roots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // The same certificate in the bundle and under a hash name; a file under another
        // name is not looked at.
        let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/fixtures/ca.pem");
        let pem = std::fs::read(fixture).unwrap();
        std::fs::write(dir.join("bundle.pem"), &pem).unwrap();
        std::fs::write(dir.join("5ad8a5d6.0"), &pem).unwrap();
        std::fs::write(dir.join("notes.txt"), &pem).unwrap();
        let roots = read_system_roots(Some(&dir.join("bundle.pem")), std::slice::from_ref(&dir));
        assert_eq!(roots.len(), 1);
        let none = read_system_roots(Some(&dir.join("missing.pem")), &[dir.join("nowhere")]);
        assert!(none.is_empty());
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

//! TLS material generated at run time with `rcgen` (ECDSA P-256, PEM files;
//! keys are PKCS#8 `PRIVATE KEY` blocks).

use std::path::{Path, PathBuf};

use rcgen::{
    date_time_ymd, BasicConstraints, Certificate, CertificateParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

use crate::TempDir;

/// Generated CA, server and client certificates in a temp dir (removed on drop).
#[derive(Debug)]
pub struct TlsFiles {
    /// The directory holding every file below.
    pub dir: PathBuf,
    /// The CA that signed the server and client certificates.
    pub ca_cert: PathBuf,
    /// Server certificate, SANs `localhost`, `127.0.0.1`, `::1`.
    pub server_cert: PathBuf,
    /// Key of `server_cert`.
    pub server_key: PathBuf,
    /// Client certificate (CN `proto-tests-client`, clientAuth), signed by `ca_cert`.
    pub client_cert: PathBuf,
    /// Key of `client_cert`.
    pub client_key: PathBuf,
    /// An unrelated CA, for wrong-CA tests.
    pub other_ca_cert: PathBuf,
    /// A client certificate signed by `other_ca_cert` (rejected by a verifying server).
    pub other_client_cert: PathBuf,
    /// Key of `other_client_cert`.
    pub other_client_key: PathBuf,
    /// Server certificate signed by `ca_cert` whose only SAN is `wrong.example`.
    pub wrong_host_server_cert: PathBuf,
    /// Key of `wrong_host_server_cert`.
    pub wrong_host_server_key: PathBuf,
    /// Server certificate signed by `ca_cert` (right SANs) that expired in 2020.
    pub expired_server_cert: PathBuf,
    /// Key of `expired_server_cert`.
    pub expired_server_key: PathBuf,
    _tmp: TempDir,
}

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    cert: Certificate,
}

fn new_ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().expect("CA key");
    let cert = params.self_signed(&key).expect("self-signing CA");
    Ca { params, key, cert }
}

fn leaf(ca: &Ca, cn: &str, sans: &[&str], client: bool, expired: bool) -> (String, String) {
    let sans: Vec<String> = sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(sans).expect("leaf params");
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = if client {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    } else {
        vec![ExtendedKeyUsagePurpose::ServerAuth]
    };
    params.use_authority_key_identifier_extension = true;
    if expired {
        params.not_before = date_time_ymd(2019, 1, 1);
        params.not_after = date_time_ymd(2020, 1, 1);
    } else {
        params.not_before = date_time_ymd(2024, 1, 1);
        params.not_after = date_time_ymd(2099, 1, 1);
    }
    let key = KeyPair::generate().expect("leaf key");
    let issuer = Issuer::from_params(&ca.params, &ca.key);
    let cert = params.signed_by(&key, &issuer).expect("signing leaf");
    (cert.pem(), key.serialize_pem())
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("writing {}: {e}", p.display()));
    p
}

impl TlsFiles {
    /// Generates everything into a fresh temp dir.
    pub fn generate() -> Self {
        let tmp = TempDir::new("tls");
        let d = tmp.path().to_path_buf();
        let ca = new_ca("proto-tests CA");
        let other = new_ca("proto-tests unrelated CA");
        let good_sans = ["localhost", "127.0.0.1", "::1"];
        let (server_cert, server_key) = leaf(&ca, "localhost", &good_sans, false, false);
        let (client_cert, client_key) = leaf(&ca, "proto-tests-client", &[], true, false);
        let (other_client_cert, other_client_key) =
            leaf(&other, "proto-tests-stranger", &[], true, false);
        let (wrong_cert, wrong_key) = leaf(&ca, "wrong.example", &["wrong.example"], false, false);
        let (expired_cert, expired_key) = leaf(&ca, "localhost", &good_sans, false, true);
        TlsFiles {
            ca_cert: write(&d, "ca.pem", &ca.cert.pem()),
            server_cert: write(&d, "server-cert.pem", &server_cert),
            server_key: write(&d, "server-key.pem", &server_key),
            client_cert: write(&d, "client-cert.pem", &client_cert),
            client_key: write(&d, "client-key.pem", &client_key),
            other_ca_cert: write(&d, "other-ca.pem", &other.cert.pem()),
            other_client_cert: write(&d, "other-client-cert.pem", &other_client_cert),
            other_client_key: write(&d, "other-client-key.pem", &other_client_key),
            wrong_host_server_cert: write(&d, "wrong-host-cert.pem", &wrong_cert),
            wrong_host_server_key: write(&d, "wrong-host-key.pem", &wrong_key),
            expired_server_cert: write(&d, "expired-server-cert.pem", &expired_cert),
            expired_server_key: write(&d, "expired-server-key.pem", &expired_key),
            dir: d,
            _tmp: tmp,
        }
    }
}

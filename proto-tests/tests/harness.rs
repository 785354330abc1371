//! Tests of the harness itself (not of the client library).

use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use proto_tests::{
    cluster, creds_text, wait_until, JwtSetup, PySubOptions, PySubscriber, RawConn, ServerConfig,
    TlsFiles,
};
use serde_json::json;

const T: Duration = Duration::from_secs(5);

fn connect_line(fields: serde_json::Value) -> Vec<u8> {
    let mut obj = json!({"verbose": false, "pedantic": false, "protocol": 1, "headers": true});
    for (k, v) in fields.as_object().expect("object") {
        obj[k] = v.clone();
    }
    format!("CONNECT {obj}\r\nPING\r\n").into_bytes()
}

/// Sends CONNECT + PING; returns what came back up to PONG or -ERR.
fn handshake(conn: &mut RawConn, fields: serde_json::Value) -> String {
    conn.send(&connect_line(fields));
    let (bytes, _) = {
        let mut got = Vec::new();
        let mut closed = false;
        while !got.ends_with(b"PONG\r\n") && !String::from_utf8_lossy(&got).contains("-ERR") {
            match conn.try_read_until(b"\r\n", T) {
                Ok(line) => got.extend_from_slice(&line),
                Err(_) => {
                    closed = true;
                    break;
                }
            }
        }
        (got, closed)
    };
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn server_starts_and_raw_conn_reads_info() {
    let server = ServerConfig::new().start();
    assert_ne!(server.port(), 4222);
    let conn = RawConn::connect(server.port());
    let info = conn.info();
    assert_eq!(info["port"], json!(server.port()));
    assert_eq!(info["host"], json!("127.0.0.1"));
    assert_eq!(info["version"], json!("2.15.1"), "pinned nats-server");
    assert_eq!(server.url(), format!("nats://127.0.0.1:{}", server.port()));
    assert!(server.log().contains("Server is ready"));
    let varz = server.monitor("/varz");
    assert_eq!(varz["port"], json!(server.port()));
}

#[test]
fn user_password_refuses_wrong_password() {
    let server = ServerConfig::new().user_password("alice", "s3cret").start();
    let mut bad = RawConn::connect(server.port());
    assert_eq!(bad.info()["auth_required"], json!(true));
    let reply = handshake(&mut bad, json!({"user": "alice", "pass": "wrong"}));
    assert!(
        reply.contains("-ERR 'Authorization Violation'"),
        "got {reply:?}"
    );

    let mut good = RawConn::connect(server.port());
    let reply = handshake(&mut good, json!({"user": "alice", "pass": "s3cret"}));
    assert!(reply.ends_with("PONG\r\n"), "got {reply:?}");

    // The independent subscriber authenticates too.
    let _sub = PySubscriber::start_with(
        &[server.url()],
        "auth.check",
        PySubOptions {
            user: Some("alice".into()),
            password: Some("s3cret".into()),
            ..Default::default()
        },
    );
}

#[test]
fn token_and_nkey_auth() {
    let server = ServerConfig::new().token("tok-123").start();
    let mut c = RawConn::connect(server.port());
    assert!(handshake(&mut c, json!({"auth_token": "nope"})).contains("Authorization Violation"));
    let mut c = RawConn::connect(server.port());
    assert!(handshake(&mut c, json!({"auth_token": "tok-123"})).ends_with("PONG\r\n"));

    let user = nkeys::KeyPair::new_user();
    let server = ServerConfig::new().nkey_user(&user.public_key()).start();
    let mut c = RawConn::connect(server.port());
    let nonce = c.info()["nonce"].as_str().expect("nonce").to_string();
    let sig = base64_url(&user.sign(nonce.as_bytes()).unwrap());
    let reply = handshake(&mut c, json!({"nkey": user.public_key(), "sig": sig}));
    assert!(reply.ends_with("PONG\r\n"), "got {reply:?}");
    // nats-py through the harness's signing relay.
    let _sub = PySubscriber::start_with(
        &[server.url()],
        "nkey.check",
        PySubOptions {
            nkey_seed: Some(user.seed().unwrap()),
            ..Default::default()
        },
    );
}

fn base64_url(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

#[test]
fn operator_mode_jwt_auth() {
    let setup = JwtSetup::new();
    let server = ServerConfig::new().operator_mode(&setup).start();

    let alice = setup.user("alice");
    let mut c = RawConn::connect(server.port());
    let nonce = c.info()["nonce"].as_str().expect("nonce").to_string();
    let reply = handshake(
        &mut c,
        json!({"jwt": alice.jwt, "sig": alice.sign_nonce(&nonce)}),
    );
    assert!(reply.ends_with("PONG\r\n"), "got {reply:?}");

    for (what, u) in [
        ("unknown account", setup.user_from_other_account()),
        ("expired", setup.expired_user()),
    ] {
        let mut c = RawConn::connect(server.port());
        let nonce = c.info()["nonce"].as_str().expect("nonce").to_string();
        let reply = handshake(&mut c, json!({"jwt": u.jwt, "sig": u.sign_nonce(&nonce)}));
        assert!(
            reply.contains("-ERR 'Authorization Violation'"),
            "{what}: got {reply:?}"
        );
    }

    // Wrong signature (signed by someone else's seed).
    let mut c = RawConn::connect(server.port());
    let nonce = c.info()["nonce"].as_str().unwrap().to_string();
    let other = setup.user("other");
    let reply = handshake(
        &mut c,
        json!({"jwt": alice.jwt, "sig": other.sign_nonce(&nonce)}),
    );
    assert!(reply.contains("Authorization Violation"), "got {reply:?}");

    // The independent subscriber with a creds file receives a raw PUB.
    let creds = setup.user_creds("bob");
    assert_eq!(creds, creds_text(&parse_jwt(&creds), &parse_seed(&creds)));
    let mut sub = PySubscriber::start_with(
        &[server.url()],
        "jwt.>",
        PySubOptions {
            creds: Some(creds),
            ..Default::default()
        },
    );
    c = RawConn::connect(server.port());
    let nonce = c.info()["nonce"].as_str().unwrap().to_string();
    c.send(&connect_line(
        json!({"jwt": alice.jwt, "sig": alice.sign_nonce(&nonce)}),
    ));
    c.send(b"PUB jwt.hello 2\r\nhi\r\nPING\r\n");
    c.read_until(b"PONG\r\n", T);
    let got = sub.wait_for(1, T);
    assert_eq!(got[0].subject, "jwt.hello");
    assert_eq!(got[0].payload, b"hi");
}

fn parse_jwt(creds: &str) -> String {
    creds.lines().nth(1).unwrap().to_string()
}

fn parse_seed(creds: &str) -> String {
    let mut it = creds
        .lines()
        .skip_while(|l| !l.contains("BEGIN USER NKEY SEED"));
    it.next();
    it.next().unwrap().to_string()
}

#[test]
fn tls_configs_start() {
    let certs = TlsFiles::generate();
    assert!(certs.ca_cert.is_file() && certs.expired_server_cert.is_file());

    let server = ServerConfig::new().tls(&certs).start();
    let c = RawConn::connect(server.port());
    assert_eq!(c.info()["tls_required"], json!(true));
    // nats-py verifies our CA and the localhost SAN.
    let _sub = PySubscriber::start_with(
        &[server.url()],
        "tls.check",
        PySubOptions {
            ca_file: Some(certs.ca_cert.clone()),
            ..Default::default()
        },
    );

    // Mutual TLS: the client certificate signed by our CA is accepted.
    let mtls = ServerConfig::new().tls(&certs).tls_verify().start();
    assert_eq!(
        RawConn::connect(mtls.port()).info()["tls_verify"],
        json!(true)
    );
    let _sub = PySubscriber::start_with(
        &[mtls.url()],
        "tls.check",
        PySubOptions {
            ca_file: Some(certs.ca_cert.clone()),
            client_cert: Some(certs.client_cert.clone()),
            client_key: Some(certs.client_key.clone()),
            ..Default::default()
        },
    );

    // TLS-first: no plaintext INFO; nats-py with handshake_first connects.
    let first = ServerConfig::new().tls(&certs).tls_first().start();
    assert!(first.config_text().contains("handshake_first: true"));
    let _sub = PySubscriber::start_with(
        &[first.url()],
        "tls.check",
        PySubOptions {
            ca_file: Some(certs.ca_cert.clone()),
            tls_first: true,
            ..Default::default()
        },
    );
}

#[test]
fn three_node_cluster_routes_messages() {
    let nodes = cluster(3, |c| c);
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().all(|n| n.cluster_port().is_some()));
    let mut sub = PySubscriber::start(&nodes[1].url(), "cluster.>");
    assert!(!nodes[0].has_subscription("nothing.here"));
    nodes[0].wait_for_subscription("cluster.>", T);

    let mut c = RawConn::connect(nodes[0].port());
    c.send(&connect_line(json!({})));
    c.read_until(b"PONG\r\n", T);
    c.send(b"PUB cluster.x reply.to 5\r\nhello\r\n");
    let hdr = b"NATS/1.0\r\nA: 1\r\nB: 2\r\nA: 3\r\nA:  x y \r\n\r\n";
    let mut hpub = format!("HPUB cluster.h {} {}\r\n", hdr.len(), hdr.len() + 2).into_bytes();
    hpub.extend_from_slice(hdr);
    hpub.extend_from_slice(b"hi\r\nPING\r\n");
    c.send(&hpub);
    c.read_until(b"PONG\r\n", T);

    let got = sub.wait_for(2, T);
    assert_eq!(got[0].subject, "cluster.x");
    assert_eq!(got[0].reply.as_deref(), Some("reply.to"));
    assert_eq!(got[0].payload, b"hello");
    assert!(got[0].headers.is_empty() && got[0].status.is_none());
    assert_eq!(got[1].subject, "cluster.h");
    assert_eq!(got[1].payload, b"hi");
    assert_eq!(got[1].status.as_deref(), Some("NATS/1.0"));
    let pairs: Vec<(&str, &str)> = got[1]
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(pairs, [("A", "1"), ("B", "2"), ("A", "3"), ("A", "x y")]);
    assert_eq!(got[1].raw_headers.as_deref(), Some(&hdr[..]));
    assert!(sub.received().is_empty());
}

#[test]
fn kill_and_restart_on_same_port() {
    let mut server = ServerConfig::new().start();
    let port = server.port();
    let pid = server.pid();
    server.kill();
    assert!(!server.is_running());
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err());
    server.restart();
    assert_eq!(server.port(), port);
    assert_ne!(server.pid(), pid);
    assert_eq!(RawConn::connect(port).info()["port"], json!(port));
    // The subscriber reconnects across a restart.
    let mut sub = PySubscriber::start(&server.url(), "restart.check");
    server.restart();
    server.wait_for_subscription("restart.check", T);
    let mut c = RawConn::connect(port);
    c.send(&connect_line(json!({})));
    c.send(b"PUB restart.check 3\r\nabc\r\nPING\r\n");
    c.read_until(b"PONG\r\n", T);
    assert_eq!(sub.wait_for(1, T)[0].payload, b"abc");
}

#[test]
fn lame_duck_signal_reaches_clients() {
    let server = ServerConfig::new().start();
    let mut c = RawConn::connect(server.port());
    c.send(&connect_line(json!({})));
    c.read_until(b"PONG\r\n", T);
    server.signal_ldm();
    c.read_until(b"\"ldm\":true", T);
    wait_until(T, "lame duck log line", || {
        server.log().contains("Entering lame duck mode")
    });
}

#[test]
fn config_knobs_reach_the_server() {
    let server = ServerConfig::new()
        .max_payload(1024)
        .max_control_line(2048)
        .ping_interval(Duration::from_millis(1500))
        .max_pings_out(3)
        .jetstream()
        .extra("lame_duck_duration: \"30s\"\nlame_duck_grace_period: \"1s\"")
        .start();
    let info = RawConn::connect(server.port()).info();
    assert_eq!(info["max_payload"], json!(1024));
    assert_eq!(info["jetstream"], json!(true));
    let varz = server.monitor("/varz");
    assert_eq!(varz["max_control_line"], json!(2048));
    assert_eq!(varz["ping_max"], json!(3));
    assert_eq!(varz["ping_interval"], json!(1_500_000_000u64));
    assert!(server.dir().join("jetstream").is_dir());
}

#[test]
fn failed_start_reports_the_log_tail() {
    let err = std::panic::catch_unwind(|| ServerConfig::new().extra("this is { not valid").start())
        .expect_err("a broken config must not start");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("nats-server failed to start"), "{msg}");
    assert!(msg.contains("--- log tail ---"), "{msg}");
    assert!(msg.contains("this is { not valid"), "config shown: {msg}");
}

#[test]
fn bad_tls_material_is_rejected_by_an_independent_client() {
    let certs = TlsFiles::generate();
    let cases = [
        (
            "wrong host name",
            ServerConfig::new().tls_with(
                &certs.wrong_host_server_cert,
                &certs.wrong_host_server_key,
                &certs.ca_cert,
            ),
            certs.ca_cert.clone(),
        ),
        (
            "expired",
            ServerConfig::new().tls_with(
                &certs.expired_server_cert,
                &certs.expired_server_key,
                &certs.ca_cert,
            ),
            certs.ca_cert.clone(),
        ),
        (
            "unrelated CA",
            ServerConfig::new().tls(&certs),
            certs.other_ca_cert.clone(),
        ),
    ];
    for (what, config, ca) in cases {
        let server = config.start();
        let url = server.url();
        let err = std::panic::catch_unwind(move || {
            PySubscriber::start_with(
                &[url],
                "tls.bad",
                PySubOptions {
                    ca_file: Some(ca),
                    no_reconnect: true,
                    ..Default::default()
                },
            )
        })
        .expect_err(what);
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("CERTIFICATE_VERIFY_FAILED"), "{what}: {msg}");
    }
}

#[test]
fn mutual_tls_rejects_a_client_from_another_ca() {
    let certs = TlsFiles::generate();
    let server = ServerConfig::new().tls(&certs).tls_verify().start();
    for (what, cert, key) in [
        (
            "other CA",
            Some(certs.other_client_cert.clone()),
            Some(certs.other_client_key.clone()),
        ),
        ("no client cert", None, None),
    ] {
        let url = server.url();
        let ca = certs.ca_cert.clone();
        let err = std::panic::catch_unwind(move || {
            PySubscriber::start_with(
                &[url],
                "mtls.bad",
                PySubOptions {
                    ca_file: Some(ca),
                    client_cert: cert,
                    client_key: key,
                    no_reconnect: true,
                    ..Default::default()
                },
            )
        })
        .expect_err(what);
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("subscriber failed"), "{what}: {msg}");
    }
}

#[test]
fn operator_mode_with_jetstream() {
    let setup = JwtSetup::new();
    let server = ServerConfig::new()
        .operator_mode(&setup)
        .jetstream()
        .start();
    let alice = setup.user("alice");
    let mut c = RawConn::connect(server.port());
    let nonce = c.info()["nonce"].as_str().unwrap().to_string();
    c.send(&connect_line(
        json!({"jwt": alice.jwt, "sig": alice.sign_nonce(&nonce)}),
    ));
    c.read_until(b"PONG\r\n", T);
    c.send(b"SUB _INBOX.js 1\r\nPUB $JS.API.INFO _INBOX.js 0\r\n\r\n");
    c.read_until(b"MSG _INBOX.js 1 ", T);
    let reply = c.read_until(b"}\r\n", T);
    let text = String::from_utf8_lossy(&reply);
    assert!(
        text.contains("io.nats.jetstream.api.v1.account_info_response"),
        "{text}"
    );
    assert!(
        !text.contains("\"error\""),
        "JetStream disabled for the account: {text}"
    );
}

#[test]
fn a_taken_fixed_port_fails_loudly() {
    let taken = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = std::panic::catch_unwind(|| ServerConfig::new().port(port).start())
        .expect_err("port is taken");
    let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
    // The text the automatic port-race retry looks for.
    assert!(msg.contains("address already in use"), "{msg}");
    assert!(
        msg.contains("(attempt 1)"),
        "no retry on a fixed port: {msg}"
    );
}

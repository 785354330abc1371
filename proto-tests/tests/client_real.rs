//! The client against real nats-server processes, each result checked by an independent
//! subscriber (nats-py) or by the server's own refusal.

use std::time::Duration;

use ansible_runner_nats::auth::Auth;
use ansible_runner_nats::client::{Client, Event, Options, Subscription};
use ansible_runner_nats::headers::HeaderMap;
use ansible_runner_nats::Error;
use proto_tests::{JwtSetup, PySubOptions, PySubscriber, ServerConfig, TlsFiles};

const WAIT: Duration = Duration::from_secs(20);

fn connect(url: &str) -> Client {
    Options::new()
        .servers(url)
        .unwrap()
        .connect()
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

fn connect_as(url: &str, user: &str, password: &str) -> Client {
    Options::new()
        .servers(url)
        .unwrap()
        .user_password(user, password)
        .connect()
        .unwrap_or_else(|e| panic!("connect to {url} as {user}: {e}"))
}

/// Every event the client reports, in order, as the test sees them.
type Recorded = std::sync::Arc<std::sync::Mutex<Vec<Event>>>;

/// `opts` with an event callback that records every event, and the record.
fn recording(opts: Options) -> (Options, Recorded) {
    let record = Recorded::default();
    let sink = std::sync::Arc::clone(&record);
    let opts = opts.event_callback(move |e| sink.lock().unwrap().push(e));
    (opts, record)
}

/// Publishes one message and checks the independent subscriber got exactly it.
fn assert_delivers(client: &Client, sub: &mut PySubscriber, subject: &str) {
    client.publish(subject, b"proof").unwrap();
    client.flush(WAIT).unwrap();
    let got = sub.wait_for(1, WAIT);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].subject, subject);
    assert_eq!(got[0].payload, b"proof");
}

#[test]
fn publish_subscribe_round_trip() {
    let server = ServerConfig::new().start();
    let mut py = PySubscriber::start(&server.url(), "round.>");
    let client = connect(&server.url());
    let own = client.subscribe("round.*").unwrap();
    client.flush(WAIT).unwrap();
    let payloads: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"plain".to_vec(),
        b"with\r\nCRLF inside\r\n".to_vec(),
        (0..=255u8).collect(),
        vec![b'z'; 64 * 1024],
    ];
    for (i, p) in payloads.iter().enumerate() {
        client.publish(&format!("round.{i}"), p).unwrap();
    }
    client
        .publish_with_reply("round.reply", "reply.here", b"r")
        .unwrap();
    client.flush(WAIT).unwrap();
    let got = py.wait_for(payloads.len() + 1, WAIT);
    for (i, p) in payloads.iter().enumerate() {
        assert_eq!(got[i].subject, format!("round.{i}"));
        assert_eq!(&got[i].payload, p, "payload {i}");
    }
    assert_eq!(got[payloads.len()].reply.as_deref(), Some("reply.here"));
    for (i, p) in payloads.iter().enumerate() {
        let m = own.next_timeout(WAIT).unwrap();
        assert_eq!(m.subject, format!("round.{i}"));
        assert_eq!(&m.payload, p);
    }
    let stats = client.statistics();
    assert_eq!(stats.out_msgs, payloads.len() as u64 + 1);
    client.close().unwrap();
}

#[test]
fn durations_too_long_for_the_clock_mean_never() {
    let server = ServerConfig::new().start();
    let mut py = PySubscriber::start(&server.url(), "forever.>");
    let client = Options::new()
        .servers(&server.url())
        .unwrap()
        .connect_timeout(Duration::MAX)
        .reconnect_time_wait(Duration::MAX)
        .reconnect_jitter(Duration::MAX)
        .ping_interval(Duration::MAX)
        .publish_wait(Duration::MAX)
        .write_linger(Duration::MAX)
        .flush_timeout(Duration::MAX)
        .connect()
        .unwrap();
    client.publish("forever.one", b"proof").unwrap();
    client.flush(Duration::MAX).unwrap();
    assert_eq!(py.wait_for(1, WAIT).len(), 1);
    client.close().unwrap();
    // Zero turns the keep-alive PINGs off rather than making the connection stale at once.
    let quiet = Options::new()
        .servers(&server.url())
        .unwrap()
        .ping_interval(Duration::ZERO)
        .max_outstanding_pings(0)
        .connect()
        .unwrap();
    let started = quiet.statistics().reconnects;
    quiet.publish("forever.two", b"proof").unwrap();
    quiet.flush(WAIT).unwrap();
    assert_eq!(py.wait_for(1, WAIT).len(), 1);
    assert!(quiet.is_connected());
    assert_eq!(quiet.statistics().reconnects, started);
}

/// A publisher of our own over a plain socket: it sends `frames` as they are.
fn raw_publish(url: &str, frames: &[u8]) {
    use std::io::{BufRead, BufReader, Write};
    let address = url.strip_prefix("nats://").unwrap();
    let mut sock = std::net::TcpStream::connect(address).unwrap();
    let mut lines = BufReader::new(sock.try_clone().unwrap());
    let mut line = String::new();
    lines.read_line(&mut line).unwrap();
    assert!(line.starts_with("INFO"), "{line}");
    sock.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")
        .unwrap();
    sock.write_all(frames).unwrap();
    sock.write_all(b"PING\r\n").unwrap();
    line.clear();
    lines.read_line(&mut line).unwrap();
    assert_eq!(line, "PONG\r\n");
}

#[test]
fn what_the_server_relays_from_other_publishers_never_ends_the_connection() {
    let server = ServerConfig::new().start();
    let (opts, events) = recording(Options::new().servers(&server.url()).unwrap());
    let client = opts.connect().unwrap();
    let sub = client.subscribe("u.>").unwrap();
    client.flush(WAIT).unwrap();
    // A subject that is not UTF-8 (nats-server relays the bytes as they are), then a
    // subject and reply so long that the MSG line exceeds nats-server's own 4 KiB limit
    // on what it reads, then an ordinary message.
    let long = format!("u.{}", "y".repeat(3000));
    let reply = "r".repeat(1000);
    let mut frames = b"PUB u.\xff\xfe 1\r\nx\r\n".to_vec();
    frames
        .extend_from_slice(format!("PUB {long} {reply} 1\r\nl\r\nPUB u.ok 1\r\no\r\n").as_bytes());
    raw_publish(&server.url(), &frames);
    let first = sub.next_timeout(WAIT).expect("the long one");
    assert_eq!(
        (first.subject.as_str(), first.reply.as_deref()),
        (long.as_str(), Some(reply.as_str()))
    );
    assert_eq!(
        sub.next_timeout(WAIT).expect("the ordinary one").subject,
        "u.ok"
    );
    client.flush(WAIT).unwrap();
    let seen: Vec<String> = events
        .lock()
        .unwrap()
        .iter()
        .map(|e| format!("{e:?}"))
        .collect();
    assert!(
        !seen.iter().any(|e| e.starts_with("Disconnected")),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|e| e.contains("not UTF-8 was dropped")),
        "{seen:?}"
    );
    client.close().unwrap();
}

#[test]
fn a_request_still_waiting_when_the_client_closes_ends_at_once() {
    let server = ServerConfig::new().start();
    let client = connect(&server.url());
    // A subscriber that never answers, so that the request waits.
    let _silent = client.subscribe("silent").unwrap();
    client.flush(WAIT).unwrap();
    let pending = client.request_async("silent", None, b"?").unwrap();
    client.flush(WAIT).unwrap();
    client.close().unwrap();
    let started = std::time::Instant::now();
    let outcome = pending.wait(WAIT);
    assert!(matches!(outcome, Err(Error::Closed)), "{outcome:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited {:?}",
        started.elapsed()
    );
}

#[test]
fn headers_round_trip() {
    let server = ServerConfig::new().start();
    let mut py = PySubscriber::start(&server.url(), "hdr");
    let client = connect(&server.url());
    let own = client.subscribe("hdr").unwrap();
    let mut headers = HeaderMap::new();
    headers.append("producer", "ansible-runner").unwrap();
    headers.append("Mixed-Case", "kept").unwrap();
    headers.append("multi", "one").unwrap();
    headers.append("multi", "two").unwrap();
    client
        .publish_with_headers("hdr", &headers, b"{\"a\": 1}")
        .unwrap();
    client.flush(WAIT).unwrap();
    let got = py.wait_for(1, WAIT);
    assert_eq!(got[0].payload, b"{\"a\": 1}");
    let find = |name: &str| -> Vec<&str> {
        got[0]
            .headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    assert_eq!(find("producer"), ["ansible-runner"]);
    assert_eq!(find("Mixed-Case"), ["kept"]);
    // Our own subscription sees every value of a multi-valued header, in order.
    let m = own.next_timeout(WAIT).unwrap();
    assert_eq!(m.headers.as_ref(), Some(&headers));
    client.close().unwrap();
}

#[test]
fn user_password_auth() {
    let server = ServerConfig::new()
        .user_password("alice", "wonder-pw")
        .start();
    let mut py = PySubscriber::start_as(&server.url(), "auth.up", "alice", "wonder-pw");
    let good = connect_as(&server.url(), "alice", "wonder-pw");
    assert_delivers(&good, &mut py, "auth.up");

    let err = Options::new()
        .servers(&server.url())
        .unwrap()
        .user_password("alice", "wrong-pw")
        .connect()
        .unwrap_err();
    assert!(matches!(err, Error::AuthorizationViolation), "{err:?}");

    // Credentials in the URL.
    let url = server.url().replace("nats://", "nats://alice:wonder-pw@");
    let from_url = connect(&url);
    assert_delivers(&from_url, &mut py, "auth.up");
    let bad_url = server.url().replace("nats://", "nats://alice:nope@");
    let err = Options::new()
        .servers(&bad_url)
        .unwrap()
        .connect()
        .unwrap_err();
    assert!(matches!(err, Error::AuthorizationViolation), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("nope"));
}

#[test]
fn token_auth() {
    let server = ServerConfig::new().token("tok-123456").start();
    let mut py = PySubscriber::start_with(
        &[server.url()],
        "auth.tok",
        PySubOptions {
            token: Some("tok-123456".into()),
            ..PySubOptions::default()
        },
    );
    let good = Options::new()
        .servers(&server.url())
        .unwrap()
        .token("tok-123456")
        .connect()
        .unwrap();
    assert_delivers(&good, &mut py, "auth.tok");
    let from_url = connect(&server.url().replace("nats://", "nats://tok-123456@"));
    assert_delivers(&from_url, &mut py, "auth.tok");
    let err = Options::new()
        .servers(&server.url())
        .unwrap()
        .token("tok-wrong")
        .connect()
        .unwrap_err();
    assert!(matches!(err, Error::AuthorizationViolation), "{err:?}");
}

#[test]
fn nkey_seed_auth() {
    let user = nkeys::KeyPair::new_user();
    let seed = user.seed().unwrap();
    let server = ServerConfig::new().nkey_user(&user.public_key()).start();
    let mut py = PySubscriber::start_with(
        &[server.url()],
        "auth.nkey",
        PySubOptions {
            nkey_seed: Some(seed.clone()),
            ..PySubOptions::default()
        },
    );
    let good = Options::new()
        .servers(&server.url())
        .unwrap()
        .nkey_seed(&seed)
        .connect()
        .unwrap();
    assert_delivers(&good, &mut py, "auth.nkey");

    let stranger = nkeys::KeyPair::new_user().seed().unwrap();
    let err = Options::new()
        .servers(&server.url())
        .unwrap()
        .nkey_seed(&stranger)
        .connect()
        .unwrap_err();
    assert!(matches!(err, Error::AuthorizationViolation), "{err:?}");
    assert!(!format!("{err} {err:?}").contains(&stranger));
}

#[test]
fn creds_file_auth() {
    let jwt = JwtSetup::new();
    let server = ServerConfig::new().operator_mode(&jwt).start();
    let dir = std::env::temp_dir().join(format!("arn-creds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let good_path = dir.join("good.creds");
    std::fs::write(&good_path, jwt.user_creds("publisher")).unwrap();
    let py_path = dir.join("py.creds");
    std::fs::write(&py_path, jwt.user_creds("subscriber")).unwrap();
    let bad_path = dir.join("bad.creds");
    std::fs::write(&bad_path, jwt.user_creds_from_other_account()).unwrap();

    let mut py = PySubscriber::start_with(
        &[server.url()],
        "auth.creds",
        PySubOptions {
            creds: Some(std::fs::read_to_string(&py_path).unwrap()),
            ..PySubOptions::default()
        },
    );
    let good = Options::new()
        .servers(&server.url())
        .unwrap()
        .credentials_file(&good_path)
        .connect()
        .unwrap();
    assert_delivers(&good, &mut py, "auth.creds");

    // CRLF line endings are accepted too.
    let crlf_path = dir.join("crlf.creds");
    std::fs::write(&crlf_path, jwt.user_creds("crlf").replace('\n', "\r\n")).unwrap();
    let crlf = Options::new()
        .servers(&server.url())
        .unwrap()
        .credentials_file(&crlf_path)
        .connect()
        .unwrap();
    assert_delivers(&crlf, &mut py, "auth.creds");

    // nats-py's pair: a file with the bare JWT, one with the bare seed.
    let creds = ansible_runner_nats::auth::parse_creds(&jwt.user_creds("pair")).unwrap();
    let (jwt_path, seed_path) = (dir.join("pair.jwt"), dir.join("pair.nk"));
    std::fs::write(&jwt_path, format!("{}\n", creds.jwt())).unwrap();
    std::fs::write(&seed_path, format!("{}\n", creds.seed())).unwrap();
    let pair = Options::new()
        .servers(&server.url())
        .unwrap()
        .auth(Auth::JwtAndSeedFiles {
            jwt: jwt_path,
            seed: seed_path,
        })
        .connect()
        .unwrap();
    assert_delivers(&pair, &mut py, "auth.creds");

    let err = Options::new()
        .servers(&server.url())
        .unwrap()
        .credentials_file(&bad_path)
        .connect()
        .unwrap_err();
    assert!(matches!(err, Error::AuthorizationViolation), "{err:?}");

    let missing = Options::new()
        .servers(&server.url())
        .unwrap()
        .credentials_file(dir.join("missing.creds"))
        .connect()
        .unwrap_err();
    assert!(matches!(missing, Error::Credentials { .. }), "{missing:?}");
    assert!(missing.to_string().contains("missing.creds"), "{missing}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn tls_with_a_generated_ca() {
    let certs = TlsFiles::generate();
    let server = ServerConfig::new().tls(&certs).start();
    let mut py = PySubscriber::start_with(
        &[server.url().replace("nats://", "tls://")],
        "tls.>",
        PySubOptions {
            ca_file: Some(certs.ca_cert.clone()),
            ..PySubOptions::default()
        },
    );
    // The server requires TLS: a nats:// URL is upgraded after INFO.
    let client = Options::new()
        .servers(&server.url())
        .unwrap()
        .add_root_certificate(&certs.ca_cert)
        .connect()
        .unwrap();
    assert_delivers(&client, &mut py, "tls.plain-url");
    // A tls:// URL works the same.
    let tls_url = server.url().replace("nats://", "tls://");
    let client = Options::new()
        .servers(&tls_url)
        .unwrap()
        .add_root_certificate(&certs.ca_cert)
        .connect()
        .unwrap();
    assert_delivers(&client, &mut py, "tls.tls-url");

    // Without our CA the webpki roots do not know the server's issuer.
    let err = Options::new()
        .servers(&tls_url)
        .unwrap()
        .add_root_certificate(&certs.other_ca_cert)
        .connect()
        .unwrap_err();
    match &err {
        Error::Tls(reason) => assert!(reason.contains("issuer"), "{reason}"),
        other => panic!("expected a TLS error, got {other:?}"),
    }
}

#[test]
fn tls_to_a_plain_server_is_refused() {
    let server = ServerConfig::new().start();
    let err = Options::new()
        .servers(&server.url().replace("nats://", "tls://"))
        .unwrap()
        .connect()
        .unwrap_err();
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
}

#[test]
fn required_tls_refuses_a_plain_server_and_upgrades_a_nats_url() {
    let plain = ServerConfig::new().start();
    let err = Options::new()
        .servers(&plain.url())
        .unwrap()
        .require_tls(true)
        .connect()
        .unwrap_err();
    match &err {
        Error::Tls(reason) => assert!(
            reason.ends_with("does not offer TLS, but TLS is required by the client"),
            "{reason}"
        ),
        other => panic!("expected a TLS error, got {other:?}"),
    }

    // A server that offers TLS without requiring it: a nats:// URL is upgraded.
    let certs = TlsFiles::generate();
    let server = ServerConfig::new()
        .tls(&certs)
        .extra("allow_non_tls: true")
        .start();
    let client = Options::new()
        .servers(&server.url())
        .unwrap()
        .add_root_certificate(&certs.ca_cert)
        .require_tls(true)
        .connect()
        .unwrap();
    client.flush(WAIT).unwrap();
    let connz = server.monitor("/connz");
    let conns = connz["connections"].as_array().unwrap();
    assert_eq!(conns.len(), 1, "{connz}");
    assert!(conns[0]["tls_version"].is_string(), "not TLS: {}", conns[0]);
    client.close().unwrap();
}

#[test]
fn mutual_tls() {
    let certs = TlsFiles::generate();
    let server = ServerConfig::new().tls(&certs).tls_verify().start();
    let mut py = PySubscriber::start_with(
        &[server.url().replace("nats://", "tls://")],
        "mtls",
        PySubOptions {
            ca_file: Some(certs.ca_cert.clone()),
            client_cert: Some(certs.client_cert.clone()),
            client_key: Some(certs.client_key.clone()),
            ..PySubOptions::default()
        },
    );
    let client = Options::new()
        .servers(&server.url())
        .unwrap()
        .add_root_certificate(&certs.ca_cert)
        .client_certificate(&certs.client_cert, &certs.client_key)
        .connect()
        .unwrap();
    assert_delivers(&client, &mut py, "mtls");

    // Refused by the server, each with what to do about it.
    let refused = |opts: Options| match opts.connect() {
        Err(Error::Tls(why)) => why,
        other => panic!("the server must refuse the client: {:?}", other.map(|_| ())),
    };
    let base = || {
        Options::new()
            .servers(&server.url())
            .unwrap()
            .add_root_certificate(&certs.ca_cert)
    };
    let why = refused(base());
    assert!(why.contains("it requires a client certificate"), "{why}");
    let why = refused(base().client_certificate(&certs.other_client_cert, &certs.other_client_key));
    assert!(
        why.contains("it does not accept the client certificate"),
        "{why}"
    );
}

#[test]
fn tls_first_handshake() {
    let certs = TlsFiles::generate();
    let server = ServerConfig::new().tls(&certs).tls_first().start();
    let client = Options::new()
        .servers(&server.url())
        .unwrap()
        .add_root_certificate(&certs.ca_cert)
        .tls_first(true)
        .connect()
        .unwrap();
    let own = client.subscribe("first").unwrap();
    client.publish("first", b"over tls-first").unwrap();
    assert_eq!(own.next_timeout(WAIT).unwrap().payload, b"over tls-first");
    client.close().unwrap();
    // TLS first to a server that sends its INFO in plain text first: said so.
    let plain_first = ServerConfig::new().tls(&certs).start();
    let err = Options::new()
        .servers(&plain_first.url())
        .unwrap()
        .add_root_certificate(&certs.ca_cert)
        .tls_first(true)
        .connect()
        .map(|_| ())
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("the server answered in plain text, not TLS"),
        "{err}"
    );
}

#[test]
fn max_payload_is_refused_at_the_call() {
    let server = ServerConfig::new().max_payload(1024).start();
    let mut py = PySubscriber::start(&server.url(), "mp");
    let client = connect(&server.url());
    assert_eq!(client.server_info().max_payload, 1024);
    let err = client.publish("mp", &[0u8; 1025]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::MaxPayload {
                size: 1025,
                max: 1024
            }
        ),
        "{err:?}"
    );
    let mut headers = HeaderMap::new();
    headers.append("k", "v").unwrap();
    let err = client
        .publish_with_headers("mp", &headers, &[0u8; 1020])
        .unwrap_err();
    assert!(
        matches!(err, Error::MaxPayload { max: 1024, .. }),
        "{err:?}"
    );
    // The connection is untouched: an in-limit message still arrives, and only it.
    client.publish("mp", &[7u8; 1024]).unwrap();
    client.flush(WAIT).unwrap();
    let got = py.wait_for(1, WAIT);
    assert_eq!(got[0].payload, vec![7u8; 1024]);
    assert!(client.is_connected());
}

#[test]
fn flush_confirms_what_was_published() {
    let server = ServerConfig::new().start();
    let mut py = PySubscriber::start(&server.url(), "fl");
    let client = connect(&server.url());
    for round in 1..=3 {
        for i in 0..1000 {
            client
                .publish("fl", format!("{round}-{i}").as_bytes())
                .unwrap();
        }
        client.flush(WAIT).unwrap();
    }
    let got = py.wait_for(3000, WAIT);
    assert_eq!(got.len(), 3000);
    assert_eq!(got[2999].payload, b"3-999");
    client.close().unwrap();
    assert!(matches!(client.flush(WAIT), Err(Error::Closed)));
}

#[test]
fn publishes_the_server_denies_are_counted_and_the_rest_delivered() {
    let server = ServerConfig::new()
        .extra(
            r#"authorization {
  users = [
    { user: "limited", password: "pw", permissions: { publish: { allow: ["ok.>"] } } }
    { user: "watch", password: "pw" }
  ]
}"#,
        )
        .start();
    let mut py = PySubscriber::start_as(&server.url(), ">", "watch", "pw");
    let client = connect_as(&server.url(), "limited", "pw");
    for i in 0..30 {
        let subject = if i % 3 == 0 { "ok.yes" } else { "no.denied" };
        client.publish(subject, format!("{i}").as_bytes()).unwrap();
    }
    client.publish("ok.end", b"").unwrap();
    client.flush(WAIT).unwrap();
    // Counted by the time the flush returns: the server answers in order.
    assert_eq!(client.statistics().publish_denied, 20);
    assert_eq!(client.statistics().out_msgs, 31);
    assert!(
        client.is_connected(),
        "a permission violation keeps the connection"
    );
    let last = client.last_error().expect("the refusal is the last error");
    assert!(
        last.contains("Permissions Violation for Publish to"),
        "{last}"
    );
    assert!(last.contains("no.denied"), "{last}");
    // In order, so anything else delivered would come before the last.
    let got = py.wait_for(11, WAIT);
    let subjects: Vec<&str> = got.iter().map(|m| m.subject.as_str()).collect();
    assert_eq!(subjects, [vec!["ok.yes"; 10], vec!["ok.end"]].concat());
    client.close().unwrap();
}

#[test]
fn a_subscription_the_server_refuses_ends_with_its_reason_and_the_others_go_on() {
    let server = ServerConfig::new()
        .extra(
            r#"authorization {
  users = [
    { user: "limited", password: "pw", permissions: { subscribe: { allow: ["ok.>", "jobs.* workers"] } } }
  ]
}"#,
        )
        .start();
    let client = connect_as(&server.url(), "limited", "pw");
    let ok = client.subscribe("ok.x").unwrap();
    let denied = client.subscribe("no.x").unwrap();
    let denied_too = client.subscribe("no.x").unwrap();
    let in_queue = client.queue_subscribe("jobs.a", "workers").unwrap();
    let other_queue = client.queue_subscribe("jobs.a", "others").unwrap();
    // The server answers in order: its refusals come before this flush's PONG.
    client.flush(WAIT).unwrap();
    for (sub, text) in [
        (
            &denied,
            "Permissions Violation for Subscription to \"no.x\"",
        ),
        (
            &denied_too,
            "Permissions Violation for Subscription to \"no.x\"",
        ),
        (
            &other_queue,
            "Permissions Violation for Subscription to \"jobs.a\" using queue \"others\"",
        ),
    ] {
        match sub.next_timeout(Duration::ZERO) {
            Err(Error::PermissionDenied(t)) => assert_eq!(t, text),
            other => panic!("sid {}: {other:?}", sub.sid()),
        }
    }
    client.publish("ok.x", b"1").unwrap();
    client.publish("jobs.a", b"2").unwrap();
    assert_eq!(ok.next_timeout(WAIT).unwrap().payload, b"1");
    assert_eq!(in_queue.next_timeout(WAIT).unwrap().payload, b"2");
    assert!(
        client.is_connected(),
        "a refused subscription keeps the connection"
    );
    client.close().unwrap();
}

#[test]
fn a_request_the_server_refuses_says_so_instead_of_timing_out() {
    let server = ServerConfig::new()
        .extra(
            r#"authorization {
  users = [ { user: "limited", password: "pw", permissions: { publish: { allow: ["ok.>"] } } } ]
}"#,
        )
        .start();
    let client = connect_as(&server.url(), "limited", "pw");
    // Two in flight on the same subject: one refusal each, oldest first.
    let first = client.request_async("no.svc", None, b"1").unwrap();
    let second = client.request_async("no.svc", None, b"2").unwrap();
    let allowed = client.request_async("ok.nobody", None, b"3").unwrap();
    for pending in [&first, &second] {
        match pending.wait(WAIT) {
            Err(Error::PermissionDenied(text)) => {
                assert_eq!(text, "Permissions Violation for Publish to \"no.svc\"")
            }
            other => panic!("{other:?}"),
        }
    }
    assert!(matches!(
        allowed.wait(WAIT),
        Err(Error::NoResponders { .. })
    ));
    assert_eq!(client.statistics().publish_denied, 2);
    client.close().unwrap();
}

#[test]
fn a_server_without_header_support_takes_plain_messages_and_headers_fail_at_the_call() {
    // Such a server refuses a CONNECT that asks for no-responder replies, and closes: the
    // client asks for headers and those replies only where the INFO offers headers.
    let server = ServerConfig::new().extra("no_header_support: true").start();
    // The independent subscriber: the protocol over a plain socket (nats-py asks for
    // headers whatever the server says, and is refused).
    let mut raw = proto_tests::RawConn::connect(server.port());
    assert_eq!(raw.info()["headers"], serde_json::Value::Bool(false));
    raw.send(b"CONNECT {\"verbose\":false}\r\nSUB nh.> 1\r\nPING\r\n");
    raw.read_until(b"PONG\r\n", WAIT);
    let client = connect(&server.url());
    client.publish("nh.plain", b"first").unwrap();
    let mut headers = HeaderMap::new();
    headers.append("a", "b").unwrap();
    let err = client
        .publish_with_headers("nh.headers", &headers, b"x")
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "config: headers: the server does not support headers"
    );
    client.publish("nh.plain", b"last").unwrap();
    client.flush(WAIT).unwrap();
    let got = raw.read_until(b"last\r\n", WAIT);
    assert_eq!(
        String::from_utf8_lossy(&got),
        "MSG nh.plain 1 5\r\nfirst\r\nMSG nh.plain 1 4\r\nlast\r\n"
    );
    assert!(client.is_connected());
    assert_eq!(client.statistics().reconnects, 0);
    client.close().unwrap();
}

#[test]
fn close_loses_nothing_published_before_it() {
    const N: usize = 100_000;
    let server = ServerConfig::new().start();
    let mut py = PySubscriber::start(&server.url(), "bulk");
    let client = connect(&server.url());
    for i in 0..N {
        client
            .publish("bulk", format!("{i:06}").as_bytes())
            .unwrap();
    }
    client.close().unwrap();
    let got = py.wait_for(N, Duration::from_secs(60));
    assert_eq!(got.len(), N);
    for (i, m) in got.iter().enumerate() {
        assert_eq!(
            m.payload,
            format!("{i:06}").as_bytes(),
            "message {i} out of order"
        );
    }
}

#[test]
fn refused_connection_is_a_clear_error() {
    let port = proto_tests::free_port();
    let err = Options::new()
        .servers(&format!("nats://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("refused"), "{err}");
}

fn tls_error(server: &proto_tests::NatsServer, ca: &std::path::Path) -> String {
    let err = Options::new()
        .servers(&server.url().replace("nats://", "tls://"))
        .unwrap()
        .add_root_certificate(ca)
        .connect()
        .unwrap_err();
    match err {
        Error::Tls(reason) => reason,
        other => panic!("expected a TLS error, got {other:?}"),
    }
}

#[test]
fn a_certificate_for_another_host_is_refused_unless_that_name_is_configured() {
    let certs = TlsFiles::generate();
    // A certificate for wrong.example only, reached as 127.0.0.1.
    let server = ServerConfig::new()
        .tls_with(
            &certs.wrong_host_server_cert,
            &certs.wrong_host_server_key,
            &certs.ca_cert,
        )
        .start();
    let reason = tls_error(&server, &certs.ca_cert);
    assert!(
        reason.starts_with("invalid server certificate: not valid for the server's name"),
        "{reason}"
    );
    let client = Options::new()
        .servers(&server.url().replace("nats://", "tls://"))
        .unwrap()
        .add_root_certificate(&certs.ca_cert)
        .tls_server_name("wrong.example")
        .connect()
        .unwrap();
    client.publish("named", b"x").unwrap();
    client.flush(WAIT).unwrap();
    client.close().unwrap();
}

/// The child side of [`the_systems_cas_are_trusted_as_openssl_finds_them`]: set only in the
/// process that test starts.
const SYSTEM_ROOTS_CHILD: &str = "ARN_TEST_SYSTEM_ROOTS_URL";

#[test]
fn the_systems_cas_are_trusted_as_openssl_finds_them() {
    if let Ok(url) = std::env::var(SYSTEM_ROOTS_CHILD) {
        // In the child: SSL_CERT_FILE names the test CA, and no CA file is given.
        let system_roots = std::env::var("ARN_TEST_SYSTEM_ROOTS").as_deref() == Ok("on");
        let outcome = Options::new()
            .servers(&url)
            .unwrap()
            .system_roots(system_roots)
            .connect()
            .and_then(|c| c.close());
        match outcome {
            Ok(()) => println!("child: connected"),
            Err(e) => println!("child: {e}"),
        }
        return;
    }
    let certs = TlsFiles::generate();
    let server = ServerConfig::new().tls(&certs).start();
    let url = server.url().replace("nats://", "tls://");
    let child = |system_roots: &str| {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "the_systems_cas_are_trusted_as_openssl_finds_them",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(SYSTEM_ROOTS_CHILD, &url)
            .env("ARN_TEST_SYSTEM_ROOTS", system_roots)
            .env("SSL_CERT_FILE", &certs.ca_cert)
            .env_remove("SSL_CERT_DIR")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(out.status.success(), "{stdout}");
        stdout
            .lines()
            .find_map(|l| l.split_once("child: ").map(|(_, said)| said))
            .unwrap_or_else(|| panic!("the child said nothing: {stdout}"))
            .to_owned()
    };
    assert_eq!(child("on"), "connected");
    assert!(
        child("off").contains("signed by an unknown issuer"),
        "without the system's CAs the test CA is unknown"
    );
}

#[test]
fn an_expired_certificate_is_refused() {
    let certs = TlsFiles::generate();
    let server = ServerConfig::new()
        .tls_with(
            &certs.expired_server_cert,
            &certs.expired_server_key,
            &certs.ca_cert,
        )
        .start();
    assert_eq!(
        tls_error(&server, &certs.ca_cert),
        "invalid server certificate: expired"
    );
}

/// Every message `sub` yields until it ends, on a thread of its own: `None` if it has not
/// ended within `timeout`.
fn drain_until_end(sub: Subscription, timeout: Duration) -> Option<Vec<Vec<u8>>> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let got: Vec<Vec<u8>> = sub.iter().map(|m| m.payload).collect();
        let _ = tx.send(got);
    });
    rx.recv_timeout(timeout).ok()
}

#[test]
fn an_automatic_unsubscribe_counts_from_the_subscribe_as_the_server_does() {
    let server = ServerConfig::new().start();
    let client = connect(&server.url());
    let publish = |range: std::ops::Range<u32>| {
        for i in range {
            client.publish("auto.x", i.to_string().as_bytes()).unwrap();
        }
        client.flush(WAIT).unwrap();
    };

    let sub = client.subscribe("auto.>").unwrap();
    publish(0..2);
    for i in 0..2 {
        assert_eq!(
            sub.next_timeout(WAIT).unwrap().payload,
            i.to_string().as_bytes()
        );
    }
    // Five in all: three more. The server is told 5, since it counts from the SUB too.
    sub.unsubscribe_after(5).unwrap();
    client.flush(WAIT).unwrap();
    assert_eq!(server.subscription_max("auto.>"), Some(5));
    publish(2..8);
    let got = drain_until_end(sub, WAIT).expect("the subscription ended at its limit");
    assert_eq!(got, [b"2", b"3", b"4"]);
    proto_tests::wait_until(WAIT, "the server to end the subscription", || {
        server.subscription_max("auto.>").is_none()
    });

    // A limit already reached ends the subscription at once, on both sides; of the
    // messages that arrived before it was set, those beyond it are not handed out.
    let sub = client.subscribe("now.>").unwrap();
    for i in 0..10 {
        client.publish("now.x", i.to_string().as_bytes()).unwrap();
    }
    client.flush(WAIT).unwrap();
    proto_tests::wait_until(WAIT, "the ten messages to arrive", || {
        client.statistics().in_msgs >= 10
    });
    sub.next_timeout(WAIT).unwrap();
    sub.unsubscribe_after(3).unwrap();
    let got = drain_until_end(sub, WAIT).expect("ended at once");
    assert_eq!(got, [b"1", b"2"], "three in all");
    proto_tests::wait_until(WAIT, "the server to end the subscription", || {
        server.subscription_max("now.>").is_none()
    });

    // unsubscribe: the server's subscription goes too.
    let sub = client.subscribe("gone.>").unwrap();
    server.wait_for_subscription("gone.>", WAIT);
    sub.unsubscribe().unwrap();
    proto_tests::wait_until(WAIT, "the server to end the subscription", || {
        !server.has_subscription("gone.>")
    });
    client.close().unwrap();
}

#[test]
fn messages_a_slow_consumer_dropped_count_toward_the_limit() {
    let server = ServerConfig::new().start();
    let (opts, events) = recording(
        Options::new()
            .servers(&server.url())
            .unwrap()
            .subscription_capacity(1),
    );
    let client = opts.connect().unwrap();
    let sub = client.subscribe("slow.>").unwrap();
    let sid = sub.sid();
    sub.unsubscribe_after(3).unwrap();
    for i in 0..5 {
        client.publish("slow.x", i.to_string().as_bytes()).unwrap();
    }
    client.flush(WAIT).unwrap();
    // The server sent three; the queue held one. The subscription ends at the third
    // all the same, instead of waiting for one the server will not send.
    let got = drain_until_end(sub, WAIT).expect("the subscription ended at its limit");
    assert_eq!(got, [b"0"]);
    assert_eq!(client.statistics().slow_consumer_drops, 2);
    client.close().unwrap();
    let slow: Vec<u64> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            Event::SlowConsumer { sid } => Some(*sid),
            _ => None,
        })
        .collect();
    assert_eq!(slow, [sid, sid], "one event per dropped message");
}

#[test]
fn a_verbose_pedantic_connection_takes_every_ok_and_loses_nothing() {
    // The server's trace shows what was asked and what it answered.
    let server = ServerConfig::new().extra("trace: true").start();
    let mut py = PySubscriber::start(&server.url(), "loud.>");
    let (opts, events) = recording(
        Options::new()
            .servers(&server.url())
            .unwrap()
            .name("loud")
            .verbose(true)
            .pedantic(true),
    );
    let client = opts.connect().unwrap();
    let own = client.subscribe("loud.*").unwrap();
    let mut h = HeaderMap::new();
    h.append("n", "1").unwrap();
    for i in 0..500 {
        client
            .publish("loud.plain", format!("{i}").as_bytes())
            .unwrap();
        client
            .publish_with_headers("loud.headers", &h, b"h")
            .unwrap();
    }
    client.flush(WAIT).unwrap();
    assert_eq!(py.wait_for(1000, WAIT).len(), 1000);
    for _ in 0..1000 {
        own.next_timeout(WAIT).unwrap();
    }
    // Every operation got its +OK: the server counted no error, and the client saw none.
    let connz = server.monitor("/connz");
    let ours = connz["connections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["in_msgs"] == 1000)
        .unwrap_or_else(|| panic!("our connection in {connz}"));
    assert_eq!(ours["subscriptions"], 1, "{ours}");
    client.close().unwrap();
    let errors: Vec<Event> = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| matches!(e, Event::ServerError(_)))
        .cloned()
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    let log = server.log();
    let connect = log
        .lines()
        .find(|l| l.contains("<<- [CONNECT") && l.contains("\"name\":\"loud\""))
        .unwrap_or_else(|| panic!("our CONNECT in the trace:\n{log}"));
    assert!(
        connect.contains("\"verbose\":true") && connect.contains("\"pedantic\":true"),
        "{connect}"
    );
    // One +OK for the CONNECT, the SUB and each of the 1,000 publishes at least.
    let oks = log.lines().filter(|l| l.ends_with("->> [OK]")).count();
    assert!(oks >= 1002, "{oks} +OK in the trace");
}

#[test]
fn a_user_whose_jwt_expires_mid_connection_is_told_so() {
    let jwt = JwtSetup::new();
    let server = ServerConfig::new().operator_mode(&jwt).start();
    let dir = std::env::temp_dir().join(format!("arn-expiring-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("expiring.creds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let user = jwt.user_with("expiring", serde_json::json!({}), Some(now + 6));
    std::fs::write(&path, user.creds()).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let client = Options::new()
        .servers(&server.url())
        .unwrap()
        .credentials_file(&path)
        .allow_reconnect(false)
        .event_callback(move |e| {
            let _ = tx.send(e);
        })
        .connect()
        .unwrap();
    client.flush(WAIT).unwrap();
    // The server ends the connection when the JWT expires, saying why.
    let mut said = None;
    while let Ok(e) = rx.recv_timeout(WAIT) {
        match e {
            Event::ServerError(text) => said = Some(text),
            Event::Closed => break,
            _ => {}
        }
    }
    assert_eq!(said.as_deref(), Some("User Authentication Expired"));
    assert!(client.is_closed());
    assert_eq!(
        client.last_error().as_deref(),
        Some("the server closed the connection after: auth: user authentication expired")
    );
    assert!(matches!(client.publish("x", b""), Err(Error::Closed)));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn when_no_server_of_several_answers_the_last_reason_is_kept() {
    let ports = [proto_tests::free_port(), proto_tests::free_port()];
    let urls = format!(
        "nats://127.0.0.1:{},nats://127.0.0.1:{}",
        ports[0], ports[1]
    );
    let err = Options::new()
        .servers(&urls)
        .unwrap()
        .connect()
        .unwrap_err();
    match &err {
        Error::NoServers(last) => assert!(matches!(**last, Error::Io { .. }), "{last:?}"),
        other => panic!("expected NoServers, got {other:?}"),
    }
    let text = err.to_string();
    assert!(
        text.starts_with(
            "connect: no server could be reached; last: io: connect to nats://127.0.0.1:"
        ),
        "{text}"
    );
}

#[test]
fn a_limit_set_while_messages_are_on_their_way_counts_what_the_server_sent() {
    // The reader is held in an event callback while the server delivers past the limit
    // set meanwhile; nats-server, told a count it has passed, ends its subscription at
    // once. The client ends its own at the same count: the first message, whose subject
    // is not UTF-8, is dropped but counted, as the server counted it.
    let server = ServerConfig::new().start();
    let (held_tx, held_rx) = std::sync::mpsc::channel::<()>();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let go_rx = std::sync::Mutex::new(go_rx);
    let client = Options::new()
        .servers(&server.url())
        .unwrap()
        .event_callback(move |e| {
            if let Event::ServerError(text) = e {
                if text.contains("not UTF-8") {
                    let _ = held_tx.send(());
                    let _ = go_rx.lock().unwrap().recv_timeout(WAIT);
                }
            }
        })
        .connect()
        .unwrap();
    let sub = client.subscribe("late.>").unwrap();
    server.wait_for_subscription("late.>", WAIT);
    raw_publish(&server.url(), b"PUB late.\xff 1\r\nx\r\n");
    held_rx.recv_timeout(WAIT).expect("the reader held");
    let publisher = connect(&server.url());
    for i in 2..=5 {
        publisher
            .publish("late.x", format!("{i}").as_bytes())
            .unwrap();
    }
    publisher.flush(WAIT).unwrap();
    // Three in all; the server has sent five by now.
    sub.unsubscribe_after(3).unwrap();
    // The server has sent five: it ends the subscription at once.
    proto_tests::wait_until(WAIT, "the server to end the subscription", || {
        !server.has_subscription("late.>")
    });
    go_tx.send(()).unwrap();
    let got = drain_until_end(sub, WAIT).expect("the subscription ended at its limit");
    assert_eq!(got, [b"2", b"3"]);
    client.close().unwrap();
    publisher.close().unwrap();
}

#[test]
fn a_limit_beyond_what_the_server_reads_is_kept_by_the_client_and_can_be_lowered_not_raised() {
    let server = ServerConfig::new().start();
    let client = connect(&server.url());
    let sub = client.subscribe("big.>").unwrap();
    // Ten digits: nats-server would read no count at all and end the subscription at once.
    sub.unsubscribe_after(5_000_000_000).unwrap();
    client.flush(WAIT).unwrap();
    assert_eq!(server.subscription_max("big.>"), Some(0));
    for i in 0..3 {
        client.publish("big.x", format!("{i}").as_bytes()).unwrap();
    }
    client.flush(WAIT).unwrap();
    for i in 0..3 {
        assert_eq!(
            sub.next_timeout(WAIT).unwrap().payload,
            format!("{i}").as_bytes()
        );
    }
    match sub.unsubscribe_after(6_000_000_000) {
        Err(Error::Config(text)) => assert!(text.contains("lowered, not raised"), "{text}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Lowered to 4: the server is told, and ends it after one more.
    sub.unsubscribe_after(4).unwrap();
    client.flush(WAIT).unwrap();
    assert_eq!(server.subscription_max("big.>"), Some(4));
    for i in 3..6 {
        client.publish("big.x", format!("{i}").as_bytes()).unwrap();
    }
    client.flush(WAIT).unwrap();
    let got = drain_until_end(sub, WAIT).expect("ended at the lowered limit");
    assert_eq!(got, [b"3"]);
    client.close().unwrap();
}

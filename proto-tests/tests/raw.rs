//! The raw protocol connection against real servers: TLS after INFO, TLS first, what the
//! transcript records, and how a closed connection and a timeout are told apart.

use std::time::Duration;

use ansible_runner_nats::proto::ClientOp;
use ansible_runner_nats::raw::{Direction, RawConnection, RawOp};
use ansible_runner_nats::tls::TlsOptions;
use ansible_runner_nats::Error;
use proto_tests::{ServerConfig, TlsFiles};

const T: Duration = Duration::from_secs(5);

fn hello(conn: &mut RawConnection) {
    conn.send(&ClientOp::Connect(Box::default())).unwrap();
    conn.send_raw(b"PING\r\n").unwrap();
    loop {
        match conn.next_op(T).unwrap() {
            RawOp::Pong => return,
            RawOp::Info(_) => continue,
            other => panic!("expected PONG, got {other:?}"),
        }
    }
}

fn tls(certs: &TlsFiles) -> TlsOptions {
    TlsOptions {
        ca_files: vec![certs.ca_cert.clone()],
        ..TlsOptions::default()
    }
}

#[test]
fn tls_after_info() {
    let certs = TlsFiles::generate();
    let server = ServerConfig::new().tls(&certs).start();
    let mut conn = RawConnection::connect(&server.url(), T).unwrap();
    let info = conn.read_info(T).unwrap();
    assert!(info.tls_required);
    conn.upgrade_tls(&tls(&certs), T).unwrap();
    hello(&mut conn);
}

#[test]
fn tls_first() {
    let certs = TlsFiles::generate();
    let server = ServerConfig::new().tls(&certs).tls_first().start();
    let mut conn = RawConnection::connect(&server.url(), T).unwrap();
    conn.upgrade_tls(&tls(&certs), T).unwrap();
    assert!(conn.read_info(T).unwrap().tls_required);
    hello(&mut conn);
}

#[test]
fn an_untrusted_certificate_is_a_tls_error() {
    let certs = TlsFiles::generate();
    let server = ServerConfig::new().tls(&certs).start();
    let mut conn = RawConnection::connect(&server.url(), T).unwrap();
    conn.read_info(T).unwrap();
    let other = TlsOptions {
        ca_files: vec![certs.other_ca_cert.clone()],
        ..TlsOptions::default()
    };
    assert!(matches!(conn.upgrade_tls(&other, T), Err(Error::Tls(_))));
}

#[test]
fn transcript_timeouts_and_close() {
    let server = ServerConfig::new().start();
    let mut conn = RawConnection::connect(&server.url(), T).unwrap();
    conn.read_info(T).unwrap();
    hello(&mut conn);
    // Nothing (but perhaps the INFO that follows CONNECT) to read: a timeout, and the
    // connection is still usable.
    loop {
        match conn.next_op(Duration::from_millis(100)) {
            Ok(RawOp::Info(_)) => continue,
            Err(Error::Timeout { .. }) => break,
            other => panic!("expected a timeout, got {other:?}"),
        }
    }
    conn.send_raw(b"BOGUS\r\n").unwrap();
    let seen = conn.expect_close(T).unwrap();
    assert!(
        seen.iter()
            .any(|op| matches!(op, RawOp::Err(t) if t == "Unknown Protocol Operation")),
        "{seen:?}"
    );
    assert!(matches!(conn.next_op(T), Err(Error::Closed)));

    let t = conn.transcript();
    assert_eq!(t[0].0, Direction::Received);
    assert!(t[0].1.starts_with(b"INFO "));
    let sent: Vec<u8> = t
        .iter()
        .filter(|(d, _)| *d == Direction::Sent)
        .flat_map(|(_, b)| b.clone())
        .collect();
    assert!(sent.starts_with(b"CONNECT {"));
    assert!(sent.ends_with(b"PING\r\nBOGUS\r\n"));
    let text = conn.transcript_text();
    assert!(text.contains("C: BOGUS\\r\\n"), "{text}");
    assert!(
        text.contains("S: -ERR 'Unknown Protocol Operation'\\r\\n"),
        "{text}"
    );
}

#[test]
fn the_transcript_keeps_the_last_64_kib_however_long_one_direction_runs() {
    let server = ServerConfig::new().start();
    let mut conn = RawConnection::connect(&server.url(), T).unwrap();
    conn.read_info(T).unwrap();
    hello(&mut conn);
    conn.send_raw(b"SUB many 1\r\n").unwrap();
    // 2,000 messages of 1 KiB sent in one run, then received in one run.
    let payload = vec![b'x'; 1024];
    let mut frames = Vec::new();
    for _ in 0..2000 {
        frames.extend_from_slice(b"PUB many 1024\r\n");
        frames.extend_from_slice(&payload);
        frames.extend_from_slice(b"\r\n");
    }
    conn.send_raw(&frames).unwrap();
    let mut got = 0;
    while got < 2000 {
        if let RawOp::Msg { .. } = conn.next_op(T).unwrap() {
            got += 1;
        }
    }
    let held: usize = conn.transcript().iter().map(|(_, b)| b.len()).sum();
    assert!(held <= 64 * 1024, "{held} bytes held");
    let last = conn.transcript().last().unwrap();
    assert_eq!(last.0, Direction::Received);
    assert!(
        last.1.starts_with(b"MSG many 1 1024\r\n"),
        "kept from a line's start"
    );
}

#[test]
fn a_control_line_over_the_set_bound_is_a_protocol_error() {
    let server = ServerConfig::new().start();
    let mut conn = RawConnection::connect(&server.url(), T).unwrap();
    // nats-server's INFO is some hundreds of bytes: over a 64-byte bound.
    conn.set_max_control_line(64);
    match conn.read_info(T) {
        Err(Error::Protocol(e)) => assert_eq!(e.to_string(), "control line longer than 64 bytes"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
    let mut conn = RawConnection::connect(&server.url(), T).unwrap();
    conn.set_max_control_line(4096);
    conn.read_info(T).unwrap();
    hello(&mut conn);
}

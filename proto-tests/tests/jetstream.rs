//! Request/reply and JetStream publishing against real nats-server processes with
//! JetStream on file storage.

use std::thread;
use std::time::Duration;

use ansible_runner_nats::client::{self, Client};
use ansible_runner_nats::headers::HeaderMap;
use ansible_runner_nats::jetstream::{JetStream, StreamConfig, EXPECTED_STREAM, MSG_ID};
use ansible_runner_nats::Error;
use proto_tests::{NatsServer, ServerConfig};

const WAIT: Duration = Duration::from_secs(10);

fn js_server() -> NatsServer {
    ServerConfig::new().jetstream().start()
}

fn with_id(id: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(MSG_ID, id).unwrap();
    h
}

/// Answers every request on `subject` with its payload reversed, in its own thread,
/// until `nc` is closed (or nothing came for `WAIT`).
fn responder(nc: &Client, subject: &str) -> thread::JoinHandle<usize> {
    let sub = nc.subscribe(subject).unwrap();
    nc.flush(WAIT).unwrap();
    let nc = nc.clone();
    thread::spawn(move || {
        let mut answered = 0;
        while let Ok(m) = sub.next_timeout(WAIT) {
            let mut body = m.payload.clone();
            body.reverse();
            nc.publish(m.reply.as_deref().unwrap(), &body).unwrap();
            answered += 1;
        }
        answered
    })
}

#[test]
fn request_reply_matches_replies_to_requests() {
    let server = ServerConfig::new().start();
    let service = client::connect(&server.url()).unwrap();
    let answering = responder(&service, "svc.reverse");
    let nc = client::connect(&server.url()).unwrap();

    let one = nc.request("svc.reverse", b"abc", WAIT).unwrap();
    assert_eq!(one.payload, b"cba");

    // Many in flight on the one inbox, collected in reverse order.
    let pending: Vec<_> = (0..200)
        .map(|i| {
            nc.request_async("svc.reverse", None, format!("{i:03}").as_bytes())
                .unwrap()
        })
        .collect();
    for (i, p) in pending.iter().enumerate().rev() {
        let mut want = format!("{i:03}").into_bytes();
        want.reverse();
        assert_eq!(p.wait(WAIT).unwrap().payload, want);
    }
    nc.close().unwrap();
    service.close().unwrap();
    assert_eq!(answering.join().unwrap(), 201);
}

#[test]
fn waiting_for_a_reply_ends_the_write_linger() {
    let server = ServerConfig::new().start();
    let service = client::connect(&server.url()).unwrap();
    let answering = responder(&service, "svc.reverse");
    // A linger far longer than the wait: without the wait ending it, the request would
    // sit in the writer's batch and time out.
    let nc = client::Options::new()
        .servers(&server.url())
        .unwrap()
        .write_linger(Duration::from_secs(30))
        .connect()
        .unwrap();
    for i in 0..20 {
        // Back to back: after the first write, each request comes within the linger.
        let reply = nc.request("svc.reverse", b"ab", Duration::from_secs(5));
        assert_eq!(reply.unwrap().payload, b"ba", "request {i}");
    }
    nc.close().unwrap();
    service.close().unwrap();
    assert_eq!(answering.join().unwrap(), 20);
}

#[test]
fn no_responders_and_timeouts_are_told_apart() {
    let server = ServerConfig::new().start();
    let nc = client::connect(&server.url()).unwrap();
    match nc.request("nobody.here", b"?", WAIT) {
        Err(Error::NoResponders { subject }) => assert_eq!(subject, "nobody.here"),
        other => panic!("expected NoResponders, got {other:?}"),
    }
    // A subscriber that never answers: a timeout, not "no responders".
    let _silent = nc.subscribe("silent").unwrap();
    nc.flush(WAIT).unwrap();
    match nc.request("silent", b"?", Duration::from_millis(200)) {
        Err(Error::Timeout { what, .. }) => assert_eq!(what, "request"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(matches!(
        nc.request("bad subject", b"", WAIT),
        Err(Error::InvalidSubject(_))
    ));
    nc.close().unwrap();
}

#[test]
fn acknowledged_publishes_are_stored_once_per_message_id() {
    let server = js_server();
    let nc = client::connect(&server.url()).unwrap();
    let js = JetStream::new(&nc, WAIT);
    js.create_stream(&StreamConfig::new("RUNS", &["runs.>"]))
        .unwrap();
    // Creating it again with the same configuration is fine.
    js.create_stream(&StreamConfig::new("RUNS", &["runs.>"]))
        .unwrap();

    let first = js.publish("runs.a", &with_id("e-1"), b"one").unwrap();
    assert_eq!(
        (first.stream.as_str(), first.seq, first.duplicate),
        ("RUNS", 1, false)
    );
    let again = js.publish("runs.a", &with_id("e-1"), b"one").unwrap();
    assert!(again.duplicate);
    assert_eq!(again.seq, 1);
    let second = js.publish("runs.b", &with_id("e-2"), b"two").unwrap();
    assert_eq!(second.seq, 2);
    assert_eq!(js.stream_state("RUNS").unwrap().messages, 2);

    let stored = js.get_message("RUNS", 2).unwrap();
    assert_eq!(stored.subject, "runs.b");
    assert_eq!(stored.payload, b"two");
    assert_eq!(stored.headers.unwrap().get(MSG_ID), Some("e-2"));
    nc.close().unwrap();
}

#[test]
fn api_errors_carry_their_codes() {
    let server = js_server();
    let nc = client::connect(&server.url()).unwrap();
    let js = JetStream::new(&nc, WAIT);
    js.create_stream(&StreamConfig::new("RUNS", &["runs.>"]))
        .unwrap();

    let mut h = with_id("x");
    h.insert(EXPECTED_STREAM, "OTHER").unwrap();
    match js.publish("runs.a", &h, b"") {
        Err(Error::JetStream { code, err_code, .. }) => {
            assert_eq!((code, err_code), (400, 10060), "expected stream mismatch");
        }
        other => panic!("expected a JetStream error, got {other:?}"),
    }
    // No stream captures the subject: nobody answers.
    assert!(matches!(
        js.publish("elsewhere", &with_id("y"), b""),
        Err(Error::NoResponders { .. })
    ));
    // The same name with other subjects is refused by the server.
    match js.create_stream(&StreamConfig::new("RUNS", &["other.>"])) {
        Err(Error::JetStream { err_code, .. }) => assert_eq!(err_code, 10058),
        other => panic!("expected a JetStream error, got {other:?}"),
    }
    assert!(matches!(
        js.stream_state("MISSING"),
        Err(Error::JetStream { code: 404, .. })
    ));
    nc.close().unwrap();
}

#[test]
fn pipelined_acks_store_every_message_in_order() {
    let server = js_server();
    let nc = client::connect(&server.url()).unwrap();
    let js = JetStream::new(&nc, WAIT);
    js.create_stream(&StreamConfig::new("RUNS", &["runs.>"]))
        .unwrap();
    let pending: Vec<_> = (0..2_000)
        .map(|i| {
            js.publish_async("runs.p", &with_id(&format!("p-{i}")), b"x")
                .unwrap()
        })
        .collect();
    let seqs: Vec<u64> = pending.iter().map(|p| p.wait(WAIT).unwrap().seq).collect();
    assert_eq!(seqs, (1..=2_000).collect::<Vec<u64>>());
    assert_eq!(js.stream_state("RUNS").unwrap().messages, 2_000);
    nc.close().unwrap();
}

#[test]
fn a_file_stream_survives_a_restart_and_still_deduplicates() {
    let mut server = js_server();
    let nc = client::connect(&server.url()).unwrap();
    let js = JetStream::new(&nc, WAIT);
    js.create_stream(&StreamConfig::new("RUNS", &["runs.>"]))
        .unwrap();
    for i in 0..50 {
        js.publish("runs.r", &with_id(&format!("r-{i}")), b"x")
            .unwrap();
    }
    nc.close().unwrap();
    server.restart();

    let nc = client::connect(&server.url()).unwrap();
    let js = JetStream::new(&nc, WAIT);
    // JetStream may need a moment after a restart to recover the stream.
    proto_tests::wait_until(WAIT, "the stream to be back", || {
        js.stream_state("RUNS").is_ok_and(|s| s.messages == 50)
    });
    let again = js.publish("runs.r", &with_id("r-7"), b"x").unwrap();
    assert!(
        again.duplicate,
        "the id is still remembered after a restart"
    );
    assert_eq!(js.stream_state("RUNS").unwrap().messages, 50);
    nc.close().unwrap();
}

#[test]
fn headers_go_both_ways_on_a_request_and_a_deleted_stream_is_gone() {
    let server = js_server();
    // A service that answers with the request's headers and one of its own.
    let service = client::connect(&server.url()).unwrap();
    let sub = service.subscribe("svc.echo").unwrap();
    service.flush(WAIT).unwrap();
    let answering = {
        let service = service.clone();
        thread::spawn(move || {
            let m = sub.next_timeout(WAIT).unwrap();
            let mut h = m.headers.clone().expect("the request's headers");
            h.append("answered-by", "echo").unwrap();
            service
                .publish_with_headers(m.reply.as_deref().unwrap(), &h, &m.payload)
                .unwrap();
            // A second request, sent by hand with a reply subject and headers.
            let m = sub.next_timeout(WAIT).unwrap();
            (
                m.reply,
                m.headers.and_then(|h| h.get("trace").map(str::to_owned)),
            )
        })
    };
    let nc = client::connect(&server.url()).unwrap();
    let mut h = HeaderMap::new();
    h.append("trace", "t-1").unwrap();
    let reply = nc
        .request_with_headers("svc.echo", &h, b"ping", WAIT)
        .unwrap();
    assert_eq!(reply.payload, b"ping");
    let got = reply.headers.expect("the reply's headers");
    assert_eq!(got.get("trace"), Some("t-1"));
    assert_eq!(got.get("answered-by"), Some("echo"));

    nc.publish_with_reply_and_headers("svc.echo", "my.replies", &h, b"by hand")
        .unwrap();
    nc.flush(WAIT).unwrap();
    assert_eq!(
        answering.join().unwrap(),
        (Some("my.replies".to_owned()), Some("t-1".to_owned()))
    );

    let js = JetStream::new(&nc, WAIT);
    js.create_stream(&StreamConfig::new("GONE", &["gone.>"]))
        .unwrap();
    js.publish("gone.a", &with_id("1"), b"x").unwrap();
    assert_eq!(js.stream_state("GONE").unwrap().messages, 1);
    js.delete_stream("GONE").unwrap();
    assert!(matches!(
        js.stream_state("GONE"),
        Err(Error::JetStream {
            code: 404,
            err_code: 10059,
            ..
        })
    ));
    assert!(matches!(
        js.publish("gone.a", &with_id("2"), b"x"),
        Err(Error::NoResponders { .. })
    ));
    nc.close().unwrap();
    service.close().unwrap();
}

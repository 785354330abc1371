//! The client against a scripted fake server driven by the crate's own codec: exact
//! CONNECT fields, server PINGs, `-ERR` mid-stream, INFO split into tiny reads, a server
//! that never speaks, and what a lost connection does to a pending flush and to the next.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use ansible_runner_nats::client::{Client, Event, Options};
use ansible_runner_nats::proto::{parse_client_op, ClientOp, ServerInfo, ServerOp, Status};
use ansible_runner_nats::Error;
use proto_tests::wait_until;
use serde_json::{json, Value};

const STEP: Duration = Duration::from_secs(5);

/// One accepted connection, read and written through the codec.
struct FakeConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

/// What the fake saw from the client, owned.
#[derive(Debug, PartialEq)]
enum Seen {
    Connect(Value),
    Pub {
        subject: String,
        reply: Option<String>,
        header: Option<Vec<u8>>,
        payload: Vec<u8>,
    },
    Sub(String, u64),
    Unsub(u64, Option<u64>),
    Ping,
    Pong,
}

impl FakeConn {
    fn send(&mut self, op: ServerOp<'_>) {
        let mut out = Vec::new();
        op.encode(&mut out);
        self.stream.write_all(&out).expect("fake server write");
    }

    fn info(&mut self, info: ServerInfo) {
        self.send(ServerOp::Info(Box::new(info)));
    }

    /// The next client operation, waiting at most `STEP`.
    fn next(&mut self) -> Seen {
        self.try_next(STEP)
            .expect("the client sent nothing in time")
    }

    fn try_next(&mut self, timeout: Duration) -> Option<Seen> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Status::Complete((op, used)) =
                parse_client_op(&self.buf, 4096).expect("the client sent a malformed op")
            {
                let seen = match op {
                    ClientOp::Connect(_) => {
                        // Check the raw JSON, not our own parse of it.
                        let line_end = self.buf.windows(2).position(|w| w == b"\r\n").unwrap();
                        Seen::Connect(serde_json::from_slice(&self.buf[8..line_end]).unwrap())
                    }
                    ClientOp::Pub {
                        subject,
                        reply,
                        payload,
                    } => Seen::Pub {
                        subject: subject.into(),
                        reply: reply.map(Into::into),
                        header: None,
                        payload: payload.to_vec(),
                    },
                    ClientOp::Hpub {
                        subject,
                        reply,
                        header,
                        payload,
                    } => Seen::Pub {
                        subject: subject.into(),
                        reply: reply.map(Into::into),
                        header: Some(header.to_vec()),
                        payload: payload.to_vec(),
                    },
                    ClientOp::Sub { subject, sid, .. } => Seen::Sub(subject.into(), sid),
                    ClientOp::Unsub { sid, max } => Seen::Unsub(sid, max),
                    ClientOp::Ping => Seen::Ping,
                    ClientOp::Pong => Seen::Pong,
                };
                self.buf.drain(..used);
                return Some(seen);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(_) => return None,
            }
        }
    }

    /// Answers PINGs (as from a closing client's flush) until the client hangs up.
    fn serve_until_closed(&mut self) {
        while let Some(seen) = self.try_next(STEP) {
            if seen == Seen::Ping {
                self.send(ServerOp::Pong);
            }
        }
    }

    /// Completes the client's handshake: returns its CONNECT JSON after answering its PING.
    fn handshake(&mut self, info: ServerInfo) -> Value {
        self.info(info);
        let Seen::Connect(json) = self.next() else {
            panic!("expected CONNECT first")
        };
        assert_eq!(self.next(), Seen::Ping);
        self.send(ServerOp::Pong);
        json
    }
}

fn basic_info() -> ServerInfo {
    ServerInfo {
        server_id: "FAKE".into(),
        version: "2.15.1".into(),
        headers: true,
        max_payload: 1024 * 1024,
        proto: 1,
        ..ServerInfo::default()
    }
}

/// The next connection to `listener`.
fn accept(listener: &TcpListener) -> FakeConn {
    let (stream, _) = listener.accept().unwrap();
    stream.set_nodelay(true).unwrap();
    FakeConn {
        stream,
        buf: Vec::new(),
    }
}

/// Starts a fake server that runs `script` on its first connection.
fn fake_server<F>(script: F) -> (String, thread::JoinHandle<()>)
where
    F: FnOnce(FakeConn) + Send + 'static,
{
    let listener = proto_tests::loopback_listener();
    let url = format!("nats://{}", listener.local_addr().unwrap());
    let handle = thread::spawn(move || script(accept(&listener)));
    (url, handle)
}

#[test]
fn connect_sends_exactly_the_expected_fields() {
    let (tx, rx) = mpsc::channel();
    let (url, server) = fake_server(move |mut conn| {
        let connect = conn.handshake(basic_info());
        tx.send(connect).unwrap();
        // Then the publish arrives byte-exact.
        assert_eq!(
            conn.next(),
            Seen::Pub {
                subject: "a.b".into(),
                reply: None,
                header: None,
                payload: b"hi".to_vec()
            }
        );
        assert_eq!(conn.next(), Seen::Ping);
        conn.send(ServerOp::Pong);
        conn.serve_until_closed();
    });
    let client = Options::new()
        .servers(&url)
        .unwrap()
        .name("fake-test")
        .echo(false)
        .user_password("alice", "pw-secret")
        .connect()
        .expect("connect to the fake server");
    let connect = rx.recv_timeout(STEP).unwrap();
    assert_eq!(
        connect,
        json!({
            "verbose": false,
            "pedantic": false,
            "tls_required": false,
            "name": "fake-test",
            "lang": "rust",
            "version": env!("CARGO_PKG_VERSION"),
            "protocol": 1,
            "echo": false,
            "headers": true,
            "no_responders": true,
            "user": "alice",
            "pass": "pw-secret",
        })
    );
    client.publish("a.b", b"hi").unwrap();
    client.flush(STEP).unwrap();
    client.close().unwrap();
    server.join().unwrap();
}

#[test]
fn token_from_the_url_goes_into_auth_token() {
    let (tx, rx) = mpsc::channel();
    let (url, server) = fake_server(move |mut conn| {
        tx.send(conn.handshake(basic_info())).unwrap();
        conn.serve_until_closed();
    });
    let url = url.replace("nats://", "nats://s3cr3t-token@");
    let client = Options::new().servers(&url).unwrap().connect().unwrap();
    let connect = rx.recv_timeout(STEP).unwrap();
    assert_eq!(connect["auth_token"], "s3cr3t-token");
    assert!(connect.get("user").is_none());
    drop(client);
    server.join().unwrap();
}

#[test]
fn server_ping_is_answered_with_pong() {
    let (done_tx, done) = mpsc::channel();
    let (url, server) = fake_server(move |mut conn| {
        conn.handshake(basic_info());
        conn.send(ServerOp::Ping);
        assert_eq!(conn.next(), Seen::Pong);
        conn.send(ServerOp::Ping);
        assert_eq!(conn.next(), Seen::Pong);
        done_tx.send(()).unwrap();
        conn.serve_until_closed();
    });
    let client = Options::new().servers(&url).unwrap().connect().unwrap();
    done.recv_timeout(STEP).expect("the fake server's checks");
    drop(client);
    server.join().unwrap();
}

#[test]
fn err_mid_stream_is_reported_and_a_fatal_one_closes() {
    let (events_tx, events_rx) = mpsc::channel();
    let (url, server) = fake_server(|mut conn| {
        conn.handshake(basic_info());
        // A permission violation leaves the connection usable.
        conn.send(ServerOp::Err("Permissions Violation for Publish to \"x\""));
        assert_eq!(conn.next(), Seen::Ping);
        conn.send(ServerOp::Pong);
        // A stale-connection error is followed by the server closing the connection.
        conn.send(ServerOp::Err("Stale Connection"));
    });
    let events_tx = std::sync::Mutex::new(events_tx);
    let client = Options::new()
        .servers(&url)
        .unwrap()
        .allow_reconnect(false)
        .event_callback(move |e| {
            let _ = events_tx.lock().unwrap().send(e);
        })
        .connect()
        .unwrap();
    let next_event = || events_rx.recv_timeout(STEP).expect("an event");
    assert!(matches!(next_event(), Event::Connected { .. }));
    assert_eq!(
        next_event(),
        Event::ServerError("Permissions Violation for Publish to \"x\"".into())
    );
    client
        .flush(STEP)
        .expect("still connected after a permission violation");
    assert_eq!(next_event(), Event::ServerError("Stale Connection".into()));
    server.join().unwrap();
    match next_event() {
        Event::Disconnected { reason } => assert!(reason.contains("Stale Connection"), "{reason}"),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    assert!(!client.is_connected());
    assert!(matches!(client.publish("a", b"x"), Err(Error::Closed)));
}

#[test]
fn info_split_into_single_bytes_is_reassembled() {
    let (done_tx, done) = mpsc::channel();
    let (url, server) = fake_server(move |mut conn| {
        let mut info = Vec::new();
        ServerOp::Info(Box::new(basic_info())).encode(&mut info);
        for byte in info {
            conn.stream.write_all(&[byte]).unwrap();
            thread::sleep(Duration::from_millis(1));
        }
        let Seen::Connect(_) = conn.next() else {
            panic!("expected CONNECT")
        };
        assert_eq!(conn.next(), Seen::Ping);
        // PONG split too, followed at once by a PING in the same write.
        conn.stream.write_all(b"PO").unwrap();
        thread::sleep(Duration::from_millis(5));
        conn.stream.write_all(b"NG\r\nPING\r\n").unwrap();
        assert_eq!(conn.next(), Seen::Pong);
        done_tx.send(()).unwrap();
        conn.serve_until_closed();
    });
    let client = Options::new().servers(&url).unwrap().connect().unwrap();
    assert_eq!(client.server_info().server_id, "FAKE");
    done.recv_timeout(STEP).expect("the fake server's checks");
    drop(client);
    server.join().unwrap();
}

#[test]
fn a_server_that_never_sends_info_hits_the_connect_timeout() {
    let (url, server) = fake_server(|mut conn| {
        // Accept, then say nothing until the client gives up.
        let _ = conn.try_next(Duration::from_secs(5));
    });
    let started = Instant::now();
    let err = Options::new()
        .servers(&url)
        .unwrap()
        .connect_timeout(Duration::from_millis(300))
        .connect()
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err, Error::ConnectTimeout { timeout, .. } if timeout == Duration::from_millis(300)),
        "{err:?}"
    );
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert!(err.to_string().contains("timed out after 300ms"), "{err}");
    server.join().unwrap();
}

#[test]
fn authorization_violation_is_a_specific_error() {
    let (url, server) = fake_server(|mut conn| {
        conn.info(ServerInfo {
            auth_required: true,
            ..basic_info()
        });
        let Seen::Connect(_) = conn.next() else {
            panic!("expected CONNECT")
        };
        conn.send(ServerOp::Err("Authorization Violation"));
    });
    let err = Options::new()
        .servers(&url)
        .unwrap()
        .user_password("bob", "wrong")
        .connect()
        .unwrap_err();
    assert!(matches!(err, Error::AuthorizationViolation), "{err:?}");
    assert!(!format!("{err} {err:?}").contains("wrong"));
    server.join().unwrap();
}

#[test]
fn max_payload_is_checked_before_anything_is_queued() {
    let (url, server) = fake_server(|mut conn| {
        conn.handshake(ServerInfo {
            max_payload: 100,
            ..basic_info()
        });
        // The oversized publish never reaches the wire: the next op is the flush's PING.
        assert_eq!(
            conn.next(),
            Seen::Pub {
                subject: "ok".into(),
                reply: None,
                header: None,
                payload: vec![b'x'; 100]
            }
        );
        assert_eq!(conn.next(), Seen::Ping);
        conn.send(ServerOp::Pong);
        conn.serve_until_closed();
    });
    let client = Options::new().servers(&url).unwrap().connect().unwrap();
    let err = client.publish("big", &[b'x'; 101]).unwrap_err();
    assert!(
        matches!(
            err,
            Error::MaxPayload {
                size: 101,
                max: 100
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "publish: message of 101 bytes exceeds the server's max_payload of 100 bytes"
    );
    client.publish("ok", &[b'x'; 100]).unwrap();
    client.flush(STEP).unwrap();
    drop(client);
    server.join().unwrap();
}

#[test]
fn a_flush_pending_when_the_connection_dies_fails() {
    let (url, server) = fake_server(|mut conn| {
        conn.handshake(basic_info());
        assert!(matches!(conn.next(), Seen::Pub { .. }));
        assert_eq!(conn.next(), Seen::Ping);
        // Close instead of answering: the data may or may not have been processed.
        drop(conn);
    });
    let client = Options::new()
        .servers(&url)
        .unwrap()
        .allow_reconnect(false)
        .connect()
        .unwrap();
    client.publish("a", b"maybe lost").unwrap();
    let err = client.flush(STEP).unwrap_err();
    assert!(matches!(err, Error::Disconnected), "{err:?}");
    server.join().unwrap();
    // Nor may close call it delivered.
    let err = client.close().unwrap_err();
    assert!(
        matches!(err, Error::NotDelivered { messages: 1, .. }),
        "{err:?}"
    );
}

/// A fake server for two connections: the first runs `first`, the second completes the
/// handshake and answers PINGs until the client hangs up.
fn lost_then_served<F>(first: F) -> (Client, thread::JoinHandle<()>)
where
    F: FnOnce(FakeConn) + Send + 'static,
{
    let listener = proto_tests::loopback_listener();
    let url = format!("nats://{}", listener.local_addr().unwrap());
    let handle = thread::spawn(move || {
        first(accept(&listener));
        let mut second = accept(&listener);
        second.handshake(basic_info());
        second.serve_until_closed();
    });
    let client = Options::new()
        .servers(&url)
        .unwrap()
        .reconnect_time_wait(Duration::from_millis(10))
        .connect()
        .unwrap();
    (client, handle)
}

#[test]
fn a_flush_after_a_lost_connection_says_what_was_lost_with_it() {
    let (client, server) = lost_then_served(|mut conn| {
        conn.handshake(basic_info());
        for _ in 0..5 {
            assert!(matches!(conn.next(), Seen::Pub { .. }));
        }
        // Gone without confirming them: they may or may not have been processed.
        drop(conn);
    });
    for _ in 0..5 {
        client.publish("a", b"in flight").unwrap();
    }
    wait_until(STEP, "the reconnect", || {
        client.statistics().reconnects == 1
    });
    assert_eq!(client.statistics().lost, 5);
    // The new connection confirms the flush, but not the five written before it.
    let err = client.flush(STEP).unwrap_err();
    let Error::Lost {
        messages: 5,
        reason: lost_reason,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert!(
        err.to_string().starts_with(
            "connection: 5 messages were lost with a connection before the server confirmed them ("
        ),
        "{err}"
    );
    // Told once: later flushes are confirmed.
    client.flush(STEP).unwrap();
    client.publish("a", b"confirmed").unwrap();
    client.flush(STEP).unwrap();
    // The final count still has them, and why they were lost.
    let err = client.close().unwrap_err();
    assert!(
        matches!(&err, Error::NotDelivered { messages: 5, reason } if reason == lost_reason),
        "{err:?}"
    );
    server.join().unwrap();
}

#[test]
fn a_loss_a_flush_saw_happen_is_not_told_again() {
    let (client, server) = lost_then_served(|mut conn| {
        conn.handshake(basic_info());
        assert!(matches!(conn.next(), Seen::Pub { .. }));
        assert_eq!(conn.next(), Seen::Ping);
        drop(conn);
    });
    client.publish("a", b"maybe lost").unwrap();
    let err = client.flush(STEP).unwrap_err();
    assert!(matches!(err, Error::Disconnected), "{err:?}");
    wait_until(STEP, "the reconnect", || {
        client.statistics().reconnects == 1
    });
    assert_eq!(client.statistics().lost, 1);
    client.flush(STEP).unwrap();
    drop(client);
    server.join().unwrap();
}

#[test]
fn a_pong_nobody_asked_for_confirms_nothing() {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (url, server) = fake_server(move |mut conn| {
        conn.handshake(basic_info());
        conn.send(ServerOp::Pong);
        // The client answers this PING after it has read the stray PONG.
        conn.send(ServerOp::Ping);
        assert_eq!(conn.next(), Seen::Pong);
        ready_tx.send(()).unwrap();
        assert!(matches!(conn.next(), Seen::Pub { .. }));
        // The first flush's PING goes unanswered until the second one's comes.
        assert_eq!(conn.next(), Seen::Ping);
        assert_eq!(conn.next(), Seen::Ping);
        conn.send(ServerOp::Pong);
        conn.send(ServerOp::Pong);
        conn.serve_until_closed();
    });
    let client = Options::new().servers(&url).unwrap().connect().unwrap();
    ready_rx.recv_timeout(STEP).unwrap();
    client.publish("a", b"not yet processed").unwrap();
    let err = client.flush(Duration::from_millis(300)).unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    client.flush(STEP).unwrap();
    client.close().unwrap();
    server.join().unwrap();
}

#[test]
fn each_lost_connection_gives_its_own_reason() {
    let listener = proto_tests::loopback_listener();
    let url = format!("nats://{}", listener.local_addr().unwrap());
    let server = thread::spawn(move || {
        for err in [None, Some("Unknown Protocol Operation"), None] {
            let mut conn = accept(&listener);
            conn.handshake(basic_info());
            if let Some(text) = err {
                conn.send(ServerOp::Err(text));
            }
        }
    });
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let client = Options::new()
        .servers(&url)
        .unwrap()
        .reconnect_time_wait(Duration::from_millis(10))
        // Once the fake is gone: given up on after two more tries, not sixty.
        .max_reconnect_attempts(2)
        .event_callback(move |e| {
            if let Event::Disconnected { reason } = e {
                let _ = tx.lock().unwrap().send(reason);
            }
        })
        .connect()
        .unwrap();
    let reasons: Vec<String> = (0..3).map(|_| rx.recv_timeout(STEP).unwrap()).collect();
    assert_eq!(
        reasons,
        [
            "the server closed the connection",
            "the server closed the connection after: server: Unknown Protocol Operation",
            "the server closed the connection",
        ]
    );
    server.join().unwrap();
    drop(client);
}

#[test]
fn lame_duck_behind_a_resend_backlog_still_drains_and_moves_on() {
    let (seen_tx, seen_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (url, server) = fake_server(move |mut conn| {
        conn.handshake(basic_info());
        // Two messages, in one write or two, each write followed by its confirmation
        // PING; none answered: 6 KB unconfirmed against a pending_size of 4 KiB.
        let (mut pubs, mut pings, mut last) = (0, 0, None);
        while pubs < 2 || last != Some(Seen::Ping) {
            let op = conn.next();
            match &op {
                Seen::Pub { .. } => pubs += 1,
                Seen::Ping => pings += 1,
                other => panic!("unexpected {other:?}"),
            }
            last = Some(op);
        }
        seen_tx.send(()).unwrap();
        go_rx.recv().unwrap();
        conn.info(ServerInfo {
            ldm: true,
            ..basic_info()
        });
        // The confirmations only once the client has taken in the lame duck notice.
        go_rx.recv().unwrap();
        for _ in 0..pings {
            conn.send(ServerOp::Pong);
        }
        // The third message, queued behind the backlog, goes out with a PING of its own.
        let mut rest = Vec::new();
        while let Some(op) = conn.try_next(STEP) {
            let ping = op == Seen::Ping;
            rest.push(op);
            if ping {
                conn.send(ServerOp::Pong);
            }
        }
        assert!(
            matches!(&rest[..], [Seen::Pub { payload, .. }, Seen::Ping, ..] if payload == b"third"),
            "{rest:?}"
        );
    });
    let client = Options::new()
        .servers(&url)
        .unwrap()
        .resend_unconfirmed(true)
        .pending_size(4096)
        .allow_reconnect(false)
        .flush_timeout(Duration::from_millis(500))
        .connect()
        .unwrap();
    for _ in 0..2 {
        client.publish("a", &[b'x'; 3000]).unwrap();
    }
    seen_rx.recv_timeout(STEP).expect("the server saw the two");
    client.publish("a", b"third").unwrap();
    go_tx.send(()).unwrap();
    wait_until(STEP, "the lame duck notice", || client.server_info().ldm);
    // Time for the writer's round on the notice (the outcome is the same without it;
    // with it, the round meets the backlog, as it did when this failed).
    thread::sleep(Duration::from_millis(50));
    go_tx.send(()).unwrap();
    // Confirmed by the lame duck's last PING, then the client leaves that server.
    wait_until(STEP, "the client to leave the server", || {
        client.is_closed()
    });
    server.join().unwrap();
}

#[test]
fn flush_and_close_called_from_the_event_callback_do_not_wait_for_themselves() {
    let (url, server) = fake_server(|mut conn| {
        conn.handshake(basic_info());
        assert!(matches!(conn.next(), Seen::Pub { .. }));
        // Answered on the reader's thread, where the callback calls flush.
        conn.send(ServerOp::Err("Permissions Violation for Publish to \"a\""));
        assert_eq!(conn.next(), Seen::Ping);
        conn.send(ServerOp::Pong);
        // Then the connection ends: on Disconnected the callback closes the client.
        drop(conn);
    });
    let client: Arc<OnceLock<Client>> = Arc::new(OnceLock::new());
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let in_callback = Arc::clone(&client);
    let c = Options::new()
        .servers(&url)
        .unwrap()
        .event_callback(move |e| {
            let Some(c) = in_callback.get() else { return };
            let outcome = match e {
                Event::ServerError(_) => format!("flush: {:?}", c.flush(STEP)),
                Event::Disconnected { .. } => format!("close: {:?}", c.close()),
                _ => return,
            };
            let _ = tx.lock().unwrap().send(outcome);
        })
        .connect()
        .unwrap();
    assert!(client.set(c).is_ok());
    let c = client.get().unwrap();
    c.publish("a", b"x").unwrap();
    let flushed = rx
        .recv_timeout(STEP)
        .expect("the callback's flush returned");
    assert!(flushed.starts_with("flush: Err(Timeout"), "{flushed}");
    // A flush from this thread still works meanwhile.
    c.flush(STEP).unwrap();
    let closed = rx
        .recv_timeout(STEP)
        .expect("the callback's close returned");
    assert_eq!(closed, "close: Ok(())");
    wait_until(STEP, "the end of the close the callback started", || {
        c.is_closed()
    });
    c.close().unwrap();
    server.join().unwrap();
}

#[test]
fn close_counts_messages_a_server_never_confirmed() {
    let (url, server) = fake_server(|mut conn| {
        conn.handshake(basic_info());
        // Takes everything, answers no PING.
        let mut pubs = 0;
        while let Some(op) = conn.try_next(STEP) {
            pubs += usize::from(matches!(op, Seen::Pub { .. }));
        }
        assert_eq!(pubs, 3);
    });
    let client = Options::new()
        .servers(&url)
        .unwrap()
        .flush_timeout(Duration::from_millis(300))
        .connect()
        .unwrap();
    for _ in 0..3 {
        client.publish("a", b"unconfirmed").unwrap();
    }
    assert!(matches!(
        client.flush(Duration::from_millis(300)),
        Err(Error::Timeout { .. })
    ));
    let err = client.close().unwrap_err();
    assert!(
        matches!(err, Error::NotDelivered { messages: 3, .. }),
        "{err:?}"
    );
    server.join().unwrap();
}

#[test]
fn subscriptions_receive_msg_and_hmsg() {
    let (url, server) = fake_server(|mut conn| {
        conn.handshake(basic_info());
        let Seen::Sub(subject, sid) = conn.next() else {
            panic!("expected SUB")
        };
        assert_eq!(subject, "events.>");
        let mut out = Vec::new();
        ServerOp::Msg(ansible_runner_nats::proto::Msg {
            subject: "events.one",
            sid,
            reply: Some("_INBOX.r"),
            header: None,
            payload: b"first",
        })
        .encode(&mut out);
        ServerOp::Msg(ansible_runner_nats::proto::Msg {
            subject: "events.two",
            sid,
            reply: None,
            header: Some(b"NATS/1.0\r\nA: 1\r\nA: 2\r\n\r\n"),
            payload: b"",
        })
        .encode(&mut out);
        // Both messages in one write, split at an awkward place.
        let (a, b) = out.split_at(out.len() / 2 + 3);
        conn.stream.write_all(a).unwrap();
        thread::sleep(Duration::from_millis(5));
        conn.stream.write_all(b).unwrap();
        conn.serve_until_closed();
    });
    let client = Options::new().servers(&url).unwrap().connect().unwrap();
    let sub = client.subscribe("events.>").unwrap();
    let first = sub.next_timeout(STEP).unwrap();
    assert_eq!(first.subject, "events.one");
    assert_eq!(first.reply.as_deref(), Some("_INBOX.r"));
    assert_eq!(first.payload, b"first");
    assert!(first.headers.is_none());
    let second = sub.next_timeout(STEP).unwrap();
    let headers = second.headers.expect("headers");
    assert_eq!(headers.get_all("A").collect::<Vec<_>>(), ["1", "2"]);
    assert!(second.payload.is_empty());
    drop(client);
    server.join().unwrap();
}

/// A MSG for `sid` carrying `payload`, encoded.
fn msg_for(sid: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    ServerOp::Msg(ansible_runner_nats::proto::Msg {
        subject: "limited.x",
        sid,
        reply: None,
        header: None,
        payload,
    })
    .encode(&mut out);
    out
}

#[test]
fn a_subscription_ended_at_its_limit_by_the_client_is_ended_on_the_server_too() {
    // A server that does not end it by itself (as an older nats-server, or one that was
    // told a count too large to read): the client tells it, once the limit is reached.
    let (url, server) = fake_server(|mut conn| {
        conn.handshake(basic_info());
        let Seen::Sub(_, sid) = conn.next() else {
            panic!("expected SUB")
        };
        // The first limit has ten digits, more than nats-server reads: no count is sent.
        conn.stream.write_all(&msg_for(sid, b"0")).unwrap();
        // Lowered to 2 once one came: UNSUB sid 2, which this server ignores.
        assert_eq!(conn.next(), Seen::Unsub(sid, Some(2)));
        let mut out = msg_for(sid, b"1");
        out.extend(msg_for(sid, b"2"));
        conn.stream.write_all(&out).unwrap();
        // The limit reached: a plain UNSUB.
        assert_eq!(conn.next(), Seen::Unsub(sid, None));
        conn.serve_until_closed();
    });
    let client = Options::new().servers(&url).unwrap().connect().unwrap();
    let sub = client.subscribe("limited.>").unwrap();
    sub.unsubscribe_after(5_000_000_000).unwrap();
    assert_eq!(sub.next_timeout(STEP).unwrap().payload, b"0");
    sub.unsubscribe_after(2).unwrap();
    let rest: Vec<Vec<u8>> = sub.iter().map(|m| m.payload).collect();
    assert_eq!(rest, [b"1"]);
    drop(client);
    server.join().unwrap();
}

#[test]
fn an_event_callback_may_subscribe_while_a_message_is_being_delivered() {
    let (url, server) = fake_server(|mut conn| {
        conn.handshake(basic_info());
        let Seen::Sub(_, sid) = conn.next() else {
            panic!("expected SUB")
        };
        // Once the test holds the client where the callback finds it.
        loop {
            match conn.next() {
                Seen::Pub { subject, .. } if subject == "ready" => break,
                Seen::Ping => conn.send(ServerOp::Pong),
                _ => {}
            }
        }
        // A header block without its NATS/1.0 line: delivered without headers, reported.
        let mut out = Vec::new();
        ServerOp::Msg(ansible_runner_nats::proto::Msg {
            subject: "events.one",
            sid,
            reply: None,
            header: Some(b"bad\r\n\r\n"),
            payload: b"x",
        })
        .encode(&mut out);
        conn.stream.write_all(&out).unwrap();
        // Then the callback's SUB, and the test's PUB and flush, among whatever else.
        let mut seen = Vec::new();
        while let Some(op) = conn.try_next(STEP) {
            if op == Seen::Ping {
                conn.send(ServerOp::Pong);
            }
            seen.push(op);
        }
        assert!(
            seen.contains(&Seen::Sub("from.callback".into(), sid + 1)),
            "{seen:?}"
        );
        assert!(
            seen.iter()
                .any(|op| matches!(op, Seen::Pub { subject, .. } if subject == "after")),
            "{seen:?}"
        );
    });
    let client: Arc<OnceLock<Client>> = Arc::new(OnceLock::new());
    let (tx, rx) = mpsc::channel();
    let in_callback = Arc::clone(&client);
    let tx = Mutex::new(tx);
    let c = Options::new()
        .servers(&url)
        .unwrap()
        .event_callback(move |e| {
            if let Event::ServerError(text) = e {
                if let Some(c) = in_callback.get() {
                    let sub = c.subscribe("from.callback");
                    let _ = tx.lock().unwrap().send((text, sub.is_ok()));
                }
            }
        })
        .connect()
        .unwrap();
    // Dropped by hand at the end: dropping it on a failed assertion would wait on the
    // stuck client too, and hang the test instead of failing it.
    let sub = std::mem::ManuallyDrop::new(c.subscribe("events.>").unwrap());
    assert!(client.set(c).is_ok());
    client.get().unwrap().publish("ready", b"").unwrap();
    let message = sub.next_timeout(STEP).expect("the message");
    assert!(message.headers.is_none());
    let (text, subscribed) = rx.recv_timeout(STEP).expect("the callback ran to its end");
    assert!(text.contains("malformed header block"), "{text}");
    assert!(subscribed);
    // In a thread of its own: a client locked up by the callback must fail the test, not
    // hang it.
    let (done_tx, done_rx) = mpsc::channel();
    let after = Arc::clone(&client);
    thread::spawn(move || {
        let c = after.get().unwrap();
        let _ = done_tx.send(c.publish("after", b"y").and_then(|()| c.flush(STEP)));
    });
    let done = done_rx.recv_timeout(STEP * 2);
    assert!(
        matches!(done, Ok(Ok(()))),
        "the client is stuck or failed after the callback: {done:?}"
    );
    drop(std::mem::ManuallyDrop::into_inner(sub));
    client.get().unwrap().close().unwrap();
    server.join().unwrap();
}

#[test]
fn confirmation_pings_are_coalesced_and_the_last_batch_is_still_confirmed() {
    const N: usize = 20;
    let (seen_tx, seen_rx) = mpsc::channel();
    let (url, server) = fake_server(move |mut conn| {
        conn.handshake(basic_info());
        let (mut pubs, mut pings, mut ping_after_last) = (0, 0, false);
        while !ping_after_last {
            match conn.next() {
                Seen::Pub { .. } => {
                    pubs += 1;
                    seen_tx.send(pubs).unwrap();
                }
                Seen::Ping => {
                    pings += 1;
                    conn.send(ServerOp::Pong);
                    ping_after_last = pubs == N;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        seen_tx.send(1000 + pings).unwrap();
        conn.serve_until_closed();
    });
    let client = Options::new()
        .servers(&url)
        .unwrap()
        .resend_unconfirmed(true)
        .connect()
        .unwrap();
    // One message per write: each waits until the server has read the one before.
    let started = Instant::now();
    for i in 1..=N {
        client.publish("trickle", b"x").unwrap();
        assert_eq!(seen_rx.recv_timeout(STEP).unwrap(), i);
    }
    // The last message is confirmed by a PING that comes on its own (no flush asked).
    let pings = seen_rx.recv_timeout(STEP).unwrap() - 1000;
    // At most one confirmation PING per 20 ms (the client's interval for them), however
    // slow this machine made the round trips: on an idle one, a couple for the twenty.
    let took = started.elapsed();
    let most = usize::try_from(took.as_millis() / 20).unwrap_or(usize::MAX) + 1;
    assert!(
        pings >= 1 && pings <= most.min(N),
        "{pings} PINGs for {N} one-message writes in {took:?}"
    );
    client.close().unwrap();
    server.join().unwrap();
}

#[test]
fn a_flush_waits_for_messages_held_back_by_the_reconnect_buffer_limit() {
    // With `resend_unconfirmed`, written messages are kept until a PONG confirms them, and
    // no more are written while more than `pending_size` is kept. A flush asked meanwhile
    // must not send its PING ahead of the messages held back: its PONG would confirm them
    // before the server had them.
    let (seen_tx, seen_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let (url, server) = fake_server(move |mut conn| {
        conn.handshake(basic_info());
        let mut pubs = 0;
        // For each PING: how many messages came before it.
        let mut pings = Vec::new();
        let mut held = 0;
        let mut released = false;
        while let Some(seen) = conn.try_next(STEP) {
            match seen {
                Seen::Pub { .. } => pubs += 1,
                Seen::Ping => {
                    pings.push(pubs);
                    held += 1;
                }
                other => panic!("unexpected {other:?}"),
            }
            seen_tx.send((pubs, pings.len())).unwrap();
            if !released && pings.len() == 1 {
                // No PONG until the test has asked for the flush.
                release_rx.recv_timeout(STEP).unwrap();
                released = true;
            }
            if released {
                for _ in 0..held {
                    conn.send(ServerOp::Pong);
                }
                held = 0;
            }
        }
        seen_tx.send((usize::MAX, 0)).unwrap();
        for n in pings {
            seen_tx.send((n, 0)).unwrap();
        }
    });
    let client = Options::new()
        .servers(&url)
        .unwrap()
        .resend_unconfirmed(true)
        .pending_size(4096)
        .connect()
        .unwrap();
    // Bigger than `pending_size`: written with a PING of its own, then kept unconfirmed.
    client.publish("big", &[b'x'; 5000]).unwrap();
    let first = seen_rx.recv_timeout(STEP).unwrap();
    assert_eq!(first, (1, 0), "the big message comes first");
    assert_eq!(seen_rx.recv_timeout(STEP).unwrap(), (1, 1), "then its PING");
    // Held back until the big one is confirmed; then a flush.
    client.publish("small", b"y").unwrap();
    let flusher = {
        let client = client.clone();
        thread::spawn(move || client.flush(STEP))
    };
    // Give a writer that would send the flush's PING early the time to do it (correct code
    // passes whatever the timing), then let the server answer.
    thread::sleep(Duration::from_millis(200));
    release_tx.send(()).unwrap();
    flusher.join().unwrap().unwrap();
    client.close().unwrap();
    server.join().unwrap();
    let before_each_ping: Vec<usize> = seen_rx
        .try_iter()
        .skip_while(|&(n, _)| n != usize::MAX)
        .skip(1)
        .map(|(n, _)| n)
        .collect();
    assert_eq!(before_each_ping[0], 1, "{before_each_ping:?}");
    assert!(
        before_each_ping[1..].iter().all(|&n| n == 2),
        "a PING overtook the held-back message: messages before each PING {before_each_ping:?}"
    );
}

#[test]
fn invalid_subjects_are_refused_before_and_after_a_valid_one() {
    let (client, seen_rx, server) = lingering_client(Duration::ZERO);
    let refused = |subject: &str| match client.publish(subject, b"no") {
        Err(Error::InvalidSubject(_)) => {}
        other => panic!("{subject:?}: expected InvalidSubject, got {other:?}"),
    };
    // The first publish has nothing to compare with; then each subject that differs from
    // the last valid one is checked again, the empty one included.
    for bad in ["", "a..b", "a b", "a.*"] {
        refused(bad);
    }
    client.publish("a.b", b"1").unwrap();
    client.publish("a.b", b"2").unwrap();
    for bad in ["", "a.b.", ".a.b", "a.b.>", "a.b\r\n"] {
        refused(bad);
    }
    client.publish("a.b", b"3").unwrap();
    client.flush(STEP).unwrap();
    let got: Vec<Vec<u8>> = (0..3)
        .map(|_| seen_rx.recv_timeout(STEP).unwrap())
        .collect();
    assert_eq!(got, [b"1".to_vec(), b"2".to_vec(), b"3".to_vec()]);
    client.close().unwrap();
    server.join().unwrap();
    assert!(
        seen_rx.try_recv().is_err(),
        "nothing refused reached the server"
    );
}

/// A client with `linger` connected to a fake server that only takes publishes: each
/// PUB's payload arrives on the receiver, PINGs are answered, until the client closes.
fn lingering_client(linger: Duration) -> (Client, mpsc::Receiver<Vec<u8>>, thread::JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let (url, server) = fake_server(move |mut conn| {
        conn.handshake(basic_info());
        while let Some(seen) = conn.try_next(STEP * 4) {
            match seen {
                Seen::Pub { payload, .. } => tx.send(payload).unwrap(),
                Seen::Ping => conn.send(ServerOp::Pong),
                other => panic!("unexpected {other:?}"),
            }
        }
    });
    let client = Options::new()
        .servers(&url)
        .unwrap()
        .write_linger(linger)
        .connect()
        .unwrap();
    (client, rx, server)
}

#[test]
fn write_linger_coalesces_bursts_and_leaves_a_lone_message_alone() {
    const LINGER: Duration = Duration::from_millis(800);
    let (client, seen_rx, server) = lingering_client(LINGER);
    let arrives = |what: &[u8]| assert_eq!(seen_rx.recv_timeout(STEP).unwrap(), what);
    // The first message after a quiet spell is written at once, well before the linger.
    let start = Instant::now();
    client.publish("s", b"lone").unwrap();
    arrives(b"lone");
    assert!(start.elapsed() < LINGER, "{:?}", start.elapsed());
    // The next ones come within the linger of that write: a burst; they wait together.
    let burst = Instant::now();
    client.publish("s", b"b1").unwrap();
    client.publish("s", b"b2").unwrap();
    arrives(b"b1");
    arrives(b"b2");
    assert!(burst.elapsed() >= LINGER / 2, "{:?}", burst.elapsed());
    // A flush does not wait for the linger.
    client.publish("s", b"flushed").unwrap();
    client.flush(STEP).unwrap();
    arrives(b"flushed");
    // After a quiet spell longer than the linger, a message goes out at once again.
    thread::sleep(LINGER + LINGER / 4);
    let start = Instant::now();
    client.publish("s", b"again").unwrap();
    arrives(b"again");
    assert!(start.elapsed() < LINGER, "{:?}", start.elapsed());
    client.close().unwrap();
    server.join().unwrap();
}

#[test]
fn a_lingering_batch_goes_at_once_when_it_reaches_64_kib() {
    // A linger far longer than the test: only the batch size can release the burst.
    let (client, seen_rx, server) = lingering_client(Duration::from_secs(60));
    client.publish("s", b"first").unwrap();
    seen_rx.recv_timeout(STEP).unwrap();
    // 100 KiB in 1 KiB messages, no flush: the first 64 KiB or more must arrive.
    for _ in 0..100 {
        client.publish("s", &[b'x'; 1024]).unwrap();
    }
    for i in 0..64 {
        seen_rx
            .recv_timeout(STEP)
            .unwrap_or_else(|_| panic!("only {i} of the burst arrived"));
    }
    client.close().unwrap();
    server.join().unwrap();
}

/// A fake server that completes the handshake and then stops reading, holding the
/// connection open until `release` fires (or a minute passes): the client's writes block
/// once the socket buffers are full.
fn stalled_server() -> (String, mpsc::Sender<()>, thread::JoinHandle<()>) {
    let (release, released) = mpsc::channel::<()>();
    let (url, server) = fake_server(move |mut conn| {
        conn.handshake(basic_info());
        let _ = released.recv_timeout(Duration::from_secs(60));
    });
    (url, release, server)
}

/// Publishes 64 KiB messages until the client refuses one for lack of room.
fn publish_until_refused(client: &Client) -> usize {
    let payload = vec![b'x'; 64 * 1024];
    for accepted in 0..4096 {
        match client.publish("stalled", &payload) {
            Ok(()) => {}
            Err(Error::BufferFull { .. }) => return accepted,
            Err(e) => panic!("unexpected refusal: {e}"),
        }
    }
    panic!("4096 messages of 64 KiB went into a connection that reads nothing");
}

#[test]
fn a_stalled_connection_costs_publishers_one_publish_wait_not_one_each() {
    let (url, release, server) = stalled_server();
    let wait = Duration::from_millis(300);
    let client = Options::new()
        .servers(&url)
        .unwrap()
        .publish_wait(wait)
        .connect()
        .unwrap();
    let accepted = publish_until_refused(&client);
    // From now on the writer is stuck: each publish fails at once instead of waiting
    // `publish_wait` again (50 of them would take 15 s).
    let started = Instant::now();
    let payload = vec![b'y'; 64 * 1024];
    for _ in 0..50 {
        assert!(matches!(
            client.publish("stalled", &payload),
            Err(Error::BufferFull { .. })
        ));
    }
    let took = started.elapsed();
    assert!(took < wait, "50 refusals took {took:?}");
    assert_eq!(client.statistics().dropped, 51, "accepted {accepted}");
    release.send(()).unwrap();
    drop(client);
    server.join().unwrap();
}

#[test]
fn close_is_bounded_by_its_timeout_while_a_write_is_stalled() {
    let (url, release, server) = stalled_server();
    // The stall detection (PINGs every 2 min) would take 6 minutes to notice.
    let client = Options::new()
        .servers(&url)
        .unwrap()
        .publish_wait(Duration::from_millis(100))
        .connect()
        .unwrap();
    let accepted = publish_until_refused(&client);
    let started = Instant::now();
    let err = client.close_within(Duration::from_millis(300)).unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "close took {took:?}");
    assert!(
        matches!(err, Error::NotDelivered { messages, .. } if messages > 0 && messages <= accepted as u64),
        "{err:?} (accepted {accepted})"
    );
    assert!(client.is_closed());
    release.send(()).unwrap();
    server.join().unwrap();
}

/// A client connecting in the background to a server that accepts and then says nothing
/// (until the client hangs up), with one message queued; returned once the server has
/// accepted the connection, so that the client is waiting for INFO.
fn waiting_for_info_with_one_message() -> (Client, thread::JoinHandle<()>) {
    let (accepted, on_accept) = mpsc::channel();
    let (url, server) = fake_server(move |mut conn| {
        let _ = accepted.send(());
        let _ = conn.try_next(Duration::from_secs(30));
    });
    let client = Options::new()
        .servers(&url)
        .unwrap()
        .connect_timeout(Duration::from_secs(20))
        .connect_in_background(true)
        .connect()
        .unwrap();
    client.publish("waiting", b"never sent").unwrap();
    on_accept
        .recv_timeout(Duration::from_secs(30))
        .expect("the client's background connect reached the fake server");
    (client, server)
}

#[test]
fn close_is_bounded_by_its_timeout_while_a_connect_waits_for_info() {
    let (client, server) = waiting_for_info_with_one_message();
    let started = Instant::now();
    let err = client.close_within(Duration::from_millis(300)).unwrap_err();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(2), "close took {took:?}");
    assert!(
        matches!(err, Error::NotDelivered { messages: 1, .. }),
        "{err:?}"
    );
    // The fake server sees the connection end (not its own 30 s timeout).
    server.join().unwrap();
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_server_that_streams_a_message_during_the_handshake_is_refused_at_once() {
    let (url, server) = fake_server(|mut conn| {
        // A "message" of 100 GB as the first operation, and then data without end: the
        // client must not buffer until its connect timeout.
        let _ = conn.stream.write_all(b"MSG a 1 99999999999\r\n");
        let junk = vec![b'x'; 64 * 1024];
        while conn.stream.write_all(&junk).is_ok() {}
    });
    let started = Instant::now();
    let err = Options::new()
        .servers(&url)
        .unwrap()
        .connect_timeout(Duration::from_secs(20))
        .max_control_line(4096)
        .connect()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("more than a control line during the handshake"),
        "{err}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    server.join().unwrap();
}

#[test]
fn a_slow_but_steady_server_makes_publishers_wait_not_fail() {
    // Reads 32 KiB every 10 ms (about 3 MB/s) until the client hangs up. The kernel lets a
    // blocked write go on in bursts (when much of the send buffer is free), hundreds of
    // milliseconds apart here: with the default `publish_wait` (2 s) the queue keeps moving
    // within it, and every publish waits its turn; none is refused as if the server had
    // stalled.
    let (url, server) = fake_server(|mut conn| {
        conn.handshake(basic_info());
        let mut buf = vec![0u8; 32 * 1024];
        conn.stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        loop {
            match conn.stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    let client = Options::new()
        .servers(&url)
        .unwrap()
        .flush_timeout(Duration::from_millis(100))
        .connect()
        .unwrap();
    let payload = vec![b'z'; 64 * 1024];
    // Past what the socket buffers take (a few MB on loopback), into the steady pace.
    let mut refused = Vec::new();
    for _ in 0..120 {
        if let Err(e) = client.publish("slow", &payload) {
            refused.push(e.to_string());
        }
    }
    assert!(
        refused.is_empty(),
        "refused while the server kept reading: {refused:?}"
    );
    assert_eq!(client.statistics().dropped, 0);
    let _ = client.close();
    server.join().unwrap();
}

#[test]
fn two_closes_at_once_both_report_what_was_not_delivered() {
    let (client, server) = waiting_for_info_with_one_message();
    let closers: Vec<_> = (0..2)
        .map(|_| {
            let c = client.clone();
            thread::spawn(move || c.close_within(Duration::from_millis(300)))
        })
        .collect();
    for closer in closers {
        let result = closer.join().unwrap();
        assert!(
            matches!(result, Err(Error::NotDelivered { messages: 1, .. })),
            "{result:?}"
        );
    }
    server.join().unwrap();
}

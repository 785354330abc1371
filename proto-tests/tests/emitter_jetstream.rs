//! The emitter in JetStream mode against real nats-server processes with file storage:
//! every message acknowledged, stored once, through restarts and a node failure. The
//! stream is read back through the JetStream API to count what was stored.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use ansible_runner_nats::client;
use ansible_runner_nats::emitter::{config, Emitter, Kind, Report, RunCounters};
use ansible_runner_nats::jetstream::{JetStream, StreamConfig, MSG_ID};
use proto_tests::proxy::{Mode, Proxy};
use proto_tests::{cluster, wait_until, ServerConfig};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
const STREAM: &str = "RUNS";

fn vars(urls: &str, extra: &[(&str, &str)]) -> HashMap<String, String> {
    let mut v: HashMap<String, String> = [
        ("RUNNER_NATS_SUBJECT_ID", "js"),
        ("RUNNER_NATS_SERVERS", urls),
        ("RUNNER_NATS_JETSTREAM", "true"),
        ("RUNNER_NATS_JETSTREAM_STREAM", STREAM),
        ("RUNNER_NATS_RECONNECT_TIME_WAIT", "0.1"),
        ("RUNNER_NATS_MAX_RECONNECT_ATTEMPTS", "-1"),
        ("RUNNER_NATS_FLUSH_TIMEOUT", "60"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for (k, val) in extra {
        v.insert(k.to_string(), val.to_string());
    }
    v
}

fn uuid(i: usize) -> String {
    format!("00000000-0000-0000-0000-{i:012}")
}

fn send(
    emitter: &Emitter,
    vars: &HashMap<String, String>,
    ident: &str,
    kind: Kind<'_>,
    body: &[u8],
) -> Report {
    emitter.publish(ident, kind, body, || config::load(vars, None, "host"))
}

fn event(ident: &str, i: usize) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"uuid": uuid(i), "counter": i, "event": "runner_on_ok",
                               "runner_ident": ident, "stdout": "ok"}),
    )
    .unwrap()
}

fn status(ident: &str, s: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"status": s, "runner_ident": ident})).unwrap()
}

/// Publishes the status `s` of the run `ident`, as ansible-runner's status_handler would.
fn send_status(emitter: &Emitter, vars: &HashMap<String, String>, ident: &str, s: &str) -> Report {
    send(emitter, vars, ident, Kind::Status(s), &status(ident, s))
}

/// Event `i` of the run `ident` with `stdout` bytes of output.
fn event_with_stdout(ident: &str, i: usize, stdout: usize) -> Vec<u8> {
    let mut e: serde_json::Value = serde_json::from_slice(&event(ident, i)).unwrap();
    e["stdout"] = json!("x".repeat(stdout));
    serde_json::to_vec(&e).unwrap()
}

/// The `starting` status, event 1 with `stdout` bytes of output, and a small event 2;
/// the error lines of the three calls.
fn start_with_a_big_and_a_small_event(
    emitter: &Emitter,
    vars: &HashMap<String, String>,
    ident: &str,
    stdout: usize,
) -> Vec<String> {
    let mut errors = send_status(emitter, vars, ident, "starting").errors;
    let big = event_with_stdout(ident, 1, stdout);
    errors.extend(send(emitter, vars, ident, Kind::Event, &big).errors);
    errors.extend(send(emitter, vars, ident, Kind::Event, &event(ident, 2)).errors);
    errors
}

/// A whole run of `n` events ending `successful`: its counters and every error line.
fn whole_run(
    emitter: &Emitter,
    vars: &HashMap<String, String>,
    ident: &str,
    n: usize,
) -> (RunCounters, Vec<String>) {
    let mut errors = send_status(emitter, vars, ident, "starting").errors;
    for i in 1..=n {
        errors.extend(send(emitter, vars, ident, Kind::Event, &event(ident, i)).errors);
    }
    let end = send_status(emitter, vars, ident, "successful");
    errors.extend(end.errors);
    (end.summary.expect("the run's summary").counters, errors)
}

/// `call` until it succeeds, for up to `WAIT`: right after a node died, a replicated
/// stream answers only once it has elected a new leader.
fn retrying<T>(what: &str, mut call: impl FnMut() -> ansible_runner_nats::Result<T>) -> T {
    let mut last = None;
    let mut out = None;
    wait_until(WAIT, what, || match call() {
        Ok(v) => {
            out = Some(v);
            true
        }
        Err(e) => {
            last = Some(e.to_string());
            false
        }
    });
    out.unwrap_or_else(|| panic!("{what}: {last:?}"))
}

/// Every stored message's `Nats-Msg-Id`, read back from the stream.
fn stored_ids(url: &str) -> Vec<String> {
    let nc = client::connect(url).unwrap();
    let js = JetStream::new(&nc, Duration::from_secs(5));
    let state = retrying("the stream's state", || js.stream_state(STREAM));
    let ids = (state.first_seq..=state.last_seq)
        .filter(|_| state.messages > 0)
        .map(|seq| {
            let m = retrying(&format!("message {seq}"), || js.get_message(STREAM, seq));
            m.headers.unwrap().get(MSG_ID).unwrap().to_owned()
        })
        .collect();
    nc.close().unwrap();
    ids
}

/// The ids of a run of `n` events: `run` is the tag in its statuses' ids, read back.
fn expected_ids(ident: &str, run: &str, n: usize) -> Vec<String> {
    let mut ids = vec![format!("{ident}-{run}-starting")];
    ids.extend((1..=n).map(uuid));
    ids.push(format!("{ident}-{run}-successful"));
    ids
}

/// The run tag in a stored status id `<ident>-<run>-<status>`.
fn run_tag(ident: &str, ids: &[String]) -> String {
    let id = ids
        .iter()
        .find(|id| id.ends_with("-starting"))
        .expect("a stored starting status");
    let tag = &id[ident.len() + 1..id.len() - "-starting".len()];
    assert_eq!(tag.len(), 8, "{id}");
    tag.to_owned()
}

#[test]
fn every_message_is_acknowledged_and_stored_once() {
    let server = ServerConfig::new().jetstream().start();
    let v = vars(&server.url(), &[]);
    let emitter = Emitter::new();
    let ident = "run1";
    assert!(send_status(&emitter, &v, ident, "starting")
        .errors
        .is_empty());
    for i in 1..=500 {
        let r = send(&emitter, &v, ident, Kind::Event, &event(ident, i));
        assert!(r.errors.is_empty(), "{:?}", r.errors);
    }
    let end = send_status(&emitter, &v, ident, "successful");
    assert!(end.errors.is_empty(), "{:?}", end.errors);
    let c = end.summary.unwrap().counters;
    let js = c.jetstream.expect("JetStream counters");
    assert_eq!((js.acknowledged, js.duplicates, js.refused), (502, 0, 0));
    assert_eq!(c.undelivered, 0);
    let ids = stored_ids(&server.url());
    assert_eq!(ids, expected_ids(ident, &run_tag(ident, &ids), 500));
}

#[test]
fn a_rerun_under_the_same_ident_is_stored_too() {
    let server = ServerConfig::new().jetstream().start();
    let v = vars(&server.url(), &[]);
    let ident = "again";
    for run in 0..2 {
        let emitter = Emitter::new();
        send_status(&emitter, &v, ident, "starting");
        send(&emitter, &v, ident, Kind::Event, &event(ident, run + 1));
        let end = send_status(&emitter, &v, ident, "successful");
        let js = end.summary.unwrap().counters.jetstream.unwrap();
        assert_eq!(
            (js.acknowledged, js.duplicates),
            (3, 0),
            "run {run}: {:?}",
            end.errors
        );
    }
    let ids = stored_ids(&server.url());
    assert_eq!(ids.len(), 6, "{ids:?}");
    let tags: HashSet<&str> = ids
        .iter()
        .filter_map(|id| id.strip_suffix("-successful"))
        .collect();
    assert_eq!(tags.len(), 2, "{ids:?}");
}

#[test]
fn two_restarts_in_a_run_of_5000_events_store_each_once() {
    let mut server = ServerConfig::new().jetstream().start();
    let url = server.url();
    let v = vars(&url, &[("RUNNER_NATS_JETSTREAM_ACK_TIMEOUT", "1")]);
    let emitter = Arc::new(Emitter::new());
    let ident = "run2";
    send_status(&emitter, &v, ident, "starting");
    let sent = Arc::new(AtomicUsize::new(0));
    let producer = {
        let (emitter, v, sent) = (Arc::clone(&emitter), v.clone(), Arc::clone(&sent));
        thread::spawn(move || {
            for i in 1..=5_000 {
                send(&emitter, &v, ident, Kind::Event, &event(ident, i));
                sent.store(i, Ordering::SeqCst);
            }
            send_status(&emitter, &v, ident, "successful")
        })
    };
    for at in [1_000, 3_000] {
        wait_until(WAIT, &format!("{at} events sent"), || {
            sent.load(Ordering::SeqCst) >= at
        });
        server.restart();
    }
    let end = producer.join().unwrap();
    let c = end.summary.expect("the run ended").counters;
    let js = c.jetstream.unwrap();
    assert_eq!(c.undelivered, 0, "{:?}", end.errors);
    assert_eq!(js.acknowledged, 5_002);
    let ids = stored_ids(&url);
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a message stored twice");
    let mut sorted = ids.clone();
    sorted.sort();
    let mut want = expected_ids(ident, &run_tag(ident, &ids), 5_000);
    want.sort();
    assert_eq!(sorted, want);
}

#[test]
fn an_r3_stream_loses_and_duplicates_nothing_when_a_node_dies() {
    let mut nodes = cluster(3, |c| c.jetstream());
    let urls: Vec<String> = nodes.iter().map(|n| n.url()).collect();
    // The stream, replicated on all three nodes, created before the run.
    let admin = client::connect(&urls.join(",")).unwrap();
    let js = JetStream::new(&admin, Duration::from_secs(10));
    let mut cfg = StreamConfig::new(STREAM, &["pub.ansible.runner.>"]);
    cfg.replicas = 3;
    wait_until(WAIT, "the R3 stream to be created", || {
        js.create_stream(&cfg).is_ok()
    });
    admin.close().unwrap();

    // The run talks to node 1 first (no randomizing), which then dies.
    let v = vars(
        &urls.join(","),
        &[
            ("RUNNER_NATS_JETSTREAM_STREAM", ""),
            ("RUNNER_NATS_JETSTREAM_ACK_TIMEOUT", "1"),
        ],
    );
    let mut v = v;
    v.remove("RUNNER_NATS_JETSTREAM_STREAM");
    let emitter = Arc::new(Emitter::new());
    let ident = "run3";
    let load_v = v.clone();
    let load = move || {
        let mut loaded = config::load(&load_v, None, "host");
        if let Some(c) = loaded.config.as_mut() {
            c.options = c.options.clone().no_randomize(true);
        }
        loaded
    };
    emitter.publish(
        ident,
        Kind::Status("starting"),
        &status(ident, "starting"),
        load.clone(),
    );
    let sent = Arc::new(AtomicUsize::new(0));
    let producer = {
        let (emitter, sent, load) = (Arc::clone(&emitter), Arc::clone(&sent), load.clone());
        thread::spawn(move || {
            // Everything the run said, for a failure to show (a refusal is said once).
            let mut said = Vec::new();
            for i in 1..=2_000 {
                let report = emitter.publish(ident, Kind::Event, &event(ident, i), load.clone());
                said.extend(report.errors);
                sent.store(i, Ordering::SeqCst);
            }
            let end = emitter.publish(
                ident,
                Kind::Status("successful"),
                &status(ident, "successful"),
                load,
            );
            said.extend(end.errors.iter().cloned());
            (end, said)
        })
    };
    wait_until(WAIT, "500 events sent", || {
        sent.load(Ordering::SeqCst) >= 500
    });
    nodes[0].kill();
    let (end, said) = producer.join().unwrap();
    let c = end.summary.expect("the run ended").counters;
    assert_eq!(c.undelivered, 0, "{said:?}");
    assert_eq!(c.jetstream.unwrap().acknowledged, 2_002, "{c:?} {said:?}");
    let ids = stored_ids(&urls[1]);
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a message stored twice");
    assert_eq!(unique.len(), 2_002);
}

#[test]
fn bad_jetstream_settings_are_reported_not_fatal() {
    let loaded = config::load(
        &vars(
            "nats://127.0.0.1:1",
            &[
                ("RUNNER_NATS_JETSTREAM_STREAM", "a.b"),
                ("RUNNER_NATS_JETSTREAM_WINDOW", "0"),
                ("RUNNER_NATS_JETSTREAM_ACK_TIMEOUT", "soon"),
            ],
        ),
        None,
        "host",
    );
    let js = loaded.config.unwrap().jetstream.unwrap();
    assert_eq!(
        (js.stream, js.window, js.ack_timeout),
        (None, 256, Duration::from_secs(5))
    );
    let text: Vec<String> = loaded.issues.iter().map(ToString::to_string).collect();
    assert_eq!(text.len(), 3, "{text:?}");
    assert!(text[0].starts_with("RUNNER_NATS_JETSTREAM_STREAM: \"a.b\" is not a valid stream name"));
    assert!(text[1].starts_with("RUNNER_NATS_JETSTREAM_WINDOW: \"0\" is not a whole number"));
    assert!(text[2].starts_with("RUNNER_NATS_JETSTREAM_ACK_TIMEOUT: \"soon\" is not a number"));
}

#[test]
fn messages_this_user_may_not_publish_are_refused_at_once_not_retried_until_the_flush_timeout() {
    // The user may use the JetStream API (the stream is made) but not publish events.
    let server = ServerConfig::new()
        .jetstream()
        .extra(
            r#"authorization {
  users = [ { user: "runner", password: "pw", permissions: { publish: { allow: ["$JS.API.>"] } } } ]
}"#,
        )
        .start();
    let v = vars(
        &server.url(),
        &[
            ("RUNNER_NATS_USERNAME", "runner"),
            ("RUNNER_NATS_PASSWORD", "pw"),
        ],
    );
    let (c, errors) = whole_run(&Emitter::new(), &v, "denied", 3);
    let js = c.jetstream.unwrap();
    // Within the 60 s flush timeout nothing was left waiting for an ack.
    assert_eq!(
        (js.acknowledged, js.refused, js.retries, c.undelivered),
        (0, 5, 0, 0),
        "{errors:?}"
    );
    assert_eq!(
        errors,
        [
            "run denied: the server refused a message on pub.ansible.runner.js.denied.status for \
          lack of permission: server: Permissions Violation for Publish to \
          \"pub.ansible.runner.js.denied.status\""
        ]
    );
}

#[test]
fn a_stream_that_cannot_be_made_and_a_refused_message_are_each_reported() {
    // Another stream already captures the subjects, with a small message limit: ours
    // cannot be created (overlap), and JetStream refuses a larger event.
    let server = ServerConfig::new().jetstream().start();
    create_stream_as_admin(
        &server.url(),
        json!({"name": "OTHER", "subjects": ["pub.ansible.runner.>"], "max_msg_size": 300}),
    );
    let v = vars(&server.url(), &[("RUNNER_NATS_FLUSH_TIMEOUT", "5")]);
    let emitter = Emitter::new();
    let ident = "refused";
    let mut errors = start_with_a_big_and_a_small_event(&emitter, &v, ident, 600);
    let end = send_status(&emitter, &v, ident, "successful");
    errors.extend(end.errors);
    let js = end.summary.unwrap().counters.jetstream.unwrap();
    assert_eq!((js.acknowledged, js.refused), (3, 1), "{errors:?}");
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(
        errors[0].contains("cannot create the JetStream stream \"RUNS\""),
        "{errors:?}"
    );
    assert!(
        errors[1].contains("JetStream refused a message on"),
        "{errors:?}"
    );
}

#[test]
fn an_event_over_the_limit_found_once_connected_is_counted_once() {
    // Queued while no server answered, against the assumed 1 MiB; the server's 2,000
    // bytes are known only once connected: one event, one count, one line.
    let server = ServerConfig::new().jetstream().max_payload(2000).start();
    // The stream exists already: with one to create, nothing would be sent before the
    // connection, and so nothing against the assumed limit.
    let nc = client::connect(&server.url()).unwrap();
    JetStream::new(&nc, WAIT)
        .create_stream(&StreamConfig::new(STREAM, &["pub.ansible.runner.>"]))
        .unwrap();
    nc.close().unwrap();
    let proxy = Proxy::start(server.port(), Mode::Refuse);
    let mut v = vars(
        &proxy.url(),
        &[
            ("RUNNER_NATS_FLUSH_TIMEOUT", "10"),
            ("RUNNER_NATS_JETSTREAM_ACK_TIMEOUT", "0.5"),
        ],
    );
    v.remove("RUNNER_NATS_JETSTREAM_STREAM");
    let emitter = Emitter::new();
    let ident = "late-big";
    let mut errors = start_with_a_big_and_a_small_event(&emitter, &v, ident, 5000);
    proxy.set_mode(Mode::Forward);
    let end = send_status(&emitter, &v, ident, "successful");
    errors.extend(end.errors);
    let c = end.summary.unwrap().counters;
    let js = c.jetstream.unwrap();
    assert_eq!(js.acknowledged, 3, "{errors:?}");
    assert_eq!(
        c.oversized + js.refused + c.undelivered,
        1,
        "{c:?} {errors:?}"
    );
    let about_it = errors.iter().filter(|e| e.contains("max_payload")).count();
    assert_eq!(about_it, 1, "{errors:?}");
}

#[test]
fn an_outage_longer_than_the_ack_timeout_does_not_multiply_the_messages() {
    // Events keep coming for 3 s while the server is away, 6 ack timeouts long: the
    // client's buffers keep one copy of each for the next connection, not one per timeout.
    let server = ServerConfig::new().jetstream().start();
    let proxy = Proxy::start(server.port(), Mode::Forward);
    let v = vars(
        &proxy.url(),
        &[("RUNNER_NATS_JETSTREAM_ACK_TIMEOUT", "0.5")],
    );
    let emitter = Emitter::new();
    let ident = "outage";
    send_status(&emitter, &v, ident, "starting");
    wait_until(WAIT, "connected", || emitter.is_connected(ident));
    proxy.set_mode(Mode::Refuse);
    proxy.cut_all();
    wait_until(WAIT, "disconnected", || !emitter.is_connected(ident));
    let events = 30;
    for i in 1..=events {
        let r = send(&emitter, &v, ident, Kind::Event, &event(ident, i));
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        thread::sleep(Duration::from_millis(100));
    }
    proxy.set_mode(Mode::Forward);
    let end = send_status(&emitter, &v, ident, "successful");
    let c = end.summary.unwrap().counters;
    let js = c.jetstream.unwrap();
    let total = events as u64 + 2;
    assert_eq!(
        (js.acknowledged, c.undelivered, c.dropped),
        (total, 0, 0),
        "{:?}",
        end.errors
    );
    // One copy per ack timeout would be about 2.5 retries per message. A loaded machine
    // may still be slower than the ack timeout once after the reconnect: one each at most.
    assert!(js.retries < total, "{js:?}");
    let ids = stored_ids(&server.url());
    assert_eq!(ids.len(), total as usize, "{ids:?}");
}

#[test]
fn a_stream_to_create_on_a_server_without_jetstream_says_so_at_the_end() {
    let server = ServerConfig::new().start();
    let v = vars(&server.url(), &[("RUNNER_NATS_FLUSH_TIMEOUT", "1")]);
    let emitter = Emitter::new();
    let ident = "nojs";
    send_status(&emitter, &v, ident, "starting");
    send(&emitter, &v, ident, Kind::Event, &event(ident, 1));
    let end = send_status(&emitter, &v, ident, "failed");
    assert_eq!(end.summary.unwrap().counters.undelivered, 3);
    assert!(
        end.errors.iter().any(|e| e.contains(
            "the JetStream stream \"RUNS\" could not be created yet: nobody answered the JetStream API: is JetStream enabled on the server?"
        )),
        "{:?}",
        end.errors
    );
}

#[test]
fn without_a_stream_the_run_ends_in_time_and_says_why() {
    // JetStream is on in the server, but no stream captures the subjects and none is
    // configured to be created.
    let server = ServerConfig::new().jetstream().start();
    let mut v = vars(&server.url(), &[("RUNNER_NATS_FLUSH_TIMEOUT", "1")]);
    v.remove("RUNNER_NATS_JETSTREAM_STREAM");
    let emitter = Emitter::new();
    let ident = "nostream";
    send_status(&emitter, &v, ident, "starting");
    for i in 1..=10 {
        send(&emitter, &v, ident, Kind::Event, &event(ident, i));
    }
    let started = std::time::Instant::now();
    let end = send_status(&emitter, &v, ident, "successful");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "bounded by the flush timeout"
    );
    let c = end.summary.unwrap().counters;
    assert_eq!(c.undelivered, 12);
    assert_eq!(c.jetstream.unwrap().acknowledged, 0);
    assert_eq!(end.errors.len(), 1, "{:?}", end.errors);
    assert!(
        end.errors[0].starts_with("run nostream: 12 messages were not acknowledged by JetStream within the flush timeout (1s): nobody answered on \"pub.ansible.runner.js.nostream."),
        "{}",
        end.errors[0]
    );
    assert!(end.errors[0]
        .ends_with("no JetStream stream captures it, or JetStream is not enabled on the server"));
}

#[test]
fn with_the_server_down_the_run_ends_in_time_and_counts_every_message() {
    let v = vars(
        &format!("nats://127.0.0.1:{}", proto_tests::free_port()),
        &[("RUNNER_NATS_FLUSH_TIMEOUT", "2")],
    );
    let emitter = Emitter::new();
    let ident = "down";
    send_status(&emitter, &v, ident, "starting");
    for i in 1..=100 {
        send(&emitter, &v, ident, Kind::Event, &event(ident, i));
    }
    let started = std::time::Instant::now();
    let end = send_status(&emitter, &v, ident, "failed");
    // One flush timeout for the acknowledgements and the close together, not one each.
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(3500),
        "bounded by the flush timeout (2 s): took {took:?}"
    );
    let c = end.summary.unwrap().counters;
    assert_eq!(c.undelivered, 102);
    assert!(
        end.errors
            .iter()
            .any(|e| e.contains("102 messages were not acknowledged")),
        "{:?}",
        end.errors
    );
}

/// Creates `config` (stream JSON) through the JetStream API, as an administrator would.
fn create_stream_as_admin(url: &str, config: serde_json::Value) {
    let nc = client::connect(url).unwrap();
    let name = config["name"].as_str().unwrap().to_owned();
    let reply = nc
        .request(
            &format!("$JS.API.STREAM.CREATE.{name}"),
            config.to_string().as_bytes(),
            WAIT,
        )
        .unwrap();
    let text = String::from_utf8_lossy(&reply.payload).into_owned();
    assert!(!text.contains("\"error\""), "{text}");
    nc.close().unwrap();
}

#[test]
fn a_full_stream_that_discards_new_messages_refuses_them_at_once() {
    // The stream the run is configured to create exists already, made by an
    // administrator with another configuration (a limit of 5 messages, new ones refused):
    // it is published to without an error about creating it, and what does not fit is
    // refused for good (nats-server answers it with code 503), not retried until the
    // flush timeout.
    let server = ServerConfig::new().jetstream().start();
    create_stream_as_admin(
        &server.url(),
        json!({"name": STREAM, "subjects": ["pub.ansible.runner.>"], "storage": "file",
               "max_msgs": 5, "discard": "new", "duplicate_window": 600_000_000_000u64}),
    );
    let v = vars(&server.url(), &[("RUNNER_NATS_FLUSH_TIMEOUT", "30")]);
    let (c, errors) = whole_run(&Emitter::new(), &v, "full", 10);
    let js = c.jetstream.unwrap();
    assert_eq!(
        (js.acknowledged, js.refused, js.retries, c.undelivered),
        (5, 7, 0, 0),
        "{errors:?}"
    );
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains("JetStream refused a message on")
            && errors[0].contains("maximum messages exceeded"),
        "{errors:?}"
    );
    assert_eq!(stored_ids(&server.url()).len(), 5);
}

#[test]
fn a_stream_that_appears_mid_run_stores_it_in_order_but_for_one_window() {
    // No stream at first: every publish meets "no responders" and waits to go again.
    // Once an administrator makes one, the run resumes from its oldest message: only the
    // messages in flight at that moment may be stored after later ones.
    let server = ServerConfig::new().jetstream().start();
    let mut v = vars(&server.url(), &[]);
    v.remove("RUNNER_NATS_JETSTREAM_STREAM");
    let emitter = Emitter::new();
    let ident = "late";
    let n = 2000;
    send_status(&emitter, &v, ident, "starting");
    for i in 1..=n {
        send(&emitter, &v, ident, Kind::Event, &event(ident, i));
    }
    // The end of the run goes on publishing until everything is acknowledged; the stream
    // is made while it does, once the server has seen the run's messages come back
    // more than once (each publish is counted there, answered or not).
    let end = thread::scope(|s| {
        let end = s.spawn(|| send_status(&emitter, &v, ident, "successful"));
        wait_until(WAIT, "publishes refused for want of a stream", || {
            server.monitor("/varz")["in_msgs"].as_u64().unwrap_or(0) >= 3 * n as u64
        });
        create_stream_as_admin(
            &server.url(),
            json!({"name": STREAM, "subjects": ["pub.ansible.runner.>"], "storage": "file"}),
        );
        end.join().unwrap()
    });
    assert!(end.errors.is_empty(), "{:?}", end.errors);
    let ids = stored_ids(&server.url());
    let expected = expected_ids(ident, &run_tag(ident, &ids), n);
    let mut sorted = ids.clone();
    sorted.sort();
    let mut want = expected.clone();
    want.sort();
    assert_eq!(sorted, want, "each message stored once");
    let place: HashMap<&String, usize> =
        expected.iter().enumerate().map(|(i, id)| (id, i)).collect();
    let window = 256;
    let mut latest = 0;
    for id in &ids {
        let at = place[id];
        assert!(
            at + window > latest,
            "{id} (message {at}) stored after message {latest}"
        );
        latest = latest.max(at);
    }
}

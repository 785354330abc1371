//! Fault injection against real nats-server processes: kills, restarts, a stalled
//! network, lame duck mode, a full reconnect buffer and credentials that stop working.
//! Every wait is on a condition with a bound; the proxy decides when the client may
//! reach a restarted server, so nothing depends on timing luck.

use std::collections::HashSet;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use ansible_runner_nats::client::{Client, Event, Options};
use ansible_runner_nats::Error;
use proto_tests::proxy::{Mode, Proxy};
use proto_tests::{cluster, route_peers, wait_until, NatsServer, PySubscriber, ServerConfig};

const WAIT: Duration = Duration::from_secs(30);

/// Events a client reported, with when they arrived.
#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<(Instant, Event)>>>);

impl Events {
    fn options(&self, opts: Options) -> Options {
        let sink = self.clone();
        opts.event_callback(move |e| sink.0.lock().unwrap().push((Instant::now(), e)))
    }

    fn count(&self, pred: impl Fn(&Event) -> bool) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, e)| pred(e))
            .count()
    }

    fn first_time(&self, pred: impl Fn(&Event) -> bool) -> Option<Instant> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|(_, e)| pred(e))
            .map(|(t, _)| *t)
    }

    fn times(&self, pred: impl Fn(&Event) -> bool) -> Vec<Instant> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, e)| pred(e))
            .map(|(t, _)| *t)
            .collect()
    }
}

fn is_reconnected(e: &Event) -> bool {
    matches!(e, Event::Reconnected { .. })
}

fn is_disconnected(e: &Event) -> bool {
    matches!(e, Event::Disconnected { .. })
}

fn fast_reconnect(opts: Options) -> Options {
    opts.reconnect_time_wait(Duration::from_millis(100))
        .reconnect_jitter(Duration::from_millis(20))
        .max_reconnect_attempts(-1)
        .connect_timeout(Duration::from_secs(1))
}

fn wait_routes(server: &NatsServer, peers: usize) {
    wait_until(WAIT, "cluster routes", || route_peers(server) == peers);
}

/// Two-node cluster, publisher behind a proxy to node A only (routes not advertised to
/// clients), subscriber on node B. Kills A twice mid-stream. Returns (first arrivals in
/// order?, duplicates, missing, what `close` counted as not confirmed delivered).
/// In order, duplicates, missing, what the final flush said was lost with the killed
/// connections, and what close counted as not delivered.
fn kill_twice(resend: bool, total: usize) -> (bool, usize, usize, u64, u64) {
    let nodes = cluster(2, |c| c.cluster_no_advertise());
    let (mut a, b) = {
        let mut it = nodes.into_iter();
        (it.next().unwrap(), it.next().unwrap())
    };
    let proxy = Proxy::start(a.port(), Mode::Forward);
    let mut sub = PySubscriber::start(&b.url(), "seq");
    // A drops what it has no interest for: B's subscription must have come over the
    // route (counting the route's peer is not enough, a route has several connections).
    a.wait_for_subscription("seq", WAIT);
    let events = Events::default();
    let client = events
        .options(fast_reconnect(Options::new()))
        .servers(&proxy.url())
        .unwrap()
        .resend_unconfirmed(resend)
        .connect()
        .unwrap();
    let (tx, rx) = mpsc::channel::<usize>();
    let publisher = {
        let client = client.clone();
        thread::spawn(move || {
            for i in 0..total {
                client.publish("seq", format!("{i}").as_bytes()).unwrap();
                if i % 1000 == 999 {
                    let _ = tx.send(i + 1);
                    // Spread the stream over time so that the kills land mid-stream.
                    thread::sleep(Duration::from_millis(2));
                }
            }
        })
    };
    let mut kills = 0;
    let mut published = 0;
    while kills < 2 {
        published = rx.recv_timeout(WAIT).expect("publisher progress");
        if published >= total * (kills + 1) / 3 {
            // The proxy refuses until A is back with its route and B's subscription, so
            // no message can reach A before A knows about it.
            proxy.set_mode(Mode::Refuse);
            a.kill();
            proxy.cut_all();
            a.restart();
            wait_routes(&a, 1);
            a.wait_for_subscription("seq", WAIT);
            proxy.set_mode(Mode::Forward);
            kills += 1;
            wait_until(WAIT, "reconnected after the kill", || {
                events.count(is_reconnected) >= kills
            });
        }
    }
    let _ = published;
    publisher.join().unwrap();
    let lost = match client.flush(WAIT) {
        Ok(()) => 0,
        Err(Error::Lost { messages, .. }) => messages,
        Err(e) => panic!("flush: {e}"),
    };
    let undelivered = match client.close() {
        Ok(()) => 0,
        Err(Error::NotDelivered { messages, .. }) => messages,
        Err(e) => panic!("close: {e}"),
    };
    assert!(events.count(is_reconnected) >= 2, "expected two reconnects");

    // A processed everything the client sent before its close returned; a marker sent
    // through A afterwards follows all of it over the route to B, so it bounds the wait.
    let marker = ansible_runner_nats::client::connect(&a.url()).unwrap();
    marker.publish("seq", b"end").unwrap();
    marker.close().unwrap();
    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    loop {
        got.extend(sub.received());
        if got.iter().any(|m| m.payload == b"end") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no end marker: {} received",
            got.len()
        );
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        got.pop().map(|m| m.payload),
        Some(b"end".to_vec()),
        "the marker came last"
    );
    let mut seen = HashSet::new();
    let mut firsts = Vec::new();
    for m in &got {
        let n: usize = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
        if seen.insert(n) {
            firsts.push(n);
        }
    }
    let in_order = firsts.windows(2).all(|w| w[0] < w[1]);
    let duplicates = got.len() - seen.len();
    let missing = total - seen.len();
    (in_order, duplicates, missing, lost, undelivered)
}

#[test]
fn kill_and_restart_twice_with_resend_loses_nothing() {
    let total = 100_000;
    let (in_order, duplicates, missing, lost, undelivered) = kill_twice(true, total);
    eprintln!("resend_unconfirmed on: {missing} missing, {duplicates} duplicates of {total}");
    assert_eq!(missing, 0, "messages lost with resend_unconfirmed");
    assert_eq!(lost, 0, "the flush said messages were lost");
    assert_eq!(undelivered, 0, "close counted messages as not delivered");
    assert!(in_order, "first arrivals out of publish order");
}

#[test]
fn kill_and_restart_twice_without_resend_reports_loss() {
    let total = 100_000;
    let (in_order, duplicates, missing, lost, undelivered) = kill_twice(false, total);
    eprintln!(
        "resend_unconfirmed off: {missing} missing, {duplicates} duplicates of {total}; flush: {lost} lost; close: {undelivered} not confirmed delivered"
    );
    assert_eq!(duplicates, 0, "at-most-once must not duplicate");
    assert!(in_order);
    // Whatever was in flight when a connection died counts: an upper bound of the loss.
    assert!(
        undelivered >= missing as u64 && undelivered > 0,
        "close counted {undelivered} not delivered, {missing} are missing"
    );
    // The flush after the kills said so already, with the same count: everything after
    // them was confirmed.
    assert_eq!(lost, undelivered, "the flush's loss and close's count");
}

#[test]
fn three_node_cluster_learned_from_info_survives_each_node_killed() {
    let mut nodes = cluster(3, |c| c);
    let urls: Vec<String> = nodes.iter().map(NatsServer::url).collect();
    // One independent subscriber per node, pinned to it and restarted with it: wherever
    // the client publishes, a subscriber on that very node receives.
    let pinned = |url: &String| {
        let opts = proto_tests::PySubOptions {
            no_reconnect: true,
            ..Default::default()
        };
        PySubscriber::start_with(std::slice::from_ref(url), "tri", opts)
    };
    let mut subs: Vec<PySubscriber> = urls.iter().map(pinned).collect();
    let events = Events::default();
    let client = events
        .options(fast_reconnect(Options::new()))
        .servers(&urls[0])
        .unwrap()
        .resend_unconfirmed(true)
        .connect()
        .unwrap();
    wait_until(WAIT, "connect_urls learned", || {
        client.server_info().connect_urls.len() >= 2
    });
    // Publishes 1,000 more messages numbered from `sent`, flushes, returns the new total.
    let publish = |client: &Client, sent: usize| {
        for i in sent..sent + 1000 {
            client.publish("tri", format!("{i}").as_bytes()).unwrap();
        }
        client.flush(WAIT).unwrap();
        sent + 1000
    };
    let mut sent = publish(&client, 0);
    // A flush says the server has read the messages, not that it has passed them on: a
    // node killed right after could take its outbound buffers with it. So before each
    // kill, every message so far is seen at one subscriber at least.
    let mut seen = HashSet::new();
    let mut all_seen = |subs: &mut Vec<PySubscriber>, total: usize| {
        wait_until(WAIT, "every message at one subscriber at least", || {
            for s in subs.iter_mut() {
                for m in s.received() {
                    seen.insert(m.payload);
                }
            }
            seen.len() >= total
        });
    };
    let mut killed = HashSet::new();
    for round in 0..3 {
        all_seen(&mut subs, sent);
        // Kill the node the client is on now, unless it was killed before: then another.
        let port = client.server_info().port;
        let idx = nodes
            .iter()
            .position(|n| n.port() == port && !killed.contains(&n.port()))
            .or_else(|| nodes.iter().position(|n| !killed.contains(&n.port())))
            .unwrap();
        killed.insert(nodes[idx].port());
        nodes[idx].kill();
        sent = publish(&client, sent);
        // The flush above waited for the client to move to a live node.
        assert!(events.count(is_reconnected) > round);
        nodes[idx].restart();
        for n in &nodes {
            wait_routes(n, 2);
        }
        subs.push(pinned(&urls[idx]));
    }
    sent = publish(&client, sent);
    client.close().unwrap();
    assert_eq!(killed.len(), 3, "every node was killed once");
    all_seen(&mut subs, sent);
}

#[test]
fn server_down_at_start_then_up_delivers_the_buffer() {
    let server_port = proto_tests::free_port();
    let proxy = Proxy::start(server_port, Mode::Refuse);
    let events = Events::default();
    let client = events
        .options(fast_reconnect(Options::new()))
        .servers(&proxy.url())
        .unwrap()
        .retry_on_failed_connect(true)
        .connect()
        .expect("a client even though no server is up");
    assert!(!client.is_connected());
    for i in 0..500 {
        client.publish("early", format!("{i}").as_bytes()).unwrap();
    }
    let server = ServerConfig::new().port(server_port).start();
    let mut sub = PySubscriber::start(&server.url(), "early");
    proxy.set_mode(Mode::Forward);
    client.flush(WAIT).unwrap();
    let got = sub.wait_for(500, WAIT);
    let payloads: Vec<String> = got
        .iter()
        .map(|m| String::from_utf8(m.payload.clone()).unwrap())
        .collect();
    let expected: Vec<String> = (0..500).map(|i| i.to_string()).collect();
    assert_eq!(payloads, expected);
    client.close().unwrap();
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[test]
fn full_reconnect_buffer_refuses_and_counts() {
    let proxy = Proxy::start(proto_tests::free_port(), Mode::Refuse);
    let pending = 256 * 1024;
    let client = fast_reconnect(Options::new())
        .servers(&proxy.url())
        .unwrap()
        .retry_on_failed_connect(true)
        .pending_size(pending)
        .connect()
        .unwrap();
    let payload = vec![b'x'; 1024];
    let before = rss_kib();
    let (mut accepted, mut refused) = (0u64, 0u64);
    for _ in 0..1_000_000 {
        match client.publish("buf", &payload) {
            Ok(()) => accepted += 1,
            Err(Error::BufferFull { which, limit }) => {
                assert_eq!(which, "reconnect buffer");
                assert_eq!(limit, pending);
                refused += 1;
            }
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    let grown = rss_kib().saturating_sub(before);
    eprintln!("reconnect buffer {pending} B: accepted {accepted}, refused {refused}, RSS grew {grown} KiB");
    assert!(accepted > 0 && accepted < 256, "accepted {accepted}");
    assert_eq!(accepted + refused, 1_000_000);
    assert_eq!(client.statistics().dropped, refused);
    // Unbounded, the 1,000,000 messages would take over 1 GiB. The process's RSS also
    // counts the tests running beside this one, hence the room.
    assert!(grown < 128 * 1024, "memory grew by {grown} KiB");
    let err = client.close().unwrap_err();
    assert!(
        matches!(err, Error::NotDelivered { messages, .. } if messages == accepted),
        "{err:?}"
    );
}

#[test]
fn stalled_connection_is_detected_by_pings() {
    let server = ServerConfig::new().start();
    let proxy = Proxy::start(server.port(), Mode::Forward);
    let events = Events::default();
    let interval = Duration::from_millis(300);
    let client = events
        .options(fast_reconnect(Options::new()))
        .servers(&proxy.url())
        .unwrap()
        .ping_interval(interval)
        .max_outstanding_pings(2)
        .connect()
        .unwrap();
    client.flush(WAIT).unwrap();
    let stalled_at = Instant::now();
    proxy.set_mode(Mode::Stall);
    wait_until(WAIT, "stale connection detected", || {
        events.count(is_disconnected) >= 1
    });
    let detected = events.first_time(is_disconnected).unwrap() - stalled_at;
    // Nominally within three ping intervals; the slack is for a loaded machine. Without
    // pings nothing would notice a stall for minutes (TCP retransmission timeouts).
    let bound = interval * 3 + Duration::from_secs(2);
    eprintln!("stall detected after {detected:?} (bound {bound:?})");
    assert!(detected <= bound, "took {detected:?}");
    proxy.cut_all();
    proxy.set_mode(Mode::Forward);
    wait_until(WAIT, "reconnected", || events.count(is_reconnected) >= 1);
    client.flush(WAIT).unwrap();
}

#[test]
fn lame_duck_moves_to_another_node_without_loss() {
    let nodes = cluster(2, |c| {
        c.extra("lame_duck_duration: \"30s\"\nlame_duck_grace_period: \"1s\"")
    });
    let mut sub = PySubscriber::start(&nodes[1].url(), "ldm");
    nodes[0].wait_for_subscription("ldm", WAIT);
    let events = Events::default();
    let client = events
        .options(fast_reconnect(Options::new()))
        .servers(&format!("{},{}", nodes[0].url(), nodes[1].url()))
        .unwrap()
        .no_randomize(true)
        .connect()
        .unwrap();
    assert_eq!(client.server_info().port, nodes[0].port());
    for i in 0..1000 {
        client.publish("ldm", format!("{i}").as_bytes()).unwrap();
    }
    nodes[0].signal_ldm();
    wait_until(WAIT, "lame duck announced", || {
        events.count(|e| matches!(e, Event::LameDuck)) == 1
    });
    for i in 1000..2000 {
        client.publish("ldm", format!("{i}").as_bytes()).unwrap();
    }
    wait_until(WAIT, "moved to the other node", || {
        client.is_connected() && client.server_info().port == nodes[1].port()
    });
    client.flush(WAIT).unwrap();
    let got = sub.wait_for(2000, WAIT);
    let mut nums: Vec<usize> = got
        .iter()
        .map(|m| std::str::from_utf8(&m.payload).unwrap().parse().unwrap())
        .collect();
    nums.sort_unstable();
    nums.dedup();
    assert_eq!(nums.len(), 2000);
    client.close().unwrap();
}

#[test]
fn wrong_credentials_on_reconnect_follow_the_wait_and_the_count() {
    let first = ServerConfig::new().user_password("app", "first-pw").start();
    let second = ServerConfig::new()
        .user_password("app", "second-pw")
        .start();
    let proxy = Proxy::start(first.port(), Mode::Forward);
    let events = Events::default();
    let wait = Duration::from_millis(300);
    let client = events
        .options(Options::new())
        .servers(&proxy.url())
        .unwrap()
        .user_password("app", "first-pw")
        .reconnect_time_wait(wait)
        .reconnect_jitter(Duration::ZERO)
        .max_reconnect_attempts(3)
        .connect()
        .unwrap();
    // The "same" server comes back with other credentials.
    proxy.set_target(second.port());
    proxy.cut_all();
    wait_until(WAIT, "client closed after its attempts", || {
        client.is_closed()
    });
    let failures = events.times(|e| {
        matches!(e, Event::ReconnectFailed { reason, .. } if reason.contains("authorization violation"))
    });
    assert_eq!(failures.len(), 3, "attempts honour max_reconnect_attempts");
    for pair in failures.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap >= wait - Duration::from_millis(20),
            "attempts too close: {gap:?}"
        );
    }
    // The Closed event follows the phase change (after the subscriptions are dropped).
    wait_until(WAIT, "one Closed event", || {
        events.count(|e| matches!(e, Event::Closed)) == 1
    });
    let last = client.last_error().unwrap();
    assert!(last.contains("authorization violation"), "{last}");
    assert!(matches!(client.publish("x", b"y"), Err(Error::Closed)));
}

#[test]
fn close_during_an_outage_is_bounded_and_counts() {
    let mut server = ServerConfig::new().start();
    let client = fast_reconnect(Options::new())
        .servers(&server.url())
        .unwrap()
        .flush_timeout(Duration::from_millis(500))
        .connect()
        .unwrap();
    client.flush(WAIT).unwrap();
    server.kill();
    wait_until(WAIT, "disconnect noticed", || !client.is_connected());
    for i in 0..50 {
        client.publish("gone", format!("{i}").as_bytes()).unwrap();
    }
    let started = Instant::now();
    let err = client.close().unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(err, Error::NotDelivered { messages: 50, .. }),
        "{err:?}"
    );
    assert!(
        took < Duration::from_millis(500) + Duration::from_secs(2),
        "close took {took:?}"
    );
    eprintln!("close during outage returned after {took:?}: {err}");
}

#[test]
fn messages_buffered_under_a_larger_limit_are_dropped_on_a_server_with_a_smaller_one() {
    let roomy = ServerConfig::new().max_payload(8 << 20).start();
    let tight = ServerConfig::new().max_payload(2 << 20).start();
    let mut sub = PySubscriber::start(&tight.url(), "moved.>");
    let proxy = Proxy::start(roomy.port(), Mode::Forward);
    let events = Events::default();
    let client = events
        .options(fast_reconnect(Options::new()))
        .servers(&proxy.url())
        .unwrap()
        .connect()
        .unwrap();
    assert_eq!(client.max_payload(), 8 << 20);
    proxy.set_mode(Mode::Refuse);
    proxy.cut_all();
    wait_until(WAIT, "the connection lost", || !client.is_connected());
    // Accepted against the last server's limit, while no server is there to ask.
    client.publish("moved.a", &[b'a'; 100]).unwrap();
    client.publish("moved.big", &vec![b'b'; 4 << 20]).unwrap();
    client.publish("moved.c", &[b'c'; 100]).unwrap();
    proxy.set_target(tight.port());
    proxy.set_mode(Mode::Forward);
    // The new server never saw it, so it kept the connection: the one disconnect is ours.
    assert_only_the_big_one_was_dropped(&client, &mut sub, &events, "moved", 1);
    assert_eq!(client.max_payload(), 2 << 20);
    client.close().unwrap();
}

/// `<prefix>.a` and `<prefix>.c` arrived, the one big message between them was dropped
/// on connect and reported once, and the client saw `disconnects` disconnects.
fn assert_only_the_big_one_was_dropped(
    client: &Client,
    sub: &mut PySubscriber,
    events: &Events,
    prefix: &str,
    disconnects: usize,
) {
    client.flush(WAIT).unwrap();
    let got = sub.wait_for(2, WAIT);
    assert_eq!(got[0].subject, format!("{prefix}.a"));
    assert_eq!(got[1].subject, format!("{prefix}.c"));
    let stats = client.statistics();
    assert_eq!((stats.oversized, stats.dropped), (1, 1));
    assert_eq!(
        events.count(|e| matches!(e, Event::Dropped { messages: 1, .. })),
        1
    );
    assert_eq!(events.count(is_disconnected), disconnects);
}

#[test]
fn max_reconnect_attempts_counts_reconnects_not_the_first_connect() {
    let url = format!("nats://127.0.0.1:{}", proto_tests::free_port());
    // (how the first attempt is made, max_reconnect_attempts, attempts in the background)
    let cases = [
        ("in the background", 0, 1),
        ("in the background", 2, 3),
        ("at the call, then retried", 1, 1),
    ];
    for (how, max, background) in cases {
        let events = Events::default();
        let opts = events
            .options(Options::new())
            .servers(&url)
            .unwrap()
            .reconnect_time_wait(Duration::from_millis(10))
            .reconnect_jitter(Duration::ZERO)
            .max_reconnect_attempts(max);
        let opts = if how == "in the background" {
            opts.connect_in_background(true)
        } else {
            opts.retry_on_failed_connect(true)
        };
        let client = opts.connect().unwrap();
        wait_until(WAIT, "the client gave up", || client.is_closed());
        let failed = events.count(|e| matches!(e, Event::ReconnectFailed { .. }));
        assert_eq!(failed, background, "{how}, max {max}");
    }
}

#[test]
fn oversized_messages_buffered_before_the_limit_was_known_are_dropped_on_connect() {
    let server = ServerConfig::new().max_payload(1024).start();
    let mut sub = PySubscriber::start(&server.url(), "late.>");
    let proxy = Proxy::start(server.port(), Mode::Refuse);
    let events = Events::default();
    let client = events
        .options(fast_reconnect(Options::new()))
        .servers(&proxy.url())
        .unwrap()
        .retry_on_failed_connect(true)
        .connect()
        .unwrap();
    client.publish("late.a", &[b'a'; 100]).unwrap();
    client.publish("late.big", &[b'b'; 2000]).unwrap();
    client.publish("late.c", &[b'c'; 100]).unwrap();
    proxy.set_mode(Mode::Forward);
    // The connection survived: the server never saw the oversized message.
    assert_only_the_big_one_was_dropped(&client, &mut sub, &events, "late", 0);
    client.close().unwrap();
}

#[test]
fn an_automatic_unsubscribe_asks_the_next_server_for_what_is_left() {
    let mut server = ServerConfig::new().start();
    let events = Events::default();
    let client = events
        .options(fast_reconnect(Options::new()))
        .servers(&server.url())
        .unwrap()
        .connect()
        .unwrap();
    let sub = client.subscribe("left.>").unwrap();
    sub.unsubscribe_after(5).unwrap();
    for i in 0..2 {
        client.publish("left.x", format!("{i}").as_bytes()).unwrap();
    }
    client.flush(WAIT).unwrap();
    for i in 0..2 {
        assert_eq!(
            sub.next_timeout(WAIT).unwrap().payload,
            format!("{i}").as_bytes()
        );
    }
    server.restart();
    wait_until(WAIT, "the reconnect", || events.count(is_reconnected) == 1);
    // The new server counts from the new SUB: it is asked for the three left.
    let max = || server.subscription_max("left.>");
    wait_until(
        WAIT,
        "the subscription and its count on the new server",
        || max() == Some(3),
    );
    for i in 2..8 {
        client.publish("left.x", format!("{i}").as_bytes()).unwrap();
    }
    client.flush(WAIT).unwrap();
    let mut got = Vec::new();
    loop {
        match sub.next_timeout(WAIT) {
            Ok(m) => got.push(String::from_utf8(m.payload).unwrap()),
            Err(Error::Closed) => break,
            Err(e) => panic!("after {got:?}: {e}"),
        }
    }
    assert_eq!(got, ["2", "3", "4"]);
    wait_until(WAIT, "the new server to end the subscription", || {
        max().is_none()
    });
    client.close().unwrap();
}

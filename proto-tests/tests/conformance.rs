//! Server conformance suite: checks of NATS server behaviour through the library's raw
//! protocol connection ([`ansible_runner_nats::raw`]), each naming the rule of the NATS
//! client protocol it checks (<https://docs.nats.io/reference/reference-protocols/nats-protocol>).
//!
//! By default it starts its own nats-server (the pinned one from `.venv`), plus dedicated
//! servers for the checks that need a configuration (authorization, permissions, ping
//! timing, control line limit). With `NATS_CONFORMANCE_URL` it targets that server instead
//! (`NATS_CONFORMANCE_USER` / `_PASSWORD` / `_TOKEN` for its credentials,
//! `NATS_CONFORMANCE_CA_FILE` for its TLS certificate), and skips, saying why, only the
//! checks that need server configuration it cannot control.
//!
//! The results table (check, rule, outcome, and for failures the bytes exchanged) is
//! printed at the end; run with `-- --nocapture` to see it when everything passes.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use ansible_runner_nats::proto::{ClientOp, ConnectInfo};
use ansible_runner_nats::raw::{RawConnection, RawMsg, RawOp};
use ansible_runner_nats::tls::TlsOptions;
use ansible_runner_nats::Error;
use proto_tests::{NatsServer, ServerConfig};

/// How long one expected answer may take.
const ANSWER: Duration = Duration::from_secs(3);

type CheckResult = Result<(), String>;

/// A check's server needs, in own-server mode.
#[derive(Clone, Copy)]
enum Needs {
    /// Any server, default configuration: runs against external servers too.
    Any,
    /// A server configured by the function; skipped against an external server.
    Config(&'static str, fn(ServerConfig) -> ServerConfig),
}

struct Check {
    name: &'static str,
    rule: &'static str,
    needs: Needs,
    run: fn(&Ctx) -> CheckResult,
}

/// Where the checks connect, and with what.
#[derive(Clone, Default)]
struct Target {
    url: String,
    user: Option<String>,
    password: Option<String>,
    token: Option<String>,
    ca_file: Option<PathBuf>,
}

impl Target {
    fn from_env() -> Option<Target> {
        let url = std::env::var("NATS_CONFORMANCE_URL").ok()?;
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        Some(Target {
            url,
            user: var("NATS_CONFORMANCE_USER"),
            password: var("NATS_CONFORMANCE_PASSWORD"),
            token: var("NATS_CONFORMANCE_TOKEN"),
            ca_file: var("NATS_CONFORMANCE_CA_FILE").map(PathBuf::from),
        })
    }
}

/// What a check works with: its target, and the transcripts of its connections.
struct Ctx {
    target: Target,
    transcripts: Rc<RefCell<Vec<String>>>,
}

/// A raw connection that leaves its transcript in the check's context when dropped.
struct Conn {
    raw: RawConnection,
    label: String,
    log: Rc<RefCell<Vec<String>>>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.log
            .borrow_mut()
            .push(format!("[{}]\n{}", self.label, self.raw.transcript_text()));
    }
}

impl std::ops::Deref for Conn {
    type Target = RawConnection;
    fn deref(&self) -> &RawConnection {
        &self.raw
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut RawConnection {
        &mut self.raw
    }
}

fn e(err: Error) -> String {
    err.to_string()
}

impl Ctx {
    /// TCP (and TLS when the server requires it), INFO read; nothing sent.
    fn open(&self, label: &str) -> Result<(Conn, ansible_runner_nats::proto::ServerInfo), String> {
        let raw = RawConnection::connect(&self.target.url, ANSWER).map_err(e)?;
        let mut conn = Conn {
            raw,
            label: label.to_owned(),
            log: Rc::clone(&self.transcripts),
        };
        let info = conn.read_info(ANSWER).map_err(e)?;
        if info.tls_required {
            let tls = TlsOptions {
                ca_files: self.target.ca_file.iter().cloned().collect(),
                ..TlsOptions::default()
            };
            conn.upgrade_tls(&tls, ANSWER).map_err(e)?;
        }
        Ok((conn, info))
    }

    /// The CONNECT this suite sends: not verbose, headers and no_responders on, the
    /// target's credentials.
    fn connect_info(&self) -> ConnectInfo {
        ConnectInfo {
            verbose: false,
            pedantic: false,
            headers: true,
            no_responders: true,
            user: self.target.user.clone(),
            pass: self.target.password.clone(),
            auth_token: self.target.token.clone(),
            ..ConnectInfo::default()
        }
    }

    /// A connection past CONNECT and a PING/PONG round trip.
    fn conn(&self, label: &str) -> Result<Conn, String> {
        self.conn_with(label, |_| {})
    }

    fn conn_with(&self, label: &str, edit: impl FnOnce(&mut ConnectInfo)) -> Result<Conn, String> {
        let (mut conn, _) = self.open(label)?;
        let mut ci = self.connect_info();
        edit(&mut ci);
        conn.send(&ClientOp::Connect(Box::new(ci))).map_err(e)?;
        conn.send_raw(b"PING\r\n").map_err(e)?;
        expect(&mut conn, "PONG after CONNECT", |op| *op == RawOp::Pong)?;
        Ok(conn)
    }
}

/// The next operation, answering server PINGs and skipping INFO updates on the way
/// (nats-server sends one after CONNECT, and whenever the cluster changes).
fn next(conn: &mut Conn) -> Result<RawOp, String> {
    loop {
        match conn.next_op(ANSWER) {
            Ok(RawOp::Ping) => conn.send_raw(b"PONG\r\n").map_err(e)?,
            Ok(RawOp::Info(_)) => {}
            Ok(op) => return Ok(op),
            Err(err) => return Err(format!("no operation: {err}")),
        }
    }
}

fn expect(conn: &mut Conn, what: &str, ok: impl Fn(&RawOp) -> bool) -> CheckResult {
    let op = next(conn)?;
    if ok(&op) {
        Ok(())
    } else {
        Err(format!("expected {what}, got {op:?}"))
    }
}

fn expect_msg(conn: &mut Conn, what: &str) -> Result<RawMsg, String> {
    match next(conn)? {
        RawOp::Msg(m) => Ok(m),
        other => Err(format!("expected {what}, got {other:?}")),
    }
}

/// Sends PING and collects what comes before the PONG (answering server PINGs).
fn until_pong(conn: &mut Conn) -> Result<Vec<RawOp>, String> {
    conn.send_raw(b"PING\r\n").map_err(e)?;
    let mut seen = Vec::new();
    loop {
        match next(conn)? {
            RawOp::Pong => return Ok(seen),
            op => seen.push(op),
        }
    }
}

/// Expects `-ERR` whose text starts with `prefix` (case-insensitive).
fn expect_err(conn: &mut Conn, prefix: &str) -> CheckResult {
    match next(conn)? {
        RawOp::Err(t)
            if t.to_ascii_lowercase()
                .starts_with(&prefix.to_ascii_lowercase()) =>
        {
            Ok(())
        }
        other => Err(format!("expected -ERR '{prefix}...', got {other:?}")),
    }
}

fn expect_closed(conn: &mut Conn) -> CheckResult {
    match conn.expect_close(ANSWER) {
        Ok(_) => Ok(()),
        Err(err) => Err(format!(
            "expected the server to close the connection: {err}"
        )),
    }
}

fn unique(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "conformance.{prefix}.{}.{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn pubs(conn: &mut Conn, subject: &str, payload: &[u8]) -> CheckResult {
    conn.send(&ClientOp::Pub {
        subject,
        reply: None,
        payload,
    })
    .map_err(e)
}

fn sub(conn: &mut Conn, subject: &str, sid: u64) -> CheckResult {
    conn.send(&ClientOp::Sub {
        subject,
        queue_group: None,
        sid,
    })
    .map_err(e)
}

// ---------------------------------------------------------------------------------------
// The checks.

fn info_on_connect(ctx: &Ctx) -> CheckResult {
    let (_c, info) = ctx.open("client")?;
    if info.server_id.is_empty() {
        return Err("INFO without server_id".into());
    }
    if info.version.is_empty() {
        return Err("INFO without version".into());
    }
    if info.max_payload == 0 {
        return Err("INFO without max_payload".into());
    }
    Ok(())
}

fn info_protocol_and_headers(ctx: &Ctx) -> CheckResult {
    let (_c, info) = ctx.open("client")?;
    if info.proto < 1 {
        return Err(format!(
            "proto {} (< 1: no dynamic reconfiguration)",
            info.proto
        ));
    }
    if !info.headers {
        return Err("INFO says headers: false".into());
    }
    Ok(())
}

fn verbose_connect_ok(ctx: &Ctx) -> CheckResult {
    let (mut c, _) = ctx.open("client")?;
    let mut ci = ctx.connect_info();
    ci.verbose = true;
    c.send(&ClientOp::Connect(Box::new(ci))).map_err(e)?;
    expect(&mut c, "+OK for CONNECT", |op| *op == RawOp::Ok)
}

fn verbose_ok_per_op(ctx: &Ctx) -> CheckResult {
    let (mut c, _) = ctx.open("client")?;
    let mut ci = ctx.connect_info();
    ci.verbose = true;
    c.send(&ClientOp::Connect(Box::new(ci))).map_err(e)?;
    expect(&mut c, "+OK for CONNECT", |op| *op == RawOp::Ok)?;
    let s = unique("verbose");
    sub(&mut c, &s, 1)?;
    expect(&mut c, "+OK for SUB", |op| *op == RawOp::Ok)?;
    pubs(&mut c, &s, b"x")?;
    // The PUB's +OK and the MSG it produced, in either order.
    let mut seen = vec![next(&mut c)?, next(&mut c)?];
    seen.sort_by_key(|op| !matches!(op, RawOp::Ok));
    if !(seen[0] == RawOp::Ok && matches!(seen[1], RawOp::Msg(_))) {
        return Err(format!("expected +OK and the MSG for PUB, got {seen:?}"));
    }
    c.send(&ClientOp::Unsub { sid: 1, max: None }).map_err(e)?;
    expect(&mut c, "+OK for UNSUB", |op| *op == RawOp::Ok)
}

fn ping_pong(ctx: &Ctx) -> CheckResult {
    let mut c = ctx.conn("client")?;
    for _ in 0..3 {
        c.send_raw(b"PING\r\n").map_err(e)?;
        expect(&mut c, "PONG", |op| *op == RawOp::Pong)?;
    }
    Ok(())
}

fn pub_sub(ctx: &Ctx) -> CheckResult {
    let mut c = ctx.conn("client")?;
    let s = unique("pubsub");
    sub(&mut c, &s, 7)?;
    pubs(&mut c, &s, b"hello")?;
    let m = expect_msg(&mut c, "MSG")?;
    if (
        m.subject.as_str(),
        m.sid,
        m.reply.as_deref(),
        m.payload.as_slice(),
        m.header.is_some(),
    ) != (s.as_str(), 7, None, &b"hello"[..], false)
    {
        return Err(format!("wrong MSG: {m:?}"));
    }
    Ok(())
}

fn empty_payload(ctx: &Ctx) -> CheckResult {
    let mut c = ctx.conn("client")?;
    let s = unique("empty");
    sub(&mut c, &s, 1)?;
    c.send_raw(format!("PUB {s} 0\r\n\r\n").as_bytes())
        .map_err(e)?;
    let m = expect_msg(&mut c, "MSG with 0 bytes")?;
    if !m.payload.is_empty() {
        return Err(format!("payload {:?}", m.payload));
    }
    Ok(())
}

fn reply_subject(ctx: &Ctx) -> CheckResult {
    let mut c = ctx.conn("client")?;
    let s = unique("reply");
    sub(&mut c, &s, 1)?;
    c.send(&ClientOp::Pub {
        subject: &s,
        reply: Some("reply.to.me"),
        payload: b"q",
    })
    .map_err(e)?;
    let m = expect_msg(&mut c, "MSG with reply")?;
    if m.reply.as_deref() != Some("reply.to.me") {
        return Err(format!("reply {:?}", m.reply));
    }
    Ok(())
}

fn unsub_stops(ctx: &Ctx) -> CheckResult {
    let mut c = ctx.conn("client")?;
    let s = unique("unsub");
    sub(&mut c, &s, 1)?;
    c.send(&ClientOp::Unsub { sid: 1, max: None }).map_err(e)?;
    pubs(&mut c, &s, b"x")?;
    let seen = until_pong(&mut c)?;
    if !seen.is_empty() {
        return Err(format!("delivered after UNSUB: {seen:?}"));
    }
    Ok(())
}

fn unsub_max_msgs(ctx: &Ctx) -> CheckResult {
    let mut c = ctx.conn("client")?;
    let s = unique("automax");
    sub(&mut c, &s, 1)?;
    c.send(&ClientOp::Unsub {
        sid: 1,
        max: Some(2),
    })
    .map_err(e)?;
    for _ in 0..5 {
        pubs(&mut c, &s, b"x")?;
    }
    let seen = until_pong(&mut c)?;
    let msgs = seen.iter().filter(|op| matches!(op, RawOp::Msg(_))).count();
    if msgs != 2 {
        return Err(format!("expected 2 messages, got {msgs}: {seen:?}"));
    }
    Ok(())
}

fn message_order(ctx: &Ctx) -> CheckResult {
    let mut c = ctx.conn("client")?;
    let s = unique("order");
    sub(&mut c, &s, 1)?;
    let mut batch = Vec::new();
    for i in 0..100 {
        let p = i.to_string();
        batch.extend_from_slice(format!("PUB {s} {}\r\n{p}\r\n", p.len()).as_bytes());
    }
    c.send_raw(&batch).map_err(e)?;
    for i in 0..100 {
        let m = expect_msg(&mut c, "MSG")?;
        if m.payload != i.to_string().as_bytes() {
            return Err(format!(
                "message {i} arrived as {:?}",
                String::from_utf8_lossy(&m.payload)
            ));
        }
    }
    Ok(())
}

fn queue_group(ctx: &Ctx) -> CheckResult {
    let s = unique("queue");
    let mut members = Vec::new();
    for label in ["member-1", "member-2"] {
        let mut c = ctx.conn(label)?;
        c.send(&ClientOp::Sub {
            subject: &s,
            queue_group: Some("workers"),
            sid: 1,
        })
        .map_err(e)?;
        until_pong(&mut c)?;
        members.push(c);
    }
    let mut publisher = ctx.conn("publisher")?;
    for i in 0..20 {
        pubs(&mut publisher, &s, i.to_string().as_bytes())?;
    }
    until_pong(&mut publisher)?;
    let mut got = Vec::new();
    for m in members.iter_mut() {
        for op in until_pong(m)? {
            if let RawOp::Msg(msg) = op {
                got.push(String::from_utf8_lossy(&msg.payload).into_owned());
            }
        }
    }
    got.sort_by_key(|p| p.parse::<u32>().unwrap_or(u32::MAX));
    let want: Vec<String> = (0..20).map(|i: u32| i.to_string()).collect();
    if got != want {
        return Err(format!(
            "each message once to one member expected, got {got:?}"
        ));
    }
    Ok(())
}

fn queue_and_plain(ctx: &Ctx) -> CheckResult {
    let s = unique("queueplain");
    let mut member = ctx.conn("queue member")?;
    member
        .send(&ClientOp::Sub {
            subject: &s,
            queue_group: Some("q"),
            sid: 1,
        })
        .map_err(e)?;
    until_pong(&mut member)?;
    let mut plain = ctx.conn("plain subscriber")?;
    sub(&mut plain, &s, 1)?;
    until_pong(&mut plain)?;
    let mut publisher = ctx.conn("publisher")?;
    for _ in 0..5 {
        pubs(&mut publisher, &s, b"x")?;
    }
    until_pong(&mut publisher)?;
    let count = |c: &mut Conn| -> Result<usize, String> {
        Ok(until_pong(c)?
            .iter()
            .filter(|op| matches!(op, RawOp::Msg(_)))
            .count())
    };
    let (q, p) = (count(&mut member)?, count(&mut plain)?);
    if (q, p) != (5, 5) {
        return Err(format!(
            "queue member got {q}, plain subscriber {p}; expected 5 and 5"
        ));
    }
    Ok(())
}

fn wildcard_star(ctx: &Ctx) -> CheckResult {
    let mut c = ctx.conn("client")?;
    let base = unique("star");
    sub(&mut c, &format!("{base}.*"), 1)?;
    for s in [format!("{base}.a"), format!("{base}.a.b"), base.clone()] {
        pubs(&mut c, &s, b"x")?;
    }
    let got: Vec<String> = until_pong(&mut c)?
        .into_iter()
        .filter_map(|op| match op {
            RawOp::Msg(m) => Some(m.subject),
            _ => None,
        })
        .collect();
    if got != vec![format!("{base}.a")] {
        return Err(format!("`*` should match exactly one token; got {got:?}"));
    }
    Ok(())
}

fn wildcard_gt(ctx: &Ctx) -> CheckResult {
    let mut c = ctx.conn("client")?;
    let base = unique("gt");
    sub(&mut c, &format!("{base}.>"), 1)?;
    for s in [format!("{base}.a"), format!("{base}.a.b"), base.clone()] {
        pubs(&mut c, &s, b"x")?;
    }
    let got: Vec<String> = until_pong(&mut c)?
        .into_iter()
        .filter_map(|op| match op {
            RawOp::Msg(m) => Some(m.subject),
            _ => None,
        })
        .collect();
    if got != vec![format!("{base}.a"), format!("{base}.a.b")] {
        return Err(format!(
            "`>` should match one or more tail tokens; got {got:?}"
        ));
    }
    Ok(())
}

fn hpub_hmsg_sizes(ctx: &Ctx) -> CheckResult {
    let mut c = ctx.conn("client")?;
    let s = unique("hpub");
    sub(&mut c, &s, 1)?;
    let header = b"NATS/1.0\r\nA: 1\r\n\r\n";
    let payload = b"hello";
    c.send(&ClientOp::Hpub {
        subject: &s,
        reply: None,
        header,
        payload,
    })
    .map_err(e)?;
    let m = expect_msg(&mut c, "HMSG")?;
    if m.header.as_deref() != Some(&header[..]) || m.payload != payload {
        return Err(format!("HMSG header/payload differ: {m:?}"));
    }
    // The exact control line: HMSG <subject> <sid> <#header> <#total>.
    let want = format!(
        "HMSG {s} 1 {} {}\r\n",
        header.len(),
        header.len() + payload.len()
    );
    let received: Vec<u8> = c
        .transcript()
        .iter()
        .filter(|(d, _)| *d == ansible_runner_nats::raw::Direction::Received)
        .flat_map(|(_, b)| b.clone())
        .collect();
    if !received.windows(want.len()).any(|w| w == want.as_bytes()) {
        return Err(format!("no control line {want:?} on the wire"));
    }
    Ok(())
}

fn multi_value_headers(ctx: &Ctx) -> CheckResult {
    let mut c = ctx.conn("client")?;
    let s = unique("mvh");
    sub(&mut c, &s, 1)?;
    let header = b"NATS/1.0\r\nX-Tag: one\r\nX-Tag: two\r\nOther: 3\r\n\r\n";
    c.send(&ClientOp::Hpub {
        subject: &s,
        reply: None,
        header,
        payload: b"",
    })
    .map_err(e)?;
    let m = expect_msg(&mut c, "HMSG")?;
    let h = m.headers().ok_or("header block does not parse")?;
    let tags: Vec<&str> = h.get_all("X-Tag").collect();
    if tags != ["one", "two"] || h.get("Other") != Some("3") {
        return Err(format!("headers came back as {:?}", m.header));
    }
    Ok(())
}

fn no_responders(ctx: &Ctx) -> CheckResult {
    let mut c = ctx.conn("client")?;
    let inbox = unique("inbox");
    sub(&mut c, &inbox, 9)?;
    c.send(&ClientOp::Pub {
        subject: &unique("nobody"),
        reply: Some(&inbox),
        payload: b"?",
    })
    .map_err(e)?;
    let m = expect_msg(&mut c, "a 503 status on the reply subject")?;
    let status = m.headers().and_then(|h| h.status());
    if m.subject != inbox || status != Some(503) || !m.payload.is_empty() {
        return Err(format!(
            "expected HMSG {inbox} with NATS/1.0 503 and no payload, got {m:?}"
        ));
    }
    Ok(())
}

fn echo_off(ctx: &Ctx) -> CheckResult {
    let s = unique("echo");
    let mut quiet = ctx.conn_with("echo:false client", |ci| ci.echo = false)?;
    sub(&mut quiet, &s, 1)?;
    until_pong(&mut quiet)?;
    let mut other = ctx.conn("other client")?;
    sub(&mut other, &s, 1)?;
    until_pong(&mut other)?;
    pubs(&mut quiet, &s, b"mine")?;
    let own = until_pong(&mut quiet)?;
    if !own.is_empty() {
        return Err(format!(
            "echo:false client received its own message: {own:?}"
        ));
    }
    let m = expect_msg(&mut other, "the message on the other connection")?;
    if m.payload != b"mine" {
        return Err(format!("other client got {m:?}"));
    }
    Ok(())
}

fn echo_on_by_default(ctx: &Ctx) -> CheckResult {
    let mut c = ctx.conn("client")?;
    let s = unique("echo-on");
    sub(&mut c, &s, 1)?;
    pubs(&mut c, &s, b"mine")?;
    expect_msg(&mut c, "own message (echo defaults to true)").map(|_| ())
}

fn max_payload_violation(ctx: &Ctx) -> CheckResult {
    let (mut c, info) = ctx.open("client")?;
    c.send(&ClientOp::Connect(Box::new(ctx.connect_info())))
        .map_err(e)?;
    let over = info.max_payload + 1;
    c.send_raw(format!("PUB {} {over}\r\n", unique("big")).as_bytes())
        .map_err(e)?;
    expect_err(&mut c, "Maximum Payload Violation")?;
    expect_closed(&mut c)
}

fn control_line_limit(ctx: &Ctx) -> CheckResult {
    let mut c = ctx.conn("client")?;
    let long = "a".repeat(2048);
    c.send_raw(format!("SUB {long} 1\r\n").as_bytes())
        .map_err(e)?;
    expect_err(&mut c, "Maximum Control Line Exceeded")?;
    expect_closed(&mut c)
}

fn unknown_op(ctx: &Ctx) -> CheckResult {
    let mut c = ctx.conn("client")?;
    c.send_raw(b"FOO bar\r\n").map_err(e)?;
    expect_err(&mut c, "Unknown Protocol Operation")?;
    expect_closed(&mut c)
}

fn invalid_subscribe_subject(ctx: &Ctx) -> CheckResult {
    let mut c = ctx.conn("client")?;
    c.send_raw(b"SUB foo..bar 1\r\n").map_err(e)?;
    expect_err(&mut c, "Invalid Subject")?;
    // The connection stays usable.
    c.send_raw(b"PING\r\n").map_err(e)?;
    expect(&mut c, "PONG after the error", |op| *op == RawOp::Pong)
}

fn invalid_publish_subject_pedantic(ctx: &Ctx) -> CheckResult {
    let mut c = ctx.conn_with("pedantic client", |ci| ci.pedantic = true)?;
    c.send_raw(b"PUB foo.* 1\r\nx\r\n").map_err(e)?;
    expect_err(&mut c, "Invalid Publish Subject")
}

fn authorization_violation(ctx: &Ctx) -> CheckResult {
    let (mut c, info) = ctx.open("client")?;
    if !info.auth_required {
        return Err("INFO does not say auth_required".into());
    }
    let ci = ConnectInfo {
        user: Some("alice".into()),
        pass: Some("wrong".into()),
        ..ctx.connect_info()
    };
    c.send(&ClientOp::Connect(Box::new(ci))).map_err(e)?;
    c.send_raw(b"PING\r\n").map_err(e)?;
    expect_err(&mut c, "Authorization Violation")?;
    expect_closed(&mut c)
}

fn authorization_accepted(ctx: &Ctx) -> CheckResult {
    ctx.conn_with("client", |ci| {
        ci.user = Some("alice".into());
        ci.pass = Some("s3cret".into());
    })
    .map(|_| ())
}

fn stale_connection(ctx: &Ctx) -> CheckResult {
    let mut c = ctx.conn("client that never answers PING")?;
    // Do not answer the server's PINGs.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut pings = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.next_op(left) {
            Ok(RawOp::Ping) => pings += 1,
            Ok(RawOp::Info(_)) => {}
            Ok(RawOp::Err(t)) if t.eq_ignore_ascii_case("Stale Connection") => break,
            Ok(other) => return Err(format!("unexpected {other:?}")),
            Err(err) => return Err(format!("no 'Stale Connection' after {pings} PINGs: {err}")),
        }
    }
    if pings == 0 {
        return Err("declared stale without a PING first".into());
    }
    expect_closed(&mut c)
}

fn server_ping_answered_keeps_connection(ctx: &Ctx) -> CheckResult {
    let mut c = ctx.conn("client answering PING")?;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut pings = 0;
    while Instant::now() < deadline {
        match c.next_op(deadline.saturating_duration_since(Instant::now())) {
            Ok(RawOp::Ping) => {
                pings += 1;
                c.send_raw(b"PONG\r\n").map_err(e)?;
            }
            Ok(RawOp::Info(_)) => {}
            Ok(other) => return Err(format!("unexpected {other:?}")),
            Err(Error::Timeout { .. }) => break,
            Err(err) => return Err(format!("after {pings} PINGs: {err}")),
        }
    }
    if pings < 3 {
        return Err(format!(
            "expected at least 3 server PINGs in 2 s, got {pings}"
        ));
    }
    c.send_raw(b"PING\r\n").map_err(e)?;
    expect(&mut c, "PONG (still connected)", |op| *op == RawOp::Pong)
}

fn case_insensitive_ops(ctx: &Ctx) -> CheckResult {
    let mut c = ctx.conn("client")?;
    let s = unique("case");
    c.send_raw(format!("sub {s} 1\r\npub {s} 2\r\nhi\r\nPiNg\r\n").as_bytes())
        .map_err(e)?;
    let m = expect_msg(&mut c, "MSG")?;
    if m.payload != b"hi" {
        return Err(format!("got {m:?}"));
    }
    expect(&mut c, "PONG", |op| *op == RawOp::Pong)
}

fn tabs_and_spaces(ctx: &Ctx) -> CheckResult {
    let mut c = ctx.conn("client")?;
    let s = unique("tabs");
    c.send_raw(format!("SUB\t{s}  \t 1\r\nPUB {s}\t\t2\r\nhi\r\n").as_bytes())
        .map_err(e)?;
    let m = expect_msg(&mut c, "MSG")?;
    if m.payload != b"hi" || m.sid != 1 {
        return Err(format!("got {m:?}"));
    }
    Ok(())
}

fn pipelined_ops(ctx: &Ctx) -> CheckResult {
    let mut c = ctx.conn("client")?;
    let s = unique("pipe");
    let mut batch = format!("SUB {s} 1\r\n");
    for i in 0..3 {
        batch.push_str(&format!("PUB {s} 1\r\n{i}\r\n"));
    }
    batch.push_str("PING\r\n");
    c.send_raw(batch.as_bytes()).map_err(e)?;
    for i in 0..3 {
        let m = expect_msg(&mut c, "MSG")?;
        if m.payload != i.to_string().as_bytes() {
            return Err(format!("message {i}: {m:?}"));
        }
    }
    expect(&mut c, "PONG last", |op| *op == RawOp::Pong)
}

fn split_writes(ctx: &Ctx) -> CheckResult {
    let mut c = ctx.conn("client")?;
    let s = unique("split");
    sub(&mut c, &s, 1)?;
    until_pong(&mut c)?;
    let payload = "0123456789".repeat(10);
    let frame = format!("PUB {s} {}\r\n{payload}\r\n", payload.len());
    for chunk in frame.as_bytes().chunks(3) {
        c.send_raw(chunk).map_err(e)?;
    }
    let m = expect_msg(&mut c, "MSG")?;
    if m.payload != payload.as_bytes() {
        return Err(format!(
            "payload came back as {:?}",
            String::from_utf8_lossy(&m.payload)
        ));
    }
    Ok(())
}

fn permission_publish_keeps_connection(ctx: &Ctx) -> CheckResult {
    let mut c = ctx.conn_with("limited user", |ci| {
        ci.user = Some("limited".into());
        ci.pass = Some("pw".into());
    })?;
    c.send_raw(b"PUB denied.subject 1\r\nx\r\n").map_err(e)?;
    expect_err(&mut c, "Permissions Violation for Publish to")?;
    c.send_raw(b"PING\r\n").map_err(e)?;
    expect(&mut c, "PONG: the connection stays open", |op| {
        *op == RawOp::Pong
    })
}

fn permission_subscribe_keeps_connection(ctx: &Ctx) -> CheckResult {
    let mut c = ctx.conn_with("limited user", |ci| {
        ci.user = Some("limited".into());
        ci.pass = Some("pw".into());
    })?;
    c.send_raw(b"SUB denied.subject 1\r\n").map_err(e)?;
    expect_err(&mut c, "Permissions Violation for Subscription to")?;
    // Allowed subjects still work on the same connection.
    sub(&mut c, "allowed.x", 2)?;
    pubs(&mut c, "allowed.x", b"ok")?;
    let m = expect_msg(&mut c, "MSG on an allowed subject")?;
    if m.sid != 2 {
        return Err(format!("got {m:?}"));
    }
    Ok(())
}

fn connect_must_come_first_with_auth(ctx: &Ctx) -> CheckResult {
    let (mut c, _) = ctx.open("client")?;
    c.send_raw(b"PING\r\n").map_err(e)?;
    // Without CONNECT an auth-requiring server refuses anything else.
    match next(&mut c)? {
        RawOp::Err(t) if t.to_ascii_lowercase().contains("authorization violation") => {
            expect_closed(&mut c)
        }
        other => Err(format!(
            "expected -ERR 'Authorization Violation', got {other:?}"
        )),
    }
}

fn auth_server(c: ServerConfig) -> ServerConfig {
    c.user_password("alice", "s3cret")
}

fn permissions_server(c: ServerConfig) -> ServerConfig {
    c.extra(
        r#"authorization {
  users = [
    { user: "limited", password: "pw", permissions: { publish: { allow: ["allowed.>"] }, subscribe: { allow: ["allowed.>", "_INBOX.>"] } } }
  ]
}"#,
    )
}

fn stale_server(c: ServerConfig) -> ServerConfig {
    c.ping_interval(Duration::from_millis(300)).max_pings_out(2)
}

fn control_line_server(c: ServerConfig) -> ServerConfig {
    c.max_control_line(1024)
}

fn checks() -> Vec<Check> {
    use Needs::*;
    let auth = Config("user/password authorization", auth_server);
    let perms = Config(
        "a user with publish/subscribe permissions",
        permissions_server,
    );
    let pings = Config("ping_interval 300ms, ping_max 2", stale_server);
    let cl = Config("max_control_line 1024", control_line_server);
    vec![
        Check { name: "INFO on connect", rule: "INFO: \"As soon as the server accepts a connection from the client, it will send information about itself\" (server_id, version, max_payload)", needs: Any, run: info_on_connect },
        Check { name: "INFO proto and headers", rule: "INFO: proto \"An integer indicating the protocol version of the server\"; headers \"whether the server supports headers\"", needs: Any, run: info_protocol_and_headers },
        Check { name: "verbose CONNECT gets +OK", rule: "CONNECT verbose: \"Turns on +OK protocol acknowledgements\"", needs: Any, run: verbose_connect_ok },
        Check { name: "verbose: +OK per operation", rule: "+OK: \"the server acknowledges each well-formed protocol message from the client with a +OK message\"", needs: Any, run: verbose_ok_per_op },
        Check { name: "PING/PONG", rule: "PING/PONG: \"implement a simple keep-alive mechanism between client and server\"", needs: Any, run: ping_pong },
        Check { name: "PUB/SUB delivery", rule: "MSG: \"used to deliver an application message to the client\"", needs: Any, run: pub_sub },
        Check { name: "empty payload", rule: "PUB: \"#bytes: The payload size in bytes\" (0 allowed)", needs: Any, run: empty_payload },
        Check { name: "reply subject", rule: "PUB reply-to: \"The reply subject that subscribers can use to send a response back\"", needs: Any, run: reply_subject },
        Check { name: "UNSUB stops delivery", rule: "UNSUB: \"unsubscribes the connection from the specified subject\"", needs: Any, run: unsub_stops },
        Check { name: "UNSUB max_msgs", rule: "UNSUB max_msgs: \"A number of messages to wait for before automatically unsubscribing\"", needs: Any, run: unsub_max_msgs },
        Check { name: "in-order delivery", rule: "NATS guarantees message order per publisher on one connection", needs: Any, run: message_order },
        Check { name: "queue group", rule: "SUB queue group: \"If specified, the subscriber will join this queue group\" (each message to one member)", needs: Any, run: queue_group },
        Check { name: "queue group and plain subscriber", rule: "queue groups do not affect plain subscribers of the same subject", needs: Any, run: queue_and_plain },
        Check { name: "wildcard *", rule: "\"The asterisk character (*) matches a single token at any level of the subject\"", needs: Any, run: wildcard_star },
        Check { name: "wildcard >", rule: "\"The greater than symbol (>), also known as the full wildcard, matches one or more tokens at the tail of a subject\"", needs: Any, run: wildcard_gt },
        Check { name: "HPUB/HMSG byte counts", rule: "HMSG: \"#header bytes: The size of the headers section in bytes including the ␍␊␍␊ delimiter\"; \"#total bytes: The total size of headers and payload\"", needs: Any, run: hpub_hmsg_sizes },
        Check { name: "multi-value headers", rule: "headers: \"NATS/1.0\" block with HTTP-like fields; a field may repeat", needs: Any, run: multi_value_headers },
        Check { name: "no responders: 503", rule: "CONNECT no_responders: \"Enable quick replies for cases where a request is sent to a topic with no responders\"", needs: Any, run: no_responders },
        Check { name: "echo:false", rule: "CONNECT echo: \"If set to false, the server ... will not send originating messages from this connection to its own subscriptions\"", needs: Any, run: echo_off },
        Check { name: "echo defaults to true", rule: "CONNECT echo: optional, default true", needs: Any, run: echo_on_by_default },
        Check { name: "max_payload violation closes", rule: "-ERR 'Maximum Payload Violation': \"Client attempted to publish a message with a payload size that exceeds the max_payload size\" (closes the connection)", needs: Any, run: max_payload_violation },
        Check { name: "max control line", rule: "-ERR 'Maximum Control Line Exceeded': \"Message destination subject and reply subject length exceeded the maximum control line value\"", needs: cl, run: control_line_limit },
        Check { name: "unknown operation", rule: "-ERR 'Unknown Protocol Operation' (closes the connection)", needs: Any, run: unknown_op },
        Check { name: "invalid subscribe subject", rule: "-ERR 'Invalid Subject': \"Client sent a malformed subject (e.g. sub foo. 90)\"; the connection stays open", needs: Any, run: invalid_subscribe_subject },
        Check { name: "invalid publish subject (pedantic)", rule: "CONNECT pedantic: \"Turns on additional strict format checking, e.g. for properly formed subjects\"", needs: Any, run: invalid_publish_subject_pedantic },
        Check { name: "authorization violation", rule: "-ERR 'Authorization Violation': \"Client failed to authenticate to the server with credentials specified in the CONNECT message\"", needs: auth, run: authorization_violation },
        Check { name: "authorization accepted", rule: "CONNECT user/pass: \"Connection username/password (if auth_required is set)\"", needs: auth, run: authorization_accepted },
        Check { name: "CONNECT first when auth is required", rule: "an authorization-requiring server accepts nothing before a valid CONNECT", needs: auth, run: connect_must_come_first_with_auth },
        Check { name: "stale connection", rule: "-ERR 'Stale Connection': \"The server hasn't received a message from the client, including a PONG in too long\"", needs: pings, run: stale_connection },
        Check { name: "answered server PINGs keep the connection", rule: "PING: \"If the client ... responds with PONG, the connection stays open\" (keep-alive)", needs: pings, run: server_ping_answered_keeps_connection },
        Check { name: "case-insensitive op names", rule: "\"NATS protocol operation names are case insensitive, thus SUB foo 1␍␊ and sub foo 1␍␊ are equivalent\"", needs: Any, run: case_insensitive_ops },
        Check { name: "tab and space separators", rule: "\"The fields of NATS protocol messages are delimited by whitespace characters ' ' (space) or \\t (tab). Multiple whitespace characters will be treated as a single field delimiter\"", needs: Any, run: tabs_and_spaces },
        Check { name: "pipelined operations in one write", rule: "a protocol stream: operations are parsed one after another from the byte stream, answered in order", needs: Any, run: pipelined_ops },
        Check { name: "payload split across writes", rule: "\"NATS uses ␍␊ to terminate protocol messages ... also used to mark the end of the message payload\" (framing, not packets)", needs: Any, run: split_writes },
        Check { name: "publish permission violation keeps the connection", rule: "-ERR 'Permissions Violation for Publish to <subject>': the connection stays open", needs: perms, run: permission_publish_keeps_connection },
        Check { name: "subscribe permission violation keeps the connection", rule: "-ERR 'Permissions Violation for Subscription to <subject>': the connection stays open", needs: perms, run: permission_subscribe_keeps_connection },
    ]
}

enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
}

fn run_check(check: &Check, target: &Target) -> Outcome {
    let ctx = Ctx {
        target: target.clone(),
        transcripts: Rc::new(RefCell::new(Vec::new())),
    };
    let result = (check.run)(&ctx);
    match result {
        Ok(()) => Outcome::Pass,
        Err(why) => {
            let exchanged = ctx.transcripts.borrow().join("\n");
            Outcome::Fail(format!("{why}\n{exchanged}"))
        }
    }
}

fn table(rows: &[(&Check, Outcome)]) -> String {
    let mut out = String::from("\n| check | rule | result |\n| --- | --- | --- |\n");
    for (c, o) in rows {
        let result = match o {
            Outcome::Pass => "pass".to_string(),
            Outcome::Fail(_) => "**FAIL**".to_string(),
            Outcome::Skip(why) => format!("skip: {why}"),
        };
        out.push_str(&format!(
            "| {} | {} | {result} |\n",
            c.name,
            c.rule.replace('|', "\\|")
        ));
    }
    for (c, o) in rows {
        if let Outcome::Fail(detail) = o {
            out.push_str(&format!("\n### FAIL: {}\n```\n{detail}\n```\n", c.name));
        }
    }
    out
}

#[test]
fn conformance_suite() {
    let all = checks();
    assert!(all.len() >= 30, "the suite has {} checks", all.len());
    let external = Target::from_env();
    let default_server = match external {
        Some(_) => None,
        None => Some(ServerConfig::new().start()),
    };
    let mut rows = Vec::new();
    for check in &all {
        let outcome = match (&external, check.needs) {
            (Some(t), Needs::Any) => run_check(check, t),
            (Some(_), Needs::Config(what, _)) => {
                Outcome::Skip(format!("needs server configuration ({what})"))
            }
            (None, Needs::Any) => {
                let server: &NatsServer = default_server.as_ref().expect("started");
                run_check(
                    check,
                    &Target {
                        url: server.url(),
                        ..Target::default()
                    },
                )
            }
            (None, Needs::Config(_, configure)) => {
                let server = configure(ServerConfig::new()).start();
                run_check(
                    check,
                    &Target {
                        url: server.url(),
                        ..Target::default()
                    },
                )
            }
        };
        rows.push((check, outcome));
    }
    let report = table(&rows);
    println!("{report}");
    let failed: Vec<&str> = rows
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Fail(_)))
        .map(|(c, _)| c.name)
        .collect();
    assert!(failed.is_empty(), "failed checks: {failed:?}\n{report}");
}

//! Entry points for the fuzz targets in `fuzz/` and for the test that replays their corpus.
//! Each takes arbitrary bytes, must never panic on them, and asserts the invariants that
//! hold for every input. Each function has the name of its target. Not a stable API.
//!
//! The protocol targets (`server_ops`, `client_ops`, `round_trip`) take their control-line
//! limit from their first byte `b`: `16 + 16 * b` bytes, so that small inputs reach
//! `ControlLineTooLong`; `0xff` gives the default limit, 4096.

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::Value;

use crate::error::{Error, Invalid};
use crate::headers::HeaderMap;
use crate::proto::{parse_client_op, parse_server_op, ClientOp, ServerOp, Status};
use crate::url::ServerAddr;
use crate::ProtoError;

// The corpus was written with the default limit: its files start with 0xff.
const _: () = assert!(16 + 16 * 255 == crate::proto::DEFAULT_MAX_CONTROL_LINE);

/// The control-line limit chosen by the first byte, and the rest of the input.
fn split_limit(data: &[u8]) -> (usize, &[u8]) {
    match data.split_first() {
        Some((&b, rest)) => (16 + 16 * usize::from(b), rest),
        None => (crate::proto::DEFAULT_MAX_CONTROL_LINE, data),
    }
}

/// How a parser's outcome ended: the partial tail's length, or the error.
type Ending = Result<usize, ProtoError>;

/// Everything the parser says about a buffer: the ops (re-encoded, so comparable), and how
/// it ended (partial tail, or the error).
fn server_transcript(buf: &[u8], limit: usize) -> (Vec<Vec<u8>>, Ending) {
    let mut ops = Vec::new();
    let mut rest = buf;
    loop {
        match parse_server_op(rest, limit) {
            Ok(Status::Complete((op, used))) => {
                assert!(
                    used > 0 && used <= rest.len(),
                    "consumed {used} of {}",
                    rest.len()
                );
                let mut enc = Vec::new();
                op.encode(&mut enc);
                ops.push(enc);
                rest = &rest[used..];
            }
            Ok(Status::Partial) => return (ops, Ok(rest.len())),
            Err(e) => return (ops, Err(e)),
        }
    }
}

/// The same buffer fed in chunks as a reader would: append, parse what is complete,
/// keep the rest. Chunk sizes come from `sizes`.
fn server_transcript_chunked(buf: &[u8], sizes: &[u8], limit: usize) -> (Vec<Vec<u8>>, Ending) {
    let mut ops = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut offset = 0;
    let mut i = 0;
    while offset < buf.len() {
        let size = usize::from(sizes.get(i % sizes.len().max(1)).copied().unwrap_or(7)).max(1);
        i += 1;
        let end = (offset + size).min(buf.len());
        pending.extend_from_slice(&buf[offset..end]);
        offset = end;
        loop {
            match parse_server_op(&pending, limit) {
                Ok(Status::Complete((op, used))) => {
                    let mut enc = Vec::new();
                    op.encode(&mut enc);
                    ops.push(enc);
                    pending.drain(..used);
                }
                Ok(Status::Partial) => break,
                Err(e) => return (ops, Err(e)),
            }
        }
    }
    (ops, Ok(pending.len()))
}

/// What a parser says about the start of a buffer, without the op: its length if complete.
type Outcome = Result<Status<usize>, ProtoError>;

fn outcome<T>(parsed: Result<Status<(T, usize)>, ProtoError>) -> Outcome {
    parsed.map(|s| match s {
        Status::Complete((_, used)) => Status::Complete(used),
        Status::Partial => Status::Partial,
    })
}

/// The length of the frame at the start of a buffer when the parser found a whole one: a
/// complete op, or a whole message it refuses for its subject.
fn frame_len(parsed: &Outcome) -> Option<usize> {
    match parsed {
        Ok(Status::Complete(used)) => Some(*used),
        Err(ProtoError::SubjectNotUtf8 { frame, .. }) => Some(*frame),
        _ => None,
    }
}

/// Every strict prefix of the first whole frame of `buf` is `Partial`: a reader that gets
/// the frame in pieces never sees an error (or another op) before it is whole.
fn prefixes_are_partial(buf: &[u8], parse: impl Fn(&[u8]) -> Outcome) {
    let Some(len) = frame_len(&parse(buf)) else {
        return;
    };
    for k in 0..len {
        let got = parse(&buf[..k]);
        assert!(
            matches!(got, Ok(Status::Partial)),
            "the first {k} bytes of a {len}-byte frame parse as {got:?}"
        );
    }
}

/// Server-op parser: never panics; chunking never changes the ops nor how the input ends;
/// every strict prefix of a whole frame is `Partial`. Input: the limit byte, four chunk
/// sizes, then the bytes from the server.
pub fn server_ops(data: &[u8]) {
    let (limit, data) = split_limit(data);
    let (sizes, buf) = data.split_at(data.len().min(4));
    prefixes_are_partial(buf, |b| outcome(parse_server_op(b, limit)));
    let whole = server_transcript(buf, limit);
    let chunked = server_transcript_chunked(buf, sizes, limit);
    // The chunked reader parses the same tail as the whole one once it has all of it, so
    // any difference means a prefix gave an error or an op the whole buffer does not.
    assert_eq!(whole, chunked, "whole (left) and chunked (right) differ");
}

/// Client-op parser: never panics; every strict prefix of a whole frame is `Partial`;
/// every op it returns re-encodes to bytes that parse to the same op. Input: the limit
/// byte, then the bytes from a client.
pub fn client_ops(data: &[u8]) {
    let (limit, data) = split_limit(data);
    client_ops_with(data, limit);
}

fn client_ops_with(data: &[u8], limit: usize) {
    prefixes_are_partial(data, |b| outcome(parse_client_op(b, limit)));
    let mut rest = data;
    while let Ok(Status::Complete((op, used))) = parse_client_op(rest, limit) {
        assert!(used > 0 && used <= rest.len());
        round_trip_client(&op);
        rest = &rest[used..];
    }
}

fn round_trip_client(op: &ClientOp<'_>) {
    let mut enc = Vec::new();
    op.encode(&mut enc);
    match parse_client_op(&enc, usize::MAX) {
        Ok(Status::Complete((again, used))) => {
            assert_eq!(&again, op);
            assert_eq!(used, enc.len());
        }
        other => panic!("re-encoded {op:?} parsed as {other:?}"),
    }
}

fn round_trip_server(op: &ServerOp<'_>) {
    let mut enc = Vec::new();
    op.encode(&mut enc);
    match parse_server_op(&enc, usize::MAX) {
        Ok(Status::Complete((again, used))) => {
            assert_eq!(&again, op);
            assert_eq!(used, enc.len());
        }
        other => panic!("re-encoded {op:?} parsed as {other:?}"),
    }
}

/// Parse → encode → parse gives the same op, for server and client ops. Input: the limit
/// byte, then the bytes, read both as server and as client ops.
pub fn round_trip(data: &[u8]) {
    let (limit, data) = split_limit(data);
    let mut rest = data;
    while let Ok(Status::Complete((op, used))) = parse_server_op(rest, limit) {
        round_trip_server(&op);
        rest = &rest[used..];
    }
    client_ops_with(data, limit);
}

/// Header blocks: never panics; a parsed block re-encodes to one that parses equal, with
/// `encoded_len` exact.
pub fn header_block(data: &[u8]) {
    if let Ok(map) = HeaderMap::parse(data) {
        let mut enc = Vec::new();
        map.encode(&mut enc);
        assert_eq!(enc.len(), map.encoded_len());
        assert_eq!(HeaderMap::parse(&enc).as_ref(), Ok(&map));
    }
}

/// A creds file as `nsc` writes one, with `newline` ending each line.
fn render_creds(jwt: &str, seed: &str, newline: &str) -> String {
    [
        "-----BEGIN NATS USER JWT-----",
        jwt,
        "------END NATS USER JWT------",
        "",
        "************************* IMPORTANT *************************",
        "NKEY Seed printed below can be used to sign and prove identity.",
        "",
        "-----BEGIN USER NKEY SEED-----",
        seed,
        "------END USER NKEY SEED------",
        "",
    ]
    .join(newline)
}

/// Creds files: never panics; an accepted file has a three-part JWT, renders to a file that
/// parses the same (with LF or CRLF), and never shows its JWT or seed in `Debug`; a seed
/// that makes a user key pair signs a nonce verifiably, and one that does not is refused
/// without being quoted.
pub fn creds(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let Ok(c) = crate::auth::parse_creds(&text) else {
        return;
    };
    assert_eq!(c.jwt().split('.').count(), 3);
    for newline in ["\n", "\r\n"] {
        let again = crate::auth::parse_creds(&render_creds(c.jwt(), c.seed(), newline));
        assert!(
            again.as_ref() == Ok(&c),
            "rendered with {newline:?}: {again:?}"
        );
    }
    // Debug shows nothing of the file: it is the same for any.
    let reference = crate::auth::parse_creds(&render_creds("a.b.c", "SU", "\n"));
    assert_eq!(
        Ok(format!("{c:?}")),
        reference.map(|r| format!("{r:?}")),
        "Debug depends on the file"
    );
    let seed = c.seed().trim();
    match crate::auth::user_key_pair(c.seed(), "fuzz.creds") {
        Ok(kp) => {
            assert!(kp.public_key().starts_with('U'), "{}", kp.public_key());
            let nonce = "bm9uY2U-fuzz";
            let sig = crate::auth::sign_nonce(&kp, nonce).expect("a user key signs");
            let raw = URL_SAFE_NO_PAD
                .decode(&sig)
                .expect("base64url without padding");
            assert!(kp.verify(nonce.as_bytes(), &raw).is_ok());
        }
        // A valid seed of another kind: named by its kind, never quoted.
        Err(e) if nkeys::decode_seed(seed).is_ok() => {
            let shown = format!("{e} {e:?}");
            assert!(!shown.contains(seed), "{shown}");
        }
        // Not a seed: the same refusal for any text.
        Err(e) => {
            let canary = crate::auth::user_key_pair("SUnot-a-seed", "fuzz.creds");
            assert_eq!(
                Some(format!("{e} {e:?}")),
                canary.err().map(|e| format!("{e} {e:?}")),
                "the refusal depends on the seed"
            );
        }
    }
}

/// Server URLs and lists: never panic; an accepted address prints to one that parses to
/// the same place, and shows only scheme, host and port (never a password or token).
pub fn server_url(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(list) = crate::url::parse_server_list(&text) {
        for addr in list {
            let shown = addr.to_string();
            let again: ServerAddr = shown
                .parse()
                .unwrap_or_else(|e| panic!("{shown:?} (from {text:?}) does not parse back: {e}"));
            assert_eq!(
                (again.scheme, &again.host, again.port),
                (addr.scheme, &addr.host, addr.port)
            );
            // Nothing but scheme, host and port: no room for a password or token.
            let scheme = if addr.is_tls() { "tls" } else { "nats" };
            assert_eq!(shown, format!("{scheme}://{}", addr.host_port()));
        }
    }
}

/// Where the emitter's file-valued options point during fuzzing: small files committed
/// under `fuzz/fixtures`, so that a run never reads the machine's own files (a path such as
/// `/dev/zero` or `/dev/stdin` would exhaust memory or block) and replays the same way
/// everywhere.
const FIXTURE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/fixtures");

/// The fixtures a file-valued option can name: creds files, seeds, PEM files, files that
/// are none of those, a missing file and the directory itself.
const FIXTURES: &[&str] = &[
    "user.creds",
    "account.creds",
    "user.nk",
    "seed_block.nk",
    "ca.pem",
    "client.pem",
    "client.key",
    "not_a_seed.txt",
    "not_utf8.bin",
    "empty",
    "missing",
    ".",
];

/// The options whose value names a file: the variable and the `nats_options` key.
const FILE_OPTIONS: &[(&str, &str)] = &[
    ("RUNNER_NATS_USER_CREDENTIALS", "user_credentials"),
    ("RUNNER_NATS_NKEYS_SEED", "nkeys_seed"),
    ("RUNNER_NATS_TLS_CA_FILE", "tls_ca_file"),
    ("RUNNER_NATS_TLS_CERT_FILE", "tls_cert_file"),
    ("RUNNER_NATS_TLS_KEY_FILE", "tls_key_file"),
];

/// `value` of the file-valued option `key`, made to name a fixture: the fixture of that
/// name, else one chosen by the value's bytes. A seed given inline (what `load_seed`
/// takes for one) is kept.
fn fixture_for(key: &str, value: &str) -> String {
    let trimmed = value.trim();
    if key == "nkeys_seed" && trimmed.starts_with('S') && nkeys::decode_seed(trimmed).is_ok() {
        return value.to_owned();
    }
    let name = FIXTURES
        .iter()
        .find(|f| **f == trimmed)
        .copied()
        .unwrap_or_else(|| {
            let sum = value
                .bytes()
                .fold(0usize, |a, b| a.wrapping_add(usize::from(b)));
            FIXTURES[sum % FIXTURES.len()]
        });
    format!("{FIXTURE_DIR}/{name}")
}

/// The seeds and JWTs of the fixtures, which no issue and no `Debug` may show either.
fn fixture_secrets() -> Vec<String> {
    static SECRETS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    SECRETS.get_or_init(read_fixture_secrets).clone()
}

fn read_fixture_secrets() -> Vec<String> {
    let read = |name: &str| std::fs::read_to_string(format!("{FIXTURE_DIR}/{name}")).ok();
    let mut secrets = Vec::new();
    for name in ["user.creds", "account.creds"] {
        if let Some(c) = read(name).and_then(|t| crate::auth::parse_creds(&t).ok()) {
            secrets.push(c.jwt().to_owned());
            secrets.push(c.seed().to_owned());
        }
    }
    secrets.extend(read("user.nk").map(|t| t.trim().to_owned()));
    secrets
}

/// The options that hold a secret themselves: the variable and the `nats_options` key.
const SECRET_OPTIONS: &[(&str, &str)] = &[
    ("RUNNER_NATS_PASSWORD", "password"),
    ("RUNNER_NATS_TOKEN", "token"),
    ("RUNNER_NATS_NKEYS_SEED", "nkeys_seed"),
];

/// The emitter's configuration from `KEY=VALUE` lines, optionally followed by a line
/// `---` and a JSON settings object: never panics; issues are never empty text; an
/// enabled configuration has a valid subject id; no password, token or seed shows in the
/// issues or the `Debug` of the outcome. File-valued options are pointed at the fixtures
/// of `fuzz/fixtures` (see `fixture_for`).
pub fn emitter_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (vars, settings_text) = match text.split_once("\n---\n") {
        Some((v, s)) => (v, Some(s)),
        None => (text.as_ref(), None),
    };
    let mut settings = settings_text.and_then(|s| serde_json::from_str::<Value>(s).ok());
    let mut env: HashMap<String, String> = vars
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let mut options = settings
        .as_mut()
        .and_then(|s| s.get_mut("nats_options"))
        .and_then(Value::as_object_mut);
    for (var, key) in FILE_OPTIONS {
        if let Some(v) = env.get_mut(*var) {
            *v = fixture_for(key, v);
        }
        if let Some(Value::String(v)) = options.as_mut().and_then(|o| o.get_mut(*key)) {
            *v = fixture_for(key, v);
        }
    }
    let loaded = crate::emitter::config::load(&env, settings.as_ref(), "fuzz.host");
    for issue in &loaded.issues {
        assert!(!issue.source.is_empty() && !issue.problem.is_empty());
    }
    if let Some(config) = &loaded.config {
        assert!(crate::subject::validate_token(&config.subject_id).is_ok());
    }
    secrets_stay_hidden(&env, settings.as_ref(), &format!("{loaded:?}"));
}

/// No password, token or seed of the input, nor any seed or JWT of the fixtures, shows in
/// `shown` (the `Debug` of what `load` made of the input, issues included).
///
/// A password or token is free text, and may equal text the outcome shows anyway (a field
/// name, a default): it leaks when it shows more often than when the same input, with each
/// of them replaced by another text of the same length, is loaded. A seed is checked as it
/// is, unless the input holds it elsewhere.
fn secrets_stay_hidden(env: &HashMap<String, String>, settings: Option<&Value>, shown: &str) {
    let options = |s: Option<&Value>| {
        s.and_then(|s| s.get("nats_options"))
            .and_then(Value::as_object)
            .cloned()
    };
    let given = |var: &str, key: &str| -> Vec<String> {
        let from_settings = options(settings).and_then(|o| match o.get(key) {
            Some(Value::String(v)) => Some(v.clone()),
            _ => None,
        });
        env.get(var)
            .cloned()
            .into_iter()
            .chain(from_settings)
            .collect()
    };
    let mut free: Vec<String> = SECRET_OPTIONS
        .iter()
        .filter(|(_, key)| *key != "nkeys_seed")
        .flat_map(|(var, key)| given(var, key))
        .filter(|v| v.len() >= 8)
        .collect();
    free.sort();
    free.dedup();
    // Each seed, with how many times the input holds it as a seed option.
    let mut seeds: Vec<(String, usize)> = fixture_secrets().into_iter().map(|s| (s, 0)).collect();
    // A seed option rewritten to a fixture's path is no secret; the seed in the file is.
    seeds.extend(
        given("RUNNER_NATS_NKEYS_SEED", "nkeys_seed")
            .into_iter()
            .filter(|v| !v.starts_with(FIXTURE_DIR) && v.trim().len() >= 8)
            .map(|v| (v.trim().to_owned(), 1)),
    );
    let input = format!("{env:?} {settings:?}");
    for (seed, as_option) in &seeds {
        let elsewhere = input.matches(seed.as_str()).count() > *as_option;
        assert!(
            elsewhere || !shown.contains(seed.as_str()),
            "a seed shows in {shown}"
        );
    }
    if free.is_empty() {
        return;
    }
    // The same input with each free-text secret replaced by a text of the same length.
    let canary = ['#', '~', '^', '`']
        .into_iter()
        .find(|c| !free.iter().any(|s| s.contains(*c)))
        .unwrap_or('\u{1}');
    let replace = |v: &str| -> Option<String> {
        free.iter()
            .any(|s| s == v)
            .then(|| canary.to_string().repeat(v.chars().count()))
    };
    let mut env2 = env.clone();
    let mut settings2 = settings.cloned();
    for (var, key) in SECRET_OPTIONS {
        if let Some(v) = env2.get_mut(*var) {
            if let Some(r) = replace(v) {
                *v = r;
            }
        }
        let o = settings2
            .as_mut()
            .and_then(|s| s.get_mut("nats_options"))
            .and_then(Value::as_object_mut);
        if let Some(Value::String(v)) = o.and_then(|o| o.get_mut(*key)) {
            if let Some(r) = replace(v) {
                *v = r;
            }
        }
    }
    let other = format!(
        "{:?}",
        crate::emitter::config::load(&env2, settings2.as_ref(), "fuzz.host")
    );
    for secret in &free {
        let (with, without) = (
            shown.matches(secret.as_str()).count(),
            other.matches(secret.as_str()).count(),
        );
        assert!(with <= without, "{secret:?} shows in {shown}");
    }
}

/// Why the reference rules refuse `token` in any subject, if they do.
fn reference_token_chars(token: &str) -> Option<&'static str> {
    if token.is_empty() {
        return Some("empty token");
    }
    for c in token.chars() {
        if c.is_whitespace() {
            return Some("contains whitespace");
        }
        if c.is_control() {
            return Some("contains a control character");
        }
    }
    None
}

/// The subject rules of `crate::subject`, one token and one character at a time.
fn reference_subject(subject: &str, wildcards: bool) -> Option<&'static str> {
    if subject.is_empty() {
        return Some("empty subject");
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    for (i, token) in tokens.iter().enumerate() {
        if let Some(reason) = reference_token_chars(token) {
            return Some(reason);
        }
        let last = i + 1 == tokens.len();
        let has_wildcard = token.bytes().any(|b| b == b'*' || b == b'>');
        if wildcards {
            match *token {
                "*" => {}
                ">" if last => {}
                ">" => return Some("`>` must be the last token"),
                _ if has_wildcard => return Some("a wildcard must be a whole token"),
                _ => {}
            }
        } else if has_wildcard {
            return Some("wildcard not allowed in a publish subject");
        }
    }
    None
}

/// The refusal's reason, after checking that it names the refused value.
fn invalid_reason(r: Result<(), Error>, value: &str) -> Option<&'static str> {
    match r {
        Ok(()) => None,
        Err(Error::InvalidSubject(Invalid { value: v, reason })) => {
            assert_eq!(v, value);
            Some(reason)
        }
        Err(other) => panic!("{value:?}: {other:?}"),
    }
}

/// Subject validation: `validate_publish` (with its word-at-a-time fast path),
/// `validate_subscribe`, `validate_token` and `validate_queue_group` agree with the
/// reference rules above, reason included; `words::short_word` equals a byte loop.
pub fn subject(data: &[u8]) {
    let s = String::from_utf8_lossy(data);
    let s = s.as_ref();
    assert_eq!(
        invalid_reason(crate::subject::validate_publish(s), s),
        reference_subject(s, false),
        "publish {s:?}"
    );
    assert_eq!(
        invalid_reason(crate::subject::validate_subscribe(s), s),
        reference_subject(s, true),
        "subscribe {s:?}"
    );
    let token = reference_token_chars(s).or_else(|| {
        if s.contains('.') {
            Some("contains `.` (would add a subject token)")
        } else if s.contains(['*', '>']) {
            Some("contains a wildcard character")
        } else {
            None
        }
    });
    assert_eq!(
        invalid_reason(crate::subject::validate_token(s), s),
        token,
        "token {s:?}"
    );
    let queue = match reference_token_chars(s) {
        Some("empty token") => Some("empty queue group"),
        other => other,
    };
    assert_eq!(
        invalid_reason(crate::subject::validate_queue_group(s), s),
        queue,
        "queue group {s:?}"
    );
    let pad = data.first().copied().unwrap_or(b'a');
    for n in 0..8.min(data.len() + 1) {
        let part = &data[data.len() - n..];
        let mut want = [pad; 8];
        want[..n].copy_from_slice(part);
        assert_eq!(
            crate::words::short_word(part, pad),
            u64::from_le_bytes(want),
            "{part:?} padded with {pad}"
        );
    }
}

/// JetStream publish acks: never panics; an accepted ack is a JSON object without an
/// error, holds what the ack says, has a sequence number unless it is a duplicate, and
/// renders to JSON that parses to the same ack; a refusal carries the API error's code and
/// description when there is one (and renders to JSON giving the same refusal), else says
/// the reply was unexpected.
pub fn jetstream_ack(data: &[u8]) {
    let json: Option<Value> = serde_json::from_slice(data).ok();
    let api_error = json
        .as_ref()
        .filter(|v| v.is_object())
        .and_then(|v| v.get("error"))
        .filter(|e| !e.is_null());
    match crate::jetstream::parse_pub_ack(data) {
        Ok(ack) => {
            let v = json.as_ref().expect("an accepted ack is JSON");
            assert!(v.is_object() && api_error.is_none(), "{v}");
            assert_eq!(v.get("stream").and_then(Value::as_str), Some(&*ack.stream));
            assert_eq!(v.get("seq").and_then(Value::as_u64), Some(ack.seq));
            assert!(ack.seq > 0 || ack.duplicate, "{ack:?}");
            assert_eq!(
                v.get("domain").and_then(Value::as_str),
                ack.domain.as_deref()
            );
            let rendered = serde_json::json!({
                "stream": ack.stream,
                "seq": ack.seq,
                "duplicate": ack.duplicate,
                "domain": ack.domain,
            });
            let again = crate::jetstream::parse_pub_ack(rendered.to_string().as_bytes());
            assert_eq!(again.ok(), Some(ack));
        }
        Err(Error::JetStream {
            code,
            err_code,
            description,
        }) => {
            match api_error {
                Some(e) => {
                    let want = e
                        .get("description")
                        .and_then(Value::as_str)
                        .unwrap_or("no description");
                    assert_eq!(description, want);
                    let code_given = e.get("code").and_then(Value::as_u64);
                    assert_eq!(
                        u64::from(code),
                        code_given
                            .filter(|&c| c <= u64::from(u16::MAX))
                            .unwrap_or(0)
                    );
                    assert_eq!(
                        err_code,
                        e.get("err_code").and_then(Value::as_u64).unwrap_or(0)
                    );
                }
                None => {
                    assert_eq!((code, err_code), (0, 0));
                    assert!(
                        description.starts_with("unexpected reply: "),
                        "{description}"
                    );
                }
            }
            let rendered = serde_json::json!({
                "error": { "code": code, "err_code": err_code, "description": description },
            });
            match crate::jetstream::parse_pub_ack(rendered.to_string().as_bytes()) {
                Err(Error::JetStream {
                    code: c,
                    err_code: ec,
                    description: d,
                }) => assert_eq!((c, ec, d), (code, err_code, description)),
                other => panic!("{rendered} parsed as {other:?}"),
            }
        }
        Err(other) => panic!("{other:?}"),
    }
}

/// True when `haystack` holds `needle`, as bytes.
fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

/// The 4-byte pieces of `secret` that `shown` holds and none of `allowed` does: what of a
/// secret a text shows beyond what it may show anyway.
fn leaked(secret: &[u8], shown: &[u8], allowed: &[&[u8]]) -> Vec<String> {
    secret
        .windows(4)
        .filter(|w| holds(shown, w) && !allowed.iter().any(|a| holds(a, w)))
        .map(|w| String::from_utf8_lossy(w).into_owned())
        .collect()
}

/// What an error about a URL shows: its value, or its whole text.
fn error_text(e: &Error) -> String {
    match e {
        Error::InvalidUrl(Invalid { value, .. }) => value.clone(),
        other => other.to_string(),
    }
}

/// `c` replaced by another character of its kind (digit, hex letter, other letter, of the
/// same case), so that a URL parses the same way with another secret.
fn rotate(c: char) -> char {
    let within = |c: char, first: char, last: char| {
        let (c, first, last) = (c as u8, first as u8, last as u8);
        char::from(first + (c - first + 1) % (last - first + 1))
    };
    match c {
        '0'..='9' => within(c, '0', '9'),
        'a'..='f' => within(c, 'a', 'f'),
        'A'..='F' => within(c, 'A', 'F'),
        'g'..='z' => within(c, 'g', 'z'),
        'G'..='Z' => within(c, 'G', 'Z'),
        _ => c,
    }
}

/// The secret of a server URL's userinfo, as `ServerAddr::from_str` splits it: the text
/// after the scheme (when it is `nats://` or `tls://`) and before the last `@`, then after
/// its first `:` (a password) or all of it (a token). Byte offsets in `url`.
fn url_secret(url: &str) -> Option<(usize, usize)> {
    let start = url.len() - url.trim_start().len();
    let t = url.trim();
    let after_scheme = ["nats://", "tls://"]
        .iter()
        .find(|s| t.get(..s.len()).is_some_and(|p| p.eq_ignore_ascii_case(s)))
        .map_or(0, |s| s.len());
    let rest = &t[after_scheme..];
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let at = rest.rfind('@')?;
    let from = rest[..at].find(':').map_or(0, |c| c + 1);
    Some((start + after_scheme + from, start + after_scheme + at))
}

/// Credentials in server URLs stay hidden: for any text `ServerAddr::from_str` accepts
/// with a password or token, `redact_url_credentials` leaves no 4-byte piece of it that
/// the text would not show anyway; an error from `ServerAddr::from_str` shows no 4-byte
/// piece of the URL's password or token beyond what `scheme://host:port` shows.
pub fn url_credentials(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let text = text.as_ref();
    let Some((from, to)) = url_secret(text) else {
        // No '@': no userinfo to hide.
        let _ = text.parse::<ServerAddr>();
        return;
    };
    let secret = &text.as_bytes()[from..to];
    let host_part = &text[to + 1..];
    match text.parse::<ServerAddr>() {
        Ok(addr) => {
            if addr.password.is_none() && addr.token.is_none() {
                return;
            }
            // A schemeless token (`t0ken@host`) looks like an e-mail address: general
            // text keeps it. Our own server list hides it (`redact_server_list`), and a
            // list the plugin uses cannot hold a ',' inside a secret (it is refused).
            if addr.password.is_none() && !text.contains("://") {
                return;
            }
            // A userinfo holding "://" reads as a second URL; nobody's does.
            let before_at = &text[..to];
            let userinfo = before_at.split_once("://").map_or(before_at, |(_, u)| u);
            if userinfo.contains("://") {
                return;
            }
            let redacted = crate::emitter::redact_url_credentials(text);
            let out = redacted.as_deref().unwrap_or(text);
            // What the redacted text may show: the text with the secret replaced.
            let kept = format!(
                "{}{}{}",
                &text[..from],
                crate::emitter::REDACTED,
                &text[to..]
            );
            let decoded = addr.password.as_deref().or(addr.token.as_deref());
            for s in [Some(secret), decoded.map(str::as_bytes)]
                .into_iter()
                .flatten()
            {
                let bits = leaked(s, out.as_bytes(), &[kept.as_bytes()]);
                assert!(
                    bits.is_empty(),
                    "{text:?} redacted to {out:?} shows {bits:?} of its secret"
                );
            }
        }
        Err(e) => {
            let shown = error_text(&e);
            // What the error may show: the address without its credentials, and whatever
            // it shows for the same URL with another secret of the same shape.
            let nats = format!("nats://{host_part}");
            let tls = format!("tls://{host_part}");
            let other: String = text[..from]
                .chars()
                .chain(text[from..to].chars().map(rotate))
                .chain(text[to..].chars())
                .collect();
            let other_shown = other
                .parse::<ServerAddr>()
                .err()
                .map(|e| error_text(&e))
                .unwrap_or_default();
            let allowed = [nats.as_bytes(), tls.as_bytes(), other_shown.as_bytes()];
            let bits = leaked(secret, shown.as_bytes(), &allowed);
            assert!(
                bits.is_empty(),
                "the error for {text:?} shows {bits:?} of its secret: {e}"
            );
        }
    }
}

//! Entry points for the fuzz targets in `fuzz/` and for the test that replays their corpus.
//! Each takes arbitrary bytes, must never panic on them, and asserts the invariants that
//! hold for every input. Not a stable API.

use std::collections::HashMap;

use crate::headers::HeaderMap;
use crate::proto::{parse_client_op, parse_server_op, ClientOp, ServerOp, Status};

const LIMIT: usize = crate::proto::DEFAULT_MAX_CONTROL_LINE;

/// Everything the parser says about a buffer: the ops (re-encoded, so comparable), and how
/// it ended (partial tail, or the error).
fn server_transcript(buf: &[u8]) -> (Vec<Vec<u8>>, Result<usize, crate::ProtoError>) {
    let mut ops = Vec::new();
    let mut rest = buf;
    loop {
        match parse_server_op(rest, LIMIT) {
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
fn server_transcript_chunked(
    buf: &[u8],
    sizes: &[u8],
) -> (Vec<Vec<u8>>, Result<usize, crate::ProtoError>) {
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
            match parse_server_op(&pending, LIMIT) {
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

/// Server-op parser: never panics, and chunking never changes the result.
pub fn server_ops(data: &[u8]) {
    let (sizes, buf) = data.split_at(data.len().min(4));
    let whole = server_transcript(buf);
    let chunked = server_transcript_chunked(buf, sizes);
    match (&whole.1, &chunked.1) {
        // An error can be found at a different point only if a prefix already proved it:
        // both must report the same ops before it and the same error.
        (Err(a), Err(b)) => {
            assert_eq!(whole.0, chunked.0);
            assert_eq!(a, b);
        }
        (Ok(a), Ok(b)) => {
            assert_eq!(whole.0, chunked.0);
            assert_eq!(a, b);
        }
        // A control line over the limit may be detected while still partial in one
        // feeding and complete in the other: the ops before it must agree.
        _ => assert_eq!(whole.0, chunked.0),
    }
}

/// Client-op parser: never panics; every op it returns re-encodes to bytes that parse to
/// the same op.
pub fn client_ops(data: &[u8]) {
    let mut rest = data;
    while let Ok(Status::Complete((op, used))) = parse_client_op(rest, LIMIT) {
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

/// Parse → encode → parse gives the same op, for server and client ops.
pub fn round_trip(data: &[u8]) {
    let mut rest = data;
    while let Ok(Status::Complete((op, used))) = parse_server_op(rest, LIMIT) {
        round_trip_server(&op);
        rest = &rest[used..];
    }
    client_ops(data);
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

/// Creds files: never panics; an accepted file has a three-part JWT.
pub fn creds(data: &[u8]) {
    if let Ok(c) = crate::auth::parse_creds(&String::from_utf8_lossy(data)) {
        assert_eq!(c.jwt().split('.').count(), 3);
    }
}

/// Server URLs and lists: never panic; an accepted address prints to one that parses to
/// the same place, and shows only scheme, host and port (never a password or token).
pub fn server_url(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(list) = crate::url::parse_server_list(&text) {
        for addr in list {
            let shown = addr.to_string();
            let again: crate::url::ServerAddr = shown
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

/// The emitter's configuration from `KEY=VALUE` lines, optionally followed by a line
/// `---` and a JSON settings object: never panics; issues are never empty text; an
/// enabled configuration has a valid subject id.
pub fn emitter_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (vars, settings) = match text.split_once("\n---\n") {
        Some((v, s)) => (v, serde_json::from_str::<serde_json::Value>(s).ok()),
        None => (text.as_ref(), None),
    };
    let env: HashMap<String, String> = vars
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let loaded = crate::emitter::config::load(&env, settings.as_ref(), "fuzz.host");
    for issue in &loaded.issues {
        assert!(!issue.source.is_empty() && !issue.problem.is_empty());
    }
    if let Some(config) = loaded.config {
        assert!(crate::subject::validate_token(&config.subject_id).is_ok());
    }
}

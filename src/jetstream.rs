//! JetStream publishing on top of the blocking client: acknowledged publishes with
//! de-duplication ids, and the few stream API calls needed to create a stream and read it
//! back. Synchronous and small; no consumer API.
//!
//! A JetStream publish is a request to a subject a stream captures: the server stores the
//! message and replies with a `PubAck` (`{"stream":"S","seq":7}`, plus `"duplicate":true`
//! when the `Nats-Msg-Id` header was seen within the stream's duplicate window), or with
//! `{"error":{"code":..,"err_code":..,"description":..}}`. Acks can be pipelined: start
//! many publishes with [`JetStream::publish_async`] and collect their [`PendingAck`]s.
//!
//! ```no_run
//! use std::time::Duration;
//! use ansible_runner_nats::{client, headers::HeaderMap, jetstream};
//!
//! let nc = client::connect("nats://127.0.0.1:4222")?;
//! let js = jetstream::JetStream::new(&nc, Duration::from_secs(5));
//! js.create_stream(&jetstream::StreamConfig::new("EVENTS", &["events.>"]))?;
//! let mut h = HeaderMap::new();
//! h.insert(jetstream::MSG_ID, "event-1")?;
//! let ack = js.publish("events.one", &h, b"{}")?;
//! assert_eq!(ack.stream, "EVENTS");
//! # Ok::<(), ansible_runner_nats::Error>(())
//! ```

use std::time::Duration;

use base64::Engine as _;
use serde_json::{json, Value};

use crate::client::{Client, Message, PendingReply};
use crate::error::{Error, Result};
use crate::headers::HeaderMap;

/// The header that names a message for de-duplication within a stream's window.
pub const MSG_ID: &str = "Nats-Msg-Id";
/// The header that makes the server refuse the message unless this stream captures it.
pub const EXPECTED_STREAM: &str = "Nats-Expected-Stream";
/// The JetStream API prefix of the default domain.
pub const API_PREFIX: &str = "$JS.API";

/// A stored message's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PubAck {
    /// The stream that stored it.
    pub stream: String,
    /// Its sequence number in the stream (for a duplicate: the original's).
    pub seq: u64,
    /// True when the message id was seen before and nothing new was stored.
    pub duplicate: bool,
    /// The JetStream domain, when the server has one.
    pub domain: Option<String>,
}

/// Where a stream keeps its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// On disk: survives server restarts.
    File,
    /// In memory.
    Memory,
}

/// The parts of a stream's configuration this crate sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    /// The stream's name.
    pub name: String,
    /// The subjects it captures (wildcards allowed).
    pub subjects: Vec<String>,
    /// File (default) or memory.
    pub storage: Storage,
    /// Copies kept in a cluster (1 to 5; default 1).
    pub replicas: usize,
    /// How long message ids are remembered for de-duplication (server default: 2 min).
    pub duplicate_window: Option<Duration>,
}

impl StreamConfig {
    /// A file-backed stream with one replica capturing `subjects`.
    pub fn new(name: &str, subjects: &[&str]) -> StreamConfig {
        StreamConfig {
            name: name.to_owned(),
            subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
            storage: Storage::File,
            replicas: 1,
            duplicate_window: None,
        }
    }

    fn to_json(&self) -> Value {
        let mut v = json!({
            "name": self.name,
            "subjects": self.subjects,
            "storage": match self.storage { Storage::File => "file", Storage::Memory => "memory" },
            "num_replicas": self.replicas,
        });
        if let Some(w) = self.duplicate_window {
            v["duplicate_window"] = json!(u64::try_from(w.as_nanos()).unwrap_or(u64::MAX));
        }
        v
    }
}

/// A stream's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamState {
    /// Messages stored.
    pub messages: u64,
    /// Bytes stored.
    pub bytes: u64,
    /// The first sequence still stored.
    pub first_seq: u64,
    /// The last sequence stored.
    pub last_seq: u64,
}

/// A message read back from a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The subject it was published to.
    pub subject: String,
    /// Its sequence number.
    pub seq: u64,
    /// Its headers, if it had any.
    pub headers: Option<HeaderMap>,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// An acknowledged publish on its way: [`PendingAck::wait`] for the ack.
#[derive(Debug)]
pub struct PendingAck {
    reply: PendingReply,
}

impl PendingAck {
    /// Waits up to `timeout` for the acknowledgement. Fails with [`Error::JetStream`] when
    /// the server refused the message, [`Error::NoResponders`] when no stream captures the
    /// subject (or JetStream is not available right now), [`Error::Timeout`] when no
    /// answer came (the message may or may not be stored: publish it again with the same
    /// message id to be sure it is stored once).
    pub fn wait(&self, timeout: Duration) -> Result<PubAck> {
        parse_pub_ack(&self.reply.wait(timeout)?.payload)
    }

    /// The ack if it has arrived (same outcomes as [`PendingAck::wait`]).
    pub fn try_wait(&self) -> Option<Result<PubAck>> {
        self.reply
            .try_wait()
            .map(|r| r.and_then(|m| parse_pub_ack(&m.payload)))
    }
}

/// A stream creation on its way: [`PendingStream::wait`] for the outcome.
#[derive(Debug)]
pub struct PendingStream {
    reply: PendingReply,
}

impl PendingStream {
    /// Waits up to `timeout` for the server's answer.
    pub fn wait(&self, timeout: Duration) -> Result<StreamState> {
        let m = self.reply.wait(timeout)?;
        api_json(&m.payload).map(|v| stream_state(&v))
    }

    /// The answer if it has arrived.
    pub fn try_wait(&self) -> Option<Result<StreamState>> {
        self.reply
            .try_wait()
            .map(|r| r.and_then(|m| api_json(&m.payload).map(|v| stream_state(&v))))
    }
}

/// Parses a publish acknowledgement, or the API error in its place.
pub fn parse_pub_ack(payload: &[u8]) -> Result<PubAck> {
    let v = api_json(payload)?;
    let stream = v
        .get("stream")
        .and_then(Value::as_str)
        .ok_or_else(|| bad_reply("publish ack without \"stream\""))?;
    let duplicate = match v.get("duplicate") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            return Err(bad_reply(
                "publish ack with a \"duplicate\" that is not true or false",
            ))
        }
    };
    // A stored message has a sequence number from 1. A clustered stream answers a
    // duplicate of a message still being replicated with 0, its placeholder.
    let seq = v
        .get("seq")
        .and_then(Value::as_u64)
        .filter(|&s| s > 0 || duplicate)
        .ok_or_else(|| bad_reply("publish ack without a sequence number"))?;
    Ok(PubAck {
        stream: stream.to_owned(),
        seq,
        duplicate,
        domain: v.get("domain").and_then(Value::as_str).map(str::to_owned),
    })
}

fn bad_reply(what: &str) -> Error {
    Error::JetStream {
        code: 0,
        err_code: 0,
        description: format!("unexpected reply: {what}"),
    }
}

/// A JSON object from the API, or the error it carries.
fn api_json(payload: &[u8]) -> Result<Value> {
    let v: Value = serde_json::from_slice(payload).map_err(|_| bad_reply("not JSON"))?;
    if !v.is_object() {
        return Err(bad_reply("not a JSON object"));
    }
    if let Some(e) = v.get("error").filter(|e| !e.is_null()) {
        return Err(Error::JetStream {
            code: e
                .get("code")
                .and_then(Value::as_u64)
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(0),
            err_code: e.get("err_code").and_then(Value::as_u64).unwrap_or(0),
            description: e
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or("no description")
                .to_owned(),
        });
    }
    Ok(v)
}

fn stream_state(v: &Value) -> StreamState {
    let state = v.get("state");
    let n = |k: &str| {
        state
            .and_then(|s| s.get(k))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    StreamState {
        messages: n("messages"),
        bytes: n("bytes"),
        first_seq: n("first_seq"),
        last_seq: n("last_seq"),
    }
}

/// JetStream calls over one client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct JetStream {
    client: Client,
    timeout: Duration,
}

impl JetStream {
    /// JetStream over `client`; `timeout` bounds the API calls and [`JetStream::publish`].
    pub fn new(client: &Client, timeout: Duration) -> JetStream {
        JetStream {
            client: client.clone(),
            timeout,
        }
    }

    /// Publishes and waits for the acknowledgement. Put [`MSG_ID`] (and optionally
    /// [`EXPECTED_STREAM`]) in `headers`.
    pub fn publish(&self, subject: &str, headers: &HeaderMap, payload: &[u8]) -> Result<PubAck> {
        self.publish_async(subject, headers, payload)?
            .wait(self.timeout)
    }

    /// Publishes and returns at once; collect the ack with [`PendingAck::wait`].
    pub fn publish_async(
        &self,
        subject: &str,
        headers: &HeaderMap,
        payload: &[u8],
    ) -> Result<PendingAck> {
        let headers = (!headers.is_empty()).then_some(headers);
        let reply = self.client.request_async(subject, headers, payload)?;
        Ok(PendingAck { reply })
    }

    fn api(&self, call: &str, body: &Value) -> Result<Value> {
        let subject = format!("{API_PREFIX}.{call}");
        let body = serde_json::to_vec(body).unwrap_or_default();
        let reply: Message = self.client.request(&subject, &body, self.timeout)?;
        api_json(&reply.payload)
    }

    /// Creates the stream; succeeds without change if it exists with the same
    /// configuration (the server fails with its own error when it differs).
    pub fn create_stream(&self, config: &StreamConfig) -> Result<StreamState> {
        let v = self.api(&format!("STREAM.CREATE.{}", config.name), &config.to_json())?;
        Ok(stream_state(&v))
    }

    /// Sends the stream creation request and returns at once; see
    /// [`JetStream::create_stream`].
    pub fn create_stream_async(&self, config: &StreamConfig) -> Result<PendingStream> {
        let subject = format!("{API_PREFIX}.STREAM.CREATE.{}", config.name);
        let body = serde_json::to_vec(&config.to_json()).unwrap_or_default();
        let reply = self.client.request_async(&subject, None, &body)?;
        Ok(PendingStream { reply })
    }

    /// The stream's current counters.
    pub fn stream_state(&self, name: &str) -> Result<StreamState> {
        let v = self.api(&format!("STREAM.INFO.{name}"), &json!({}))?;
        Ok(stream_state(&v))
    }

    /// Deletes the stream and its messages.
    pub fn delete_stream(&self, name: &str) -> Result<()> {
        self.api(&format!("STREAM.DELETE.{name}"), &json!({}))
            .map(|_| ())
    }

    /// Reads the message stored at `seq`.
    pub fn get_message(&self, stream: &str, seq: u64) -> Result<StoredMessage> {
        let v = self.api(&format!("STREAM.MSG.GET.{stream}"), &json!({ "seq": seq }))?;
        let m = v
            .get("message")
            .ok_or_else(|| bad_reply("no \"message\""))?;
        let b64 = |k: &str| -> Result<Option<Vec<u8>>> {
            match m.get(k).and_then(Value::as_str) {
                None => Ok(None),
                Some(s) => base64::engine::general_purpose::STANDARD
                    .decode(s)
                    .map(Some)
                    .map_err(|_| bad_reply("bad base64")),
            }
        };
        let headers = match b64("hdrs")? {
            Some(block) => {
                Some(HeaderMap::parse(&block).map_err(|_| bad_reply("bad header block"))?)
            }
            None => None,
        };
        Ok(StoredMessage {
            subject: m
                .get("subject")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            seq: m.get("seq").and_then(Value::as_u64).unwrap_or(seq),
            headers,
            payload: b64("data")?.unwrap_or_default(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pub_acks_parse() {
        let a = parse_pub_ack(br#"{"stream":"S","seq":7}"#).unwrap();
        assert_eq!((a.stream.as_str(), a.seq, a.duplicate), ("S", 7, false));
        let d =
            parse_pub_ack(br#"{"stream":"S","seq":7,"duplicate":true,"domain":"hub"}"#).unwrap();
        assert!(d.duplicate);
        assert_eq!(d.domain.as_deref(), Some("hub"));
    }

    #[test]
    fn api_errors_keep_their_codes() {
        let e = parse_pub_ack(
            br#"{"error":{"code":400,"err_code":10060,"description":"expected stream does not match"}}"#,
        )
        .unwrap_err();
        match e {
            Error::JetStream {
                code,
                err_code,
                ref description,
            } => {
                assert_eq!((code, err_code), (400, 10060));
                assert_eq!(description, "expected stream does not match");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            e.to_string(),
            "jetstream: expected stream does not match (code 400, err_code 10060)"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"[]",
            b"{",
            b"{\"seq\":1}",
            b"\xff",
            b"{\"error\":1}",
            // No proof of storage: no sequence number, or not one.
            b"{\"stream\":\"S\"}",
            b"{\"stream\":\"S\",\"seq\":\"7\"}",
            b"{\"stream\":\"S\",\"seq\":-1}",
            b"{\"stream\":\"S\",\"seq\":1.5}",
            b"{\"stream\":\"S\",\"seq\":0}",
            b"{\"stream\":\"S\",\"seq\":1,\"duplicate\":\"yes\"}",
        ] {
            assert!(parse_pub_ack(bad).is_err(), "{bad:?}");
        }
        // The placeholder of a duplicate still being replicated in a cluster.
        let a = parse_pub_ack(br#"{"stream":"S","seq":0,"duplicate":true}"#).unwrap();
        assert!(a.duplicate && a.seq == 0);
        // `"error": null` is no error.
        let a = parse_pub_ack(br#"{"stream":"S","seq":3,"error":null}"#).unwrap();
        assert_eq!(a.seq, 3);
    }

    #[test]
    fn stream_config_json() {
        let mut c = StreamConfig::new("RUNS", &["pub.ansible.runner.>"]);
        c.replicas = 3;
        c.duplicate_window = Some(Duration::from_secs(120));
        let v = c.to_json();
        assert_eq!(v["name"], "RUNS");
        assert_eq!(v["subjects"][0], "pub.ansible.runner.>");
        assert_eq!(v["storage"], "file");
        assert_eq!(v["num_replicas"], 3);
        assert_eq!(v["duplicate_window"], 120_000_000_000u64);
    }
}

//! JetStream mode of a run: every message is published as a request to the stream that
//! captures it and kept until its acknowledgement arrives. Acks are pipelined: up to
//! `window` messages await theirs at once. A message whose ack does not come (the server
//! restarted, JetStream was not ready, the ack was lost with the connection) is published
//! again with the same `Nats-Msg-Id`, which the stream uses to store it once.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::client::Client;
use crate::error::Error;
use crate::headers::HeaderMap;
use crate::jetstream::{JetStream, PendingAck, PendingStream, PubAck, StreamConfig, MSG_ID};

use super::config::JetStreamConfig;

/// The subjects every run publishes on, captured by a stream the emitter creates.
pub const STREAM_SUBJECTS: &str = "pub.ansible.runner.>";

/// After "no responders" (JetStream not ready yet, e.g. just after a restart), wait this
/// long before publishing that message again.
const RETRY_BACKOFF: Duration = Duration::from_millis(250);

/// The kinds of lines reported, each once per run: a stream that could not be made,
/// messages JetStream refused, messages over the server's limit.
const STREAM: &str = "jetstream stream";
const REFUSED: &str = "jetstream refused";
const OVERSIZED: &str = "jetstream oversized";

struct Creating {
    config: StreamConfig,
    pending: Option<(PendingStream, Instant)>,
    not_before: Option<Instant>,
}

struct Pending {
    subject: String,
    headers: HeaderMap,
    payload: Vec<u8>,
    /// The ack being waited for; `None` while the message waits to be (re)published.
    ack: Option<(PendingAck, Instant)>,
    /// Not before this instant (after "no responders").
    not_before: Option<Instant>,
}

/// What happened to the acknowledged messages of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AckCounters {
    /// Messages the stream acknowledged (duplicates included).
    pub acknowledged: u64,
    /// Acknowledgements that said "duplicate": the message was stored before, by an
    /// earlier attempt.
    pub duplicates: u64,
    /// Publishes repeated because an acknowledgement did not come.
    pub retries: u64,
    /// Messages the stream refused for good (e.g. over its limits): not stored.
    pub refused: u64,
}

pub(crate) struct Acked {
    js: JetStream,
    /// The run's client, to tell whether it is connected.
    client: Client,
    /// The last time a pump found the client without a connection.
    offline_at: Option<Instant>,
    /// The stream still to create.
    creating: Option<Creating>,
    config: JetStreamConfig,
    queue: VecDeque<Pending>,
    in_flight: usize,
    queued_bytes: usize,
    max_bytes: usize,
    /// Lines to report, each with its kind (reported once per run and kind).
    lines: Vec<(&'static str, String)>,
    /// Why the last publish went without an ack, for the end-of-run report.
    pub(crate) last_failure: Option<String>,
    pub(crate) counters: AckCounters,
}

impl Acked {
    /// Starts JetStream mode on `client`. The configured stream is created in the
    /// background (messages wait for it: until it exists, nobody answers them).
    pub(crate) fn new(client: &Client, config: &JetStreamConfig, max_bytes: usize) -> Acked {
        let js = JetStream::new(client, config.ack_timeout);
        let creating = config.stream.as_ref().map(|name| Creating {
            config: StreamConfig::new(name, &[STREAM_SUBJECTS]),
            pending: None,
            not_before: None,
        });
        Acked {
            js,
            client: client.clone(),
            offline_at: None,
            creating,
            config: config.clone(),
            queue: VecDeque::new(),
            in_flight: 0,
            queued_bytes: 0,
            max_bytes,
            lines: Vec::new(),
            last_failure: None,
            counters: AckCounters::default(),
        }
    }

    /// Messages not acknowledged yet.
    pub(crate) fn unacknowledged(&self) -> u64 {
        self.queue.len() as u64
    }

    /// Queues a message with its de-duplication id and publishes what the window allows.
    /// Fails with [`Error::BufferFull`] when the unacknowledged messages already hold
    /// `max_bytes`; the message is then not queued.
    pub(crate) fn send(
        &mut self,
        subject: &str,
        base: &HeaderMap,
        msg_id: &str,
        payload: &[u8],
        max_payload: usize,
    ) -> Result<(), Error> {
        let mut headers = base.clone();
        headers.insert(MSG_ID, msg_id)?;
        let size = payload.len() + headers.encoded_len();
        if size > max_payload {
            return Err(Error::MaxPayload {
                size,
                max: max_payload,
            });
        }
        if self.queued_bytes + payload.len() > self.max_bytes && !self.queue.is_empty() {
            return Err(Error::BufferFull {
                which: "JetStream unacknowledged buffer",
                limit: self.max_bytes,
            });
        }
        self.queued_bytes += payload.len();
        self.queue.push_back(Pending {
            subject: subject.to_owned(),
            headers,
            payload: payload.to_vec(),
            ack: None,
            not_before: None,
        });
        self.pump(Instant::now());
        Ok(())
    }

    /// Collects the acks that arrived, re-publishes what timed out or found no
    /// responders, and publishes waiting messages while the window has room. Never
    /// blocks. Messages refused for good are reported through [`Acked::take_lines`].
    pub(crate) fn pump(&mut self, now: Instant) {
        let mut refused = Vec::new();
        if !self.stream_ready(now, &mut refused) {
            self.lines.append(&mut refused);
            return;
        }
        let ack_timeout = self.config.ack_timeout;
        if !self.client.is_connected() {
            // The messages in flight wait in the client's buffers and go out again on the
            // next connection, where their acks can still come: copies published now would
            // only fill those buffers with duplicates, one more per ack timeout. Their
            // ack timeouts count from the last moment seen without a connection.
            self.offline_at = Some(now);
        }
        let offline_at = self.offline_at;
        // Acks come back in the order the messages went out, and the queue is in that
        // order too: collect from the front and stop at the first in-flight message still
        // waiting (within its ack timeout), so a pump costs what it collects.
        let mut i = 0;
        while i < self.queue.len() {
            let outcome = match &self.queue[i].ack {
                Some((ack, sent)) => match ack.try_wait() {
                    Some(r) => r,
                    None if now.duration_since(offline_at.map_or(*sent, |t| t.max(*sent)))
                        >= ack_timeout =>
                    {
                        Err(Error::Timeout {
                            what: "ack",
                            after: ack_timeout,
                        })
                    }
                    None => break,
                },
                // Waiting for a retry: look past it.
                None => {
                    i += 1;
                    continue;
                }
            };
            let (removed, line) = self.settle(i, outcome, now);
            refused.extend(line.map(|l| (REFUSED, l)));
            if !removed {
                i += 1;
            }
        }
        let mut i = 0;
        while i < self.queue.len() && self.in_flight < self.config.window {
            let p = &mut self.queue[i];
            if p.ack.is_some() {
                i += 1;
                continue;
            }
            // A message waiting out its retry pause holds back those behind it: they
            // would meet what it met (JetStream unavailable, busy), and sent past it they
            // would be stored before it.
            if p.not_before.is_some_and(|t| t > now) {
                break;
            }
            match self.js.publish_async(&p.subject, &p.headers, &p.payload) {
                Ok(ack) => {
                    p.ack = Some((ack, now));
                    p.not_before = None;
                    self.in_flight += 1;
                    i += 1;
                }
                Err(Error::MaxPayload { size, max }) => {
                    // The limit of the server reached now is lower than when it was queued.
                    self.counters.refused += 1;
                    refused.push((
                        OVERSIZED,
                        format!(
                            "a message on {} is {size} bytes, over the server's max_payload of {max}: not sent",
                            p.subject
                        ),
                    ));
                    self.forget(i);
                }
                // The client's buffers are full (server away for long): try later.
                Err(_) => break,
            }
        }
        self.lines.append(&mut refused);
    }

    /// Lines to report (messages refused for good, a stream that could not be created),
    /// each with its kind.
    pub(crate) fn take_lines(&mut self) -> Vec<(&'static str, String)> {
        std::mem::take(&mut self.lines)
    }

    /// Creates the configured stream before anything is published. Returns whether
    /// messages may go.
    fn stream_ready(&mut self, now: Instant, lines: &mut Vec<(&'static str, String)>) -> bool {
        let ack_timeout = self.config.ack_timeout;
        let Some(c) = &mut self.creating else {
            return true;
        };
        let outcome = match &c.pending {
            None if c.not_before.is_some_and(|t| t > now) => return false,
            None => {
                if let Ok(p) = self.js.create_stream_async(&c.config) {
                    c.pending = Some((p, now));
                }
                return false;
            }
            Some((p, sent)) => match p.try_wait() {
                Some(r) => r,
                None if now.duration_since(*sent) >= ack_timeout => Err(Error::Timeout {
                    what: "stream creation",
                    after: ack_timeout,
                }),
                None => return false,
            },
        };
        match outcome {
            // Made, or there already under that name (10058: with another configuration,
            // such as a duplicate window an administrator lengthened): published to.
            Ok(_)
            | Err(Error::JetStream {
                err_code: STREAM_NAME_IN_USE,
                ..
            }) => {
                self.creating = None;
                true
            }
            // JetStream not answering yet (just restarted, or the answer was lost): ask
            // again a little later.
            Err(
                e @ (Error::NoResponders { .. }
                | Error::JetStream { code: 503, .. }
                | Error::Timeout { .. }),
            ) => {
                // What the end of the run says if it never comes: nothing is published
                // before the stream exists.
                let why = match e {
                    Error::NoResponders { .. } => {
                        "nobody answered the JetStream API: is JetStream enabled on the server?"
                            .to_owned()
                    }
                    other => other.to_string(),
                };
                self.last_failure = Some(format!(
                    "the JetStream stream {:?} could not be created yet: {why}",
                    c.config.name
                ));
                c.pending = None;
                c.not_before = Some(now + RETRY_BACKOFF);
                false
            }
            Err(e) => {
                lines.push((
                    STREAM,
                    format!(
                        "cannot create the JetStream stream {:?} (capturing {STREAM_SUBJECTS}): {e}; publishing to whatever stream captures the subjects",
                        c.config.name
                    ),
                ));
                self.creating = None;
                true
            }
        }
    }

    /// Applies the outcome of the in-flight message `i`. Returns whether it left the
    /// queue, and the line to report when it was refused for good.
    fn settle(
        &mut self,
        i: usize,
        outcome: Result<PubAck, Error>,
        now: Instant,
    ) -> (bool, Option<String>) {
        match outcome {
            Ok(ack) => {
                self.counters.acknowledged += 1;
                self.counters.duplicates += u64::from(ack.duplicate);
                self.forget(i);
                (true, None)
            }
            // Refused for good: by the API's own word (an answer we cannot read, code 0,
            // proves nothing either way, and goes again like a missing one, as do the
            // answers that mean "not now"), or because this user may not publish it,
            // which a second try would not change.
            Err(e) if refused_for_good(&e) => {
                self.counters.refused += 1;
                let subject = &self.queue[i].subject;
                let line = match e {
                    Error::JetStream {
                        code,
                        err_code,
                        description,
                    } => format!(
                        "JetStream refused a message on {subject}: {description} (code {code}, err_code {err_code})"
                    ),
                    other => format!(
                        "the server refused a message on {subject} for lack of permission: {other}"
                    ),
                };
                self.forget(i);
                (true, Some(line))
            }
            Err(e) => {
                // No ack: publish it again (same id), after a pause when nobody answered
                // at all or JetStream said it is unavailable.
                self.last_failure = Some(match &e {
                    Error::NoResponders { subject } => format!(
                        "nobody answered on {subject:?}: no JetStream stream captures it, or JetStream is not enabled on the server"
                    ),
                    other => other.to_string(),
                });
                let p = &mut self.queue[i];
                p.ack = None;
                if matches!(e, Error::NoResponders { .. } | Error::JetStream { .. }) {
                    p.not_before = Some(now + RETRY_BACKOFF);
                }
                self.in_flight -= 1;
                self.counters.retries += 1;
                (false, None)
            }
        }
    }

    fn forget(&mut self, i: usize) {
        if let Some(p) = self.queue.remove(i) {
            self.queued_bytes -= p.payload.len();
            if p.ack.is_some() {
                self.in_flight -= 1;
            }
        }
    }

    /// Pumps until every message is acknowledged or `deadline` passes, waiting on the
    /// oldest ack in flight (at most 50 ms at a time, so that retries come due).
    pub(crate) fn drain(&mut self, deadline: Instant) {
        loop {
            let now = Instant::now();
            self.pump(now);
            if self.queue.is_empty() || now >= deadline {
                return;
            }
            let step = (deadline - now).min(Duration::from_millis(50));
            let first = self.queue.iter().position(|p| p.ack.is_some());
            match first {
                Some(i) => {
                    let waited = match &self.queue[i].ack {
                        Some((ack, _)) => ack.wait(step),
                        None => continue,
                    };
                    match waited {
                        Err(Error::Timeout { .. }) => {}
                        r => {
                            let (_, line) = self.settle(i, r, Instant::now());
                            self.lines.extend(line.map(|l| (REFUSED, l)));
                        }
                    }
                }
                // Everything waits for a retry (or for room in the client's buffers).
                None => std::thread::sleep(step),
            }
        }
    }
}

/// JetStream errors that say "not now" rather than "never": the message may yet be
/// stored, or is being stored, so it goes again (same `Nats-Msg-Id`) after a pause.
/// 10158: a copy with this id is still being proposed (a retry while the first one is in
/// flight, typically around a leader change; answered with 409). 10167: the stream's
/// ingest queue is full. (10077, a failed store, is left a refusal: it also stands for a
/// full stream that discards new messages.)
const NOT_NOW: [u64; 2] = [10158, 10167];

/// The stream exists under that name with another configuration.
const STREAM_NAME_IN_USE: u64 = 10058;

/// A store that failed: over a limit of a stream that discards new messages (`maximum
/// messages exceeded`, `maximum bytes exceeded`), which nats-server answers with code 503.
const STORE_FAILED: u64 = 10077;

/// Whether an ack's error means the message will never be stored, however often sent.
fn refused_for_good(e: &Error) -> bool {
    match e {
        Error::JetStream { code, err_code, .. } => {
            *err_code == STORE_FAILED || (*code != 503 && *code != 0 && !NOT_NOW.contains(err_code))
        }
        Error::PermissionDenied(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::refused_for_good;
    use crate::Error;

    fn api(code: u16, err_code: u64) -> Error {
        Error::JetStream {
            code,
            err_code,
            description: String::new(),
        }
    }

    #[test]
    fn only_answers_that_cannot_change_are_refusals() {
        // Over the stream's limits, a stream that does not match, no permission: never.
        assert!(refused_for_good(&api(400, 10054)));
        assert!(refused_for_good(&api(400, 10060)));
        assert!(refused_for_good(&Error::PermissionDenied("x".into())));
        assert!(refused_for_good(&api(500, 10077)));
        // A full stream that discards new messages, as nats-server 2.15 answers it.
        assert!(refused_for_good(&api(503, 10077)));
        // Unavailable, unreadable, still being proposed, too busy: again.
        for retried in [api(503, 10008), api(0, 0), api(409, 10158), api(429, 10167)] {
            assert!(!refused_for_good(&retried), "{retried:?}");
        }
        assert!(!refused_for_good(&Error::Disconnected));
    }
}

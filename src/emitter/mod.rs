//! The Ansible Runner event emitter: every status and event of a run, published to NATS
//! on `pub.ansible.runner.{subject_id}.{runner_ident}.event` and `.status`.
//!
//! One [`Emitter`] serves a whole process. Each run (`runner_ident`) gets its own
//! connection, made in the background on the run's first message, so a handler does not
//! wait on the network (a connected server that stops reading costs one wait for room,
//! see [`crate::client::Options::publish_wait`]); the run's terminal status (successful, failed, canceled,
//! timeout, error) flushes everything queued for it, bounded by the flush timeout, and
//! closes that connection. Runs in parallel do not interfere.
//!
//! Nothing here fails a run: every call returns a [`Report`] with the lines to log, and
//! each run keeps [`RunCounters`].
//!
//! ```
//! use std::collections::HashMap;
//! use ansible_runner_nats::emitter::{config, Emitter, Kind};
//!
//! let mut env = HashMap::new();
//! env.insert("RUNNER_NATS_SUBJECT_ID".to_string(), "demo".to_string());
//! // A server that is not there: the run still completes, within the flush bound.
//! env.insert("RUNNER_NATS_SERVERS".to_string(), "nats://127.0.0.1:1".to_string());
//! env.insert("RUNNER_NATS_FLUSH_TIMEOUT".to_string(), "0.2".to_string());
//!
//! let emitter = Emitter::new();
//! let load = || config::load(&env, None, "host");
//! emitter.publish("run-1", Kind::Status("starting"), br#"{"status": "starting"}"#, load);
//! emitter.publish("run-1", Kind::Event, br#"{"event": "playbook_on_start"}"#, load);
//! let report = emitter.publish("run-1", Kind::Status("successful"), br#"{"status": "successful"}"#, load);
//! let summary = report.summary.expect("the terminal status closes the run");
//! assert_eq!(summary.counters.undelivered, 3);
//! assert!(report.errors.iter().any(|e| e.contains("3 messages")));
//! ```

mod acked;
pub mod config;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::Value;

use crate::client::Client;
use crate::error::Error;
use crate::headers::HeaderMap;
pub use acked::{AckCounters, STREAM_SUBJECTS};
use config::MAX_SUBJECT;
pub use config::{ConfigIssue, EmitterConfig, JetStreamConfig, Loaded, Oversize};

/// What a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind<'a> {
    /// A playbook event (`event_handler`).
    Event,
    /// A status change (`status_handler`), with the status.
    Status(&'a str),
}

impl Kind<'_> {
    fn describe(self) -> String {
        match self {
            Kind::Event => "an event".into(),
            Kind::Status(s) => format!("the status {s:?}"),
        }
    }
}

/// What a message for a run that ended gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Late {
    /// The run published: the first late message is reported, each one counted.
    Unreported,
    Reported,
    /// The run did not publish (off or misconfigured): nothing to say.
    Quiet,
}

/// The statuses after which ansible-runner sends nothing more for a run.
pub const TERMINAL_STATUSES: &[&str] = &["successful", "failed", "canceled", "timeout", "error"];

/// Counts for one run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunCounters {
    /// Messages queued for sending.
    pub published: u64,
    /// Payload bytes queued.
    pub bytes: u64,
    /// Messages refused because a buffer was full (the server unreachable for long).
    pub dropped: u64,
    /// Events over the server's `max_payload`, not sent.
    pub oversized: u64,
    /// Events sent shortened (`RUNNER_NATS_OVERSIZE=truncate`).
    pub truncated: u64,
    /// Messages queued but never confirmed by the server when the run ended (with
    /// JetStream: never acknowledged by a stream).
    pub undelivered: u64,
    /// Messages the server discarded because the run's user may not publish to their
    /// subject: they went to nobody. (With JetStream they are counted as refused, in
    /// `jetstream`.)
    pub denied: u64,
    /// With JetStream: what the stream acknowledged, repeated, refused.
    pub jetstream: Option<AckCounters>,
}

/// The end of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// The run.
    pub runner_ident: String,
    /// What happened to its messages.
    pub counters: RunCounters,
}

/// What one call did, for the caller to log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Problems to log at error level (configuration issues, first failures of a kind).
    pub errors: Vec<String>,
    /// Set when this call ended a run.
    pub summary: Option<RunSummary>,
}

struct Run {
    config: EmitterConfig,
    client: Client,
    /// JetStream mode: the messages awaiting their acknowledgement.
    acked: Option<acked::Acked>,
    /// JetStream mode: the `Nats-Msg-Id` of the message being sent.
    msg_id: String,
    /// JetStream mode: this run's part of its statuses' ids, so that a later run under
    /// the same ident is not taken for a repeat of this one within the stream's
    /// duplicate window.
    run_tag: String,
    /// Shared rather than owned strings: a message borrows its subject while the run is
    /// borrowed mutably to send it, for the price of a reference count, not a copy.
    event_subject: Arc<str>,
    status_subject: Arc<str>,
    counters: RunCounters,
    /// Failure kinds already reported for this run, so a dead server gives one line,
    /// not one per event.
    reported: Vec<&'static str>,
    /// Set by [`Run::finish`]: a close that raced the terminal status for the run (it took
    /// the run from the map while the status was being handled) finds it done.
    finished: bool,
}

enum Entry {
    Active(Box<Run>),
    /// Off or misconfigured for this run: remembered so the configuration is read and
    /// reported once.
    Disabled,
}

/// Publishes Ansible Runner statuses and events; see the module documentation.
#[derive(Default)]
pub struct Emitter {
    runs: Mutex<HashMap<String, Arc<Mutex<Entry>>>>,
    /// The runs that ended, newest last (at most [`ENDED_KEPT`]), and whether a late
    /// message for each was reported: a message after a run's terminal status must not
    /// open a new run (which nothing would close) nor vanish. Locked after `runs`.
    ended: Mutex<VecDeque<(String, Late)>>,
    /// Messages not published because their run had ended.
    late: AtomicU64,
}

/// How many ended runs the emitter remembers.
const ENDED_KEPT: usize = 256;

impl std::fmt::Debug for Emitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitter")
            .field("runs", &self.lock_runs().len())
            .finish()
    }
}

impl Emitter {
    /// An emitter with no run yet.
    pub fn new() -> Emitter {
        Emitter::default()
    }

    fn lock_runs(&self) -> MutexGuard<'_, HashMap<String, Arc<Mutex<Entry>>>> {
        self.runs.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_ended(&self) -> MutexGuard<'_, VecDeque<(String, Late)>> {
        self.ended.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes sure the run `ident` exists, calling `load` for its configuration if it is
    /// new (its issues go into `report`). Returns whether the run publishes; a caller can
    /// skip serializing events of runs that do not. `kind` is the message to come: only
    /// a `starting` status begins a run anew under the ident of one that ended.
    pub fn open(
        &self,
        ident: &str,
        kind: Kind<'_>,
        load: impl FnOnce() -> Loaded,
        report: &mut Report,
    ) -> bool {
        let Some(entry) = self.entry(ident, kind, load, report) else {
            return false;
        };
        let guard = entry.lock().unwrap_or_else(|p| p.into_inner());
        matches!(&*guard, Entry::Active(_))
    }

    /// The run `ident`, started (with the configuration `load` gives) if it is new;
    /// `None` for a message that came after the run ended (reported, and counted in
    /// [`Emitter::late_messages`]).
    fn entry(
        &self,
        ident: &str,
        kind: Kind<'_>,
        load: impl FnOnce() -> Loaded,
        report: &mut Report,
    ) -> Option<Arc<Mutex<Entry>>> {
        {
            let runs = self.lock_runs();
            if let Some(e) = runs.get(ident) {
                return Some(Arc::clone(e));
            }
            if self.is_late(ident, kind, report) {
                return None;
            }
        }
        // Read without the lock: `load` may take its time (a host name lookup) and, in the
        // plugin, takes the GIL, which a thread waiting for the lock could hold.
        let loaded = load();
        let mut runs = self.lock_runs();
        if let Some(e) = runs.get(ident) {
            // Started by another thread meanwhile, which reported its configuration.
            return Some(Arc::clone(e));
        }
        if self.is_late(ident, kind, report) {
            return None;
        }
        let entry = Arc::new(Mutex::new(start_run(ident, loaded, report)));
        runs.insert(ident.to_owned(), Arc::clone(&entry));
        Some(entry)
    }

    /// Whether a `kind` message for `ident`, which is not open, comes after its run
    /// ended: then it is counted and, the first time, reported. A `starting` status
    /// under an ended ident is a new run.
    fn is_late(&self, ident: &str, kind: Kind<'_>, report: &mut Report) -> bool {
        let mut ended = self.lock_ended();
        let Some(i) = ended.iter().position(|(e, _)| e == ident) else {
            return false;
        };
        if kind == Kind::Status("starting") {
            ended.remove(i);
            return false;
        }
        if let Some((_, late)) = ended.get_mut(i) {
            if *late != Late::Quiet {
                self.late.fetch_add(1, Ordering::Relaxed);
            }
            if *late == Late::Unreported {
                *late = Late::Reported;
                report.errors.push(format!(
                    "run {ident}: {} came after the run ended: not published, nor any later one (counted as late)",
                    kind.describe()
                ));
            }
        }
        true
    }

    /// Forgets the open run `ident` if `entry` is still it, and remembers that it ended.
    fn ended(&self, ident: &str, entry: &Arc<Mutex<Entry>>, published: bool) {
        let mut runs = self.lock_runs();
        if runs.get(ident).is_some_and(|e| Arc::ptr_eq(e, entry)) {
            runs.remove(ident);
        }
        self.remember_ended(ident, published);
    }

    fn remember_ended(&self, ident: &str, published: bool) {
        let mut ended = self.lock_ended();
        ended.retain(|(e, _)| e != ident);
        if ended.len() == ENDED_KEPT {
            ended.pop_front();
        }
        let late = if published {
            Late::Unreported
        } else {
            Late::Quiet
        };
        ended.push_back((ident.to_owned(), late));
    }

    /// Messages not published because their run had already ended (each run's first one
    /// is reported).
    pub fn late_messages(&self) -> u64 {
        self.late.load(Ordering::Relaxed)
    }

    /// Publishes one message of the run `ident`. On the run's first message `load` is
    /// called for its configuration (so the environment and settings are read once per
    /// run); its issues are reported. A terminal status flushes and closes the run.
    pub fn publish(
        &self,
        ident: &str,
        kind: Kind<'_>,
        payload: &[u8],
        load: impl FnOnce() -> Loaded,
    ) -> Report {
        self.publish_with_id(ident, kind, None, payload, load)
    }

    /// [`Emitter::publish`] with the event's `uuid` at hand: with JetStream it becomes
    /// the `Nats-Msg-Id` (without it, the payload's `uuid` is looked up). Statuses use
    /// `<runner_ident>-<run>-<status>`, `<run>` 8 hex digits drawn when the run starts.
    pub fn publish_with_id(
        &self,
        ident: &str,
        kind: Kind<'_>,
        uuid: Option<&str>,
        payload: &[u8],
        load: impl FnOnce() -> Loaded,
    ) -> Report {
        let mut report = Report::default();
        let terminal = matches!(kind, Kind::Status(s) if TERMINAL_STATUSES.contains(&s));
        let Some(entry) = self.entry(ident, kind, load, &mut report) else {
            return report;
        };
        let mut guard = entry.lock().unwrap_or_else(|p| p.into_inner());
        let published = matches!(&*guard, Entry::Active(_));
        if matches!(&*guard, Entry::Active(run) if run.finished) {
            // A close (`close_runs`, `forget`) ended the run while this message was on its
            // way: late, like any message after the run's end.
            drop(guard);
            if !self.is_late(ident, kind, &mut report) {
                self.late.fetch_add(1, Ordering::Relaxed);
            }
            return report;
        }
        if let Entry::Active(run) = &mut *guard {
            run.send(ident, kind, uuid, payload, &mut report);
            if terminal {
                report.summary = Some(run.finish(ident, &mut report));
            }
        }
        drop(guard);
        if terminal {
            self.ended(ident, &entry, published);
        }
        report
    }

    /// Flushes and closes every open run (each bounded by its flush timeout), for a
    /// stream that ended without terminal statuses.
    pub fn close_all(&self) -> Report {
        let entries: Vec<(String, Arc<Mutex<Entry>>)> = self.lock_runs().drain().collect();
        self.close_entries(entries)
    }

    /// [`Emitter::close_all`] for the runs named only; the others go on.
    pub fn close_runs(&self, idents: &[String]) -> Report {
        let entries: Vec<(String, Arc<Mutex<Entry>>)> = {
            let mut runs = self.lock_runs();
            idents
                .iter()
                .filter_map(|ident| Some((ident.clone(), runs.remove(ident)?)))
                .collect()
        };
        self.close_entries(entries)
    }

    /// Closes `entries` side by side, so that the whole takes one flush timeout, not one
    /// per run (the runs' servers may all be down). Lines come in the entries' order.
    fn close_entries(&self, entries: Vec<(String, Arc<Mutex<Entry>>)>) -> Report {
        let close = |ident: &str, entry: &Mutex<Entry>| {
            let mut report = Report::default();
            let mut guard = entry.lock().unwrap_or_else(|p| p.into_inner());
            self.remember_ended(ident, matches!(&*guard, Entry::Active(_)));
            if let Entry::Active(run) = &mut *guard {
                if run.finished {
                    return report.errors;
                }
                let summary = run.finish(ident, &mut report);
                report.errors.push(format!(
                    "run {ident} ended without a terminal status; closed with {} messages published",
                    summary.counters.published
                ));
            }
            report.errors
        };
        let lines: Vec<Vec<String>> = std::thread::scope(|scope| {
            let running: Vec<_> = entries
                .iter()
                .map(|(ident, entry)| {
                    let spawned = std::thread::Builder::new()
                        .name("nats-close".into())
                        .spawn_scoped(scope, || close(ident, entry));
                    (ident, entry, spawned)
                })
                .collect();
            running
                .into_iter()
                .map(|(ident, entry, spawned)| match spawned {
                    Ok(handle) => handle.join().unwrap_or_default(),
                    // No thread to be had: this one closes it.
                    Err(_) => close(ident, entry),
                })
                .collect()
        });
        Report {
            errors: lines.into_iter().flatten().collect(),
            summary: None,
        }
    }

    /// The counters of an open run.
    pub fn counters(&self, ident: &str) -> Option<RunCounters> {
        let entry = self.lock_runs().get(ident).cloned()?;
        let guard = entry.lock().unwrap_or_else(|p| p.into_inner());
        match &*guard {
            Entry::Active(run) => Some(run.counters),
            Entry::Disabled => None,
        }
    }

    /// True when the run `ident` is open and its connection is up.
    pub fn is_connected(&self, ident: &str) -> bool {
        let Some(entry) = self.lock_runs().get(ident).cloned() else {
            return false;
        };
        let guard = entry.lock().unwrap_or_else(|p| p.into_inner());
        matches!(&*guard, Entry::Active(run) if run.client.is_connected())
    }

    /// Forgets a run that does not publish (after its terminal status). An active run is
    /// closed instead, with its flush.
    pub fn forget(&self, ident: &str) -> Report {
        let Some(entry) = self.lock_runs().remove(ident) else {
            return Report::default();
        };
        let mut report = Report::default();
        let mut guard = entry.lock().unwrap_or_else(|p| p.into_inner());
        self.remember_ended(ident, matches!(&*guard, Entry::Active(_)));
        if let Entry::Active(run) = &mut *guard {
            if !run.finished {
                report.summary = Some(run.finish(ident, &mut report));
            }
        }
        report
    }

    /// How many runs are open.
    pub fn open_runs(&self) -> usize {
        self.lock_runs().len()
    }
}

fn start_run(ident: &str, loaded: Loaded, report: &mut Report) -> Entry {
    for issue in &loaded.issues {
        report.errors.push(format!("run {ident}: {issue}"));
    }
    let Some(config) = loaded.config else {
        return Entry::Disabled;
    };
    if let Err(e) = crate::subject::validate_token(ident) {
        let why = match &e {
            Error::InvalidSubject(invalid) => invalid.reason.to_owned(),
            other => other.to_string(),
        };
        report.errors.push(format!(
            "run {}: runner_ident is not a valid subject token ({why}); nothing published for it",
            shown_ident(ident)
        ));
        return Entry::Disabled;
    }
    let longest = config::subject_len(&config.subject_id, ident);
    if longest > MAX_SUBJECT {
        report.errors.push(format!(
            "run {}: runner_ident ({} bytes) makes subjects of {longest} bytes, over the {MAX_SUBJECT} a server reads; nothing published for it",
            shown_ident(ident),
            ident.len()
        ));
        return Entry::Disabled;
    }
    let base = format!("pub.ansible.runner.{}.{ident}", config.subject_id);
    match config.options.clone().connect() {
        Ok(client) => Entry::Active(Box::new(Run {
            event_subject: format!("{base}.event").into(),
            status_subject: format!("{base}.status").into(),
            acked: config
                .jetstream
                .as_ref()
                .map(|js| acked::Acked::new(&client, js, config.options.pending_size)),
            msg_id: String::new(),
            run_tag: format!("{:08x}", crate::client::pool::random_u64() as u32),
            config,
            client,
            counters: RunCounters::default(),
            reported: Vec::new(),
            finished: false,
        })),
        Err(e) => {
            report
                .errors
                .push(format!("run {ident}: cannot start the NATS client: {e}"));
            Entry::Disabled
        }
    }
}

/// The header that marks a shortened event.
pub const TRUNCATED_HEADER: &str = "Ansible-Runner-Nats-Truncated";

impl Run {
    fn report_once(&mut self, kind: &'static str, line: String, report: &mut Report) {
        if !self.reported.contains(&kind) {
            self.reported.push(kind);
            report.errors.push(line);
        }
    }

    fn send(
        &mut self,
        ident: &str,
        kind: Kind<'_>,
        uuid: Option<&str>,
        payload: &[u8],
        report: &mut Report,
    ) {
        if self.acked.is_some() {
            self.msg_id = match kind {
                Kind::Status(s) => format!("{ident}-{}-{s}", self.run_tag),
                Kind::Event => match uuid.map(str::to_owned).or_else(|| payload_uuid(payload)) {
                    Some(u) => u,
                    None => format!(
                        "{ident}-{}-event-{}",
                        self.run_tag,
                        self.counters.published + 1
                    ),
                },
            };
        }
        let subject = Arc::clone(match kind {
            Kind::Event => &self.event_subject,
            Kind::Status(_) => &self.status_subject,
        });
        let redacted;
        let payload = match kind {
            Kind::Status(_) if self.config.redact_env => match redact_env(payload) {
                Some(r) => {
                    redacted = r;
                    redacted.as_slice()
                }
                None => payload,
            },
            _ => payload,
        };
        match self.publish(&subject, None, payload) {
            Ok(()) => {}
            Err(Error::MaxPayload { size, max }) => {
                self.oversized(ident, &subject, payload, size, max, report)
            }
            Err(e) => self.failed(ident, e, report),
        }
        self.report_acked_lines(ident, report);
    }

    fn publish(
        &mut self,
        subject: &str,
        extra: Option<&HeaderMap>,
        payload: &[u8],
    ) -> Result<(), Error> {
        let headers = extra.unwrap_or(&self.config.headers);
        let sent = if let Some(acked) = &mut self.acked {
            let max = self.client.max_payload();
            acked.send(subject, headers, &self.msg_id, payload, max)
        } else if headers.is_empty() {
            self.client.publish(subject, payload)
        } else {
            self.client.publish_with_headers(subject, headers, payload)
        };
        if sent.is_ok() {
            self.counters.published += 1;
            self.counters.bytes += payload.len() as u64;
        }
        sent
    }

    fn failed(&mut self, ident: &str, e: Error, report: &mut Report) {
        if matches!(e, Error::BufferFull { .. }) {
            self.counters.dropped += 1;
            self.report_once(
                "buffer",
                format!("run {ident}: {e}; further drops are counted and reported at the end of the run"),
                report,
            );
        } else {
            self.counters.dropped += 1;
            self.report_once(
                "publish",
                format!("run {ident}: publish failed: {e}"),
                report,
            );
        }
    }

    fn oversized(
        &mut self,
        ident: &str,
        subject: &str,
        payload: &[u8],
        size: usize,
        max: usize,
        report: &mut Report,
    ) {
        // The first few are named one by one; a run full of them is not a line each.
        let said = self.counters.oversized + self.counters.truncated;
        let mut say = |line: String| {
            if said < OVERSIZE_LINES {
                report.errors.push(line);
            } else if said == OVERSIZE_LINES {
                report.errors.push(format!(
                    "run {ident}: more events over the server's max_payload of {max}: from now on only counted (in the run's summary)"
                ));
            }
        };
        let what = describe(payload);
        if self.config.oversize == Oversize::Truncate {
            if let Some(short) = truncate_event(payload) {
                let mut headers = self.config.headers.clone();
                let marked = headers.append(TRUNCATED_HEADER, "true");
                if marked.is_ok() && self.publish(subject, Some(&headers), &short).is_ok() {
                    self.counters.truncated += 1;
                    say(format!(
                        "run {ident}: {what} is {size} bytes, over the server's max_payload of {max}: sent truncated to {} bytes",
                        short.len()
                    ));
                    return;
                }
            }
        }
        self.counters.oversized += 1;
        say(format!(
            "run {ident}: {what} is {size} bytes, over the server's max_payload of {max}: not sent"
        ));
    }

    fn report_acked_lines(&mut self, ident: &str, report: &mut Report) {
        let lines = self
            .acked
            .as_mut()
            .map(acked::Acked::take_lines)
            .unwrap_or_default();
        for (kind, line) in lines {
            self.report_once(kind, format!("run {ident}: {line}"), report);
        }
    }

    fn finish(&mut self, ident: &str, report: &mut Report) -> RunSummary {
        // One bound for the whole end of the run: the acknowledgements, then the close.
        let deadline =
            crate::client::transport::later(std::time::Instant::now(), self.config.flush_timeout);
        if let Some(acked) = &mut self.acked {
            acked.drain(deadline);
            let missing = acked.unacknowledged();
            let why = acked.last_failure.clone();
            self.counters.jetstream = Some(acked.counters);
            self.report_acked_lines(ident, report);
            if missing > 0 {
                self.counters.undelivered = missing;
                let why = why
                    .or_else(|| self.client.last_error())
                    .unwrap_or_else(|| "no acknowledgement came".into());
                report.errors.push(format!(
                    "run {ident}: {missing} messages were not acknowledged by JetStream within the flush timeout ({:?}): {why}",
                    self.config.flush_timeout
                ));
            }
        }
        let closed = self
            .client
            .close_within(crate::client::transport::remaining(deadline));
        // What the client dropped when the server became known (over its limit, headers it
        // does not support) and what the server discarded (no permission). With JetStream
        // none of those was acknowledged, and the retry was refused or they count as
        // unacknowledged: counted there, not again here.
        let stats = match self.acked {
            Some(_) => crate::client::Statistics::default(),
            None => self.client.statistics(),
        };
        let (late, headerless) = (stats.oversized, stats.headers_unsupported);
        if headerless > 0 {
            self.counters.dropped += headerless;
            self.counters.published = self.counters.published.saturating_sub(headerless);
            report.errors.push(format!(
                "run {ident}: {headerless} messages were queued with headers before connecting to a server without header support: not sent"
            ));
        }
        if late > 0 {
            self.counters.oversized += late;
            self.counters.published = self.counters.published.saturating_sub(late);
            report.errors.push(format!(
                "run {ident}: {late} events were over the server's max_payload of {} (found once connected): not sent",
                self.client.server_info().max_payload
            ));
        }
        match closed {
            Ok(()) => {}
            // With JetStream the acknowledgements are what counts (above).
            Err(Error::NotDelivered { .. }) if self.acked.is_some() => {}
            Err(Error::NotDelivered { messages, reason }) => {
                self.counters.undelivered = messages;
                report.errors.push(format!(
                    "run {ident}: {messages} messages were not delivered to NATS within the flush timeout ({:?}): {reason}",
                    self.config.flush_timeout
                ));
            }
            Err(e) => report.errors.push(format!("run {ident}: close: {e}")),
        }
        // The close's flush came back after the server's answer to every message before it.
        // (A message written again after a reconnect can be refused twice.)
        let denied = stats.publish_denied.min(self.counters.published);
        if denied > 0 {
            self.counters.denied = denied;
            let why = self
                .client
                .last_error()
                .filter(|e| e.contains("Permissions Violation"))
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            report.errors.push(format!(
                "run {ident}: the server discarded {denied} of {} messages: this user may not publish them{why}",
                self.counters.published
            ));
        }
        let c = self.counters;
        let mut lost = Vec::new();
        if c.dropped > 0 {
            lost.push(format!(
                "{} messages dropped (buffers full, or refused as said above)",
                c.dropped
            ));
        }
        if c.oversized > 0 {
            lost.push(format!("{} oversized events not sent", c.oversized));
        }
        if !lost.is_empty() {
            report
                .errors
                .push(format!("run {ident}: {}", lost.join(", ")));
        }
        self.finished = true;
        RunSummary {
            runner_ident: ident.to_owned(),
            counters: c,
        }
    }
}

/// The top-level `uuid` of an event payload.
fn payload_uuid(payload: &[u8]) -> Option<String> {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(payload) else {
        return None;
    };
    map.get("uuid")
        .and_then(Value::as_str)
        .filter(|u| !u.is_empty())
        .map(str::to_owned)
}

/// `event 'runner_on_ok' (uuid ...)` for messages in logs.
fn describe(payload: &[u8]) -> String {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(payload) else {
        return "a message".into();
    };
    let event = map.get("event").and_then(Value::as_str).unwrap_or("?");
    match map.get("uuid").and_then(Value::as_str) {
        Some(uuid) => format!("event {event:?} (uuid {uuid})"),
        None => format!("event {event:?}"),
    }
}

/// A runner_ident as log lines show it: whole when short, else its start and its length.
fn shown_ident(ident: &str) -> String {
    const SHOWN: usize = 64;
    match ident.char_indices().nth(SHOWN) {
        None => format!("{ident:?}"),
        Some((cut, _)) => format!(
            "{:?}… ({} characters)",
            &ident[..cut],
            ident.chars().count()
        ),
    }
}

/// The replacement for redacted values.
pub const REDACTED: &str = "********";

/// Our own credential variables, always redacted.
const OWN_SECRETS: &[&str] = &[
    "RUNNER_NATS_PASSWORD",
    "RUNNER_NATS_TOKEN",
    "RUNNER_NATS_NKEYS_SEED",
    "RUNNER_NATS_USER_CREDENTIALS",
];

/// True for environment variable names whose values look secret.
pub fn looks_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    OWN_SECRETS.contains(&upper.as_str())
        || [
            "PASSWORD",
            "PASSWD",
            "SECRET",
            "TOKEN",
            "SEED",
            "CREDENTIAL",
            "APIKEY",
        ]
        .iter()
        .any(|w| upper.contains(w))
        || upper.ends_with("_KEY")
        || upper.ends_with("_PASS")
}

/// `value` with the credentials of the URLs in it redacted (`nats://me:pw@host` becomes
/// `nats://me:********@host`; a bare `nats://` or `tls://` userinfo is a token and goes
/// whole; a schemeless `me:pw@host` becomes `me:********@host`), or `None` when it holds
/// none.
///
/// `ServerAddr` takes a URL's userinfo up to its last '@', whatever the password holds
/// (`/`, `?`, `#`, `,`, spaces, line breaks), so this does too: a URL's part runs to where
/// the next URL begins (a scheme at the start, or after a space or a comma), and
/// its userinfo to the last '@' in it. An '@' further on (in a path, a query, an e-mail
/// address after the URL) redacts more than the password, never less. Text before the
/// first URL with a ':' before an '@' has everything from that ':' to the last '@'
/// redacted. A schemeless token (`t0ken@host`)
/// looks like an e-mail address and is left alone here; [`redact_env`] hides it in the
/// server list itself.
pub fn redact_url_credentials(value: &str) -> Option<String> {
    // Each URL: where its scheme begins and where its "://" is.
    let mut urls = Vec::new();
    let mut from = 0;
    while let Some(i) = value.get(from..).and_then(|r| r.find("://")) {
        let at = from + i;
        let bytes = value.as_bytes();
        let mut start = at;
        while start > from
            && bytes
                .get(start - 1)
                .is_some_and(|b| b.is_ascii_alphanumeric() || b"+-.".contains(b))
        {
            start -= 1;
        }
        from = at + 3;
        // A URL begins with a scheme at the start of the text or after a space or a comma
        // (a list); any other "://" (`nats://x://me:pw@h`, `"nats://...`) is part of the
        // text around it, whose ':'..'@' goes (see `redact_schemeless`).
        let begins = start < at
            && (start == 0
                || bytes
                    .get(start - 1)
                    .is_some_and(|b| b.is_ascii_whitespace() || *b == b','));
        if begins {
            urls.push((start, at));
        }
    }
    let mut out = String::with_capacity(value.len() + 8);
    let head_end = urls.first().map_or(value.len(), |&(start, _)| start);
    let mut changed = redact_schemeless(&value[..head_end], &mut out);
    for (k, &(start, at)) in urls.iter().enumerate() {
        let next = urls.get(k + 1).map_or(value.len(), |&(s, _)| s);
        out.push_str(&value[start..at + 3]);
        let scheme = value[start..at].to_ascii_lowercase();
        changed |= redact_userinfo(&value[at + 3..next], &scheme, &mut out);
    }
    changed.then_some(out)
}

/// The part of a URL after its "://", its userinfo redacted, appended to `out`.
fn redact_userinfo(part: &str, scheme: &str, out: &mut String) -> bool {
    let Some(i) = part.rfind('@') else {
        out.push_str(part);
        return false;
    };
    let userinfo = &part[..i];
    let changed = match userinfo.split_once(':') {
        Some((user, _)) => {
            out.push_str(user);
            out.push(':');
            out.push_str(REDACTED);
            true
        }
        None if matches!(scheme, "nats" | "tls") => {
            out.push_str(REDACTED);
            true
        }
        None => {
            out.push_str(userinfo);
            false
        }
    };
    out.push_str(&part[i..]);
    changed
}

/// Text without a scheme, appended to `out` with everything from its first ':' to its last
/// '@' redacted, if the ':' comes first. Not split at line breaks or quotes: `ServerAddr`
/// takes those inside a password too.
fn redact_schemeless(text: &str, out: &mut String) -> bool {
    match (text.find(':'), text.rfind('@')) {
        (Some(colon), Some(at)) if colon < at => {
            out.push_str(&text[..=colon]);
            out.push_str(REDACTED);
            out.push_str(&text[at..]);
            true
        }
        _ => {
            out.push_str(text);
            false
        }
    }
}

/// The status payload with secret-looking `env` values replaced, or `None` when there
/// is nothing to redact (the payload is then sent as it is).
pub fn redact_env(payload: &[u8]) -> Option<Vec<u8>> {
    // Only the `starting` status carries `env`; skip the parse for the others.
    if !payload.windows(5).any(|w| w == b"\"env\"") {
        return None;
    }
    let mut value: Value = serde_json::from_slice(payload).ok()?;
    let env = value.get_mut("env")?.as_object_mut()?;
    let mut changed = false;
    for (name, v) in env.iter_mut() {
        if looks_secret(name) {
            if v.as_str() != Some(REDACTED) {
                *v = Value::String(REDACTED.into());
                changed = true;
            }
        } else if let Some(redacted) = v.as_str().and_then(|text| {
            if name == "RUNNER_NATS_SERVERS" {
                redact_server_list(text)
            } else {
                redact_url_credentials(text)
            }
        }) {
            *v = Value::String(redacted);
            changed = true;
        }
    }
    if !changed {
        return None;
    }
    serde_json::to_vec(&value).ok()
}

/// Our own server list with every userinfo hidden: a schemeless `t0ken@host` is a token
/// here, not an e-mail address. A list whose commas seem to fall inside a secret (which
/// the list refuses) is hidden whole: its items before an '@' may be parts of the secret.
fn redact_server_list(list: &str) -> Option<String> {
    if crate::url::split_inside_credentials(list) {
        return Some("********".into());
    }
    let mut changed = false;
    let items: Vec<String> = list
        .split(',')
        .map(|item| {
            let Some(at) = item.rfind('@') else {
                return item.to_owned();
            };
            let userinfo_start = item
                .find("://")
                .map_or_else(|| item.len() - item.trim_start().len(), |i| i + 3);
            let start = userinfo_start.min(at);
            // As in any URL: a user name stays, a token goes whole.
            let mut redacted = item[..start].to_owned();
            changed |= redact_userinfo(&item[start..], "nats", &mut redacted);
            redacted
        })
        .collect();
    changed.then(|| items.join(","))
}

/// Oversized events named one by one in a run; the rest are counted, and the run's summary
/// says how many.
const OVERSIZE_LINES: u64 = 10;

/// Values longer than this are replaced when an event is truncated.
const TRUNCATE_OVER: usize = 1024;

/// The event with its large `stdout` and `event_data.res` replaced by a marker.
pub fn truncate_event(payload: &[u8]) -> Option<Vec<u8>> {
    let mut value: Value = serde_json::from_slice(payload).ok()?;
    let marker = |v: &Value| {
        let len = v.to_string().len();
        Value::String(format!("<truncated by ansible-runner-nats: {len} bytes>"))
    };
    let obj = value.as_object_mut()?;
    if let Some(stdout) = obj.get_mut("stdout") {
        if stdout.to_string().len() > TRUNCATE_OVER {
            *stdout = marker(stdout);
        }
    }
    if let Some(res) = obj
        .get_mut("event_data")
        .and_then(Value::as_object_mut)
        .and_then(|d| d.get_mut("res"))
    {
        if res.to_string().len() > TRUNCATE_OVER {
            *res = marker(res);
        }
    }
    serde_json::to_vec(&value).ok()
}

#[cfg(test)]
mod tests {
    use super::config::tests::env;
    use super::{config, looks_secret, redact_url_credentials, Emitter, Kind};
    use std::sync::Arc;

    #[test]
    fn a_close_that_raced_the_terminal_status_does_not_finish_the_run_again() {
        let env = env(&[
            ("RUNNER_NATS_SUBJECT_ID", "s"),
            ("RUNNER_NATS_SERVERS", "nats://127.0.0.1:1"),
            ("RUNNER_NATS_FLUSH_TIMEOUT", "0.05"),
        ]);
        let emitter = Emitter::new();
        let load = || config::load(&env, None, "h");
        emitter.publish("raced", Kind::Status("starting"), b"{}", load);
        // What a close had taken from the map before the terminal status ended the run.
        let taken = Arc::clone(emitter.lock_runs().get("raced").expect("the run is open"));
        let end = emitter.publish("raced", Kind::Status("successful"), b"{}", load);
        assert!(end.summary.is_some());
        let late = emitter.close_entries(vec![("raced".into(), taken)]);
        assert!(late.errors.is_empty(), "{:?}", late.errors);
    }

    #[test]
    fn an_unusable_runner_ident_is_reported_short_and_nothing_is_published() {
        let env = env(&[
            ("RUNNER_NATS_SUBJECT_ID", "s"),
            ("RUNNER_NATS_SERVERS", "nats://127.0.0.1:1"),
        ]);
        let emitter = Emitter::new();
        let long = "x".repeat(100_000);
        for (ident, want) in [
            (
                long.as_str(),
                "(100000 characters): runner_ident (100000 bytes) makes subjects of 100028 bytes",
            ),
            (
                "a b",
                "\"a b\": runner_ident is not a valid subject token (contains whitespace)",
            ),
        ] {
            let r = emitter.publish(ident, Kind::Status("starting"), b"{}", || {
                config::load(&env, None, "h")
            });
            assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
            assert!(r.errors[0].contains(want), "{}", r.errors[0]);
            assert!(r.errors[0].len() < 300, "{} bytes", r.errors[0].len());
            assert_eq!(emitter.counters(ident), None);
        }
    }

    #[test]
    fn url_credentials_are_redacted_and_the_rest_kept() {
        let table = [
            (
                "nats://alice:s3cr3t@host:4222",
                Some("nats://alice:********@host:4222"),
            ),
            ("nats://t0ken@host", Some("nats://********@host")),
            ("tls://t0ken@host", Some("tls://********@host")),
            (
                "nats://a:p1@h1:1, nats://h2:2,nats://b:p2@h3",
                Some("nats://a:********@h1:1, nats://h2:2,nats://b:********@h3"),
            ),
            (
                "postgres://u:pw@db/app?x=1",
                Some("postgres://u:********@db/app?x=1"),
            ),
            ("ssh://git@github.com/x", None),
            ("nats://host:4222", None),
            ("/usr/bin:/bin", None),
            ("mail me@example.com", None),
            // Nothing secret either way; more hidden rather than less.
            ("://@", Some(":********@")),
            // A "://" inside a URL's userinfo is no new URL.
            ("nats://x://me:pw@h", Some("nats://x:********@h")),
            ("NATS://://me:pw@t/", Some("NATS://:********@t/")),
            ("x://é:ü@ñ", Some("x://é:********@ñ")),
            // Passwords that `ServerAddr` accepts, holding what ends an authority elsewhere.
            (
                "nats://me:pa/ss@host:4222",
                Some("nats://me:********@host:4222"),
            ),
            ("nats://me:p?ss@host", Some("nats://me:********@host")),
            ("nats://me:p#ss@host", Some("nats://me:********@host")),
            ("nats://me:p;ss@host", Some("nats://me:********@host")),
            ("nats://me:p ss@host", Some("nats://me:********@host")),
            ("nats://tok/en@host", Some("nats://********@host")),
            (
                "nats://a:p/1@h1,nats://b:p 2@h2",
                Some("nats://a:********@h1,nats://b:********@h2"),
            ),
            // An '@' in the next URL is that URL's.
            (
                "nats://a:pw@h1 https://x/@y",
                Some("nats://a:********@h1 https://x/@y"),
            ),
            // A ',' inside the password or token (which `ServerAddr` takes whole).
            (
                "nats://me:hunter,22@host:4222",
                Some("nats://me:********@host:4222"),
            ),
            (
                "  nats://me,hunter22@[::1]:4222  ",
                Some("  nats://********@[::1]:4222  "),
            ),
            // Without a scheme.
            ("me:password@host", Some("me:********@host")),
            ("h1:4222,me:p,w@h2", Some("h1:********@h2")),
            // More than the password goes rather than a part of it: `ServerAddr` takes a
            // quote or a line break inside a password too.
            ("\"a\": \"me:pw@db\"", Some("\"a\":********@db\"")),
            ("tls:os\n0ken@host", Some("tls:********@host")),
            ("nats://me:pa\nss@host", Some("nats://me:********@host")),
            ("mailto me@example.com", None),
        ];
        for (value, want) in table {
            assert_eq!(redact_url_credentials(value).as_deref(), want, "{value}");
        }
    }

    #[test]
    fn our_server_list_hides_every_userinfo() {
        use super::redact_server_list;
        let table = [
            (
                "nats://alice:s3cr3t@h:1,nats://h:2",
                Some("nats://alice:********@h:1,nats://h:2"),
            ),
            ("t0ken@h:1, nats://h:2", Some("********@h:1, nats://h:2")),
            (" t0ken@h", Some(" ********@h")),
            // A ',' inside the secret: the list goes whole.
            ("nats://me,hunter22@h", Some("********")),
            ("bob:SEK,RIT@h:1", Some("********")),
            ("bob:S,E,K@h:1, nats://h:2", Some("********")),
            ("nats://h:1,nats://h:2", None),
        ];
        for (value, want) in table {
            assert_eq!(redact_server_list(value).as_deref(), want, "{value}");
        }
    }

    #[test]
    fn secret_names() {
        for name in [
            "DB_PASSWD",
            "SMTP_PASS",
            "STRIPE_APIKEY",
            "MY_API_KEY",
            "GH_TOKEN",
        ] {
            assert!(looks_secret(name), "{name}");
        }
        for name in [
            "PATH",
            "HOME",
            "PASSENGER_COUNT",
            "GIT_AUTHOR_NAME",
            "KEYBOARD",
        ] {
            assert!(!looks_secret(name), "{name}");
        }
    }
}

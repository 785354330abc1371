//! The blocking NATS client.
//!
//! A [`Client`] owns one **writer** thread, which also supervises reconnects, and one
//! **reader** thread per connection. `publish` encodes the message into a bounded buffer
//! and returns; the writer moves that buffer to the socket in batches and sends keep-alive
//! PINGs; the reader parses what the server sends,
//! answers its PINGs, completes flushes on PONG, delivers messages to subscriptions and
//! reports `-ERR`s as [`Event::ServerError`].
//!
//! ```no_run
//! use std::time::Duration;
//!
//! let client = ansible_runner_nats::client::connect("nats://127.0.0.1:4222")?;
//! let sub = client.subscribe("greetings")?;
//! client.publish("greetings", b"hello")?;
//! client.flush(Duration::from_secs(1))?;
//! let msg = sub.next_timeout(Duration::from_secs(1))?;
//! assert_eq!(msg.payload, b"hello");
//! client.close()?;
//! # Ok::<(), ansible_runner_nats::Error>(())
//! ```

mod core;
mod handshake;
mod options;
pub(crate) mod pool;
mod request;
pub(crate) mod transport;

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub use options::{EventCallback, Options};
pub use request::PendingReply;

use self::core::{ended, lock, wait, Outlet, Phase, Shared, Sink, State, Sub, LINGER_MAX_BATCH};
use crate::error::{Error, Result};
use crate::headers::HeaderMap;
use crate::proto::{encode_pub, ClientOp, ServerInfo};
use crate::subject;
use handshake::establish;
use pool::Pool;
use transport::{later, remaining};

/// The `max_payload` assumed before any server has told its own: nats-server's default.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// Connects to one server (or a comma-separated list) with default [`Options`].
pub fn connect(url: &str) -> Result<Client> {
    Options::new().servers(url)?.connect()
}

/// A message received on a [`Subscription`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The subject it was published to.
    pub subject: String,
    /// The reply subject, if the publisher gave one.
    pub reply: Option<String>,
    /// The headers, for messages published with headers.
    pub headers: Option<HeaderMap>,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Something that happened to the connection, delivered to [`Options::event_callback`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A connection to this server completed its handshake.
    Connected {
        /// The server, without credentials.
        server: String,
    },
    /// The connection was lost. Unless reconnecting is off, the client now buffers
    /// publishes (up to [`Options::pending_size`]) and tries the server pool.
    Disconnected {
        /// Why, as readable text.
        reason: String,
    },
    /// A new connection replaced a lost one; subscriptions were renewed and buffered
    /// messages sent.
    Reconnected {
        /// The server, without credentials.
        server: String,
    },
    /// One reconnect attempt failed; more follow unless the attempts are used up.
    ReconnectFailed {
        /// The server tried.
        server: String,
        /// Why it failed.
        reason: String,
    },
    /// The server sent `-ERR`. Permission violations leave the connection open (a refused
    /// publish is counted in [`Statistics::publish_denied`]); most other errors are
    /// followed by [`Event::Disconnected`].
    ServerError(String),
    /// The server entered lame duck mode and will soon close the connection: the client
    /// confirms what it wrote there and moves to another server of the pool.
    LameDuck,
    /// A subscription's queue was full and a message was dropped.
    SlowConsumer {
        /// The subscription's id.
        sid: u64,
    },
    /// Buffered messages were dropped (see [`Statistics::oversized`] and
    /// [`Statistics::headers_unsupported`]).
    Dropped {
        /// How many.
        messages: u64,
        /// Why.
        reason: String,
    },
    /// The client is closed for good.
    Closed,
}

/// Counters since the client was created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Statistics {
    /// Messages queued for sending.
    pub out_msgs: u64,
    /// Payload bytes queued for sending.
    pub out_bytes: u64,
    /// Messages the server delivered (MSG and HMSG), those for a subscription that had
    /// just ended included.
    pub in_msgs: u64,
    /// Payload bytes of those messages.
    pub in_bytes: u64,
    /// Messages refused by `publish` because a buffer was full.
    pub dropped: u64,
    /// Messages dropped because a subscription's queue was full.
    pub slow_consumer_drops: u64,
    /// Successful reconnections.
    pub reconnects: u64,
    /// Messages buffered while the server's `max_payload` was unknown and then found over
    /// it: dropped when the connection came up (also counted in `dropped`).
    pub oversized: u64,
    /// Messages with headers buffered before the connection to a server without header
    /// support: dropped when the connection came up (also counted in `dropped`). Once
    /// the server is known, such publishes fail at the call.
    pub headers_unsupported: u64,
    /// Publishes the server discarded because this user may not publish to their subject
    /// or reply subject (`-ERR 'Permissions Violation for Publish …'`, one per message; the
    /// connection stays open). Those messages went to nobody. The server answers in order:
    /// once a flush returned, every refusal of what was published before it is counted.
    pub publish_denied: u64,
    /// Messages written to a connection that ended before the server confirmed them, and
    /// not written again (without [`Options::resend_unconfirmed`]; with it, those the
    /// server reached next would refuse: over its `max_payload`, or with headers it does
    /// not support): they may not have arrived. Reported by the next flush as
    /// [`Error::Lost`]. Not in `oversized`, which counts messages never sent.
    pub lost: u64,
}

/// A connection to a NATS server. Cheap to clone: clones share the connection, which
/// closes (flushing what was published, bounded by the flush timeout) when the last
/// clone is dropped or [`Client::close`] is called.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = close(&self.shared, self.shared.opts.flush_timeout);
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.inner.shared.state();
        f.debug_struct("Client")
            .field("server_id", &st.info.server_id)
            .field("phase", &st.phase)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects with `opts`, trying each server of the pool once until one completes the
    /// handshake. With [`Options::retry_on_failed_connect`], a client is returned even
    /// when none did; it keeps trying in the background.
    pub fn connect_with(opts: Options) -> Result<Client> {
        let servers = if opts.servers.is_empty() {
            vec!["nats://127.0.0.1:4222".parse()?]
        } else {
            opts.servers.clone()
        };
        let mut pool = Pool::new(
            &servers,
            !opts.no_randomize,
            opts.tls.server_name.as_deref(),
        );
        let mut errors = Vec::new();
        let mut first = None;
        let attempts = if opts.connect_in_background {
            0
        } else {
            pool.len()
        };
        for _ in 0..attempts {
            let Some(entry) = pool.next(None) else { break };
            match establish(&opts, &entry.addr, &entry.tls_name, &mut |_| {}) {
                Ok(est) => {
                    first = Some((est, entry));
                    break;
                }
                Err(e) => {
                    pool.record(&entry.addr, false, Instant::now());
                    errors.push(e);
                }
            }
        }
        if first.is_none() && !opts.retry_on_failed_connect && !opts.connect_in_background {
            let last = errors.pop().unwrap_or(Error::Closed);
            return Err(if servers.len() == 1 {
                last
            } else {
                Error::NoServers(Box::new(last))
            });
        }
        let shared = Arc::new(Shared::new(opts, pool));
        if let Some(e) = errors.last() {
            shared.state().last_error = Some(e.to_string());
        }
        core::start(&shared, first)?;
        Ok(Client {
            inner: Arc::new(Inner { shared }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// Publishes `payload` on `subject`. Returns once the message is queued; the writer
    /// thread sends it.
    ///
    /// Fails at once, queueing nothing, if the subject is invalid, the message exceeds
    /// the server's `max_payload`, the client is closed, or the client is reconnecting
    /// and the reconnect buffer ([`Options::pending_size`]) is full. While connected, a
    /// full flusher queue makes it wait for room while the writer keeps taking from it,
    /// and fail once the writer has taken nothing for [`Options::publish_wait`]. Every
    /// refusal for lack of room is counted in [`Statistics::dropped`].
    pub fn publish(&self, subject: &str, payload: &[u8]) -> Result<()> {
        self.enqueue(subject, None, None, payload)
    }

    /// Publishes with a reply subject, for request/reply.
    pub fn publish_with_reply(&self, subject: &str, reply: &str, payload: &[u8]) -> Result<()> {
        subject::validate_publish(reply)?;
        self.enqueue(subject, Some(reply), None, payload)
    }

    /// Publishes with headers (HPUB). The server must support headers.
    pub fn publish_with_headers(
        &self,
        subject: &str,
        headers: &HeaderMap,
        payload: &[u8],
    ) -> Result<()> {
        self.enqueue(subject, None, Some(headers), payload)
    }

    /// Publishes with a reply subject and headers.
    pub fn publish_with_reply_and_headers(
        &self,
        subject: &str,
        reply: &str,
        headers: &HeaderMap,
        payload: &[u8],
    ) -> Result<()> {
        subject::validate_publish(reply)?;
        self.enqueue(subject, Some(reply), Some(headers), payload)
    }

    fn enqueue(
        &self,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&HeaderMap>,
        payload: &[u8],
    ) -> Result<()> {
        let shared = self.shared();
        let opts = &shared.opts;
        let header_len = headers.map_or(0, HeaderMap::encoded_len);
        let size = payload.len() + header_len;
        let mut st = shared.state();
        // Publishers mostly repeat one subject: it is checked again only when it changes.
        if st.valid_subject.as_deref() != Some(subject) {
            subject::validate_publish(subject)?;
            let valid = st.valid_subject.get_or_insert_with(String::new);
            valid.clear();
            valid.push_str(subject);
        }
        check_open(&st)?;
        let max = st.max_payload();
        if size > max {
            return Err(Error::MaxPayload { size, max });
        }
        // Before the first connection the server's support is unknown: assume it.
        if headers.is_some() && !st.info.headers && !st.info.server_id.is_empty() {
            return Err(Error::Config(
                "headers: the server does not support headers".into(),
            ));
        }
        if st.phase == Phase::Reconnecting {
            if st.out.len() + size > opts.pending_size {
                st.stats.dropped += 1;
                return Err(Error::BufferFull {
                    which: "reconnect buffer",
                    limit: opts.pending_size,
                });
            }
        } else if !st.out.is_empty() && st.out.len() + size > opts.flusher_queue_size {
            while !st.out.is_empty() && st.out.len() + size > opts.flusher_queue_size {
                check_open(&st)?;
                // Wait only while the writer keeps taking from the queue, or writing what
                // it took. Once neither happened for `publish_wait` (a server that stopped
                // reading), every publish fails at once until the queue moves again: a
                // stall costs the publishers one `publish_wait`, not one each.
                let moved = st
                    .out_moved
                    .max(shared.written_at())
                    .unwrap_or_else(Instant::now);
                let left = remaining(later(moved, opts.publish_wait));
                if left.is_zero() {
                    st.stats.dropped += 1;
                    return Err(Error::BufferFull {
                        which: "flusher queue",
                        limit: opts.flusher_queue_size,
                    });
                }
                st = wait(&shared.progress, st, left);
            }
            check_open(&st)?;
        }
        let was_empty = st.out.is_empty();
        // With a linger, a writer that looks again within it needs no wake-up call.
        let mut writer_looks = false;
        if was_empty {
            let now = Instant::now();
            st.out_moved = Some(now);
            if !opts.write_linger.is_zero() {
                st.out_since = Some(now);
                writer_looks = st
                    .writer_looks_at
                    .is_some_and(|t| t <= later(now, opts.write_linger));
            }
        }
        let st = &mut *st;
        let before = st.out.len();
        match headers {
            None => encode_pub(&mut st.out, subject, reply, None, payload),
            Some(h) => {
                st.scratch.clear();
                h.encode(&mut st.scratch);
                encode_pub(&mut st.out, subject, reply, Some(&st.scratch), payload);
            }
        }
        st.out_msgs += 1;
        st.stats.out_msgs += 1;
        st.stats.out_bytes += payload.len() as u64;
        // Wake the writer for a new batch, unless it looks anyway, and when a lingering
        // batch becomes large enough to go at once.
        let grown = before < LINGER_MAX_BATCH && st.out.len() >= LINGER_MAX_BATCH;
        let wake = (was_empty && !writer_looks) || (grown && !opts.write_linger.is_zero());
        if wake && st.phase == Phase::Connected {
            shared.work.notify_one();
        }
        Ok(())
    }

    /// Waits until the server has processed everything published so far (a PING/PONG
    /// round trip), up to `timeout`. While reconnecting it first waits for a connection.
    /// If the connection is lost meanwhile, it fails with [`Error::Disconnected`] (data
    /// published before may not have arrived) unless [`Options::resend_unconfirmed`] is
    /// on: then the unconfirmed messages are written again on the next connection and
    /// the flush waits for that one's confirmation, within the same `timeout`.
    ///
    /// Without `resend_unconfirmed`, messages written to a connection that was lost
    /// before the flush was called may not have arrived either: once the server has
    /// confirmed the rest, the flush fails with [`Error::Lost`] and their count. Each
    /// loss is told once, to the first flush that covers it (also counted in
    /// [`Statistics::lost`], and again in [`Client::close`]'s final count).
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        flush(self.shared(), timeout)
    }

    /// Subscribes to `subject` (wildcards allowed).
    pub fn subscribe(&self, subject: &str) -> Result<Subscription> {
        self.subscribe_inner(subject, None)
    }

    /// Subscribes as a member of a queue group: each message goes to one member.
    pub fn queue_subscribe(&self, subject: &str, queue: &str) -> Result<Subscription> {
        subject::validate_queue_group(queue)?;
        self.subscribe_inner(subject, Some(queue))
    }

    fn subscribe_inner(&self, subject: &str, queue: Option<&str>) -> Result<Subscription> {
        subject::validate_subscribe(subject)?;
        let shared = &self.inner.shared;
        let sid = shared.next_sid.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::sync_channel(shared.opts.subscription_capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let denied = Arc::new(OnceLock::new());
        let mut st = shared.state();
        check_open(&st)?;
        lock(&shared.subs).insert(
            sid,
            Sub::new(
                subject,
                queue,
                Sink::Channel(Outlet {
                    tx,
                    denied: Arc::clone(&denied),
                }),
                Arc::clone(&dropped),
            ),
        );
        // While reconnecting, the new connection subscribes from the table above.
        if st.phase == Phase::Connected {
            let op = ClientOp::Sub {
                subject,
                queue_group: queue,
                sid,
            };
            shared.queue_control(&mut st, op, true);
        }
        Ok(Subscription {
            sid,
            subject: subject.to_owned(),
            rx,
            dropped,
            denied,
            limit: Cell::new(None),
            shared: Arc::clone(shared),
            active: true,
        })
    }

    /// The server's INFO (the latest one received).
    pub fn server_info(&self) -> ServerInfo {
        self.shared().state().info.clone()
    }

    /// The largest message (payload and headers) the server accepts: its `max_payload`,
    /// or nats-server's default of 1 MiB before any server has told its own.
    pub fn max_payload(&self) -> usize {
        self.shared().state().max_payload()
    }

    /// The counters so far.
    pub fn statistics(&self) -> Statistics {
        let shared = self.shared();
        let mut stats = {
            let st = shared.state();
            Statistics {
                lost: st.unconfirmed_lost,
                ..st.stats
            }
        };
        stats.in_msgs = shared.in_msgs.load(Ordering::Relaxed);
        stats.in_bytes = shared.in_bytes.load(Ordering::Relaxed);
        stats.slow_consumer_drops = shared.slow_consumer_drops.load(Ordering::Relaxed);
        stats
    }

    /// The last error that affected the connection (a server `-ERR`, a failed attempt,
    /// or why the connection was lost).
    pub fn last_error(&self) -> Option<String> {
        self.shared().state().last_error.clone()
    }

    /// True while a connection is up.
    pub fn is_connected(&self) -> bool {
        self.shared().state().phase == Phase::Connected
    }

    /// True once the client is closed for good (by [`Client::close`], or because the
    /// reconnect attempts ran out).
    pub fn is_closed(&self) -> bool {
        self.shared().state().phase == Phase::Closed
    }

    /// Sends everything published so far, waits for the server to confirm it, then closes
    /// the connection and joins the client's threads, all within the flush timeout: at
    /// its end the connection is shut down, even in the middle of a stalled write or a
    /// handshake (only a TCP connect or name lookup under way runs on, within the connect
    /// timeout).
    /// If not everything was confirmed (the server was unreachable, or did not answer in
    /// time) it fails with [`Error::NotDelivered`] and the count; the client is closed
    /// either way. Closing twice is fine. Without [`Options::resend_unconfirmed`], the
    /// count includes what was written to a connection that was lost before the server
    /// confirmed it: such messages may have arrived, or not, and are not written again.
    /// Called from the event callback, which runs on the client's own threads, it only
    /// starts the close and returns `Ok`; a `close` from another thread then waits for
    /// the end and reports it.
    pub fn close(&self) -> Result<()> {
        close(self.shared(), self.shared().opts.flush_timeout)
    }

    /// [`Client::close`] with `timeout` instead of the flush timeout as the bound of its
    /// wait for the server, for a caller that has already spent part of it.
    pub fn close_within(&self, timeout: Duration) -> Result<()> {
        close(self.shared(), timeout)
    }
}

fn check_open(st: &State) -> Result<()> {
    match st.phase {
        Phase::Connected | Phase::Reconnecting => Ok(()),
        Phase::Closing | Phase::Closed => Err(Error::Closed),
    }
}

fn flush(shared: &Shared, timeout: Duration) -> Result<()> {
    if shared.on_own_thread() {
        // The PONG waited for would be read, or the PING written, by this very thread.
        return Err(Error::Timeout {
            what: "flush from an event callback (the client's own thread)",
            after: Duration::ZERO,
        });
    }
    let deadline = later(Instant::now(), timeout);
    let timed_out = || Error::Timeout {
        what: "flush",
        after: timeout,
    };
    let mut st = shared.state();
    loop {
        // A lame duck connection is being left: flush on the next one.
        while st.phase == Phase::Reconnecting || (st.phase == Phase::Connected && st.lame_duck) {
            let left = remaining(deadline);
            if left.is_zero() {
                return Err(timed_out());
            }
            st = wait(&shared.progress, st, left);
        }
        if st.phase != Phase::Connected {
            return Err(Error::Closed);
        }
        let generation = st.generation;
        // Lost so far: messages published before this flush, on connections that ended
        // before confirming them. What the current connection may lose later was published
        // after its ticket, or makes this flush fail below.
        let lost = st.unconfirmed_lost;
        let ticket = shared.request_ping(&mut st);
        loop {
            if st.generation != generation {
                // Its PONG may have come just before the connection ended.
                if st
                    .ended
                    .is_some_and(|(g, pongs)| g == generation && pongs >= ticket)
                {
                    return untold_losses(&mut st, lost);
                }
                break;
            }
            if st.pongs_received >= ticket {
                return untold_losses(&mut st, lost);
            }
            let left = remaining(deadline);
            if left.is_zero() {
                return Err(timed_out());
            }
            st = wait(&shared.progress, st, left);
        }
        // The connection was lost before the PONG. Unconfirmed messages are written again
        // on the next connection when `resend_unconfirmed` is on, so a PING there confirms
        // them too; otherwise they may be gone, and saying so is the only honest answer.
        if !shared.opts.resend_unconfirmed {
            // This loss, and any before it, are told by this answer.
            st.lost_told = st.unconfirmed_lost;
            return Err(Error::Disconnected);
        }
    }
}

/// A confirmed flush's answer: [`Error::Lost`] if messages published before it (`lost`
/// counted when it began) were lost with an earlier connection and no flush said so yet.
fn untold_losses(st: &mut State, lost: u64) -> Result<()> {
    let untold = lost.saturating_sub(st.lost_told);
    if untold == 0 {
        return Ok(());
    }
    st.lost_told = lost;
    Err(Error::Lost {
        messages: untold,
        reason: st
            .lost_reason
            .clone()
            .unwrap_or_else(|| "connection lost".into()),
    })
}

fn close(shared: &Shared, timeout: Duration) -> Result<()> {
    let deadline = later(Instant::now(), timeout);
    if shared.on_own_thread() {
        // From an event callback: the threads to wait for include this one. Start the
        // close (what is queued is still written); a `close` from another thread waits
        // for it and reports.
        let mut st = shared.state();
        if st.phase != Phase::Closed {
            st.phase = Phase::Closing;
        }
        drop(st);
        shared.work.notify_all();
        shared.progress.notify_all();
        return Ok(());
    }
    let open = check_open(&shared.state()).is_ok();
    if open {
        // Its outcome shows in the undelivered count below.
        let _ = flush(shared, timeout);
        let mut st = shared.state();
        if st.phase != Phase::Closed {
            st.phase = Phase::Closing;
        }
    }
    shared.work.notify_all();
    shared.progress.notify_all();
    // What is queued is still written, within the same bound. A write blocked on a server
    // that stopped reading, or a handshake with one that does not answer, would hold the
    // supervisor far longer (the stall detection, the connect timeout): at the deadline
    // its socket is shut down. Only a TCP connect or name lookup under way is not cut short.
    let mut st = shared.state();
    while st.phase != Phase::Closed {
        let left = remaining(deadline);
        if left.is_zero() {
            st.abort_socket();
            break;
        }
        st = wait(&shared.progress, st, left);
    }
    drop(st);
    let handle = lock(&shared.supervisor).take();
    if let Some(h) = handle {
        // A supervisor that panicked has nothing left for us to clean up.
        let _ = h.join();
    } else {
        // Another close is joining it: its end is ours to report too. After the abort
        // only a TCP connect or name lookup under way can hold it, for the connect timeout at
        // most.
        let until = later(Instant::now(), shared.opts.connect_timeout);
        let mut st = shared.state();
        loop {
            let left = remaining(until);
            if st.phase == Phase::Closed || left.is_zero() {
                break;
            }
            st = wait(&shared.progress, st, left);
        }
    }
    let st = shared.state();
    match st.undelivered {
        0 => Ok(()),
        messages => Err(Error::NotDelivered {
            messages,
            // All lost with connections that ended: why the last of those ended (a
            // later failed reconnect, say, is not why).
            reason: match &st.lost_reason {
                Some(lost) if messages == st.unconfirmed_lost => lost.clone(),
                _ => st
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "the server did not confirm them in time".into()),
            },
        }),
    }
}

/// Messages on one subscription. Dropping it unsubscribes.
pub struct Subscription {
    sid: u64,
    subject: String,
    /// Each message with its number among those delivered to the subscription.
    rx: Receiver<(u64, Message)>,
    dropped: Arc<AtomicU64>,
    /// Set when the server refused the subscription.
    denied: Arc<OnceLock<String>>,
    /// The automatic unsubscribe's limit: messages numbered beyond it, which arrived
    /// before it was set, are not handed out.
    limit: Cell<Option<u64>>,
    shared: Arc<Shared>,
    active: bool,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("sid", &self.sid)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// The subscription id used on the wire.
    pub fn sid(&self) -> u64 {
        self.sid
    }

    /// The subject (or wildcard pattern) subscribed to.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Waits up to `timeout` for the next message. Fails with [`Error::Timeout`] when
    /// none came; once the subscription has ended and every message received before has
    /// been taken, with [`Error::PermissionDenied`] if the server refused it (this user
    /// may not subscribe to its subject, or in its queue group), else with
    /// [`Error::Closed`] (client closed, or its automatic unsubscribe limit reached).
    pub fn next_timeout(&self, timeout: Duration) -> Result<Message> {
        match self.rx.recv_timeout(timeout) {
            Ok(numbered) => self
                .within_limit(numbered)
                .ok_or_else(|| ended(&self.denied)),
            Err(RecvTimeoutError::Timeout) => Err(Error::Timeout {
                what: "receive",
                after: timeout,
            }),
            Err(RecvTimeoutError::Disconnected) => Err(ended(&self.denied)),
        }
    }

    /// The next message if one is waiting.
    pub fn try_next(&self) -> Option<Message> {
        self.within_limit(self.rx.try_recv().ok()?)
    }

    /// Waits for the next message, as long as it takes; `None` once the subscription has
    /// ended and every message received before has been taken ([`Subscription::next_timeout`]
    /// tells why it ended). Not from the event callback: it runs on the thread that
    /// delivers the messages, which would wait for itself.
    pub fn recv(&self) -> Option<Message> {
        self.within_limit(self.rx.recv().ok()?)
    }

    /// The message, unless its number is beyond the limit (the subscription ended before it).
    fn within_limit(&self, (number, message): (u64, Message)) -> Option<Message> {
        match self.limit.get() {
            Some(max) if number > max => None,
            _ => Some(message),
        }
    }

    /// The messages as they come ([`Subscription::recv`] in a loop), until the
    /// subscription ends: with [`Subscription::unsubscribe_after`], a bounded batch.
    ///
    /// ```no_run
    /// # let client = ansible_runner_nats::client::connect("nats://127.0.0.1:4222")?;
    /// let sub = client.subscribe("pub.ansible.runner.>")?;
    /// sub.unsubscribe_after(10)?;
    /// for message in &sub {
    ///     println!("{}: {} bytes", message.subject, message.payload.len());
    /// }
    /// # Ok::<(), ansible_runner_nats::Error>(())
    /// ```
    pub fn iter(&self) -> Messages<'_> {
        Messages { sub: self }
    }

    /// Messages dropped because this subscription's queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Ends the subscription once `max` messages in all have been delivered to it since
    /// the subscribe (NATS's `UNSUB <sid> <max>`; nats.go's `AutoUnsubscribe`): the
    /// server stops sending there, the client ends it when the last one arrives, and a
    /// reconnect asks the new server for what is left. If `max` came already, it ends now,
    /// and of the messages that arrived before, those beyond `max` are not handed out.
    /// Messages a slow consumer dropped count: the server delivered them. A limit can be
    /// lowered, not raised ([`Error::Config`]): the server may have ended the subscription
    /// at the first one already. Beyond 999,999,999 (more digits than nats-server reads)
    /// the client alone counts, and ends the server's subscription at the limit.
    pub fn unsubscribe_after(&self, max: u64) -> Result<()> {
        // The state first, as a reconnect takes them: its SUB and this UNSUB cannot cross.
        let mut st = self.shared.state();
        check_open(&st)?;
        // What to tell the server: `Some(None)` a plain UNSUB, `Some(Some(n))` UNSUB n.
        let unsub = {
            let mut subs = lock(&self.shared.subs);
            // Messages beyond the limit that arrived already are not handed out.
            let lower = |limit: &Cell<Option<u64>>| {
                limit.set(Some(limit.get().map_or(max, |set| set.min(max))));
            };
            let Some(sub) = subs.get_mut(&self.sid) else {
                // Ended already: its limit, or the server's refusal.
                lower(&self.limit);
                return Ok(());
            };
            if let Some(set) = sub.max.filter(|set| max > *set) {
                return Err(Error::Config(format!(
                    "subscription {}: its limit is {set} messages; a limit can be lowered, not raised (the server may have ended it at {set} already)",
                    self.sid
                )));
            }
            sub.max = Some(max);
            lower(&self.limit);
            if sub.limit_reached() {
                subs.remove(&self.sid);
                Some(None)
            } else {
                sub.server_max().map(Some)
            }
        };
        if let Some(max) = unsub {
            self.shared.queue_unsub(&mut st, self.sid, max);
        }
        Ok(())
    }

    /// Ends the subscription now.
    pub fn unsubscribe(mut self) -> Result<()> {
        self.active = false;
        lock(&self.shared.subs).remove(&self.sid);
        self.send_unsub(None)
    }

    fn send_unsub(&self, max: Option<u64>) -> Result<()> {
        let mut st = self.shared.state();
        check_open(&st)?;
        self.shared.queue_unsub(&mut st, self.sid, max);
        Ok(())
    }
}

/// The messages of a [`Subscription`], until it ends (see [`Subscription::iter`]).
#[derive(Debug)]
pub struct Messages<'a> {
    sub: &'a Subscription,
}

impl Iterator for Messages<'_> {
    type Item = Message;

    fn next(&mut self) -> Option<Message> {
        self.sub.recv()
    }
}

impl<'a> IntoIterator for &'a Subscription {
    type Item = Message;
    type IntoIter = Messages<'a>;

    fn into_iter(self) -> Messages<'a> {
        self.iter()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.active && lock(&self.shared.subs).remove(&self.sid).is_some() {
            // The client may be closed already; then there is nothing to tell the server.
            let _ = self.send_unsub(None);
        }
    }
}

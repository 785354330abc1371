//! The machinery behind [`crate::client::Client`]: shared state, the supervisor (writer)
//! thread that owns the connection's life, and the reader thread of each connection.
//!
//! Outbound bytes wait in three buffers, written in this order on each round:
//! `pre` (SUB and PONG), `out` (the messages: PUB and HPUB only, so they can be kept and
//! replayed), then `post` (UNSUB) followed by the PINGs that flushes and keep-alives asked
//! for. Because a flush's PING is written after every message queued before it, its PONG
//! proves the server read them.

use std::collections::{HashMap, VecDeque};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle, ThreadId};
use std::time::{Duration, Instant};

use super::handshake::{establish, server_error, Established};
use super::pool::{jitter, Entry, Pool};
use super::transport::{later, remaining, ReadHalf, WriteHalf};
use super::{Event, Message, Options, Statistics, DEFAULT_MAX_PAYLOAD};
use crate::error::{Error, ProtoError, Result};
use crate::headers::HeaderMap;
use crate::proto::{parse_client_op, parse_server_op, ClientOp, Msg, ServerInfo, ServerOp, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Connected,
    /// Between connections: publishes go to the reconnect buffer.
    Reconnecting,
    /// `close()` was called: write what is queued, then stop.
    Closing,
    Closed,
}

pub(crate) struct State {
    pub(crate) phase: Phase,
    pub(crate) pre: Vec<u8>,
    pub(crate) out: Vec<u8>,
    /// Messages in `out`.
    pub(crate) out_msgs: u64,
    /// When `out` last went from empty to not empty (for `write_linger`).
    pub(crate) out_since: Option<Instant>,
    /// When `out` last moved: the writer took from it, or it went from empty to not
    /// empty. Publishers wait for room only while it moves (see `Client::enqueue`).
    pub(crate) out_moved: Option<Instant>,
    /// While the writer sleeps until a time of its own within `write_linger` (it lingers,
    /// or watches for more of a burst), that time: a message queued meanwhile needs no
    /// wake-up call, which costs a system call (and on a virtual machine an interrupt
    /// between processors) per message.
    pub(crate) writer_looks_at: Option<Instant>,
    pub(crate) post: Vec<u8>,
    pub(crate) pongs_due: u32,
    pub(crate) pings_due: u32,
    /// Reused to encode header blocks without allocating per message.
    pub(crate) scratch: Vec<u8>,
    /// The last subject published to, known to be valid (see `Client::enqueue`).
    pub(crate) valid_subject: Option<String>,
    pub(crate) info: ServerInfo,
    /// No message queued or kept for a resend is larger than this: the highest
    /// `max_payload` in force since the last connection checked them (see
    /// `drop_unsendable`).
    pub(crate) accepted_max: usize,
    /// Whether messages with headers may be queued or kept for a resend: false only while
    /// connected to servers without header support since the last check (see
    /// `drop_unsendable`).
    pub(crate) accepted_headers: bool,
    /// Changes with every new connection and every loss, so waiters can tell theirs ended.
    pub(crate) generation: u64,
    /// PINGs requested on this connection (flushes, keep-alives, confirmations), in order.
    pub(crate) pings_requested: u64,
    pub(crate) pongs_received: u64,
    /// The generation and PONG count of the connection that ended last, so that a flush
    /// whose PONG arrived just before the end still succeeds.
    pub(crate) ended: Option<(u64, u64)>,
    /// Keep-alive PINGs sent since the last PONG.
    pub(crate) pings_outstanding: u32,
    /// Set by the reader when its connection ends.
    pub(crate) conn_lost: Option<String>,
    pub(crate) lame_duck: bool,
    pub(crate) last_error: Option<String>,
    /// The connection (generation) whose server sent the `-ERR` in `last_error`: the
    /// reason given when that connection ends.
    pub(crate) err_generation: Option<u64>,
    pub(crate) stats: Statistics,
    pub(crate) pool: Pool,
    pub(crate) current: Option<Entry>,
    /// Without `resend_unconfirmed`: messages written to connections that were lost
    /// before a PONG confirmed them, and not written again. They may have arrived.
    pub(crate) unconfirmed_lost: u64,
    /// How much of `unconfirmed_lost` a flush has reported (each loss is told once).
    pub(crate) lost_told: u64,
    /// Why the latest connection that lost messages ended.
    pub(crate) lost_reason: Option<String>,
    /// Messages that were never confirmed delivered when the client closed.
    pub(crate) undelivered: u64,
    /// A second handle on the socket being connected or in use, for `close` to shut down
    /// when its time is up: that ends a write blocked on a server that stopped reading,
    /// and a handshake waiting for a server that does not answer.
    pub(crate) socket: Option<TcpStream>,
    /// `close` ran out of time: a socket registered from now on is shut down at once.
    pub(crate) aborted: bool,
}

pub(crate) struct Sub {
    pub(crate) subject: String,
    pub(crate) queue: Option<String>,
    pub(crate) sink: Sink,
    /// The automatic unsubscribe's limit: messages in all, since the subscribe.
    pub(crate) max: Option<u64>,
    /// Messages the server delivered to it, over every connection (a slow consumer's
    /// dropped ones included: the server counted them).
    pub(crate) delivered: u64,
    /// `delivered` when the current connection's SUB was sent: the server counts from there.
    pub(crate) delivered_before: u64,
    pub(crate) dropped: Arc<AtomicU64>,
}

impl Sub {
    pub(crate) fn new(
        subject: &str,
        queue: Option<&str>,
        sink: Sink,
        dropped: Arc<AtomicU64>,
    ) -> Sub {
        Sub {
            subject: subject.to_owned(),
            queue: queue.map(str::to_owned),
            sink,
            max: None,
            delivered: 0,
            delivered_before: 0,
            dropped,
        }
    }

    /// Whether its limit is reached.
    pub(crate) fn limit_reached(&self) -> bool {
        self.max.is_some_and(|max| self.delivered >= max)
    }

    /// Counts a message the server delivered to it; true when that reached its limit.
    fn count_delivered(&mut self) -> bool {
        self.delivered += 1;
        self.limit_reached()
    }

    /// The count for the server's `UNSUB <sid> <max>`, which counts from the current
    /// connection's SUB. `None` without a limit, once it is reached, or when the count
    /// is beyond what nats-server reads ([`MAX_UNSUB_COUNT`]): the client alone then
    /// enforces it, and ends the server's subscription when it is reached.
    pub(crate) fn server_max(&self) -> Option<u64> {
        let max = self.max?;
        if max <= self.delivered {
            return None;
        }
        Some(max - self.delivered_before).filter(|n| *n <= MAX_UNSUB_COUNT)
    }
}

/// The largest count nats-server reads in `UNSUB <sid> <max>`: nine digits. It reads a
/// longer one as none at all, and ends the subscription at once.
pub(crate) const MAX_UNSUB_COUNT: u64 = 999_999_999;

/// A subscription that reached its limit: out of the table (its queue ends once drained),
/// and the server told to end it too. The server ends it by itself at the count it was
/// given, but not when the count came late (it had already sent as many) or was never
/// sent (too large): then its subscription would stay until the connection closes.
/// The UNSUB is queued before the subscription leaves the table: its end (the queue's
/// last message taken) may be what the caller waits for before closing, and the UNSUB
/// must go before the close's PING. The caller holds no lock; state, then subs.
fn end_at_limit(shared: &Shared, sid: u64) {
    let mut st = shared.state();
    shared.queue_unsub(&mut st, sid, None);
    lock(&shared.subs).remove(&sid);
}

/// A request waiting for its reply (see [`Shared::replies`]).
pub(crate) struct Waiter {
    /// The subject the request went to.
    pub(crate) subject: String,
    pub(crate) outlet: Outlet,
}

/// The sending end of a subscription's or a request's channel, and why the server ended
/// it, if it did: set once, before the sender goes, so that the receiver finds it when the
/// channel ends (see [`ended`]).
pub(crate) struct Outlet<T = Message> {
    pub(crate) tx: SyncSender<T>,
    pub(crate) denied: Arc<OnceLock<String>>,
}

impl<T> Outlet<T> {
    /// Ends the channel with the server's refusal `text`.
    fn deny(self, text: &str) {
        let _ = self.denied.set(text.to_owned());
    }
}

/// What the end of a receiver's channel means: the refusal it was ended with
/// ([`Error::PermissionDenied`]), or else that the client closed it ([`Error::Closed`]).
pub(crate) fn ended(denied: &OnceLock<String>) -> Error {
    denied
        .get()
        .map_or(Error::Closed, |text| Error::PermissionDenied(text.clone()))
}

/// Where a subscription's messages go.
pub(crate) enum Sink {
    /// A [`crate::client::Subscription`]'s queue: each message with its number among
    /// those delivered to the subscription (see [`Sub::delivered`]).
    Channel(Outlet<(u64, Message)>),
    /// The request inbox (`_INBOX.<id>.*`): each reply goes to the request waiting for
    /// its last subject token, see [`Shared::replies`].
    Replies,
}

pub(crate) struct Shared {
    pub(crate) opts: Options,
    pub(crate) state: Mutex<State>,
    /// Wakes the supervisor: work queued, a PONG arrived, the connection was lost, or the
    /// phase changed.
    pub(crate) work: Condvar,
    /// Wakes publishers waiting for room and flushes waiting for a PONG or a connection.
    pub(crate) progress: Condvar,
    pub(crate) subs: Mutex<HashMap<u64, Sub>>,
    /// Requests waiting for a reply, by the reply subject's last token. Locked after
    /// `subs` when both are held.
    pub(crate) replies: Mutex<HashMap<String, Waiter>>,
    /// The request inbox prefix (`_INBOX.<random>`), subscribed on the first request.
    pub(crate) inbox: Mutex<Option<String>>,
    pub(crate) next_sid: AtomicU64,
    pub(crate) in_msgs: AtomicU64,
    pub(crate) in_bytes: AtomicU64,
    pub(crate) slow_consumer_drops: AtomicU64,
    /// When the writer last finished writing a chunk (`WRITE_CHUNK`), in microseconds
    /// since `epoch`: a batch written to a slow connection moves the queue's bytes along
    /// before the whole batch is out (see `Client::enqueue`).
    pub(crate) wrote_at: AtomicU64,
    pub(crate) epoch: Instant,
    pub(crate) supervisor: Mutex<Option<JoinHandle<()>>>,
    /// The client's own threads (the supervisor, the current reader). The event callback
    /// runs on them, so a `flush` or `close` it calls must not wait for them.
    own_threads: Mutex<Vec<ThreadId>>,
}

/// Marks the current thread as one of the client's own while it lives.
struct OwnThread<'a>(&'a Shared);

impl Drop for OwnThread<'_> {
    fn drop(&mut self) {
        let me = thread::current().id();
        lock(&self.0.own_threads).retain(|t| *t != me);
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here leaves the data consistent at each point where it could
    // panic, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `Condvar::wait_timeout` that shrugs off poisoning like [`lock`].
pub(crate) fn wait<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: Duration,
) -> MutexGuard<'a, T> {
    cv.wait_timeout(guard, timeout)
        .unwrap_or_else(|p| p.into_inner())
        .0
}

impl State {
    /// The largest message (payload and headers) the server accepts: its `max_payload`,
    /// or nats-server's default before any server has told its own (a message over the
    /// server's limit would make it close the connection when finally written).
    pub(crate) fn max_payload(&self) -> usize {
        match self.info.max_payload {
            0 => DEFAULT_MAX_PAYLOAD,
            known => known,
        }
    }

    fn has_work(&self) -> bool {
        !self.pre.is_empty()
            || !self.out.is_empty()
            || !self.post.is_empty()
            || self.pings_due > 0
            || self.pongs_due > 0
    }

    /// Keeps a handle on `tcp` for `close` (see `State::socket`); once `close` has run
    /// out of time, shuts it down instead.
    pub(crate) fn register_socket(&mut self, tcp: &TcpStream) {
        let Ok(handle) = tcp.try_clone() else {
            return;
        };
        if self.aborted {
            let _ = handle.shutdown(Shutdown::Both);
        } else {
            self.socket = Some(handle);
        }
    }

    /// For `close` out of time: ends the connection in progress, whatever it waits for.
    pub(crate) fn abort_socket(&mut self) {
        self.aborted = true;
        if let Some(socket) = self.socket.take() {
            let _ = socket.shutdown(Shutdown::Both);
        }
    }

    /// Forgets everything tied to the connection that ended.
    fn reset_connection(&mut self) {
        self.generation += 1;
        self.pre.clear();
        self.post.clear();
        self.pongs_due = 0;
        self.pings_due = 0;
        self.pings_requested = 0;
        self.pongs_received = 0;
        self.pings_outstanding = 0;
        self.conn_lost = None;
        self.lame_duck = false;
    }
}

impl Shared {
    pub(crate) fn new(opts: Options, pool: Pool) -> Shared {
        Shared {
            state: Mutex::new(State {
                phase: Phase::Reconnecting,
                pre: Vec::new(),
                out: Vec::with_capacity(64 * 1024),
                out_msgs: 0,
                out_since: None,
                out_moved: None,
                writer_looks_at: None,
                post: Vec::new(),
                pongs_due: 0,
                pings_due: 0,
                scratch: Vec::new(),
                valid_subject: None,
                info: ServerInfo::default(),
                accepted_max: DEFAULT_MAX_PAYLOAD,
                accepted_headers: true,
                generation: 0,
                pings_requested: 0,
                pongs_received: 0,
                ended: None,
                pings_outstanding: 0,
                conn_lost: None,
                lame_duck: false,
                last_error: None,
                err_generation: None,
                stats: Statistics::default(),
                pool,
                current: None,
                unconfirmed_lost: 0,
                lost_told: 0,
                lost_reason: None,
                undelivered: 0,
                socket: None,
                aborted: false,
            }),
            opts,
            work: Condvar::new(),
            progress: Condvar::new(),
            subs: Mutex::new(HashMap::new()),
            replies: Mutex::new(HashMap::new()),
            inbox: Mutex::new(None),
            next_sid: AtomicU64::new(1),
            in_msgs: AtomicU64::new(0),
            in_bytes: AtomicU64::new(0),
            slow_consumer_drops: AtomicU64::new(0),
            wrote_at: AtomicU64::new(0),
            epoch: Instant::now(),
            supervisor: Mutex::new(None),
            own_threads: Mutex::new(Vec::new()),
        }
    }

    /// Stamps `wrote_at`: the writer finished a chunk.
    fn note_written(&self) {
        let micros = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.wrote_at.store(micros, Ordering::Relaxed);
    }

    /// When the writer last wrote a chunk, if it ever did.
    pub(crate) fn written_at(&self) -> Option<Instant> {
        match self.wrote_at.load(Ordering::Relaxed) {
            0 => None,
            micros => self.epoch.checked_add(Duration::from_micros(micros)),
        }
    }

    /// True on the supervisor's and the reader's threads (an event callback's).
    pub(crate) fn on_own_thread(&self) -> bool {
        lock(&self.own_threads).contains(&thread::current().id())
    }

    fn own_thread(&self) -> OwnThread<'_> {
        lock(&self.own_threads).push(thread::current().id());
        OwnThread(self)
    }

    pub(crate) fn state(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub(crate) fn emit(&self, event: Event) {
        if let Some(cb) = &self.opts.event_callback {
            cb(event);
        }
    }

    /// Asks the supervisor for a PING after everything queued so far; returns its ticket.
    pub(crate) fn request_ping(&self, st: &mut State) -> u64 {
        st.pings_due += 1;
        st.pings_requested += 1;
        self.work.notify_one();
        st.pings_requested
    }

    /// Ends the `write_linger` of the messages queued so far: someone waits on them (a
    /// request's reply, an ack).
    pub(crate) fn write_now(&self) {
        let mut st = self.state();
        if st.out_since.take().is_some() {
            self.work.notify_one();
        }
    }

    /// Queues `UNSUB <sid> [max]` on a live connection. While reconnecting there is no
    /// server subscription to end: the table decides what the next connection gets.
    pub(crate) fn queue_unsub(&self, st: &mut State, sid: u64, max: Option<u64>) {
        if st.phase == Phase::Connected {
            self.queue_control(st, ClientOp::Unsub { sid, max }, false);
        }
    }

    /// Queues a control operation (`pre` goes before queued messages, `post` after).
    pub(crate) fn queue_control(&self, st: &mut State, op: ClientOp<'_>, before: bool) {
        let buf = if before { &mut st.pre } else { &mut st.post };
        op.encode(buf);
        self.work.notify_one();
    }

    /// The SUB (and pending auto-UNSUB) of every live subscription, for a new connection.
    fn resubscribe(&self, st: &mut State) {
        let mut subs = lock(&self.subs);
        for (&sid, sub) in subs.iter_mut() {
            ClientOp::Sub {
                subject: &sub.subject,
                queue_group: sub.queue.as_deref(),
                sid,
            }
            .encode(&mut st.pre);
            sub.delivered_before = sub.delivered;
            if let Some(max) = sub.server_max() {
                ClientOp::Unsub {
                    sid,
                    max: Some(max),
                }
                .encode(&mut st.pre);
            }
        }
    }
}

/// Starts the supervisor thread. `first`, the connection `connect` made, is installed
/// before this returns, so the caller sees the server's INFO and a connected client.
pub(crate) fn start(shared: &Arc<Shared>, first: Option<(Established, Entry)>) -> Result<()> {
    let mut unconfirmed = Unconfirmed::default();
    let running = first
        .and_then(|(est, entry)| begin_connection(shared, est, entry, &mut unconfirmed, false));
    let s = Arc::clone(shared);
    let handle = thread::Builder::new()
        .name("nats-supervisor".into())
        .spawn(move || supervise(&s, running, unconfirmed))
        .map_err(|e| Error::io("spawn the client's thread", e))?;
    *lock(&shared.supervisor) = Some(handle);
    Ok(())
}

/// Messages written to a connection and not yet confirmed by a PONG: kept for a resend
/// with `resend_unconfirmed`, otherwise only counted.
#[derive(Default)]
struct Unconfirmed {
    batches: VecDeque<(u64, Vec<u8>, u64)>,
    bytes: usize,
    msgs: u64,
}

impl Unconfirmed {
    fn push(&mut self, ticket: u64, data: Vec<u8>, msgs: u64) {
        if msgs == 0 {
            return;
        }
        self.bytes += data.len();
        self.msgs += msgs;
        // Counted only: one entry per PING they wait for, however many writes.
        if data.is_empty() {
            if let Some((last, kept, n)) = self.batches.back_mut() {
                if *last == ticket && kept.is_empty() {
                    *n += msgs;
                    return;
                }
            }
        }
        self.batches.push_back((ticket, data, msgs));
    }

    fn confirm(&mut self, pongs: u64) {
        while let Some((ticket, data, msgs)) = self.batches.front() {
            if *ticket > pongs {
                break;
            }
            self.bytes -= data.len();
            self.msgs -= msgs;
            self.batches.pop_front();
        }
    }

    /// Everything kept, oldest first, followed by `newer`. With nothing kept, `newer` is
    /// left as it is: it may be the whole reconnect buffer, and this runs under the lock.
    fn drain_before(&mut self, newer: &mut Vec<u8>) -> u64 {
        let msgs = std::mem::take(&mut self.msgs);
        if self.bytes == 0 {
            self.batches.clear();
            return msgs;
        }
        let mut all = Vec::with_capacity(self.bytes + newer.len());
        for (_, data, _) in self.batches.drain(..) {
            all.extend_from_slice(&data);
        }
        all.extend_from_slice(newer);
        *newer = all;
        self.bytes = 0;
        msgs
    }
}

enum Outcome {
    /// `close()`: everything was written.
    Closing,
    /// The connection failed.
    Lost(String),
    /// The server is in lame duck mode: move elsewhere.
    LameDuck,
}

fn supervise(shared: &Arc<Shared>, first: Option<(u64, Running)>, mut unconfirmed: Unconfirmed) {
    let _own = shared.own_thread();
    let mut connected_before = first.is_some();
    let mut current = first;
    loop {
        let (generation, reader) = match current.take() {
            Some(running) => running,
            None => {
                let Some((est, entry)) = reconnect(shared, connected_before) else {
                    break;
                };
                let again = connected_before;
                match begin_connection(shared, est, entry, &mut unconfirmed, again) {
                    Some(running) => {
                        connected_before = true;
                        running
                    }
                    None => continue,
                }
            }
        };
        let (mut write, read) = reader;
        let outcome = write_loop(shared, &mut write, generation, &mut unconfirmed);
        write.shutdown();
        let _ = read.join();
        shared.state().socket = None;
        match outcome {
            Outcome::Closing => break,
            Outcome::Lost(reason) => {
                lose_connection(shared, &mut unconfirmed, reason);
            }
            Outcome::LameDuck => {
                let mut st = shared.state();
                if let Some(current) = st.current.clone() {
                    st.pool.record(&current.addr, true, Instant::now());
                    st.pool.demote(&current.addr);
                }
                drop(st);
                lose_connection(
                    shared,
                    &mut unconfirmed,
                    "the server entered lame duck mode".into(),
                );
            }
        }
    }
    let mut st = shared.state();
    st.undelivered = st.out_msgs + unconfirmed.msgs + st.unconfirmed_lost;
    st.socket = None;
    st.phase = Phase::Closed;
    st.out.clear();
    st.out_msgs = 0;
    drop(st);
    shared.progress.notify_all();
    lock(&shared.subs).clear();
    // Requests still waiting learn at once that no reply will come (Error::Closed).
    lock(&shared.replies).clear();
    shared.emit(Event::Closed);
}

type Running = (WriteHalf, JoinHandle<()>);

/// Makes `est` the current connection: resubscribes, queues the replay, reports it, and
/// starts its reader.
fn begin_connection(
    shared: &Arc<Shared>,
    est: Established,
    entry: Entry,
    unconfirmed: &mut Unconfirmed,
    reconnected: bool,
) -> Option<(u64, Running)> {
    let Established {
        read,
        write,
        info,
        leftover,
    } = est;
    let mut st = shared.state();
    if matches!(st.phase, Phase::Closing | Phase::Closed) {
        // The connection is dropped here: no handle on its socket may outlive it.
        st.socket = None;
        return None;
    }
    st.reset_connection();
    if st.socket.is_none() {
        // The first connection, made by `Client::connect` itself.
        st.socket = read.shutdown_handle().ok();
    }
    st.out_moved = Some(Instant::now());
    let replayed = unconfirmed.drain_before(&mut st.out);
    st.out_msgs += replayed;
    let urls = info.connect_urls.clone();
    let server = entry.addr.to_string();
    if reconnected {
        st.stats.reconnects += 1;
    }
    st.info = info;
    // Messages buffered before this server was known: one over its limit, or with headers
    // it does not support, would make it close the connection, again after every reconnect.
    let Unsendable {
        oversized,
        headers,
        resent,
    } = drop_unsendable(&mut st, replayed);
    st.pool.add_discovered(&urls, &entry);
    st.pool.record(&entry.addr, true, Instant::now());
    st.current = Some(entry);
    shared.resubscribe(&mut st);
    st.phase = Phase::Connected;
    let generation = st.generation;
    drop(st);
    shared.progress.notify_all();
    // Before the reader starts, so that this comes before anything the server says.
    shared.emit(if reconnected {
        Event::Reconnected { server }
    } else {
        Event::Connected { server }
    });
    if oversized > 0 {
        shared.emit(Event::Dropped {
            messages: oversized,
            reason: "buffered while the server's max_payload was unknown, and over it".into(),
        });
    }
    if headers > 0 {
        shared.emit(Event::Dropped {
            messages: headers,
            reason: "buffered with headers, which the server does not support".into(),
        });
    }
    if resent > 0 {
        shared.emit(Event::Dropped {
            messages: resent,
            reason: RESENT_UNSENDABLE.into(),
        });
    }

    let s = Arc::clone(shared);
    match thread::Builder::new()
        .name("nats-reader".into())
        .spawn(move || reader_loop(&s, read, leftover, generation))
    {
        Ok(handle) => Some((generation, (write, handle))),
        Err(e) => {
            // The handle kept for `close` (`State::socket`) ends this connection too.
            if let Some(sock) = shared.state().socket.take() {
                let _ = sock.shutdown(Shutdown::Both);
            }
            lose_connection(
                shared,
                unconfirmed,
                format!("could not start the reader: {e}"),
            );
            None
        }
    }
}

/// Why a message written to a lost connection was not written again.
const RESENT_UNSENDABLE: &str = "written to a connection that ended before the server confirmed it, then over the max_payload of the server reached next, or with headers it does not support: not written again";

/// What [`drop_unsendable`] removed.
struct Unsendable {
    /// Never written: over the server's `max_payload` (`Statistics::oversized`).
    oversized: u64,
    /// Never written: with headers the server does not support.
    headers: u64,
    /// Written to a connection that was lost before confirming them (the first messages
    /// of the buffer, replayed with `resend_unconfirmed`): they may have arrived, so they
    /// count as lost (`Statistics::lost`), not as never sent.
    resent: u64,
}

/// Removes the buffered messages the server just connected would refuse by closing the
/// connection: larger than its `max_payload`, or with headers where it has no header
/// support. The first `replayed` messages of the buffer were written before.
fn drop_unsendable(st: &mut State, replayed: u64) -> Unsendable {
    let max = st.max_payload();
    let before = std::mem::replace(&mut st.accepted_max, max);
    let had_headers = std::mem::replace(&mut st.accepted_headers, st.info.headers);
    // Each message was accepted against a limit no higher than this one, and with headers
    // only where this server has them too.
    let check_size = max < before;
    let check_headers = had_headers && !st.info.headers;
    let mut dropped = Unsendable {
        oversized: 0,
        headers: 0,
        resent: 0,
    };
    if !check_size && !check_headers {
        return dropped;
    }
    let mut kept = Vec::with_capacity(st.out.len());
    let mut rest = st.out.as_slice();
    let mut n = 0;
    // `out` holds only PUB and HPUB that we encoded ourselves.
    while let Ok(Status::Complete((op, used))) = parse_client_op(rest, usize::MAX) {
        let (size, has_headers) = match op {
            ClientOp::Pub { payload, .. } => (payload.len(), false),
            ClientOp::Hpub {
                header, payload, ..
            } => (header.len() + payload.len(), true),
            _ => (0, false),
        };
        let (this, after) = rest.split_at(used.min(rest.len()));
        let over = check_size && size > max;
        let unsupported = check_headers && has_headers;
        if !over && !unsupported {
            kept.extend_from_slice(this);
        } else if n < replayed {
            dropped.resent += 1;
        } else if over {
            dropped.oversized += 1;
        } else {
            dropped.headers += 1;
        }
        n += 1;
        rest = after;
    }
    let never_sent = dropped.oversized + dropped.headers;
    if never_sent + dropped.resent > 0 {
        st.out = kept;
        st.out_msgs = st.out_msgs.saturating_sub(never_sent + dropped.resent);
        st.stats.dropped += never_sent;
        st.stats.oversized += dropped.oversized;
        st.stats.headers_unsupported += dropped.headers;
    }
    if dropped.resent > 0 {
        st.unconfirmed_lost += dropped.resent;
        st.lost_reason = Some(RESENT_UNSENDABLE.into());
    }
    dropped
}

/// Bookkeeping after a connection ended: fail its waiters, keep what must be replayed.
fn lose_connection(shared: &Shared, unconfirmed: &mut Unconfirmed, reason: String) {
    let mut st = shared.state();
    // The reader has ended: every PONG this connection got is counted.
    unconfirmed.confirm(st.pongs_received);
    // Kept through the next connection's own reset: a flush may wake only after it.
    st.ended = Some((st.generation, st.pongs_received));
    st.reset_connection();
    st.last_error = Some(reason.clone());
    if !shared.opts.resend_unconfirmed {
        // Not to be written again: what was in flight counts as not confirmed delivered.
        if unconfirmed.msgs > 0 {
            st.lost_reason = Some(reason.clone());
        }
        st.unconfirmed_lost += unconfirmed.msgs;
        *unconfirmed = Unconfirmed::default();
    }
    if st.phase == Phase::Connected {
        st.phase = if shared.opts.allow_reconnect {
            Phase::Reconnecting
        } else {
            Phase::Closing
        };
    }
    drop(st);
    shared.progress.notify_all();
    shared.emit(Event::Disconnected { reason });
}

/// Picks servers from the pool and tries them, honouring the wait between attempts on
/// the same server, until one connects, the pool is exhausted, or the client closes.
fn reconnect(shared: &Shared, connected_before: bool) -> Option<(Established, Entry)> {
    let opts = &shared.opts;
    // Before the first connection, a server's first attempt is the connect itself, not a
    // reconnect: `max_reconnect_attempts` more may follow it.
    let first_attempt = u32::from(!connected_before);
    let max_failures = u32::try_from(opts.max_reconnect_attempts)
        .ok()
        .map(|m| m.saturating_add(first_attempt));
    loop {
        let mut st = shared.state();
        if st.phase != Phase::Reconnecting {
            return None;
        }
        let Some(entry) = st.pool.next(max_failures) else {
            let why = st
                .last_error
                .clone()
                .unwrap_or_else(|| "no server left to try".into());
            st.last_error = Some(format!("reconnect: gave up: {why}"));
            st.phase = Phase::Closing;
            return None;
        };
        if let Some(last) = entry.last_attempt {
            let until = later(
                last,
                opts.reconnect_time_wait
                    .saturating_add(jitter(opts.reconnect_jitter)),
            );
            while st.phase == Phase::Reconnecting {
                let left = remaining(until);
                if left.is_zero() {
                    break;
                }
                st = wait(&shared.work, st, left);
            }
            if st.phase != Phase::Reconnecting {
                return None;
            }
        }
        drop(st);
        let result = establish(opts, &entry.addr, &entry.tls_name, &mut |tcp| {
            shared.state().register_socket(tcp);
        });
        let mut st = shared.state();
        match result {
            Ok(est) => {
                return Some((est, entry));
            }
            Err(e) => {
                st.socket = None;
                st.pool.record(&entry.addr, false, Instant::now());
                st.last_error = Some(e.to_string());
                drop(st);
                shared.emit(Event::ReconnectFailed {
                    server: entry.addr.to_string(),
                    reason: e.to_string(),
                });
            }
        }
    }
}

/// Writes queued work to the connection until it fails, the client closes, or the server
/// announces lame duck mode.
fn write_loop(
    shared: &Shared,
    w: &mut WriteHalf,
    generation: u64,
    unconfirmed: &mut Unconfirmed,
) -> Outcome {
    let opts = &shared.opts;
    let resend = opts.resend_unconfirmed;
    // A zero interval turns the keep-alive PINGs off: the next one is never due.
    let interval = match opts.ping_interval {
        Duration::ZERO => Duration::MAX,
        every => every,
    };
    let mut next_ping = later(Instant::now(), interval);
    let mut pre = Vec::new();
    let mut data: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut post = Vec::new();
    let mut draining_lame_duck: Option<u64> = None;
    // Confirmation PINGs (with `resend_unconfirmed`): at most one per CONFIRM_INTERVAL, so
    // that a trickle of messages costs one write each, not a write plus a PING/PONG round
    // trip. Batches written without their own PING wait for the next one (`awaiting`).
    let mut last_confirm: Option<Instant> = None;
    let mut awaiting: Option<(u64, Instant)> = None;
    // When the last batch of messages was written (for `write_linger`).
    let mut last_write: Option<Instant> = None;
    loop {
        let mut st = shared.state();
        let (msgs, ticket) = loop {
            // Awake: publishers wake us again until we sleep with a deadline of our own.
            st.writer_looks_at = None;
            // First: a PONG that came before the connection ended still confirms.
            unconfirmed.confirm(st.pongs_received);
            if let Some(reason) = st.conn_lost.take() {
                return Outcome::Lost(reason);
            }
            if st.generation != generation {
                return Outcome::Lost("connection replaced".into());
            }
            let backlogged = resend && unconfirmed.bytes > opts.pending_size;
            // Lame duck: one last round writes what is queued with a PING; once its PONG
            // confirms everything, move on. Flushes wait for the next server meanwhile.
            // Behind a backlog the round waits: it could write neither the queue nor,
            // before the queue, its PING (the confirmations the backlog waits for are
            // already on their way).
            let mut last_round = false;
            if let Some(ticket) = draining_lame_duck {
                if st.pongs_received >= ticket {
                    return Outcome::LameDuck;
                }
            } else if st.lame_duck && !backlogged {
                draining_lame_duck = Some(shared.request_ping(&mut st));
                last_round = true;
            }
            let now = Instant::now();
            if now >= next_ping {
                if st.pings_outstanding >= opts.max_outstanding_pings {
                    return Outcome::Lost(format!(
                        "stale connection: {} PINGs unanswered",
                        st.pings_outstanding
                    ));
                }
                st.pings_outstanding += 1;
                shared.request_ping(&mut st);
                next_ping = later(now, interval);
            }
            if let Some((ticket, due)) = awaiting {
                if st.pings_requested >= ticket {
                    // A PING (flush, keep-alive) was requested since: it confirms them.
                    awaiting = None;
                } else if now >= due {
                    shared.request_ping(&mut st);
                    last_confirm = Some(now);
                    awaiting = None;
                }
            }
            // In a burst (this batch began within `write_linger` of the last write) a small
            // batch lingers for more messages to join it, unless something else is being
            // written anyway or the client is closing. After a quiet spell it goes at once.
            let linger_until = match st.out_since {
                Some(since)
                    if !opts.write_linger.is_zero()
                        && last_write.is_some_and(|w| {
                            since.saturating_duration_since(w) < opts.write_linger
                        })
                        && st.out.len() < LINGER_MAX_BATCH
                        && st.phase != Phase::Closing
                        && st.pings_due == 0
                        && st.pre.is_empty()
                        && st.post.is_empty() =>
                {
                    Some(later(since, opts.write_linger)).filter(|t| *t > now)
                }
                _ => None,
            };
            // While moving away from a lame duck server, new messages wait for the next one.
            let take_out = !backlogged
                && linger_until.is_none()
                && (draining_lame_duck.is_none() || last_round)
                && !st.out.is_empty();
            // A PING must not overtake messages queued before it: its PONG would confirm
            // them (a flush would return) before they were written. While they are held
            // back, so are the PINGs. No confirmation is lost meanwhile: a backlog only
            // builds behind a batch big enough to have been followed by a PING of its own.
            let hold_pings = !take_out && !st.out.is_empty();
            let pings = if hold_pings { 0 } else { st.pings_due };
            if take_out
                || !st.pre.is_empty()
                || !st.post.is_empty()
                || pings > 0
                || st.pongs_due > 0
            {
                std::mem::swap(&mut st.pre, &mut pre);
                for _ in 0..st.pongs_due {
                    ClientOp::Pong.encode(&mut pre);
                }
                st.pongs_due = 0;
                let mut msgs = 0;
                let mut ticket = st.pings_requested;
                if take_out {
                    let urgent = unconfirmed.bytes + st.out.len() > opts.pending_size / 4
                        || st.phase == Phase::Closing;
                    st.out_since = None;
                    st.out_moved = Some(now);
                    std::mem::swap(&mut st.out, &mut data);
                    msgs = std::mem::take(&mut st.out_msgs);
                    if resend && st.pings_due == 0 {
                        let due = last_confirm.map_or(now, |t| t + CONFIRM_INTERVAL);
                        if urgent || now >= due {
                            st.pings_due = 1;
                            st.pings_requested += 1;
                            ticket = st.pings_requested;
                            last_confirm = Some(now);
                        } else {
                            // Confirmed by the next PING, sent by `due` at the latest.
                            ticket = st.pings_requested + 1;
                            awaiting = Some((ticket, due));
                        }
                    } else if st.pings_due == 0 {
                        // Confirmed by the next PING: a flush's, a keep-alive's, close's.
                        ticket = st.pings_requested + 1;
                    }
                }
                std::mem::swap(&mut st.post, &mut post);
                if !hold_pings {
                    for _ in 0..st.pings_due {
                        ClientOp::Ping.encode(&mut post);
                    }
                    st.pings_due = 0;
                }
                break (msgs, ticket);
            }
            if st.phase == Phase::Closing && !st.has_work() && awaiting.is_none() {
                return Outcome::Closing;
            }
            let mut wake = awaiting.map_or(next_ping, |(_, due)| due.min(next_ping));
            if let Some(t) = linger_until {
                wake = wake.min(t);
            }
            // For a linger after the last write, look again then: messages of the same
            // burst queued meanwhile need not wake us (see `writer_looks_at`).
            let watch = last_write
                .map(|w| later(w, opts.write_linger))
                .filter(|t| !opts.write_linger.is_zero() && *t > now);
            if let Some(t) = watch {
                wake = wake.min(t);
            }
            if !opts.write_linger.is_zero() && wake <= later(now, opts.write_linger) {
                st.writer_looks_at = Some(wake);
            }
            st = wait(&shared.work, st, wake.saturating_duration_since(now));
        };
        drop(st);
        shared.progress.notify_all();
        if msgs > 0 {
            last_write = Some(Instant::now());
        }
        let written = write_parts(shared, w, &pre, &data, &post);
        pre.clear();
        post.clear();
        if resend && !data.is_empty() {
            // Kept even if the write failed part-way: it may not all have arrived.
            let kept = std::mem::replace(&mut data, Vec::with_capacity(64 * 1024));
            unconfirmed.push(ticket, kept, msgs);
        } else {
            // Counted until confirmed, but not kept: they will not be written again.
            unconfirmed.push(ticket, Vec::new(), msgs);
            data.clear();
            if data.capacity() > KEEP_BATCH_CAPACITY {
                data = Vec::with_capacity(64 * 1024);
            }
        }
        if let Err(e) = written {
            let lost = if resend { 0 } else { msgs };
            let mut reason = format!("write to server: {e}");
            if lost > 0 {
                reason.push_str(&format!("; {lost} messages in that write may be lost"));
            }
            return Outcome::Lost(reason);
        }
    }
}

/// Batches at least this large are written without lingering.
pub(crate) const LINGER_MAX_BATCH: usize = 64 * 1024;

/// With `resend_unconfirmed`, the longest written messages wait for the PING that confirms
/// them (unless they grow past a quarter of `pending_size`, which sends one at once).
const CONFIRM_INTERVAL: Duration = Duration::from_millis(20);

/// Batches above this capacity are released after use rather than kept.
const KEEP_BATCH_CAPACITY: usize = 4 * 1024 * 1024;

/// Writes are made in pieces of at most this much, each one noted (`Shared::wrote_at`):
/// above any batch the flusher queue makes (1 MiB and one message, by default), so that
/// only the large replays after a reconnect (up to `pending_size`) are cut. 256 KiB pieces
/// cost 10 to 15 % of the throughput of 1 KB and 16 KB messages (more wake-ups of the
/// server's reader).
const WRITE_CHUNK: usize = 2 * 1024 * 1024;

fn write_parts(
    shared: &Shared,
    w: &mut WriteHalf,
    pre: &[u8],
    data: &[u8],
    post: &[u8],
) -> std::io::Result<()> {
    for part in [pre, data, post] {
        for chunk in part.chunks(WRITE_CHUNK) {
            w.write_all(chunk)?;
            shared.note_written();
        }
    }
    Ok(())
}

/// The most the reader buffers for one operation before calling the server broken.
const MAX_READ_BUFFER: usize = 128 * 1024 * 1024;

fn reader_loop(shared: &Shared, mut r: ReadHalf, mut buf: Vec<u8>, generation: u64) {
    let _own = shared.own_thread();
    let mut raw = vec![0u8; 64 * 1024];
    let limit = shared.opts.max_control_line;
    let reason = 'read: loop {
        let mut start = 0;
        loop {
            match parse_server_op(buf.get(start..).unwrap_or_default(), limit) {
                Ok(Status::Complete((op, used))) => {
                    handle_op(shared, op, generation);
                    start += used;
                }
                Ok(Status::Partial) => break,
                // No subscriber could be given it (subjects are text here); the rest of
                // the stream is fine.
                Err(ProtoError::SubjectNotUtf8 { frame, sid }) => {
                    start += frame;
                    // The server counted it toward the subscription's limit.
                    let ended = lock(&shared.subs)
                        .get_mut(&sid)
                        .is_some_and(|sub| sub.count_delivered());
                    if ended {
                        end_at_limit(shared, sid);
                    }
                    shared.emit(Event::ServerError(
                        "a message whose subject is not UTF-8 was dropped".into(),
                    ));
                }
                Err(e) => break 'read Error::Protocol(e).to_string(),
            }
        }
        buf.drain(..start);
        if buf.len() > MAX_READ_BUFFER {
            break 'read format!("protocol: an operation exceeds {MAX_READ_BUFFER} bytes");
        }
        match r.read_into(&mut buf, &mut raw) {
            Ok(0) => {
                let st = shared.state();
                break 'read match &st.last_error {
                    Some(e) if st.err_generation == Some(generation) => {
                        format!("the server closed the connection after: {e}")
                    }
                    _ => "the server closed the connection".into(),
                };
            }
            Ok(_) => {}
            Err(e) => break 'read format!("read from server: {e}"),
        }
    };
    let mut st = shared.state();
    if st.generation == generation && st.conn_lost.is_none() {
        st.conn_lost = Some(reason);
        shared.work.notify_all();
    }
}

fn handle_op(shared: &Shared, op: ServerOp<'_>, generation: u64) {
    match op {
        ServerOp::Msg(msg) => deliver(shared, msg),
        ServerOp::Ping => {
            let mut st = shared.state();
            if st.generation == generation {
                st.pongs_due += 1;
                shared.work.notify_one();
            }
        }
        ServerOp::Pong => {
            let mut st = shared.state();
            // Only an answer to a PING the writer has taken: a PONG nobody asked for
            // (no server should send one) would confirm messages not yet processed.
            let taken = st.pings_requested.saturating_sub(u64::from(st.pings_due));
            if st.generation == generation && st.pongs_received < taken {
                st.pongs_received += 1;
                st.pings_outstanding = 0;
                drop(st);
                shared.progress.notify_all();
                shared.work.notify_one();
            }
        }
        ServerOp::Ok => {}
        ServerOp::Info(info) => {
            let mut st = shared.state();
            if st.generation != generation {
                return;
            }
            if let Some(current) = st.current.clone() {
                st.pool.add_discovered(&info.connect_urls, &current);
            }
            let ldm = info.ldm && !st.lame_duck;
            st.lame_duck |= info.ldm;
            st.info = *info;
            st.accepted_max = st.accepted_max.max(st.max_payload());
            st.accepted_headers |= st.info.headers;
            drop(st);
            if ldm {
                shared.work.notify_one();
                shared.emit(Event::LameDuck);
            }
        }
        ServerOp::Err(text) => {
            let err = server_error(text);
            let mut st = shared.state();
            let denied = denied_publish(text);
            if denied.is_some() {
                st.stats.publish_denied += 1;
            }
            st.last_error = Some(err.to_string());
            st.err_generation = Some(generation);
            drop(st);
            if let Some(denied) = denied {
                deny_request(shared, denied, text);
            }
            if let Some((subject, queue)) = denied_subscription(text) {
                deny_subscription(shared, subject, queue, text);
            }
            shared.emit(Event::ServerError(text.to_owned()));
        }
    }
}

/// What a refused publish was refused for.
#[derive(Debug, PartialEq, Eq)]
enum DeniedPublish<'a> {
    /// `Permissions Violation for Publish to "<subject>"`.
    Subject(&'a str),
    /// `Permissions Violation for Publish with Reply of "<reply>"`.
    Reply(&'a str),
    /// Another text of that kind: counted, matched to no request.
    Other,
}

/// Whether an `-ERR` refuses one publish, and for what.
fn denied_publish(text: &str) -> Option<DeniedPublish<'_>> {
    let rest = strip_prefix_ignore_case(text, "permissions violation for publish")?;
    let subject = |prefix| strip_prefix_ignore_case(rest, prefix).and_then(quoted);
    Some(if let Some((s, _)) = subject(" to ") {
        DeniedPublish::Subject(s)
    } else if let Some((r, _)) = subject(" with reply of ") {
        DeniedPublish::Reply(r)
    } else {
        DeniedPublish::Other
    })
}

fn strip_prefix_ignore_case<'a>(text: &'a str, prefix: &str) -> Option<&'a str> {
    text.get(..prefix.len())
        .filter(|p| p.eq_ignore_ascii_case(prefix))
        .and_then(|_| text.get(prefix.len()..))
}

/// Ends the oldest request the refused publish was: the one sent to that subject, or the
/// one with that reply subject. Its wait returns the refusal instead of timing out.
fn deny_request(shared: &Shared, denied: DeniedPublish<'_>, text: &str) {
    let inbox = lock(&shared.inbox).clone();
    let mut replies = lock(&shared.replies);
    let token = match denied {
        // Tokens count up: the shortest, then the smallest, is the oldest.
        DeniedPublish::Subject(subject) => replies
            .iter()
            .filter(|(_, w)| w.subject == subject)
            .map(|(t, _)| t)
            .min_by(|a, b| (a.len(), a.as_str()).cmp(&(b.len(), b.as_str())))
            .cloned(),
        // Only a reply subject of this client's inbox names one of its requests.
        DeniedPublish::Reply(reply) => inbox.as_deref().and_then(|prefix| {
            reply
                .strip_prefix(prefix)
                .and_then(|t| t.strip_prefix('.'))
                .map(str::to_owned)
        }),
        DeniedPublish::Other => None,
    };
    if let Some(waiter) = token.and_then(|t| replies.remove(&t)) {
        waiter.outlet.deny(text);
    }
}

/// The subject and queue group of a refused subscription: `Permissions Violation for
/// Subscription to "<subject>"`, maybe followed by ` using queue "<queue>"`.
fn denied_subscription(text: &str) -> Option<(&str, Option<&str>)> {
    let rest = strip_prefix_ignore_case(text, "permissions violation for subscription to ")?;
    let (subject, rest) = quoted(rest)?;
    let queue = rest
        .strip_prefix(" using queue ")
        .and_then(quoted)
        .map(|(q, _)| q);
    Some((subject, queue))
}

/// The text between a leading `"` and the next one, and what follows.
fn quoted(text: &str) -> Option<(&str, &str)> {
    let inner = text.strip_prefix('"')?;
    let end = inner.find('"')?;
    Some((inner.get(..end)?, inner.get(end + 1..)?))
}

/// Ends the first subscription on `subject` (in `queue`) that the server refused: it will
/// get no messages. The server sends one refusal per subscription, so a second one on the
/// same subject ends the next. The request inbox is left alone: its requests time out.
fn deny_subscription(shared: &Shared, subject: &str, queue: Option<&str>, text: &str) {
    let mut subs = lock(&shared.subs);
    let first = subs
        .iter()
        .filter(|(_, s)| {
            matches!(s.sink, Sink::Channel(_))
                && s.subject == subject
                && s.queue.as_deref() == queue
        })
        .map(|(sid, _)| *sid)
        .min();
    if let Some(Sub {
        sink: Sink::Channel(outlet),
        ..
    }) = first.and_then(|sid| subs.remove(&sid))
    {
        outlet.deny(text);
    }
}

fn deliver(shared: &Shared, msg: Msg<'_>) {
    shared.in_msgs.fetch_add(1, Ordering::Relaxed);
    shared
        .in_bytes
        .fetch_add(msg.payload.len() as u64, Ordering::Relaxed);
    // Reported once `subs` is released: the event callback may subscribe or unsubscribe,
    // which takes it again.
    for event in route(shared, msg).into_iter().flatten() {
        shared.emit(event);
    }
}

/// Hands `msg` to its subscription; returns what to report.
fn route(shared: &Shared, msg: Msg<'_>) -> [Option<Event>; 2] {
    let mut subs = lock(&shared.subs);
    let Some(sub) = subs.get_mut(&msg.sid) else {
        return [None, None];
    };
    let mut malformed = None;
    let headers = match msg.header.map(HeaderMap::parse) {
        None => None,
        Some(Ok(h)) => Some(h),
        Some(Err(e)) => {
            malformed = Some(Event::ServerError(format!(
                "message on {} has a malformed header block ({e}); delivered without headers",
                msg.subject
            )));
            None
        }
    };
    let message = Message {
        subject: msg.subject.to_owned(),
        reply: msg.reply.map(str::to_owned),
        headers,
        payload: msg.payload.to_vec(),
    };
    let tx = match &sub.sink {
        Sink::Channel(outlet) => &outlet.tx,
        Sink::Replies => {
            drop(subs);
            let token = msg.subject.rsplit('.').next().unwrap_or_default();
            // A reply nobody waits for any more (timed out, or a second reply) is dropped.
            if let Some(waiting) = lock(&shared.replies).remove(token) {
                let _ = waiting.outlet.tx.try_send(message);
            }
            return [malformed, None];
        }
    };
    let sent = tx.try_send((sub.delivered + 1, message));
    let ended = sub.count_delivered();
    let slow = match sent {
        Ok(()) => None,
        Err(TrySendError::Full(_)) => {
            sub.dropped.fetch_add(1, Ordering::Relaxed);
            shared.slow_consumer_drops.fetch_add(1, Ordering::Relaxed);
            Some(Event::SlowConsumer { sid: msg.sid })
        }
        Err(TrySendError::Disconnected(_)) => {
            subs.remove(&msg.sid);
            return [malformed, None];
        }
    };
    if ended {
        drop(subs);
        end_at_limit(shared, msg.sid);
    }
    [malformed, slow]
}

#[cfg(test)]
mod tests {
    use super::{
        denied_publish, denied_subscription, drop_unsendable, DeniedPublish, Shared, Unconfirmed,
    };
    use crate::client::pool::Pool;
    use crate::client::Options;
    use crate::proto::encode_pub;

    #[test]
    fn a_message_written_before_and_over_the_next_limit_is_lost_not_unsent() {
        // Three messages, the second too big for the server just reached (2 MiB after
        // 8 MiB); the first `replayed` of them were written to the lost connection.
        for (replayed, resent, oversized) in [(0, 0, 1), (2, 1, 0), (3, 1, 0)] {
            let shared = Shared::new(Options::default(), Pool::new(&[], false, None));
            let mut st = shared.state();
            for size in [100, 3 << 20, 100] {
                encode_pub(&mut st.out, "s", None, None, &vec![b'x'; size]);
            }
            st.out_msgs = 3;
            st.accepted_max = 8 << 20;
            st.info.max_payload = 2 << 20;
            let dropped = drop_unsendable(&mut st, replayed);
            assert_eq!((dropped.resent, dropped.oversized), (resent, oversized));
            assert_eq!(st.out_msgs, 2);
            assert_eq!(st.unconfirmed_lost, resent);
            assert_eq!(
                (st.stats.oversized, st.stats.dropped),
                (oversized, oversized)
            );
            assert_eq!(st.lost_reason.is_some(), resent > 0);
        }
    }

    #[test]
    fn permission_violations_are_told_apart() {
        let sub = |t| denied_subscription(t);
        assert_eq!(
            sub("Permissions Violation for Subscription to \"a.>\""),
            Some(("a.>", None))
        );
        assert_eq!(
            sub("Permissions Violation for Subscription to \"a.b\" using queue \"q\""),
            Some(("a.b", Some("q")))
        );
        assert_eq!(
            sub("permissions violation for subscription to \"x\""),
            Some(("x", None))
        );
        for other in [
            "Permissions Violation for Publish to \"a\"",
            "Permissions Violation for Subscription to a",
            "Permissions Violation for Subscription to \"unterminated",
            "Permissions Violation for Subscription",
            "Authorization Violation",
            "",
        ] {
            assert_eq!(sub(other), None, "{other:?}");
        }
        let publish = |t| denied_publish(t);
        assert_eq!(
            publish("Permissions Violation for Publish to \"a.b\""),
            Some(DeniedPublish::Subject("a.b"))
        );
        assert_eq!(
            publish("Permissions Violation for Publish with Reply of \"_INBOX.x.7\""),
            Some(DeniedPublish::Reply("_INBOX.x.7"))
        );
        assert_eq!(
            publish("Permissions Violation for Publish to a"),
            Some(DeniedPublish::Other)
        );
        assert_eq!(
            publish("Permissions Violation for Subscription to \"a\""),
            None
        );
        assert_eq!(publish("Permissions"), None);
    }

    #[test]
    fn a_replay_puts_what_was_kept_before_the_newer_messages() {
        let mut kept = Unconfirmed::default();
        kept.push(1, b"A".to_vec(), 1);
        kept.push(2, b"BC".to_vec(), 2);
        kept.confirm(1);
        let mut newer = b"D".to_vec();
        assert_eq!(kept.drain_before(&mut newer), 2);
        assert_eq!(newer, b"BCD");
        assert_eq!((kept.bytes, kept.msgs, kept.batches.len()), (0, 0, 0));
    }

    #[test]
    fn with_nothing_kept_the_buffer_is_neither_copied_nor_moved() {
        let mut kept = Unconfirmed::default();
        kept.push(1, b"A".to_vec(), 1);
        kept.confirm(1);
        let mut newer = Vec::with_capacity(1 << 20);
        newer.extend_from_slice(b"PUB a 1\r\nx\r\n");
        let at = newer.as_ptr();
        assert_eq!(kept.drain_before(&mut newer), 0);
        assert_eq!((newer.as_ptr(), newer.capacity()), (at, 1 << 20));
        assert_eq!(newer, b"PUB a 1\r\nx\r\n");
    }
}

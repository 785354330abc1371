//! Which open runs each `runner_config` object opened, and what becomes of them when the
//! object is gone.
//!
//! - A broken worker stream (a status without `runner_ident`) closes the runs of its own
//!   `ansible-runner process`, not every run of the process ([`take`]).
//! - A configuration object that is garbage-collected before its runs got their terminal
//!   status (ansible-runner raised, and the host dropped the `Runner`) can bring no more
//!   calls: its runs are *abandoned*. After a grace period without a call for them, the
//!   reaper thread ([`reap`]) flushes and closes them, instead of keeping a connection and
//!   two threads each for the life of the process. A call for a run within the grace
//!   keeps it open.
//!
//! A run belongs to the object that made the latest call for it: a retry under the same
//! `runner_ident`, or a caller that makes a configuration object per call, takes it over,
//! and the end of an older object does not touch it. (A caller that makes an object per
//! call and then stays silent for longer than the grace cannot be told from an abandoned
//! run: its later calls are refused as late, and said to be.)
//!
//! Objects are known by address. A weak reference (`weakref.finalize`) reports each
//! object's end ([`config_gone`]) before its address can be reused; objects that take no
//! weak reference are only forgotten when their last run ends.
//!
//! [`config_gone`] runs in whichever thread collected the object, maybe inside the garbage
//! collector, where Python code could deadlock (a collection inside `threading` holding
//! its own lock). It runs no Python code of ours, logs nothing and starts nothing: it
//! records and wakes the reaper. The reaper is a thread of ours that never takes the GIL
//! (so it works under gevent's monkey-patching, and at the interpreter's finalization);
//! its lines wait for the next handler call or the exit hook ([`take_pending`]). No lock
//! here is held while Python code runs: any Python call can collect garbage and so run
//! [`config_gone`], which takes these locks.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use ansible_runner_nats::emitter::Emitter;

use crate::{lines, Lines, ERROR};

/// The open runs of the configuration objects, and which object each run belongs to.
struct Tracking {
    configs: BTreeMap<usize, Config>,
    owner: BTreeMap<String, usize>,
}

/// The open runs of one configuration object.
#[derive(Default)]
struct Config {
    idents: Vec<String>,
    watch: Watch,
}

/// Whether a finalizer reports the object's end.
#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Watch {
    #[default]
    Not,
    /// Yes: the entry lives as long as the object.
    Watched,
    /// The object takes no weak reference: the entry goes with its last run.
    Unable,
}

impl Tracking {
    /// The open runs of the object `key`, forgotten; its entry stays.
    fn take_runs(&mut self, key: usize) -> Vec<String> {
        let idents = self
            .configs
            .get_mut(&key)
            .map(|c| std::mem::take(&mut c.idents))
            .unwrap_or_default();
        for ident in &idents {
            self.owner.remove(ident);
        }
        GENERATION.fetch_add(1, Ordering::Relaxed);
        idents
    }

    /// Forgets `ident` wherever it is, dropping an entry left empty that no finalizer
    /// will remove.
    fn forget(&mut self, ident: &str) {
        let Some(key) = self.owner.remove(ident) else {
            return;
        };
        GENERATION.fetch_add(1, Ordering::Relaxed);
        if let Some(config) = self.configs.get_mut(&key) {
            config.idents.retain(|i| i != ident);
            if config.idents.is_empty() && config.watch != Watch::Watched {
                self.configs.remove(&key);
            }
        }
    }
}

static TRACKING: Mutex<Tracking> = Mutex::new(Tracking {
    configs: BTreeMap::new(),
    owner: BTreeMap::new(),
});

/// Runs whose configuration object is gone, each with the time its grace ends; and
/// whether the exit stopped the reaper.
struct Abandoned {
    runs: Vec<(String, Instant)>,
    stopping: bool,
}

static ABANDONED: Mutex<Abandoned> = Mutex::new(Abandoned {
    runs: Vec::new(),
    stopping: false,
});
/// Wakes the reaper: a run was abandoned, or the exit stops it.
static REAPER_WAKE: Condvar = Condvar::new();

/// Whether `ABANDONED` may hold runs: the one check a handler call makes.
static ANY_ABANDONED: AtomicBool = AtomicBool::new(false);

/// Lines of the reaper's closes (and of an unreadable grace), for the next handler call
/// or the exit hook to log.
static PENDING: Mutex<Lines> = Mutex::new(Vec::new());
static ANY_PENDING: AtomicBool = AtomicBool::new(false);

/// Closes the reaper has under way, for [`wait_for_reaper`].
static CLOSING: Mutex<usize> = Mutex::new(0);
static CLOSED: Condvar = Condvar::new();

/// The process whose reaper runs (0: none started). A forked child has no reaper thread,
/// and its copies of the parent's runs have no client threads: [`forked`] starts it over.
static REAPER_PID: AtomicU32 = AtomicU32::new(0);

/// Bumped when an object ends and when a run changes objects, so that a thread's
/// [`LastRun`] does not stand for what changed.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Runs closed because their configuration object was gone (`stats()['abandoned']`).
pub(crate) static CLOSED_ABANDONED: AtomicU64 = AtomicU64::new(0);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn tracking() -> MutexGuard<'static, Tracking> {
    lock(&TRACKING)
}

pub(crate) fn key(runner_config: &Bound<'_, PyAny>) -> usize {
    runner_config.as_ptr() as usize
}

/// Records that the run `ident`, called for through `runner_config`, is open (`open`) or
/// ended; the first run of an object also sets up the report of its end. Fails only with
/// what must propagate (KeyboardInterrupt).
pub(crate) fn remember(
    runner_config: &Bound<'_, PyAny>,
    ident: &str,
    open: bool,
    emitter: &'static Emitter,
) -> PyResult<()> {
    if off() {
        return Ok(());
    }
    let key = key(runner_config);
    let watch = {
        let mut t = tracking();
        if !open {
            t.forget(ident);
            return Ok(());
        }
        if t.owner.get(ident) != Some(&key) {
            // Taken over from another object (if any): its end no longer concerns this run.
            t.forget(ident);
            GENERATION.fetch_add(1, Ordering::Relaxed);
            t.owner.insert(ident.to_owned(), key);
            t.configs
                .entry(key)
                .or_default()
                .idents
                .push(ident.to_owned());
        }
        let config = t.configs.entry(key).or_default();
        // Set before the finalizer exists: a second thread does not make another.
        config.watch == Watch::Not && {
            config.watch = Watch::Watched;
            true
        }
    };
    if !watch {
        return Ok(());
    }
    let py = runner_config.py();
    let failed = match watch_end(runner_config, key) {
        Ok(()) => {
            start_reaper(emitter);
            return Ok(());
        }
        Err(e) => e,
    };
    let interrupted = !failed.is_instance_of::<PyException>(py);
    let mut t = tracking();
    if let Some(config) = t.configs.get_mut(&key) {
        // No weak reference to this object: forgotten with its last run instead. An
        // interrupt may leave it without one too: tried again with its next run.
        config.watch = if interrupted {
            Watch::Not
        } else {
            Watch::Unable
        };
        if config.idents.is_empty() {
            t.configs.remove(&key);
        }
    }
    drop(t);
    if interrupted {
        Err(failed)
    } else {
        Ok(())
    }
}

/// `weakref.finalize(runner_config, _native.config_gone, key)`, not called at exit (the
/// exit hook closes what is open then).
fn watch_end(runner_config: &Bound<'_, PyAny>, key: usize) -> PyResult<()> {
    static FINALIZE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    static GONE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let py = runner_config.py();
    let finalize = FINALIZE.import(py, "weakref", "finalize")?;
    let gone = GONE.import(py, "ansible_runner_nats_rs._native", "config_gone")?;
    let finalizer = finalize.call1((runner_config, gone, key))?;
    finalizer.setattr("atexit", false)
}

/// Starts this process's reaper thread, once.
fn start_reaper(emitter: &'static Emitter) {
    let pid = std::process::id();
    if REAPER_PID.swap(pid, Ordering::Relaxed) == pid {
        return;
    }
    let started = std::thread::Builder::new()
        .name("nats-reaper".into())
        .spawn(move || reap(emitter));
    if started.is_err() {
        // Tried again with the next object; meanwhile runs are closed at exit.
        REAPER_PID.store(0, Ordering::Relaxed);
    }
}

/// The open runs of the object `key`, forgotten (a broken stream closes them).
pub(crate) fn take(key: usize) -> Vec<String> {
    if off() {
        return Vec::new();
    }
    let mut t = tracking();
    let idents = t.take_runs(key);
    if t.configs
        .get(&key)
        .is_some_and(|c| c.watch != Watch::Watched)
    {
        t.configs.remove(&key);
    }
    idents
}

/// The object `key` is gone: called by its finalizer (`weakref.finalize`). The runs it
/// still owns are abandoned, to be closed once the grace passes without a call for them.
#[pyfunction]
pub(crate) fn config_gone(key: usize) {
    if off() {
        return;
    }
    let idents = {
        let mut t = tracking();
        let idents = t.take_runs(key);
        t.configs.remove(&key);
        idents
    };
    // Without a reaper of this process's (it could not be started, or a fork without
    // Python's hooks inherited the object) the runs are closed at exit.
    if idents.is_empty() || REAPER_PID.load(Ordering::Relaxed) != std::process::id() {
        return;
    }
    // A grace too long for the clock: never closed before the exit.
    let Some(until) = Instant::now().checked_add(grace()) else {
        return;
    };
    let mut list = lock(&ABANDONED);
    if list.stopping {
        return;
    }
    for ident in idents {
        list.runs.retain(|(i, _)| *i != ident);
        list.runs.push((ident, until));
    }
    ANY_ABANDONED.store(true, Ordering::Relaxed);
    REAPER_WAKE.notify_all();
}

/// The grace when `RUNNER_NATS_ABANDONED_GRACE` is unset or unreadable.
const DEFAULT_GRACE: Duration = Duration::from_secs(60);

/// `RUNNER_NATS_ABANDONED_GRACE`, read when an object is gone; an unreadable value is said
/// once. A value too long for a `Duration` means never.
fn grace() -> Duration {
    static SAID: AtomicBool = AtomicBool::new(false);
    let Some(text) = std::env::var_os("RUNNER_NATS_ABANDONED_GRACE") else {
        return DEFAULT_GRACE;
    };
    match text.to_str().and_then(|t| t.trim().parse::<f64>().ok()) {
        Some(s) if s >= 0.0 => Duration::try_from_secs_f64(s).unwrap_or(Duration::MAX),
        _ => {
            if !SAID.swap(true, Ordering::Relaxed) {
                pend(vec![(
                    ERROR,
                    "RUNNER_NATS_ABANDONED_GRACE is not a number of seconds (0 or more); using 60"
                        .into(),
                )]);
            }
            DEFAULT_GRACE
        }
    }
}

/// A call for the run `ident` came: it is not abandoned.
pub(crate) fn called(ident: &str) {
    if !ANY_ABANDONED.load(Ordering::Relaxed) {
        return;
    }
    let mut list = lock(&ABANDONED);
    list.runs.retain(|(i, _)| i != ident);
    ANY_ABANDONED.store(!list.runs.is_empty(), Ordering::Relaxed);
}

/// The reaper thread: closes abandoned runs as their grace ends, until the exit stops it.
fn reap(emitter: &'static Emitter) {
    while let Some(idents) = wait_due() {
        // Decrements `CLOSING` however this ends, so that the exit does not wait for it.
        struct Closing;
        impl Drop for Closing {
            fn drop(&mut self) {
                let mut closing = lock(&CLOSING);
                *closing = closing.saturating_sub(1);
                CLOSED.notify_all();
            }
        }
        let _closing = Closing;
        // A run that ended meanwhile (its terminal status came after all) is not closed
        // again, nor counted.
        let open: Vec<String> = idents
            .into_iter()
            .filter(|ident| emitter.counters(ident).is_some())
            .collect();
        if open.is_empty() {
            continue;
        }
        let report = emitter.close_runs(&open);
        CLOSED_ABANDONED.fetch_add(open.len() as u64, Ordering::Relaxed);
        let mut out = vec![(
            ERROR,
            format!(
                "the runner_config of {} open runs ({}) was garbage-collected before their terminal status (ansible-runner raised?); flushed and closed them",
                open.len(),
                open.join(", ")
            ),
        )];
        out.extend(lines(report));
        pend(out);
    }
}

/// Waits for abandoned runs whose grace is over: their idents, taken off the list (a
/// close under way from here, see [`wait_for_reaper`]), or `None` once the exit stopped
/// the reaper.
fn wait_due() -> Option<Vec<String>> {
    let mut list = lock(&ABANDONED);
    loop {
        if list.stopping {
            return None;
        }
        let now = Instant::now();
        if list.runs.iter().any(|(_, until)| *until <= now) {
            let (due, kept): (Vec<_>, Vec<_>) =
                list.runs.drain(..).partition(|(_, until)| *until <= now);
            list.runs = kept;
            ANY_ABANDONED.store(!list.runs.is_empty(), Ordering::Relaxed);
            // Counted before the list's lock goes: the exit waits for it from here.
            *lock(&CLOSING) += 1;
            return Some(due.into_iter().map(|(ident, _)| ident).collect());
        }
        let next = list.runs.iter().map(|(_, until)| *until).min();
        list = match next {
            Some(t) => {
                REAPER_WAKE
                    .wait_timeout(list, t.saturating_duration_since(now))
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
            None => REAPER_WAKE.wait(list).unwrap_or_else(|p| p.into_inner()),
        };
    }
}

/// Adds lines to log with the next handler call (or at exit).
pub(crate) fn pend(new: Lines) {
    if new.is_empty() {
        return;
    }
    lock(&PENDING).extend(new);
    ANY_PENDING.store(true, Ordering::Relaxed);
}

/// The lines not logged yet (none, at the cost of one atomic load, almost always).
pub(crate) fn take_pending() -> Lines {
    if !ANY_PENDING.load(Ordering::Relaxed) {
        return Vec::new();
    }
    let mut pending = lock(&PENDING);
    ANY_PENDING.store(false, Ordering::Relaxed);
    std::mem::take(&mut *pending)
}

/// The exit, first: forgets every object and stops the reaper (the runs still open are
/// then the exit's to close; see [`wait_for_reaper`]).
pub(crate) fn stop_reaper() {
    if off() {
        // These locks may stay held for good here (see `forked`).
        return;
    }
    {
        let mut t = tracking();
        t.configs.clear();
        t.owner.clear();
    }
    {
        let mut list = lock(&ABANDONED);
        list.runs.clear();
        list.stopping = true;
    }
    ANY_ABANDONED.store(false, Ordering::Relaxed);
    REAPER_WAKE.notify_all();
}

/// The exit, last: waits, at most `limit`, for a close the reaper has under way (bounded
/// by its runs' flush timeout, and meanwhile the exit closed the others), so that the
/// process does not end in the middle of one. Returns the lines not logged yet.
pub(crate) fn wait_for_reaper(limit: Duration) -> Lines {
    if off() {
        return Vec::new();
    }
    let deadline = Instant::now().checked_add(limit);
    let mut closing = lock(&CLOSING);
    while *closing > 0 {
        let left = deadline.map_or(limit, |d| d.saturating_duration_since(Instant::now()));
        if left.is_zero() {
            break;
        }
        closing = CLOSED
            .wait_timeout(closing, left)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
    drop(closing);
    take_pending()
}

/// In a forked child (`os.register_at_fork`): the parent's objects, abandoned runs and
/// reaper are not the child's. Its copies of the parent's runs have no client threads and
/// are never closed here; the child's own runs are tracked and reaped anew. If a thread of
/// the parent's held one of these four locks at the fork (the reaper holds them for
/// moments), it stays held for good in the child: the child then leaves its runs' objects
/// alone (`OFF`). The emitter's own locks are no concern: the child gets an emitter of its
/// own (see `emitter()` in lib.rs).
#[pyfunction]
pub(crate) fn forked() {
    // First: the child's handler calls use an emitter of their own from here on.
    FORK_DEPTH.fetch_add(1, Ordering::Relaxed);
    REAPER_PID.store(0, Ordering::Relaxed);
    ANY_ABANDONED.store(false, Ordering::Relaxed);
    ANY_PENDING.store(false, Ordering::Relaxed);
    GENERATION.fetch_add(1, Ordering::Relaxed);
    let free = (
        unheld(&TRACKING),
        unheld(&ABANDONED),
        unheld(&PENDING),
        unheld(&CLOSING),
    );
    let (Some(mut tracking), Some(mut abandoned), Some(mut pending), Some(mut closing)) = free
    else {
        OFF.store(true, Ordering::Relaxed);
        return;
    };
    // An `OFF` parent's child whose locks are free after all.
    OFF.store(false, Ordering::Relaxed);
    tracking.configs.clear();
    tracking.owner.clear();
    abandoned.runs.clear();
    abandoned.stopping = false;
    pending.clear();
    *closing = 0;
}

/// Whether this process leaves runs alone (see [`forked`]).
static OFF: AtomicBool = AtomicBool::new(false);

/// How many forks (with Python's at-fork hooks) separate this process from the one that
/// imported the plugin.
static FORK_DEPTH: AtomicUsize = AtomicUsize::new(0);

pub(crate) fn fork_depth() -> usize {
    FORK_DEPTH.load(Ordering::Relaxed)
}

/// Whether this process leaves the tracking alone (see [`forked`]).
fn off() -> bool {
    OFF.load(Ordering::Relaxed)
}

fn unheld<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// The open run a thread last recorded, so that a run's stream of events does not take
/// the lock for each one.
pub(crate) struct LastRun {
    key: usize,
    generation: u64,
    ident: String,
    open: bool,
}

impl LastRun {
    pub(crate) const fn new() -> LastRun {
        LastRun {
            key: 0,
            generation: 0,
            ident: String::new(),
            open: false,
        }
    }

    pub(crate) fn is(&self, key: usize, ident: &str) -> bool {
        self.open
            && self.key == key
            && self.generation == GENERATION.load(Ordering::Relaxed)
            && self.ident == ident
    }

    pub(crate) fn set(&mut self, key: usize, ident: &str, open: bool) {
        self.key = key;
        self.generation = GENERATION.load(Ordering::Relaxed);
        self.ident.clear();
        self.ident.push_str(ident);
        self.open = open;
    }
}

//! Which open runs each `runner_config` object opened, and what becomes of them when the
//! object is gone.
//!
//! - A broken worker stream (a status without `runner_ident`) closes the runs of its own
//!   `ansible-runner process`, not every run of the process ([`take`]).
//! - A configuration object that is garbage-collected before its runs got their terminal
//!   status (ansible-runner raised, and the host dropped the `Runner`) can bring no more
//!   calls: its runs are *abandoned*. After a grace period without a call for them they
//!   are flushed and closed by the reaper thread ([`wait_abandoned`], [`close_abandoned`]),
//!   instead of keeping a connection and two threads each for the life of the process. A
//!   call for a run within the grace keeps it open (a caller that makes a new
//!   configuration object per call).
//!
//! Objects are known by address. A weak reference (`weakref.finalize`) reports each
//! object's end ([`config_gone`]) before its address can be reused; objects that take no
//! weak reference are only forgotten when their last run ends.
//!
//! [`config_gone`] runs in whichever thread collected the object, maybe inside the garbage
//! collector, where Python code could deadlock (a collection inside `threading` holding
//! its own lock): it runs no Python code, logs nothing and starts no thread; it records
//! and wakes the reaper. No lock here is held while Python code runs: any Python call can
//! collect garbage and so run [`config_gone`], which takes these locks.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::{Lines, ERROR};

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

fn configs() -> MutexGuard<'static, HashMap<usize, Config>> {
    static CONFIGS: OnceLock<Mutex<HashMap<usize, Config>>> = OnceLock::new();
    lock(CONFIGS.get_or_init(Default::default))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Runs whose configuration object is gone, each with the time its grace ends; and
/// whether the exit stopped the reaper.
#[derive(Default)]
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

fn abandoned() -> MutexGuard<'static, Abandoned> {
    lock(&ABANDONED)
}

/// Lines for the reaper to log (closes, an unreadable grace): logged by the reaper after
/// each close, or by the exit hook.
static PENDING: Mutex<Lines> = Mutex::new(Vec::new());

/// The process the weak references were made in: a forked child's copies of the runs
/// have no threads, and are not its to close.
static PID: OnceLock<u32> = OnceLock::new();

/// Whether `abandoned()` may hold anything: the one check a handler call makes.
static ANY_ABANDONED: AtomicBool = AtomicBool::new(false);

/// Bumped at each object's end, so that a thread's [`LastRun`] of an object that is gone
/// does not stand for a new object at the same address.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// Runs closed because their configuration object was gone (`stats()['abandoned']`).
pub(crate) static CLOSED_ABANDONED: AtomicU64 = AtomicU64::new(0);

/// Abandoned runs being closed right now, for [`stop`].
static CLOSING: Mutex<usize> = Mutex::new(0);
static CLOSED: Condvar = Condvar::new();

/// Whether the reaper thread was started (with the first watched object).
static REAPER: AtomicBool = AtomicBool::new(false);

pub(crate) fn key(runner_config: &Bound<'_, PyAny>) -> usize {
    runner_config.as_ptr() as usize
}

/// Records that the run `ident` of the object `runner_config` is open (`open`) or not;
/// the first run of an object also sets up the report of its end. Fails only with what
/// must propagate (KeyboardInterrupt).
pub(crate) fn remember(runner_config: &Bound<'_, PyAny>, ident: &str, open: bool) -> PyResult<()> {
    let key = key(runner_config);
    let watch = {
        let mut configs = configs();
        if open {
            let config = configs.entry(key).or_default();
            if !config.idents.iter().any(|i| i == ident) {
                config.idents.push(ident.to_owned());
            }
            // Set before the finalizer exists: a second thread does not make another.
            config.watch == Watch::Not && {
                config.watch = Watch::Watched;
                true
            }
        } else {
            if let Some(config) = configs.get_mut(&key) {
                config.idents.retain(|i| i != ident);
                if config.idents.is_empty() && config.watch != Watch::Watched {
                    configs.remove(&key);
                }
            }
            false
        }
    };
    if !watch {
        return Ok(());
    }
    let py = runner_config.py();
    match watch_end(runner_config, key) {
        Ok(()) => return start_reaper(py),
        Err(e) if !e.is_instance_of::<PyException>(py) => return Err(e),
        Err(_) => {}
    }
    // No weak reference to this object: forgotten with its last run instead.
    let mut configs = configs();
    if let Some(config) = configs.get_mut(&key) {
        config.watch = Watch::Unable;
        if config.idents.is_empty() {
            configs.remove(&key);
        }
    }
    Ok(())
}

/// Starts the reaper thread (`_reap_abandoned`, a daemon thread of Python's) once, from
/// a handler call: not from the garbage collector.
fn start_reaper(py: Python<'_>) -> PyResult<()> {
    static START: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    if REAPER.swap(true, Ordering::Relaxed) {
        return Ok(());
    }
    PID.get_or_init(std::process::id);
    let started = START
        .import(py, "ansible_runner_nats_rs", "_start_reaper")
        .and_then(|start| start.call0());
    match started {
        Ok(_) => Ok(()),
        Err(e) => {
            // Tried again with the next object; meanwhile runs are closed at exit.
            REAPER.store(false, Ordering::Relaxed);
            if e.is_instance_of::<PyException>(py) {
                Ok(())
            } else {
                Err(e)
            }
        }
    }
}

/// `weakref.finalize(runner_config, _native.config_gone, key)`, not called at exit (the exit
/// hook closes what is open then).
fn watch_end(runner_config: &Bound<'_, PyAny>, key: usize) -> PyResult<()> {
    static FINALIZE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    static GONE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let py = runner_config.py();
    let finalize = FINALIZE.import(py, "weakref", "finalize")?;
    let gone = GONE.import(py, "ansible_runner_nats_rs._native", "config_gone")?;
    let finalizer = finalize.call1((runner_config, gone, key))?;
    finalizer.setattr("atexit", false)
}

/// The open runs of the object `key`, forgotten (a broken stream closes them).
pub(crate) fn take(key: usize) -> Vec<String> {
    let mut configs = configs();
    match configs.get_mut(&key) {
        Some(config) if config.watch == Watch::Watched => std::mem::take(&mut config.idents),
        Some(_) => configs.remove(&key).map(|c| c.idents).unwrap_or_default(),
        None => Vec::new(),
    }
}

/// The exit: forgets every object, stops the reaper and waits, at most `limit`, for a
/// close it has under way (each bounded by its run's flush timeout), so that the process
/// does not end in the middle of one. Returns the lines the reaper did not log.
pub(crate) fn stop(limit: Duration) -> Lines {
    configs().clear();
    {
        let mut list = abandoned();
        list.runs.clear();
        list.stopping = true;
    }
    ANY_ABANDONED.store(false, Ordering::Relaxed);
    REAPER_WAKE.notify_all();
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

/// The object `key` is gone: called by its finalizer (`weakref.finalize`). Its open runs
/// are abandoned, to be closed once the grace passes without a call for them.
#[pyfunction]
pub(crate) fn config_gone(key: usize) {
    if PID.get().is_some_and(|pid| *pid != std::process::id()) {
        return;
    }
    GENERATION.fetch_add(1, Ordering::Relaxed);
    let idents = configs().remove(&key).map(|c| c.idents).unwrap_or_default();
    if idents.is_empty() {
        return;
    }
    let until = Instant::now()
        .checked_add(grace())
        .unwrap_or_else(Instant::now);
    let mut list = abandoned();
    if list.stopping {
        return;
    }
    for ident in &idents {
        list.runs.retain(|(i, _)| i != ident);
        list.runs.push((ident.clone(), until));
    }
    ANY_ABANDONED.store(true, Ordering::Relaxed);
    REAPER_WAKE.notify_all();
}

/// The grace when `RUNNER_NATS_ABANDONED_GRACE` is unset or unreadable.
const DEFAULT_GRACE: Duration = Duration::from_secs(60);

/// `RUNNER_NATS_ABANDONED_GRACE`, read when an object is gone (an unreadable value is
/// said once, by the reaper).
fn grace() -> Duration {
    static SAID: AtomicBool = AtomicBool::new(false);
    let Some(text) = std::env::var_os("RUNNER_NATS_ABANDONED_GRACE") else {
        return DEFAULT_GRACE;
    };
    let seconds = text.to_str().and_then(|t| t.trim().parse::<f64>().ok());
    if let Some(grace) = seconds.and_then(|s| Duration::try_from_secs_f64(s).ok()) {
        return grace;
    }
    if !SAID.swap(true, Ordering::Relaxed) {
        lock(&PENDING).push((
            ERROR,
            "RUNNER_NATS_ABANDONED_GRACE is not a number of seconds (0 or more); using 60".into(),
        ));
    }
    DEFAULT_GRACE
}

/// A call for the run `ident` came: it is not abandoned.
pub(crate) fn called(ident: &str) {
    if !ANY_ABANDONED.load(Ordering::Relaxed) {
        return;
    }
    let mut list = abandoned();
    list.runs.retain(|(i, _)| i != ident);
    ANY_ABANDONED.store(!list.runs.is_empty(), Ordering::Relaxed);
}

/// The reaper's wait (without the GIL) for abandoned runs whose grace is over: their
/// idents, taken off the list (counted as a close under way until [`closed`]), or `None`
/// once the exit stopped the reaper.
pub(crate) fn wait_due() -> Option<Vec<String>> {
    let mut list = abandoned();
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

/// A close that [`wait_due`] began has ended, with `lines` to log.
pub(crate) fn closed(runs: usize, lines: Lines) {
    CLOSED_ABANDONED.fetch_add(runs as u64, Ordering::Relaxed);
    lock(&PENDING).extend(lines);
    let mut closing = lock(&CLOSING);
    *closing = closing.saturating_sub(1);
    CLOSED.notify_all();
}

/// The lines not logged yet.
pub(crate) fn take_pending() -> Lines {
    std::mem::take(&mut *lock(&PENDING))
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

//! `ansible_runner_nats_rs._native`: the native half of the ansible-runner `nats` plugin.
//!
//! - `dumps(obj) -> bytes`: JSON of an event / status dict, straight from the Python objects
//!   (see [`ser`]).
//! - `handle(kind, runner_config, data) -> [(level, line)]`: serializes `data` and publishes it
//!   through the process-wide emitter (one connection per run); returns the lines to log.
//! - `stats() -> dict`: counters (serializer stages, handled payloads).
//! - `close_all() -> [(level, line)]`: flushes and closes the runs still open (at exit).
//! - `config_gone(key)`, `take_pending() -> [(level, line)]`, `forked()`: the runs a
//!   garbage-collected `runner_config` object left open (see the `runs` module).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

use ansible_runner_nats::emitter::{
    config, ConfigIssue, Emitter, Kind, Loaded, Report, TERMINAL_STATUSES,
};

use pyo3::exceptions::PyException;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

mod runs;
pub mod ser;

pub use ser::{dumps, dumps_into, Stage};

static HANDLED_EVENT: AtomicU64 = AtomicU64::new(0);
static HANDLED_STATUS: AtomicU64 = AtomicU64::new(0);
static HANDLED_OTHER: AtomicU64 = AtomicU64::new(0);
static HANDLED_BYTES: AtomicU64 = AtomicU64::new(0);
/// Events (not statuses) without a runner_ident, and whether one was reported.
static NO_IDENT: AtomicU64 = AtomicU64::new(0);
static NO_IDENT_REPORTED: AtomicBool = AtomicBool::new(false);
/// Whether an event the serializer could only replace by an error document was reported.
static UNSERIALIZABLE_REPORTED: AtomicBool = AtomicBool::new(false);

/// Serialize `obj` to JSON bytes. Parses equal to `json.dumps(obj)`; anything the fast path
/// does not know goes through `json.dumps(obj, default=str)`, and if even that raises the
/// result is `{"error":"unserializable event",...}`. Only KeyboardInterrupt / SystemExit
/// (BaseExceptions that are not Exceptions) raised by Python code on the way propagate.
#[pyfunction(name = "dumps")]
fn py_dumps<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    ser::dumps(obj)
}

/// The process-wide emitter: one per process, one connection per run inside it. A forked
/// child gets one of its own (`runs::forked` counts the forks): there the parent's runs
/// are copies without their threads, and a thread of the parent's inside a handler call
/// at the fork may have left one of that emitter's locks held for good. One slot per fork
/// depth, so that a child's slot is one its parent never touched.
fn emitter() -> &'static Emitter {
    static EMITTERS: [OnceLock<Emitter>; FORK_DEPTHS + 1] =
        [const { OnceLock::new() }; FORK_DEPTHS + 1];
    EMITTERS[runs::fork_depth().min(FORK_DEPTHS)].get_or_init(Emitter::new)
}

/// The emitter of this process, `None` in a process forked more than [`FORK_DEPTHS`]
/// levels deep, which publishes nothing: its slot would be its parent's.
fn own_emitter() -> Option<&'static Emitter> {
    (runs::fork_depth() <= FORK_DEPTHS).then(emitter)
}

/// How many levels of forks get an emitter of their own.
const FORK_DEPTHS: usize = 16;
/// Whether a process forked too deep was told so.
static TOO_DEEP_SAID: AtomicBool = AtomicBool::new(false);

/// Log lines for Python: (level, message), level as in `logging` (40 = ERROR, 20 = INFO).
type Lines = Vec<(u8, String)>;

const ERROR: u8 = 40;
const INFO: u8 = 20;

fn lines(report: Report) -> Lines {
    let mut out: Lines = report.errors.into_iter().map(|e| (ERROR, e)).collect();
    if let Some(s) = report.summary {
        let c = s.counters;
        let mut line = format!(
            "run {}: {} messages published ({} bytes), {} dropped, {} oversized, {} truncated, {} undelivered, {} denied",
            s.runner_ident, c.published, c.bytes, c.dropped, c.oversized, c.truncated, c.undelivered, c.denied
        );
        if let Some(js) = c.jetstream {
            line.push_str(&format!(
                "; JetStream: {} acknowledged ({} duplicates), {} retries, {} refused",
                js.acknowledged, js.duplicates, js.retries, js.refused
            ));
        }
        out.push((INFO, line));
    }
    out
}

/// `Some` value of `r`, `None` for an ordinary exception (bad input, reported otherwise or
/// not at all); a BaseException that is no Exception (KeyboardInterrupt, SystemExit)
/// propagates: it must still stop the run.
fn ordinary<T>(py: Python<'_>, r: PyResult<T>) -> PyResult<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_instance_of::<PyException>(py) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The `nats_*` runner settings as JSON, through the same serializer as events; the
/// others are not ours to read (and one of them, a float `inf`, would make the whole
/// document unreadable). A problem is added to `issues`.
fn settings_json(
    runner_config: &Bound<'_, PyAny>,
    issues: &mut Vec<ConfigIssue>,
) -> PyResult<Option<serde_json::Value>> {
    let py = runner_config.py();
    let mut issue = |problem: String| {
        issues.push(ConfigIssue {
            source: "runner settings".into(),
            problem,
            disables: false,
        })
    };
    let Some(settings) = ordinary(py, runner_config.getattr("settings"))? else {
        // Not every caller's configuration object has settings.
        return Ok(None);
    };
    if settings.is_none() {
        return Ok(None);
    }
    let Ok(settings) = settings.cast::<PyDict>() else {
        issue("not a dict; ignored".into());
        return Ok(None);
    };
    let ours = PyDict::new(py);
    for (key, value) in settings.iter() {
        if key
            .cast::<PyString>()
            .is_ok_and(|k| k.to_cow().is_ok_and(|k| k.starts_with("nats_")))
        {
            ours.set_item(key, value)?;
        }
    }
    if ours.is_empty() {
        return Ok(None);
    }
    let mut buf = Vec::new();
    // Raises only what must propagate.
    ser::dumps_into(ours.as_any(), &mut buf)?;
    match serde_json::from_slice(&buf) {
        Ok(value) => Ok(Some(value)),
        Err(_) => {
            issue("the nats_* settings hold a value JSON has no word for (a NaN or an infinity?); ignored".into());
            Ok(None)
        }
    }
}

/// The host name, `None` when Python cannot tell it (or it is not text).
fn hostname(py: Python<'_>) -> PyResult<Option<String>> {
    let name = py
        .import("socket")
        .and_then(|m| m.call_method0("gethostname"))
        .and_then(|h| h.extract::<String>());
    ordinary(py, name)
}

fn load_config(py: Python<'_>, runner_config: &Bound<'_, PyAny>) -> PyResult<Loaded> {
    let (env, mut issues) = config::environment(std::env::vars_os());
    let settings = settings_json(runner_config, &mut issues)?;
    // Only the variable's `hostname` is the host name (see `config::load`).
    let needs_host = env.get("RUNNER_NATS_SUBJECT_ID").map(String::as_str) == Some("hostname");
    let host = if needs_host {
        hostname(py)?.unwrap_or_else(|| {
            // Said: `localhost` may well be another host's subject id too.
            issues.push(ConfigIssue {
                source: "subject id \"hostname\"".into(),
                problem: "socket.gethostname() failed or gave no text; using localhost".into(),
                disables: false,
            });
            "localhost".into()
        })
    } else {
        String::new()
    };
    let mut loaded = config::load(&env, settings.as_ref(), &host);
    // Said even when the configuration is off: the settings may be why.
    issues.append(&mut loaded.issues);
    loaded.issues = issues;
    Ok(loaded)
}

/// `data[key]` as text (`str()` of a value that is not a str), if `data` is a dict that has
/// it. Keys are interned by the callers (`intern!`): no new key object and hash per call.
fn text_item(data: &Bound<'_, PyAny>, key: &Bound<'_, PyString>) -> PyResult<Option<String>> {
    let py = data.py();
    let Ok(dict) = data.cast::<PyDict>() else {
        return Ok(None);
    };
    let Some(value) = ordinary(py, dict.get_item(key))?.flatten() else {
        return Ok(None);
    };
    if value.is_exact_instance_of::<PyString>() {
        if let Ok(s) = value.cast::<PyString>() {
            return Ok(Some(s.to_string_lossy().into_owned()));
        }
    }
    Ok(ordinary(py, value.str())?.map(|s| s.to_string()))
}

/// One handler call: `kind` is "event" or "status". Returns the lines to log. Never
/// raises for bad input: what cannot be handled is reported in the lines.
#[pyfunction]
fn handle(
    py: Python<'_>,
    kind: &str,
    runner_config: &Bound<'_, PyAny>,
    data: &Bound<'_, PyAny>,
) -> PyResult<Lines> {
    if own_emitter().is_none() {
        if TOO_DEEP_SAID.swap(true, Ordering::Relaxed) {
            return Ok(Vec::new());
        }
        return Ok(vec![(
            ERROR,
            format!("this process is forked more than {FORK_DEPTHS} levels deep from the one that imported the plugin: nothing is published here"),
        )]);
    }
    // What the reaper of abandoned runs had to say since the last call comes first: it
    // happened first.
    let mut out = runs::take_pending();
    match handle_call(py, kind, runner_config, data) {
        Ok(lines) => {
            out.extend(lines);
            Ok(out)
        }
        Err(e) => {
            runs::pend(out);
            Err(e)
        }
    }
}

fn handle_call(
    py: Python<'_>,
    kind: &str,
    runner_config: &Bound<'_, PyAny>,
    data: &Bound<'_, PyAny>,
) -> PyResult<Lines> {
    let counter = match kind {
        "event" => &HANDLED_EVENT,
        "status" => &HANDLED_STATUS,
        _ => &HANDLED_OTHER,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let status = if kind == "status" {
        text_item(data, intern!(py, "status"))?
    } else {
        None
    };
    let Some(ident) = text_item(data, intern!(py, "runner_ident"))? else {
        return without_ident(py, kind, status.as_deref(), runner_config, data);
    };
    let mut report = Report::default();
    // Never an emitter lock with the GIL held: a thread holding the lock may be waiting
    // for the GIL (the configuration is read with it, through `settings` and maybe
    // `socket.gethostname`).
    let source = runner_config.clone().unbind();
    let kind = kind_status(&status);
    let mut interrupted = None;
    let opened = py.detach(|| {
        emitter().open(
            &ident,
            kind,
            || {
                Python::attach(|py| {
                    load_config(py, source.bind(py)).unwrap_or_else(|e| {
                        interrupted = Some(e);
                        Loaded::none()
                    })
                })
            },
            &mut report,
        )
    });
    if let Some(e) = interrupted {
        return Err(e);
    }
    let terminal = status
        .as_deref()
        .is_some_and(|s| TERMINAL_STATUSES.contains(&s));
    runs::called(&ident);
    // Statuses always; events only when they are not of the run this thread saw last,
    // so that a run's stream of events does not take the lock for each one.
    let key = runs::key(runner_config);
    if status.is_some() || !LAST_RUN.with(|last| last.borrow().is(key, &ident)) {
        runs::remember(runner_config, &ident, opened && !terminal, emitter())?;
        LAST_RUN.with(|last| last.borrow_mut().set(key, &ident, opened && !terminal));
    }
    if !opened {
        if terminal {
            py.detach(|| emitter().forget(&ident));
        }
        return Ok(lines(report));
    }
    // One buffer per thread, reused: a 38 KB event is not re-grown from scratch each call.
    let mut payload = PAYLOAD
        .with(std::cell::Cell::take)
        .unwrap_or_else(|| Vec::with_capacity(4096));
    payload.clear();
    let result = handle_payload(py, kind, data, &ident, &mut payload, report);
    if payload.capacity() <= 1 << 20 {
        PAYLOAD.with(|p| p.set(Some(payload)));
    }
    result
}

/// A message without `runner_ident`: there is nothing to publish it under. Said (for
/// events, the first time) where something configures the plugin; a plugin that nothing
/// turns on stays silent, as it does for every other message.
fn without_ident(
    py: Python<'_>,
    kind: &str,
    status: Option<&str>,
    runner_config: &Bound<'_, PyAny>,
    data: &Bound<'_, PyAny>,
) -> PyResult<Lines> {
    if kind != "status" {
        // Nothing to publish it under; other runs are not affected.
        NO_IDENT.fetch_add(1, Ordering::Relaxed);
        if NO_IDENT_REPORTED.load(Ordering::Relaxed)
            || !configured(py, runner_config)?
            || NO_IDENT_REPORTED.swap(true, Ordering::Relaxed)
        {
            return Ok(Vec::new());
        }
        return Ok(vec![(
            ERROR,
            format!("{kind} without runner_ident: not published, nor any later one without it (counted in stats()['no_ident'])"),
        )]);
    }
    // `ansible-runner process` reports a broken worker stream as a status without a
    // runner_ident. Nothing more will come for the runs it opened with this
    // configuration; other runs of the process go on.
    let idents = runs::take(runs::key(runner_config));
    if idents.is_empty() && !configured(py, runner_config)? {
        return Ok(Vec::new());
    }
    let explanation = text_item(data, intern!(py, "job_explanation"))?.unwrap_or_default();
    let mut out = lines(py.detach(|| emitter().close_runs(&idents)));
    out.insert(
        0,
        (
            ERROR,
            format!(
                "{kind} {:?} without runner_ident ({}); not published; {} open runs of this stream closed",
                status.unwrap_or("?"),
                shown_explanation(&explanation),
                idents.len()
            ),
        ),
    );
    Ok(out)
}

/// Whether anything configures the plugin for `runner_config`: a configuration that
/// loads, or settings or variables whose problems a run's start would report.
fn configured(py: Python<'_>, runner_config: &Bound<'_, PyAny>) -> PyResult<bool> {
    let loaded = load_config(py, runner_config)?;
    Ok(loaded.config.is_some() || !loaded.issues.is_empty())
}

thread_local! {
    static PAYLOAD: std::cell::Cell<Option<Vec<u8>>> = const { std::cell::Cell::new(None) };
    static LAST_RUN: std::cell::RefCell<runs::LastRun> =
        const { std::cell::RefCell::new(runs::LastRun::new()) };
}

/// A `job_explanation` as far as its first ':', at most 200 characters: what follows may
/// quote the worker's stream (`Line with invalid JSON data: {"env": ...}`), secrets and all.
fn shown_explanation(text: &str) -> String {
    let head = text.split(':').next().unwrap_or_default().trim();
    let mut shown: String = head.chars().take(200).collect();
    if shown.len() < text.trim().len() {
        shown.push_str(" (the rest not shown)");
    }
    shown
}

fn kind_status(status: &Option<String>) -> Kind<'_> {
    match status {
        Some(s) => Kind::Status(s),
        None => Kind::Event,
    }
}

/// Serializes `data` into `payload` and publishes it for the run `ident`.
fn handle_payload(
    py: Python<'_>,
    kind: Kind<'_>,
    data: &Bound<'_, PyAny>,
    ident: &str,
    payload: &mut Vec<u8>,
    mut report: Report,
) -> PyResult<Lines> {
    let stage = ser::dumps_into(data, payload)?;
    HANDLED_BYTES.fetch_add(payload.len() as u64, Ordering::Relaxed);
    if stage == Stage::Failed && !UNSERIALIZABLE_REPORTED.swap(true, Ordering::Relaxed) {
        report.errors.push(format!(
            "run {ident}: a message could not be serialized, even by json.dumps(default=str) (a cycle?): published as an error document; later ones are only counted (stats()['dumps_failed'])"
        ));
    }
    // The event's uuid: its de-duplication id with JetStream.
    let uuid = match kind {
        Kind::Event => text_item(data, intern!(py, "uuid"))?,
        Kind::Status(_) => None,
    };
    // The network work (and the bounded flush at the end of a run) without the GIL.
    let published = py
        .detach(|| emitter().publish_with_id(ident, kind, uuid.as_deref(), payload, Loaded::none));
    report.errors.extend(published.errors);
    report.summary = published.summary;
    Ok(lines(report))
}

/// Flushes and closes every run still open (each bounded by its flush timeout): for the
/// interpreter's exit, so that a run that never got its terminal status still delivers
/// what it queued, or says what it could not. Stops the reaper of abandoned runs first,
/// and waits for the close it has under way (that run is no longer among the open ones).
#[pyfunction]
fn close_all(py: Python<'_>) -> Lines {
    let Some(emitter) = own_emitter() else {
        return Vec::new();
    };
    // The runs still open and the reaper's close under way (if any) end side by side:
    // one flush timeout, not two.
    runs::stop_reaper();
    let mut out = lines(py.detach(|| emitter.close_all()));
    let mut said = py.detach(|| runs::wait_for_reaper(EXIT_WAIT));
    said.append(&mut out);
    said
}

/// The longest the exit waits for the reaper's close under way; each close is bounded by
/// its runs' flush timeout already.
const EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// The lines of closes the reaper made (and of an unreadable grace) that no handler call
/// returned yet; for tests and hosts that want them before the next call.
#[pyfunction]
fn take_pending() -> Lines {
    runs::take_pending()
}

/// Process-wide counters.
#[pyfunction]
fn stats(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let d = PyDict::new(py);
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    d.set_item("dumps_fast", get(&ser::FAST))?;
    d.set_item("dumps_fallback", get(&ser::FALLBACK))?;
    d.set_item("dumps_failed", get(&ser::FAILED))?;
    d.set_item("handled_event", get(&HANDLED_EVENT))?;
    d.set_item("handled_status", get(&HANDLED_STATUS))?;
    d.set_item("handled_other", get(&HANDLED_OTHER))?;
    d.set_item("handled_bytes", get(&HANDLED_BYTES))?;
    d.set_item("late", emitter().late_messages())?;
    d.set_item("no_ident", get(&NO_IDENT))?;
    d.set_item("abandoned", get(&runs::CLOSED_ABANDONED))?;
    Ok(d)
}

// The serializer reads dicts and lists without locking them (`ser`): on a free-threaded
// CPython, importing the module must turn the GIL back on.
#[pymodule(gil_used = true)]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    ser::init(m.py());
    m.add_function(wrap_pyfunction!(py_dumps, m)?)?;
    m.add_function(wrap_pyfunction!(handle, m)?)?;
    m.add_function(wrap_pyfunction!(stats, m)?)?;
    m.add_function(wrap_pyfunction!(close_all, m)?)?;
    m.add_function(wrap_pyfunction!(take_pending, m)?)?;
    m.add_function(wrap_pyfunction!(runs::forked, m)?)?;
    m.add_function(wrap_pyfunction!(runs::config_gone, m)?)?;
    m.add("MAX_DEPTH", ser::MAX_DEPTH)?;
    m.add("ABI3", cfg!(feature = "abi3"))?;
    Ok(())
}

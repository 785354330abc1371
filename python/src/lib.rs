//! `ansible_runner_nats_rs._native`: the native half of the ansible-runner `nats` plugin.
//!
//! - `dumps(obj) -> bytes`: JSON of an event / status dict, straight from the Python objects
//!   (see [`ser`]).
//! - `handle(kind, runner_ident, settings, payload) -> None`: where the emitter will plug in;
//!   for now it only counts.
//! - `stats() -> dict`: counters (serializer stages, handled payloads).

use std::sync::atomic::{AtomicU64, Ordering};

use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

pub mod ser;

pub use ser::{dumps, dumps_into, Stage};

static HANDLED_EVENT: AtomicU64 = AtomicU64::new(0);
static HANDLED_STATUS: AtomicU64 = AtomicU64::new(0);
static HANDLED_OTHER: AtomicU64 = AtomicU64::new(0);
static HANDLED_BYTES: AtomicU64 = AtomicU64::new(0);

/// Serialize `obj` to JSON bytes. Parses equal to `json.dumps(obj)`; anything the fast path
/// does not know goes through `json.dumps(obj, default=str)`, and if even that raises the
/// result is `{"error":"unserializable event",...}`. Only KeyboardInterrupt / SystemExit
/// (BaseExceptions that are not Exceptions) raised by Python code on the way propagate.
#[pyfunction(name = "dumps")]
fn py_dumps<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    ser::dumps(obj)
}

/// Placeholder for the emitter: `kind` is "event" or "status". Counts and returns.
#[pyfunction]
#[pyo3(signature = (kind, runner_ident, settings, payload))]
fn handle(
    kind: &str,
    runner_ident: &str,
    settings: Option<Bound<'_, PyDict>>,
    payload: &[u8],
) -> PyResult<()> {
    let _ = (runner_ident, settings);
    let counter = match kind {
        "event" => &HANDLED_EVENT,
        "status" => &HANDLED_STATUS,
        _ => &HANDLED_OTHER,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    HANDLED_BYTES.fetch_add(payload.len() as u64, Ordering::Relaxed);
    Ok(())
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
    Ok(d)
}

#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    ser::init(m.py());
    m.add_function(wrap_pyfunction!(py_dumps, m)?)?;
    m.add_function(wrap_pyfunction!(handle, m)?)?;
    m.add_function(wrap_pyfunction!(stats, m)?)?;
    m.add("MAX_DEPTH", ser::MAX_DEPTH)?;
    m.add("ABI3", cfg!(feature = "abi3"))?;
    Ok(())
}

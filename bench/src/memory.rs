//! Section 4: peak RSS of a process that publishes 1,000,000 × 1 KB messages, with the server
//! down (the client connected, then its server was killed and it keeps trying to reconnect;
//! what it holds is bounded by its reconnect buffer, 8 MiB by default in all three) and with
//! the server up (publish, flush).
//! Every measurement is a fresh process (`arn-bench memory-child ...`) so peaks don't mix.

use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Server;

const N: usize = 1_000_000;
const SIZE: usize = 1024;

/// (VmRSS, VmHWM) of this process in KiB.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

struct Outcome {
    accepted: usize,
    refused: usize,
    note: &'static str,
}

/// Waits (bounded) until `down()` holds: the client noticed that its server is gone.
fn until(what: &str, down: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !down() {
        assert!(
            Instant::now() < deadline,
            "{what} did not notice the server's death"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn ours(url: &str, server: Option<Server>, payload: &[u8], baseline: &mut u64) -> Outcome {
    let up = server.is_none();
    let c = ansible_runner_nats::client::connect(url).unwrap();
    if let Some(server) = server {
        drop(server);
        until("ours", || !c.is_connected());
    }
    *baseline = rss().0;
    let mut accepted = 0;
    for _ in 0..N {
        if c.publish("mem", payload).is_ok() {
            accepted += 1;
        }
    }
    if up {
        c.flush(Duration::from_secs(60)).unwrap();
    }
    Outcome {
        accepted,
        refused: N - accepted,
        note: "refused at once: BufferFull, counted as dropped",
    }
}

#[allow(deprecated, reason = "the legacy crate is the peer being measured")]
fn legacy(url: &str, server: Option<Server>, payload: &[u8], baseline: &mut u64) -> Outcome {
    let up = server.is_none();
    let lost = Arc::new(AtomicBool::new(false));
    let flag = lost.clone();
    let c = nats::Options::new()
        .max_reconnects(None)
        .disconnect_callback(move || flag.store(true, Ordering::SeqCst))
        .connect(url)
        .unwrap();
    if let Some(server) = server {
        drop(server);
        until("legacy", || lost.load(Ordering::SeqCst));
    }
    *baseline = rss().0;
    let mut accepted = 0;
    for _ in 0..N {
        if c.publish("mem", payload).is_ok() {
            accepted += 1;
        }
    }
    if up {
        c.flush_timeout(Duration::from_secs(60)).unwrap();
    }
    Outcome {
        accepted,
        refused: N - accepted,
        note: "refused at once with an error",
    }
}

fn async_nats(url: &str, server: Option<Server>, payload: &[u8], baseline: &mut u64) -> Outcome {
    let up = server.is_none();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = async_nats::ConnectOptions::new()
            .max_reconnects(None)
            .connect(url)
            .await
            .unwrap();
        if let Some(server) = server {
            drop(server);
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.connection_state() == async_nats::connection::State::Connected {
                assert!(Instant::now() < deadline, "async-nats did not notice");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        *baseline = rss().0;
        let bytes = bytes::Bytes::copy_from_slice(payload);
        let mut accepted = 0;
        for _ in 0..N {
            let publish = c.publish("mem", bytes.clone());
            match tokio::time::timeout(Duration::from_secs(1), publish).await {
                Ok(Ok(())) => accepted += 1,
                // Blocked for a second: it will not take more while the server is down.
                _ => break,
            }
        }
        if up {
            c.flush().await.unwrap();
        }
        Outcome {
            accepted,
            refused: N - accepted,
            note: "publish blocks (awaits forever) once its queue is full",
        }
    })
}

/// `memory-child <client> <up|down> <url>`: prints `peak baseline accepted refused note`.
/// For `down` it starts a server of its own, connects, and kills it before publishing.
pub fn child(args: &[String]) {
    let (client, mode, url) = (args[0].as_str(), args[1].as_str(), args[2].clone());
    let (server, url) = if mode == "down" {
        let s = crate::start_server();
        let url = s.url();
        (Some(s), url)
    } else {
        (None, url)
    };
    let payload = vec![b'x'; SIZE];
    let mut baseline = 0;
    let o = match client {
        "ours" => ours(&url, server, &payload, &mut baseline),
        "legacy" => legacy(&url, server, &payload, &mut baseline),
        "async" => async_nats(&url, server, &payload, &mut baseline),
        other => panic!("unknown client {other}"),
    };
    let (_, peak) = rss();
    println!(
        "{peak}\t{baseline}\t{}\t{}\t{}",
        o.accepted, o.refused, o.note
    );
    // Don't wait on reconnect loops at exit.
    std::process::exit(0);
}

pub fn section(server: &Server) {
    let me = std::env::current_exe().unwrap();
    println!("## Memory: peak RSS publishing {N} × {SIZE} B (KiB; a fresh process per row)\n");
    println!("| client | server | peak RSS | peak − RSS after connect | accepted | refused | when the buffer is full |");
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    for (mode, url) in [("down", String::new()), ("up", server.url())] {
        for (client, name) in [
            ("ours", "ours"),
            ("legacy", "legacy `nats` 0.26"),
            ("async", "`async-nats` 0.51"),
        ] {
            let out = Command::new(&me)
                .args(["memory-child", client, mode, &url])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "memory-child {client} {mode}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let text = String::from_utf8_lossy(&out.stdout);
            let f: Vec<&str> = text.trim().split('\t').collect();
            let peak: u64 = f[0].parse().unwrap();
            let base: u64 = f[1].parse().unwrap();
            let note = if mode == "down" { f[4] } else { "" };
            println!(
                "| {name} | {mode} | {peak} | {} | {} | {} | {note} |",
                peak.saturating_sub(base),
                f[2],
                f[3]
            );
        }
    }
    println!();
}

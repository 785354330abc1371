//! Section 1: publish N messages on one connection, then a PING/PONG round trip, so the
//! time covers the server having read everything. Ours, the legacy sync `nats` crate,
//! `async-nats` on tokio, nats-py (`bench/py/pub_nats_py.py`), and pre-encoded PUB frames
//! written straight to a socket (the practical limit: the server's ingest).
//!
//! Where the server's ingest is the limit, every client reaches about the same rate, and
//! what still tells them apart is what each costs its own process: the table also gives the
//! publisher's CPU time per message (all its threads, connecting and closing included).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::Server;

fn ours(url: &str, payload: &[u8], n: usize) -> Duration {
    let c = ansible_runner_nats::client::connect(url).unwrap();
    let t = Instant::now();
    for _ in 0..n {
        c.publish("bench", payload).unwrap();
    }
    c.flush(Duration::from_secs(60)).unwrap();
    let took = t.elapsed();
    c.close().unwrap();
    took
}

#[allow(deprecated, reason = "the legacy crate is the peer being measured")]
fn legacy(url: &str, payload: &[u8], n: usize) -> Duration {
    let c = nats::connect(url).unwrap();
    let t = Instant::now();
    for _ in 0..n {
        c.publish("bench", payload).unwrap();
    }
    c.flush_timeout(Duration::from_secs(60)).unwrap();
    let took = t.elapsed();
    c.close();
    took
}

fn async_nats(url: &str, payload: &[u8], n: usize) -> Duration {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = async_nats::connect(url).await.unwrap();
        let bytes = bytes::Bytes::copy_from_slice(payload);
        let t = Instant::now();
        for _ in 0..n {
            c.publish("bench", bytes.clone()).await.unwrap();
        }
        c.flush().await.unwrap();
        t.elapsed()
    })
}

/// The CPU time this process has used so far, all its threads together (those that have
/// ended included, which a sum over `/proc/self/task` would miss).
fn process_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut t) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed");
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// The best of `runs` and that run's CPU time, measured by the Python script in its own
/// process.
fn nats_py(url: &str, size: usize, n: usize, runs: usize) -> Run {
    let script = crate::root().join("bench/py/pub_nats_py.py");
    let out = Command::new(crate::python())
        .arg(script)
        .args([url, &size.to_string(), &n.to_string(), &runs.to_string()])
        .output()
        .expect("the project's Python: run `make setup`");
    assert!(
        out.status.success(),
        "pub_nats_py.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let secs: Vec<f64> = text
        .split_whitespace()
        .map(|v| v.parse().expect("pub_nats_py.py prints seconds"))
        .collect();
    let [took, cpu] = secs[..] else {
        panic!("pub_nats_py.py printed {text:?}, not two numbers");
    };
    Run {
        took: Duration::from_secs_f64(took),
        server_cpu: Duration::ZERO,
        client_cpu: Duration::from_secs_f64(cpu),
    }
}

/// Pre-encoded frames written in 64 KiB batches, then PING and wait for PONG.
fn raw(port: u16, payload: &[u8], n: usize) -> Duration {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    let mut buf = [0u8; 4096];
    let _ = s.read(&mut buf).unwrap(); // INFO
    s.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n")
        .unwrap();
    let mut frame = format!("PUB bench {}\r\n", payload.len()).into_bytes();
    frame.extend_from_slice(payload);
    frame.extend_from_slice(b"\r\n");
    let per_batch = (64 * 1024 / frame.len()).max(1);
    let batch: Vec<u8> = frame.repeat(per_batch);
    let t = Instant::now();
    let mut left = n;
    while left > 0 {
        let k = left.min(per_batch);
        s.write_all(&batch[..k * frame.len()]).unwrap();
        left -= k;
    }
    s.write_all(b"PING\r\n").unwrap();
    let mut seen = Vec::new();
    while !seen.windows(6).any(|w| w == b"PONG\r\n") {
        let got = s.read(&mut buf).unwrap();
        assert!(got > 0, "server closed");
        seen.extend_from_slice(&buf[..got]);
    }
    t.elapsed()
}

/// One client's run: its time, and the server's and the client's CPU time over the same
/// span.
#[derive(Clone, Copy, Default)]
struct Run {
    took: Duration,
    server_cpu: Duration,
    client_cpu: Duration,
}

impl Run {
    /// The server's CPU per wall second (1.0: one core busy throughout).
    fn server_busy(&self) -> f64 {
        self.server_cpu.as_secs_f64() / self.took.as_secs_f64()
    }
}

/// Every client's run in each of `runs` rounds, the clients taking turns within a round,
/// so that a slow spell of a shared machine hits them all rather than one.
fn interleaved<const K: usize>(
    server: &Server,
    runs: usize,
    clients: [&dyn Fn() -> Duration; K],
) -> Vec<[Run; K]> {
    (0..runs)
        .map(|_| {
            let mut round = [Run::default(); K];
            for (r, run) in round.iter_mut().zip(clients) {
                let (before, client_before) = (server.cpu(), process_cpu());
                let took = run();
                // The span includes connecting and closing, which cost little.
                let client_cpu = process_cpu().saturating_sub(client_before);
                let server_cpu = server.cpu().saturating_sub(before);
                *r = Run {
                    took,
                    server_cpu,
                    client_cpu,
                };
            }
            round
        })
        .collect()
}

/// The quartiles of `v` (at least one value).
fn quartiles(mut v: Vec<f64>) -> [f64; 3] {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| {
        let x = q * (v.len() - 1) as f64;
        let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
        v[lo] + (v[hi] - v[lo]) * (x - lo as f64)
    };
    [at(0.25), at(0.5), at(0.75)]
}

pub fn section(server: &Server, runs: usize) {
    let url = server.url();
    println!(
        "## Client publish throughput (messages/s, best of {runs} interleaved rounds; publish N then flush; \
         ratios: of the bests [interquartile range of the per-round ratios])\n"
    );
    println!(
        "| payload | N | ours | legacy `nats` 0.26 | `async-nats` 0.51 | nats-py 2.16 | raw socket \
         | ours / legacy | ours / async | ours / nats-py | ours / raw \
         | nats-server busy: ours, legacy, async, raw \
         | publisher CPU per message (ns): ours, legacy, async, nats-py, raw |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for (size, n) in [
        (16usize, 1_000_000usize),
        (128, 1_000_000),
        (1024, 500_000),
        (16 * 1024, 100_000),
    ] {
        let payload = vec![b'x'; size];
        let rate = |r: &Run| n as f64 / r.took.as_secs_f64();
        let rounds = interleaved(
            server,
            runs,
            [
                &|| ours(&url, &payload, n),
                &|| legacy(&url, &payload, n),
                &|| async_nats(&url, &payload, n),
                &|| raw(server.port, &payload, n),
            ],
        );
        let best = |i: usize| rounds.iter().map(|r| rate(&r[i])).fold(0.0, f64::max);
        let [o, l, a, r] = [best(0), best(1), best(2), best(3)];
        let py = nats_py(&url, size, n, runs);
        let p = rate(&py);
        // Ours against a peer: the ratio of the bests, and in brackets the interquartile
        // range of the ratios within each round (neighbours in time share the machine's mood).
        let vs = |i: usize, peer_best: f64| {
            let [q1, _, q3] = quartiles(rounds.iter().map(|r| rate(&r[0]) / rate(&r[i])).collect());
            format!("{:.2} [{q1:.2}–{q3:.2}]", o / peer_best)
        };
        let k = |v: f64| format!("{:.0} k", v / 1000.0);
        // How busy the server was (median over the rounds): near 1.0 for every client, its
        // one reading goroutine is the limit they all meet.
        let median_of = |f: &dyn Fn(&Run) -> f64, i: usize| {
            quartiles(rounds.iter().map(|r| f(&r[i])).collect())[1]
        };
        let busy = (0..4)
            .map(|i| format!("{:.2}", median_of(&Run::server_busy, i)))
            .collect::<Vec<_>>()
            .join(", ");
        // The publisher's own CPU per message (median over the rounds; nats-py: its best
        // round's), in the order of the rate columns.
        let per_msg = |r: &Run| r.client_cpu.as_nanos() as f64 / n as f64;
        let cpu = [
            median_of(&per_msg, 0),
            median_of(&per_msg, 1),
            median_of(&per_msg, 2),
            per_msg(&py),
            median_of(&per_msg, 3),
        ]
        .map(|v| format!("{v:.0}"))
        .join(", ");
        println!(
            "| {size} B | {n} | {} | {} | {} | {} | {} | {} | {} | {:.2} | {} | {busy} | {cpu} |",
            k(o),
            k(l),
            k(a),
            k(p),
            k(r),
            vs(1, l),
            vs(2, a),
            o / p,
            vs(3, r)
        );
    }
    println!();
}

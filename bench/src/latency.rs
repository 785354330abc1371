//! Section 3: publish → subscriber receipt at a moderate, steady rate. Publisher and
//! subscriber are two connections of the same client in this process; each payload carries
//! its send time, so the figure is the whole path: client buffer, writer, server, reader.

use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::Server;

const RATE: u64 = 5_000;
const N: usize = 10_000;
const SIZE: usize = 128;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn stamp() -> Vec<u8> {
    let mut p = vec![b'x'; SIZE];
    let nanos = epoch().elapsed().as_nanos() as u64;
    p[..8].copy_from_slice(&nanos.to_le_bytes());
    p
}

/// Microseconds since the stamp in `payload` was taken.
fn age(payload: &[u8]) -> f64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&payload[..8]);
    let sent = Duration::from_nanos(u64::from_le_bytes(b));
    (epoch().elapsed().saturating_sub(sent)).as_secs_f64() * 1e6
}

/// Calls `publish` N times at RATE per second, on schedule (not after the previous one).
fn paced(mut publish: impl FnMut(Vec<u8>)) {
    let start = Instant::now();
    for i in 0..N as u64 {
        let due = start + Duration::from_nanos(i * 1_000_000_000 / RATE);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        publish(stamp());
    }
}

fn ours(url: &str) -> Vec<f64> {
    use ansible_runner_nats::client;
    let sub_conn = client::connect(url).unwrap();
    let sub = sub_conn.subscribe("lat.ours").unwrap();
    sub_conn.flush(Duration::from_secs(5)).unwrap();
    let pub_conn = client::connect(url).unwrap();
    let receiver = std::thread::spawn(move || {
        let mut out = Vec::with_capacity(N);
        while out.len() < N {
            let m = sub.next_timeout(Duration::from_secs(10)).unwrap();
            out.push(age(&m.payload));
        }
        out
    });
    paced(|p| pub_conn.publish("lat.ours", &p).unwrap());
    let out = receiver.join().unwrap();
    pub_conn.close().unwrap();
    sub_conn.close().unwrap();
    out
}

#[allow(deprecated, reason = "the legacy crate is the peer being measured")]
fn legacy(url: &str) -> Vec<f64> {
    let sub_conn = nats::connect(url).unwrap();
    let sub = sub_conn.subscribe("lat.legacy").unwrap();
    sub_conn.flush().unwrap();
    let pub_conn = nats::connect(url).unwrap();
    let receiver = std::thread::spawn(move || {
        let mut out = Vec::with_capacity(N);
        while out.len() < N {
            let m = sub.next_timeout(Duration::from_secs(10)).unwrap();
            out.push(age(&m.data));
        }
        out
    });
    paced(|p| pub_conn.publish("lat.legacy", p).unwrap());
    let out = receiver.join().unwrap();
    pub_conn.close();
    sub_conn.close();
    out
}

fn async_nats(url: &str) -> Vec<f64> {
    use futures_util::StreamExt;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (sub_conn, mut sub, pub_conn) = rt.block_on(async {
        let sub_conn = async_nats::connect(url).await.unwrap();
        let sub = sub_conn.subscribe("lat.async").await.unwrap();
        sub_conn.flush().await.unwrap();
        let pub_conn = async_nats::connect(url).await.unwrap();
        (sub_conn, sub, pub_conn)
    });
    let (tx, rx) = mpsc::channel();
    rt.spawn(async move {
        let mut out = Vec::with_capacity(N);
        while out.len() < N {
            let m = sub.next().await.unwrap();
            out.push(age(&m.payload));
        }
        let _ = tx.send(out);
    });
    paced(|p| {
        rt.block_on(pub_conn.publish("lat.async", p.into()))
            .unwrap()
    });
    let out = rx.recv_timeout(Duration::from_secs(30)).unwrap();
    drop(sub_conn);
    out
}

fn row(name: &str, mut v: Vec<f64>) -> [f64; 4] {
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)];
    let r = [at(0.50), at(0.99), at(0.999), v[v.len() - 1]];
    println!(
        "| {name} | {:.0} | {:.0} | {:.0} | {:.0} |",
        r[0], r[1], r[2], r[3]
    );
    r
}

pub fn section(server: &Server) {
    let url = server.url();
    println!(
        "## Latency, publish → subscriber receipt (µs; {N} × {SIZE} B at {RATE}/s, one process)\n"
    );
    println!("| client | p50 | p99 | p99.9 | max |");
    println!("| --- | --- | --- | --- | --- |");
    let o = row("ours", ours(&url));
    let l = row("legacy `nats` 0.26", legacy(&url));
    let a = row("`async-nats` 0.51", async_nats(&url));
    println!(
        "\np50 ratio legacy / ours {:.2}, async-nats / ours {:.2}; p99 ratio legacy / ours {:.2}, async-nats / ours {:.2}\n",
        l[0] / o[0],
        a[0] / o[0],
        l[1] / o[1],
        a[1] / o[1]
    );
}

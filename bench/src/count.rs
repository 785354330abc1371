//! `arn-bench count <url> <subject>`: the independent subscriber of the Python benchmarks.
//!
//! It uses the legacy `nats` crate (not our client, and its subscription queue is
//! unbounded, so it never drops), runs in its own process and takes no GIL from the
//! handlers it measures. It is driven over stdin:
//!
//! - it prints `ready` once subscribed;
//! - `start` marks the moment the measured work begins;
//! - `wait <n> <seconds>` waits until `n` messages arrived or the seconds passed, and prints
//!   `<count> <seconds from start until the last message arrived>`.
//!
//! Timing the last arrival, rather than the end of the wait, keeps a publisher that loses
//! messages from being charged the whole timeout: its time is until its last delivery.

use std::io::BufRead;
use std::sync::mpsc;
use std::time::{Duration, Instant};

enum Control {
    Start(Instant),
    Wait(usize, Duration),
}

fn parse(line: &str, at: Instant) -> Option<Control> {
    let mut words = line.split_whitespace();
    match words.next()? {
        "start" => Some(Control::Start(at)),
        "wait" => {
            let n = words.next()?.parse().ok()?;
            let secs: f64 = words.next()?.parse().ok()?;
            Some(Control::Wait(n, Duration::from_secs_f64(secs)))
        }
        _ => None,
    }
}

#[allow(
    deprecated,
    reason = "the legacy crate is an independent, synchronous subscriber"
)]
pub fn child(args: &[String]) {
    let [url, subject] = args else {
        panic!("usage: arn-bench count <url> <subject>");
    };
    let nc = nats::connect(url).expect("counter: connect");
    let sub = nc.subscribe(subject).expect("counter: subscribe");
    nc.flush().expect("counter: flush");
    println!("ready");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let at = Instant::now();
            let Ok(line) = line else { break };
            let Some(control) = parse(&line, at) else {
                break;
            };
            if tx.send(control).is_err() {
                break;
            }
        }
    });
    let mut start = Instant::now();
    let mut count = 0usize;
    let mut last = None;
    let mut waiting: Option<(usize, Instant)> = None;
    loop {
        match rx.try_recv() {
            Ok(Control::Start(at)) => start = at,
            Ok(Control::Wait(n, within)) => waiting = Some((n, Instant::now() + within)),
            Err(mpsc::TryRecvError::Empty) => {}
            Err(mpsc::TryRecvError::Disconnected) => return,
        }
        if let Some((n, deadline)) = waiting {
            if count >= n || Instant::now() >= deadline {
                let took = last.map_or(0.0, |t: Instant| {
                    t.saturating_duration_since(start).as_secs_f64()
                });
                println!("{count} {took:.6}");
                waiting = None;
            }
        }
        if sub.next_timeout(Duration::from_millis(2)).is_ok() {
            count += 1;
            last = Some(Instant::now());
        }
    }
}

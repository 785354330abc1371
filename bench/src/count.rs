//! `arn-bench count <url> <subject>`: the independent subscriber of the Python benchmarks.
//!
//! It uses the legacy `nats` crate (not our client, and its subscription queue is
//! unbounded, so it never drops), runs in its own process and takes no GIL from the
//! handlers it measures. It is driven over stdin:
//!
//! - it prints `ready` once subscribed;
//! - `wait <n> <seconds> [<quiet>]` waits until `n` messages arrived, the seconds passed or,
//!   if given, `quiet` seconds went by without a message (counted from the later of the
//!   request and the last arrival: a publisher still delivering is never that quiet, one that
//!   lost the rest would otherwise cost the whole timeout), and prints
//!   `<count> <when the last message arrived> <problems>`: the time in seconds since the
//!   Unix epoch (0 if none did); the problems are the disconnects and errors (a slow
//!   consumer, say) its connection had since it subscribed. Messages missed meanwhile are
//!   the counter's, not the publisher's: a count with problems is no measure of a loss.
//!
//! Timing the last arrival, rather than the end of the wait, keeps a publisher that loses
//! messages from being charged the whole timeout: its time is until its last delivery. The
//! arrival is given on the system clock, which the measuring process reads too: a start
//! mark sent to this process would be late by however long it took to be read (up to a
//! millisecond on a busy machine, a microsecond per event in a 1,000-event run).

use std::io::BufRead;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

/// What a `wait` line asks for.
struct Wait {
    n: usize,
    within: Duration,
    quiet: Option<Duration>,
}

/// `wait <n> <seconds> [<quiet>]`.
fn parse(line: &str) -> Option<Wait> {
    let mut words = line.split_whitespace();
    if words.next()? != "wait" {
        return None;
    }
    let n = words.next()?.parse().ok()?;
    let seconds = |w: &str| w.parse().ok().map(Duration::from_secs_f64);
    let within = seconds(words.next()?)?;
    let quiet = match words.next() {
        Some(w) => Some(seconds(w)?),
        None => None,
    };
    Some(Wait { n, within, quiet })
}

#[allow(
    deprecated,
    reason = "the legacy crate is an independent, synchronous subscriber"
)]
pub fn child(args: &[String]) {
    let [url, subject] = args else {
        panic!("usage: arn-bench count <url> <subject>");
    };
    let problems = Arc::new(AtomicU64::new(0));
    let (on_disconnect, on_error) = (Arc::clone(&problems), Arc::clone(&problems));
    let nc = nats::Options::new()
        .disconnect_callback(move || {
            on_disconnect.fetch_add(1, Ordering::Relaxed);
        })
        .error_callback(move |_| {
            on_error.fetch_add(1, Ordering::Relaxed);
        })
        .connect(url)
        .expect("counter: connect");
    let sub = nc.subscribe(subject).expect("counter: subscribe");
    nc.flush().expect("counter: flush");
    println!("ready");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Some(wait) = line.ok().as_deref().and_then(parse) else {
                break;
            };
            if tx.send(wait).is_err() {
                break;
            }
        }
    });
    let mut count = 0usize;
    // The last arrival on the system clock (what is reported) and on the monotonic one.
    let mut last: Option<(SystemTime, Instant)> = None;
    let mut waiting: Option<(Wait, Instant)> = None;
    loop {
        match rx.try_recv() {
            Ok(wait) => waiting = Some((wait, Instant::now())),
            Err(mpsc::TryRecvError::Empty) => {}
            Err(mpsc::TryRecvError::Disconnected) => return,
        }
        if let Some((wait, asked)) = &waiting {
            let now = Instant::now();
            let heard = last.map_or(*asked, |(_, at)| at.max(*asked));
            let quiet = wait.quiet.is_some_and(|q| now >= heard + q);
            if count >= wait.n || now >= *asked + wait.within || quiet {
                let at = last.map_or(0.0, |(t, _)| {
                    t.duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64())
                });
                println!("{count} {at:.6} {}", problems.load(Ordering::Relaxed));
                waiting = None;
            }
        }
        if sub.next_timeout(Duration::from_millis(2)).is_ok() {
            count += 1;
            last = Some((SystemTime::now(), Instant::now()));
        }
    }
}

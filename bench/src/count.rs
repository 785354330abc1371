//! `arn-bench count <url> <subject>`: the independent subscriber of the Python benchmarks.
//!
//! It speaks the protocol itself over a plain socket, with none of our library's code: it
//! reads what the server sends into one buffer, finds the `MSG` / `HMSG` control lines,
//! skips their payloads without copying them and counts each once its last byte arrived.
//! Whatever CPU the counter takes is taken from the two cores that the publisher and
//! nats-server share with it, so it should take as little as a subscriber can: the legacy
//! `nats` crate, the counter before this one, allocated, zeroed and queued every payload
//! and took 12–22 µs of CPU per 38 KB message where this one takes 5–6 (BENCHMARKS.md).
//!
//! It runs in its own process and takes no GIL from the handlers it measures. It is driven
//! over stdin:
//!
//! - it prints `ready` once subscribed (a PONG confirmed the SUB);
//! - `wait <n> <seconds> [<quiet>]` waits until `n` messages arrived, the seconds passed or,
//!   if given, `quiet` seconds went by without a message (counted from the later of the
//!   request and the last arrival: a publisher still delivering is never that quiet, one that
//!   lost the rest would otherwise cost the whole timeout), and prints
//!   `<count> <when the last message arrived> <problems>`: the time in seconds since the
//!   Unix epoch (0 if none did); the problems are what its connection had since it
//!   subscribed: an `-ERR`, an unknown line, the connection's end (nats-server closes a
//!   consumer too slow for it). Messages missed meanwhile are the counter's, not the
//!   publisher's: a count with problems is no measure of a loss.
//!
//! Timing the last arrival, rather than the end of the wait, keeps a publisher that loses
//! messages from being charged the whole timeout: its time is until its last delivery. The
//! arrival is the time of the read that completed the message, on the system clock, which
//! the measuring process reads too: a start mark sent to this process would be late by
//! however long it took to be read (up to a millisecond on a busy machine, a microsecond
//! per event in a 1,000-event run).

use std::io::{BufRead, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
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

/// How long a read waits for data before the counter looks at its stdin again.
const POLL: Duration = Duration::from_millis(2);

/// One subscriber connection and what it has counted.
struct Counter {
    sock: TcpStream,
    /// Bytes read and not yet handled: `buf[..len]`.
    buf: Vec<u8>,
    len: usize,
    /// Payload bytes (with their CRLF) of the current message still to come.
    skip: usize,
    count: usize,
    pongs: usize,
    problems: u64,
    open: bool,
    /// The last arrival on the system clock (what is reported) and on the monotonic one.
    last: Option<(SystemTime, Instant)>,
}

impl Counter {
    fn connect(url: &str, subject: &str) -> Counter {
        let address = url.strip_prefix("nats://").unwrap_or(url);
        let sock = TcpStream::connect(address).expect("counter: connect");
        sock.set_nodelay(true).expect("counter: nodelay");
        sock.set_read_timeout(Some(POLL))
            .expect("counter: read timeout");
        let mut counter = Counter {
            sock,
            buf: vec![0; 1 << 20],
            len: 0,
            skip: 0,
            count: 0,
            pongs: 0,
            problems: 0,
            open: true,
            last: None,
        };
        let hello = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"protocol\":1,\"name\":\"arn-bench count\"}}\r\nSUB {subject} 1\r\nPING\r\n"
        );
        counter.send(hello.as_bytes());
        let deadline = Instant::now() + Duration::from_secs(10);
        while counter.pongs == 0 {
            assert!(
                counter.open && counter.problems == 0 && Instant::now() < deadline,
                "counter: no PONG after SUB"
            );
            counter.pump();
        }
        counter
    }

    fn send(&mut self, bytes: &[u8]) {
        if self.sock.write_all(bytes).is_err() {
            self.lost();
        }
    }

    fn lost(&mut self) {
        if self.open {
            self.problems += 1;
            self.open = false;
        }
    }

    /// Reads what arrives within [`POLL`] and handles every whole line and payload in it.
    fn pump(&mut self) {
        if !self.open {
            std::thread::sleep(POLL);
            return;
        }
        if self.len == self.buf.len() {
            // A control line longer than the buffer: only a broken server sends one.
            let bigger = self.buf.len() * 2;
            self.buf.resize(bigger, 0);
        }
        match self.sock.read(&mut self.buf[self.len..]) {
            Ok(0) => self.lost(),
            Ok(n) => {
                self.len += n;
                let before = self.count;
                self.handle();
                if self.count > before {
                    self.last = Some((SystemTime::now(), Instant::now()));
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => self.lost(),
        }
    }

    /// Handles `buf[..len]`: skips payloads, counts the messages they complete, answers
    /// PINGs; keeps an incomplete control line for the next read.
    fn handle(&mut self) {
        let mut at = 0;
        let mut pings = 0;
        while at < self.len {
            if self.skip > 0 {
                let take = self.skip.min(self.len - at);
                at += take;
                self.skip -= take;
                if self.skip == 0 {
                    self.count += 1;
                }
                continue;
            }
            let rest = &self.buf[at..self.len];
            let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
                break;
            };
            let line = &rest[..end];
            at += end + 2;
            let op = line.split(|&b| b == b' ' || b == b'\t').next();
            match op.map(<[u8]>::to_ascii_uppercase).as_deref() {
                // MSG <subject> <sid> [reply] <bytes>; HMSG ... [reply] <hdr> <total>:
                // either way the last word is what follows, before its CRLF.
                Some(b"MSG" | b"HMSG") => match last_number(line) {
                    Some(size) => self.skip = size + 2,
                    None => self.problems += 1,
                },
                Some(b"PING") => pings += 1,
                Some(b"PONG") => self.pongs += 1,
                Some(b"INFO" | b"+OK") => {}
                _ => self.problems += 1,
            }
        }
        self.buf.copy_within(at..self.len, 0);
        self.len -= at;
        for _ in 0..pings {
            self.send(b"PONG\r\n");
        }
    }
}

/// The last space-separated word of a control line, as a number.
fn last_number(line: &[u8]) -> Option<usize> {
    let word = line
        .split(|&b| b == b' ' || b == b'\t')
        .rfind(|w| !w.is_empty())?;
    std::str::from_utf8(word).ok()?.parse().ok()
}

pub fn child(args: &[String]) {
    let [url, subject] = args else {
        panic!("usage: arn-bench count <url> <subject>");
    };
    let mut counter = Counter::connect(url, subject);
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
    let mut waiting: Option<(Wait, Instant)> = None;
    loop {
        match rx.try_recv() {
            Ok(wait) => waiting = Some((wait, Instant::now())),
            Err(mpsc::TryRecvError::Empty) => {}
            Err(mpsc::TryRecvError::Disconnected) => return,
        }
        if let Some((wait, asked)) = &waiting {
            let now = Instant::now();
            let heard = counter.last.map_or(*asked, |(_, at)| at.max(*asked));
            let quiet = wait.quiet.is_some_and(|q| now >= heard + q);
            if counter.count >= wait.n || now >= *asked + wait.within || quiet {
                let at = counter.last.map_or(0.0, |(t, _)| {
                    t.duration_since(SystemTime::UNIX_EPOCH)
                        .map_or(0.0, |d| d.as_secs_f64())
                });
                println!("{} {at:.6} {}", counter.count, counter.problems);
                waiting = None;
            }
        }
        counter.pump();
    }
}

#[cfg(test)]
mod tests {
    use super::last_number;

    #[test]
    fn the_size_is_the_last_word() {
        assert_eq!(last_number(b"MSG a.b 1 5"), Some(5));
        assert_eq!(last_number(b"MSG a.b 1 reply 12"), Some(12));
        assert_eq!(last_number(b"HMSG a.b 1 22 40"), Some(40));
        assert_eq!(last_number(b"HMSG a.b 1 r 22 40 "), Some(40));
        assert_eq!(last_number(b"MSG a.b 1 x"), None);
    }
}

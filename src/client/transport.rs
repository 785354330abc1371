//! The byte pipe under a connection: plain TCP or TLS (rustls), with a read half and a
//! write half that two threads can use at once.
//!
//! rustls is a state machine without I/O of its own, so one TLS session can serve a reader
//! thread and a writer thread: each moves bytes between its socket handle and the shared
//! `ClientConnection` under a short lock, and never holds that lock across a blocking read.
//! Records must reach the socket in the order rustls produced them, so producing records
//! and writing them happen under one write lock.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use rustls::{ClientConfig, ClientConnection};

use crate::error::{Error, Result};
use crate::url::ServerAddr;

/// Opens a TCP connection to `addr`, trying each resolved address before `deadline`.
pub(crate) fn connect_tcp(addr: &ServerAddr, deadline: Instant) -> Result<TcpStream> {
    let resolved = resolve(addr, deadline)?;
    let mut last = None;
    for sock_addr in resolved {
        let left = remaining(deadline);
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(&sock_addr, left) {
            Ok(stream) => {
                stream
                    .set_nodelay(true)
                    .map_err(|e| Error::io(format!("configure {addr}"), e))?;
                return Ok(stream);
            }
            Err(e) if e.kind() == io::ErrorKind::TimedOut => last = None,
            Err(e) => last = Some(Error::io(format!("connect to {addr}"), e)),
        }
    }
    Err(last.unwrap_or_else(|| Error::ConnectTimeout {
        server: addr.to_string(),
        timeout: Duration::ZERO,
    }))
}

/// Name lookups still waiting for the system's resolver, in the whole process.
static LOOKUPS: Lookups = Lookups::new();

/// A count of running lookups, kept with the id of the process it counts in: a child
/// forked while lookups ran has none of their threads, so it starts again from zero
/// instead of inheriting slots that would never be given back. One atomic word (the
/// process id above, the count below): no lock a fork could leave held.
struct Lookups(AtomicU64);

impl Lookups {
    const fn new() -> Lookups {
        Lookups(AtomicU64::new(0))
    }

    /// The slots `word` says are taken in the process `me`.
    fn taken_in(word: u64, me: u64) -> u64 {
        if word >> 32 == me {
            word & 0xffff_ffff
        } else {
            0
        }
    }

    /// Takes a slot, unless [`MAX_LOOKUPS`] are taken in this process.
    fn take(&self) -> bool {
        let me = u64::from(std::process::id());
        let mut seen = self.0.load(Ordering::Acquire);
        loop {
            let running = Self::taken_in(seen, me);
            if running >= MAX_LOOKUPS as u64 {
                return false;
            }
            let next = (me << 32) | (running + 1);
            match self
                .0
                .compare_exchange(seen, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(now) => seen = now,
            }
        }
    }

    /// Gives back a slot [`Lookups::take`] took in this process.
    fn give_back(&self) {
        let me = u64::from(std::process::id());
        let _ = self
            .0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |seen| {
                (Self::taken_in(seen, me) > 0).then(|| seen - 1)
            });
    }

    /// Slots taken in this process.
    #[cfg(test)]
    fn running(&self) -> u64 {
        Self::taken_in(
            self.0.load(Ordering::Acquire),
            u64::from(std::process::id()),
        )
    }
}

/// The most lookups left waiting at once (see [`resolve`]).
const MAX_LOOKUPS: usize = 16;

/// The addresses of `addr`'s host, looked up before `deadline`. The system's resolver
/// (`getaddrinfo`) has no timeout a caller can set: with a DNS server that does not answer
/// it blocks for resolv.conf's `timeout` × `attempts` (10 s by default) per name, past the
/// connect timeout and past a close's flush timeout. So a host name is looked up on a
/// thread of its own (see [`lookup_before`]). An IP address needs no lookup.
fn resolve(addr: &ServerAddr, deadline: Instant) -> Result<Vec<SocketAddr>> {
    if let Ok(ip) = addr.host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, addr.port)]);
    }
    let host_port = addr.host_port();
    lookup_before(&host_port, deadline, system_lookup, &LOOKUPS)
        .map_err(|e| Error::io(format!("resolve {host_port}"), e))
}

fn system_lookup(host_port: &str) -> io::Result<Vec<SocketAddr>> {
    Ok(host_port.to_socket_addrs()?.collect())
}

/// A slot taken from [`Lookups`], given back on drop.
struct Slot(&'static Lookups);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.give_back();
    }
}

/// `lookup(host_port)` on a thread of its own, waited for until `deadline`. A lookup that
/// takes longer is left to finish on its own; `waiting` counts those still running, and
/// once [`MAX_LOOKUPS`] are, a new one is refused at once rather than piling up threads.
fn lookup_before(
    host_port: &str,
    deadline: Instant,
    lookup: fn(&str) -> io::Result<Vec<SocketAddr>>,
    waiting: &'static Lookups,
) -> io::Result<Vec<SocketAddr>> {
    if !waiting.take() {
        return Err(io::Error::new(
            io::ErrorKind::WouldBlock,
            format!(
                "{MAX_LOOKUPS} earlier name lookups are still waiting for the system's resolver"
            ),
        ));
    }
    // Given back however the lookup ends (a panic included), or with the closure when
    // no thread could be started for it.
    let slot = Slot(waiting);
    let (tx, rx) = mpsc::sync_channel(1);
    let name = host_port.to_owned();
    let spawned = thread::Builder::new()
        .name("nats-resolve".into())
        .spawn(move || {
            let _slot = slot;
            // The caller may have stopped waiting.
            let _ = tx.send(lookup(&name));
        });
    if spawned.is_err() {
        // No thread to spare: look it up here, unbounded, rather than not at all.
        return lookup(host_port);
    }
    rx.recv_timeout(remaining(deadline)).unwrap_or_else(|_| {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no answer from the system's name resolver before the connect timeout",
        ))
    })
}

/// `t + d`; when `d` is too long for the clock (`Duration::MAX`, or a configured
/// 1e19 seconds), a time about 34 years ahead instead: in effect never, and no panic.
pub(crate) fn later(t: Instant, d: Duration) -> Instant {
    t.checked_add(d)
        .or_else(|| t.checked_add(Duration::from_secs(1 << 30)))
        .unwrap_or(t)
}

/// Time left until `deadline`, never negative.
pub(crate) fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// A connection while it is being set up, used by one thread.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<ClientConnection, TcpStream>>),
}

impl Stream {
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => s,
            Stream::Tls(s) => &s.sock,
        }
    }

    /// Upgrades a plain stream with a TLS handshake, bounded by `deadline`.
    pub(crate) fn upgrade(
        self,
        config: Arc<ClientConfig>,
        host: &str,
        deadline: Instant,
    ) -> Result<Stream> {
        let mut tcp = match self {
            Stream::Plain(s) => s,
            tls @ Stream::Tls(_) => return Ok(tls),
        };
        let name = crate::tls::server_name(host)?;
        let mut conn = ClientConnection::new(config, name)
            .map_err(|e| Error::Tls(crate::tls::describe_error(&e)))?;
        while conn.is_handshaking() {
            set_deadline(&tcp, deadline)?;
            if let Err(e) = conn.complete_io(&mut tcp) {
                return Err(handshake_error(e, deadline));
            }
        }
        Ok(Stream::Tls(Box::new(rustls::StreamOwned::new(conn, tcp))))
    }

    /// Splits into halves for the reader and the writer thread.
    /// Writes blocked longer than `write_timeout` fail, so a stalled peer is noticed even
    /// while the writer is stuck in a write.
    pub(crate) fn split(self, write_timeout: Duration) -> Result<(ReadHalf, WriteHalf)> {
        let (tcp, tls) = match self {
            Stream::Plain(s) => (s, None),
            Stream::Tls(s) => {
                let rustls::StreamOwned { conn, sock } = *s;
                (sock, Some(Arc::new(Mutex::new(conn))))
            }
        };
        tcp.set_read_timeout(None)
            .and_then(|()| tcp.set_write_timeout(Some(write_timeout)))
            .map_err(|e| Error::io("configure socket", e))?;
        let read_sock = tcp.try_clone().map_err(|e| Error::io("clone socket", e))?;
        let write = Arc::new(Mutex::new(tcp));
        Ok((
            ReadHalf {
                sock: read_sock,
                tls: tls.clone(),
                write: write.clone(),
            },
            WriteHalf { sock: write, tls },
        ))
    }
}

fn handshake_error(e: io::Error, deadline: Instant) -> Error {
    if matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) && remaining(deadline).is_zero()
    {
        return Error::Tls("handshake timed out".into());
    }
    tls_failure(&e).unwrap_or_else(|| Error::Tls(format!("handshake failed: {e}")))
}

/// The TLS failure inside `e`, if it is one: rustls's I/O wraps them in `InvalidData`
/// with the `rustls::Error` inside (an alert from the server among them).
pub(crate) fn tls_failure(e: &io::Error) -> Option<Error> {
    let tls = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(Error::Tls(crate::tls::describe_error(tls)))
}

/// Sets both socket timeouts to the time left before `deadline`.
pub(crate) fn set_deadline(tcp: &TcpStream, deadline: Instant) -> Result<()> {
    // A zero timeout means "none" to the OS, so never pass zero.
    let left = remaining(deadline).max(Duration::from_millis(1));
    tcp.set_read_timeout(Some(left))
        .and_then(|()| tcp.set_write_timeout(Some(left)))
        .map_err(|e| Error::io("configure socket", e))
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

/// The reading side of an established connection.
pub(crate) struct ReadHalf {
    sock: TcpStream,
    tls: Option<Arc<Mutex<ClientConnection>>>,
    write: Arc<Mutex<TcpStream>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks cannot leave them inconsistent in a way that
    // matters more than losing the connection, which the caller handles anyway.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl ReadHalf {
    /// Appends newly received plaintext to `out`; `Ok(0)` means the peer closed.
    pub(crate) fn read_into(&mut self, out: &mut Vec<u8>, raw: &mut [u8]) -> io::Result<usize> {
        let Some(tls) = &self.tls else {
            let n = self.sock.read(raw)?;
            out.extend_from_slice(raw.get(..n).unwrap_or_default());
            return Ok(n);
        };
        // Plaintext rustls already holds (from the handshake's last read) comes first.
        let (mut got, mut closed) = drain_plaintext(&mut lock(tls), out)?;
        while got == 0 && !closed {
            let n = self.sock.read(raw)?;
            if n == 0 {
                return Ok(0);
            }
            let mut conn = lock(tls);
            let mut rest = raw.get(..n).unwrap_or_default();
            while !rest.is_empty() {
                conn.read_tls(&mut rest)?;
                conn.process_new_packets().map_err(|e| {
                    io::Error::new(io::ErrorKind::InvalidData, crate::tls::describe_error(&e))
                })?;
                // rustls bounds the plaintext it holds: move it out before reading more.
                let (n, c) = drain_plaintext(&mut conn, out)?;
                got += n;
                closed |= c;
            }
            let wants_write = conn.wants_write();
            drop(conn);
            if wants_write {
                self.write_pending_tls()?;
            }
        }
        Ok(got)
    }

    /// Sends TLS records that reading produced (alerts, key updates).
    fn write_pending_tls(&self) -> io::Result<()> {
        if let Some(tls) = &self.tls {
            let mut sock = lock(&self.write);
            let mut records = Vec::new();
            {
                let mut conn = lock(tls);
                while conn.wants_write() {
                    conn.write_tls(&mut records)?;
                }
            }
            sock.write_all(&records)?;
        }
        Ok(())
    }

    /// Unblocks a thread waiting in `read_into`.
    pub(crate) fn shutdown_handle(&self) -> io::Result<TcpStream> {
        self.sock.try_clone()
    }
}

/// Moves received plaintext out of rustls. Returns (bytes, peer closed cleanly).
fn drain_plaintext(conn: &mut ClientConnection, out: &mut Vec<u8>) -> io::Result<(usize, bool)> {
    let mut total = 0;
    let mut chunk = [0u8; 16 * 1024];
    loop {
        match conn.reader().read(&mut chunk) {
            Ok(0) => return Ok((total, true)),
            Ok(n) => {
                out.extend_from_slice(chunk.get(..n).unwrap_or_default());
                total += n;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok((total, false)),
            Err(e) => return Err(e),
        }
    }
}

/// The writing side of an established connection.
pub(crate) struct WriteHalf {
    sock: Arc<Mutex<TcpStream>>,
    tls: Option<Arc<Mutex<ClientConnection>>>,
}

/// How much plaintext is turned into records per lock of the TLS state.
const TLS_CHUNK: usize = 64 * 1024;

impl WriteHalf {
    /// Writes all of `data`, or fails.
    pub(crate) fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        let mut sock = lock(&self.sock);
        let Some(tls) = &self.tls else {
            return sock.write_all(data);
        };
        let mut records = Vec::with_capacity(data.len().min(TLS_CHUNK) + 1024);
        for chunk in data.chunks(TLS_CHUNK) {
            records.clear();
            {
                let mut conn = lock(tls);
                conn.writer().write_all(chunk)?;
                while conn.wants_write() {
                    conn.write_tls(&mut records)?;
                }
            }
            sock.write_all(&records)?;
        }
        Ok(())
    }

    /// Closes the connection: a TLS close_notify if possible, then a TCP shutdown.
    pub(crate) fn shutdown(&mut self) {
        let mut sock = lock(&self.sock);
        if let Some(tls) = &self.tls {
            let mut records = Vec::new();
            {
                let mut conn = lock(tls);
                conn.send_close_notify();
                while conn.wants_write() {
                    if conn.write_tls(&mut records).is_err() {
                        break;
                    }
                }
            }
            // Best effort: the peer may already be gone.
            let _ = sock.write_all(&records);
        }
        let _ = sock.shutdown(Shutdown::Both);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::url::parse_server_list;
    use std::sync::Condvar;

    static GATE: Mutex<bool> = Mutex::new(false);
    static OPENED: Condvar = Condvar::new();
    const ANSWER: SocketAddr = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 4222);

    /// A resolver that answers only once the gate is open (or after 20 s).
    fn gated(_: &str) -> io::Result<Vec<SocketAddr>> {
        let open = GATE.lock().unwrap();
        let _open = OPENED
            .wait_timeout_while(open, Duration::from_secs(20), |open| !*open)
            .unwrap();
        Ok(vec![ANSWER])
    }

    fn answers(_: &str) -> io::Result<Vec<SocketAddr>> {
        Ok(vec![ANSWER])
    }

    #[test]
    fn a_lookup_without_answer_is_given_up_at_the_deadline_and_few_are_left_waiting() {
        static WAITING: Lookups = Lookups::new();
        let name = "nats.example:4222";
        let started = Instant::now();
        let e = lookup_before(
            name,
            later(started, Duration::from_millis(100)),
            gated,
            &WAITING,
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert!(e.to_string().contains("before the connect timeout"), "{e}");

        // The lookups given up on still run; past MAX_LOOKUPS of them, no more are started.
        for _ in 1..MAX_LOOKUPS {
            let e = lookup_before(name, Instant::now(), gated, &WAITING).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        }
        assert_eq!(WAITING.running(), MAX_LOOKUPS as u64);
        let soon = later(Instant::now(), Duration::from_secs(5));
        let e = lookup_before(name, soon, answers, &WAITING).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(e.to_string().starts_with("16 earlier name lookups"), "{e}");

        // Once the resolver answers them, lookups are made again.
        *GATE.lock().unwrap() = true;
        OPENED.notify_all();
        let until = later(Instant::now(), Duration::from_secs(10));
        while WAITING.running() > 0 {
            assert!(Instant::now() < until, "the lookups never ended");
            thread::sleep(Duration::from_millis(5));
        }
        let soon = later(Instant::now(), Duration::from_secs(5));
        assert_eq!(
            lookup_before(name, soon, answers, &WAITING).unwrap(),
            [ANSWER]
        );
    }

    #[test]
    fn a_count_left_by_another_process_is_not_this_ones() {
        // What a child forked while its parent's lookups ran finds: the parent's id and
        // all its slots taken. The child's own count starts from zero.
        let parent = u64::from(std::process::id()) ^ 1;
        let inherited = Lookups(AtomicU64::new((parent << 32) | MAX_LOOKUPS as u64));
        assert_eq!(inherited.running(), 0);
        assert!(inherited.take());
        assert_eq!(inherited.running(), 1);
        inherited.give_back();
        assert_eq!(inherited.running(), 0);
        // Given back once too often: it stays at zero.
        inherited.give_back();
        assert_eq!(inherited.running(), 0);
        for _ in 0..MAX_LOOKUPS {
            assert!(inherited.take());
        }
        assert!(!inherited.take());
    }

    #[test]
    fn an_ip_address_is_not_looked_up() {
        // A deadline already passed: any lookup would time out.
        let past = Instant::now();
        for (url, expected) in [
            ("nats://127.0.0.1:4222", "127.0.0.1:4222"),
            ("nats://[::1]:4223", "[::1]:4223"),
        ] {
            let addr = &parse_server_list(url).unwrap()[0];
            let found = resolve(addr, past).unwrap();
            assert_eq!(found, [expected.parse::<SocketAddr>().unwrap()]);
        }
    }
}

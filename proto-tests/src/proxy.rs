//! A loopback TCP proxy for fault injection: forward, refuse new connections, stall
//! (keep connections open but move no bytes), or cut every connection.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Accept and forward both ways.
    Forward = 0,
    /// Accept and close at once (a server that is down, without freeing the port).
    Refuse = 1,
    /// Accept and keep connections open, but forward nothing (a stalled network).
    Stall = 2,
}

struct Inner {
    target: AtomicU16,
    mode: AtomicU8,
    stop: AtomicBool,
    conns: Mutex<Vec<TcpStream>>,
}

/// A proxy from its own loopback port to `127.0.0.1:<target>`. Stops on drop.
pub struct Proxy {
    port: u16,
    inner: Arc<Inner>,
}

impl Proxy {
    /// Starts forwarding from a new free port to `target`.
    pub fn start(target: u16, mode: Mode) -> Proxy {
        let listener = crate::loopback_listener();
        let port = listener.local_addr().expect("proxy address").port();
        listener
            .set_nonblocking(true)
            .expect("nonblocking proxy listener");
        let inner = Arc::new(Inner {
            target: AtomicU16::new(target),
            mode: AtomicU8::new(mode as u8),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let acceptor = Arc::clone(&inner);
        thread::spawn(move || accept_loop(&listener, &acceptor));
        Proxy { port, inner }
    }

    /// The port clients connect to.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Changes what happens to traffic from now on (existing connections included).
    pub fn set_mode(&self, mode: Mode) {
        self.inner.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Sends new connections to another port from now on.
    pub fn set_target(&self, port: u16) {
        self.inner.target.store(port, Ordering::SeqCst);
    }

    /// Closes every connection made so far (both sides).
    pub fn cut_all(&self) {
        let conns = std::mem::take(&mut *self.inner.conns.lock().unwrap());
        for c in conns {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        self.cut_all();
    }
}

fn mode(inner: &Inner) -> Mode {
    match inner.mode.load(Ordering::SeqCst) {
        0 => Mode::Forward,
        1 => Mode::Refuse,
        _ => Mode::Stall,
    }
}

fn accept_loop(listener: &TcpListener, inner: &Arc<Inner>) {
    while !inner.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                if mode(inner) == Mode::Refuse {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) =
                    TcpStream::connect(("127.0.0.1", inner.target.load(Ordering::SeqCst)))
                else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = client.set_nonblocking(false);
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                {
                    let mut conns = inner.conns.lock().unwrap();
                    conns.push(client.try_clone().unwrap());
                    conns.push(server.try_clone().unwrap());
                }
                pump(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    inner,
                );
                pump(server, client, inner);
            }
            Err(_) => thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// Copies `from` → `to` on its own thread, pausing while the proxy stalls.
fn pump(mut from: TcpStream, mut to: TcpStream, inner: &Arc<Inner>) {
    let inner = Arc::clone(inner);
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            while mode(&inner) == Mode::Stall && !inner.stop.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(5));
            }
            let n = match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            // Bytes read just as a stall begins are held until it ends.
            while mode(&inner) == Mode::Stall && !inner.stop.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(5));
            }
            if to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = to.shutdown(Shutdown::Both);
        let _ = from.shutdown(Shutdown::Both);
    });
}

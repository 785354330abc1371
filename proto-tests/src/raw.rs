//! A raw TCP connection for tests that need to see the bytes on the wire.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A plain TCP connection to 127.0.0.1 that has read the server's INFO line.
#[derive(Debug)]
pub struct RawConn {
    stream: TcpStream,
    info: serde_json::Value,
    buf: Vec<u8>,
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

impl RawConn {
    /// Connects to `127.0.0.1:<port>` and reads the INFO line (5 s bound).
    ///
    /// # Panics
    /// On connection errors or when the first line is not a valid INFO.
    pub fn connect(port: u16) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
        let _ = stream.set_nodelay(true);
        let mut conn = RawConn {
            stream,
            info: serde_json::Value::Null,
            buf: Vec::new(),
        };
        let line = conn.read_until(b"\r\n", Duration::from_secs(5));
        let text = String::from_utf8_lossy(&line);
        let json = text
            .strip_prefix("INFO ")
            .unwrap_or_else(|| panic!("expected INFO from {addr}, got {text:?}"));
        conn.info = serde_json::from_str(json.trim_end())
            .unwrap_or_else(|e| panic!("INFO from {addr} is not JSON ({e}): {text:?}"));
        conn
    }

    /// The INFO JSON the server sent on connect.
    pub fn info(&self) -> serde_json::Value {
        self.info.clone()
    }

    /// Writes all bytes.
    ///
    /// # Panics
    /// On a write error.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .and_then(|()| self.stream.flush())
            .unwrap_or_else(|e| panic!("raw send failed: {e}"));
    }

    /// Reads until `needle` has arrived; returns everything up to and
    /// including it (later bytes stay buffered for the next call).
    ///
    /// # Panics
    /// On timeout or EOF, with what was read so far.
    pub fn read_until(&mut self, needle: &[u8], timeout: Duration) -> Vec<u8> {
        match self.try_read_until(needle, timeout) {
            Ok(v) => v,
            Err(e) => panic!(
                "{e} waiting for {:?}; read so far: {:?}",
                String::from_utf8_lossy(needle),
                String::from_utf8_lossy(&self.buf)
            ),
        }
    }

    /// Like [`RawConn::read_until`], but returns an error message on timeout
    /// or EOF instead of panicking (the bytes stay buffered).
    pub fn try_read_until(&mut self, needle: &[u8], timeout: Duration) -> Result<Vec<u8>, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(i) = find(&self.buf, needle) {
                let rest = self.buf.split_off(i + needle.len());
                return Ok(std::mem::replace(&mut self.buf, rest));
            }
            self.fill(deadline)?;
        }
    }

    /// Reads whatever arrives until the connection is closed by the server
    /// or `timeout` passes; returns it with whether EOF (or a reset) was seen.
    pub fn read_to_close(&mut self, timeout: Duration) -> (Vec<u8>, bool) {
        let deadline = Instant::now() + timeout;
        loop {
            match self.fill(deadline) {
                Ok(()) => continue,
                Err(e) => return (std::mem::take(&mut self.buf), e == "EOF"),
            }
        }
    }

    /// The underlying stream (e.g. to shut down one direction).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// One read into the buffer, bounded by `deadline`.
    fn fill(&mut self, deadline: Instant) -> Result<(), String> {
        let now = Instant::now();
        if now >= deadline {
            return Err("timed out".into());
        }
        let _ = self
            .stream
            .set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))));
        let mut chunk = [0u8; 16 * 1024];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err("EOF".into()),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(())
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                Err("timed out".into())
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(()),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                ) =>
            {
                Err("EOF".into())
            }
            Err(e) => Err(format!("read error: {e}")),
        }
    }
}

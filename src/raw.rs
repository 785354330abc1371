//! A raw synchronous protocol connection, for conformance tests of servers, proxies and
//! gateways: it sends exactly what it is told and reports exactly what came back, in the
//! caller's thread, with no background thread answering PINGs or rewriting anything.
//!
//! It speaks through the same codec as [`crate::client`] ([`ClientOp::encode`],
//! [`parse_server_op`]) and the same TCP/TLS transport, and keeps a transcript of the last
//! 64 KiB sent and received, so a failed check can show the exchange.
//!
//! ```no_run
//! use std::time::Duration;
//! use ansible_runner_nats::proto::{ClientOp, ConnectInfo};
//! use ansible_runner_nats::raw::{RawConnection, RawOp};
//!
//! let t = Duration::from_secs(2);
//! let mut conn = RawConnection::connect("nats://127.0.0.1:4222", t)?;
//! let info = conn.read_info(t)?;
//! conn.send(&ClientOp::Connect(Box::new(ConnectInfo { verbose: true, ..ConnectInfo::default() })))?;
//! assert_eq!(conn.next_op(t)?, RawOp::Ok);
//! conn.send_raw(b"PING\r\n")?;
//! assert_eq!(conn.next_op(t)?, RawOp::Pong);
//! # let _ = info;
//! # Ok::<(), ansible_runner_nats::Error>(())
//! ```

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use crate::client::transport::{connect_tcp, later, set_deadline, Stream};
use crate::error::{Error, Result};
use crate::headers::HeaderMap;
use crate::proto::{parse_server_op, ClientOp, ServerInfo, ServerOp, Status};
use crate::tls::TlsOptions;
use crate::url::ServerAddr;

/// nats-server's default `max_control_line`, used as the parser's bound.
pub const DEFAULT_MAX_CONTROL_LINE: usize = 4096;

/// The transcript keeps at most this many bytes (the oldest go first).
const TRANSCRIPT_LIMIT: usize = 64 * 1024;

/// Which way bytes went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From us to the server.
    Sent,
    /// From the server to us.
    Received,
}

/// A message the server delivered (MSG or HMSG), owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMsg {
    /// The subject.
    pub subject: String,
    /// The subscription id.
    pub sid: u64,
    /// The reply subject.
    pub reply: Option<String>,
    /// The raw header block of an HMSG (`None` for MSG).
    pub header: Option<Vec<u8>>,
    /// The payload.
    pub payload: Vec<u8>,
}

impl RawMsg {
    /// The parsed header block, if any (`None` also when it does not parse).
    pub fn headers(&self) -> Option<HeaderMap> {
        self.header
            .as_deref()
            .and_then(|h| HeaderMap::parse(h).ok())
    }
}

/// One operation from the server, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawOp {
    /// `INFO`.
    Info(Box<ServerInfo>),
    /// `MSG` / `HMSG`.
    Msg(RawMsg),
    /// `PING`.
    Ping,
    /// `PONG`.
    Pong,
    /// `+OK`.
    Ok,
    /// `-ERR`, with its text (quotes removed).
    Err(String),
}

/// CONNECT fields that carry secrets.
const SECRET_FIELDS: &[&str] = &["pass", "auth_token", "sig", "jwt"];

/// `bytes` with the secret fields of any `CONNECT {json}` line replaced by `***`.
fn redact_connect(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        // nats-server takes a tab as well as a space after the op name.
        let is_connect = line.len() > 8
            && line[..7].eq_ignore_ascii_case(b"CONNECT")
            && matches!(line[7], b' ' | b'\t');
        let redacted = is_connect
            .then(|| {
                let body = line[8..].trim_ascii_end();
                let mut v: serde_json::Value = serde_json::from_slice(body).ok()?;
                let map = v.as_object_mut()?;
                for key in SECRET_FIELDS {
                    if let Some(field) = map.get_mut(*key) {
                        *field = serde_json::Value::String("***".into());
                    }
                }
                let mut text = b"CONNECT ".to_vec();
                text.extend_from_slice(&serde_json::to_vec(&v).ok()?);
                text.extend_from_slice(&line[8 + body.len()..]);
                Some(text)
            })
            .flatten();
        match redacted {
            Some(r) => out.extend_from_slice(&r),
            // A CONNECT that is not JSON we can read may still hold secrets: not shown
            // (`transcript()` has the exact bytes).
            None if is_connect => out.extend_from_slice(b"CONNECT <not valid JSON: not shown>\r\n"),
            None => out.extend_from_slice(line),
        }
    }
    out
}

impl RawOp {
    fn from_op(op: ServerOp<'_>) -> RawOp {
        match op {
            ServerOp::Info(i) => RawOp::Info(i),
            ServerOp::Msg(m) => RawOp::Msg(RawMsg {
                subject: m.subject.to_owned(),
                sid: m.sid,
                reply: m.reply.map(str::to_owned),
                header: m.header.map(<[u8]>::to_vec),
                payload: m.payload.to_vec(),
            }),
            ServerOp::Ping => RawOp::Ping,
            ServerOp::Pong => RawOp::Pong,
            ServerOp::Ok => RawOp::Ok,
            ServerOp::Err(t) => RawOp::Err(t.to_owned()),
        }
    }
}

/// A connection that does only what it is asked to; see the module documentation.
pub struct RawConnection {
    stream: Option<Stream>,
    addr: ServerAddr,
    buf: Vec<u8>,
    max_control_line: usize,
    transcript: Vec<(Direction, Vec<u8>)>,
    transcript_bytes: usize,
    closed: bool,
}

impl std::fmt::Debug for RawConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawConnection")
            .field("server", &self.addr.to_string())
            .field("buffered", &self.buf.len())
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl RawConnection {
    /// Opens a TCP connection to `url` (`nats://host:port`; credentials in it are not
    /// used: send your own CONNECT). Nothing is read or sent yet.
    pub fn connect(url: &str, timeout: Duration) -> Result<RawConnection> {
        let addr: ServerAddr = url.parse()?;
        let tcp = connect_tcp(&addr, later(Instant::now(), timeout))?;
        Ok(RawConnection {
            stream: Some(Stream::Plain(tcp)),
            addr,
            buf: Vec::with_capacity(4096),
            max_control_line: DEFAULT_MAX_CONTROL_LINE.max(64 * 1024),
            transcript: Vec::new(),
            transcript_bytes: 0,
            closed: false,
        })
    }

    /// The bound on a control line this side accepts from the server.
    pub fn set_max_control_line(&mut self, bytes: usize) {
        self.max_control_line = bytes;
    }

    /// Performs the TLS handshake now (after INFO, or before it for a server with
    /// `handshake_first`), verifying the certificate for the URL's host unless
    /// `tls.server_name` says otherwise.
    pub fn upgrade_tls(&mut self, tls: &TlsOptions, timeout: Duration) -> Result<()> {
        let config = crate::tls::client_config(tls)?;
        let host = tls.server_name.clone().unwrap_or(self.addr.host.clone());
        let stream = self.stream.take().ok_or(Error::Closed)?;
        self.stream = Some(stream.upgrade(config, &host, later(Instant::now(), timeout))?);
        Ok(())
    }

    /// Reads the next operation and requires it to be INFO.
    pub fn read_info(&mut self, timeout: Duration) -> Result<ServerInfo> {
        match self.next_op(timeout)? {
            RawOp::Info(info) => Ok(*info),
            other => Err(Error::Protocol(crate::ProtoError::BadArguments(
                match other {
                    RawOp::Err(_) => "expected INFO, got -ERR",
                    _ => "expected INFO first",
                },
            ))),
        }
    }

    /// Encodes and sends one operation.
    pub fn send(&mut self, op: &ClientOp<'_>) -> Result<()> {
        let mut bytes = Vec::new();
        op.encode(&mut bytes);
        self.send_raw(&bytes)
    }

    /// Sends bytes as they are (for malformed input, pipelining, split writes).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.record(Direction::Sent, bytes);
        let stream = self.stream.as_mut().ok_or(Error::Closed)?;
        set_deadline(stream.tcp(), Instant::now() + Duration::from_secs(10))?;
        stream
            .write_all(bytes)
            .and_then(|()| stream.flush())
            .map_err(|e| Error::io(format!("write to {}", self.addr), e))
    }

    /// The next operation from the server, waiting up to `timeout`. Fails with
    /// [`Error::Timeout`] when none came, [`Error::Closed`] when the server closed the
    /// connection (after everything it sent was read), [`Error::Protocol`] when the bytes
    /// do not parse (the connection is then unusable).
    pub fn next_op(&mut self, timeout: Duration) -> Result<RawOp> {
        let deadline = later(Instant::now(), timeout);
        loop {
            match parse_server_op(&self.buf, self.max_control_line) {
                Ok(Status::Complete((op, used))) => {
                    let op = RawOp::from_op(op);
                    self.buf.drain(..used);
                    return Ok(op);
                }
                Ok(Status::Partial) => {}
                Err(e) => return Err(Error::Protocol(e)),
            }
            if self.closed {
                return Err(Error::Closed);
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "next operation",
                    after: timeout,
                });
            }
            self.fill(deadline)?;
        }
    }

    /// Waits up to `timeout` for the server to close the connection, skipping what it
    /// sends meanwhile (returned, e.g. a final `-ERR`). `Ok(ops)` when it closed.
    pub fn expect_close(&mut self, timeout: Duration) -> Result<Vec<RawOp>> {
        let deadline = later(Instant::now(), timeout);
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_op(left) {
                Ok(op) => seen.push(op),
                Err(Error::Closed) => return Ok(seen),
                Err(e) => return Err(e),
            }
        }
    }

    /// Every byte sent and received so far, in order (the most recent 64 KiB).
    pub fn transcript(&self) -> &[(Direction, Vec<u8>)] {
        &self.transcript
    }

    /// The transcript as text, one line per chunk: `C: ...` sent, `S: ...` received,
    /// with CR, LF, backslash and bytes outside printable ASCII escaped. Secrets in a
    /// CONNECT we sent (`pass`, `auth_token`, `sig`, `jwt`) are shown as `***`, so the
    /// text can go into logs and test reports.
    pub fn transcript_text(&self) -> String {
        let mut out = String::new();
        for (dir, bytes) in &self.transcript {
            out.push_str(match dir {
                Direction::Sent => "C: ",
                Direction::Received => "S: ",
            });
            let shown = match dir {
                Direction::Sent => redact_connect(bytes),
                Direction::Received => bytes.clone(),
            };
            for &b in &shown {
                match b {
                    b'\r' => out.push_str("\\r"),
                    b'\n' => out.push_str("\\n"),
                    b'\t' => out.push_str("\\t"),
                    b'\\' => out.push_str("\\\\"),
                    0x20..=0x7e => out.push(char::from(b)),
                    _ => out.push_str(&format!("\\x{b:02x}")),
                }
            }
            out.push('\n');
        }
        out
    }

    fn record(&mut self, dir: Direction, bytes: &[u8]) {
        match self.transcript.last_mut() {
            Some((d, b)) if *d == dir => b.extend_from_slice(bytes),
            _ => self.transcript.push((dir, bytes.to_vec())),
        }
        self.transcript_bytes += bytes.len();
        while self.transcript_bytes > TRANSCRIPT_LIMIT && self.transcript.len() > 1 {
            let (_, first) = self.transcript.remove(0);
            self.transcript_bytes -= first.len();
        }
        // One long run in one direction: keep its most recent lines, from a line's start
        // (so that no CONNECT is cut where its redaction would miss it).
        if let [(_, only)] = self.transcript.as_mut_slice() {
            if only.len() > TRANSCRIPT_LIMIT {
                let cut = only.len() - TRANSCRIPT_LIMIT;
                let line_start = only[cut..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(only.len(), |i| cut + i + 1);
                only.drain(..line_start);
                self.transcript_bytes = only.len();
            }
        }
    }

    fn fill(&mut self, deadline: Instant) -> Result<()> {
        let Some(stream) = self.stream.as_mut() else {
            self.closed = true;
            return Ok(());
        };
        set_deadline(stream.tcp(), deadline)?;
        let mut chunk = [0u8; 16 * 1024];
        match stream.read(&mut chunk) {
            Ok(0) => {
                self.closed = true;
                Ok(())
            }
            Ok(n) => {
                let got = &chunk[..n];
                self.buf.extend_from_slice(got);
                self.record(Direction::Received, got);
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(())
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::BrokenPipe
                        | io::ErrorKind::UnexpectedEof
                ) =>
            {
                self.closed = true;
                Ok(())
            }
            Err(e) => Err(Error::io(format!("read from {}", self.addr), e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact_connect;

    #[test]
    fn connect_secrets_are_redacted() {
        let sent =
            b"CONNECT {\"user\":\"me\",\"pass\":\"hunter2\",\"auth_token\":\"t0k\"}\r\nPING\r\n";
        let shown = String::from_utf8(redact_connect(sent)).unwrap();
        assert!(
            !shown.contains("hunter2") && !shown.contains("t0k"),
            "{shown}"
        );
        assert!(shown.contains("\"user\":\"me\""));
        assert!(shown.ends_with("}\r\nPING\r\n"), "{shown}");
        let broken = b"CONNECT {\"pass\":\"hunter2\"\r\n";
        let shown = String::from_utf8(redact_connect(broken)).unwrap();
        assert!(!shown.contains("hunter2"), "{shown}");
        assert_eq!(redact_connect(b"PUB a 1\r\nx\r\n"), b"PUB a 1\r\nx\r\n");
        // nats-server takes a tab after the op name too.
        let tab = b"CONNECT\t{\"pass\":\"hunter2\"}\r\n";
        let shown = String::from_utf8(redact_connect(tab)).unwrap();
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}

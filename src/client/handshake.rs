//! Setting up one connection: TCP, optional TLS, INFO, CONNECT, and the first PING/PONG.
//!
//! Everything here runs in one thread with socket timeouts derived from a single deadline,
//! so a server that accepts the TCP connection and then says nothing cannot hold us longer
//! than the connect timeout.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Instant;

use crate::auth::{Auth, ConnectFields};
use crate::client::options::Options;
use crate::client::transport::{
    connect_tcp, later, set_deadline, tls_failure, ReadHalf, Stream, WriteHalf,
};
use crate::error::{Error, ProtoError, Result};
use crate::proto::{parse_server_op, ClientOp, ConnectInfo, ServerInfo, ServerOp, Status};
use crate::url::ServerAddr;

/// A connection that completed the handshake, ready to be split between threads.
pub(crate) struct Established {
    pub(crate) read: ReadHalf,
    pub(crate) write: WriteHalf,
    pub(crate) info: ServerInfo,
    /// Bytes that arrived after the server's PONG; the reader parses them first.
    pub(crate) leftover: Vec<u8>,
}

/// What the handshake needs to know about one op; owned so the buffer can move on.
enum Seen {
    Info(Box<ServerInfo>),
    Ping,
    Pong,
    Ok,
    Err(String),
    Msg,
}

/// Connects to `addr` and completes the NATS handshake before the connect timeout.
/// `tls_name` is the name the server's certificate must carry. `on_tcp` sees the socket
/// as soon as it is connected, before the handshake.
pub(crate) fn establish(
    opts: &Options,
    addr: &ServerAddr,
    tls_name: &str,
    on_tcp: &mut dyn FnMut(&TcpStream),
) -> Result<Established> {
    let deadline = later(Instant::now(), opts.connect_timeout);
    let timeout_error = || Error::ConnectTimeout {
        server: addr.to_string(),
        timeout: opts.connect_timeout,
    };
    let tcp = match connect_tcp(addr, deadline) {
        Err(Error::ConnectTimeout { .. }) => return Err(timeout_error()),
        other => other?,
    };
    on_tcp(&tcp);
    let mut stream = Stream::Plain(tcp);
    // Built at most once per connection: TLS-first and the upgrade after INFO exclude each other.
    let tls_config = || crate::tls::client_config(&opts.tls);
    let host = tls_name;

    if opts.tls.tls_first {
        stream = stream.upgrade(tls_config()?, host, deadline)?;
    }

    let mut buf = Vec::with_capacity(4096);
    let mut info = match read_op(&mut stream, &mut buf, opts, deadline) {
        Ok(Seen::Info(info)) => *info,
        Ok(_) => {
            return Err(Error::Protocol(ProtoError::BadArguments(
                "the server's first operation was not INFO",
            )))
        }
        Err(e) if is_timeout(&e) => return Err(timeout_error()),
        Err(e) => return Err(e),
    };

    let want_tls = addr.is_tls() || opts.tls.required || opts.tls.tls_first;
    if !matches!(stream, Stream::Tls(_)) && (want_tls || info.tls_required) {
        if !info.tls_required && !info.tls_available {
            return Err(Error::Tls(format!(
                "{addr} does not offer TLS, but TLS is required by the client"
            )));
        }
        stream = stream.upgrade(tls_config()?, host, deadline)?;
    }

    let connect = connect_info(opts, addr, &info)?;
    let mut hello = Vec::with_capacity(512);
    ClientOp::Connect(Box::new(connect)).encode(&mut hello);
    ClientOp::Ping.encode(&mut hello);
    set_deadline(stream.tcp(), deadline)?;
    stream
        .write_all(&hello)
        .and_then(|()| stream.flush())
        .map_err(|e| {
            if is_io_timeout(&e) {
                timeout_error()
            } else {
                Error::io(format!("send CONNECT to {addr}"), e)
            }
        })?;

    loop {
        match read_op(&mut stream, &mut buf, opts, deadline) {
            Ok(Seen::Pong) => break,
            Ok(Seen::Ok) | Ok(Seen::Msg) => {}
            Ok(Seen::Info(newer)) => info = *newer,
            Ok(Seen::Ping) => {
                let _ = stream.write_all(b"PONG\r\n");
            }
            Ok(Seen::Err(text)) => return Err(server_error(&text)),
            Err(e) if is_timeout(&e) => return Err(timeout_error()),
            Err(e) => return Err(e),
        }
    }
    // A write that blocks this long means the connection stalled: the same bound as the
    // keep-alive's stale detection.
    let stall = opts
        .ping_interval
        .saturating_mul(opts.max_outstanding_pings.saturating_add(1))
        .max(std::time::Duration::from_secs(1));
    let (read, write) = stream.split(stall)?;
    Ok(Established {
        read,
        write,
        info,
        leftover: buf,
    })
}

/// Maps a server `-ERR` text onto the error a caller can act on.
pub(crate) fn server_error(text: &str) -> Error {
    let lower = text.to_ascii_lowercase();
    if lower.contains("authorization violation") {
        Error::AuthorizationViolation
    } else if lower.contains("authentication expired") {
        Error::AuthenticationExpired
    } else {
        Error::Server(text.to_owned())
    }
}

fn is_io_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn is_timeout(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if is_io_timeout(source))
}

/// Reads until one whole server op is in `buf`, removes it and returns what it was.
fn read_op(
    stream: &mut Stream,
    buf: &mut Vec<u8>,
    opts: &Options,
    deadline: Instant,
) -> Result<Seen> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Status::Complete((op, used)) = parse_server_op(buf, opts.max_control_line)? {
            let seen = match op {
                ServerOp::Info(info) => Seen::Info(info),
                ServerOp::Ping => Seen::Ping,
                ServerOp::Pong => Seen::Pong,
                ServerOp::Ok => Seen::Ok,
                ServerOp::Err(text) => Seen::Err(text.to_owned()),
                ServerOp::Msg(_) => Seen::Msg,
            };
            buf.drain(..used);
            return Ok(seen);
        }
        set_deadline(stream.tcp(), deadline)?;
        let n = stream.read(&mut chunk).map_err(|e| {
            // A TLS alert, e.g. the server refusing the client certificate.
            tls_failure(&e).unwrap_or_else(|| Error::io("read from server during the handshake", e))
        })?;
        if n == 0 {
            return Err(Error::io(
                "handshake",
                io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                ),
            ));
        }
        buf.extend_from_slice(chunk.get(..n).unwrap_or_default());
        // Everything a server says before our subscriptions exist is a control line: a
        // "message" that keeps the buffer growing is no NATS server's.
        if buf.len() > opts.max_control_line.saturating_add(HANDSHAKE_SLACK) {
            return Err(Error::Protocol(ProtoError::BadArguments(
                "the server sent more than a control line during the handshake without completing an operation",
            )));
        }
    }
}

/// What the handshake buffers beyond `max_control_line` before giving up on the server.
const HANDSHAKE_SLACK: usize = 64 * 1024;

/// Builds our CONNECT for this server, signing its nonce where the auth needs it.
fn connect_info(opts: &Options, addr: &ServerAddr, info: &ServerInfo) -> Result<ConnectInfo> {
    let auth = match &opts.auth {
        Auth::None => url_auth(addr),
        other => other.clone(),
    };
    let mut fields = ConnectFields::default();
    auth.apply(info.nonce.as_deref(), &mut fields)?;
    Ok(ConnectInfo {
        verbose: opts.verbose,
        pedantic: opts.pedantic,
        tls_required: opts.tls.required || addr.is_tls(),
        auth_token: fields.auth_token,
        user: fields.user,
        pass: fields.pass,
        name: opts.name.clone(),
        echo: opts.echo,
        sig: fields.sig,
        jwt: fields.jwt,
        nkey: fields.nkey,
        // Asked for only where the server has them: one without headers support refuses a
        // CONNECT that asks for no-responder replies ("no responders requires headers
        // support") and closes the connection.
        headers: info.headers,
        no_responders: info.headers,
        ..ConnectInfo::default()
    })
}

/// Credentials carried in the URL, used when no other authentication is configured.
fn url_auth(addr: &ServerAddr) -> Auth {
    match (&addr.user, &addr.password, &addr.token) {
        (Some(user), Some(password), _) => Auth::UserPassword {
            user: user.clone(),
            password: password.clone(),
        },
        (_, _, Some(token)) => Auth::Token(token.clone()),
        (Some(user), None, None) => Auth::Token(user.clone()),
        _ => Auth::None,
    }
}

//! The NATS client protocol as bytes, in both directions, with no I/O.
//!
//! [`parse_server_op`] and [`parse_client_op`] are push parsers: they look at the start of
//! a buffer and either return one complete operation with the number of bytes it used, or
//! [`Status::Partial`] when more bytes are needed. Short input is never an error. Op names
//! are case-insensitive and arguments are separated by any run of spaces and tabs, as
//! nats-server accepts them. Control lines end in CRLF and are bounded by a limit; payloads
//! are not (the server's `max_payload` bounds them).
//!
//! The encoders append exact wire bytes to a `Vec<u8>`.

use serde_json::{Map, Value};

use crate::error::ProtoError;

/// nats-server's default `max_control_line`, 4 KiB.
pub const DEFAULT_MAX_CONTROL_LINE: usize = 4096;

/// The result of parsing the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status<T> {
    /// A whole item was found.
    Complete(T),
    /// The buffer ends before the item does.
    Partial,
}

/// The server's INFO, as far as a client needs it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ServerInfo {
    /// Unique id of the server.
    pub server_id: String,
    /// Name of the server.
    pub server_name: String,
    /// Server version.
    pub version: String,
    /// Go version the server was built with.
    pub go: String,
    /// Host the server listens on.
    pub host: String,
    /// Client port of the server.
    pub port: u16,
    /// Whether the server supports headers.
    pub headers: bool,
    /// The largest payload the server accepts, headers included; 0 when not sent.
    pub max_payload: usize,
    /// Protocol version.
    pub proto: i64,
    /// The id the server gave this client.
    pub client_id: Option<u64>,
    /// Whether the server requires authentication.
    pub auth_required: bool,
    /// Whether the server requires TLS.
    pub tls_required: bool,
    /// Whether the server verifies client certificates.
    pub tls_verify: bool,
    /// Whether the server accepts TLS without requiring it.
    pub tls_available: bool,
    /// Other servers of the cluster a client may connect to (`host:port`).
    pub connect_urls: Vec<String>,
    /// Lame duck mode: the server is about to shut down.
    pub ldm: bool,
    /// The challenge to sign for nkey and JWT authentication.
    pub nonce: Option<String>,
    /// Whether JetStream is enabled.
    pub jetstream: bool,
    /// The client's address as the server sees it.
    pub client_ip: Option<String>,
    /// The cluster name.
    pub cluster: Option<String>,
    /// The JetStream domain.
    pub domain: Option<String>,
}

fn get_str(map: &Map<String, Value>, key: &str) -> Result<Option<String>, ProtoError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(ProtoError::BadJson),
    }
}

fn get_bool(map: &Map<String, Value>, key: &str) -> Result<bool, ProtoError> {
    get_bool_or(map, key, false)
}

fn get_bool_or(map: &Map<String, Value>, key: &str, missing: bool) -> Result<bool, ProtoError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(missing),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(ProtoError::BadJson),
    }
}

fn get_u64(map: &Map<String, Value>, key: &str) -> Result<Option<u64>, ProtoError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_u64().map(Some).ok_or(ProtoError::BadJson),
        Some(_) => Err(ProtoError::BadJson),
    }
}

/// Writes a JSON object with its fields in the order given (serde_json's map sorts them).
struct JsonObject(String);

impl JsonObject {
    fn new() -> JsonObject {
        JsonObject(String::from("{"))
    }

    fn field(&mut self, key: &str, value: impl Into<Value>) -> &mut JsonObject {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        self.0.push_str(&Value::from(key).to_string());
        self.0.push(':');
        self.0.push_str(&value.into().to_string());
        self
    }

    fn optional(&mut self, key: &str, value: &Option<String>) -> &mut JsonObject {
        if let Some(v) = value {
            self.field(key, v.as_str());
        }
        self
    }

    fn finish(&mut self) -> String {
        self.0.push('}');
        std::mem::take(&mut self.0)
    }
}

fn object(json: &[u8]) -> Result<Map<String, Value>, ProtoError> {
    match serde_json::from_slice::<Value>(json) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(ProtoError::BadJson),
    }
}

impl ServerInfo {
    /// Reads INFO JSON. Unknown fields are ignored and missing ones take their default;
    /// a known field of the wrong type is [`ProtoError::BadJson`].
    pub fn from_json(json: &[u8]) -> Result<ServerInfo, ProtoError> {
        let m = object(json)?;
        let connect_urls = match m.get("connect_urls") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned).ok_or(ProtoError::BadJson))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(ProtoError::BadJson),
        };
        let port = get_u64(&m, "port")?.unwrap_or(0);
        let max_payload = get_u64(&m, "max_payload")?.unwrap_or(0);
        let proto = match m.get("proto") {
            None | Some(Value::Null) => 0,
            Some(Value::Number(n)) => n.as_i64().ok_or(ProtoError::BadJson)?,
            Some(_) => return Err(ProtoError::BadJson),
        };
        Ok(ServerInfo {
            server_id: get_str(&m, "server_id")?.unwrap_or_default(),
            server_name: get_str(&m, "server_name")?.unwrap_or_default(),
            version: get_str(&m, "version")?.unwrap_or_default(),
            go: get_str(&m, "go")?.unwrap_or_default(),
            host: get_str(&m, "host")?.unwrap_or_default(),
            port: u16::try_from(port).map_err(|_| ProtoError::BadJson)?,
            headers: get_bool(&m, "headers")?,
            max_payload: usize::try_from(max_payload).map_err(|_| ProtoError::BadJson)?,
            proto,
            client_id: get_u64(&m, "client_id")?,
            auth_required: get_bool(&m, "auth_required")?,
            tls_required: get_bool(&m, "tls_required")?,
            tls_verify: get_bool(&m, "tls_verify")?,
            tls_available: get_bool(&m, "tls_available")?,
            connect_urls,
            ldm: get_bool(&m, "ldm")?,
            nonce: get_str(&m, "nonce")?,
            jetstream: get_bool(&m, "jetstream")?,
            client_ip: get_str(&m, "client_ip")?,
            cluster: get_str(&m, "cluster")?,
            domain: get_str(&m, "domain")?,
        })
    }

    /// INFO JSON with every field; `None` fields are left out.
    pub fn to_json(&self) -> String {
        let mut o = JsonObject::new();
        o.field("server_id", self.server_id.as_str())
            .field("server_name", self.server_name.as_str())
            .field("version", self.version.as_str())
            .field("go", self.go.as_str())
            .field("host", self.host.as_str())
            .field("port", self.port)
            .field("headers", self.headers)
            .field("max_payload", self.max_payload)
            .field("proto", self.proto);
        if let Some(id) = self.client_id {
            o.field("client_id", id);
        }
        o.field("auth_required", self.auth_required)
            .field("tls_required", self.tls_required)
            .field("tls_verify", self.tls_verify)
            .field("tls_available", self.tls_available);
        if !self.connect_urls.is_empty() {
            o.field("connect_urls", self.connect_urls.clone());
        }
        o.field("ldm", self.ldm)
            .optional("nonce", &self.nonce)
            .optional("client_ip", &self.client_ip)
            .optional("cluster", &self.cluster)
            .optional("domain", &self.domain)
            .field("jetstream", self.jetstream)
            .finish()
    }
}

/// The client's CONNECT.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectInfo {
    /// Ask for `+OK` after each operation.
    pub verbose: bool,
    /// Ask for strict subject checking.
    pub pedantic: bool,
    /// The client requires TLS.
    pub tls_required: bool,
    /// Token authentication.
    pub auth_token: Option<String>,
    /// User name.
    pub user: Option<String>,
    /// Password.
    pub pass: Option<String>,
    /// Connection name.
    pub name: Option<String>,
    /// Client language.
    pub lang: String,
    /// Client version.
    pub version: String,
    /// Protocol version: 1 lets the server send INFO updates at any time.
    pub protocol: u8,
    /// Receive our own messages.
    pub echo: bool,
    /// Signature of the server's nonce.
    pub sig: Option<String>,
    /// User JWT.
    pub jwt: Option<String>,
    /// Public nkey.
    pub nkey: Option<String>,
    /// The client understands headers.
    pub headers: bool,
    /// The client wants 503 status messages when a request has no responders.
    pub no_responders: bool,
}

impl Default for ConnectInfo {
    fn default() -> ConnectInfo {
        ConnectInfo {
            verbose: false,
            pedantic: false,
            tls_required: false,
            auth_token: None,
            user: None,
            pass: None,
            name: None,
            lang: "rust".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            protocol: 1,
            echo: true,
            sig: None,
            jwt: None,
            nkey: None,
            headers: true,
            no_responders: true,
        }
    }
}

impl std::fmt::Debug for ConnectInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let hide = |v: &Option<String>| v.as_ref().map(|_| "***");
        f.debug_struct("ConnectInfo")
            .field("verbose", &self.verbose)
            .field("pedantic", &self.pedantic)
            .field("tls_required", &self.tls_required)
            .field("auth_token", &hide(&self.auth_token))
            .field("user", &self.user)
            .field("pass", &hide(&self.pass))
            .field("name", &self.name)
            .field("lang", &self.lang)
            .field("version", &self.version)
            .field("protocol", &self.protocol)
            .field("echo", &self.echo)
            .field("sig", &hide(&self.sig))
            .field("jwt", &hide(&self.jwt))
            .field("nkey", &self.nkey)
            .field("headers", &self.headers)
            .field("no_responders", &self.no_responders)
            .finish()
    }
}

impl ConnectInfo {
    /// CONNECT JSON: the flags always, optional fields only when set.
    pub fn to_json(&self) -> String {
        JsonObject::new()
            .field("verbose", self.verbose)
            .field("pedantic", self.pedantic)
            .field("tls_required", self.tls_required)
            .optional("auth_token", &self.auth_token)
            .optional("user", &self.user)
            .optional("pass", &self.pass)
            .optional("name", &self.name)
            .optional("sig", &self.sig)
            .optional("jwt", &self.jwt)
            .optional("nkey", &self.nkey)
            .field("lang", self.lang.as_str())
            .field("version", self.version.as_str())
            .field("protocol", self.protocol)
            .field("echo", self.echo)
            .field("headers", self.headers)
            .field("no_responders", self.no_responders)
            .finish()
    }

    /// Reads CONNECT JSON; missing flags take nats-server's defaults: true for `verbose`,
    /// `pedantic` and `echo` (a CONNECT without `verbose` gets `+OK`s), false otherwise.
    pub fn from_json(json: &[u8]) -> Result<ConnectInfo, ProtoError> {
        let m = object(json)?;
        let echo = match m.get("echo") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(ProtoError::BadJson),
        };
        let protocol = get_u64(&m, "protocol")?.unwrap_or(0);
        Ok(ConnectInfo {
            verbose: get_bool_or(&m, "verbose", true)?,
            pedantic: get_bool_or(&m, "pedantic", true)?,
            tls_required: get_bool(&m, "tls_required")?,
            auth_token: get_str(&m, "auth_token")?,
            user: get_str(&m, "user")?,
            pass: get_str(&m, "pass")?,
            name: get_str(&m, "name")?,
            lang: get_str(&m, "lang")?.unwrap_or_default(),
            version: get_str(&m, "version")?.unwrap_or_default(),
            protocol: u8::try_from(protocol).map_err(|_| ProtoError::BadJson)?,
            echo,
            sig: get_str(&m, "sig")?,
            jwt: get_str(&m, "jwt")?,
            nkey: get_str(&m, "nkey")?,
            headers: get_bool(&m, "headers")?,
            no_responders: get_bool(&m, "no_responders")?,
        })
    }
}

/// A message delivered by the server (MSG or HMSG), borrowing from the read buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Msg<'a> {
    /// The subject it was published to.
    pub subject: &'a str,
    /// The subscription it is for.
    pub sid: u64,
    /// The reply subject, if any.
    pub reply: Option<&'a str>,
    /// The raw header block (`NATS/1.0…\r\n\r\n`) of an HMSG; `None` for MSG.
    pub header: Option<&'a [u8]>,
    /// The payload.
    pub payload: &'a [u8],
}

/// An operation sent by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerOp<'a> {
    /// `INFO {json}\r\n`
    Info(Box<ServerInfo>),
    /// `MSG <subject> <sid> [reply-to] <#bytes>\r\n<payload>\r\n` or
    /// `HMSG <subject> <sid> [reply-to] <#header bytes> <#total bytes>\r\n<headers><payload>\r\n`
    Msg(Msg<'a>),
    /// `PING\r\n`
    Ping,
    /// `PONG\r\n`
    Pong,
    /// `+OK\r\n`
    Ok,
    /// `-ERR '<text>'\r\n` (the text without its quotes; also accepted without quotes).
    Err(&'a str),
}

/// An operation sent by a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOp<'a> {
    /// `CONNECT {json}\r\n`
    Connect(Box<ConnectInfo>),
    /// `PUB <subject> [reply-to] <#bytes>\r\n<payload>\r\n`
    Pub {
        /// Subject.
        subject: &'a str,
        /// Reply subject.
        reply: Option<&'a str>,
        /// Payload.
        payload: &'a [u8],
    },
    /// `HPUB <subject> [reply-to] <#header bytes> <#total bytes>\r\n<headers><payload>\r\n`
    Hpub {
        /// Subject.
        subject: &'a str,
        /// Reply subject.
        reply: Option<&'a str>,
        /// The header block, `NATS/1.0\r\n` through the blank line's CRLF.
        header: &'a [u8],
        /// Payload.
        payload: &'a [u8],
    },
    /// `SUB <subject> [queue group] <sid>\r\n`
    Sub {
        /// Subject, wildcards allowed.
        subject: &'a str,
        /// Queue group.
        queue_group: Option<&'a str>,
        /// Subscription id.
        sid: u64,
    },
    /// `UNSUB <sid> [max_msgs]\r\n`
    Unsub {
        /// Subscription id.
        sid: u64,
        /// Messages to deliver before the subscription ends.
        max: Option<u64>,
    },
    /// `PING\r\n`
    Ping,
    /// `PONG\r\n`
    Pong,
}

/// The control line at the start of `buf`: (line without CRLF, bytes including CRLF).
fn control_line(buf: &[u8], limit: usize) -> Result<Status<(&[u8], usize)>, ProtoError> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(lf) => {
            if lf > limit.saturating_add(1) {
                return Err(ProtoError::ControlLineTooLong { limit });
            }
            match lf.checked_sub(1).and_then(|i| buf.get(i)) {
                Some(b'\r') => Ok(Status::Complete((
                    buf.get(..lf - 1).unwrap_or_default(),
                    lf + 1,
                ))),
                _ => Err(ProtoError::BadLineEnding),
            }
        }
        None if buf.len() > limit.saturating_add(1) => {
            Err(ProtoError::ControlLineTooLong { limit })
        }
        None => Ok(Status::Partial),
    }
}

/// Splits arguments on runs of spaces and tabs.
fn args(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&b| b == b' ' || b == b'\t')
        .filter(|a| !a.is_empty())
}

fn number(arg: &[u8]) -> Result<u64, ProtoError> {
    if arg.is_empty() || arg.len() > 20 {
        return Err(ProtoError::BadNumber);
    }
    let mut n: u64 = 0;
    for &b in arg {
        if !b.is_ascii_digit() {
            return Err(ProtoError::BadNumber);
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or(ProtoError::BadNumber)?;
    }
    Ok(n)
}

fn size(arg: &[u8]) -> Result<usize, ProtoError> {
    usize::try_from(number(arg)?).map_err(|_| ProtoError::BadNumber)
}

fn text(arg: &[u8]) -> Result<&str, ProtoError> {
    std::str::from_utf8(arg).map_err(|_| ProtoError::BadArguments("not UTF-8"))
}

/// The op name: the first word, upper-cased into `name` (only the first 8 bytes matter).
fn op_name(line: &[u8]) -> ([u8; 8], usize, &[u8]) {
    let end = line
        .iter()
        .position(|&b| b == b' ' || b == b'\t')
        .unwrap_or(line.len());
    let (word, rest) = line.split_at(end);
    let mut name = [0u8; 8];
    for (d, s) in name.iter_mut().zip(word) {
        *d = s.to_ascii_uppercase();
    }
    (name, word.len(), rest)
}

fn name_is(name: &[u8; 8], len: usize, want: &[u8]) -> bool {
    len == want.len() && name.get(..len) == Some(want)
}

/// Could `partial` (upper-cased, no separator yet) still become one of `names`?
fn could_be(buf: &[u8], names: &[&[u8]]) -> bool {
    let n = buf.len().min(8);
    let mut up = [0u8; 8];
    for (d, s) in up.iter_mut().zip(buf) {
        *d = s.to_ascii_uppercase();
    }
    let head = up.get(..n).unwrap_or_default();
    // A separator or line end after a full name is checked by the full parse later.
    names.iter().any(|name| {
        let m = n.min(name.len());
        name.get(..m) == head.get(..m)
    })
}

const SERVER_OPS: &[&[u8]] = &[b"INFO", b"MSG", b"HMSG", b"PING", b"PONG", b"+OK", b"-ERR"];
const CLIENT_OPS: &[&[u8]] = &[
    b"CONNECT", b"PUB", b"HPUB", b"SUB", b"UNSUB", b"PING", b"PONG",
];

/// Reads a payload of `len` bytes plus CRLF that starts at `start`.
fn payload(buf: &[u8], start: usize, len: usize) -> Result<Status<(&[u8], usize)>, ProtoError> {
    let end = start.checked_add(len).ok_or(ProtoError::BadNumber)?;
    let after = end.checked_add(2).ok_or(ProtoError::BadNumber)?;
    if buf.len() < after {
        return Ok(Status::Partial);
    }
    if buf.get(end..after) != Some(b"\r\n") {
        return Err(ProtoError::BadPayloadEnd);
    }
    Ok(Status::Complete((
        buf.get(start..end).unwrap_or_default(),
        after,
    )))
}

/// The JSON argument of INFO or CONNECT: everything after the separator.
fn json_arg(rest: &[u8]) -> Result<&[u8], ProtoError> {
    let start = rest
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .ok_or(ProtoError::BadArguments("missing JSON"))?;
    Ok(rest.get(start..).unwrap_or_default())
}

/// The control line at the start of `buf` if it is complete; `None` while it may still
/// become one of `names`.
fn op_line<'a>(
    buf: &'a [u8],
    limit: usize,
    names: &[&[u8]],
) -> Result<Option<(&'a [u8], usize)>, ProtoError> {
    // The name first, so that the same bytes give the same error however they are split
    // into reads: a line that ends badly but was never an op is an unknown op either way.
    if !could_be(buf, names) {
        return Err(ProtoError::UnknownOp);
    }
    match control_line(buf, limit)? {
        Status::Complete(found) => Ok(Some(found)),
        Status::Partial => Ok(None),
    }
}

/// A message operation (MSG/HMSG from a server, PUB/HPUB from a client), payload included.
struct MessageOp<'a> {
    subject: &'a str,
    sid: u64,
    reply: Option<&'a str>,
    header: Option<&'a [u8]>,
    payload: &'a [u8],
    used: usize,
}

/// Parses `<subject> [<sid>] [reply] [<#header bytes>] <#total bytes>` and the payload
/// that follows the control line (which ended at `start`).
fn message_op<'a>(
    buf: &'a [u8],
    start: usize,
    rest: &'a [u8],
    headers: bool,
    with_sid: bool,
) -> Result<Status<MessageOp<'a>>, ProtoError> {
    let a: Vec<&[u8]> = args(rest).collect();
    let required = 2 + usize::from(with_sid) + usize::from(headers);
    let has_reply = match a.len() {
        n if n == required => false,
        n if n == required + 1 => true,
        _ => {
            return Err(ProtoError::BadArguments(if with_sid {
                "MSG/HMSG argument count"
            } else {
                "PUB/HPUB argument count"
            }))
        }
    };
    let mut it = a.into_iter();
    let mut next = || {
        it.next()
            .ok_or(ProtoError::BadArguments("missing argument"))
    };
    let subject = next()?;
    let sid = if with_sid { number(next()?)? } else { 0 };
    let reply = if has_reply { Some(next()?) } else { None };
    let hdr = if headers { Some(next()?) } else { None };
    let total = size(next()?)?;
    let hdr = hdr.map(size).transpose()?;
    if hdr.is_some_and(|h| h > total) {
        return Err(ProtoError::HeaderLongerThanTotal);
    }
    let (body, used) = match payload(buf, start, total)? {
        Status::Complete(found) => found,
        Status::Partial => return Ok(Status::Partial),
    };
    // Checked once the message is whole, so that a reader can skip just this one.
    let (Ok(subject), Ok(reply)) = (
        std::str::from_utf8(subject),
        reply.map(std::str::from_utf8).transpose(),
    ) else {
        return Err(ProtoError::SubjectNotUtf8 { frame: used, sid });
    };
    let (header, payload) = match hdr {
        Some(h) => {
            let (hb, pb) = body.split_at(h.min(body.len()));
            (Some(hb), pb)
        }
        None => (None, body),
    };
    Ok(Status::Complete(MessageOp {
        subject,
        sid,
        reply,
        header,
        payload,
        used,
    }))
}

/// Parses one server operation from the start of `buf`.
pub fn parse_server_op(
    buf: &[u8],
    max_control_line: usize,
) -> Result<Status<(ServerOp<'_>, usize)>, ProtoError> {
    let Some((line, used)) = op_line(buf, max_control_line, SERVER_OPS)? else {
        return Ok(Status::Partial);
    };
    let (name, len, rest) = op_name(line);
    if name_is(&name, len, b"MSG") || name_is(&name, len, b"HMSG") {
        let Status::Complete(m) = message_op(buf, used, rest, len == 4, true)? else {
            return Ok(Status::Partial);
        };
        let msg = Msg {
            subject: m.subject,
            sid: m.sid,
            reply: m.reply,
            header: m.header,
            payload: m.payload,
        };
        return Ok(Status::Complete((ServerOp::Msg(msg), m.used)));
    }
    let op = if name_is(&name, len, b"PING") {
        ServerOp::Ping
    } else if name_is(&name, len, b"PONG") {
        ServerOp::Pong
    } else if name_is(&name, len, b"+OK") {
        ServerOp::Ok
    } else if name_is(&name, len, b"INFO") {
        ServerOp::Info(Box::new(ServerInfo::from_json(json_arg(rest)?)?))
    } else if name_is(&name, len, b"-ERR") {
        let t = text(rest)?.trim_matches(|c| c == ' ' || c == '\t');
        let t = t
            .strip_prefix('\'')
            .and_then(|t| t.strip_suffix('\''))
            .unwrap_or(t);
        ServerOp::Err(t)
    } else {
        return Err(ProtoError::UnknownOp);
    };
    Ok(Status::Complete((op, used)))
}

/// Parses one client operation from the start of `buf` (for fake servers and tests).
pub fn parse_client_op(
    buf: &[u8],
    max_control_line: usize,
) -> Result<Status<(ClientOp<'_>, usize)>, ProtoError> {
    let Some((line, used)) = op_line(buf, max_control_line, CLIENT_OPS)? else {
        return Ok(Status::Partial);
    };
    let (name, len, rest) = op_name(line);
    if name_is(&name, len, b"PUB") || name_is(&name, len, b"HPUB") {
        let Status::Complete(m) = message_op(buf, used, rest, len == 4, false)? else {
            return Ok(Status::Partial);
        };
        let op = match m.header {
            Some(header) => ClientOp::Hpub {
                subject: m.subject,
                reply: m.reply,
                header,
                payload: m.payload,
            },
            None => ClientOp::Pub {
                subject: m.subject,
                reply: m.reply,
                payload: m.payload,
            },
        };
        return Ok(Status::Complete((op, m.used)));
    }
    let op = if name_is(&name, len, b"PING") {
        ClientOp::Ping
    } else if name_is(&name, len, b"PONG") {
        ClientOp::Pong
    } else if name_is(&name, len, b"SUB") {
        let a: Vec<&[u8]> = args(rest).collect();
        let (subject, queue_group, sid) = match a.as_slice() {
            [s, sid] => (text(s)?, None, number(sid)?),
            [s, q, sid] => (text(s)?, Some(text(q)?), number(sid)?),
            _ => return Err(ProtoError::BadArguments("SUB argument count")),
        };
        ClientOp::Sub {
            subject,
            queue_group,
            sid,
        }
    } else if name_is(&name, len, b"UNSUB") {
        let a: Vec<&[u8]> = args(rest).collect();
        match a.as_slice() {
            [sid] => ClientOp::Unsub {
                sid: number(sid)?,
                max: None,
            },
            [sid, max] => ClientOp::Unsub {
                sid: number(sid)?,
                max: Some(number(max)?),
            },
            _ => return Err(ProtoError::BadArguments("UNSUB argument count")),
        }
    } else if len == 7 && name.get(..7) == Some(b"CONNECT") {
        ClientOp::Connect(Box::new(ConnectInfo::from_json(json_arg(rest)?)?))
    } else {
        return Err(ProtoError::UnknownOp);
    };
    Ok(Status::Complete((op, used)))
}

/// Appends the decimal digits of `n`.
#[inline(always)]
fn push_num(out: &mut Vec<u8>, n: u64) {
    // Sizes of up to four digits, most of them, as one fixed-size append of digit pairs.
    match n {
        0..=9 => out.push(b'0' + n as u8),
        10..=99 => out.extend_from_slice(&pair(n)),
        100..=999 => {
            let [a, b] = pair(n % 100);
            out.extend_from_slice(&[b'0' + (n / 100) as u8, a, b]);
        }
        1000..=9999 => {
            let ([a, b], [c, d]) = (pair(n / 100), pair(n % 100));
            out.extend_from_slice(&[a, b, c, d]);
        }
        _ => push_num_long(out, n),
    }
}

/// The two digits of `n` (below 100).
#[inline]
fn pair(n: u64) -> [u8; 2] {
    let i = (n as usize % 100) * 2;
    match DIGIT_PAIRS.get(i..i + 2) {
        Some(&[a, b]) => [a, b],
        _ => [b'0', b'0'],
    }
}

const DIGIT_PAIRS: &[u8; 200] =
    b"00010203040506070809101112131415161718192021222324252627282930313233343536373839\
      40414243444546474849505152535455565758596061626364656667686970717273747576777879\
      8081828384858687888990919293949596979899";

#[cold]
fn push_num_long(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        if let Some(d) = digits.get_mut(i) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
        if n == 0 || i == 0 {
            break;
        }
    }
    out.extend_from_slice(digits.get(i..).unwrap_or_default());
}

/// Appends a PUB (no header) or HPUB: the client's publish fast path.
pub fn encode_pub(
    out: &mut Vec<u8>,
    subject: &str,
    reply: Option<&str>,
    header: Option<&[u8]>,
    payload: &[u8],
) {
    out.reserve(subject.len() + payload.len() + header.map_or(0, <[u8]>::len) + 40);
    out.extend_from_slice(if header.is_some() { b"HPUB " } else { b"PUB " });
    out.extend_from_slice(subject.as_bytes());
    out.push(b' ');
    if let Some(r) = reply {
        out.extend_from_slice(r.as_bytes());
        out.push(b' ');
    }
    if let Some(h) = header {
        push_num(out, h.len() as u64);
        out.push(b' ');
        push_num(out, (h.len() + payload.len()) as u64);
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(h);
    } else {
        push_num(out, payload.len() as u64);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(payload);
    out.extend_from_slice(b"\r\n");
}

impl ClientOp<'_> {
    /// Appends the operation's exact wire bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ClientOp::Connect(info) => {
                out.extend_from_slice(b"CONNECT ");
                out.extend_from_slice(info.to_json().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            ClientOp::Pub {
                subject,
                reply,
                payload,
            } => encode_pub(out, subject, *reply, None, payload),
            ClientOp::Hpub {
                subject,
                reply,
                header,
                payload,
            } => encode_pub(out, subject, *reply, Some(header), payload),
            ClientOp::Sub {
                subject,
                queue_group,
                sid,
            } => {
                out.extend_from_slice(b"SUB ");
                out.extend_from_slice(subject.as_bytes());
                out.push(b' ');
                if let Some(q) = queue_group {
                    out.extend_from_slice(q.as_bytes());
                    out.push(b' ');
                }
                push_num(out, *sid);
                out.extend_from_slice(b"\r\n");
            }
            ClientOp::Unsub { sid, max } => {
                out.extend_from_slice(b"UNSUB ");
                push_num(out, *sid);
                if let Some(m) = max {
                    out.push(b' ');
                    push_num(out, *m);
                }
                out.extend_from_slice(b"\r\n");
            }
            ClientOp::Ping => out.extend_from_slice(b"PING\r\n"),
            ClientOp::Pong => out.extend_from_slice(b"PONG\r\n"),
        }
    }
}

impl ServerOp<'_> {
    /// Appends the operation's exact wire bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ServerOp::Info(info) => {
                out.extend_from_slice(b"INFO ");
                out.extend_from_slice(info.to_json().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            ServerOp::Msg(m) => {
                out.extend_from_slice(if m.header.is_some() {
                    b"HMSG "
                } else {
                    b"MSG "
                });
                out.extend_from_slice(m.subject.as_bytes());
                out.push(b' ');
                push_num(out, m.sid);
                out.push(b' ');
                if let Some(r) = m.reply {
                    out.extend_from_slice(r.as_bytes());
                    out.push(b' ');
                }
                if let Some(h) = m.header {
                    push_num(out, h.len() as u64);
                    out.push(b' ');
                    push_num(out, (h.len() + m.payload.len()) as u64);
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(h);
                } else {
                    push_num(out, m.payload.len() as u64);
                    out.extend_from_slice(b"\r\n");
                }
                out.extend_from_slice(m.payload);
                out.extend_from_slice(b"\r\n");
            }
            ServerOp::Ping => out.extend_from_slice(b"PING\r\n"),
            ServerOp::Pong => out.extend_from_slice(b"PONG\r\n"),
            ServerOp::Ok => out.extend_from_slice(b"+OK\r\n"),
            ServerOp::Err(t) => {
                out.extend_from_slice(b"-ERR '");
                out.extend_from_slice(t.as_bytes());
                out.extend_from_slice(b"'\r\n");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connect_without_flags_gets_nats_servers_defaults() {
        let c = ConnectInfo::from_json(b"{}").unwrap();
        assert!(c.verbose && c.pedantic && c.echo);
        let c =
            ConnectInfo::from_json(br#"{"verbose":false,"pedantic":false,"echo":false}"#).unwrap();
        assert!(!c.verbose && !c.pedantic && !c.echo);
    }

    const LIMIT: usize = DEFAULT_MAX_CONTROL_LINE;

    fn info_json() -> &'static str {
        r#"{"server_id":"ID","server_name":"n1","version":"2.15.1","go":"go1.24","host":"127.0.0.1","port":4222,"headers":true,"max_payload":1048576,"proto":1,"client_id":7,"auth_required":true,"tls_required":false,"connect_urls":["127.0.0.1:4223"],"ldm":false,"nonce":"abc","jetstream":true,"client_ip":"127.0.0.1","cluster":"c","domain":"d","unknown_field":{"x":1}}"#
    }

    /// Valid server fixtures: (bytes, expected op). Each is one complete op.
    fn server_fixtures() -> Vec<(Vec<u8>, ServerOp<'static>)> {
        let info = ServerInfo::from_json(info_json().as_bytes()).unwrap();
        let msg = |subject, sid, reply, header, payload| {
            ServerOp::Msg(Msg {
                subject,
                sid,
                reply,
                header,
                payload,
            })
        };
        vec![
            (
                format!("INFO {}\r\n", info_json()).into_bytes(),
                ServerOp::Info(Box::new(info.clone())),
            ),
            (
                format!("info\t {}\r\n", info_json()).into_bytes(),
                ServerOp::Info(Box::new(info)),
            ),
            (
                b"MSG a.b 1 5\r\nhello\r\n".to_vec(),
                msg("a.b", 1, None, None, &b"hello"[..]),
            ),
            (
                b"msg a.b 1 reply.to 5\r\nhello\r\n".to_vec(),
                msg("a.b", 1, Some("reply.to"), None, &b"hello"[..]),
            ),
            (
                b"MsG\ta.b\t\t22   0\r\n\r\n".to_vec(),
                msg("a.b", 22, None, None, &b""[..]),
            ),
            (
                b"MSG bin 3 4\r\n\r\n\r\n\r\n".to_vec(),
                msg("bin", 3, None, None, &b"\r\n\r\n"[..]),
            ),
            (
                b"HMSG a 9 18 23\r\nNATS/1.0\r\nA: b\r\n\r\nhello\r\n".to_vec(),
                msg(
                    "a",
                    9,
                    None,
                    Some(&b"NATS/1.0\r\nA: b\r\n\r\n"[..]),
                    &b"hello"[..],
                ),
            ),
            (
                b"hmsg a 9 r 12 12\r\nNATS/1.0\r\n\r\n\r\n".to_vec(),
                msg("a", 9, Some("r"), Some(&b"NATS/1.0\r\n\r\n"[..]), &b""[..]),
            ),
            (b"PING\r\n".to_vec(), ServerOp::Ping),
            (b"ping\r\n".to_vec(), ServerOp::Ping),
            (b"PONG\r\n".to_vec(), ServerOp::Pong),
            (b"+OK\r\n".to_vec(), ServerOp::Ok),
            (b"+ok\r\n".to_vec(), ServerOp::Ok),
            (
                b"-ERR 'Authorization Violation'\r\n".to_vec(),
                ServerOp::Err("Authorization Violation"),
            ),
            (
                b"-ERR Unquoted text\r\n".to_vec(),
                ServerOp::Err("Unquoted text"),
            ),
        ]
    }

    #[test]
    fn every_server_fixture_parses_and_every_prefix_is_partial() {
        for (bytes, want) in server_fixtures() {
            let shown = String::from_utf8_lossy(&bytes).into_owned();
            let got = parse_server_op(&bytes, LIMIT).unwrap_or_else(|e| panic!("{shown:?}: {e}"));
            assert_eq!(got, Status::Complete((want, bytes.len())), "{shown:?}");
            for cut in 0..bytes.len() {
                assert_eq!(
                    parse_server_op(&bytes[..cut], LIMIT),
                    Ok(Status::Partial),
                    "{shown:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn pipelined_server_ops_parse_one_after_another() {
        let all: Vec<u8> = server_fixtures().into_iter().flat_map(|(b, _)| b).collect();
        let wants: Vec<ServerOp<'_>> = server_fixtures().into_iter().map(|(_, op)| op).collect();
        let mut rest = all.as_slice();
        for want in wants {
            let Status::Complete((op, used)) = parse_server_op(rest, LIMIT).unwrap() else {
                panic!("partial")
            };
            assert_eq!(op, want);
            rest = &rest[used..];
        }
        assert!(rest.is_empty());
    }

    #[test]
    fn invalid_server_ops_give_specific_errors() {
        let long_line = format!("INFO {{\"x\":\"{}\"}}\r\n", "a".repeat(LIMIT));
        let table: Vec<(Vec<u8>, ProtoError)> = vec![
            (b"FOO\r\n".to_vec(), ProtoError::UnknownOp),
            (b"X".to_vec(), ProtoError::UnknownOp),
            (b"PINGX\r\n".to_vec(), ProtoError::UnknownOp),
            (b"PING\n".to_vec(), ProtoError::BadLineEnding),
            (b"INFO {not json}\r\n".to_vec(), ProtoError::BadJson),
            (b"INFO []\r\n".to_vec(), ProtoError::BadJson),
            (b"INFO {\"port\":\"x\"}\r\n".to_vec(), ProtoError::BadJson),
            (
                b"INFO\r\n".to_vec(),
                ProtoError::BadArguments("missing JSON"),
            ),
            (
                long_line.into_bytes(),
                ProtoError::ControlLineTooLong { limit: LIMIT },
            ),
            (
                format!("INFO {}", "a".repeat(LIMIT + 10)).into_bytes(),
                ProtoError::ControlLineTooLong { limit: LIMIT },
            ),
            (b"MSG a 1 3\r\nabcd\r\n".to_vec(), ProtoError::BadPayloadEnd),
            (b"MSG a 1 x\r\n".to_vec(), ProtoError::BadNumber),
            (b"MSG a x 1\r\n".to_vec(), ProtoError::BadNumber),
            (
                b"MSG a 1 99999999999999999999999\r\n".to_vec(),
                ProtoError::BadNumber,
            ),
            (
                b"MSG a\r\n".to_vec(),
                ProtoError::BadArguments("MSG/HMSG argument count"),
            ),
            (
                b"MSG a 1 r x 5\r\n".to_vec(),
                ProtoError::BadArguments("MSG/HMSG argument count"),
            ),
            (
                b"HMSG a 1 10 5\r\n".to_vec(),
                ProtoError::HeaderLongerThanTotal,
            ),
            // Whole, and so skippable: its length is in the error.
            (
                b"MSG \xff 1 1\r\na\r\n".to_vec(),
                ProtoError::SubjectNotUtf8 { frame: 14, sid: 1 },
            ),
        ];
        for (bytes, want) in table {
            assert_eq!(
                parse_server_op(&bytes, LIMIT),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }

    #[test]
    fn the_limit_applies_to_the_control_line_only() {
        // The limit counts the line without its CRLF.
        let line = format!("-ERR '{}'\r\n", "e".repeat(LIMIT - 7));
        assert_eq!(line.len(), LIMIT + 2);
        assert!(matches!(
            parse_server_op(line.as_bytes(), LIMIT),
            Ok(Status::Complete(_))
        ));
        let over = format!("-ERR '{}'\r\n", "e".repeat(LIMIT - 6));
        assert_eq!(
            parse_server_op(over.as_bytes(), LIMIT),
            Err(ProtoError::ControlLineTooLong { limit: LIMIT })
        );
        let big = vec![b'z'; 10 * LIMIT];
        let mut msg = format!("MSG big 1 {}\r\n", big.len()).into_bytes();
        msg.extend_from_slice(&big);
        msg.extend_from_slice(b"\r\n");
        assert!(matches!(
            parse_server_op(&msg, LIMIT),
            Ok(Status::Complete(_))
        ));
    }

    /// Client ops with their exact encoding.
    fn client_fixtures() -> Vec<(ClientOp<'static>, &'static [u8])> {
        vec![
            (
                ClientOp::Pub {
                    subject: "a.b",
                    reply: None,
                    payload: b"hello",
                },
                b"PUB a.b 5\r\nhello\r\n",
            ),
            (
                ClientOp::Pub {
                    subject: "a",
                    reply: Some("r.1"),
                    payload: b"",
                },
                b"PUB a r.1 0\r\n\r\n",
            ),
            (
                ClientOp::Hpub {
                    subject: "a",
                    reply: None,
                    header: b"NATS/1.0\r\nA: b\r\n\r\n",
                    payload: b"hello",
                },
                b"HPUB a 18 23\r\nNATS/1.0\r\nA: b\r\n\r\nhello\r\n",
            ),
            (
                ClientOp::Hpub {
                    subject: "a",
                    reply: Some("r"),
                    header: b"NATS/1.0\r\n\r\n",
                    payload: b"",
                },
                b"HPUB a r 12 12\r\nNATS/1.0\r\n\r\n\r\n",
            ),
            (
                ClientOp::Sub {
                    subject: "a.*",
                    queue_group: None,
                    sid: 1,
                },
                b"SUB a.* 1\r\n",
            ),
            (
                ClientOp::Sub {
                    subject: "a.>",
                    queue_group: Some("q"),
                    sid: 42,
                },
                b"SUB a.> q 42\r\n",
            ),
            (ClientOp::Unsub { sid: 1, max: None }, b"UNSUB 1\r\n"),
            (
                ClientOp::Unsub {
                    sid: 18446744073709551615,
                    max: Some(5),
                },
                b"UNSUB 18446744073709551615 5\r\n",
            ),
            (ClientOp::Ping, b"PING\r\n"),
            (ClientOp::Pong, b"PONG\r\n"),
        ]
    }

    #[test]
    fn numbers_are_written_in_decimal_at_every_length() {
        let mut values = vec![0, u64::MAX];
        for p in 1..20 {
            let t = 10u64.pow(p);
            values.extend([t - 1, t, t + 1]);
        }
        for v in values {
            let mut out = b"x".to_vec();
            push_num(&mut out, v);
            assert_eq!(out, format!("x{v}").into_bytes());
        }
    }

    #[test]
    fn client_ops_encode_to_exact_bytes_and_parse_back() {
        for (op, bytes) in client_fixtures() {
            let mut out = Vec::new();
            op.encode(&mut out);
            assert_eq!(out, bytes, "{op:?}");
            let shown = String::from_utf8_lossy(bytes).into_owned();
            assert_eq!(
                parse_client_op(bytes, LIMIT),
                Ok(Status::Complete((op, bytes.len()))),
                "{shown:?}"
            );
            for cut in 0..bytes.len() {
                assert_eq!(
                    parse_client_op(&bytes[..cut], LIMIT),
                    Ok(Status::Partial),
                    "{shown:?} cut at {cut}"
                );
            }
        }
    }

    #[test]
    fn connect_encodes_its_fields_and_round_trips() {
        let info = ConnectInfo {
            name: Some("n".into()),
            user: Some("u".into()),
            pass: Some("p".into()),
            ..ConnectInfo::default()
        };
        let mut out = Vec::new();
        ClientOp::Connect(Box::new(info.clone())).encode(&mut out);
        let expected = format!(
            "CONNECT {{\"verbose\":false,\"pedantic\":false,\"tls_required\":false,\"user\":\"u\",\"pass\":\"p\",\"name\":\"n\",\"lang\":\"rust\",\"version\":\"{}\",\"protocol\":1,\"echo\":true,\"headers\":true,\"no_responders\":true}}\r\n",
            env!("CARGO_PKG_VERSION")
        );
        assert_eq!(String::from_utf8(out.clone()).unwrap(), expected);
        assert_eq!(
            parse_client_op(&out, LIMIT),
            Ok(Status::Complete((
                ClientOp::Connect(Box::new(info)),
                out.len()
            )))
        );
    }

    #[test]
    fn server_ops_encode_and_round_trip() {
        for (bytes, op) in server_fixtures() {
            let mut out = Vec::new();
            op.encode(&mut out);
            let again = parse_server_op(&out, LIMIT).unwrap();
            assert_eq!(
                again,
                Status::Complete((op.clone(), out.len())),
                "{:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
        let mut out = Vec::new();
        ServerOp::Err("Stale Connection").encode(&mut out);
        assert_eq!(out, b"-ERR 'Stale Connection'\r\n");
        let mut out = Vec::new();
        ServerOp::Msg(Msg {
            subject: "s",
            sid: 3,
            reply: Some("r"),
            header: Some(b"NATS/1.0\r\n\r\n"),
            payload: b"xy",
        })
        .encode(&mut out);
        assert_eq!(out, b"HMSG s 3 r 12 14\r\nNATS/1.0\r\n\r\nxy\r\n");
    }

    #[test]
    fn debug_of_connect_hides_secrets() {
        let info = ConnectInfo {
            pass: Some("pw-secret".into()),
            auth_token: Some("tok-secret".into()),
            jwt: Some("jwt-secret".into()),
            sig: Some("sig-secret".into()),
            ..ConnectInfo::default()
        };
        let shown = format!("{info:?}");
        assert!(!shown.contains("secret"), "{shown}");
    }

    #[test]
    fn info_fields_are_read() {
        let info = ServerInfo::from_json(info_json().as_bytes()).unwrap();
        assert_eq!(info.max_payload, 1_048_576);
        assert_eq!(info.connect_urls, ["127.0.0.1:4223"]);
        assert_eq!(info.nonce.as_deref(), Some("abc"));
        assert_eq!(info.client_id, Some(7));
        assert!(info.headers && info.auth_required && info.jetstream && !info.ldm);
        let back = ServerInfo::from_json(info.to_json().as_bytes()).unwrap();
        assert_eq!(back, info);
    }
}

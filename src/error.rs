//! The crate's error type.
//!
//! Every fallible public function returns [`Error`]. Its `Display` reads as
//! `area: detail`, lowercase, with the offending value where that value is not a
//! secret. Passwords, tokens, seeds and JWTs never reach an error message.

use std::fmt;
use std::io;
use std::time::Duration;

/// A protocol violation found while parsing bytes from the wire.
///
/// Small and `Copy` so that the parser can return it without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtoError {
    /// The operation name is not one the peer may send.
    UnknownOp,
    /// A control line is longer than the configured limit.
    ControlLineTooLong {
        /// The limit in bytes.
        limit: usize,
    },
    /// A control line ended with a bare LF, or a CR was not followed by LF.
    BadLineEnding,
    /// The arguments of an operation are missing, extra or malformed.
    BadArguments(&'static str),
    /// A byte count is not a number or does not fit.
    BadNumber,
    /// The payload was not followed by CRLF (the byte count is wrong).
    BadPayloadEnd,
    /// The header length is larger than the total length.
    HeaderLongerThanTotal,
    /// The JSON of an INFO or CONNECT is not valid.
    BadJson,
    /// A header block is malformed.
    BadHeader(&'static str),
    /// A message whose subject or reply subject is not UTF-8 (nats-server relays any
    /// bytes there). The message is whole and `frame` bytes long: a reader can skip it
    /// and go on.
    SubjectNotUtf8 {
        /// The bytes of the whole message, control line and payload.
        frame: usize,
        /// The subscription it was for (`MSG`/`HMSG`; 0 for `PUB`/`HPUB`): the server
        /// counted it as delivered there.
        sid: u64,
    },
}

impl fmt::Display for ProtoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtoError::UnknownOp => f.write_str("unknown operation"),
            ProtoError::ControlLineTooLong { limit } => {
                write!(f, "control line longer than {limit} bytes")
            }
            ProtoError::BadLineEnding => f.write_str("control line does not end in CRLF"),
            ProtoError::BadArguments(what) => write!(f, "bad arguments: {what}"),
            ProtoError::BadNumber => f.write_str("invalid byte count"),
            ProtoError::BadPayloadEnd => {
                f.write_str("payload not followed by CRLF (wrong byte count)")
            }
            ProtoError::HeaderLongerThanTotal => {
                f.write_str("header length larger than total length")
            }
            ProtoError::BadJson => f.write_str("invalid JSON"),
            ProtoError::BadHeader(what) => write!(f, "bad header block: {what}"),
            ProtoError::SubjectNotUtf8 { frame, .. } => {
                write!(f, "a message's subject is not UTF-8 ({frame} bytes)")
            }
        }
    }
}

impl std::error::Error for ProtoError {}

/// A credentials or key path as errors show it; not at all when it looks like the
/// secret itself (a creds file's text, a PEM key, a JWT, a seed) given where a path was
/// expected.
pub(crate) fn shown_path(path: &std::path::Path) -> String {
    let text = path.display().to_string();
    let trimmed = text.trim();
    let long_word = trimmed.len() > 40 && !trimmed.contains(['/', '\\', ' ']);
    let looks_secret = text.contains(['\n', '\r'])
        || text.contains("-----")
        || (long_word && trimmed.starts_with("eyJ"))
        || (long_word && trimmed.starts_with('S') && !trimmed.contains('.'));
    if looks_secret {
        "the path given (not shown: it looks like the credentials themselves)".into()
    } else {
        text
    }
}

/// Why a subject, header or option value was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The offending part (never a secret).
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.value, self.reason)
    }
}

/// Everything that can go wrong in this crate.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A socket operation failed (refused, reset, unreachable...).
    Io {
        /// What we were doing, e.g. `connect to 127.0.0.1:4222`.
        context: String,
        /// The operating system's error.
        source: io::Error,
    },
    /// No connection could be made within the connect timeout.
    ConnectTimeout {
        /// The server we tried.
        server: String,
        /// The timeout that elapsed.
        timeout: Duration,
    },
    /// None of the configured servers could be reached; the last error is kept.
    NoServers(Box<Error>),
    /// The TLS handshake or a TLS record failed.
    Tls(String),
    /// The server refused our credentials (`-ERR 'Authorization Violation'`).
    AuthorizationViolation,
    /// The server said our credentials expired (`-ERR 'User Authentication Expired'`).
    AuthenticationExpired,
    /// Any other `-ERR` from the server, with its text.
    Server(String),
    /// The server refused a subscription or a request for lack of permission (`-ERR
    /// 'Permissions Violation for Subscription to …'` or `… for Publish …'`), with its
    /// text: the subscription has ended, or the request gets no reply.
    PermissionDenied(String),
    /// The peer broke the protocol.
    Protocol(ProtoError),
    /// A message is larger than the server's `max_payload`.
    MaxPayload {
        /// Bytes we were asked to send (headers included).
        size: usize,
        /// The server's limit.
        max: usize,
    },
    /// A subject is not valid for the operation.
    InvalidSubject(Invalid),
    /// A header name or value is not valid.
    InvalidHeader(Invalid),
    /// A server URL could not be understood.
    InvalidUrl(Invalid),
    /// A creds file, nkey seed or other credential could not be used.
    Credentials {
        /// Where the credential came from (a path, or a description such as `nkey seed`).
        source: String,
        /// What is wrong with it (never the secret itself).
        reason: String,
    },
    /// A configuration value is not valid.
    Config(String),
    /// An operation did not complete in time.
    Timeout {
        /// What timed out, e.g. `flush`.
        what: &'static str,
        /// How long we waited.
        after: Duration,
    },
    /// The connection was lost while the operation was pending; data may not have arrived.
    Disconnected,
    /// The client was closed (by the user, or for good after a fatal error).
    Closed,
    /// Messages published before a flush were written to a connection that ended before
    /// the server confirmed them, and were not written again (see
    /// [`crate::client::Options::resend_unconfirmed`]): they may not have arrived. The
    /// rest was confirmed.
    Lost {
        /// How many messages.
        messages: u64,
        /// Why the connection ended (the latest one, when several lost messages).
        reason: String,
    },
    /// The client closed with messages the server never confirmed.
    NotDelivered {
        /// How many messages were not confirmed delivered.
        messages: u64,
        /// Why (the last connection error).
        reason: String,
    },
    /// A request reached no subscriber: the server answered with status 503.
    NoResponders {
        /// The request's subject.
        subject: String,
    },
    /// The JetStream API refused a request (its `{"error": {...}}` reply).
    JetStream {
        /// The HTTP-like status code, e.g. 503 or 400.
        code: u16,
        /// JetStream's own error code (`err_code`), e.g. 10060; 0 when absent.
        err_code: u64,
        /// The server's description.
        description: String,
    },
    /// A buffer is full: the message was not queued.
    BufferFull {
        /// Which buffer: `reconnect buffer` or `flusher queue`.
        which: &'static str,
        /// Its limit in bytes.
        limit: usize,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn credentials(source: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Credentials {
            source: source.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn creds_file(path: &std::path::Path, reason: impl Into<String>) -> Error {
        Error::credentials(shown_path(path), reason)
    }

    /// True for errors that end a connection for good rather than for a retry:
    /// bad credentials, bad configuration, invalid input.
    pub fn is_fatal(&self) -> bool {
        matches!(
            self,
            Error::AuthorizationViolation
                | Error::AuthenticationExpired
                | Error::Credentials { .. }
                | Error::Config(_)
                | Error::InvalidUrl(_)
        )
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Io { context, source } => write!(f, "io: {context}: {source}"),
            Error::ConnectTimeout { server, timeout } => {
                write!(f, "connect: {server}: timed out after {timeout:?}")
            }
            Error::NoServers(last) => {
                write!(f, "connect: no server could be reached; last: {last}")
            }
            Error::Tls(reason) => write!(f, "tls: {reason}"),
            Error::AuthorizationViolation => {
                f.write_str("auth: authorization violation (the server refused the credentials)")
            }
            Error::AuthenticationExpired => f.write_str("auth: user authentication expired"),
            Error::Server(text) | Error::PermissionDenied(text) => write!(f, "server: {text}"),
            Error::Protocol(e) => write!(f, "protocol: {e}"),
            Error::MaxPayload { size, max } => write!(
                f,
                "publish: message of {size} bytes exceeds the server's max_payload of {max} bytes"
            ),
            Error::InvalidSubject(i) => write!(f, "subject: {i}"),
            Error::InvalidHeader(i) => write!(f, "header: {i}"),
            Error::InvalidUrl(i) => write!(f, "url: {i}"),
            Error::Credentials { source, reason } => write!(f, "credentials: {source}: {reason}"),
            Error::Config(text) => write!(f, "config: {text}"),
            Error::Timeout { what, after } => write!(f, "{what}: timed out after {after:?}"),
            Error::Disconnected => {
                f.write_str("connection: lost while the operation was pending; data may be lost")
            }
            Error::Closed => f.write_str("connection: closed"),
            Error::Lost { messages, reason } => write!(
                f,
                "connection: {messages} messages were lost with a connection before the server confirmed them ({reason})"
            ),
            Error::NotDelivered { messages, reason } => write!(
                f,
                "close: {messages} messages were not confirmed delivered ({reason})"
            ),
            Error::NoResponders { subject } => {
                write!(f, "request: no responders on {subject:?}")
            }
            Error::JetStream {
                code,
                err_code,
                description,
            } => write!(
                f,
                "jetstream: {description} (code {code}, err_code {err_code})"
            ),
            Error::BufferFull { which, limit } => {
                write!(
                    f,
                    "publish: {which} full ({limit} bytes); message not queued"
                )
            }
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::NoServers(last) => Some(last.as_ref()),
            Error::Protocol(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ProtoError> for Error {
    fn from(e: ProtoError) -> Error {
        Error::Protocol(e)
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

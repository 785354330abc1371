//! Connection options.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::Auth;
use crate::client::Event;
use crate::error::Result;
use crate::tls::TlsOptions;
use crate::url::{parse_server_list, ServerAddr};

/// A callback for connection [`Event`]s. It runs on the client's own threads: keep it
/// short. A [`crate::client::Client::flush`] called from it fails at once (it would wait
/// for the thread it runs on); [`crate::client::Client::close`] only starts the close.
pub type EventCallback = Arc<dyn Fn(Event) + Send + Sync>;

/// How to connect, authenticate and behave. Build it with the setters, then call
/// [`Options::connect`].
///
/// Every setter documents its default; the defaults follow the official NATS clients
/// unless a setter says why not.
///
/// ```no_run
/// use std::time::Duration;
/// use ansible_runner_nats::client::Options;
///
/// let client = Options::new()
///     .servers("nats://127.0.0.1:4222")?
///     .name("my-app")
///     .connect_timeout(Duration::from_secs(1))
///     .user_password("app", "s3cret")
///     .connect()?;
/// # Ok::<(), ansible_runner_nats::Error>(())
/// ```
#[derive(Clone)]
pub struct Options {
    pub(crate) servers: Vec<ServerAddr>,
    pub(crate) name: Option<String>,
    pub(crate) verbose: bool,
    pub(crate) pedantic: bool,
    pub(crate) echo: bool,
    pub(crate) connect_timeout: Duration,
    pub(crate) auth: Auth,
    pub(crate) tls: TlsOptions,
    pub(crate) flush_timeout: Duration,
    pub(crate) flusher_queue_size: usize,
    pub(crate) publish_wait: Duration,
    pub(crate) write_linger: Duration,
    pub(crate) max_control_line: usize,
    pub(crate) subscription_capacity: usize,
    pub(crate) ping_interval: Duration,
    pub(crate) max_outstanding_pings: u32,
    pub(crate) event_callback: Option<EventCallback>,
    pub(crate) no_randomize: bool,
    pub(crate) allow_reconnect: bool,
    pub(crate) max_reconnect_attempts: i64,
    pub(crate) reconnect_time_wait: Duration,
    pub(crate) reconnect_jitter: Duration,
    pub(crate) pending_size: usize,
    pub(crate) retry_on_failed_connect: bool,
    pub(crate) resend_unconfirmed: bool,
    pub(crate) connect_in_background: bool,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            servers: Vec::new(),
            name: None,
            verbose: false,
            pedantic: false,
            echo: true,
            connect_timeout: Duration::from_secs(2),
            auth: Auth::None,
            tls: TlsOptions::default(),
            flush_timeout: Duration::from_secs(10),
            flusher_queue_size: 1024 * 1024,
            publish_wait: Duration::from_secs(2),
            write_linger: Duration::ZERO,
            max_control_line: 1024 * 1024,
            subscription_capacity: 65_536,
            ping_interval: Duration::from_secs(120),
            max_outstanding_pings: 2,
            event_callback: None,
            no_randomize: false,
            allow_reconnect: true,
            max_reconnect_attempts: 60,
            reconnect_time_wait: Duration::from_secs(2),
            reconnect_jitter: Duration::from_millis(100),
            pending_size: 8 * 1024 * 1024,
            retry_on_failed_connect: false,
            resend_unconfirmed: false,
            connect_in_background: false,
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Auth and ServerAddr have redacting Debug impls of their own.
        f.debug_struct("Options")
            .field("servers", &self.servers)
            .field("name", &self.name)
            .field("verbose", &self.verbose)
            .field("pedantic", &self.pedantic)
            .field("echo", &self.echo)
            .field("connect_timeout", &self.connect_timeout)
            .field("auth", &self.auth)
            .field("tls", &self.tls)
            .field("flush_timeout", &self.flush_timeout)
            .field("flusher_queue_size", &self.flusher_queue_size)
            .field("publish_wait", &self.publish_wait)
            .field("write_linger", &self.write_linger)
            .field("max_control_line", &self.max_control_line)
            .field("subscription_capacity", &self.subscription_capacity)
            .field("ping_interval", &self.ping_interval)
            .field("max_outstanding_pings", &self.max_outstanding_pings)
            .field(
                "event_callback",
                &self.event_callback.as_ref().map(|_| "Fn"),
            )
            .field("no_randomize", &self.no_randomize)
            .field("allow_reconnect", &self.allow_reconnect)
            .field("max_reconnect_attempts", &self.max_reconnect_attempts)
            .field("reconnect_time_wait", &self.reconnect_time_wait)
            .field("reconnect_jitter", &self.reconnect_jitter)
            .field("pending_size", &self.pending_size)
            .field("retry_on_failed_connect", &self.retry_on_failed_connect)
            .field("resend_unconfirmed", &self.resend_unconfirmed)
            .field("connect_in_background", &self.connect_in_background)
            .finish()
    }
}

impl Options {
    /// Options with every default and no server yet.
    pub fn new() -> Options {
        Options::default()
    }

    /// The servers to connect to, as a comma-separated list of URLs
    /// (`nats://host:port`, `tls://host:port`, `host:port`; the port defaults to 4222).
    /// Credentials in a URL (`nats://user:pass@host`, `nats://token@host`) are used when no
    /// other authentication is set. Default: none; [`Options::connect`] then tries
    /// `nats://127.0.0.1:4222`.
    pub fn servers(mut self, list: &str) -> Result<Options> {
        self.servers = parse_server_list(list)?;
        Ok(self)
    }

    /// The servers to connect to, already parsed. Default: none.
    pub fn server_addrs(mut self, servers: Vec<ServerAddr>) -> Options {
        self.servers = servers;
        self
    }

    /// The connection name shown by the server's monitoring. Default: none.
    pub fn name(mut self, name: &str) -> Options {
        self.name = Some(name.to_owned());
        self
    }

    /// Ask the server for `+OK` after every operation. Default: false.
    pub fn verbose(mut self, on: bool) -> Options {
        self.verbose = on;
        self
    }

    /// Ask the server for strict checks of subjects. Default: false.
    pub fn pedantic(mut self, on: bool) -> Options {
        self.pedantic = on;
        self
    }

    /// Whether the server sends our own messages back to our subscriptions. Default: true.
    pub fn echo(mut self, on: bool) -> Options {
        self.echo = on;
        self
    }

    /// How long one connection attempt may take, from the TCP connect to the server's
    /// answer to our first PING (TLS handshake included). Default: 2 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Options {
        self.connect_timeout = timeout;
        self
    }

    /// Authentication. Default: [`Auth::None`] (or credentials from the URL).
    pub fn auth(mut self, auth: Auth) -> Options {
        self.auth = auth;
        self
    }

    /// Authenticate with a user name and password. Default: none.
    pub fn user_password(self, user: &str, password: &str) -> Options {
        self.auth(Auth::UserPassword {
            user: user.to_owned(),
            password: password.to_owned(),
        })
    }

    /// Authenticate with a token. Default: none.
    pub fn token(self, token: &str) -> Options {
        self.auth(Auth::Token(token.to_owned()))
    }

    /// Authenticate with a creds file (user JWT and nkey seed). Default: none.
    pub fn credentials_file(self, path: impl Into<PathBuf>) -> Options {
        self.auth(Auth::CredsFile(path.into()))
    }

    /// Authenticate with a user nkey seed (`SU...`). Default: none.
    pub fn nkey_seed(self, seed: &str) -> Options {
        self.auth(Auth::NKeySeed(seed.to_owned()))
    }

    /// TLS settings. Default: TLS only when the URL is `tls://` or the server requires
    /// it, verified against the webpki roots.
    pub fn tls(mut self, tls: TlsOptions) -> Options {
        self.tls = tls;
        self
    }

    /// Require TLS even for `nats://` URLs. Default: false.
    pub fn require_tls(mut self, on: bool) -> Options {
        self.tls.required = on;
        self
    }

    /// Trust the certificates in this PEM file, besides the webpki roots and the system's.
    /// Default: none.
    pub fn add_root_certificate(mut self, pem_file: impl Into<PathBuf>) -> Options {
        self.tls.ca_files.push(pem_file.into());
        self
    }

    /// Trust the operating system's CA certificates, besides the webpki roots (see
    /// [`TlsOptions::system_roots`] for where they are found). Default: true.
    pub fn system_roots(mut self, on: bool) -> Options {
        self.tls.system_roots = on;
        self
    }

    /// Verify the server's certificate against this name instead of the URL's host (a
    /// server reached by IP address, or through a tunnel). Default: the URL's host.
    pub fn tls_server_name(mut self, name: impl Into<String>) -> Options {
        self.tls.server_name = Some(name.into());
        self
    }

    /// Present this client certificate and key (PEM files) for mutual TLS. Default: none.
    pub fn client_certificate(
        mut self,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Options {
        self.tls.client_cert = Some(cert_file.into());
        self.tls.client_key = Some(key_file.into());
        self
    }

    /// Start the TLS handshake before the server's INFO (nats-server 2.10 or later, with
    /// `handshake_first` configured). Default: false.
    pub fn tls_first(mut self, on: bool) -> Options {
        self.tls.tls_first = on;
        self
    }

    /// The longest [`crate::client::Client::close`] (and dropping the last clone) takes:
    /// what was published is written and confirmed within it, and at its end the
    /// connection is shut down, even in the middle of a write to a server that stopped
    /// reading or of a handshake; only a TCP connect or a name lookup under way is not cut
    /// short (it ends within the connect timeout). [`crate::client::Client::flush`] takes a
    /// timeout of its own. Default: 10 s.
    pub fn flush_timeout(mut self, timeout: Duration) -> Options {
        self.flush_timeout = timeout;
        self
    }

    /// The bound, in bytes, of the queue between `publish` and the writer thread. When it
    /// is full, `publish` waits for room (see [`Options::publish_wait`]) or fails with
    /// [`crate::Error::BufferFull`]. A single message larger than the bound is accepted
    /// when the queue is empty. Default: 1 MiB: measured against 256 KiB and 8 MiB, it
    /// keeps publishing at the socket's limit (larger batches fall out of the CPU cache).
    pub fn flusher_queue_size(mut self, bytes: usize) -> Options {
        self.flusher_queue_size = bytes.max(1);
        self
    }

    /// How long `publish` waits for room in a full flusher queue without the writer taking
    /// anything from it or writing any of it (in pieces of at most 2 MiB). Publishers
    /// wait as long as the queue keeps moving; once it has not moved for this long (a
    /// server that stopped reading), every publish fails at once with
    /// [`crate::Error::BufferFull`] until it moves again. The kernel lets a blocked write
    /// go on in bursts, when much of its send buffer is free: over a link slow enough for
    /// those to come further apart than this, publishes are refused too. Default: 2 s.
    pub fn publish_wait(mut self, wait: Duration) -> Options {
        self.publish_wait = wait;
        self
    }

    /// Write coalescing for bursts: a small batch of messages that begins within this long
    /// of the previous write waits up to this long for more to join it. A burst then costs
    /// a few large writes (and few wake-ups of the server and of this process) instead of
    /// one per message, at up to this much latency; a message after a quiet spell is
    /// written at once. A flush, a full batch (64 KiB) or `close` writes at once.
    /// Default: zero (every message as soon as possible).
    pub fn write_linger(mut self, linger: Duration) -> Options {
        self.write_linger = linger;
        self
    }

    /// The longest control line accepted from the server. Default: 1 MiB. (nats-server's
    /// own `max_control_line`, 4 KiB by default, bounds what it reads; what it sends is
    /// longer: a MSG line adds the sid to a subject and reply of that length, an `-ERR`
    /// quotes a subject, a large cluster's INFO lists every server.)
    pub fn max_control_line(mut self, bytes: usize) -> Options {
        self.max_control_line = bytes;
        self
    }

    /// How many received messages a subscription holds before new ones are dropped (and
    /// counted as slow-consumer drops). Default: 65,536.
    pub fn subscription_capacity(mut self, messages: usize) -> Options {
        self.subscription_capacity = messages.max(1);
        self
    }

    /// How often the client PINGs the server to detect a dead connection; zero turns
    /// these PINGs, and with them the detection of a stale connection, off.
    /// Default: 2 min.
    pub fn ping_interval(mut self, interval: Duration) -> Options {
        self.ping_interval = interval;
        self
    }

    /// How many PINGs may go unanswered before the connection counts as stale (at
    /// least 1). Default: 2.
    pub fn max_outstanding_pings(mut self, pings: u32) -> Options {
        self.max_outstanding_pings = pings.max(1);
        self
    }

    /// Called for every connection [`Event`] (connected, disconnected, server errors...).
    /// It runs on the client's threads and must not block. Default: none.
    pub fn event_callback(mut self, callback: impl Fn(Event) + Send + Sync + 'static) -> Options {
        self.event_callback = Some(Arc::new(callback));
        self
    }

    /// Try the servers in the order given instead of shuffling them. Default: false
    /// (shuffled, which spreads clients over a cluster).
    pub fn no_randomize(mut self, on: bool) -> Options {
        self.no_randomize = on;
        self
    }

    /// Reconnect when the connection is lost. Default: true. When false, a lost
    /// connection closes the client.
    pub fn allow_reconnect(mut self, on: bool) -> Options {
        self.allow_reconnect = on;
        self
    }

    /// How many failed reconnect attempts in a row a server gets before it leaves the
    /// pool; when the pool is empty the client closes with the last error. Before the
    /// first connection (with [`Options::connect_in_background`] or
    /// [`Options::retry_on_failed_connect`]) a server's first attempt is the connect, and
    /// this many more may follow. Negative: try forever. Default: 60.
    pub fn max_reconnect_attempts(mut self, attempts: i64) -> Options {
        self.max_reconnect_attempts = attempts;
        self
    }

    /// The least time between two attempts on the same server, plus a random jitter.
    /// Default: 2 s.
    pub fn reconnect_time_wait(mut self, wait: Duration) -> Options {
        self.reconnect_time_wait = wait;
        self
    }

    /// The most random time added to each reconnect wait, so that many clients do not
    /// reconnect in lockstep. Default: 100 ms.
    pub fn reconnect_jitter(mut self, jitter: Duration) -> Options {
        self.reconnect_jitter = jitter;
        self
    }

    /// The reconnect buffer, in bytes: messages published while disconnected are kept up
    /// to this size and sent, in order, on reconnect; past it `publish` fails at once with
    /// [`crate::Error::BufferFull`] and counts the message as dropped. With
    /// [`Options::resend_unconfirmed`] it also bounds the messages kept until the server
    /// confirms them. Default: 8 MiB (as nats.go and nats.c).
    pub fn pending_size(mut self, bytes: usize) -> Options {
        self.pending_size = bytes;
        self
    }

    /// When no server can be reached at first, return a client anyway that buffers and
    /// keeps trying in the background. Default: false (connect fails with the error).
    pub fn retry_on_failed_connect(mut self, on: bool) -> Options {
        self.retry_on_failed_connect = on;
        self
    }

    /// Keep written messages until a PONG confirms the server read past them, and write
    /// the unconfirmed ones again after a reconnect: at-least-once delivery across
    /// connection losses instead of at-most-once, at the cost of possible duplicates from
    /// the window in flight. Default: false (as every official client).
    pub fn resend_unconfirmed(mut self, on: bool) -> Options {
        self.resend_unconfirmed = on;
        self
    }

    /// Return from [`Options::connect`] at once and make even the first connection in the
    /// background, as after a disconnect: publishes are buffered meanwhile (up to
    /// [`Options::pending_size`]). For callers that must never wait on the network.
    /// Default: false.
    pub fn connect_in_background(mut self, on: bool) -> Options {
        self.connect_in_background = on;
        self
    }

    /// Connect with these options.
    pub fn connect(self) -> Result<crate::client::Client> {
        crate::client::Client::connect_with(self)
    }
}

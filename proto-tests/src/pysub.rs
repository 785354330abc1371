//! An independent subscriber: `py/subscriber.py` (nats-py) run with the
//! project venv's Python. It is not our client, so it checks it honestly.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use serde_json::{json, Value};

use crate::{tail, venv_python};

/// How long [`PySubscriber::start`] waits for the subscription to be flushed.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// One message as the independent subscriber saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The subject it was delivered on.
    pub subject: String,
    /// The reply subject, if any.
    pub reply: Option<String>,
    /// Header fields in wire order, repeated names kept, values with
    /// surrounding spaces/tabs trimmed (parsed from the raw block, not from
    /// nats-py's dict).
    pub headers: Vec<(String, String)>,
    /// The header block's first line (`NATS/1.0`, or `NATS/1.0 503` for a
    /// status), when the message had headers.
    pub status: Option<String>,
    /// The raw header block bytes (`NATS/1.0\r\n...\r\n\r\n`), when present.
    pub raw_headers: Option<Vec<u8>>,
    /// The payload bytes.
    pub payload: Vec<u8>,
}

/// Connection options for [`PySubscriber::start_with`].
#[derive(Clone, Debug, Default)]
pub struct PySubOptions {
    /// User name (with `password`).
    pub user: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// Auth token.
    pub token: Option<String>,
    /// Creds file text ([`crate::creds_text`]); the seed stays in this
    /// process, which signs the server nonce for the script.
    pub creds: Option<String>,
    /// An nkey user seed (`SU...`), for nkey (non-JWT) auth; signed here too.
    pub nkey_seed: Option<String>,
    /// CA file to verify the server with (enables TLS).
    pub ca_file: Option<PathBuf>,
    /// Client certificate for mutual TLS.
    pub client_cert: Option<PathBuf>,
    /// Key of `client_cert`.
    pub client_key: Option<PathBuf>,
    /// TLS server name to verify (default `localhost`).
    pub tls_hostname: Option<String>,
    /// TLS handshake before INFO (`handshake_first` servers).
    pub tls_first: bool,
    /// Queue group name.
    pub queue: Option<String>,
    /// CONNECT `no_echo`.
    pub no_echo: bool,
    /// Disable nats-py's reconnect (it reconnects forever by default).
    pub no_reconnect: bool,
}

enum Event {
    Ready,
    Msg(Received),
    Fatal(String),
}

/// A running `subscriber.py`; killed (and waited for) on drop.
pub struct PySubscriber {
    child: Child,
    rx: Receiver<Event>,
    pending: VecDeque<Received>,
    log: Arc<Mutex<String>>,
    subject: String,
}

impl std::fmt::Debug for PySubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PySubscriber")
            .field("pid", &self.child.id())
            .field("subject", &self.subject)
            .field("pending", &self.pending.len())
            .finish()
    }
}

fn script_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("py/subscriber.py")
}

/// Extracts (jwt, seed) from creds file text.
fn parse_creds(text: &str) -> (String, String) {
    fn block(text: &str, begin: &str) -> Option<String> {
        let mut lines = text.lines().skip_while(|l| !l.contains(begin));
        lines.next()?;
        lines
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_string)
    }
    let jwt = block(text, "BEGIN NATS USER JWT").expect("creds text has no user JWT block");
    let seed = block(text, "BEGIN USER NKEY SEED").expect("creds text has no seed block");
    (jwt, seed)
}

fn sign(seed: &str, nonce: &str) -> String {
    let kp = nkeys::KeyPair::from_seed(seed).expect("valid nkey seed");
    URL_SAFE_NO_PAD.encode(kp.sign(nonce.as_bytes()).expect("ed25519 signing"))
}

fn parse_msg(m: &Value) -> Option<Received> {
    let b64 = |v: &Value| v.as_str().and_then(|s| STANDARD.decode(s).ok());
    Some(Received {
        subject: m["subject"].as_str()?.to_string(),
        reply: m["reply"].as_str().map(str::to_string),
        headers: m["headers"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|kv| {
                        Some((kv[0].as_str()?.to_string(), kv[1].as_str()?.to_string()))
                    })
                    .collect()
            })
            .unwrap_or_default(),
        status: m["status"].as_str().map(str::to_string),
        raw_headers: b64(&m["raw_headers_b64"]),
        payload: b64(&m["payload_b64"])?,
    })
}

fn read_stdout(
    out: impl Read,
    mut stdin: ChildStdin,
    seed: Option<String>,
    tx: Sender<Event>,
    log: Arc<Mutex<String>>,
) {
    let note = |s: &str| {
        if let Ok(mut l) = log.lock() {
            l.push_str(s);
            l.push('\n');
        }
    };
    for line in BufReader::new(out).lines() {
        let Ok(line) = line else { break };
        let v: Value = match serde_json::from_str(&line) {
            Ok(v) => v,
            Err(_) => {
                note(&format!("stdout: {line}"));
                continue;
            }
        };
        let ev = if v["ready"] == json!(true) {
            Event::Ready
        } else if let Some(nonce) = v["sign"].as_str() {
            let sig = match &seed {
                Some(seed) => sign(seed, nonce),
                None => {
                    note("asked to sign a nonce without a seed");
                    String::new()
                }
            };
            let _ = writeln!(stdin, "{}", json!({ "sig": sig }));
            let _ = stdin.flush();
            continue;
        } else if let Some(f) = v["fatal"].as_str() {
            note(&format!("fatal: {f}"));
            Event::Fatal(f.to_string())
        } else if let Some(m) = v.get("msg").and_then(parse_msg) {
            Event::Msg(m)
        } else {
            note(&format!("event: {line}"));
            continue;
        };
        if tx.send(ev).is_err() {
            break;
        }
    }
}

impl PySubscriber {
    /// Subscribes to `subject` on `url` with no auth and waits until the
    /// subscription is flushed.
    pub fn start(url: &str, subject: &str) -> Self {
        Self::start_with(&[url.to_string()], subject, PySubOptions::default())
    }

    /// Subscribes to `subject` on `url` as `user` with `password`.
    pub fn start_as(url: &str, subject: &str, user: &str, password: &str) -> Self {
        let opts = PySubOptions {
            user: Some(user.into()),
            password: Some(password.into()),
            ..PySubOptions::default()
        };
        Self::start_with(&[url.to_string()], subject, opts)
    }

    /// Subscribes with options to a server list; waits (bounded, 20 s) until
    /// the script reports its subscription flushed.
    ///
    /// # Panics
    /// When it fails to connect or subscribe in time, with its output.
    pub fn start_with(servers: &[String], subject: &str, opts: PySubOptions) -> Self {
        let (jwt, seed) = match &opts.creds {
            Some(c) => {
                let (j, s) = parse_creds(c);
                (Some(j), Some(s))
            }
            None => (None, opts.nkey_seed.clone()),
        };
        let nkey_pub = match (&jwt, &opts.nkey_seed) {
            (None, Some(s)) => Some(
                nkeys::KeyPair::from_seed(s)
                    .expect("valid nkey seed")
                    .public_key(),
            ),
            _ => None,
        };
        let path_str = |p: &Option<PathBuf>| p.as_ref().map(|p| p.to_string_lossy().into_owned());
        let config = json!({
            "servers": servers,
            "subject": subject,
            "queue": opts.queue,
            "no_echo": opts.no_echo,
            "reconnect": !opts.no_reconnect,
            "user": opts.user,
            "password": opts.password,
            "token": opts.token,
            "jwt": jwt,
            "nkey": nkey_pub,
            "ca_file": path_str(&opts.ca_file),
            "cert_file": path_str(&opts.client_cert),
            "key_file": path_str(&opts.client_key),
            "tls_hostname": opts.tls_hostname,
            "tls_first": opts.tls_first,
        });
        let python = venv_python();
        let mut child = Command::new(&python)
            .arg("-u")
            .arg(script_path())
            .arg(config.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", python.display()));
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let stdin = child.stdin.take().expect("piped stdin");
        let stderr = child.stderr.take().expect("piped stderr");
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || read_stdout(stdout, stdin, seed, tx, log));
        }
        {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut l) = log.lock() {
                        l.push_str("stderr: ");
                        l.push_str(&line);
                        l.push('\n');
                    }
                }
            });
        }
        let mut sub = PySubscriber {
            child,
            rx,
            pending: VecDeque::new(),
            log,
            subject: subject.to_string(),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match sub.rx.recv_timeout(left) {
                Ok(Event::Ready) => return sub,
                Ok(Event::Msg(m)) => sub.pending.push_back(m),
                Ok(Event::Fatal(f)) => sub.fail(&format!("subscriber failed: {f}")),
                Err(RecvTimeoutError::Timeout) => sub.fail(&format!(
                    "timed out after {READY_TIMEOUT:?} waiting for the subscriber to be ready"
                )),
                Err(RecvTimeoutError::Disconnected) => {
                    sub.fail("subscriber exited before it was ready")
                }
            }
        }
    }

    fn fail(&mut self, what: &str) -> ! {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Give the stderr thread a moment to drain what the dead process wrote.
        crate::poll_until(Duration::from_millis(500), || {
            self.log().contains("Traceback") || self.log().contains("fatal")
        });
        panic!(
            "PySubscriber on {:?}: {what}\n--- output tail ---\n{}",
            self.subject,
            tail(&self.log(), 40)
        );
    }

    fn pump(&mut self, timeout: Duration) -> bool {
        match self.rx.recv_timeout(timeout) {
            Ok(Event::Msg(m)) => {
                self.pending.push_back(m);
                true
            }
            Ok(_) => true,
            Err(_) => false,
        }
    }

    /// Waits until `n` messages have arrived (beyond those already returned)
    /// and returns exactly the next `n`; later ones stay for the next call.
    ///
    /// # Panics
    /// On timeout, with the count so far and the script's output tail.
    pub fn wait_for(&mut self, n: usize, timeout: Duration) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        while self.pending.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !self.pump(left) {
                panic!(
                    "timed out after {timeout:?} (or the subscriber died) waiting for {n} messages on {:?}: got {}: {:?}\n--- subscriber output tail ---\n{}",
                    self.subject,
                    self.pending.len(),
                    self.pending,
                    tail(&self.log(), 20)
                );
            }
        }
        self.pending.drain(..n).collect()
    }

    /// Everything that arrived and was not returned yet (non-blocking).
    pub fn received(&mut self) -> Vec<Received> {
        while let Ok(ev) = self.rx.try_recv() {
            if let Event::Msg(m) = ev {
                self.pending.push_back(m);
            }
        }
        self.pending.drain(..).collect()
    }

    /// The script's stderr and non-message events (disconnects, errors).
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// The script's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PySubscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

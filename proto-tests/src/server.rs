//! Real `nats-server` processes driven by generated config files.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::jwt::JwtSetup;
use crate::tls::TlsFiles;
use crate::{free_port, nats_server_bin, tail, wait_until, TempDir};

/// How long [`ServerConfig::start`] and [`NatsServer::restart`] wait for readiness.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How many times a start is retried when a picked port was taken meanwhile.
const PORT_RACE_ATTEMPTS: usize = 5;

/// A config string literal (double-quoted, JSON-style escapes).
fn q(s: &str) -> String {
    serde_json::to_string(s).expect("string serializes")
}

/// Go-style duration text (`"1500ms"`), which nats-server config accepts.
fn go_duration(d: Duration) -> String {
    format!("\"{}ms\"", d.as_millis().max(1))
}

#[derive(Clone, Debug)]
struct OperatorBlock {
    operator_jwt: String,
    system_account: String,
    preload: Vec<(String, String)>,
}

#[derive(Clone, Debug)]
struct ClusterBlock {
    name: String,
    port: Option<u16>,
    routes: Vec<u16>,
    no_advertise: bool,
}

/// Builder for a generated nats-server config file.
///
/// Every listener (client, monitoring, cluster) binds to 127.0.0.1 on a port
/// picked free at start time unless fixed. The HTTP monitoring endpoint is
/// always enabled (see [`NatsServer::monitor_port`]).
#[derive(Clone, Debug, Default)]
pub struct ServerConfig {
    port: Option<u16>,
    http_port: Option<u16>,
    server_name: Option<String>,
    users: Vec<(String, String)>,
    nkey_users: Vec<String>,
    token: Option<String>,
    operator: Option<OperatorBlock>,
    tls: Option<(PathBuf, PathBuf, PathBuf)>,
    tls_verify: bool,
    tls_first: bool,
    max_payload: Option<usize>,
    max_control_line: Option<usize>,
    ping_interval: Option<Duration>,
    max_pings_out: Option<u32>,
    cluster: Option<ClusterBlock>,
    jetstream: bool,
    debug: bool,
    trace: bool,
    extra: Vec<String>,
}

impl ServerConfig {
    /// Listen on 127.0.0.1 on a free port, no auth.
    pub fn new() -> Self {
        Self::default()
    }

    /// Use this client port instead of a free one (no port-race retry then).
    pub fn port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    /// `server_name: <name>` (cluster nodes get `n1`, `n2`, ... from [`cluster`]).
    pub fn server_name(mut self, name: &str) -> Self {
        self.server_name = Some(name.to_string());
        self
    }

    /// Adds a user/password pair: `authorization { users = [ {user, password} ] }`.
    /// Can be called more than once and combined with [`ServerConfig::nkey_user`].
    pub fn user_password(mut self, user: &str, pass: &str) -> Self {
        self.users.push((user.to_string(), pass.to_string()));
        self
    }

    /// `authorization { token: <t> }` (nats-server does not allow a token
    /// together with users).
    pub fn token(mut self, t: &str) -> Self {
        self.token = Some(t.to_string());
        self
    }

    /// Adds an nkey user: `authorization { users = [ { nkey: U... } ] }`.
    pub fn nkey_user(mut self, public_key: &str) -> Self {
        self.nkey_users.push(public_key.to_string());
        self
    }

    /// Operator (decentralized JWT) mode: the operator JWT inline,
    /// `resolver: MEMORY`, `resolver_preload` with the system and application
    /// account JWTs, and `system_account`.
    pub fn operator_mode(mut self, op: &JwtSetup) -> Self {
        self.operator = Some(OperatorBlock {
            operator_jwt: op.operator_jwt.clone(),
            system_account: op.system_account.clone(),
            preload: vec![
                (op.system_account.clone(), op.system_account_jwt.clone()),
                (op.account.clone(), op.account_jwt.clone()),
            ],
        });
        self
    }

    /// `tls { cert_file, key_file, ca_file }` with the generated server
    /// certificate (SANs localhost, 127.0.0.1, ::1) and CA.
    pub fn tls(self, certs: &TlsFiles) -> Self {
        self.tls_with(&certs.server_cert, &certs.server_key, &certs.ca_cert)
    }

    /// `tls { ... }` with explicit files (e.g. [`TlsFiles::wrong_host_server_cert`]
    /// or [`TlsFiles::expired_server_cert`] for bad-input tests).
    pub fn tls_with(mut self, cert: &Path, key: &Path, ca: &Path) -> Self {
        self.tls = Some((cert.to_path_buf(), key.to_path_buf(), ca.to_path_buf()));
        self
    }

    /// `verify: true`: require client certificates (mutual TLS).
    pub fn tls_verify(mut self) -> Self {
        self.tls_verify = true;
        self
    }

    /// `handshake_first: true`: TLS before INFO (nats-server >= 2.10).
    pub fn tls_first(mut self) -> Self {
        self.tls_first = true;
        self
    }

    /// `max_payload: <bytes>`.
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = Some(bytes);
        self
    }

    /// `max_control_line: <bytes>`.
    pub fn max_control_line(mut self, bytes: usize) -> Self {
        self.max_control_line = Some(bytes);
        self
    }

    /// `ping_interval: "<ms>ms"`.
    pub fn ping_interval(mut self, d: Duration) -> Self {
        self.ping_interval = Some(d);
        self
    }

    /// `ping_max: <n>`.
    pub fn max_pings_out(mut self, n: u32) -> Self {
        self.max_pings_out = Some(n);
        self
    }

    /// `cluster { name, listen: 127.0.0.1:<free>, routes = [nats-route://127.0.0.1:p ...] }`.
    pub fn cluster(mut self, name: &str, routes: &[u16]) -> Self {
        let port = self.cluster.as_ref().and_then(|c| c.port);
        let no_advertise = self.cluster.as_ref().is_some_and(|c| c.no_advertise);
        self.cluster = Some(ClusterBlock {
            name: name.to_string(),
            port,
            routes: routes.to_vec(),
            no_advertise,
        });
        self
    }

    /// Fixes the cluster listen port (used by [`cluster`], whose nodes must
    /// know each other's route ports in advance). Call after
    /// [`ServerConfig::cluster`].
    pub fn cluster_port(mut self, port: u16) -> Self {
        match &mut self.cluster {
            Some(c) => c.port = Some(port),
            None => {
                self.cluster = Some(ClusterBlock {
                    name: "harness".to_string(),
                    port: Some(port),
                    routes: Vec::new(),
                    no_advertise: false,
                })
            }
        }
        self
    }

    /// `no_advertise: true` in the cluster block: clients are not told about the other
    /// nodes (no `connect_urls`). Call after [`ServerConfig::cluster`].
    pub fn cluster_no_advertise(mut self) -> Self {
        if let Some(c) = &mut self.cluster {
            c.no_advertise = true;
        }
        self
    }

    /// `jetstream { store_dir: <server temp dir>/jetstream }`.
    pub fn jetstream(mut self) -> Self {
        self.jetstream = true;
        self
    }

    /// `debug: true` in the config (more log lines in [`NatsServer::log`]).
    pub fn debug(mut self) -> Self {
        self.debug = true;
        self
    }

    /// `trace: true`: the server logs every protocol line it sends and
    /// receives, which tests can inspect with [`NatsServer::log`].
    pub fn trace(mut self) -> Self {
        self.trace = true;
        self
    }

    /// Raw config text appended at the end (after everything generated).
    pub fn extra(mut self, raw_conf: &str) -> Self {
        self.extra.push(raw_conf.to_string());
        self
    }

    /// Renders the config with all ports resolved.
    fn render(&self, ports: &Ports, dir: &Path) -> String {
        let mut c = String::new();
        let _ = writeln!(c, "listen: \"127.0.0.1:{}\"", ports.client);
        let _ = writeln!(c, "http: \"127.0.0.1:{}\"", ports.http);
        if let Some(name) = &self.server_name {
            let _ = writeln!(c, "server_name: {}", q(name));
        }
        if self.debug {
            c.push_str("debug: true\n");
        }
        if self.trace {
            c.push_str("trace: true\n");
        }
        if let Some(n) = self.max_payload {
            let _ = writeln!(c, "max_payload: {n}");
        }
        if let Some(n) = self.max_control_line {
            let _ = writeln!(c, "max_control_line: {n}");
        }
        if let Some(d) = self.ping_interval {
            let _ = writeln!(c, "ping_interval: {}", go_duration(d));
        }
        if let Some(n) = self.max_pings_out {
            let _ = writeln!(c, "ping_max: {n}");
        }
        if !self.users.is_empty() || !self.nkey_users.is_empty() || self.token.is_some() {
            c.push_str("authorization {\n");
            if let Some(t) = &self.token {
                let _ = writeln!(c, "  token: {}", q(t));
            }
            if !self.users.is_empty() || !self.nkey_users.is_empty() {
                c.push_str("  users = [\n");
                for (u, p) in &self.users {
                    let _ = writeln!(c, "    {{ user: {}, password: {} }}", q(u), q(p));
                }
                for k in &self.nkey_users {
                    let _ = writeln!(c, "    {{ nkey: {} }}", q(k));
                }
                c.push_str("  ]\n");
            }
            c.push_str("}\n");
        }
        if let Some(op) = &self.operator {
            let _ = writeln!(c, "operator: {}", q(&op.operator_jwt));
            let _ = writeln!(c, "system_account: {}", q(&op.system_account));
            c.push_str("resolver: MEMORY\n");
            c.push_str("resolver_preload: {\n");
            for (k, v) in &op.preload {
                let _ = writeln!(c, "  {k}: {}", q(v));
            }
            c.push_str("}\n");
        }
        if let Some((cert, key, ca)) = &self.tls {
            c.push_str("tls {\n");
            let _ = writeln!(c, "  cert_file: {}", q(&cert.to_string_lossy()));
            let _ = writeln!(c, "  key_file: {}", q(&key.to_string_lossy()));
            let _ = writeln!(c, "  ca_file: {}", q(&ca.to_string_lossy()));
            c.push_str("  timeout: 5\n");
            if self.tls_verify {
                c.push_str("  verify: true\n");
            }
            if self.tls_first {
                c.push_str("  handshake_first: true\n");
            }
            c.push_str("}\n");
        }
        if let (Some(cl), Some(port)) = (&self.cluster, ports.cluster) {
            c.push_str("cluster {\n");
            let _ = writeln!(c, "  name: {}", q(&cl.name));
            let _ = writeln!(c, "  listen: \"127.0.0.1:{port}\"");
            if cl.no_advertise {
                c.push_str("  no_advertise: true\n");
            }
            if !cl.routes.is_empty() {
                c.push_str("  routes = [\n");
                for r in &cl.routes {
                    let _ = writeln!(c, "    \"nats-route://127.0.0.1:{r}\"");
                }
                c.push_str("  ]\n");
            }
            c.push_str("}\n");
        }
        if self.jetstream {
            let store = dir.join("jetstream");
            let _ = writeln!(
                c,
                "jetstream {{\n  store_dir: {}\n}}",
                q(&store.to_string_lossy())
            );
        }
        for e in &self.extra {
            c.push_str(e);
            if !e.ends_with('\n') {
                c.push('\n');
            }
        }
        c
    }

    /// Writes the config into a fresh temp dir, starts nats-server and waits
    /// (bounded, ~10 s) until the client port accepts and sends INFO (with
    /// `tls_first`, until it accepts and the log says it is ready).
    /// A start that fails because an auto-picked port was taken is retried
    /// with new ports.
    ///
    /// # Panics
    /// On a failed start, with the server's log tail.
    pub fn start(self) -> NatsServer {
        let mut last_err = String::new();
        for attempt in 1..=PORT_RACE_ATTEMPTS {
            // A fresh dir per attempt: a failed attempt's dir goes with it.
            let dir = TempDir::new("server");
            let conf_path = dir.path().join("nats-server.conf");
            let ports = self.resolve_ports();
            let conf = self.render(&ports, dir.path());
            std::fs::write(&conf_path, &conf)
                .unwrap_or_else(|e| panic!("writing {}: {e}", conf_path.display()));
            let mut server = NatsServer {
                child: None,
                tls_first: self.tls_first,
                port: ports.client,
                http_port: ports.http,
                cluster_port: ports.cluster,
                conf_text: conf,
                log_path: dir.path().join("nats-server.log"),
                conf_path,
                dir,
            };
            match server.spawn_and_wait() {
                Ok(()) => return server,
                Err(e) => {
                    server.kill();
                    let log = server.log();
                    let raced = self.lost_port_race(&log);
                    last_err = format!(
                        "nats-server failed to start (attempt {attempt}): {e}\n--- config ---\n{}\n--- log tail ---\n{}",
                        server.conf_text,
                        tail(&log, 40)
                    );
                    if !raced {
                        break;
                    }
                }
            }
        }
        panic!("{last_err}");
    }

    /// The start failed because a port this config did not fix was taken
    /// between picking it and the server binding it.
    fn lost_port_race(&self, log: &str) -> bool {
        let fixed: Vec<String> = [
            self.port,
            self.http_port,
            self.cluster.as_ref().and_then(|c| c.port),
        ]
        .into_iter()
        .flatten()
        .map(|p| format!("127.0.0.1:{p}"))
        .collect();
        let mut conflicts = log
            .lines()
            .filter(|l| l.contains("address already in use"))
            .peekable();
        conflicts.peek().is_some()
            && conflicts.all(|l| !fixed.iter().any(|f| l.contains(f.as_str())))
    }

    fn resolve_ports(&self) -> Ports {
        let mut used = HashSet::new();
        let mut pick = |fixed: Option<u16>| -> u16 {
            if let Some(p) = fixed {
                used.insert(p);
                return p;
            }
            loop {
                let p = free_port();
                if used.insert(p) {
                    return p;
                }
            }
        };
        let client = pick(self.port);
        let http = pick(self.http_port);
        let cluster = self.cluster.as_ref().map(|c| pick(c.port));
        Ports {
            client,
            http,
            cluster,
        }
    }
}

struct Ports {
    client: u16,
    http: u16,
    cluster: Option<u16>,
}

/// A running nats-server process. Killed (SIGKILL + wait) on drop; its temp
/// dir (config, log, JetStream store) is removed afterwards.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    tls_first: bool,
    port: u16,
    http_port: u16,
    cluster_port: Option<u16>,
    conf_text: String,
    conf_path: PathBuf,
    log_path: PathBuf,
    // Declared last: dropped after Drop::drop has killed the process.
    dir: TempDir,
}

impl NatsServer {
    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The cluster (route) listen port, when the config has a cluster block.
    pub fn cluster_port(&self) -> Option<u16> {
        self.cluster_port
    }

    /// The HTTP monitoring port (always enabled, 127.0.0.1).
    pub fn monitor_port(&self) -> u16 {
        self.http_port
    }

    /// GETs a monitoring endpoint (e.g. `/varz`, `/connz?subs=1`, `/routez`)
    /// and parses the JSON body.
    ///
    /// # Panics
    /// When the request fails or the body is not JSON.
    pub fn monitor(&self, path: &str) -> serde_json::Value {
        let body = http_get(self.http_port, path);
        serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("monitoring {path} returned non-JSON ({e}): {body}"))
    }

    /// Whether this server knows a subscription on exactly `subject` (the
    /// subscription's own subject string, wildcards literal): from a local
    /// client (`/subsz?subs=1`) or propagated over a route (`/routez?subs=1`).
    /// Use it before publishing on one node to a subscriber on another.
    pub fn has_subscription(&self, subject: &str) -> bool {
        let matches = |v: &serde_json::Value| {
            v.as_str()
                .is_some_and(|s| s == subject || s.ends_with(&format!(" {subject}")))
        };
        let Ok((200, subsz)) = try_http_get(self.http_port, "/subsz?subs=1&limit=100000") else {
            return false;
        };
        let subsz: serde_json::Value = serde_json::from_str(&subsz).unwrap_or_default();
        if subsz["subscriptions_list"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| matches(&s["subject"])))
        {
            return true;
        }
        let Ok((200, routez)) = try_http_get(self.http_port, "/routez?subs=1") else {
            return false;
        };
        let routez: serde_json::Value = serde_json::from_str(&routez).unwrap_or_default();
        routez["routes"].as_array().is_some_and(|routes| {
            routes.iter().any(|r| {
                r["subscriptions_list"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(matches))
            })
        })
    }

    /// The count of `UNSUB <sid> <max>` this server holds for a client's subscription on
    /// exactly `subject` (0 for none), from `/subsz?subs=1`; `None` when it has no such
    /// subscription.
    pub fn subscription_max(&self, subject: &str) -> Option<u64> {
        let subsz = self.monitor("/subsz?subs=1");
        subsz["subscriptions_list"]
            .as_array()?
            .iter()
            .find(|s| s["subject"] == subject)
            .map(|s| s["max"].as_u64().unwrap_or(0))
    }

    /// Waits (bounded) until [`NatsServer::has_subscription`] is true.
    ///
    /// # Panics
    /// On timeout.
    pub fn wait_for_subscription(&self, subject: &str, timeout: Duration) {
        wait_until(
            timeout,
            &format!(
                "a subscription on {subject:?} to reach the server on port {}",
                self.port
            ),
            || self.has_subscription(subject),
        );
    }

    /// The generated config file's text.
    pub fn config_text(&self) -> &str {
        &self.conf_text
    }

    /// The server's temp dir (config, log, JetStream store).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The process id.
    ///
    /// # Panics
    /// When the server was killed and not restarted.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .expect("nats-server is not running (killed)")
            .id()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// SIGKILL and wait (no zombie). A no-op when already killed.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
            crate::reaper::forget(c.id());
        }
    }

    /// Starts the server again on the same ports with the same config and
    /// waits until it is ready (killing it first if it is still running).
    ///
    /// # Panics
    /// When it does not come up, with the log tail.
    pub fn restart(&mut self) {
        self.kill();
        if let Err(e) = self.spawn_and_wait() {
            self.kill();
            panic!(
                "nats-server failed to restart on port {}: {e}\n--- log tail ---\n{}",
                self.port,
                tail(&self.log(), 40)
            );
        }
    }

    /// Puts the server in lame duck mode: `nats-server --signal ldm=<pid>`.
    ///
    /// # Panics
    /// When the signal command fails.
    pub fn signal_ldm(&self) {
        let pid = self.pid();
        let out = Command::new(nats_server_bin())
            .arg("--signal")
            .arg(format!("ldm={pid}"))
            .output()
            .expect("running nats-server --signal");
        assert!(
            out.status.success(),
            "nats-server --signal ldm={pid} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The whole log so far (stdout and stderr of every run of this server,
    /// each run preceded by a `=== proto-tests: starting nats-server ===` line).
    pub fn log(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let bin = nats_server_bin();
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .map_err(|e| format!("opening log {}: {e}", self.log_path.display()))?;
        let _ = writeln!(log, "=== proto-tests: starting nats-server ===");
        let offset = log
            .metadata()
            .map(|m| m.len() as usize)
            .map_err(|e| e.to_string())?;
        let err = log.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&self.conf_path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .map_err(|e| format!("spawning {}: {e}", bin.display()))?;
        crate::reaper::record(child.id(), &self.conf_path);
        self.child = Some(child);

        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(c) = &mut self.child {
                if let Ok(Some(status)) = c.try_wait() {
                    self.child = None;
                    return Err(format!("nats-server exited early with {status}"));
                }
            }
            let log = self.log();
            let ready_logged = log
                .get(offset..)
                .is_some_and(|s| s.contains("Server is ready"));
            if ready_logged && self.accepts() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "not ready after {READY_TIMEOUT:?} (port {})",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The client port accepts, and (unless TLS-first) sends an INFO line.
    fn accepts(&self) -> bool {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let Ok(stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
            return false;
        };
        if self.tls_first {
            return true;
        }
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut line = String::new();
        let mut r = BufReader::new(stream);
        r.read_line(&mut line).is_ok() && line.starts_with("INFO ")
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A tiny HTTP/1.0 GET to `127.0.0.1:<port><path>`, returning the body.
///
/// # Panics
/// On connection errors or a non-200 status.
pub fn http_get(port: u16, path: &str) -> String {
    match try_http_get(port, path) {
        Ok((200, body)) => body,
        Ok((status, body)) => panic!("GET 127.0.0.1:{port}{path}: HTTP {status}: {body}"),
        Err(e) => panic!("GET 127.0.0.1:{port}{path}: {e}"),
    }
}

pub(crate) fn try_http_get(port: u16, path: &str) -> Result<(u16, String), String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("malformed HTTP response: {text}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("malformed HTTP status line: {head}"))?;
    Ok((status, body.to_string()))
}

/// The number of distinct remote servers a node has routes to (from `/routez`).
/// How many distinct cluster peers `server` has routes to (0 while it is down).
pub fn route_peers(server: &NatsServer) -> usize {
    let Ok((200, body)) = try_http_get(server.http_port, "/routez") else {
        return 0;
    };
    let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) else {
        return 0;
    };
    let ids: HashSet<String> = v["routes"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["remote_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    ids.len()
}

/// Starts `n` nodes (server names `n1`..`nN`, cluster name `harness`) that
/// route to each other, each config passed through `configure`, and waits
/// (bounded, 15 s) until every node reports routes to all `n - 1` others in
/// `/routez`.
pub fn cluster(n: usize, configure: impl Fn(ServerConfig) -> ServerConfig) -> Vec<NatsServer> {
    assert!(n >= 1, "a cluster needs at least one node");
    let mut ports: Vec<u16> = Vec::with_capacity(n);
    while ports.len() < n {
        let p = free_port();
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    let servers: Vec<NatsServer> = (0..n)
        .map(|i| {
            let routes: Vec<u16> = ports
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, p)| *p)
                .collect();
            let base = ServerConfig::new()
                .server_name(&format!("n{}", i + 1))
                .cluster("harness", &routes)
                .cluster_port(ports[i]);
            configure(base).start()
        })
        .collect();
    wait_until(
        Duration::from_secs(15),
        &format!("{n}-node cluster routes to form"),
        || servers.iter().all(|s| route_peers(s) >= n - 1),
    );
    servers
}

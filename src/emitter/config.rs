//! The emitter's configuration, from `RUNNER_NATS_*` variables and the runner settings
//! `nats_subject_id`, `nats_options` and `nats_headers`, as the Python plugin reads them.
//!
//! Bad values never fail a run. Each problem becomes one [`ConfigIssue`] naming the
//! variable or setting, and the emitter either skips just the bad part (a header item, a
//! number, a server URL, an unknown option: the default or the rest is used) or disables
//! itself (an invalid subject id, no usable server, unusable credentials, TLS files that
//! cannot be read: publishing would be wrong or impossible).

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::auth::{load_creds_file, load_jwt_and_seed_files, load_seed, user_key_pair, Auth};
use crate::client::Options;
use crate::error::Error;
use crate::headers::HeaderMap;
use crate::subject::validate_token;
use crate::tls::TlsOptions;
use crate::url::{parse_server_items, ServerAddr};

/// What happens to an event larger than the server's `max_payload`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Oversize {
    /// Not sent; reported (log and counter). The default.
    #[default]
    Drop,
    /// Sent with its large `stdout` and `event_data.res` replaced by a marker, and the
    /// header `Ansible-Runner-Nats-Truncated: true`.
    Truncate,
}

/// One problem found in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The variable or setting, e.g. `RUNNER_NATS_HEADERS` or `nats_options.connect_timeout`.
    pub source: String,
    /// What is wrong and what the emitter does about it.
    pub problem: String,
    /// True when the emitter is disabled because of it.
    pub disables: bool,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.source, self.problem)
    }
}

/// A complete, valid emitter configuration.
#[derive(Debug, Clone)]
pub struct EmitterConfig {
    /// The `{subject_id}` token of `pub.ansible.runner.{subject_id}.{runner_ident}.{kind}`.
    pub subject_id: String,
    /// Headers put on every message.
    pub headers: HeaderMap,
    /// Options for the client of each run.
    pub options: Options,
    /// The bound of the flush at a run's terminal status. Default: 10 s.
    pub flush_timeout: Duration,
    /// What to do with oversized events. Default: drop.
    pub oversize: Oversize,
    /// Replace secret-looking values of the `starting` status's `env`. Default: true.
    pub redact_env: bool,
    /// Publish through JetStream with acknowledgements (`RUNNER_NATS_JETSTREAM`).
    /// Default: off.
    pub jetstream: Option<JetStreamConfig>,
}

/// How events are published through JetStream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JetStreamConfig {
    /// A stream to create (if it does not exist) capturing `pub.ansible.runner.>`
    /// (`RUNNER_NATS_JETSTREAM_STREAM`). Default: none; a stream must already capture the
    /// subjects.
    pub stream: Option<String>,
    /// Publishes awaiting their acknowledgement at once (`RUNNER_NATS_JETSTREAM_WINDOW`).
    /// Default: 256.
    pub window: usize,
    /// How long to wait for an acknowledgement before publishing the message again, with
    /// the same `Nats-Msg-Id` (`RUNNER_NATS_JETSTREAM_ACK_TIMEOUT`, seconds). Default: 5 s.
    pub ack_timeout: Duration,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        JetStreamConfig {
            stream: None,
            window: 256,
            ack_timeout: Duration::from_secs(5),
        }
    }
}

/// The outcome of reading the configuration.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The configuration, or `None` when the emitter is off (no subject id) or disabled
    /// (see `issues`).
    pub config: Option<EmitterConfig>,
    /// Every problem found, in the order found.
    pub issues: Vec<ConfigIssue>,
}

impl Loaded {
    /// Off: no configuration and no issue.
    pub fn none() -> Loaded {
        Loaded {
            config: None,
            issues: Vec::new(),
        }
    }
}

/// The emitter's write coalescing ([`Options::write_linger`]), unless
/// `RUNNER_NATS_WRITE_LINGER` says otherwise: while events keep coming (a playbook sends
/// one every few milliseconds) they are written together at most this late; an event after
/// a quiet spell this long is written at once, and the run's end flushes at once. In the
/// whole-run benchmark this cut the CPU of the plugin's threads from 79 ms (1 ms linger) to
/// 10 ms per 324-event run.
pub const EMITTER_WRITE_LINGER: Duration = Duration::from_millis(50);

/// The true spellings the Python plugin accepts for its boolean variables.
fn truthy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "true" | "yes" | "y" | "1" | "on"
    )
}

fn falsy(value: &str) -> bool {
    matches!(
        value.trim().to_ascii_lowercase().as_str(),
        "false" | "no" | "n" | "0" | "off"
    )
}

/// The nats-py option names we understand in `nats_options`, with the variable that
/// overrides each.
const OPTION_VARS: &[(&str, &str)] = &[
    ("servers", "RUNNER_NATS_SERVERS"),
    ("name", "RUNNER_NATS_CLIENT_NAME"),
    ("verbose", "RUNNER_NATS_CLIENT_VERBOSE"),
    ("allow_reconnect", "RUNNER_NATS_ALLOW_RECONNECT"),
    ("connect_timeout", "RUNNER_NATS_CONNECT_TIMEOUT"),
    ("reconnect_time_wait", "RUNNER_NATS_RECONNECT_TIME_WAIT"),
    (
        "max_reconnect_attempts",
        "RUNNER_NATS_MAX_RECONNECT_ATTEMPTS",
    ),
    ("ping_interval", "RUNNER_NATS_PING_INTERVAL"),
    ("max_outstanding_pings", "RUNNER_NATS_MAX_OUTSTANDING_PINGS"),
    ("flusher_queue_size", "RUNNER_NATS_FLUSHER_QUEUE_SIZE"),
    ("pending_size", "RUNNER_NATS_PENDING_SIZE"),
    ("flush_timeout", "RUNNER_NATS_FLUSH_TIMEOUT"),
    ("write_linger", "RUNNER_NATS_WRITE_LINGER"),
    ("user", "RUNNER_NATS_USERNAME"),
    ("password", "RUNNER_NATS_PASSWORD"),
    ("token", "RUNNER_NATS_TOKEN"),
    ("user_credentials", "RUNNER_NATS_USER_CREDENTIALS"),
    ("nkeys_seed", "RUNNER_NATS_NKEYS_SEED"),
    ("tls_ca_file", "RUNNER_NATS_TLS_CA_FILE"),
    ("tls_cert_file", "RUNNER_NATS_TLS_CERT_FILE"),
    ("tls_key_file", "RUNNER_NATS_TLS_KEY_FILE"),
    ("tls_handshake_first", "RUNNER_NATS_TLS_FIRST"),
    ("tls_hostname", "RUNNER_NATS_TLS_HOSTNAME"),
    ("pedantic", "RUNNER_NATS_PEDANTIC"),
    ("dont_randomize", "RUNNER_NATS_DONT_RANDOMIZE"),
    // The seed itself, where `nkeys_seed` is (in nats-py) a file; the variable takes both.
    ("nkeys_seed_str", "RUNNER_NATS_NKEYS_SEED"),
];

/// nats-py options that are accepted and have no effect here (callbacks, asyncio knobs).
const IGNORED_OPTIONS: &[&str] = &[
    "no_echo",
    "drain_timeout",
    "inbox_prefix",
    "error_cb",
    "disconnected_cb",
    "closed_cb",
    "discovered_server_cb",
    "reconnected_cb",
    "signature_cb",
    "user_jwt_cb",
    "tls",
    "lame_duck_mode_cb",
    "reconnect_to_server_handler",
    "ws_connection_headers",
    "skip_subject_validation",
];

/// Gathers one option from the environment (which wins) or `nats_options`.
struct Sources<'a> {
    env: &'a HashMap<String, String>,
    options: Option<&'a serde_json::Map<String, Value>>,
    issues: Vec<ConfigIssue>,
}

/// A raw option value and where it came from.
struct Raw {
    source: String,
    value: Value,
}

impl Sources<'_> {
    fn get(&self, key: &str) -> Option<Raw> {
        let var = OPTION_VARS
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| *v)
            .unwrap_or_default();
        let from_env = self.env.get(var).map(|v| (var, v)).or_else(|| {
            // The Python plugin reads this one without the NATS_ part: accept both.
            (key == "max_outstanding_pings")
                .then(|| self.env.get("RUNNER_MAX_OUTSTANDING_PINGS"))
                .flatten()
                .map(|v| ("RUNNER_MAX_OUTSTANDING_PINGS", v))
        });
        if let Some((var, v)) = from_env {
            return Some(Raw {
                source: var.to_owned(),
                value: Value::String(v.clone()),
            });
        }
        let value = self.options?.get(key)?;
        if value.is_null() {
            return None;
        }
        Some(Raw {
            source: format!("nats_options.{key}"),
            value: value.clone(),
        })
    }

    /// Where `key` was set: the variable's name, or the setting's path.
    fn source_of(&self, key: &str) -> String {
        self.get(key).map(|r| r.source).unwrap_or_default()
    }

    fn issue(&mut self, source: &str, problem: String, disables: bool) {
        self.issues.push(ConfigIssue {
            source: source.to_owned(),
            problem,
            disables,
        });
    }

    fn text(&mut self, key: &str) -> Option<(String, String)> {
        let raw = self.get(key)?;
        match raw.value {
            Value::String(s) => Some((raw.source, s)),
            other => {
                self.issue(
                    &raw.source,
                    format!("expected a string, got {}; ignored", kind(&other)),
                    false,
                );
                None
            }
        }
    }

    fn seconds(&mut self, key: &str, default_note: &str) -> Option<Duration> {
        let raw = self.get(key)?;
        let parsed = match &raw.value {
            Value::Number(n) => n.as_f64(),
            Value::String(s) => s.trim().parse::<f64>().ok(),
            _ => None,
        };
        match parsed.and_then(|secs| Duration::try_from_secs_f64(secs).ok()) {
            Some(d) => Some(d),
            None => {
                self.issue(
                    &raw.source,
                    format!(
                        "{} is not a number of seconds (fractions allowed); using the default ({default_note})",
                        show(&raw.value)
                    ),
                    false,
                );
                None
            }
        }
    }

    fn integer(&mut self, key: &str, default_note: &str) -> Option<i64> {
        let raw = self.get(key)?;
        let parsed = match &raw.value {
            Value::Number(n) => n.as_i64(),
            Value::String(s) => s.trim().parse::<i64>().ok(),
            _ => None,
        };
        if parsed.is_none() {
            self.issue(
                &raw.source,
                format!(
                    "{} is not a whole number; using the default ({default_note})",
                    show(&raw.value)
                ),
                false,
            );
        }
        parsed
    }

    fn size(&mut self, key: &str, default_note: &str) -> Option<usize> {
        let source = self.get(key).map(|r| r.source);
        let n = self.integer(key, default_note)?;
        match usize::try_from(n) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                let source = source.unwrap_or_default();
                self.issue(
                    &source,
                    format!("{n} is not a positive size; using the default ({default_note})"),
                    false,
                );
                None
            }
        }
    }

    fn boolean(&mut self, key: &str) -> Option<bool> {
        let raw = self.get(key)?;
        match &raw.value {
            Value::Bool(b) => Some(*b),
            // As the Python plugin: anything but a true spelling is false.
            Value::String(s) => Some(truthy(s)),
            other => {
                self.issue(
                    &raw.source,
                    format!("expected true or false, got {}; ignored", kind(other)),
                    false,
                );
                None
            }
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

fn show(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

/// The process environment as [`load`] takes it, from `vars` (`std::env::vars_os()`): a
/// `RUNNER_NATS_*` variable whose value is not UTF-8 is left out, with an issue that says
/// so; other variables that are not UTF-8 are none of ours.
pub fn environment(
    vars: impl IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
) -> (HashMap<String, String>, Vec<ConfigIssue>) {
    let mut env = HashMap::new();
    let mut issues = Vec::new();
    for (name, value) in vars {
        let Ok(name) = name.into_string() else {
            continue;
        };
        match value.into_string() {
            Ok(value) => {
                env.insert(name, value);
            }
            Err(_) if name.starts_with("RUNNER_NATS_") => issues.push(ConfigIssue {
                source: name,
                problem: "not valid UTF-8; ignored".into(),
                disables: false,
            }),
            Err(_) => {}
        }
    }
    (env, issues)
}

/// The longest subject the emitter publishes to: nats-server reads control lines of
/// 4 KiB by default, and an HPUB line adds its verb and two byte counts to the subject.
pub(crate) const MAX_SUBJECT: usize = 4000;

/// The length of the longest subject of a run: `pub.ansible.runner.{subject_id}.{ident}.status`.
pub(crate) fn subject_len(subject_id: &str, ident: &str) -> usize {
    "pub.ansible.runner...status".len() + subject_id.len() + ident.len()
}

/// Reads the configuration from `env` (the process environment, or any map of
/// variables) and the runner `settings` (a JSON object; `None` when there are none).
///
/// `hostname` resolves the special subject id `hostname` of `RUNNER_NATS_SUBJECT_ID`;
/// pass the machine's host name. In the `nats_subject_id` setting `hostname` is taken as
/// it is, as the Python plugin takes it: the subjects stay the same.
pub fn load(env: &HashMap<String, String>, settings: Option<&Value>, hostname: &str) -> Loaded {
    let settings = settings.and_then(Value::as_object);
    let mut issues = Vec::new();

    // The subject id: the variable, else the setting. Empty means "off".
    let (source, subject_id) = match env.get("RUNNER_NATS_SUBJECT_ID").filter(|s| !s.is_empty()) {
        Some(v) => ("RUNNER_NATS_SUBJECT_ID", v.clone()),
        None => match settings.and_then(|s| s.get("nats_subject_id")) {
            None | Some(Value::Null) => {
                return Loaded {
                    config: None,
                    issues,
                }
            }
            Some(Value::String(s)) if s.is_empty() => {
                return Loaded {
                    config: None,
                    issues,
                }
            }
            Some(Value::String(s)) => ("nats_subject_id", s.clone()),
            Some(other) => {
                issues.push(ConfigIssue {
                    source: "nats_subject_id".into(),
                    problem: format!("expected a string, got {}; emitter disabled", kind(other)),
                    disables: true,
                });
                return Loaded {
                    config: None,
                    issues,
                };
            }
        },
    };
    let subject_id = if subject_id == "hostname" && source == "RUNNER_NATS_SUBJECT_ID" {
        hostname.replace('.', "-")
    } else {
        subject_id
    };
    let invalid = match validate_token(&subject_id) {
        Err(e) => Some(strip_area(&e.to_string()).to_owned()),
        // The shortest runner_ident still has to fit.
        Ok(()) if subject_len(&subject_id, "x") > MAX_SUBJECT => Some(format!(
            "{} bytes long: subjects with it are over the {MAX_SUBJECT} bytes a server reads",
            subject_id.len()
        )),
        Ok(()) => None,
    };
    if let Some(problem) = invalid {
        issues.push(ConfigIssue {
            source: source.into(),
            problem: format!("{problem}; emitter disabled"),
            disables: true,
        });
        return Loaded {
            config: None,
            issues,
        };
    }

    let headers = load_headers(env, settings, &mut issues);

    let options_value = settings.and_then(|s| s.get("nats_options"));
    let options_map = match options_value {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(other) => {
            issues.push(ConfigIssue {
                source: "nats_options".into(),
                problem: format!("expected a mapping, got {}; ignored", kind(other)),
                disables: false,
            });
            None
        }
    };
    if let Some(map) = options_map {
        for key in map.keys() {
            let known = OPTION_VARS.iter().any(|(k, _)| k == key)
                || IGNORED_OPTIONS.contains(&key.as_str());
            if !known {
                issues.push(ConfigIssue {
                    source: format!("nats_options.{key}"),
                    problem: "unknown option; ignored".into(),
                    disables: false,
                });
            } else if IGNORED_OPTIONS.contains(&key.as_str()) {
                issues.push(ConfigIssue {
                    source: format!("nats_options.{key}"),
                    problem: "has no effect in this plugin; ignored".into(),
                    disables: false,
                });
            }
        }
    }
    let mut src = Sources {
        env,
        options: options_map,
        issues,
    };
    let built = build_options(&mut src);
    let mut issues = src.issues;

    let oversize = match env
        .get("RUNNER_NATS_OVERSIZE")
        .map(|s| s.trim().to_ascii_lowercase())
    {
        None => Oversize::Drop,
        Some(v) if v.is_empty() || v == "drop" => Oversize::Drop,
        Some(v) if v == "truncate" => Oversize::Truncate,
        Some(v) => {
            issues.push(ConfigIssue {
                source: "RUNNER_NATS_OVERSIZE".into(),
                problem: format!("{v:?} is neither \"drop\" nor \"truncate\"; using drop"),
                disables: false,
            });
            Oversize::Drop
        }
    };
    let redact_env = match env.get("RUNNER_NATS_REDACT_ENV") {
        None => true,
        Some(v) if falsy(v) => false,
        Some(v) if truthy(v) || v.trim().is_empty() => true,
        Some(v) => {
            issues.push(ConfigIssue {
                source: "RUNNER_NATS_REDACT_ENV".into(),
                problem: format!("{v:?} is not true or false; redacting (the default)"),
                disables: false,
            });
            true
        }
    };

    let jetstream = load_jetstream(env, settings, &mut issues);

    let config = built.map(|(options, flush_timeout)| EmitterConfig {
        subject_id,
        headers,
        options,
        flush_timeout,
        oversize,
        redact_env,
        jetstream,
    });
    Loaded { config, issues }
}

/// A variable, else a setting, as text (settings may hold strings, booleans or numbers).
fn env_or_setting(
    env: &HashMap<String, String>,
    settings: Option<&serde_json::Map<String, Value>>,
    var: &'static str,
    setting: &'static str,
) -> Option<(&'static str, String)> {
    if let Some(v) = env.get(var).filter(|v| !v.trim().is_empty()) {
        return Some((var, v.trim().to_owned()));
    }
    match settings.and_then(|s| s.get(setting))? {
        Value::Null => None,
        Value::String(s) => Some((setting, s.trim().to_owned())),
        other => Some((setting, other.to_string())),
    }
}

/// `RUNNER_NATS_JETSTREAM` / `nats_jetstream` and the knobs that go with it.
fn load_jetstream(
    env: &HashMap<String, String>,
    settings: Option<&serde_json::Map<String, Value>>,
    issues: &mut Vec<ConfigIssue>,
) -> Option<JetStreamConfig> {
    let (source, on) = env_or_setting(env, settings, "RUNNER_NATS_JETSTREAM", "nats_jetstream")?;
    if falsy(&on) {
        return None;
    }
    if !truthy(&on) {
        issues.push(ConfigIssue {
            source: source.into(),
            problem: format!("{on:?} is not true or false; JetStream stays off"),
            disables: false,
        });
        return None;
    }
    let mut js = JetStreamConfig::default();
    if let Some((source, name)) = env_or_setting(
        env,
        settings,
        "RUNNER_NATS_JETSTREAM_STREAM",
        "nats_jetstream_stream",
    ) {
        let bad = name.len() > 255
            || name
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || ".*>/\\".contains(c));
        if bad {
            issues.push(ConfigIssue {
                source: source.into(),
                problem: format!(
                    "{name:?} is not a valid stream name (no spaces, '.', '*', '>', '/' or '\\'); no stream is created"
                ),
                disables: false,
            });
        } else {
            js.stream = Some(name);
        }
    }
    if let Some(v) = env.get("RUNNER_NATS_JETSTREAM_WINDOW") {
        match v.trim().parse::<usize>() {
            Ok(n) if (1..=65_536).contains(&n) => js.window = n,
            _ => issues.push(ConfigIssue {
                source: "RUNNER_NATS_JETSTREAM_WINDOW".into(),
                problem: format!(
                    "{v:?} is not a whole number from 1 to 65536; using {}",
                    js.window
                ),
                disables: false,
            }),
        }
    }
    if let Some(v) = env.get("RUNNER_NATS_JETSTREAM_ACK_TIMEOUT") {
        match v.trim().parse::<f64>() {
            Ok(s) if s.is_finite() && s > 0.0 && s <= 3600.0 => {
                js.ack_timeout = Duration::from_secs_f64(s);
            }
            _ => issues.push(ConfigIssue {
                source: "RUNNER_NATS_JETSTREAM_ACK_TIMEOUT".into(),
                problem: format!(
                    "{v:?} is not a number of seconds above 0 (up to 3600); using {:?}",
                    js.ack_timeout
                ),
                disables: false,
            }),
        }
    }
    Some(js)
}

/// `"subject: x"` → `"x"`: the issue names its own source.
fn strip_area(text: &str) -> &str {
    text.split_once(": ").map_or(text, |(_, rest)| rest)
}

/// `nats_headers` (a mapping), then `RUNNER_NATS_HEADERS` (`k=v,k2=v2`) over it.
fn load_headers(
    env: &HashMap<String, String>,
    settings: Option<&serde_json::Map<String, Value>>,
    issues: &mut Vec<ConfigIssue>,
) -> HeaderMap {
    let mut merged: Vec<(String, String, String)> = Vec::new();
    match settings.and_then(|s| s.get("nats_headers")) {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (k, v) in map {
                let value = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(_) | Value::Bool(_) => v.to_string(),
                    other => {
                        issues.push(ConfigIssue {
                            source: format!("nats_headers.{k}"),
                            problem: format!(
                                "expected a string, got {}; header skipped",
                                kind(other)
                            ),
                            disables: false,
                        });
                        continue;
                    }
                };
                merged.push((k.clone(), value, format!("nats_headers.{k}")));
            }
        }
        Some(other) => issues.push(ConfigIssue {
            source: "nats_headers".into(),
            problem: format!("expected a mapping, got {}; ignored", kind(other)),
            disables: false,
        }),
    }
    if let Some(list) = env.get("RUNNER_NATS_HEADERS") {
        for (place, item) in list.split(',').enumerate() {
            let item = item.trim();
            if item.is_empty() {
                continue;
            }
            match item.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    let k = k.trim().to_owned();
                    // The variable wins over the setting.
                    merged.retain(|(name, _, _)| *name != k);
                    merged.push((k, v.trim().to_owned(), "RUNNER_NATS_HEADERS".into()));
                }
                _ => issues.push(ConfigIssue {
                    source: "RUNNER_NATS_HEADERS".into(),
                    // Named by its place: a mistyped `Authorization: Bearer ...` is a secret.
                    problem: format!(
                        "item {} (not shown) is not name=value; that item skipped",
                        place + 1
                    ),
                    disables: false,
                }),
            }
        }
    }
    let mut headers = HeaderMap::new();
    for (name, value, source) in merged {
        if let Err(e) = headers.append(&name, &value) {
            issues.push(ConfigIssue {
                source,
                problem: format!("{}; that header skipped", strip_area(&e.to_string())),
                disables: false,
            });
        }
    }
    headers
}

/// Builds client options; `None` when the emitter must be disabled.
fn build_options(src: &mut Sources<'_>) -> Option<(Options, Duration)> {
    // The emitter never waits for a connection in an event handler: it connects in the
    // background, keeps trying, and re-sends what the server did not confirm (events
    // carry uuids, so consumers can drop the rare duplicate). Events that keep coming are
    // coalesced into few writes (`EMITTER_WRITE_LINGER`); a lone event goes out at once.
    let mut opts = Options::new()
        .connect_in_background(true)
        .retry_on_failed_connect(true)
        .resend_unconfirmed(true)
        .write_linger(EMITTER_WRITE_LINGER)
        .max_reconnect_attempts(-1);

    if let Some((source, parsed)) = servers_list(src) {
        let mut good: Vec<ServerAddr> = Vec::new();
        for item in parsed {
            match item {
                Ok(addr) => good.push(addr),
                Err(e) => src.issue(
                    &source,
                    format!("{}; that server skipped", strip_area(&e.to_string())),
                    false,
                ),
            }
        }
        if good.is_empty() {
            src.issue(
                &source,
                "no usable server URL; emitter disabled".into(),
                true,
            );
            return None;
        }
        opts = opts.server_addrs(good);
    }
    if let Some((_, name)) = src.text("name") {
        opts = opts.name(&name);
    }
    if let Some(v) = src.boolean("verbose") {
        opts = opts.verbose(v);
    }
    if let Some(v) = src.boolean("pedantic") {
        opts = opts.pedantic(v);
    }
    if let Some(v) = src.boolean("allow_reconnect") {
        opts = opts.allow_reconnect(v);
    }
    if let Some(v) = src.boolean("dont_randomize") {
        opts = opts.no_randomize(v);
    }
    if let Some(d) = src.seconds("connect_timeout", "2 s") {
        opts = opts.connect_timeout(d);
    }
    if let Some(d) = src.seconds("reconnect_time_wait", "2 s") {
        opts = opts.reconnect_time_wait(d);
    }
    if let Some(d) = src.seconds("ping_interval", "120 s") {
        if d.is_zero() {
            // nats-py would PING without pause; the library would never PING.
            let source = src.source_of("ping_interval");
            src.issue(
                &source,
                "0 is not an interval; using the default (120 s)".into(),
                false,
            );
        } else {
            opts = opts.ping_interval(d);
        }
    }
    if let Some(n) = src.integer("max_reconnect_attempts", "forever") {
        opts = opts.max_reconnect_attempts(n);
    }
    if let Some(n) = src.integer("max_outstanding_pings", "2") {
        match u32::try_from(n) {
            Ok(n) if n > 0 => opts = opts.max_outstanding_pings(n),
            _ => {
                let source = src.source_of("max_outstanding_pings");
                src.issue(
                    &source,
                    format!("{n} is out of range (1 or more); using the default (2)"),
                    false,
                );
            }
        }
    }
    if let Some(n) = src.size("flusher_queue_size", "1 MiB") {
        // nats-py counts flush requests here; we bound bytes. Small nats-py style
        // values (a count, typically 1024) would starve the writer: keep at least 1 MiB.
        opts = opts.flusher_queue_size(n.max(1024 * 1024));
    }
    if let Some(n) = src.size("pending_size", "8 MiB") {
        opts = opts.pending_size(n);
    }
    if let Some(d) = src.seconds("write_linger", "0.05") {
        // More than a second would only delay events for nothing.
        opts = opts.write_linger(d.min(Duration::from_secs(1)));
    }
    let flush_timeout = src
        .seconds("flush_timeout", "10 s")
        .unwrap_or(Duration::from_secs(10));
    opts = opts.flush_timeout(flush_timeout);

    opts = opts.auth(load_auth(src)?);
    opts = opts.tls(load_tls(src)?);
    Some((opts, flush_timeout))
}

/// The server list: a comma-separated string, or (as nats-py accepts in `nats_options`)
/// a list of strings.
fn servers_list(src: &mut Sources<'_>) -> Option<(String, Vec<Result<ServerAddr, Error>>)> {
    let raw = src.get("servers")?;
    match raw.value {
        Value::String(s) => match parse_server_items(&s) {
            Ok(parsed) => Some((raw.source, parsed)),
            Err(e) => {
                let shown = match &e {
                    Error::InvalidUrl(invalid) => format!("{}: {}", invalid.value, invalid.reason),
                    other => other.to_string(),
                };
                src.issue(&raw.source, shown, false);
                Some((raw.source, Vec::new()))
            }
        },
        Value::Array(items) => {
            // Each item whole: a ',' in a password is no separator here.
            let mut parsed = Vec::new();
            for (place, item) in items.iter().enumerate() {
                match item.as_str() {
                    Some(s) => parsed.push(s.parse::<ServerAddr>()),
                    // Only its kind: an object here may well hold a password.
                    None => src.issue(
                        &raw.source,
                        format!(
                            "item {} ({}) is not a URL string; that server skipped",
                            place + 1,
                            kind(item)
                        ),
                        false,
                    ),
                }
            }
            Some((raw.source, parsed))
        }
        other => {
            src.issue(
                &raw.source,
                format!("expected a list of URLs, got {}; ignored", kind(&other)),
                false,
            );
            None
        }
    }
}

fn load_auth(src: &mut Sources<'_>) -> Option<Auth> {
    if let Some(raw) = src.get("user_credentials") {
        // A creds file, or (nats-py's tuple, a list here) a JWT file and a seed file.
        let loaded = match &raw.value {
            Value::String(path) => {
                let path = PathBuf::from(path);
                Some(load_creds_file(&path).map(|_| Auth::CredsFile(path)))
            }
            Value::Array(pair) => match pair.as_slice() {
                [Value::String(jwt), Value::String(seed)] => {
                    let (jwt, seed) = (PathBuf::from(jwt), PathBuf::from(seed));
                    Some(
                        load_jwt_and_seed_files(&jwt, &seed)
                            .map(|_| Auth::JwtAndSeedFiles { jwt, seed }),
                    )
                }
                _ => None,
            },
            _ => None,
        };
        match loaded {
            Some(Ok(auth)) => return Some(auth),
            Some(Err(e)) => {
                src.issue(&raw.source, format!("{e}; emitter disabled"), true);
                return None;
            }
            None => {
                let got = match &raw.value {
                    Value::Array(_) => "a list that is not two paths".to_owned(),
                    other => kind(other).to_owned(),
                };
                src.issue(
                    &raw.source,
                    format!("expected the path of a creds file or a [JWT file, seed file] pair, got {got}; ignored"),
                    false,
                );
            }
        }
    }
    // nats-py takes `nkeys_seed_str` over `nkeys_seed` (the variable stands for both).
    if let Some((source, seed)) = src
        .text("nkeys_seed_str")
        .or_else(|| src.text("nkeys_seed"))
    {
        let checked = load_seed(&seed).and_then(|s| user_key_pair(&s, "nkey seed").map(|_| s));
        return match checked {
            Ok(seed) => Some(Auth::NKeySeed(seed)),
            Err(e) => {
                src.issue(&source, format!("{e}; emitter disabled"), true);
                None
            }
        };
    }
    if let Some((_, token)) = src.text("token") {
        return Some(Auth::Token(token));
    }
    let user = src.text("user");
    let password = src.text("password");
    match (user, password) {
        (Some((_, user)), Some((_, password))) => Some(Auth::UserPassword { user, password }),
        (Some((source, _)), None) => {
            src.issue(
                &source,
                "a user name without a password; ignored".into(),
                false,
            );
            Some(Auth::None)
        }
        (None, Some((source, _))) => {
            src.issue(
                &source,
                "a password without a user name; ignored".into(),
                false,
            );
            Some(Auth::None)
        }
        (None, None) => Some(Auth::None),
    }
}

fn load_tls(src: &mut Sources<'_>) -> Option<TlsOptions> {
    let mut tls = TlsOptions::default();
    let mut files = Vec::new();
    if let Some((source, ca)) = src.text("tls_ca_file") {
        tls.ca_files.push(PathBuf::from(&ca));
        files.push((source, ca));
    }
    let cert = src.text("tls_cert_file");
    let key = src.text("tls_key_file");
    match (cert, key) {
        (Some((cs, c)), Some((ks, k))) => {
            tls.client_cert = Some(PathBuf::from(&c));
            tls.client_key = Some(PathBuf::from(&k));
            files.push((cs, c));
            files.push((ks, k));
        }
        (Some((source, _)), None) | (None, Some((source, _))) => {
            src.issue(
                &source,
                "a client certificate needs both RUNNER_NATS_TLS_CERT_FILE and RUNNER_NATS_TLS_KEY_FILE; emitter disabled".into(),
                true,
            );
            return None;
        }
        (None, None) => {}
    }
    if let Some(first) = src.boolean("tls_handshake_first") {
        tls.tls_first = first;
    }
    if let Some((source, name)) = src.text("tls_hostname") {
        if let Err(e) = crate::tls::server_name(&name) {
            src.issue(
                &source,
                format!("{}; emitter disabled", strip_area(&e.to_string())),
                true,
            );
            return None;
        }
        tls.server_name = Some(name);
    }
    for (source, path) in &files {
        if let Err(e) = std::fs::metadata(path) {
            let shown = crate::error::shown_path(std::path::Path::new(path));
            src.issue(source, format!("{shown}: {e}; emitter disabled"), true);
            return None;
        }
    }
    if !files.is_empty() || tls.tls_first {
        if let Err(e) = crate::tls::client_config(&tls) {
            // Filed under the variable of the file the error names (the first that it
            // does, for a certificate and key that do not fit together).
            let text = e.to_string();
            let named = |(_, path): &&(String, String)| {
                text.contains(&crate::error::shown_path(std::path::Path::new(path)))
            };
            let source = files
                .iter()
                .find(named)
                .or(files.first())
                .map_or("RUNNER_NATS_TLS_FIRST", |(s, _)| s.as_str())
                .to_owned();
            src.issue(&source, format!("{text}; emitter disabled"), true);
            return None;
        }
    }
    Some(tls)
}

#[cfg(test)]
#[path = "config_tests.rs"]
pub(super) mod tests;

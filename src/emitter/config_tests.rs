//! Every variable and setting of the emitter: parsing, precedence, defaults, and the text
//! of each issue.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::auth::Auth;

/// `pairs` as an environment (the emitter's own tests use it too).
pub(in crate::emitter) fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Loads with `RUNNER_NATS_SUBJECT_ID=s` plus `pairs`.
fn load_with(pairs: &[(&str, &str)], settings: Option<Value>) -> Loaded {
    let mut vars = env(&[("RUNNER_NATS_SUBJECT_ID", "s")]);
    vars.extend(env(pairs));
    load(&vars, settings.as_ref(), "my.host.name")
}

fn config(pairs: &[(&str, &str)], settings: Option<Value>) -> EmitterConfig {
    let loaded = load_with(pairs, settings);
    loaded
        .config
        .unwrap_or_else(|| panic!("disabled: {:?}", loaded.issues))
}

/// The issues as "source: problem" lines.
fn issues(loaded: &Loaded) -> Vec<String> {
    loaded.issues.iter().map(ToString::to_string).collect()
}

fn only_issue(pairs: &[(&str, &str)], settings: Option<Value>) -> (String, bool, Loaded) {
    let loaded = load_with(pairs, settings);
    assert_eq!(loaded.issues.len(), 1, "{:?}", loaded.issues);
    let i = &loaded.issues[0];
    (i.to_string(), i.disables, loaded.clone())
}

/// A directory for files of one test, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("arn-config-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn file(&self, name: &str, text: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn off_without_a_subject_id() {
    let loaded = load(&HashMap::new(), None, "h");
    assert!(loaded.config.is_none() && loaded.issues.is_empty());
    let loaded = load(&env(&[("RUNNER_NATS_SUBJECT_ID", "")]), None, "h");
    assert!(loaded.config.is_none() && loaded.issues.is_empty());
    let loaded = load(&HashMap::new(), Some(&json!({"nats_subject_id": ""})), "h");
    assert!(loaded.config.is_none() && loaded.issues.is_empty());
}

#[test]
fn subject_id_from_the_variable_beats_the_setting() {
    let settings = json!({"nats_subject_id": "from-settings"});
    let c = load(
        &env(&[("RUNNER_NATS_SUBJECT_ID", "from-env")]),
        Some(&settings),
        "h",
    );
    assert_eq!(c.config.unwrap().subject_id, "from-env");
    let c = load(&HashMap::new(), Some(&settings), "h");
    assert_eq!(c.config.unwrap().subject_id, "from-settings");
}

#[test]
fn the_variables_hostname_is_the_host_name_with_dashes_the_settings_is_taken_as_it_is() {
    assert_eq!(
        config(&[("RUNNER_NATS_SUBJECT_ID", "hostname")], None).subject_id,
        "my-host-name"
    );
    // In the settings it is a subject id like any other, as in the Python plugin.
    let c = load(
        &HashMap::new(),
        Some(&json!({"nats_subject_id": "hostname"})),
        "a.b",
    );
    assert_eq!(c.config.unwrap().subject_id, "hostname");
}

#[test]
fn invalid_subject_ids_disable_with_the_variable_named() {
    let table = [
        ("te st", "RUNNER_NATS_SUBJECT_ID: \"te st\": contains whitespace; emitter disabled"),
        ("a\nb", "RUNNER_NATS_SUBJECT_ID: \"a\\nb\": contains whitespace; emitter disabled"),
        ("*", "RUNNER_NATS_SUBJECT_ID: \"*\": contains a wildcard character; emitter disabled"),
        (">", "RUNNER_NATS_SUBJECT_ID: \">\": contains a wildcard character; emitter disabled"),
        ("a*b", "RUNNER_NATS_SUBJECT_ID: \"a*b\": contains a wildcard character; emitter disabled"),
        ("a.b", "RUNNER_NATS_SUBJECT_ID: \"a.b\": contains `.` (would add a subject token); emitter disabled"),
        ("a\u{1}", "RUNNER_NATS_SUBJECT_ID: \"a\\u{1}\": contains a control character; emitter disabled"),
    ];
    for (id, want) in table {
        let (text, disables, loaded) = only_issue(&[("RUNNER_NATS_SUBJECT_ID", id)], None);
        assert_eq!(text, want);
        assert!(disables && loaded.config.is_none());
    }
    // The longest id that leaves room for a one-character runner_ident, and one byte more.
    let longest = "i".repeat(4000 - "pub.ansible.runner...status".len() - 1);
    assert!(
        load(&env(&[("RUNNER_NATS_SUBJECT_ID", &longest)]), None, "h")
            .issues
            .is_empty()
    );
    let over = format!("{longest}i");
    let (text, disables, loaded) = only_issue(&[("RUNNER_NATS_SUBJECT_ID", &over)], None);
    assert_eq!(
        text,
        "RUNNER_NATS_SUBJECT_ID: 3973 bytes long: subjects with it are over the 4000 bytes a \
         server reads; emitter disabled"
    );
    assert!(disables && loaded.config.is_none());
    let loaded = load(&HashMap::new(), Some(&json!({"nats_subject_id": 5})), "h");
    assert_eq!(
        issues(&loaded),
        ["nats_subject_id: expected a string, got a number; emitter disabled"]
    );
    let loaded = load(
        &HashMap::new(),
        Some(&json!({"nats_subject_id": "x y"})),
        "h",
    );
    assert_eq!(
        issues(&loaded),
        ["nats_subject_id: \"x y\": contains whitespace; emitter disabled"]
    );
}

fn header_pairs(c: &EmitterConfig) -> Vec<(String, String)> {
    c.headers
        .iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[test]
fn header_list_parsing() {
    let c = config(
        &[(
            "RUNNER_NATS_HEADERS",
            " producer = ansible-runner , foo=bar,eq=a=b ,",
        )],
        None,
    );
    assert_eq!(
        header_pairs(&c),
        [
            ("producer".into(), "ansible-runner".into()),
            ("foo".into(), "bar".into()),
            ("eq".into(), "a=b".into())
        ]
    );
    // The Python plugin fails the run here; we skip the bad item and keep the rest.
    let (text, disables, loaded) = only_issue(&[("RUNNER_NATS_HEADERS", "a=b,c")], None);
    assert_eq!(
        text,
        "RUNNER_NATS_HEADERS: item 2 (not shown) is not name=value; that item skipped"
    );
    assert!(!disables);
    assert_eq!(
        header_pairs(loaded.config.as_ref().unwrap()),
        [("a".into(), "b".into())]
    );
    // A mistyped header may hold a secret: never shown.
    let (text, _, _) = only_issue(
        &[("RUNNER_NATS_HEADERS", "Authorization: Bearer s3cr3t")],
        None,
    );
    assert_eq!(
        text,
        "RUNNER_NATS_HEADERS: item 1 (not shown) is not name=value; that item skipped"
    );
    let (text, _, _) = only_issue(&[("RUNNER_NATS_HEADERS", "=v")], None);
    assert_eq!(
        text,
        "RUNNER_NATS_HEADERS: item 1 (not shown) is not name=value; that item skipped"
    );
    let (text, _, _) = only_issue(&[("RUNNER_NATS_HEADERS", "bad name=v")], None);
    assert_eq!(
        text,
        "RUNNER_NATS_HEADERS: \"bad name\": header name must be printable ASCII without spaces; that header skipped"
    );
    let (text, _, _) = only_issue(&[("RUNNER_NATS_HEADERS", "a:b=v")], None);
    assert_eq!(
        text,
        "RUNNER_NATS_HEADERS: \"a:b\": header name contains ':'; that header skipped"
    );
}

#[test]
fn headers_from_settings_merge_under_the_variable() {
    let settings = json!({"nats_headers": {"producer": "settings", "team": "infra", "n": 3}});
    let c = config(
        &[("RUNNER_NATS_HEADERS", "producer=env")],
        Some(settings.clone()),
    );
    assert_eq!(
        header_pairs(&c),
        // Settings headers come in name order (a JSON object has none of its own).
        [
            ("n".into(), "3".into()),
            ("team".into(), "infra".into()),
            ("producer".into(), "env".into())
        ]
    );
    // Unlike the Python plugin, settings headers apply without the variable.
    let c = config(&[], Some(settings));
    assert_eq!(c.headers.get("producer"), Some("settings"));
    let (text, _, _) = only_issue(&[], Some(json!({"nats_headers": {"a": ["x"]}})));
    assert_eq!(
        text,
        "nats_headers.a: expected a string, got a list; header skipped"
    );
    let (text, _, _) = only_issue(&[], Some(json!({"nats_headers": "a=b"})));
    assert_eq!(
        text,
        "nats_headers: expected a mapping, got a string; ignored"
    );
    let (text, _, _) = only_issue(&[], Some(json!({"nats_headers": {"a": "x\r\ny"}})));
    assert_eq!(
        text,
        "nats_headers.a: \"a\": its value contains CR or LF; that header skipped"
    );
}

#[test]
fn defaults() {
    let c = config(&[], None);
    let o = &c.options;
    assert!(o.servers.is_empty(), "the client's default server applies");
    assert_eq!(o.connect_timeout, Duration::from_secs(2));
    assert_eq!(o.reconnect_time_wait, Duration::from_secs(2));
    assert_eq!(o.ping_interval, Duration::from_secs(120));
    assert_eq!(o.max_outstanding_pings, 2);
    assert_eq!(o.max_reconnect_attempts, -1);
    assert_eq!(o.pending_size, 8 * 1024 * 1024);
    assert_eq!(o.flush_timeout, Duration::from_secs(10));
    assert_eq!(c.flush_timeout, Duration::from_secs(10));
    assert!(o.connect_in_background && o.retry_on_failed_connect && o.resend_unconfirmed);
    assert!(o.allow_reconnect && !o.verbose);
    assert!(matches!(o.auth, Auth::None));
    assert_eq!(c.oversize, Oversize::Drop);
    assert!(c.redact_env);
    assert!(c.headers.is_empty());
}

#[test]
fn every_option_variable_is_applied() {
    let c = config(
        &[
            (
                "RUNNER_NATS_SERVERS",
                "nats://127.0.0.1:5000, tls://localhost:5001",
            ),
            ("RUNNER_NATS_CLIENT_NAME", "runner-1"),
            ("RUNNER_NATS_CLIENT_VERBOSE", "Yes"),
            ("RUNNER_NATS_ALLOW_RECONNECT", "off"),
            ("RUNNER_NATS_CONNECT_TIMEOUT", "0.5"),
            ("RUNNER_NATS_RECONNECT_TIME_WAIT", "1.25"),
            ("RUNNER_NATS_PING_INTERVAL", "30"),
            ("RUNNER_NATS_FLUSH_TIMEOUT", "2.5"),
            ("RUNNER_NATS_MAX_RECONNECT_ATTEMPTS", "7"),
            ("RUNNER_NATS_MAX_OUTSTANDING_PINGS", "4"),
            ("RUNNER_NATS_FLUSHER_QUEUE_SIZE", "4194304"),
            ("RUNNER_NATS_PENDING_SIZE", "1000000"),
            ("RUNNER_NATS_OVERSIZE", "Truncate"),
            ("RUNNER_NATS_REDACT_ENV", "false"),
        ],
        None,
    );
    let o = &c.options;
    let servers: Vec<String> = o.servers.iter().map(ToString::to_string).collect();
    assert_eq!(servers, ["nats://127.0.0.1:5000", "tls://localhost:5001"]);
    assert_eq!(o.name.as_deref(), Some("runner-1"));
    assert!(o.verbose && !o.allow_reconnect);
    assert_eq!(o.connect_timeout, Duration::from_millis(500));
    assert_eq!(o.reconnect_time_wait, Duration::from_millis(1250));
    assert_eq!(o.ping_interval, Duration::from_secs(30));
    assert_eq!(o.flush_timeout, Duration::from_millis(2500));
    assert_eq!(c.flush_timeout, Duration::from_millis(2500));
    assert_eq!(o.max_reconnect_attempts, 7);
    assert_eq!(o.max_outstanding_pings, 4);
    assert_eq!(o.flusher_queue_size, 4 * 1024 * 1024);
    assert_eq!(o.pending_size, 1_000_000);
    assert_eq!(c.oversize, Oversize::Truncate);
    assert!(!c.redact_env);
}

#[test]
fn booleans_follow_the_python_plugin() {
    for yes in ["true", "TRUE", "yes", "y", "1", "on", " On "] {
        assert!(
            config(&[("RUNNER_NATS_CLIENT_VERBOSE", yes)], None)
                .options
                .verbose,
            "{yes}"
        );
    }
    for no in ["false", "no", "0", "off", "anything"] {
        assert!(
            !config(&[("RUNNER_NATS_CLIENT_VERBOSE", no)], None)
                .options
                .verbose,
            "{no}"
        );
    }
}

#[test]
fn max_outstanding_pings_has_two_spellings_and_the_nats_one_wins() {
    let c = config(&[("RUNNER_MAX_OUTSTANDING_PINGS", "5")], None);
    assert_eq!(c.options.max_outstanding_pings, 5);
    let c = config(
        &[
            ("RUNNER_MAX_OUTSTANDING_PINGS", "5"),
            ("RUNNER_NATS_MAX_OUTSTANDING_PINGS", "6"),
        ],
        None,
    );
    assert_eq!(c.options.max_outstanding_pings, 6);
}

#[test]
fn unparsable_numbers_keep_the_default_and_say_so() {
    let table = [
        ("RUNNER_NATS_CONNECT_TIMEOUT", "soon", "RUNNER_NATS_CONNECT_TIMEOUT: \"soon\" is not a number of seconds (fractions allowed); using the default (2 s)"),
        ("RUNNER_NATS_CONNECT_TIMEOUT", "-1", "RUNNER_NATS_CONNECT_TIMEOUT: \"-1\" is not a number of seconds (fractions allowed); using the default (2 s)"),
        ("RUNNER_NATS_RECONNECT_TIME_WAIT", "2s", "RUNNER_NATS_RECONNECT_TIME_WAIT: \"2s\" is not a number of seconds (fractions allowed); using the default (2 s)"),
        ("RUNNER_NATS_PING_INTERVAL", "NaN", "RUNNER_NATS_PING_INTERVAL: \"NaN\" is not a number of seconds (fractions allowed); using the default (120 s)"),
        ("RUNNER_NATS_FLUSH_TIMEOUT", "", "RUNNER_NATS_FLUSH_TIMEOUT: \"\" is not a number of seconds (fractions allowed); using the default (10 s)"),
        ("RUNNER_NATS_MAX_RECONNECT_ATTEMPTS", "1.5", "RUNNER_NATS_MAX_RECONNECT_ATTEMPTS: \"1.5\" is not a whole number; using the default (forever)"),
        ("RUNNER_NATS_MAX_OUTSTANDING_PINGS", "two", "RUNNER_NATS_MAX_OUTSTANDING_PINGS: \"two\" is not a whole number; using the default (2)"),
        ("RUNNER_MAX_OUTSTANDING_PINGS", "x", "RUNNER_MAX_OUTSTANDING_PINGS: \"x\" is not a whole number; using the default (2)"),
        ("RUNNER_NATS_FLUSHER_QUEUE_SIZE", "big", "RUNNER_NATS_FLUSHER_QUEUE_SIZE: \"big\" is not a whole number; using the default (1 MiB)"),
        ("RUNNER_NATS_PENDING_SIZE", "0", "RUNNER_NATS_PENDING_SIZE: 0 is not a positive size; using the default (8 MiB)"),
        ("RUNNER_NATS_PENDING_SIZE", "-5", "RUNNER_NATS_PENDING_SIZE: -5 is not a positive size; using the default (8 MiB)"),
        ("RUNNER_NATS_PING_INTERVAL", "0", "RUNNER_NATS_PING_INTERVAL: 0 is not an interval; using the default (120 s)"),
        ("RUNNER_NATS_MAX_OUTSTANDING_PINGS", "0", "RUNNER_NATS_MAX_OUTSTANDING_PINGS: 0 is out of range (1 or more); using the default (2)"),
        ("RUNNER_MAX_OUTSTANDING_PINGS", "-1", "RUNNER_MAX_OUTSTANDING_PINGS: -1 is out of range (1 or more); using the default (2)"),
    ];
    let defaults = config(&[], None);
    for (var, value, want) in table {
        let (text, disables, loaded) = only_issue(&[(var, value)], None);
        assert_eq!(text, want);
        assert!(!disables);
        let o = &loaded.config.unwrap().options;
        assert_eq!(o.connect_timeout, defaults.options.connect_timeout);
        assert_eq!(o.pending_size, defaults.options.pending_size);
        assert_eq!(
            o.max_outstanding_pings,
            defaults.options.max_outstanding_pings
        );
    }
}

#[test]
fn nats_options_apply_under_the_environment() {
    let settings = json!({"nats_options": {
        "servers": ["nats://127.0.0.1:6000", "nats://127.0.0.1:6001"],
        "name": "from-settings",
        "connect_timeout": 3,
        "ping_interval": "45",
        "max_reconnect_attempts": 3,
        "allow_reconnect": false,
        "user": "u",
        "password": "p",
    }});
    let c = config(&[], Some(settings.clone()));
    let o = &c.options;
    assert_eq!(o.servers.len(), 2);
    assert_eq!(o.name.as_deref(), Some("from-settings"));
    assert_eq!(o.connect_timeout, Duration::from_secs(3));
    assert_eq!(o.ping_interval, Duration::from_secs(45));
    assert_eq!(o.max_reconnect_attempts, 3);
    assert!(!o.allow_reconnect);
    assert!(
        matches!(&o.auth, Auth::UserPassword { user, password } if user == "u" && password == "p")
    );
    let c = config(
        &[
            ("RUNNER_NATS_CLIENT_NAME", "from-env"),
            ("RUNNER_NATS_SERVERS", "nats://127.0.0.1:7000"),
        ],
        Some(settings),
    );
    assert_eq!(c.options.name.as_deref(), Some("from-env"));
    assert_eq!(c.options.servers.len(), 1);
}

#[test]
fn nats_options_problems_are_reported_not_fatal() {
    let (text, disables, _) = only_issue(&[], Some(json!({"nats_options": {"color": "blue"}})));
    assert_eq!(text, "nats_options.color: unknown option; ignored");
    assert!(!disables);
    let (text, _, _) = only_issue(&[], Some(json!({"nats_options": {"error_cb": null}})));
    assert_eq!(
        text,
        "nats_options.error_cb: has no effect in this plugin; ignored"
    );
    let (text, _, _) = only_issue(&[], Some(json!({"nats_options": ["a"]})));
    assert_eq!(
        text,
        "nats_options: expected a mapping, got a list; ignored"
    );
    let (text, _, _) = only_issue(&[], Some(json!({"nats_options": {"name": 5}})));
    assert_eq!(
        text,
        "nats_options.name: expected a string, got a number; ignored"
    );
    let (text, _, _) = only_issue(&[], Some(json!({"nats_options": {"verbose": [1]}})));
    assert_eq!(
        text,
        "nats_options.verbose: expected true or false, got a list; ignored"
    );
    let (text, _, _) = only_issue(&[], Some(json!({"nats_options": {"servers": 5}})));
    assert_eq!(
        text,
        "nats_options.servers: expected a list of URLs, got a number; ignored"
    );
}

#[test]
fn servers_bad_items_are_skipped_and_none_usable_disables() {
    let (text, disables, loaded) = only_issue(
        &[("RUNNER_NATS_SERVERS", "nats://127.0.0.1:4000,ws://x:1")],
        None,
    );
    assert_eq!(
        text,
        "RUNNER_NATS_SERVERS: \"ws\": NATS over WebSocket is not supported (use nats:// or tls:// to the server's client port); that server skipped"
    );
    assert!(!disables);
    assert_eq!(loaded.config.unwrap().options.servers.len(), 1);
    let loaded = load_with(&[("RUNNER_NATS_SERVERS", "nats://h:99999")], None);
    assert_eq!(
        issues(&loaded),
        [
            "RUNNER_NATS_SERVERS: \"nats://h:99999\": port out of range; that server skipped",
            "RUNNER_NATS_SERVERS: no usable server URL; emitter disabled",
        ]
    );
    assert!(loaded.config.is_none());
    // Credentials in a bad URL never reach the issue.
    let loaded = load_with(&[("RUNNER_NATS_SERVERS", "nats://u:hunter2@h:x")], None);
    assert!(!format!("{:?}", loaded.issues).contains("hunter2"));
    // Nor a password that the list's commas split: its first part looks like a host.
    let loaded = load_with(
        &[("RUNNER_NATS_SERVERS", "nats://alice:hun,ter2@h:1")],
        None,
    );
    let text = format!("{:?}", loaded.issues);
    assert!(!text.contains("hun") && !text.contains("alice"), "{text}");
    assert!(text.contains("write it %2C"), "{text}");
    assert!(loaded.config.is_none(), "nothing is connected to");
    // In a settings list each URL is whole, commas and all.
    let loaded = load_with(
        &[],
        Some(json!({"nats_options": {"servers": ["nats://alice:hun,ter2@h:1"]}})),
    );
    assert!(loaded.issues.is_empty(), "{:?}", loaded.issues);
    assert_eq!(loaded.config.unwrap().options.servers.len(), 1);
}

#[test]
fn auth_variables() {
    let c = config(&[("RUNNER_NATS_TOKEN", "tok")], None);
    assert!(matches!(&c.options.auth, Auth::Token(t) if t == "tok"));
    let c = config(
        &[("RUNNER_NATS_USERNAME", "u"), ("RUNNER_NATS_PASSWORD", "p")],
        None,
    );
    assert!(matches!(&c.options.auth, Auth::UserPassword { .. }));
    let (text, disables, _) = only_issue(&[("RUNNER_NATS_USERNAME", "u")], None);
    assert_eq!(
        text,
        "RUNNER_NATS_USERNAME: a user name without a password; ignored"
    );
    assert!(!disables);
    let (text, _, _) = only_issue(&[("RUNNER_NATS_PASSWORD", "secret-pw")], None);
    assert_eq!(
        text,
        "RUNNER_NATS_PASSWORD: a password without a user name; ignored"
    );

    let seed = nkeys::KeyPair::new_user().seed().unwrap();
    let c = config(&[("RUNNER_NATS_NKEYS_SEED", &seed)], None);
    assert!(matches!(c.options.auth, Auth::NKeySeed(_)));
    let account = nkeys::KeyPair::new_account().seed().unwrap();
    let (text, disables, _) = only_issue(&[("RUNNER_NATS_NKEYS_SEED", &account)], None);
    assert_eq!(
        text,
        "RUNNER_NATS_NKEYS_SEED: credentials: nkey seed: an account seed where a user seed is required; emitter disabled"
    );
    assert!(disables && !text.contains(&account));
    let (text, _, _) = only_issue(&[("RUNNER_NATS_NKEYS_SEED", "SUtypo")], None);
    assert!(
        text.ends_with("neither a valid seed nor the path of an existing file; emitter disabled"),
        "{text}"
    );
    assert!(!text.contains("SUtypo"));
    // nats-py's `nkeys_seed_str`: the seed itself.
    let c = config(&[], Some(json!({"nats_options": {"nkeys_seed_str": seed}})));
    assert!(matches!(&c.options.auth, Auth::NKeySeed(s) if *s == seed));
    let both = json!({"nats_options": {"nkeys_seed_str": seed, "nkeys_seed": "/nowhere"}});
    let c = config(&[], Some(both));
    assert!(
        matches!(&c.options.auth, Auth::NKeySeed(s) if *s == seed),
        "as nats-py"
    );
    let (text, _, _) = only_issue(
        &[],
        Some(json!({"nats_options": {"nkeys_seed_str": account}})),
    );
    assert!(
        text.starts_with("nats_options.nkeys_seed_str: ") && !text.contains(&account),
        "{text}"
    );
}

#[test]
fn nats_py_connection_switches_are_honoured() {
    let c = config(
        &[],
        Some(json!({"nats_options": {"pedantic": true, "dont_randomize": true}})),
    );
    assert!(c.options.pedantic && c.options.no_randomize);
    let c = config(
        &[("RUNNER_NATS_DONT_RANDOMIZE", "no")],
        Some(json!({"nats_options": {"dont_randomize": true}})),
    );
    assert!(
        !c.options.pedantic && !c.options.no_randomize,
        "the variable wins"
    );
    for key in [
        "lame_duck_mode_cb",
        "skip_subject_validation",
        "ws_connection_headers",
    ] {
        let (text, disables, _) = only_issue(&[], Some(json!({"nats_options": {key: true}})));
        assert_eq!(
            text,
            format!("nats_options.{key}: has no effect in this plugin; ignored")
        );
        assert!(!disables);
    }
}

#[test]
fn creds_file_problems_disable_and_name_the_path() {
    let dir = Dir::new("creds");
    let seed = nkeys::KeyPair::new_user().seed().unwrap();
    let jwt = "eyJhIjoiYiJ9.eyJjIjoiZCJ9.c2ln";
    let good = dir.file(
        "good.creds",
        &format!(
            "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
        ),
    );
    let c = config(&[("RUNNER_NATS_USER_CREDENTIALS", &good)], None);
    assert!(matches!(&c.options.auth, Auth::CredsFile(p) if p.display().to_string() == good));
    let missing = dir.0.join("missing.creds").display().to_string();
    let (text, disables, _) = only_issue(&[("RUNNER_NATS_USER_CREDENTIALS", &missing)], None);
    assert_eq!(
        text,
        format!("RUNNER_NATS_USER_CREDENTIALS: credentials: {missing}: file not found; emitter disabled")
    );
    assert!(disables);
    let broken = dir.file(
        "broken.creds",
        &format!("-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"),
    );
    let (text, _, _) = only_issue(&[("RUNNER_NATS_USER_CREDENTIALS", &broken)], None);
    assert_eq!(
        text,
        format!("RUNNER_NATS_USER_CREDENTIALS: credentials: {broken}: missing the NATS USER JWT block; emitter disabled")
    );
    assert!(!text.contains(&seed));
    // A device where a file belongs: refused before a byte is read (/dev/zero would fill
    // memory, /dev/stdin block the run).
    for (var, device) in [
        ("RUNNER_NATS_USER_CREDENTIALS", "/dev/zero"),
        ("RUNNER_NATS_USER_CREDENTIALS", "/dev/stdin"),
        ("RUNNER_NATS_NKEYS_SEED", "/dev/zero"),
        ("RUNNER_NATS_TLS_CA_FILE", "/dev/zero"),
    ] {
        let (text, disables, _) = only_issue(&[(var, device)], None);
        assert!(
            text.starts_with(&format!("{var}: "))
                && text.contains(&format!("{device}: not a regular file")),
            "{text}"
        );
        assert!(disables, "{text}");
    }
    // The setting key works too.
    let loaded = load_with(
        &[],
        Some(json!({"nats_options": {"user_credentials": missing}})),
    );
    assert!(issues(&loaded)[0].starts_with("nats_options.user_credentials: credentials:"));
    // The file's text where its path belongs, or a PEM key's: not echoed.
    let text = format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n-----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n"
    );
    let pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n";
    for (var, value) in [
        ("RUNNER_NATS_USER_CREDENTIALS", text.as_str()),
        ("RUNNER_NATS_NKEYS_SEED", text.as_str()),
        ("RUNNER_NATS_TLS_CA_FILE", pem),
    ] {
        let shown = format!("{:?}", load_with(&[(var, value)], None).issues);
        for secret in [seed.as_str(), jwt, "MIIEvQ"] {
            assert!(!shown.contains(secret), "{var}: {shown}");
        }
    }
}

#[test]
fn a_jwt_file_and_a_seed_file_are_nats_pys_pair_of_credentials() {
    let dir = Dir::new("pair");
    let seed = nkeys::KeyPair::new_user().seed().unwrap();
    let jwt = "eyJhIjoiYiJ9.eyJjIjoiZCJ9.c2ln";
    let jwt_file = dir.file("user.jwt", &format!("{jwt}\n"));
    let seed_file = dir.file("user.nk", &format!("{seed}\n"));
    let pair = |a: &str, b: &str| Some(json!({"nats_options": {"user_credentials": [a, b]}}));
    let c = config(&[], pair(&jwt_file, &seed_file));
    assert!(
        matches!(&c.options.auth, Auth::JwtAndSeedFiles { jwt, seed }
        if jwt.display().to_string() == jwt_file && seed.display().to_string() == seed_file)
    );
    // Each file is checked, and named; neither secret is shown.
    let (text, disables, _) = only_issue(&[], pair(&seed_file, &seed_file));
    assert_eq!(
        text,
        format!("nats_options.user_credentials: credentials: {seed_file}: does not hold a JWT; emitter disabled")
    );
    assert!(disables && !text.contains(&seed));
    let (text, _, _) = only_issue(&[], pair(&jwt_file, &jwt_file));
    assert_eq!(
        text,
        format!("nats_options.user_credentials: credentials: {jwt_file}: no nkey seed in the file; emitter disabled")
    );
    assert!(!text.contains(jwt));
    let (text, disables, _) = only_issue(
        &[],
        Some(json!({"nats_options": {"user_credentials": [jwt_file]}})),
    );
    assert_eq!(
        text,
        "nats_options.user_credentials: expected the path of a creds file or a [JWT file, seed file] pair, got a list that is not two paths; ignored"
    );
    assert!(!disables);
}

#[test]
fn tls_variables() {
    let dir = Dir::new("tls");
    let missing = dir.0.join("ca.pem").display().to_string();
    let (text, disables, _) = only_issue(&[("RUNNER_NATS_TLS_CA_FILE", &missing)], None);
    assert!(
        text.starts_with(&format!("RUNNER_NATS_TLS_CA_FILE: {missing}: ")),
        "{text}"
    );
    assert!(text.ends_with("; emitter disabled") && disables, "{text}");
    let garbage = dir.file("garbage.pem", "not a certificate");
    let (text, _, _) = only_issue(&[("RUNNER_NATS_TLS_CA_FILE", &garbage)], None);
    assert_eq!(
        text,
        format!("RUNNER_NATS_TLS_CA_FILE: tls: {garbage}: no certificate found; emitter disabled")
    );
    let (text, disables, _) = only_issue(&[("RUNNER_NATS_TLS_CERT_FILE", &garbage)], None);
    assert_eq!(
        text,
        "RUNNER_NATS_TLS_CERT_FILE: a client certificate needs both RUNNER_NATS_TLS_CERT_FILE and RUNNER_NATS_TLS_KEY_FILE; emitter disabled"
    );
    assert!(disables);
    // A problem with one of several files is filed under that file's variable.
    let cert = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/fixtures/ca.pem");
    let (text, _, _) = only_issue(
        &[
            ("RUNNER_NATS_TLS_CA_FILE", cert),
            ("RUNNER_NATS_TLS_CERT_FILE", cert),
            ("RUNNER_NATS_TLS_KEY_FILE", &garbage),
        ],
        None,
    );
    assert_eq!(
        text,
        format!("RUNNER_NATS_TLS_KEY_FILE: tls: {garbage}: no PEM item found; emitter disabled")
    );
    let c = config(&[("RUNNER_NATS_TLS_FIRST", "true")], None);
    assert!(c.options.tls.tls_first);
    assert!(
        c.options.tls.system_roots,
        "the system's CAs are trusted, as by nats-py"
    );

    // nats-py's `tls_hostname`: the name the server's certificate is verified against.
    let c = config(
        &[],
        Some(json!({"nats_options": {"tls_hostname": "nats.internal"}})),
    );
    assert_eq!(c.options.tls.server_name.as_deref(), Some("nats.internal"));
    let c = config(
        &[("RUNNER_NATS_TLS_HOSTNAME", "from-env")],
        Some(json!({"nats_options": {"tls_hostname": "nats.internal"}})),
    );
    assert_eq!(c.options.tls.server_name.as_deref(), Some("from-env"));
    let (text, disables, _) = only_issue(&[("RUNNER_NATS_TLS_HOSTNAME", "bad name!")], None);
    assert_eq!(
        text,
        "RUNNER_NATS_TLS_HOSTNAME: \"bad name!\" is not a valid server name for TLS; emitter disabled"
    );
    assert!(disables);
}

#[test]
fn oversize_and_redact_values() {
    assert_eq!(
        config(&[("RUNNER_NATS_OVERSIZE", "drop")], None).oversize,
        Oversize::Drop
    );
    let (text, disables, loaded) = only_issue(&[("RUNNER_NATS_OVERSIZE", "shrink")], None);
    assert_eq!(
        text,
        "RUNNER_NATS_OVERSIZE: \"shrink\" is neither \"drop\" nor \"truncate\"; using drop"
    );
    assert!(!disables);
    assert_eq!(loaded.config.unwrap().oversize, Oversize::Drop);
    assert!(config(&[("RUNNER_NATS_REDACT_ENV", "yes")], None).redact_env);
    assert!(!config(&[("RUNNER_NATS_REDACT_ENV", "OFF")], None).redact_env);
    let (text, _, loaded) = only_issue(&[("RUNNER_NATS_REDACT_ENV", "maybe")], None);
    assert_eq!(
        text,
        "RUNNER_NATS_REDACT_ENV: \"maybe\" is not true or false; redacting (the default)"
    );
    assert!(loaded.config.unwrap().redact_env);
}

#[test]
fn secrets_never_show_in_issues_or_debug() {
    let loaded = load_with(
        &[
            ("RUNNER_NATS_PASSWORD", "pw-secret-1"),
            ("RUNNER_NATS_TOKEN", "tok-secret-2"),
            ("RUNNER_NATS_SERVERS", "nats://u:url-secret-3@127.0.0.1:1"),
        ],
        None,
    );
    let shown = format!("{:?} {:?}", loaded.issues, loaded.config);
    for secret in ["pw-secret-1", "tok-secret-2", "url-secret-3"] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
}

#[test]
fn jetstream_is_off_unless_asked_for() {
    assert_eq!(config(&[], None).jetstream, None);
    assert_eq!(
        config(&[("RUNNER_NATS_JETSTREAM", "no")], None).jetstream,
        None
    );
    let on = config(&[("RUNNER_NATS_JETSTREAM", "Yes")], None).jetstream;
    assert_eq!(on, Some(JetStreamConfig::default()));
}

#[test]
fn jetstream_from_settings_and_the_variable_wins() {
    let settings = json!({"nats_jetstream": true, "nats_jetstream_stream": "FROM_SETTINGS"});
    let js = config(&[], Some(settings.clone())).jetstream.unwrap();
    assert_eq!(js.stream.as_deref(), Some("FROM_SETTINGS"));
    let js = config(
        &[("RUNNER_NATS_JETSTREAM_STREAM", "FROM_ENV")],
        Some(settings.clone()),
    )
    .jetstream
    .unwrap();
    assert_eq!(js.stream.as_deref(), Some("FROM_ENV"));
    assert_eq!(
        config(&[("RUNNER_NATS_JETSTREAM", "false")], Some(settings)).jetstream,
        None
    );
}

#[test]
fn jetstream_knobs() {
    let js = config(
        &[
            ("RUNNER_NATS_JETSTREAM", "1"),
            ("RUNNER_NATS_JETSTREAM_WINDOW", "32"),
            ("RUNNER_NATS_JETSTREAM_ACK_TIMEOUT", "0.5"),
        ],
        None,
    )
    .jetstream
    .unwrap();
    assert_eq!(js.window, 32);
    assert_eq!(js.ack_timeout, Duration::from_millis(500));
}

#[test]
fn a_bad_jetstream_switch_is_reported_and_leaves_it_off() {
    let (text, disables, loaded) = only_issue(&[("RUNNER_NATS_JETSTREAM", "maybe")], None);
    assert_eq!(
        text,
        "RUNNER_NATS_JETSTREAM: \"maybe\" is not true or false; JetStream stays off"
    );
    assert!(!disables);
    assert_eq!(loaded.config.unwrap().jetstream, None);
    let (text, _, _) = only_issue(
        &[
            ("RUNNER_NATS_JETSTREAM", "true"),
            ("RUNNER_NATS_JETSTREAM_STREAM", "a b"),
        ],
        None,
    );
    assert!(text.starts_with("RUNNER_NATS_JETSTREAM_STREAM: \"a b\" is not a valid stream name"));
}

#[test]
fn write_linger_from_the_variable_or_the_options() {
    assert_eq!(
        config(&[], None).options.write_linger,
        Duration::from_millis(50)
    );
    let c = config(&[("RUNNER_NATS_WRITE_LINGER", "0")], None);
    assert_eq!(c.options.write_linger, Duration::ZERO, "off");
    let c = config(&[("RUNNER_NATS_WRITE_LINGER", "0.005")], None);
    assert_eq!(c.options.write_linger, Duration::from_millis(5));
    let c = config(&[], Some(json!({"nats_options": {"write_linger": 0.01}})));
    assert_eq!(c.options.write_linger, Duration::from_millis(10));
    let c = config(&[("RUNNER_NATS_WRITE_LINGER", "30")], None);
    assert_eq!(c.options.write_linger, Duration::from_secs(1), "capped");
    let (text, _, _) = only_issue(&[("RUNNER_NATS_WRITE_LINGER", "soon")], None);
    assert_eq!(
        text,
        "RUNNER_NATS_WRITE_LINGER: \"soon\" is not a number of seconds (fractions allowed); using the default (0.05)"
    );
}

#[test]
fn variables_that_are_not_utf8_are_said_when_they_are_ours() {
    use std::os::unix::ffi::OsStringExt;
    let bad = || std::ffi::OsString::from_vec(b"caf\xe9=1".to_vec());
    let (env, issues) = environment([
        ("RUNNER_NATS_HEADERS".into(), bad()),
        ("OTHER".into(), bad()),
        ("RUNNER_NATS_SUBJECT_ID".into(), "s".into()),
    ]);
    assert_eq!(
        env,
        HashMap::from([("RUNNER_NATS_SUBJECT_ID".to_owned(), "s".to_owned())])
    );
    let shown: Vec<String> = issues
        .iter()
        .map(|i| format!("{}: {}", i.source, i.problem))
        .collect();
    assert_eq!(shown, ["RUNNER_NATS_HEADERS: not valid UTF-8; ignored"]);
}

//! Replays every committed fuzz corpus and regression input through the same entry points
//! the fuzz targets call, so that CI guards against regressions without a fuzzer.

use std::path::Path;

use ansible_runner_nats::fuzzing;

fn replay(target: &str, check: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut count = 0;
    for dir in [
        root.join("corpus").join(target),
        root.join("regressions").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| check(&data));
            assert!(outcome.is_ok(), "{target}: {} fails", path.display());
            count += 1;
        }
    }
    assert!(count > 0, "no corpus for {target}");
}

#[test]
fn server_ops() {
    replay("server_ops", fuzzing::server_ops);
}

#[test]
fn client_ops() {
    replay("client_ops", fuzzing::client_ops);
}

#[test]
fn round_trip() {
    replay("round_trip", fuzzing::round_trip);
}

#[test]
fn header_block() {
    replay("header_block", fuzzing::header_block);
}

#[test]
fn creds() {
    replay("creds", fuzzing::creds);
}

#[test]
fn server_url() {
    replay("server_url", fuzzing::server_url);
}

#[test]
fn emitter_config() {
    replay("emitter_config", fuzzing::emitter_config);
}

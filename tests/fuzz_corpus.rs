//! Replays every committed fuzz corpus and regression input through the same entry points
//! the fuzz targets call, so that CI guards against regressions without a fuzzer.
//!
//! The targets are those `fuzz/Cargo.toml` declares. Each must have a replay below, a
//! one-line file in `fuzz/fuzz_targets/` calling the `fuzzing` function of its name, and a
//! non-empty `fuzz/corpus/<target>`; `fuzz/regressions/<target>` is optional. Every
//! directory of `fuzz/corpus/` and `fuzz/regressions/` must be a target's.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use ansible_runner_nats::fuzzing;

/// A target's entry point in `fuzzing`.
type Check = fn(&[u8]);

/// The entry point of each target.
const REPLAYS: &[(&str, Check)] = &[
    ("server_ops", fuzzing::server_ops),
    ("client_ops", fuzzing::client_ops),
    ("round_trip", fuzzing::round_trip),
    ("header_block", fuzzing::header_block),
    ("creds", fuzzing::creds),
    ("server_url", fuzzing::server_url),
    ("emitter_config", fuzzing::emitter_config),
    ("jetstream_ack", fuzzing::jetstream_ack),
    ("subject", fuzzing::subject),
    ("url_credentials", fuzzing::url_credentials),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The `[[bin]]` targets of `fuzz/Cargo.toml`: name and path.
fn declared_targets() -> Vec<(String, String)> {
    let manifest = fuzz_dir().join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .unwrap_or_else(|e| panic!("{}: {e}", manifest.display()));
    let mut targets = Vec::new();
    let mut in_bin = false;
    let (mut name, mut path) = (None, None);
    let mut finish = |name: &mut Option<String>, path: &mut Option<String>| {
        if let (Some(n), Some(p)) = (name.take(), path.take()) {
            targets.push((n, p));
        }
    };
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            finish(&mut name, &mut path);
            in_bin = line == "[[bin]]";
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim().trim_matches('"').to_owned();
        match key.trim() {
            "name" if in_bin => name = Some(value),
            "path" if in_bin => path = Some(value),
            _ => {}
        }
    }
    finish(&mut name, &mut path);
    targets
}

/// The entries of `dir`; `None` when it does not exist and `missing_ok`.
fn entries(dir: &Path, missing_ok: bool) -> Option<Vec<PathBuf>> {
    let read = match std::fs::read_dir(dir) {
        Ok(read) => read,
        Err(e) if missing_ok && e.kind() == ErrorKind::NotFound => return None,
        Err(e) => panic!("{}: {e}", dir.display()),
    };
    let mut paths: Vec<PathBuf> = read
        .map(|entry| {
            entry
                .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
                .path()
        })
        .collect();
    paths.sort();
    Some(paths)
}

/// Runs each of `inputs` through `check`; the ones that fail.
fn replay(target: &str, check: Check, inputs: &[PathBuf]) -> Vec<String> {
    let mut failures = Vec::new();
    for path in inputs {
        assert!(path.is_file(), "{target}: {} is not a file", path.display());
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if std::panic::catch_unwind(|| check(&data)).is_err() {
            failures.push(format!("{target}: {} fails", path.display()));
        }
    }
    failures
}

#[test]
fn every_target_replays_its_corpus_and_regressions() {
    let root = fuzz_dir();
    let declared = declared_targets();
    assert!(!declared.is_empty(), "no [[bin]] in fuzz/Cargo.toml");
    let names: BTreeSet<&str> = declared.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.len(), declared.len(), "a target is declared twice");
    let replayed: BTreeSet<&str> = REPLAYS.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names, replayed,
        "the targets of fuzz/Cargo.toml (left) and the replays of this test (right) differ"
    );

    // Each target is one line into the `fuzzing` function of its name, and every file in
    // fuzz_targets/ is a target.
    let mut sources = BTreeSet::new();
    for (name, path) in &declared {
        let file = root.join(path);
        let text = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{name}: {}: {e}", file.display()));
        assert!(
            text.contains(&format!("ansible_runner_nats::fuzzing::{name}(data)")),
            "{name}: {} does not call fuzzing::{name}",
            file.display()
        );
        sources.insert(file);
    }
    let files: BTreeSet<PathBuf> = entries(&root.join("fuzz_targets"), false)
        .unwrap_or_default()
        .into_iter()
        .collect();
    assert_eq!(
        files, sources,
        "fuzz/fuzz_targets/ holds a file no target uses"
    );

    // No corpus or regressions for a target that does not exist.
    for kind in ["corpus", "regressions"] {
        for dir in entries(&root.join(kind), kind == "regressions").unwrap_or_default() {
            let name = dir.file_name().unwrap_or_default().to_string_lossy();
            assert!(
                dir.is_dir() && names.contains(name.as_ref()),
                "fuzz/{kind}/{name} is not the directory of a target"
            );
        }
    }

    let mut failures = Vec::new();
    for (name, check) in REPLAYS {
        let corpus = entries(&root.join("corpus").join(name), false).unwrap_or_default();
        assert!(!corpus.is_empty(), "fuzz/corpus/{name} is empty");
        let regressions = entries(&root.join("regressions").join(name), true).unwrap_or_default();
        failures.extend(replay(name, *check, &corpus));
        failures.extend(replay(name, *check, &regressions));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

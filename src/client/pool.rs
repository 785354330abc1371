//! The server pool: the configured URLs plus those the servers advertise, in the order the
//! client tries them.

use std::collections::hash_map::RandomState;
use std::collections::HashSet;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use crate::url::{Scheme, ServerAddr};

/// One server the client may connect to.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub(crate) addr: ServerAddr,
    /// The TLS name to verify: the configured one, else the host's name; servers
    /// discovered by IP keep the name of the server that advertised them.
    pub(crate) tls_name: String,
    /// Failed attempts since the last successful connection to it.
    pub(crate) failures: u32,
    pub(crate) last_attempt: Option<Instant>,
    /// Advertised by a server (`connect_urls`) rather than configured: dropped once the
    /// servers stop advertising it.
    pub(crate) discovered: bool,
}

/// The servers in trying order. The one in use (or tried last) is moved to the back.
#[derive(Debug)]
pub(crate) struct Pool {
    entries: Vec<Entry>,
    randomize: bool,
    /// The TLS name configured for every server (`TlsOptions::server_name`).
    tls_name: Option<String>,
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
                discovered: false,
            })
            .collect();
        if randomize {
            // Fisher-Yates with the dependency-free generator.
            for i in (1..entries.len()).rev() {
                let j = (random_u64() % (i as u64 + 1)) as usize;
                entries.swap(i, j);
            }
        }
        Pool {
            entries,
            randomize,
            tls_name: tls_name.map(str::to_owned),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Takes in the servers a server advertises (`host:port` strings, its whole current
    /// list): adds those not known yet, with the scheme and credentials of `current`, and
    /// drops discovered ones no longer advertised (but `current`). A discovered host name
    /// is verified as itself; a discovered IP as `current`'s name, which is what its
    /// certificate carries. With randomizing, the order is shuffled again, `current` last.
    /// Returns how many were new. Linear in the lengths of both lists: it runs under the
    /// client's lock, and an INFO may advertise tens of thousands of servers.
    pub(crate) fn add_discovered(&mut self, urls: &[String], current: &Entry) -> usize {
        let advertised: Vec<ServerAddr> = urls.iter().filter_map(|u| u.parse().ok()).collect();
        let is_current =
            |e: &Entry| e.addr.host == current.addr.host && e.addr.port == current.addr.port;
        let listed: HashSet<(&str, u16)> = advertised
            .iter()
            .map(|a| (a.host.as_str(), a.port))
            .collect();
        self.entries.retain(|e| {
            !e.discovered || is_current(e) || listed.contains(&(e.addr.host.as_str(), e.addr.port))
        });
        let mut known: HashSet<(String, u16)> = self
            .entries
            .iter()
            .map(|e| (e.addr.host.clone(), e.addr.port))
            .collect();
        let mut added = 0;
        for mut addr in advertised {
            if !known.insert((addr.host.clone(), addr.port)) {
                continue;
            }
            if current.addr.scheme == Scheme::Tls {
                addr.scheme = Scheme::Tls;
            }
            addr.user.clone_from(&current.addr.user);
            addr.password.clone_from(&current.addr.password);
            addr.token.clone_from(&current.addr.token);
            let tls_name = match &self.tls_name {
                Some(fixed) => fixed.clone(),
                None if addr.host.parse::<std::net::IpAddr>().is_ok() => current.tls_name.clone(),
                None => addr.host.clone(),
            };
            self.entries.push(Entry {
                addr,
                tls_name,
                failures: 0,
                last_attempt: None,
                discovered: true,
            });
            added += 1;
        }
        if added > 0 && self.randomize {
            // So that the clients of a cluster do not all try the same server next.
            let at = self.entries.iter().position(is_current);
            let current = at.map(|i| self.entries.remove(i));
            for i in (1..self.entries.len()).rev() {
                let j = (random_u64() % (i as u64 + 1)) as usize;
                self.entries.swap(i, j);
            }
            self.entries.extend(current);
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
    fn a_discovered_host_name_is_verified_as_itself_unless_a_name_is_configured() {
        let list = addrs(&["tls://127.0.0.1:4222"]);
        for (configured, want) in [
            (None, "node-b.example.com"),
            (Some("cluster.example.com"), "cluster.example.com"),
        ] {
            let mut pool = Pool::new(&list, false, configured);
            let current = pool.next(None).unwrap();
            pool.add_discovered(&["node-b.example.com:4223".to_string()], &current);
            let b = pool
                .entries
                .iter()
                .find(|e| e.addr.host == "node-b.example.com")
                .unwrap();
            assert_eq!(b.tls_name, want);
        }
    }

    #[test]
    fn discovered_servers_no_longer_advertised_are_dropped() {
        let list = addrs(&["nats://a:1"]);
        let mut pool = Pool::new(&list, false, None);
        let current = pool.next(None).unwrap();
        let urls = |l: &[&str]| l.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
        assert_eq!(pool.add_discovered(&urls(&["b:2", "c:3"]), &current), 2);
        assert_eq!(pool.len(), 3);
        // c left the cluster; the configured a stays even though no longer advertised.
        assert_eq!(pool.add_discovered(&urls(&["b:2"]), &current), 0);
        let hosts: Vec<String> = (0..2).map(|_| pool.next(None).unwrap().addr.host).collect();
        assert_eq!(pool.len(), 2);
        assert!(
            hosts.contains(&"a".to_string()) && hosts.contains(&"b".to_string()),
            "{hosts:?}"
        );
    }

    #[test]
    fn with_randomizing_discovered_servers_are_shuffled_in_and_current_stays_last() {
        let list = addrs(&["nats://a:1"]);
        let mut pool = Pool::new(&list, true, None);
        let current = pool.next(None).unwrap();
        let urls: Vec<String> = (2..12).map(|p| format!("h{p}:{p}")).collect();
        assert_eq!(pool.add_discovered(&urls, &current), 10);
        assert_eq!(pool.entries.last().unwrap().addr.host, "a");
        assert_eq!(pool.len(), 11);
    }

    #[test]
    fn a_long_advertised_list_is_taken_once_each_and_dropped_again() {
        // 50,000 servers (an INFO of about 1 MiB), each listed twice: compared pairwise,
        // that took seconds under the client's lock.
        let list = addrs(&["nats://a:1"]);
        let mut pool = Pool::new(&list, false, None);
        let current = pool.next(None).unwrap();
        let many: Vec<String> = (0..50_000u32)
            .map(|i| {
                format!(
                    "127.{}.{}.{}:{}",
                    i >> 16,
                    (i >> 8) & 255,
                    i & 255,
                    4000 + i % 7
                )
            })
            .collect();
        let twice: Vec<String> = many.iter().chain(&many).cloned().collect();
        assert_eq!(pool.add_discovered(&twice, &current), 50_000);
        assert_eq!(pool.len(), 50_001);
        assert_eq!(pool.add_discovered(&many, &current), 0);
        assert_eq!(pool.add_discovered(&many[..10], &current), 0);
        assert_eq!(
            pool.len(),
            11,
            "the configured server and the ten still listed"
        );
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

//! Server addresses: `nats://[user:pass@|token@]host[:port]`, `tls://…`, or `host[:port]`.
//!
//! The port defaults to 4222. IPv6 literals go in brackets (`nats://[::1]:4222`).
//! Credentials in the URL are percent-decoded; they never appear in `Display`, `Debug`
//! or an error message.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Invalid};

/// How to talk to a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `nats://`: plain TCP, upgraded to TLS when the server requires it.
    Nats,
    /// `tls://`: TLS required.
    Tls,
}

/// One server to connect to.
#[derive(Clone, PartialEq, Eq)]
pub struct ServerAddr {
    /// The scheme.
    pub scheme: Scheme,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// User name from `user:pass@`.
    pub user: Option<String>,
    /// Password from `user:pass@`.
    pub password: Option<String>,
    /// Token from `token@`.
    pub token: Option<String>,
}

impl fmt::Debug for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerAddr")
            .field("scheme", &self.scheme)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("token", &self.token.as_ref().map(|_| "***"))
            .finish()
    }
}

impl fmt::Display for ServerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            Scheme::Nats => "nats",
            Scheme::Tls => "tls",
        };
        write!(f, "{scheme}://{}", self.host_port())
    }
}

impl ServerAddr {
    /// `host:port` for a socket connect, IPv6 in brackets.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// True for `tls://`.
    pub fn is_tls(&self) -> bool {
        self.scheme == Scheme::Tls
    }

    /// True when the URL carried a user, password or token.
    pub fn has_credentials(&self) -> bool {
        self.user.is_some() || self.password.is_some() || self.token.is_some()
    }
}

fn invalid(shown: &str, reason: &'static str) -> Error {
    Error::InvalidUrl(Invalid {
        value: shown.to_owned(),
        reason,
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl FromStr for ServerAddr {
    type Err = Error;

    fn from_str(url: &str) -> Result<ServerAddr, Error> {
        let url = url.trim();
        if url.is_empty() {
            return Err(invalid(url, "empty"));
        }
        let (scheme, rest) = match url.split_once("://") {
            Some((s, rest)) => {
                let scheme = match s.to_ascii_lowercase().as_str() {
                    "nats" => Scheme::Nats,
                    "tls" => Scheme::Tls,
                    "ws" | "wss" => {
                        return Err(invalid(
                            s,
                            "NATS over WebSocket is not supported (use nats:// or tls:// to the server's client port)",
                        ))
                    }
                    // Only a scheme is shown: text before a "://" that holds anything
                    // else may be part of a password (`me:se://cret@host`).
                    _ if s
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)) =>
                    {
                        return Err(invalid(s, "unsupported scheme (use nats:// or tls://)"))
                    }
                    _ => {
                        return Err(invalid(
                            "the URL (not shown)",
                            "what comes before :// is not a scheme (use nats:// or tls://)",
                        ))
                    }
                };
                (scheme, rest)
            }
            None => (Scheme::Nats, url),
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let (userinfo, hostport) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        // What errors may show: the URL without its credentials.
        let shown = format!(
            "{}://{hostport}",
            if scheme == Scheme::Tls { "tls" } else { "nats" }
        );
        if hostport.contains(['/', '?', '#']) {
            return Err(invalid(&shown, "a server URL has no path"));
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| invalid(&shown, "unclosed '[' in IPv6 address"))?;
            match after {
                "" => (host, None),
                p => (
                    host,
                    Some(
                        p.strip_prefix(':')
                            .ok_or_else(|| invalid(&shown, "invalid port"))?,
                    ),
                ),
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((h, _)) if h.contains(':') => {
                    return Err(invalid(&shown, "IPv6 addresses need brackets"))
                }
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(invalid(&shown, "missing host"));
        }
        let bracketed = hostport.starts_with('[');
        let valid_host = if bracketed {
            host.parse::<std::net::Ipv6Addr>().is_ok()
        } else {
            host.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        };
        if !valid_host {
            return Err(invalid(
                &shown,
                if bracketed {
                    "not an IPv6 address inside [ ]"
                } else {
                    "invalid host (letters, digits, '.', '-' and '_' only)"
                },
            ));
        }
        let port = match port {
            None => 4222,
            Some(p) if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) => {
                return Err(invalid(&shown, "invalid port"))
            }
            Some(p) => match p.parse::<u16>() {
                Ok(0) | Err(_) => return Err(invalid(&shown, "port out of range")),
                Ok(n) => n,
            },
        };
        let (mut user, mut password, mut token) = (None, None, None);
        if let Some(info) = userinfo {
            let decode = |s: &str| {
                percent_decode(s)
                    .ok_or_else(|| invalid(&shown, "bad percent-encoding in credentials"))
            };
            match info.split_once(':') {
                Some((u, p)) => {
                    user = Some(decode(u)?);
                    password = Some(decode(p)?);
                }
                None if !info.is_empty() => token = Some(decode(info)?),
                None => {}
            }
        }
        Ok(ServerAddr {
            scheme,
            host: host.to_owned(),
            port,
            user,
            password,
            token,
        })
    }
}

/// Parses a comma-separated list; blank items are skipped, an empty list is an error.
pub fn parse_server_list(list: &str) -> Result<Vec<ServerAddr>, Error> {
    let servers = parse_server_items(list)?
        .into_iter()
        .collect::<Result<Vec<ServerAddr>, Error>>()?;
    if servers.is_empty() {
        return Err(invalid(list, "no server in the list"));
    }
    Ok(servers)
}

/// Each item of a comma-separated list, parsed, blank ones skipped; an error for the
/// whole list when its commas seem to fall inside credentials
/// ([`split_inside_credentials`]), which is then not shown.
pub(crate) fn parse_server_items(list: &str) -> Result<Vec<Result<ServerAddr, Error>>, Error> {
    if split_inside_credentials(list) {
        return Err(invalid(
            "the server list (not shown)",
            "a ',' seems to be inside a password or token: write it %2C",
        ));
    }
    Ok(split_server_list(list)
        .map(|(n, item)| parse_list_item(item, n, list))
        .collect())
}

/// True when `list`'s commas seem to fall inside credentials: an item with an `@` and no
/// scheme, after items without an `@` of which one cannot be a server of its own (it has
/// a scheme, so it opened the URL, or it does not parse), as `nats://me:a,b@host` splits
/// into `nats://me:a` and `b@host`, and `me:a,b,c@host` into `me:a` (a host with port
/// `a`), `b` and `c@host`. Taken as servers, those would send part of the secret to a
/// name lookup and to the host as a token. (`host:1,t0ken@host:2` stays two servers: a
/// comma in a secret is written `%2C`.)
pub(crate) fn split_inside_credentials(list: &str) -> bool {
    let items: Vec<&str> = split_server_list(list).map(|(_, s)| s).collect();
    items.iter().enumerate().any(|(i, item)| {
        item.contains('@')
            && !item.contains("://")
            && items[..i]
                .iter()
                .rev()
                .take_while(|before| !before.contains('@'))
                .any(|before| before.contains("://") || before.parse::<ServerAddr>().is_err())
    })
}

/// The items of a comma-separated list, numbered from 1, blank ones skipped.
fn split_server_list(list: &str) -> impl Iterator<Item = (usize, &str)> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .enumerate()
        .map(|(i, s)| (i + 1, s))
}

/// Item `n` of the comma-separated `list`. A list that holds credentials may have been
/// split inside a password (`nats://me:a,b@host`), where what looks like a host is part
/// of it: such an item's error names its place in the list instead of showing it.
fn parse_list_item(item: &str, n: usize, list: &str) -> Result<ServerAddr, Error> {
    item.parse().map_err(|e| match e {
        Error::InvalidUrl(Invalid { reason, .. }) if list.contains('@') => {
            Error::InvalidUrl(Invalid {
                value: format!(
                    "server {n} of the list (not shown, as the list holds credentials; a ',' in one is written %2C)"
                ),
                reason,
            })
        }
        other => other,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ServerAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn valid_urls() {
        let a = parse("nats://127.0.0.1:4333");
        assert_eq!(
            (a.scheme, a.host.as_str(), a.port),
            (Scheme::Nats, "127.0.0.1", 4333)
        );
        let a = parse("localhost");
        assert_eq!((a.host.as_str(), a.port), ("localhost", 4222));
        let a = parse("TLS://example.com/");
        assert!(a.is_tls());
        assert_eq!(a.port, 4222);
        let a = parse("nats://[::1]:5000");
        assert_eq!((a.host.as_str(), a.port), ("::1", 5000));
        assert_eq!(a.host_port(), "[::1]:5000");
        assert_eq!(a.to_string(), "nats://[::1]:5000");
        let a = parse("nats://alice:p%40ss@host:1");
        assert_eq!(a.user.as_deref(), Some("alice"));
        assert_eq!(a.password.as_deref(), Some("p@ss"));
        assert!(a.has_credentials());
        let a = parse("nats://s3cr3t@host");
        assert_eq!(a.token.as_deref(), Some("s3cr3t"));
    }

    #[test]
    fn invalid_urls() {
        let table = [
            ("", "url: \"\": empty"),
            (
                "ws://host:1",
                "url: \"ws\": NATS over WebSocket is not supported (use nats:// or tls:// to the server's client port)",
            ),
            (
                "http://host:1",
                "url: \"http\": unsupported scheme (use nats:// or tls://)",
            ),
            ("nats://host:abc", "url: \"nats://host:abc\": invalid port"),
            ("nats://host:", "url: \"nats://host:\": invalid port"),
            (
                "nats://host:70000",
                "url: \"nats://host:70000\": port out of range",
            ),
            ("nats://host:0", "url: \"nats://host:0\": port out of range"),
            ("nats://:4222", "url: \"nats://:4222\": missing host"),
            (
                "nats://::1",
                "url: \"nats://::1\": IPv6 addresses need brackets",
            ),
            (
                "nats://host/path",
                "url: \"nats://host/path\": a server URL has no path",
            ),
            ("nats://u:pw@host:x", "url: \"nats://host:x\": invalid port"),
            // Without a scheme, the first "://" may be inside the password.
            (
                "me:se://cret@host",
                "url: \"the URL (not shown)\": what comes before :// is not a scheme (use nats:// or tls://)",
            ),
        ];
        for (url, want) in table {
            let e = url.parse::<ServerAddr>().unwrap_err();
            assert_eq!(e.to_string(), want, "{url}");
        }
    }

    #[test]
    fn a_comma_inside_credentials_refuses_the_list_unseen() {
        for list in [
            "nats://s3cr,et@127.0.0.1:1",
            "nats://alice:1234,5678@host",
            // Without a scheme: `alice:1234` is no server (port `1234x`), nor is `alice:s3cr`.
            "alice:1234x,5678@127.0.0.1:1",
            "alice:s3cr,1234,5678@127.0.0.1:1",
        ] {
            let text = parse_server_list(list).unwrap_err().to_string();
            for part in ["s3cr", "et@", "1234", "5678", "alice"] {
                assert!(!text.contains(part), "{text}");
            }
            assert!(text.contains("%2C"), "{text}");
        }
        // Lists of plain servers, or with whole credentials, are fine.
        assert_eq!(parse_server_list("nats://a:1,b:2").unwrap().len(), 2);
        // A server, then one with a token: nothing says the comma is not a separator.
        assert_eq!(parse_server_list("a:1, t0ken@b:2").unwrap().len(), 2);
        assert_eq!(
            parse_server_list("nats://u:p@a:1,nats://u:p@b:2")
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn a_password_split_at_a_comma_is_not_shown() {
        // Whatever item fails in a list that holds credentials is named by its place.
        let e = parse_server_list("nats://alice:pa@host:x,nats://b:1").unwrap_err();
        let text = e.to_string();
        assert!(!text.contains("pa@") && !text.contains("alice"), "{text}");
        assert!(text.contains("server 1 of the list"), "{text}");
        // Without credentials in the list, the item is shown as it is.
        let e = parse_server_list("nats://a:1,nats://b:x").unwrap_err();
        assert_eq!(e.to_string(), "url: \"nats://b:x\": invalid port");
        // Written %2C, the comma is part of the password.
        let l = parse_server_list("nats://alice:pa%2Css@host").unwrap();
        assert_eq!(l.len(), 1);
    }

    #[test]
    fn credentials_never_shown() {
        let a = parse("nats://user:topsecret@host:1");
        let b = parse("nats://tokensecret@host:1");
        for text in [format!("{a} {a:?}"), format!("{b} {b:?}")] {
            assert!(!text.contains("secret"), "{text}");
        }
    }

    #[test]
    fn lists() {
        let l = parse_server_list(" nats://a:1 , ,b:2,").unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[1].host, "b");
        assert!(parse_server_list(" , ").is_err());
        assert!(parse_server_list("a:1,ws://b").is_err());
    }
}

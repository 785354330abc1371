//! Request/reply on one inbox per connection.
//!
//! The first request subscribes `_INBOX.<random>.*` once; every request then publishes
//! with the reply subject `_INBOX.<random>.<token>` and waits for the reply whose last
//! subject token is its own. A reply carrying the status `503` and nothing else is the
//! server saying that nobody subscribes to the subject ([`Error::NoResponders`]): the
//! client asks for these in CONNECT (`no_responders`, with `headers`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::core::{ended, lock, Outlet, Phase, Shared, Sink, Sub, Waiter};
use super::{check_open, Client, Message};
use crate::error::{Error, Result};
use crate::headers::HeaderMap;
use crate::proto::ClientOp;
use crate::subject;

/// The status a server puts in the reply to a request nobody subscribes to.
pub const NO_RESPONDERS_STATUS: u16 = 503;

/// A request on its way: [`PendingReply::wait`] for its reply. Dropping it stops waiting
/// (a reply arriving later is discarded).
pub struct PendingReply {
    subject: String,
    token: String,
    rx: Receiver<Message>,
    /// Set when the server refused the request.
    denied: Arc<OnceLock<String>>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for PendingReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingReply")
            .field("subject", &self.subject)
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl PendingReply {
    /// The subject the request was sent to.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Waits up to `timeout` for the reply. Fails with [`Error::NoResponders`] when the
    /// server reported that nobody listens on the subject, with [`Error::PermissionDenied`]
    /// when it refused the request (this user may not publish to the subject, or use its
    /// reply subject), with [`Error::Timeout`] when no reply came, and with
    /// [`Error::Closed`] if the client closed meanwhile.
    pub fn wait(&self, timeout: Duration) -> Result<Message> {
        if !timeout.is_zero() {
            // Waiting on the reply: the request must not linger in the writer's batch.
            self.shared.write_now();
        }
        match self.rx.recv_timeout(timeout) {
            Ok(m) if is_no_responders(&m) => Err(Error::NoResponders {
                subject: self.subject.clone(),
            }),
            Ok(m) => Ok(m),
            Err(RecvTimeoutError::Timeout) => Err(Error::Timeout {
                what: "request",
                after: timeout,
            }),
            Err(RecvTimeoutError::Disconnected) => Err(ended(&self.denied)),
        }
    }

    /// The reply if it has arrived (same outcomes as [`PendingReply::wait`]).
    pub fn try_wait(&self) -> Option<Result<Message>> {
        match self.wait(Duration::ZERO) {
            Err(Error::Timeout { .. }) => None,
            other => Some(other),
        }
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        lock(&self.shared.replies).remove(&self.token);
    }
}

fn is_no_responders(m: &Message) -> bool {
    m.payload.is_empty()
        && m.headers
            .as_ref()
            .is_some_and(|h| h.status() == Some(NO_RESPONDERS_STATUS))
}

/// A token unique within this process: a counter, base-36.
fn next_token() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let mut n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut out = Vec::new();
    while n > 0 {
        let d = (n % 36) as u8;
        out.push(if d < 10 { b'0' + d } else { b'a' + d - 10 });
        n /= 36;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// `_INBOX.` and 22 random alphanumerics, as the official clients' inbox prefixes.
fn new_inbox_prefix() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::from("_INBOX.");
    let mut bits = super::pool::random_u64();
    for i in 0..22 {
        if i % 10 == 0 {
            bits = super::pool::random_u64();
        }
        out.push(ALPHABET[(bits % 62) as usize] as char);
        bits /= 62;
    }
    out
}

impl Client {
    /// Sends `payload` to `subject` as a request and waits up to `timeout` for one reply.
    /// See [`PendingReply::wait`] for the errors.
    pub fn request(&self, subject: &str, payload: &[u8], timeout: Duration) -> Result<Message> {
        self.request_async(subject, None, payload)?.wait(timeout)
    }

    /// [`Client::request`] with headers.
    pub fn request_with_headers(
        &self,
        subject: &str,
        headers: &HeaderMap,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<Message> {
        self.request_async(subject, Some(headers), payload)?
            .wait(timeout)
    }

    /// Sends a request and returns at once; the reply is collected with
    /// [`PendingReply::wait`]. Many requests can be in flight on the one inbox.
    pub fn request_async(
        &self,
        subject: &str,
        headers: Option<&HeaderMap>,
        payload: &[u8],
    ) -> Result<PendingReply> {
        subject::validate_publish(subject)?;
        let prefix = self.inbox()?;
        let token = next_token();
        let reply = format!("{prefix}.{token}");
        let (tx, rx) = mpsc::sync_channel(1);
        let denied = Arc::new(OnceLock::new());
        let waiter = Waiter {
            subject: subject.to_owned(),
            outlet: Outlet {
                tx,
                denied: Arc::clone(&denied),
            },
        };
        lock(&self.shared().replies).insert(token.clone(), waiter);
        let pending = PendingReply {
            subject: subject.to_owned(),
            token,
            rx,
            denied,
            shared: Arc::clone(&self.inner.shared),
        };
        // On failure `pending` is dropped, which forgets the token.
        self.enqueue(subject, Some(&reply), headers, payload)?;
        Ok(pending)
    }

    /// The inbox prefix, subscribing `<prefix>.*` on first use.
    fn inbox(&self) -> Result<String> {
        let shared = self.shared();
        let mut inbox = lock(&shared.inbox);
        if let Some(prefix) = inbox.as_ref() {
            return Ok(prefix.clone());
        }
        let prefix = new_inbox_prefix();
        let pattern = format!("{prefix}.*");
        let sid = shared.next_sid.fetch_add(1, Ordering::Relaxed);
        let mut st = shared.state();
        check_open(&st)?;
        lock(&shared.subs).insert(
            sid,
            Sub::new(&pattern, None, Sink::Replies, Arc::new(AtomicU64::new(0))),
        );
        // While reconnecting, the next connection subscribes from the table.
        if st.phase == Phase::Connected {
            let op = ClientOp::Sub {
                subject: &pattern,
                queue_group: None,
                sid,
            };
            shared.queue_control(&mut st, op, true);
        }
        *inbox = Some(prefix.clone());
        Ok(prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_distinct_and_subject_safe() {
        let a = next_token();
        let b = next_token();
        assert_ne!(a, b);
        for t in [&a, &b] {
            assert!(!t.is_empty() && t.bytes().all(|c| c.is_ascii_alphanumeric()));
        }
    }

    #[test]
    fn inbox_prefixes_look_like_the_official_ones() {
        let p = new_inbox_prefix();
        assert_eq!(p.len(), "_INBOX.".len() + 22);
        assert!(p["_INBOX.".len()..]
            .bytes()
            .all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(p, new_inbox_prefix());
    }

    #[test]
    fn a_bare_503_is_no_responders() {
        let h = HeaderMap::with_status(503, None).unwrap();
        let m = Message {
            subject: "_INBOX.x.1".into(),
            reply: None,
            headers: Some(h),
            payload: Vec::new(),
        };
        assert!(is_no_responders(&m));
        let with_payload = Message {
            payload: b"x".to_vec(),
            ..m
        };
        assert!(!is_no_responders(&with_payload));
    }
}

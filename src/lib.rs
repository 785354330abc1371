//! A synchronous, dependency-light NATS client, and the Ansible Runner event emitter built
//! on it.
//!
//! No async runtime: a [`client::Client`] is a handle to two plain threads (a writer that
//! also supervises reconnects, and a reader per connection). Publishing encodes into a
//! bounded buffer and returns; [`client::Client::flush`] waits for the server's
//! confirmation; [`client::Client::close`] sends everything, confirms it, and joins the
//! threads.
//!
//! # Publishing and subscribing
//!
//! ```no_run
//! use std::time::Duration;
//! use ansible_runner_nats::client::Options;
//!
//! let client = Options::new()
//!     .servers("nats://127.0.0.1:4222")?
//!     .name("example")
//!     .connect()?;
//!
//! let sub = client.subscribe("greetings.>")?;
//! client.publish("greetings.world", b"hello")?;
//! client.flush(Duration::from_secs(2))?;
//!
//! let msg = sub.next_timeout(Duration::from_secs(2))?;
//! assert_eq!(msg.payload, b"hello");
//! client.close()?;
//! # Ok::<(), ansible_runner_nats::Error>(())
//! ```
//!
//! # Staying connected
//!
//! A lost connection is replaced from the server pool (the URLs given plus those the
//! servers advertise); publishes made meanwhile wait in a bounded reconnect buffer and are
//! sent first, in order, on the new connection. With
//! [`client::Options::resend_unconfirmed`], messages written to a connection that died
//! before the server confirmed them are written again: at-least-once instead of NATS's
//! usual at-most-once. Keep-alive PINGs detect stalled connections, and a server entering
//! lame duck mode is left before it closes the connection. [`client::Event`]s report all
//! of it.
//!
//! # The protocol itself
//!
//! [`proto`] is the codec both directions use, with no I/O: handy for tests and tools.
//!
//! ```
//! use ansible_runner_nats::proto::{encode_pub, parse_server_op, ServerOp, Status};
//!
//! let mut wire = Vec::new();
//! encode_pub(&mut wire, "events.1", None, None, b"{}");
//! assert_eq!(wire, b"PUB events.1 2\r\n{}\r\n");
//!
//! let Status::Complete((op, used)) = parse_server_op(b"MSG events.1 7 2\r\n{}\r\n", 4096)? else {
//!     unreachable!("the buffer holds a whole message");
//! };
//! assert_eq!(used, 22);
//! assert!(matches!(op, ServerOp::Msg(m) if m.sid == 7 && m.payload == b"{}"));
//! # Ok::<(), ansible_runner_nats::ProtoError>(())
//! ```
//!
//! # Ansible Runner
//!
//! [`emitter`] publishes every status and event of a run on
//! `pub.ansible.runner.{subject_id}.{runner_ident}.event` / `.status`, configured as the
//! Python `ansible-runner-nats` plugin is; the `python/` directory of the repository wraps
//! it as an ansible-runner plugin.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod auth;
pub mod client;
pub mod emitter;
pub mod error;
mod files;
#[doc(hidden)]
pub mod fuzzing;
pub mod headers;
pub mod jetstream;
pub mod proto;
pub mod raw;
pub mod subject;
pub mod tls;
pub mod url;
#[doc(hidden)]
pub mod words;

pub use error::{Error, ProtoError, Result};

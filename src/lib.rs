//! A synchronous, dependency-light NATS client, and an Ansible Runner event emitter built on it.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod auth;
pub mod client;
pub mod emitter;
pub mod error;
pub mod headers;
pub mod proto;
pub mod subject;
pub mod tls;
pub mod url;

pub use error::{Error, ProtoError, Result};

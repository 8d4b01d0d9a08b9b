//! Test harness: starts the real `portico` binary on ephemeral loopback ports, in-process HTTP
//! origins, and clients. Every server listens on 127.0.0.1:0; nothing uses a fixed port.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

pub mod config;
pub mod dns;
pub mod metrics;
pub mod net;
pub mod origin;
pub mod process;

pub use config::{Config, Listener, Route, Upstream};
pub use metrics::*;
pub use net::*;
pub use origin::*;
pub use process::*;

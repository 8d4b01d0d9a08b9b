//! Portico: an edge reverse proxy and load balancer built on pingora.
//!
//! The crate is organised in layers; a module uses only modules of lower layers (or its own,
//! without cycles: `scripts/module-graph` checks the top-level graph in CI):
//! 1. capabilities, each owning its data and decisions: `upstream` (backends, region tiers,
//!    balancing, limits, health state), `replay` (fly-replay instructions, targets, cache),
//!    `sticky`, `statics` (file resolution, cache, types, negotiation), `ratelimit`,
//!    `compress`, `acme`, `tls`, `metrics`, `accesslog`, `wsclose`, `interned`;
//! 2. runtime state: `state` (the per-generation snapshot in an `ArcSwap` and the
//!    process-wide `Shared` holding the capabilities' runtime parts), `load` (reading and
//!    checking a configuration);
//! 3. tasks over the state: `discovery` (DNS), `health` (active checks, passive ejection),
//!    `reload`, `systemd`;
//! 4. the request path: `proxy` (Portico's per-request decisions; HTTP/2 through pingora's
//!    `ProxyHttp`) and `engine` (Portico's own HTTP/1.1 data plane, which calls them);
//! 5. the process: `server` (listeners, lifecycle, signals, upgrade), `admin`,
//!    `doctor`, `healthcheck`;
//! 6. `cli`: the `portico` command.
//!
//! The modules are private to the crate (so the compiler reports what nothing uses): `cargo doc
//! --document-private-items` renders them.
//!
//! Configuration (file model, validation, routing) lives in the `portico-config` crate.

pub(crate) mod accesslog;
pub(crate) mod acme;
pub(crate) mod admin;
pub(crate) mod buildinfo;
pub mod cli;
pub(crate) mod compress;
pub(crate) mod discovery;
pub(crate) mod doctor;
pub(crate) mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub(crate) mod health;
pub(crate) mod healthcheck;
pub(crate) mod interned;
pub(crate) mod load;
pub(crate) mod logging;
pub(crate) mod metrics;
pub(crate) mod proxy;
pub(crate) mod proxyproto;
pub(crate) mod ratelimit;
pub(crate) mod reload;
pub(crate) mod replay;
pub(crate) mod server;
pub(crate) mod sockopt;
pub(crate) mod state;
pub(crate) mod statics;
pub(crate) mod statuspage;
pub(crate) mod sticky;
pub(crate) mod systemd;
pub(crate) mod tls;
pub(crate) mod tls_client;
pub(crate) mod upstream;
pub(crate) mod wsclose;

/// What the benchmarks (`benches/hot_paths.rs`) and the socket tests reach inside the
/// library. Everything else is crate-private, so the compiler reports what nothing uses;
/// this is not a stable API.
#[doc(hidden)]
pub mod internals {
    pub use crate::compress::{Coding, Encoder};
    pub use crate::metrics::Metrics;
    pub use crate::replay::instruction::parse_header;
    pub use crate::server::listener::bind;
    pub use crate::upstream::select::hash_key;
    pub use crate::upstream::{UpstreamRt, Want};
}

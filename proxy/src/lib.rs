//! Portico: an edge reverse proxy and load balancer built on pingora.
//!
//! The crate is organised in layers; a module uses only modules of lower layers (or its own,
//! without cycles: `scripts/module-graph` checks the top-level graph in CI):
//! 1. capabilities, each owning its data and decisions: [`upstream`] (backends, region tiers,
//!    balancing, limits, health state), [`replay`] (fly-replay instructions, targets, cache),
//!    [`sticky`], [`statics`] (file resolution, cache, types, negotiation), [`ratelimit`],
//!    [`compress`], [`acme`], [`tls`], [`metrics`], [`accesslog`], [`wsclose`];
//! 2. runtime state: [`state`] (the per-generation snapshot in an `ArcSwap` and the
//!    process-wide `Shared` holding the capabilities' runtime parts), [`load`] (reading and
//!    checking a configuration);
//! 3. tasks over the state: [`discovery`] (DNS), [`health`] (active checks, passive ejection),
//!    [`reload`], [`systemd`];
//! 4. the request path: [`proxy`] (Portico's per-request decisions; HTTP/2 through pingora's
//!    `ProxyHttp`) and [`engine`] (Portico's own HTTP/1.1 data plane, which calls them);
//! 5. the process: [`server`] (listeners, lifecycle, signals, upgrade), [`admin`],
//!    [`doctor`], [`healthcheck`];
//! 6. [`cli`]: the `portico` command.
//!
//! Configuration (file model, validation, routing) lives in the `portico-config` crate.

pub mod accesslog;
pub mod acme;
pub mod admin;
pub mod buildinfo;
pub mod cli;
pub mod compress;
pub mod discovery;
pub mod doctor;
pub mod engine;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod healthcheck;
pub mod load;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod proxyproto;
pub mod ratelimit;
pub mod reload;
pub mod replay;
pub mod server;
pub mod sockopt;
pub mod state;
pub mod statics;
pub mod statuspage;
pub mod sticky;
pub mod systemd;
pub mod tls;
pub mod tls_client;
pub mod upstream;
pub mod wsclose;

//! Portico: an edge reverse proxy and load balancer built on pingora.
//!
//! The crate is organised by what each part does:
//! - [`server`]: process lifecycle, listeners, connections, signals;
//! - [`proxy`]: the request path (pingora's `ProxyHttp`), forwarding headers, responses;
//! - [`upstream`]: backends, region tiers, balancing, concurrency limits and the wait queue;
//! - [`discovery`]: DNS discovery of backends (plain names and Fly's `.internal`);
//! - [`health`]: active health checks and passive ejection;
//! - [`replay`]: fly-replay instructions, replay targets, the replay cache;
//! - [`state`]: the per-generation snapshot held in an `ArcSwap`;
//! - [`tls`]: certificates and SNI;
//! - [`admin`], [`metrics`], [`logging`], [`systemd`], [`doctor`], [`healthcheck`]: operations;
//! - [`cli`]: the `portico` command.
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

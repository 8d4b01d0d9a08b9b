//! The runtime model: a validated, immutable configuration made of real types.
//!
//! Everything here has passed validation: addresses are parsed, durations are `Duration`s,
//! names are resolved to indices, routes are compiled. The proxy builds its running state
//! from a [`Config`] and never re-checks it.

mod listeners;
mod routes;
mod upstreams;

use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

use crate::routing::RouteTable;

pub use listeners::*;
pub use routes::*;
pub use upstreams::*;

/// A complete, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where this configuration came from (a path, or `<embedded default>`).
    pub source_name: String,
    /// Process-wide settings.
    pub server: Server,
    /// Client-facing listeners, in file order.
    pub listeners: Vec<Listener>,
    /// The admin listener, unless disabled.
    pub admin: Option<Admin>,
    /// The resolver used for discovery.
    pub dns: Dns,
    /// fly-replay handling.
    pub replay: Replay,
    /// Upstream pools; [`Route::upstream`] indexes into this list.
    pub upstreams: Vec<Upstream>,
    /// Compiled routing table.
    pub routes: RouteTable,
}

impl Config {
    /// The upstream with this name.
    pub fn upstream(&self, name: &str) -> Option<&Upstream> {
        self.upstreams.iter().find(|u| u.name == name)
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable `key=value` text.
    Text,
    /// One JSON object per line.
    Json,
}

/// Access log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLogFormat {
    /// `key=value` text, like the other logs.
    Text,
    /// One JSON object per line.
    Json,
    /// The NCSA combined format of Apache and nginx, for the tools that read it.
    Combined,
}

/// `[server]`.
#[derive(Debug, Clone)]
pub struct Server {
    /// Name used in `Via` and in logs.
    pub name: String,
    /// Region this proxy runs in (`FLY_REGION` style).
    pub region: String,
    /// Worker threads for the proxy runtime.
    pub threads: usize,
    /// Whether idle worker threads steal work from busy ones.
    pub work_stealing: bool,
    /// How long a graceful shutdown waits for in-flight work before closing it.
    pub shutdown_timeout: Duration,
    /// On shutdown or upgrade, how long an idle keep-alive connection waits for a request
    /// its client may already have sent (served with `Connection: close`) before it closes.
    pub drain_grace: Duration,
    /// Log filter (`info`, `debug`, `portico=debug,pingora=warn`, ...).
    pub log_level: String,
    /// Log line format.
    pub log_format: LogFormat,
    /// Whether one access-log line is written per request.
    pub access_log: bool,
    /// Format of access log lines (default: `log_format`'s).
    pub access_log_format: AccessLogFormat,
    /// Peers whose `X-Forwarded-*` headers are trusted.
    pub trusted_proxies: Vec<IpNet>,
    /// Whether `Fly-Client-IP`, `Fly-Region`, `Fly-Forwarded-Port`, `Fly-Request-Id` are added.
    pub fly_headers: bool,
    /// Header carrying the request id (lower case).
    pub request_id_header: String,
    /// Soft `RLIMIT_NOFILE` to set at start; `None` raises it to the hard limit.
    pub max_open_files: Option<u64>,
    /// Remote regions in order of preference, used when latency is not yet measured.
    pub region_order: Vec<String>,
    /// Whether clients' `fly-prefer-*` / `fly-force-*` routing headers are honoured.
    pub routing_headers: bool,
    /// Region of the writable primary (`PRIMARY_REGION`), for write routing.
    pub primary_region: Option<String>,
}

/// `[replay]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    /// Whether `fly-replay` from upstreams is acted on (else passed to the client as is).
    pub enabled: bool,
    /// Largest request body kept for replaying.
    pub max_body: u64,
    /// Entries the replay cache holds at most.
    pub cache_size: usize,
}

/// Which requests write routing sends to the primary region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRouting {
    /// Methods routed to the primary (upper case).
    pub methods: Vec<String>,
}

impl WriteRouting {
    /// Whether `method` is a write.
    pub fn is_write(&self, method: &str) -> bool {
        self.methods.iter().any(|m| m == method)
    }
}

/// What a session-based replay cache rule keys on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionKey {
    /// A cookie's value.
    Cookie(String),
    /// A request header's value (lower-case name).
    Header(String),
}

/// A session-based replay cache rule of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayCacheRule {
    /// Path prefix it applies to.
    pub path: String,
    /// The session identity.
    pub key: SessionKey,
    /// How long an entry lives.
    pub ttl: Duration,
}

/// `[dns]`: how discovered upstreams are resolved and refreshed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    /// Name servers; empty means the system's (`/etc/resolv.conf`).
    pub servers: Vec<SocketAddr>,
    /// Timeout of one query.
    pub timeout: Duration,
    /// Attempts per query.
    pub attempts: usize,
    /// Shortest time between refreshes, whatever the record TTL says.
    pub min_ttl: Duration,
    /// Longest time between refreshes.
    pub max_ttl: Duration,
    /// How long an empty or NXDOMAIN answer is ignored before it empties the backend set.
    pub stale_for: Duration,
    /// How long start-up waits for the first answers before serving anyway.
    pub startup_wait: Duration,
}

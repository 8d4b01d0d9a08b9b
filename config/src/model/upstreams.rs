//! Upstreams: backends, discovery, balancing, socket options, limits, health checks.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;

/// What a discovery entry resolves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DiscoverySource {
    /// A and AAAA records of a name.
    Dns {
        /// The name (`app.internal`, `api.service.consul`).
        name: String,
        /// Region of every address found, when known.
        region: Option<String>,
    },
    /// Fly's private network: `vms.<app>.internal` TXT, then each instance's AAAA.
    Fly {
        /// The app name.
        app: String,
    },
}

/// One discovery entry of an upstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Discovery {
    /// What to resolve.
    pub source: DiscoverySource,
    /// Port of every discovered backend.
    pub port: u16,
}

impl std::fmt::Display for Discovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.source {
            DiscoverySource::Dns { name, .. } => write!(f, "dns:{name}"),
            DiscoverySource::Fly { app } => write!(f, "fly:{app}"),
        }
    }
}

/// TCP keepalive probes on an idle connection (`SO_KEEPALIVE`, `TCP_KEEPIDLE`,
/// `TCP_KEEPINTVL`, `TCP_KEEPCNT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpKeepalive {
    /// Idle time before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped.
    pub count: u32,
}

/// Socket options of a connection, accepted or made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketOptions {
    /// `TCP_NODELAY`: no Nagle delay on small writes.
    pub nodelay: bool,
    /// Keepalive probes, or none.
    pub keepalive: Option<TcpKeepalive>,
    /// `SO_SNDBUF` in bytes (unset: the kernel autotunes).
    pub send_buffer: Option<usize>,
    /// `SO_RCVBUF` in bytes (unset: the kernel autotunes).
    pub recv_buffer: Option<usize>,
}

impl Default for SocketOptions {
    fn default() -> Self {
        Self {
            nodelay: true,
            keepalive: Some(crate::defaults::TCP_KEEPALIVE),
            send_buffer: None,
            recv_buffer: None,
        }
    }
}

/// Load-balancing algorithm of an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Balance {
    /// Each backend in turn.
    RoundRobin,
    /// Fewest requests in flight, between two random choices.
    LeastRequests,
    /// Uniformly at random.
    Random,
    /// Consistent hashing on [`Upstream::hash_on`].
    ConsistentHash,
}

impl Balance {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::RoundRobin => "round_robin",
            Balance::LeastRequests => "least_requests",
            Balance::Random => "random",
            Balance::ConsistentHash => "consistent_hash",
        }
    }
}

/// What a consistent hash is computed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashKey {
    /// A request header (lower-case name).
    Header(String),
    /// A cookie.
    Cookie(String),
    /// The client's IP address (after trusted-proxy resolution).
    ClientIp,
    /// The request path.
    Path,
    /// A query-string parameter.
    Query(String),
}

/// What the concurrency limits count (fly.toml's `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConcurrencyKind {
    /// Requests in flight to a backend.
    Requests,
    /// Connections in use to a backend. For HTTP/1.1 each request in flight uses one, so the
    /// count is the same as `Requests`; upgraded connections count until they close.
    Connections,
}

/// Per-backend concurrency limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Concurrency {
    /// What is counted.
    pub kind: ConcurrencyKind,
    /// Above this a backend is used only when every other one is above its own.
    pub soft_limit: u32,
    /// At this a backend takes no new work.
    pub hard_limit: u32,
}

/// Where a static backend is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BackendAddr {
    /// An IP address and port.
    Ip(SocketAddr),
    /// A host name, resolved through discovery and refreshed like `discovery` entries.
    Name {
        /// Host name.
        host: String,
        /// Port.
        port: u16,
    },
}

impl std::fmt::Display for BackendAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendAddr::Ip(a) => write!(f, "{a}"),
            BackendAddr::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

/// One statically configured backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Address.
    pub address: BackendAddr,
    /// Stable identity (instance id); defaults to the address.
    pub id: Option<String>,
    /// Region the backend runs in.
    pub region: Option<String>,
    /// Relative weight for round robin and hashing.
    pub weight: u32,
}

/// Transport to an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// SNI and name verified in the certificate.
    pub server_name: String,
    /// Skip certificate verification (self-signed backends).
    pub skip_verify: bool,
    /// PEM file of the CAs that sign the backends' certificates (instead of the system's
    /// trust store): private PKIs, service meshes.
    pub ca: Option<std::path::PathBuf>,
}

/// One upstream pool.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Name from the config.
    pub name: String,
    /// Static backends.
    pub backends: Vec<Backend>,
    /// Discovered backends (host names in `backends` are discovered too).
    pub discovery: Vec<Discovery>,
    /// Balancing algorithm.
    pub balance: Balance,
    /// Hash key for `consistent_hash`.
    pub hash_on: Option<HashKey>,
    /// Per-backend concurrency limits.
    pub concurrency: Concurrency,
    /// How long a request waits for a backend below its hard limit.
    pub queue_timeout: Duration,
    /// How many requests may wait at once.
    pub max_queue: usize,
    /// TCP (and TLS) connect timeout.
    pub connect_timeout: Duration,
    /// Timeout of each read from the backend.
    pub read_timeout: Duration,
    /// Timeout of each write to the backend.
    pub write_timeout: Duration,
    /// How long an idle pooled connection is kept.
    pub idle_timeout: Duration,
    /// Further backends tried after a failed connect.
    pub retries: usize,
    /// TLS to the backends, when `protocol = "https"`.
    pub tls: Option<UpstreamTls>,
    /// HTTP/2 to the backends for HTTP/2 clients: offered through ALPN to TLS backends, spoken
    /// with prior knowledge (h2c) to plain ones.
    pub http2: bool,
    /// Host header sent upstream instead of the client's.
    pub host_header: Option<String>,
    /// PROXY protocol header sent first on every connection to the backends.
    pub send_proxy_protocol: Option<ProxyProtocolVersion>,
    /// Active health checks.
    pub checks: Vec<Check>,
    /// New backends take traffic before their first passing check.
    pub start_healthy: bool,
    /// What to do when no backend is healthy.
    pub all_unhealthy: AllUnhealthy,
    /// Passive ejection after failures seen on real traffic.
    pub passive: Passive,
    /// Write routing to the primary region.
    pub writes: Option<WriteRouting>,
    /// Options of connections to the backends.
    pub socket: SocketOptions,
}

/// What an upstream does when every backend is unhealthy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllUnhealthy {
    /// Use them all anyway, as a last resort.
    FailOpen,
    /// Answer 503 saying that every backend is unhealthy.
    Refuse,
}

/// Protocol of an HTTP check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// An HTTP request; healthy when the status is expected.
    Http,
    /// A TCP connect; healthy when it succeeds.
    Tcp,
}

/// One active health check.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Check {
    /// HTTP or TCP.
    pub kind: CheckKind,
    /// Request path (HTTP).
    pub path: String,
    /// Request method (HTTP).
    pub method: String,
    /// Time between checks of one backend.
    pub interval: Duration,
    /// Time allowed for one check.
    pub timeout: Duration,
    /// After a backend appears, failures are not counted for this long.
    pub grace_period: Duration,
    /// TLS for HTTP checks.
    pub https: bool,
    /// SNI and verified name for HTTPS checks (default: the upstream's `tls_server_name` when
    /// set on an HTTPS upstream, else the backend's address).
    pub tls_server_name: Option<String>,
    /// Do not verify the certificate of HTTPS checks.
    pub tls_skip_verify: bool,
    /// The upstream's `tls_ca`: checks trust what traffic trusts.
    pub tls_ca: Option<std::path::PathBuf>,
    /// Extra request headers (HTTP).
    pub headers: Vec<(String, String)>,
    /// Port to check instead of the backend's.
    pub port: Option<u16>,
    /// Consecutive passes to become healthy.
    pub rise: u32,
    /// Consecutive failures to become unhealthy.
    pub fall: u32,
    /// Healthy statuses (HTTP); codes 100..=599.
    pub expect_status: Vec<StatusMatch>,
}

/// An accepted status: one code or a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusMatch {
    /// Exactly this code.
    Code(u16),
    /// Any code of this class (2 for `2xx`).
    Class(u16),
}

impl StatusMatch {
    /// Whether `status` is accepted.
    pub fn matches(self, status: u16) -> bool {
        match self {
            StatusMatch::Code(c) => c == status,
            StatusMatch::Class(c) => status / 100 == c,
        }
    }
}

/// Passive ejection settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Passive {
    /// Consecutive failed connects that eject a backend (0: never).
    pub connect_failures: u32,
    /// Consecutive 5xx responses that eject a backend (0: never).
    pub http_5xx: u32,
    /// First ejection's length; it doubles on each repeat.
    pub eject_for: Duration,
    /// Longest ejection.
    pub max_eject_for: Duration,
}

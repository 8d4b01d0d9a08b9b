//! The runtime model: a validated, immutable configuration made of real types.
//!
//! Everything here has passed validation: addresses are parsed, durations are `Duration`s,
//! names are resolved to indices, routes are compiled. The proxy builds its running state
//! from a [`Config`] and never re-checks it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::error::KeyPath;
use crate::routing::RouteTable;

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

/// TLS protocol versions a listener accepts at minimum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// One certificate chain and its private key, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// Where this pair is configured, for error messages.
    pub key_path: KeyPath,
}

/// How the ACME CA checks that Portico answers for a host name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// TLS-ALPN-01 (RFC 8737): answered on the TLS listener itself (`acme-tls/1`).
    TlsAlpn01,
    /// HTTP-01: answered on plain-HTTP listeners at `/.well-known/acme-challenge/`.
    Http01,
}

impl AcmeChallenge {
    /// The name in the config and in ACME (`tls-alpn-01`, `http-01`).
    pub fn as_str(self) -> &'static str {
        match self {
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
            AcmeChallenge::Http01 => "http-01",
        }
    }
}

/// Certificates obtained and renewed from an ACME CA for a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acme {
    /// Host names to obtain certificates for (one certificate each).
    pub hosts: Vec<String>,
    /// Contact address given to the CA (`mailto:`), if any.
    pub email: Option<String>,
    /// The CA's ACME directory URL.
    pub directory: String,
    /// The challenge type answered.
    pub challenge: AcmeChallenge,
    /// Directory holding the account key and certificates.
    pub storage: PathBuf,
    /// PEM root certificate to trust for the CA's own HTTPS (a private or test CA), instead of
    /// the system's roots.
    pub ca_roots: Option<PathBuf>,
    /// First wait after a failed attempt; doubles up to an hour.
    pub retry_min: Duration,
    /// Where this block is configured, for messages.
    pub key_path: KeyPath,
}

/// TLS settings of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// Certificates, chosen by SNI; the first one is the default. May be empty when `acme`
    /// provides them.
    pub certificates: Vec<CertPaths>,
    /// Certificates from an ACME CA, served before the files for their hosts.
    pub acme: Option<Acme>,
    /// Whether HTTP/2 is offered through ALPN.
    pub http2: bool,
    /// Lowest TLS version accepted.
    pub min_version: TlsVersion,
}

/// One client-facing listener.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Name used in metrics and logs.
    pub name: String,
    /// Address to bind.
    pub address: SocketAddr,
    /// TLS, when this listener terminates it.
    pub tls: Option<ListenerTls>,
    /// Answer every request with a 301 to the https URL.
    pub force_https: bool,
    /// Port used in `force_https` redirects (443 is left out of the URL). `None`: the port of
    /// the first TLS listener as bound, else 443.
    pub https_port: Option<u16>,
    /// Status of `force_https` redirects; `None`: 301 for GET and HEAD, 308 for other methods
    /// (a 301 turns a POST into a GET in browsers; a 308 keeps the method and body).
    pub redirect_status: Option<u16>,
    /// Accept HTTP/2 without TLS (prior knowledge).
    pub h2c: bool,
    /// Connections open at once; past it, new ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time allowed to receive a complete request header (408 after it).
    pub header_read_timeout: Duration,
    /// How long an idle client connection is kept open between requests.
    pub keepalive_timeout: Duration,
    /// Longest wait for the next piece of a request body (408 after it).
    pub body_read_timeout: Duration,
    /// Slowest average request body rate accepted, bytes per second: the whole body must
    /// arrive within `body_read_timeout` plus one second per `min_body_rate` bytes from its
    /// start (Apache's `RequestReadTimeout body=...,MinRate=...`); 408 after it.
    pub min_body_rate: Option<u64>,
    /// Largest request header accepted (431 above it).
    pub max_header_size: usize,
    /// Requests served on one connection before it is closed.
    pub max_requests_per_connection: Option<u32>,
    /// Bind with `SO_REUSEPORT`.
    pub reuse_port: bool,
    /// Listen backlog.
    pub backlog: u32,
    /// TCP Fast Open queue length, when enabled.
    pub tcp_fastopen: Option<usize>,
    /// Options of every accepted connection (set on the listening socket, which accepted
    /// sockets inherit).
    pub socket: SocketOptions,
    /// `TCP_DEFER_ACCEPT`: wake the accept loop only once a client has sent data (or this
    /// long passed).
    pub tcp_defer_accept: Option<Duration>,
    /// `IPV6_V6ONLY` on an IPv6 address (`false`: `[::]` takes IPv4 too).
    pub ipv6_only: bool,
    /// `IP_FREEBIND`: bind an address the host does not have (yet).
    pub freebind: bool,
    /// Client addresses allowed and denied on this listener (403).
    pub ip_rules: IpRules,
    /// Connections one client address may hold open at once; `None`: no limit.
    pub max_connections_per_ip: Option<usize>,
    /// Sources whose connections start with a PROXY protocol header (v1 or v2) giving the
    /// real client address; empty: PROXY protocol is off.
    pub proxy_protocol_from: Vec<IpNet>,
}

/// A PROXY protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocolVersion {
    /// The text form.
    V1,
    /// The binary form.
    V2,
}

/// Client addresses allowed and denied, on the real client address (after trusted proxies).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpRules {
    /// When not empty, only these networks pass.
    pub allow: Vec<IpNet>,
    /// These networks never pass (deny wins over allow).
    pub deny: Vec<IpNet>,
}

impl IpRules {
    /// Whether there is any rule.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Whether `ip` passes: in no `deny` network, and in an `allow` network when any is set.
    pub fn admits(&self, ip: std::net::IpAddr) -> bool {
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }
}

/// What a rate limit counts requests by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateKey {
    /// The client address.
    Ip,
    /// A request header's value (lower-case name); the client address without it.
    Header(String),
    /// A cookie's value; the client address without it.
    Cookie(String),
}

/// Requests allowed per client (or key) in a sliding window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed per window.
    pub requests: u32,
    /// The window.
    pub per: Duration,
    /// What is counted.
    pub key: RateKey,
    /// Most clients tracked at once (memory bound).
    pub max_clients: usize,
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

/// The admin listener.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Address to bind (loopback unless configured otherwise).
    pub address: SocketAddr,
    /// Bearer token required for `/metrics`, `/status` details and `POST /reload`
    /// (mandatory when `address` is not loopback).
    pub token: Option<String>,
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
    /// SNI and verified name for HTTPS checks (default: the backend's address).
    pub tls_server_name: Option<String>,
    /// Do not verify the certificate of HTTPS checks.
    pub tls_skip_verify: bool,
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

/// Header edits of a route.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderRules {
    /// Headers set, replacing any existing value.
    pub set: Vec<(String, String)>,
    /// Headers appended.
    pub add: Vec<(String, String)>,
    /// Headers removed (lower case).
    pub remove: Vec<String>,
}

impl HeaderRules {
    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// One route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Name used in metrics and logs.
    pub name: String,
    /// Host patterns; empty means any host.
    pub hosts: Vec<String>,
    /// Path prefix.
    pub path: String,
    /// Index into [`Config::upstreams`].
    pub upstream: usize,
    /// Largest request body accepted (413 above it).
    pub max_body: Option<u64>,
    /// Read each request body in full before the upstream sees the request, so a body over the
    /// limit ([`Route::buffer_limit`]) is refused with nothing sent upstream.
    pub buffer_requests: bool,
    /// Remove the path prefix before proxying.
    pub strip_prefix: bool,
    /// Edits to the request sent upstream.
    pub request_headers: HeaderRules,
    /// Edits to the response sent to the client.
    pub response_headers: HeaderRules,
    /// Write routing of this route: `None` follows the upstream's setting.
    pub writes: Option<Option<WriteRouting>>,
    /// Session-based replay cache rules.
    pub replay_cache: Vec<ReplayCacheRule>,
    /// Client affinity.
    pub sticky: Option<Sticky>,
    /// Files served from disk instead of (or before) proxying.
    pub static_files: Option<StaticFiles>,
    /// Idle time after which an upgraded connection (WebSocket) is closed; `None`: never.
    pub ws_idle_timeout: Option<Duration>,
    /// Upgraded connections open at once through this route; `None`: unlimited.
    pub max_websockets: Option<usize>,
    /// Client addresses allowed and denied on this route (403).
    pub ip_rules: IpRules,
    /// Requests per client per window (429 beyond).
    pub rate_limit: Option<RateLimit>,
    /// Compression of proxied responses.
    pub compress: Option<Compress>,
}

/// Compression of a route's proxied responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compress {
    /// Smallest body compressed (by `Content-Length`; bodies of unknown length are).
    pub min_size: u64,
    /// Media types compressed: exact (`application/json`) or prefixes (`text/*`).
    pub types: Vec<String>,
    /// gzip level, 1-9; 0 turns gzip off.
    pub gzip_level: u32,
    /// brotli level, 1-11; 0 turns brotli off.
    pub brotli_level: u32,
    /// zstd level, 1-19; 0 turns zstd off.
    pub zstd_level: u32,
}

impl Default for Compress {
    fn default() -> Self {
        Self {
            min_size: crate::defaults::COMPRESS_MIN_SIZE,
            types: crate::defaults::COMPRESS_TYPES
                .iter()
                .map(|t| t.to_string())
                .collect(),
            gzip_level: crate::defaults::GZIP_LEVEL,
            brotli_level: crate::defaults::BROTLI_LEVEL,
            zstd_level: crate::defaults::ZSTD_LEVEL,
        }
    }
}

impl Route {
    /// A route sending what matches `hosts` and `path` to `upstream`, with nothing else set.
    pub fn new(name: &str, hosts: Vec<String>, path: &str, upstream: usize) -> Self {
        Self {
            name: name.to_string(),
            hosts,
            path: path.to_string(),
            upstream,
            max_body: None,
            buffer_requests: false,
            strip_prefix: false,
            request_headers: HeaderRules::default(),
            response_headers: HeaderRules::default(),
            writes: None,
            replay_cache: Vec::new(),
            sticky: None,
            static_files: None,
            ws_idle_timeout: None,
            max_websockets: None,
            ip_rules: IpRules::default(),
            rate_limit: None,
            compress: None,
        }
    }

    /// The most a buffered request body may hold: `max_body`, else
    /// [`crate::defaults::BUFFER_REQUESTS_MAX`].
    pub fn buffer_limit(&self) -> u64 {
        self.max_body
            .unwrap_or(crate::defaults::BUFFER_REQUESTS_MAX)
    }

    /// Whether requests of this route may go to its upstream (not a files-only route).
    pub fn proxies(&self) -> bool {
        self.static_files.as_ref().is_none_or(|s| s.try_files)
    }
}

/// `static = { ... }`: a route serving files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticFiles {
    /// Directory the files come from (absolute, as configured).
    pub root: std::path::PathBuf,
    /// File served for a directory.
    pub index: Option<String>,
    /// File served for unknown paths (single-page apps): those without an extension, or
    /// every one with [`StaticFiles::fallback_all`].
    pub fallback: Option<String>,
    /// The fallback also answers unknown paths with a dot (`/users/john.doe`), like nginx's
    /// `try_files $uri /index.html`.
    pub fallback_all: bool,
    /// Proxy to the route's upstream when no file matches (else 404).
    pub try_files: bool,
    /// `Cache-Control` of ordinary files.
    pub cache_control: String,
    /// `Cache-Control` of content-hashed files.
    pub immutable_cache_control: String,
    /// Detect content-hashed names (`app-3f9a1c2b.js`, `main.3f9a1c2b.css`).
    pub hashed_names: bool,
    /// Path prefixes whose files are all treated as immutable.
    pub immutable_paths: Vec<String>,
    /// Serve `.br` / `.gz` siblings to clients that accept them.
    pub precompressed: bool,
    /// Gzip compressible files on the fly (when no sibling exists).
    pub compress: bool,
    /// Smallest file compressed on the fly.
    pub compress_min_size: u64,
    /// Serve files and directories whose name starts with a dot.
    pub dotfiles: bool,
}

/// How a route keeps a client on one backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sticky {
    /// A signed cookie naming the chosen backend.
    Cookie(StickyCookie),
    /// Consistent hashing on a request property.
    Hash(HashKey),
}

/// The affinity cookie of `sticky = { mode = "cookie" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StickyCookie {
    /// Cookie name.
    pub name: String,
    /// Cookie `Path`.
    pub path: String,
    /// Cookie `Max-Age`; `None` makes a session cookie.
    pub max_age: Option<Duration>,
    /// `Secure`: `None` sets it on requests that arrived over TLS.
    pub secure: Option<bool>,
    /// `HttpOnly`.
    pub http_only: bool,
    /// `SameSite` value (`Lax`, `Strict`, `None`).
    pub same_site: Option<String>,
    /// Signing key; `None` uses a key generated at start (cookies then die with the process).
    pub key: Option<String>,
}

//! Default values, one named constant each, and the embedded default configuration.

use std::time::Duration;

/// Name used in `Via` and logs.
pub const SERVER_NAME: &str = "portico";
/// Region when `[server] region` is not set.
pub const REGION: &str = "local";
/// Graceful shutdown budget (pingora's own default of 300 s is far too long for `systemctl stop`).
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);
/// Log filter.
pub const LOG_LEVEL: &str = "info";
/// Request id header.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Connections per listener.
pub const MAX_CONNECTIONS: usize = 10_000;
/// Time to receive a whole request header (slowloris protection).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle time allowed between requests on a client connection.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(60);
/// Shortest admin token accepted.
pub const ADMIN_TOKEN_MIN: usize = 16;
/// Longest wait for the next piece of a request body (nginx's `client_body_timeout`).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a draining connection between requests waits for a request its client may
/// already have sent.
pub const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// Largest request header (request line plus all fields).
pub const MAX_HEADER_SIZE: u64 = 32 * 1024;
/// Upper bound for `max_header_size` (pingora's parser refuses 1 MiB and more).
pub const MAX_HEADER_SIZE_LIMIT: u64 = 512 * 1024;
/// Listen backlog (the kernel caps it at `net.core.somaxconn`).
pub const BACKLOG: u32 = 65_535;
/// TCP keepalive of client and upstream connections: a peer that vanished (a crashed host, a
/// dropped NAT mapping) is found within 60 s + 4 x 15 s instead of the kernel's 2 hours.
pub const TCP_KEEPALIVE: crate::TcpKeepalive = crate::TcpKeepalive {
    idle: Duration::from_secs(60),
    interval: Duration::from_secs(15),
    count: 4,
};
/// Port in `force_https` redirects when no TLS listener is configured.
pub const HTTPS_PORT: u16 = 443;

/// Admin listener address.
pub const ADMIN_ADDRESS: &str = "127.0.0.1:9901";

/// Upstream connect timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Upstream read timeout (per read).
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Upstream write timeout (per write).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle pooled upstream connections are closed after this.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Other backends tried after a connect failure.
pub const RETRIES: usize = 2;
/// How long a request waits when every backend is at its hard limit.
pub const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);
/// Requests allowed to wait at once per upstream.
pub const MAX_QUEUE: usize = 1000;

/// Time between health checks of one backend.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// Time allowed for one health check.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Consecutive passing checks to become healthy.
pub const CHECK_RISE: u32 = 2;
/// Consecutive failing checks to become unhealthy.
pub const CHECK_FALL: u32 = 3;
/// Consecutive connect failures that eject a backend.
pub const PASSIVE_CONNECT_FAILURES: u32 = 3;
/// First passive ejection's length.
pub const EJECT_FOR: Duration = Duration::from_secs(10);
/// Longest passive ejection.
pub const MAX_EJECT_FOR: Duration = Duration::from_secs(300);

/// Largest request body kept for replaying (Fly replays up to 1 MB).
pub const REPLAY_MAX_BODY: u64 = 1 << 20;
/// Upper bound of `[replay] max_body`.
pub const REPLAY_MAX_BODY_LIMIT: u64 = 64 << 20;
/// Entries of the replay cache.
pub const REPLAY_CACHE_SIZE: usize = 10_000;
/// Methods write routing sends to the primary: everything but these.
pub const READ_METHODS: [&str; 3] = ["GET", "HEAD", "OPTIONS"];

/// Timeout of one DNS query.
pub const DNS_TIMEOUT: Duration = Duration::from_secs(2);
/// Attempts per DNS query.
pub const DNS_ATTEMPTS: usize = 2;
/// Shortest refresh interval of discovered upstreams.
pub const DNS_MIN_TTL: Duration = Duration::from_secs(5);
/// Longest refresh interval of discovered upstreams.
pub const DNS_MAX_TTL: Duration = Duration::from_secs(60);
/// Grace before an empty answer empties an upstream.
pub const DNS_STALE_FOR: Duration = Duration::from_secs(30);
/// How long start-up waits for first answers.
pub const DNS_STARTUP_WAIT: Duration = Duration::from_secs(5);

/// The configuration used when no file is given: one listener, the admin listener, and one
/// upstream taken from `PORTICO_UPSTREAM`.
pub const EMBEDDED_CONFIG: &str = r#"# Portico's embedded default configuration.
# Listener, admin and upstream can be moved with PORTICO_LISTEN, PORTICO_ADMIN, PORTICO_UPSTREAM.
[server]
region = "${FLY_REGION:-local}"

[[listeners]]
name = "http"
address = "${PORTICO_LISTEN:-127.0.0.1:8080}"

[admin]
address = "${PORTICO_ADMIN:-127.0.0.1:9901}"

[upstreams.app]
backends = ["${PORTICO_UPSTREAM:-127.0.0.1:3000}"]

[[routes]]
name = "default"
upstream = "app"
"#;

/// The name shown for the embedded configuration in messages.
pub const EMBEDDED_NAME: &str = "<embedded default>";

/// Prefix of the affinity cookie's default name (`portico_affinity_<upstream>`).
pub const STICKY_COOKIE: &str = "portico_affinity";

/// Largest body `buffer_requests` holds when the route sets no `max_body` (10 MiB).
pub const BUFFER_REQUESTS_MAX: u64 = 10 << 20;

/// ACME directory when `tls.acme.directory` is not set: Let's Encrypt.
pub const ACME_DIRECTORY: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// Let's Encrypt's staging directory (`directory = "letsencrypt-staging"`).
pub const ACME_DIRECTORY_STAGING: &str = "https://acme-staging-v02.api.letsencrypt.org/directory";
/// ACME storage when neither `tls.acme.storage` nor systemd's `$STATE_DIRECTORY` is set.
pub const ACME_STORAGE: &str = "/var/lib/portico/acme";
/// First wait after a failed ACME attempt (doubling up to [`ACME_RETRY_MAX`]).
pub const ACME_RETRY_MIN: Duration = Duration::from_secs(60);
/// Longest wait between ACME attempts after failures.
pub const ACME_RETRY_MAX: Duration = Duration::from_secs(3600);
/// Clients a route's rate limit tracks at once when `max_clients` is not set (about 4 MB).
pub const RATE_LIMIT_MAX_CLIENTS: usize = 100_000;
/// Smallest proxied body compressed: below it the saving rarely pays for the encoder's setup.
pub const COMPRESS_MIN_SIZE: u64 = 1024;
/// Media types compressed by default (text formats; images, video and archives are already
/// compressed). `text/event-stream` and gRPC are never compressed (events must not wait in
/// an encoder).
pub const COMPRESS_TYPES: &[&str] = &[
    "text/*",
    "application/json",
    "application/*+json",
    "application/javascript",
    "application/ecmascript",
    "application/xml",
    "application/*+xml",
    "application/wasm",
    "application/manifest+json",
    "application/x-ndjson",
    "image/svg+xml",
    "image/x-icon",
    "image/vnd.microsoft.icon",
    "font/ttf",
    "font/otf",
];
/// Fast defaults: most of the saving for a fraction of the CPU of the top levels.
pub const GZIP_LEVEL: u32 = 4;
/// Default brotli level.
pub const BROTLI_LEVEL: u32 = 4;
/// Default zstd level.
pub const ZSTD_LEVEL: u32 = 3;

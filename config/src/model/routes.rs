//! Routes: matching, header rules, compression, rate limits, static files, sticky affinity.

use std::time::Duration;

use super::*;

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

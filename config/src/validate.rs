//! Turns the file model into the runtime model, collecting every problem on the way.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use crate::defaults as d;
use crate::error::{KeyPath, Problems};
use crate::file::*;
use crate::model::*;
use crate::routing::{normalize_path, RouteTable};

/// The sections of a file, each already deserialized on its own.
#[derive(Default)]
pub(crate) struct Sections {
    pub server: Option<ServerFile>,
    pub dns: Option<DnsFile>,
    pub replay: Option<ReplayFile>,
    pub listeners: Vec<(usize, ListenerFile)>,
    pub admin: Option<AdminFile>,
    pub upstreams: Vec<(String, UpstreamFile)>,
    pub routes: Vec<(usize, RouteFile)>,
    /// Whether `listeners` / `routes` were present at all (an entry may have failed to parse).
    pub listeners_present: bool,
    pub routes_present: bool,
    pub upstreams_present: bool,
}

pub(crate) struct Validator<'a> {
    pub problems: &'a mut Problems,
    pub base_dir: Option<&'a Path>,
    /// Whether `[server] primary_region` is set (write routing needs it).
    pub has_primary: bool,
}

fn dur(v: Option<crate::units::Dur>, default: Duration) -> Duration {
    v.map_or(default, |d| d.0)
}

/// RFC 9110 `token` characters, as allowed in header names.
pub fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Header values may not hold control characters (CR and LF above all).
fn is_header_value(s: &str) -> bool {
    s.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// `allow` / `deny` lists of CIDRs or addresses.
fn ip_rules(
    v: &mut Validator<'_>,
    allow: Option<Vec<String>>,
    deny: Option<Vec<String>>,
    k: &KeyPath,
) -> IpRules {
    let mut rules = IpRules::default();
    for (name, list, out) in [
        ("allow", allow, &mut rules.allow),
        ("deny", deny, &mut rules.deny),
    ] {
        for (i, p) in list.unwrap_or_default().iter().enumerate() {
            match parse_cidr(p) {
                Ok(net) => out.push(net),
                Err(e) => v.err(k.key(name).index(i), e),
            }
        }
    }
    rules
}

/// Whether an ACME CA can validate `h` with HTTP-01 or TLS-ALPN-01: a DNS name of at least
/// two labels, no wildcard (those need DNS-01), no IP address.
fn acme_host(h: &str) -> Result<(), &'static str> {
    if h.starts_with("*.") {
        return Err("wildcard names need the DNS-01 challenge, which Portico does not answer");
    }
    if h.parse::<std::net::IpAddr>().is_ok() {
        return Err("an IP address: ACME certificates here are for host names");
    }
    let labels_ok = h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        });
    if !labels_ok {
        return Err("not a valid DNS host name");
    }
    if !h.contains('.') {
        return Err("a single-label name: a public CA validates fully qualified names");
    }
    Ok(())
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Levenshtein distance, for "did you mean" hints.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// " (did you mean \"x\"?)" when a known name is close to `wrong`.
pub(crate) fn suggest<'n>(wrong: &str, known: impl Iterator<Item = &'n str>) -> String {
    known
        .map(|k| (distance(wrong, k), k))
        .filter(|(dist, k)| *dist <= 2.max(k.len() / 3))
        .min()
        .map(|(_, k)| format!(" (did you mean \"{k}\"?)"))
        .unwrap_or_default()
}

/// Parses a listen address: `ip:port`, `[v6]:port`, `:port` (all interfaces) or
/// `localhost:port`.
pub fn parse_listen_address(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let port_of = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("invalid port {p:?} in address {s:?}"))
    };
    if let Some(p) = s.strip_prefix(':') {
        return Ok(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port_of(p)?,
        ));
    }
    if let Some(p) = s.strip_prefix("localhost:") {
        return Ok(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            port_of(p)?,
        ));
    }
    Err(format!(
        "invalid address {s:?}: expected IP:PORT such as \"0.0.0.0:8080\", \"[::]:8080\" or \"127.0.0.1:8080\""
    ))
}

/// Parses a backend address: `ip:port`, `[v6]:port` or `host:port`.
pub fn parse_backend_address(s: &str) -> Result<BackendAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(BackendAddr::Ip(a));
    }
    let usage = || {
        format!("invalid backend address {s:?}: expected HOST:PORT such as \"10.0.0.1:3000\", \"[fdaa::1]:8080\" or \"app.local:3000\"")
    };
    let (host, port) = s.rsplit_once(':').ok_or_else(usage)?;
    let port: u16 = port.parse().map_err(|_| usage())?;
    if host.is_empty()
        || host.contains(['[', ']', '/', ' '])
        || host.parse::<IpAddr>().is_ok()
        || !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
    {
        return Err(usage());
    }
    if port == 0 {
        return Err(format!("invalid backend address {s:?}: port 0"));
    }
    Ok(BackendAddr::Name {
        host: host.to_ascii_lowercase(),
        port,
    })
}

fn parse_log_level(s: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let level = part.rsplit_once('=').map_or(part, |(_, l)| l);
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "invalid log level {part:?}: expected one of trace, debug, info, warn, error, off, optionally as target=level"
            ));
        }
    }
    Ok(())
}

fn parse_cidr(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            format!(
                "invalid address or CIDR {s:?} (expected e.g. \"10.0.0.0/8\" or \"192.168.1.10\")"
            )
        })
}

fn validate_host_pattern(h: &str) -> Result<String, String> {
    if h.contains("://") || h.contains('/') {
        return Err(format!(
            "host {h:?} should be a name such as \"example.com\", not a URL"
        ));
    }
    let lower = h.to_ascii_lowercase();
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    if name.contains('*') {
        return Err(format!(
            "host {h:?}: a wildcard is only allowed as the first label (\"*.example.com\")"
        ));
    }
    let is_v6 = name.starts_with('[') && name.ends_with(']');
    if name.is_empty()
        || (!is_v6
            && (name.contains(':')
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))))
    {
        return Err(format!(
            "host {h:?} is not a valid host name (no port, no scheme; letters, digits, '-', '.')"
        ));
    }
    Ok(lower.trim_end_matches('.').to_string())
}

impl Validator<'_> {
    fn err(&mut self, key: KeyPath, msg: impl Into<String>) {
        self.problems.add(key, msg);
    }

    fn resolve_path(&self, p: &str) -> PathBuf {
        let path = PathBuf::from(p);
        match self.base_dir {
            Some(base) if path.is_relative() => base.join(path),
            _ => path,
        }
    }

    pub(crate) fn build(&mut self, s: Sections, source_name: &str) -> Option<Config> {
        let server = self.server(s.server.unwrap_or_default());
        self.has_primary = server.primary_region.is_some();
        let dns = self.dns(s.dns.unwrap_or_default());
        let replay = self.replay(s.replay.unwrap_or_default());
        let (upstreams, upstream_index) = self.upstreams(s.upstreams, s.upstreams_present);
        let listeners = self.listeners(s.listeners, s.listeners_present, &server.trusted_proxies);
        let admin = self.admin(s.admin.unwrap_or_default(), &listeners);
        let routes = self.routes(s.routes, s.routes_present, &upstreams, &upstream_index);
        if upstreams.is_empty() && (routes.is_empty() || routes.iter().any(Route::proxies)) {
            self.err(
                KeyPath::root().key("upstreams"),
                "no upstreams: add an [upstreams.NAME] table with backends",
            );
        }
        if !self.problems.is_empty() {
            return None;
        }
        Some(Config {
            source_name: source_name.to_string(),
            server,
            listeners,
            admin,
            dns,
            replay,
            upstreams,
            routes: RouteTable::new(routes),
        })
    }

    fn server(&mut self, f: ServerFile) -> Server {
        let k = KeyPath::root().key("server");
        let name = f.name.unwrap_or_else(|| d::SERVER_NAME.to_string());
        if !is_token(&name) {
            self.err(
                k.key("name"),
                format!("{name:?} must be a single token (letters, digits, '-', '.', '_')"),
            );
        }
        let region = f.region.unwrap_or_else(|| d::REGION.to_string());
        let region = if region.is_empty() {
            d::REGION.to_string()
        } else {
            region
        };
        if !is_name(&region) {
            self.err(
                k.key("region"),
                format!("invalid region {region:?} (letters, digits, '-', '_')"),
            );
        }
        let threads = match f.threads {
            Some(t) if t.0 == 0 || t.0 > 1024 => {
                self.err(
                    k.key("threads"),
                    format!("{} is out of range (1 to 1024)", t.0),
                );
                1
            }
            Some(t) => t.0,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let log_level = f.log_level.unwrap_or_else(|| d::LOG_LEVEL.to_string());
        if let Err(e) = parse_log_level(&log_level) {
            self.err(k.key("log_level"), e);
        }
        let log_format = match f.log_format.as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => {
                self.err(
                    k.key("log_format"),
                    format!("unknown log format {other:?}: expected \"text\" or \"json\""),
                );
                LogFormat::Text
            }
        };
        let access_log_format = match f.access_log_format.as_deref() {
            None => match log_format {
                LogFormat::Text => AccessLogFormat::Text,
                LogFormat::Json => AccessLogFormat::Json,
            },
            Some("text") => AccessLogFormat::Text,
            Some("json") => AccessLogFormat::Json,
            Some("combined") => AccessLogFormat::Combined,
            Some(other) => {
                self.err(
                    k.key("access_log_format"),
                    format!("unknown access log format {other:?}: expected \"text\", \"json\" or \"combined\""),
                );
                AccessLogFormat::Text
            }
        };
        let mut trusted_proxies = Vec::new();
        for (i, p) in f.trusted_proxies.unwrap_or_default().iter().enumerate() {
            match parse_cidr(p) {
                Ok(net) => trusted_proxies.push(net),
                Err(e) => self.err(k.key("trusted_proxies").index(i), e),
            }
        }
        let request_id_header = f
            .request_id_header
            .unwrap_or_else(|| d::REQUEST_ID_HEADER.to_string())
            .to_ascii_lowercase();
        if !is_token(&request_id_header) {
            self.err(
                k.key("request_id_header"),
                format!("{request_id_header:?} is not a valid header name"),
            );
        }
        let shutdown_timeout = dur(f.shutdown_timeout, d::SHUTDOWN_TIMEOUT);
        let drain_grace = dur(f.drain_grace, d::DRAIN_GRACE);
        if drain_grace > Duration::from_secs(60) {
            self.err(k.key("drain_grace"), "must be at most 60s");
        }
        let primary_region = f.primary_region.clone().filter(|r| !r.is_empty());
        if let Some(r) = &primary_region {
            if !is_name(r) {
                self.err(k.key("primary_region"), format!("invalid region {r:?}"));
            }
        }
        let mut region_order = Vec::new();
        for (i, r) in f
            .region_order
            .clone()
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            if is_name(&r) {
                region_order.push(r);
            } else {
                self.err(
                    k.key("region_order").index(i),
                    format!("invalid region {r:?}"),
                );
            }
        }
        if let Some(n) = f.max_open_files {
            if n.0 < 64 {
                self.err(
                    k.key("max_open_files"),
                    format!("{} is too low to run a proxy (at least 64)", n.0),
                );
            }
        }
        Server {
            name,
            region,
            threads,
            work_stealing: f.work_stealing.is_some_and(|f| f.0),
            shutdown_timeout,
            drain_grace,
            log_level,
            log_format,
            access_log: f.access_log.is_none_or(|f| f.0),
            access_log_format,
            trusted_proxies,
            fly_headers: f.fly_headers.is_some_and(|f| f.0),
            request_id_header,
            max_open_files: f.max_open_files.map(|n| n.0),
            region_order,
            routing_headers: f.routing_headers.is_none_or(|v| v.0),
            primary_region,
        }
    }

    fn replay(&mut self, f: ReplayFile) -> Replay {
        let k = KeyPath::root().key("replay");
        let max_body = f.max_body.map_or(d::REPLAY_MAX_BODY, |v| v.0);
        if max_body > d::REPLAY_MAX_BODY_LIMIT {
            self.err(
                k.key("max_body"),
                format!("{max_body} bytes is above the limit of 64MiB"),
            );
        }
        let cache_size = f.cache_size.map_or(d::REPLAY_CACHE_SIZE, |v| v.0);
        if cache_size == 0 {
            self.err(k.key("cache_size"), "must be at least 1");
        }
        Replay {
            enabled: f.enabled.is_none_or(|v| v.0),
            max_body,
            cache_size,
        }
    }

    /// `writes = "primary" | "any"` with optional `write_methods`.
    fn writes(
        &mut self,
        writes: Option<String>,
        methods: Option<Vec<String>>,
        k: &KeyPath,
        primary: bool,
    ) -> Option<Option<WriteRouting>> {
        let routing = match writes.as_deref() {
            None if methods.is_some() => {
                self.err(
                    k.key("write_methods"),
                    "only applies with writes = \"primary\"",
                );
                return None;
            }
            None => return None,
            Some("any") => None,
            Some("primary") => {
                if !primary {
                    self.err(k.key("writes"), "writes = \"primary\" needs [server] primary_region (for example \"${PRIMARY_REGION}\")");
                }
                let methods = match methods {
                    None => vec!["POST", "PUT", "PATCH", "DELETE", "CONNECT", "TRACE"]
                        .into_iter()
                        .map(str::to_string)
                        .collect(),
                    Some(list) => {
                        let mut out = Vec::new();
                        for (i, m) in list.into_iter().enumerate() {
                            let m = m.to_ascii_uppercase();
                            if is_token(&m) {
                                out.push(m);
                            } else {
                                self.err(
                                    k.key("write_methods").index(i),
                                    format!("invalid method {m:?}"),
                                );
                            }
                        }
                        out
                    }
                };
                Some(WriteRouting { methods })
            }
            Some(other) => {
                self.err(
                    k.key("writes"),
                    format!("unknown value {other:?}: expected \"primary\" or \"any\""),
                );
                return None;
            }
        };
        Some(routing)
    }

    fn dns(&mut self, f: DnsFile) -> Dns {
        let k = KeyPath::root().key("dns");
        let mut servers = Vec::new();
        for (i, s) in f.servers.unwrap_or_default().iter().enumerate() {
            match parse_dns_server(s) {
                Ok(a) => servers.push(a),
                Err(e) => self.err(k.key("servers").index(i), e),
            }
        }
        let attempts = f.attempts.map_or(d::DNS_ATTEMPTS, |a| a.0);
        if !(1..=10).contains(&attempts) {
            self.err(
                k.key("attempts"),
                format!("{attempts} is out of range (1 to 10)"),
            );
        }
        let timeout = dur(f.timeout, d::DNS_TIMEOUT);
        if timeout.is_zero() {
            self.err(k.key("timeout"), "must be greater than zero");
        }
        let min_ttl = dur(f.min_ttl, d::DNS_MIN_TTL);
        let max_ttl = dur(f.max_ttl, d::DNS_MAX_TTL);
        if min_ttl < Duration::from_millis(100) {
            self.err(
                k.key("min_ttl"),
                "must be at least 100ms (a proxy should not hammer its resolver)",
            );
        }
        if max_ttl < min_ttl {
            self.err(
                k.key("max_ttl"),
                format!(
                    "max_ttl ({}) is below min_ttl ({})",
                    crate::units::format_duration(max_ttl),
                    crate::units::format_duration(min_ttl)
                ),
            );
        }
        Dns {
            servers,
            timeout,
            attempts,
            min_ttl,
            max_ttl,
            stale_for: dur(f.stale_for, d::DNS_STALE_FOR),
            startup_wait: dur(f.startup_wait, d::DNS_STARTUP_WAIT),
        }
    }

    fn listeners(
        &mut self,
        files: Vec<(usize, ListenerFile)>,
        present: bool,
        trusted: &[IpNet],
    ) -> Vec<Listener> {
        let root = KeyPath::root().key("listeners");
        if files.is_empty() && !present {
            self.err(
                root.clone(),
                "no listeners: add a [[listeners]] table with an address",
            );
        }
        let mut out = Vec::new();
        let mut seen_addr: HashMap<SocketAddr, usize> = HashMap::new();
        let mut seen_name: HashMap<String, usize> = HashMap::new();
        for (i, f) in files {
            let k = root.index(i);
            let Some(addr_str) = f.address.clone() else {
                self.err(
                    k.clone(),
                    "missing `address` (for example \"0.0.0.0:8080\")",
                );
                continue;
            };
            let address = match parse_listen_address(&addr_str) {
                Ok(a) => a,
                Err(e) => {
                    self.err(k.key("address"), e);
                    continue;
                }
            };
            if address.port() != 0 {
                if let Some(prev) = seen_addr.insert(address, i) {
                    self.err(
                        k.key("address"),
                        format!("{address} is already used by listeners[{prev}]"),
                    );
                }
            }
            let name = f.name.clone().unwrap_or_else(|| addr_str.clone());
            // A default name repeats only when the address does, which is reported above.
            if let Some(prev) = seen_name
                .insert(name.clone(), i)
                .filter(|_| f.name.is_some())
            {
                self.err(
                    k.key("name"),
                    format!("listener name {name:?} is already used by listeners[{prev}]"),
                );
            }
            let tls = f.tls.map(|t| self.listener_tls(t, &k.key("tls")));
            let force_https = f.force_https.is_some_and(|v| v.0);
            if force_https && tls.is_some() {
                self.err(
                    k.key("force_https"),
                    "force_https redirects plain HTTP to https; it cannot be set on a TLS listener",
                );
            }
            let redirect_status = f.redirect_status.map(|v| v.0);
            if let Some(s) = redirect_status {
                if ![301, 302, 307, 308].contains(&s) {
                    self.err(
                        k.key("redirect_status"),
                        format!("{s} is not a redirect status (301, 302, 307 or 308)"),
                    );
                }
                if !force_https {
                    self.err(
                        k.key("redirect_status"),
                        "only applies with force_https = true",
                    );
                }
            }
            let h2c = f.h2c.is_some_and(|v| v.0);
            if h2c && tls.is_some() {
                self.err(
                    k.key("h2c"),
                    "h2c is HTTP/2 without TLS; on a TLS listener use tls.http2",
                );
            }
            let max_connections = f.max_connections.map_or(d::MAX_CONNECTIONS, |v| v.0);
            if max_connections == 0 {
                self.err(k.key("max_connections"), "must be at least 1");
            }
            let header_read_timeout = dur(f.header_read_timeout, d::HEADER_READ_TIMEOUT);
            if header_read_timeout.is_zero() {
                self.err(k.key("header_read_timeout"), "must be greater than zero");
            }
            let body_read_timeout = dur(f.body_read_timeout, d::BODY_READ_TIMEOUT);
            if body_read_timeout.is_zero() {
                self.err(k.key("body_read_timeout"), "must be greater than zero");
            }
            let min_body_rate = f.min_body_rate.map(|v| v.0);
            if min_body_rate == Some(0) {
                self.err(
                    k.key("min_body_rate"),
                    "must be greater than zero (leave it out for no minimum)",
                );
            }
            let max_header_size = f.max_header_size.map_or(d::MAX_HEADER_SIZE, |v| v.0);
            if !(1024..=d::MAX_HEADER_SIZE_LIMIT).contains(&max_header_size) {
                self.err(
                    k.key("max_header_size"),
                    format!("{max_header_size} bytes is out of range (1KiB to 512KiB)"),
                );
            }
            if let Some(n) = f.max_requests_per_connection {
                if n.0 == 0 {
                    self.err(k.key("max_requests_per_connection"), "must be at least 1");
                }
            }
            let socket = self.socket_options(
                &k,
                f.tcp_nodelay,
                f.tcp_keepalive,
                f.send_buffer,
                f.recv_buffer,
            );
            let tcp_defer_accept = f.tcp_defer_accept.map(|v| v.0).filter(|d| !d.is_zero());
            if let Some(t) = tcp_defer_accept {
                if t > Duration::from_secs(3600) || t < Duration::from_secs(1) {
                    self.err(
                        k.key("tcp_defer_accept"),
                        "out of range (1s to 1h, or \"0s\" for off)",
                    );
                }
            }
            let ipv6_only = f.ipv6_only.is_some_and(|v| v.0);
            if ipv6_only && address.is_ipv4() {
                self.err(k.key("ipv6_only"), "only applies to an IPv6 address");
            }
            out.push(Listener {
                name,
                address,
                tls,
                force_https,
                https_port: f.https_port.map(|p| p.0),
                redirect_status,
                h2c,
                max_connections,
                header_read_timeout,
                keepalive_timeout: dur(f.keepalive_timeout, d::KEEPALIVE_TIMEOUT),
                body_read_timeout,
                min_body_rate,
                max_header_size: usize::try_from(max_header_size).unwrap_or(usize::MAX),
                max_requests_per_connection: f.max_requests_per_connection.map(|n| n.0),
                reuse_port: f.reuse_port.is_some_and(|v| v.0),
                backlog: f.backlog.map_or(d::BACKLOG, |v| v.0),
                tcp_fastopen: f.tcp_fastopen.map(|v| v.0),
                socket,
                tcp_defer_accept,
                ipv6_only,
                freebind: f.freebind.is_some_and(|v| v.0),
                proxy_protocol_from: self.proxy_protocol_from(
                    f.proxy_protocol.is_some_and(|v| v.0),
                    f.proxy_protocol_from,
                    trusted,
                    &k,
                ),
                ip_rules: ip_rules(self, f.allow, f.deny, &k),
                max_connections_per_ip: match f.max_connections_per_ip.map(|n| n.0) {
                    Some(0) => {
                        self.err(
                            k.key("max_connections_per_ip"),
                            "must be at least 1 (leave it out for no limit)",
                        );
                        None
                    }
                    n => n.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
                },
            });
        }
        let plain = out.iter().any(|l| l.tls.is_none());
        for l in &out {
            if let Some(a) = l.tls.as_ref().and_then(|t| t.acme.as_ref()) {
                if a.challenge == AcmeChallenge::Http01 && !plain {
                    self.err(
                        a.key_path.key("challenge"),
                        "http-01 is answered on a plain-HTTP listener (port 80 as the CA sees \
                         it) and this config has none: add one, or use \"tls-alpn-01\"",
                    );
                }
            }
        }
        out
    }

    fn cert_pair(
        &mut self,
        cert: Option<String>,
        key: Option<String>,
        k: &KeyPath,
    ) -> Option<CertPaths> {
        match (cert, key) {
            (Some(c), Some(kf)) => Some(CertPaths {
                cert: self.resolve_path(&c),
                key: self.resolve_path(&kf),
                key_path: k.clone(),
            }),
            (Some(_), None) => {
                self.err(k.clone(), "`cert` is set but `key` is missing");
                None
            }
            (None, Some(_)) => {
                self.err(k.clone(), "`key` is set but `cert` is missing");
                None
            }
            (None, None) => {
                self.err(k.clone(), "missing `cert` and `key`");
                None
            }
        }
    }

    fn listener_tls(&mut self, t: TlsFile, k: &KeyPath) -> ListenerTls {
        let mut certificates = Vec::new();
        let acme = t.acme.map(|a| self.acme(a, &k.key("acme")));
        match (t.cert.is_some() || t.key.is_some(), t.certificates) {
            (true, Some(_)) => self.err(
                k.clone(),
                "use either `cert`/`key` or `certificates = [...]`, not both",
            ),
            (true, None) => certificates.extend(self.cert_pair(t.cert, t.key, k)),
            (false, Some(list)) => {
                if list.is_empty() {
                    self.err(k.key("certificates"), "at least one certificate is needed");
                }
                for (i, c) in list.into_iter().enumerate() {
                    certificates.extend(self.cert_pair(
                        c.cert,
                        c.key,
                        &k.key("certificates").index(i),
                    ));
                }
            }
            (false, None) if acme.is_some() => {}
            (false, None) => self.err(
                k.clone(),
                "missing `cert` and `key` (or `certificates`, or `acme`)",
            ),
        }
        let min_version = match t.min_version.as_deref() {
            None | Some("1.2") => TlsVersion::Tls12,
            Some("1.3") => TlsVersion::Tls13,
            Some(v) => {
                self.err(
                    k.key("min_version"),
                    format!("unsupported TLS version {v:?}: expected \"1.2\" or \"1.3\""),
                );
                TlsVersion::Tls12
            }
        };
        ListenerTls {
            certificates,
            acme,
            http2: t.http2.is_none_or(|v| v.0),
            min_version,
        }
    }

    /// `tls.acme`: host names checked as DNS names an ACME CA can validate, the directory URL
    /// (or `letsencrypt` / `letsencrypt-staging`), the challenge type, and the storage
    /// directory (default: `$STATE_DIRECTORY/acme` under systemd, else
    /// [`d::ACME_STORAGE`]).
    fn acme(&mut self, a: AcmeFile, k: &KeyPath) -> Acme {
        let mut hosts: Vec<String> = Vec::new();
        match a.hosts {
            None => self.err(
                k.key("hosts"),
                "missing: the host names to get certificates for",
            ),
            Some(list) if list.is_empty() => {
                self.err(k.key("hosts"), "at least one host name is needed")
            }
            Some(list) => {
                for (i, h) in list.into_iter().enumerate() {
                    let h = h.trim_end_matches('.').to_ascii_lowercase();
                    if let Err(why) = acme_host(&h) {
                        self.err(k.key("hosts").index(i), format!("{h:?}: {why}"));
                    } else if hosts.contains(&h) {
                        self.err(k.key("hosts").index(i), format!("{h:?} is listed twice"));
                    } else {
                        hosts.push(h);
                    }
                }
            }
        }
        let directory = match a.directory.as_deref() {
            None | Some("letsencrypt") => d::ACME_DIRECTORY.to_string(),
            Some("letsencrypt-staging") => d::ACME_DIRECTORY_STAGING.to_string(),
            Some(u) if u.starts_with("https://") && u.len() > "https://".len() => u.to_string(),
            Some(u) => {
                self.err(
                    k.key("directory"),
                    format!(
                        "{u:?} is not an ACME directory: an https:// URL, \"letsencrypt\" or \"letsencrypt-staging\""
                    ),
                );
                String::new()
            }
        };
        let challenge = match a.challenge.as_deref() {
            None | Some("tls-alpn-01") => AcmeChallenge::TlsAlpn01,
            Some("http-01") => AcmeChallenge::Http01,
            Some(c) => {
                self.err(
                    k.key("challenge"),
                    format!("unknown challenge {c:?}: expected \"tls-alpn-01\" or \"http-01\""),
                );
                AcmeChallenge::TlsAlpn01
            }
        };
        if let Some(e) = &a.email {
            if !e.contains('@')
                || e.starts_with('@')
                || e.ends_with('@')
                || e.contains(char::is_whitespace)
            {
                self.err(k.key("email"), format!("{e:?} is not an email address"));
            }
        }
        let storage = match a.storage {
            Some(s) => self.resolve_path(&s),
            None => match std::env::var("STATE_DIRECTORY") {
                // systemd's StateDirectory= (a colon-separated list when there are several).
                Ok(v) if !v.is_empty() => {
                    PathBuf::from(v.split(':').next().unwrap_or(&v)).join("acme")
                }
                _ => PathBuf::from(d::ACME_STORAGE),
            },
        };
        let ca_roots = a.ca_roots.map(|p| self.resolve_path(&p));
        if let Some(p) = &ca_roots {
            if !p.is_file() {
                self.err(
                    k.key("ca_roots"),
                    format!("{} is not a readable file", p.display()),
                );
            }
        }
        Acme {
            hosts,
            email: a.email,
            directory,
            challenge,
            storage,
            ca_roots,
            retry_min: dur(a.retry_min, d::ACME_RETRY_MIN),
            key_path: k.clone(),
        }
    }

    /// The admin token from `token` or the first line of `token_file`: at least
    /// [`d::ADMIN_TOKEN_MIN`] characters, no whitespace.
    fn admin_token(
        &mut self,
        token: Option<String>,
        file: Option<String>,
        k: &KeyPath,
    ) -> Option<String> {
        let (value, key) = match (token, file) {
            (Some(_), Some(_)) => {
                self.err(k.key("token_file"), "set token or token_file, not both");
                return None;
            }
            (Some(t), None) => (t, "token"),
            (None, Some(f)) => {
                let path = self.resolve_path(&f);
                match std::fs::read_to_string(&path) {
                    Ok(s) => (
                        s.lines().next().unwrap_or("").trim().to_string(),
                        "token_file",
                    ),
                    Err(e) => {
                        self.err(
                            k.key("token_file"),
                            format!("cannot read {}: {e}", path.display()),
                        );
                        return None;
                    }
                }
            }
            (None, None) => return None,
        };
        if value.len() < d::ADMIN_TOKEN_MIN || value.chars().any(char::is_whitespace) {
            self.err(
                k.key(key),
                format!(
                    "the admin token must be at least {} characters without spaces (e.g. the \
                     output of `openssl rand -hex 32`)",
                    d::ADMIN_TOKEN_MIN
                ),
            );
            return None;
        }
        Some(value)
    }

    fn admin(&mut self, f: AdminFile, listeners: &[Listener]) -> Option<Admin> {
        if f.enabled.is_some_and(|e| !e.0) {
            return None;
        }
        let k = KeyPath::root().key("admin");
        let raw = f.address.unwrap_or_else(|| d::ADMIN_ADDRESS.to_string());
        match parse_listen_address(&raw) {
            Ok(address) => {
                if address.port() != 0 {
                    if let Some(l) = listeners.iter().find(|l| l.address == address) {
                        self.err(
                            k.key("address"),
                            format!("{address} is already used by listener {:?}", l.name),
                        );
                    }
                }
                let token = self.admin_token(f.token, f.token_file, &k);
                if token.is_none() && !address.ip().is_loopback() {
                    self.err(
                        k.key("address"),
                        format!(
                            "{address} is not a loopback address: set admin.token (or \
                             admin.token_file) so /metrics, /status and /reload are not open \
                             to the network"
                        ),
                    );
                }
                Some(Admin { address, token })
            }
            Err(e) => {
                self.err(k.key("address"), e);
                None
            }
        }
    }

    fn upstreams(
        &mut self,
        files: Vec<(String, UpstreamFile)>,
        present: bool,
    ) -> (Vec<Upstream>, HashMap<String, usize>) {
        let root = KeyPath::root().key("upstreams");
        // No upstreams is fine when every route serves files only (checked with the routes).
        let _ = present;
        let mut out = Vec::new();
        let mut index = HashMap::new();
        for (name, f) in files {
            let k = root.key(&name);
            if !is_name(&name) {
                self.err(
                    k.clone(),
                    format!("upstream name {name:?} may only hold letters, digits, '-', '_', '.'"),
                );
            }
            if let Some(u) = self.upstream(name.clone(), f, &k) {
                index.insert(name, out.len());
                out.push(u);
            }
        }
        (out, index)
    }

    fn upstream(&mut self, name: String, f: UpstreamFile, k: &KeyPath) -> Option<Upstream> {
        let mut backends = Vec::new();
        let mut seen_addr = HashMap::new();
        let mut seen_id = HashMap::new();
        let mut discovery = Vec::new();
        let many = matches!(&f.discovery, Some(d) if d.0.len() > 1);
        for (i, d) in f
            .discovery
            .map(|d| d.0)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let dk = if many {
                k.key("discovery").index(i)
            } else {
                k.key("discovery")
            };
            if let Some(disc) = self.discovery(d, &dk) {
                if discovery.contains(&disc) {
                    self.err(dk, format!("{disc} is listed twice"));
                } else {
                    discovery.push(disc);
                }
            }
        }
        match f.backends {
            None if discovery.is_empty() => self.err(
                k.clone(),
                "missing `backends` or `discovery` (for example backends = [\"127.0.0.1:3000\"] or discovery = { dns = \"app.internal\", port = 8080 })",
            ),
            None => {}
            Some(list) if list.is_empty() && discovery.is_empty() => {
                self.err(k.key("backends"), "at least one backend is needed")
            }
            Some(list) => {
                for (i, b) in list.into_iter().enumerate() {
                    let bk = k.key("backends").index(i);
                    let Some(raw) = b.address else {
                        self.err(bk, "missing `address`");
                        continue;
                    };
                    let address = match parse_backend_address(&raw) {
                        Ok(a) => a,
                        Err(e) => {
                            self.err(
                                if b.id.is_some() || b.region.is_some() || b.weight.is_some() {
                                    bk.key("address")
                                } else {
                                    bk
                                },
                                e,
                            );
                            continue;
                        }
                    };
                    if let Some(prev) = seen_addr.insert(address.clone(), i) {
                        self.err(
                            bk.clone(),
                            format!("{address} is listed twice (also backends[{prev}])"),
                        );
                    }
                    if let Some(id) = &b.id {
                        if !is_name(id) {
                            self.err(
                                bk.key("id"),
                                format!("invalid id {id:?} (letters, digits, '-', '_', '.')"),
                            );
                        }
                        if let Some(prev) = seen_id.insert(id.clone(), i) {
                            self.err(
                                bk.key("id"),
                                format!("id {id:?} is used twice (also backends[{prev}])"),
                            );
                        }
                    }
                    if let Some(r) = &b.region {
                        if !is_name(r) {
                            self.err(bk.key("region"), format!("invalid region {r:?}"));
                        }
                    }
                    let weight = b.weight.map_or(1, |w| w.0);
                    if !(1..=1000).contains(&weight) {
                        self.err(
                            bk.key("weight"),
                            format!("{weight} is out of range (1 to 1000)"),
                        );
                    }
                    backends.push(Backend {
                        address,
                        id: b.id,
                        region: b.region,
                        weight,
                    });
                }
            }
        }
        let balance = match f.balance.as_deref() {
            None | Some("least_requests") => Balance::LeastRequests,
            Some("round_robin") => Balance::RoundRobin,
            Some("random") => Balance::Random,
            Some("consistent_hash") => Balance::ConsistentHash,
            Some(other) => {
                let known = ["round_robin", "least_requests", "random", "consistent_hash"];
                self.err(
                    k.key("balance"),
                    format!(
                        "unknown balance {other:?}{}: expected one of {}",
                        suggest(other, known.iter().copied()),
                        known.join(", ")
                    ),
                );
                Balance::LeastRequests
            }
        };
        let hash_on = match f.hash_on.as_deref() {
            None => None,
            Some(spec) => match parse_hash_key(spec) {
                Ok(h) => Some(h),
                Err(e) => {
                    self.err(k.key("hash_on"), e);
                    None
                }
            },
        };
        let hash_on = match (balance, hash_on) {
            (Balance::ConsistentHash, None) => Some(HashKey::ClientIp),
            (Balance::ConsistentHash, h) => h,
            (_, Some(_)) => {
                self.err(
                    k.key("hash_on"),
                    "hash_on only applies with balance = \"consistent_hash\"",
                );
                None
            }
            (_, None) => None,
        };
        let concurrency = self.concurrency(f.concurrency, &k.key("concurrency"));
        let protocol = f.protocol.as_deref().unwrap_or("http");
        let tls = match protocol {
            "http" => {
                // `http2` on plain HTTP is h2c (prior knowledge), for gRPC apps.
                for (set, key) in [
                    (f.tls_server_name.is_some(), "tls_server_name"),
                    (f.tls_skip_verify.is_some(), "tls_skip_verify"),
                ] {
                    if set {
                        self.err(k.key(key), "only applies with protocol = \"https\"");
                    }
                }
                None
            }
            "https" => {
                let server_name = f.tls_server_name.clone().or_else(|| {
                    backends.first().map(|b| match &b.address {
                        BackendAddr::Name { host, .. } => host.clone(),
                        BackendAddr::Ip(a) => a.ip().to_string(),
                    })
                });
                Some(UpstreamTls {
                    server_name: server_name.unwrap_or_default(),
                    skip_verify: f.tls_skip_verify.is_some_and(|v| v.0),
                })
            }
            other => {
                self.err(
                    k.key("protocol"),
                    format!("unknown protocol {other:?}: expected \"http\" or \"https\""),
                );
                None
            }
        };
        let mut timeout = |v: Option<crate::units::Dur>, default: Duration, key: &str| {
            let t = dur(v, default);
            if t.is_zero() {
                self.problems.add(k.key(key), "must be greater than zero");
            }
            t
        };
        let connect_timeout = timeout(f.connect_timeout, d::CONNECT_TIMEOUT, "connect_timeout");
        let read_timeout = timeout(f.read_timeout, d::READ_TIMEOUT, "read_timeout");
        let write_timeout = timeout(f.write_timeout, d::WRITE_TIMEOUT, "write_timeout");
        let idle_timeout = timeout(f.idle_timeout, d::IDLE_TIMEOUT, "idle_timeout");
        let retries = f.retries.map_or(d::RETRIES, |r| r.0);
        if retries > 16 {
            self.err(
                k.key("retries"),
                format!("{retries} is out of range (0 to 16)"),
            );
        }
        if let Some(h) = &f.host_header {
            if h.is_empty() || !is_header_value(h) {
                self.err(
                    k.key("host_header"),
                    format!("invalid host header value {h:?}"),
                );
            }
        }
        let mut checks = Vec::new();
        for (i, c) in f.checks.unwrap_or_default().into_iter().enumerate() {
            if let Some(c) = self.check(c, &k.key("checks").index(i)) {
                checks.push(c);
            }
        }
        let all_unhealthy = match f.all_unhealthy.as_deref() {
            None | Some("fail_open") => AllUnhealthy::FailOpen,
            Some("refuse") => AllUnhealthy::Refuse,
            Some(other) => {
                self.err(
                    k.key("all_unhealthy"),
                    format!("unknown value {other:?}: expected \"fail_open\" (use every backend anyway) or \"refuse\" (answer 503)"),
                );
                AllUnhealthy::FailOpen
            }
        };
        let passive = self.passive(f.passive, &k.key("passive"));
        let socket = self.socket_options(
            k,
            f.tcp_nodelay,
            f.tcp_keepalive,
            f.send_buffer,
            f.recv_buffer,
        );
        let writes = self
            .writes(f.writes, f.write_methods, k, self.has_primary)
            .flatten();
        Some(Upstream {
            name,
            backends,
            discovery,
            balance,
            hash_on,
            concurrency,
            queue_timeout: dur(f.queue_timeout, d::QUEUE_TIMEOUT),
            max_queue: f.max_queue.map_or(d::MAX_QUEUE, |q| q.0),
            connect_timeout,
            read_timeout,
            write_timeout,
            idle_timeout,
            retries,
            tls,
            http2: f.http2.is_some_and(|v| v.0),
            host_header: f.host_header,
            send_proxy_protocol: match f.send_proxy_protocol.as_deref() {
                None => None,
                Some("v1") => Some(ProxyProtocolVersion::V1),
                Some("v2") => Some(ProxyProtocolVersion::V2),
                Some(v) => {
                    self.err(
                        k.key("send_proxy_protocol"),
                        format!("{v:?}: expected \"v1\" or \"v2\""),
                    );
                    None
                }
            },
            checks,
            start_healthy: f.start_healthy.is_some_and(|v| v.0),
            all_unhealthy,
            passive,
            writes,
            socket,
        })
    }

    /// `tcp_nodelay`, `tcp_keepalive`, `send_buffer`, `recv_buffer` of a listener or upstream.
    fn socket_options(
        &mut self,
        k: &KeyPath,
        nodelay: Option<crate::units::Flag>,
        keepalive: Option<crate::file::KeepaliveFile>,
        send: Option<crate::units::Size>,
        recv: Option<crate::units::Size>,
    ) -> crate::SocketOptions {
        use crate::file::KeepaliveFile;
        let keepalive = match keepalive {
            None | Some(KeepaliveFile::Switch(crate::units::Flag(true))) => Some(d::TCP_KEEPALIVE),
            Some(KeepaliveFile::Switch(_)) => None,
            Some(KeepaliveFile::Tuned(t)) => {
                let ka = crate::TcpKeepalive {
                    idle: dur(t.idle, d::TCP_KEEPALIVE.idle),
                    interval: dur(t.interval, d::TCP_KEEPALIVE.interval),
                    count: t.count.map_or(d::TCP_KEEPALIVE.count, |c| c.0),
                };
                // The kernel's ranges (TCP_KEEPIDLE/TCP_KEEPINTVL up to 32767 s, TCP_KEEPCNT
                // up to 127), in whole seconds.
                let kk = k.key("tcp_keepalive");
                for (name, v) in [("idle", ka.idle), ("interval", ka.interval)] {
                    if v < Duration::from_secs(1) || v > Duration::from_secs(32_767) {
                        self.err(kk.key(name), "out of range (1s to 32767s)");
                    }
                }
                if !(1..=127).contains(&ka.count) {
                    self.err(kk.key("count"), "out of range (1 to 127)");
                }
                Some(ka)
            }
        };
        let mut buffer = |v: Option<crate::units::Size>, key: &str| {
            let n = v.map(|s| s.0)?;
            if !(4096..=(64 << 20)).contains(&n) {
                self.err(
                    k.key(key),
                    format!("{n} bytes is out of range (4KiB to 64MiB)"),
                );
            }
            usize::try_from(n).ok()
        };
        let send_buffer = buffer(send, "send_buffer");
        let recv_buffer = buffer(recv, "recv_buffer");
        crate::SocketOptions {
            nodelay: nodelay.is_none_or(|v| v.0),
            keepalive,
            send_buffer,
            recv_buffer,
        }
    }

    fn check(&mut self, f: CheckFile, k: &KeyPath) -> Option<Check> {
        let kind = match f.kind.as_deref() {
            None | Some("http") => CheckKind::Http,
            Some("tcp") => CheckKind::Tcp,
            Some(other) => {
                self.err(
                    k.key("type"),
                    format!("unknown check type {other:?}: expected \"http\" or \"tcp\""),
                );
                return None;
            }
        };
        let interval = dur(f.interval, d::CHECK_INTERVAL);
        let timeout = dur(f.timeout, d::CHECK_TIMEOUT);
        if interval < Duration::from_millis(100) {
            self.err(k.key("interval"), "must be at least 100ms");
        }
        if timeout.is_zero() {
            self.err(k.key("timeout"), "must be greater than zero");
        }
        let path = f.path.clone().unwrap_or_else(|| "/".to_string());
        if !path.starts_with('/') || path.contains(char::is_whitespace) {
            self.err(
                k.key("path"),
                format!("path {path:?} must start with '/' and hold no spaces"),
            );
        }
        let method = f
            .method
            .clone()
            .unwrap_or_else(|| "GET".to_string())
            .to_ascii_uppercase();
        if !is_token(&method) {
            self.err(k.key("method"), format!("invalid method {method:?}"));
        }
        let https = match f.protocol.as_deref() {
            None | Some("http") => false,
            Some("https") => true,
            Some(other) => {
                self.err(
                    k.key("protocol"),
                    format!("unknown protocol {other:?}: expected \"http\" or \"https\""),
                );
                false
            }
        };
        if kind == CheckKind::Tcp {
            for (set, key) in [
                (f.path.is_some(), "path"),
                (f.method.is_some(), "method"),
                (f.protocol.is_some(), "protocol"),
                (f.headers.is_some(), "headers"),
                (f.expect_status.is_some(), "expect_status"),
                (f.tls_server_name.is_some(), "tls_server_name"),
                (f.tls_skip_verify.is_some(), "tls_skip_verify"),
            ] {
                if set {
                    self.err(k.key(key), "only applies to type = \"http\" checks");
                }
            }
        } else if !https {
            for (set, key) in [
                (f.tls_server_name.is_some(), "tls_server_name"),
                (f.tls_skip_verify.is_some(), "tls_skip_verify"),
            ] {
                if set {
                    self.err(k.key(key), "only applies with protocol = \"https\"");
                }
            }
        }
        let mut headers = Vec::new();
        for (name, value) in f.headers.unwrap_or_default() {
            if !is_token(&name) {
                self.err(
                    k.key("headers").key(&name),
                    format!("{name:?} is not a valid header name"),
                );
            } else if !is_header_value(&value) {
                self.err(
                    k.key("headers").key(&name),
                    "header values cannot contain control characters",
                );
            } else {
                headers.push((name, value));
            }
        }
        let rise = f.rise.map_or(d::CHECK_RISE, |v| v.0);
        let fall = f.fall.map_or(d::CHECK_FALL, |v| v.0);
        if !(1..=100).contains(&rise) {
            self.err(k.key("rise"), format!("{rise} is out of range (1 to 100)"));
        }
        if !(1..=100).contains(&fall) {
            self.err(k.key("fall"), format!("{fall} is out of range (1 to 100)"));
        }
        let mut expect_status = Vec::new();
        for (i, st) in f.expect_status.unwrap_or_default().into_iter().enumerate() {
            let parsed = match &st {
                StatusSpec::Code(c) if (100..=599).contains(c) => {
                    Some(StatusMatch::Code(*c as u16))
                }
                StatusSpec::Text(t) => {
                    let t = t.to_ascii_lowercase();
                    match t.as_bytes() {
                        [c @ b'1'..=b'5', b'x', b'x'] => {
                            Some(StatusMatch::Class(u16::from(c - b'0')))
                        }
                        _ => t
                            .parse::<u16>()
                            .ok()
                            .filter(|c| (100..=599).contains(c))
                            .map(StatusMatch::Code),
                    }
                }
                StatusSpec::Code(_) => None,
            };
            match parsed {
                Some(p) => expect_status.push(p),
                None => self.err(
                    k.key("expect_status").index(i),
                    "expected a status code (100 to 599) or a class like \"2xx\"",
                ),
            }
        }
        if expect_status.is_empty() {
            expect_status.push(StatusMatch::Class(2));
        }
        if let Some(p) = f.port {
            if p.0 == 0 {
                self.err(k.key("port"), "port 0 is not a port");
            }
        }
        Some(Check {
            kind,
            path,
            method,
            interval,
            timeout,
            grace_period: dur(f.grace_period, Duration::ZERO),
            https,
            tls_server_name: f.tls_server_name,
            tls_skip_verify: f.tls_skip_verify.is_some_and(|v| v.0),
            headers,
            port: f.port.map(|p| p.0),
            rise,
            fall,
            expect_status,
        })
    }

    fn passive(&mut self, f: Option<PassiveFile>, k: &KeyPath) -> Passive {
        let f = f.unwrap_or_default();
        let eject_for = dur(f.eject_for, d::EJECT_FOR);
        let max_eject_for = dur(f.max_eject_for, d::MAX_EJECT_FOR);
        if eject_for.is_zero() {
            self.err(k.key("eject_for"), "must be greater than zero");
        }
        if max_eject_for < eject_for {
            self.err(k.key("max_eject_for"), "is shorter than eject_for");
        }
        Passive {
            connect_failures: f
                .connect_failures
                .map_or(d::PASSIVE_CONNECT_FAILURES, |v| v.0),
            http_5xx: f.http_5xx.map_or(0, |v| v.0),
            eject_for,
            max_eject_for,
        }
    }

    fn discovery(&mut self, f: DiscoveryFile, k: &KeyPath) -> Option<Discovery> {
        let port = match f.port {
            Some(p) if p.0 > 0 => p.0,
            Some(_) => {
                self.err(k.key("port"), "port 0 is not a backend port");
                return None;
            }
            None => {
                self.err(
                    k.clone(),
                    "missing `port` (the port the discovered backends listen on)",
                );
                return None;
            }
        };
        let source = match (f.dns, f.fly_app) {
            (Some(name), None) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if !is_dns_name(&name) {
                    self.err(k.key("dns"), format!("{name:?} is not a valid DNS name"));
                    return None;
                }
                if let Some(r) = &f.region {
                    if !is_name(r) {
                        self.err(k.key("region"), format!("invalid region {r:?}"));
                    }
                }
                DiscoverySource::Dns {
                    name,
                    region: f.region,
                }
            }
            (None, Some(app)) => {
                if !is_name(&app) || app.contains('.') {
                    self.err(k.key("fly_app"), format!("{app:?} is not a valid app name"));
                    return None;
                }
                if f.region.is_some() {
                    self.err(
                        k.key("region"),
                        "regions come from DNS in Fly mode; `region` only applies with `dns`",
                    );
                }
                DiscoverySource::Fly { app }
            }
            (Some(_), Some(_)) => {
                self.err(k.clone(), "use either `dns` or `fly_app`, not both");
                return None;
            }
            (None, None) => {
                self.err(
                    k.clone(),
                    "missing `dns` (a name to resolve) or `fly_app` (a Fly app on the private network)",
                );
                return None;
            }
        };
        Some(Discovery { source, port })
    }

    fn concurrency(&mut self, f: Option<ConcurrencyFile>, k: &KeyPath) -> Concurrency {
        let Some(f) = f else {
            return Concurrency {
                kind: ConcurrencyKind::Requests,
                soft_limit: u32::MAX,
                hard_limit: u32::MAX,
            };
        };
        let kind = match f.kind.as_deref() {
            None | Some("requests") => ConcurrencyKind::Requests,
            Some("connections") => ConcurrencyKind::Connections,
            Some(other) => {
                self.err(k.key("type"), format!("unknown concurrency type {other:?}: expected \"requests\" or \"connections\""));
                ConcurrencyKind::Requests
            }
        };
        let hard = f.hard_limit.map(|v| v.0);
        let soft = f.soft_limit.map(|v| v.0);
        let (soft_limit, hard_limit) = match (soft, hard) {
            (Some(s), Some(h)) => (s, h),
            (Some(s), None) => (s, u32::MAX),
            (None, Some(h)) => (h, h),
            (None, None) => (u32::MAX, u32::MAX),
        };
        if soft_limit == 0 {
            self.err(k.key("soft_limit"), "must be at least 1");
        }
        if hard_limit == 0 {
            self.err(k.key("hard_limit"), "must be at least 1");
        }
        if soft_limit > hard_limit {
            self.err(
                k.key("soft_limit"),
                format!("soft_limit ({soft_limit}) is above hard_limit ({hard_limit})"),
            );
        }
        Concurrency {
            kind,
            soft_limit,
            hard_limit,
        }
    }

    fn header_rules(&mut self, f: Option<HeaderRulesFile>, k: &KeyPath) -> HeaderRules {
        let Some(f) = f else {
            return HeaderRules::default();
        };
        let mut rules = HeaderRules::default();
        for (field, map, dst) in [
            ("set", f.set, &mut rules.set),
            ("add", f.add, &mut rules.add),
        ] {
            for (name, value) in map.unwrap_or_default() {
                let hk = k.key(field).key(&name);
                if !is_token(&name) {
                    self.problems
                        .add(hk, format!("{name:?} is not a valid header name"));
                } else if !is_header_value(&value) {
                    self.problems
                        .add(hk, "header values cannot contain control characters");
                } else {
                    dst.push((name.to_ascii_lowercase(), value));
                }
            }
        }
        for (i, name) in f.remove.unwrap_or_default().into_iter().enumerate() {
            if is_token(&name) {
                rules.remove.push(name.to_ascii_lowercase());
            } else {
                self.err(
                    k.key("remove").index(i),
                    format!("{name:?} is not a valid header name"),
                );
            }
        }
        rules
    }

    fn routes(
        &mut self,
        files: Vec<(usize, RouteFile)>,
        present: bool,
        upstreams: &[Upstream],
        index: &HashMap<String, usize>,
    ) -> Vec<Route> {
        let root = KeyPath::root().key("routes");
        if files.is_empty() && !present {
            // Without routes, a single upstream takes every request.
            return match upstreams {
                [_] => vec![Route::new("default", Vec::new(), "/", 0)],
                [] => Vec::new(),
                _ => {
                    self.err(root, "several upstreams and no routes: add [[routes]] saying which requests go to which upstream");
                    Vec::new()
                }
            };
        }
        let mut out = Vec::new();
        let mut seen: HashMap<(String, String), usize> = HashMap::new();
        let mut names: HashSet<String> = HashSet::new();
        // Affinity cookie name -> (route index, upstream name) of the first route using it.
        let mut cookies: HashMap<String, (usize, String)> = HashMap::new();
        for (i, f) in files {
            let k = root.index(i);
            let mut hosts = Vec::new();
            for (j, h) in f.host.clone().unwrap_or_default().0.iter().enumerate() {
                let hk = if f.host.as_ref().is_some_and(|h| h.0.len() > 1) {
                    k.key("host").index(j)
                } else {
                    k.key("host")
                };
                match validate_host_pattern(h) {
                    Ok(h) => hosts.push(h),
                    Err(e) => self.err(hk, e),
                }
            }
            let path = f.path.clone().unwrap_or_else(|| "/".to_string());
            if !path.starts_with('/') || path.contains(['?', '#']) {
                self.err(
                    k.key("path"),
                    format!("path {path:?} must start with '/' and hold no query or fragment"),
                );
            } else if normalize_path(&path) != path {
                self.err(
                    k.key("path"),
                    format!(
                        "path {path:?} is not normalized (write {:?})",
                        normalize_path(&path)
                    ),
                );
            }
            let upstream_given = f.upstream.is_some();
            let upstream = match &f.upstream {
                // A files-only route needs no upstream (the index is never used).
                None if f.static_files.is_some() => Some(0),
                None => {
                    self.err(
                        k.clone(),
                        "missing `upstream` (the upstream this route sends requests to)",
                    );
                    None
                }
                Some(u) => match index.get(u) {
                    Some(&idx) => Some(idx),
                    None => {
                        let hint = suggest(u, upstreams.iter().map(|x| x.name.as_str()));
                        self.err(k.key("upstream"), format!("no upstream named {u:?}{hint}"));
                        None
                    }
                },
            };
            let host_keys: Vec<String> = if hosts.is_empty() {
                vec!["*any*".into()]
            } else {
                hosts.clone()
            };
            for h in &host_keys {
                if let Some(prev) = seen.insert((h.clone(), path.clone()), i) {
                    let shown = if h == "*any*" {
                        "any host".to_string()
                    } else {
                        format!("host {h:?}")
                    };
                    self.err(
                        k.key("path"),
                        format!("{shown} with path {path:?} is already routed by routes[{prev}]"),
                    );
                }
            }
            let name = f.name.clone().unwrap_or_else(|| {
                format!("{}{}", hosts.first().map_or("*", |h| h.as_str()), path)
            });
            if !names.insert(name.clone()) {
                self.err(k.key("name"), format!("route name {name:?} is used twice"));
            }
            let strip_prefix = f.strip_prefix.is_some_and(|v| v.0);
            if strip_prefix && path == "/" {
                self.err(
                    k.key("strip_prefix"),
                    "strip_prefix needs a path other than \"/\"",
                );
            }
            let writes = self.writes(
                f.writes.clone(),
                f.write_methods.clone(),
                &k,
                self.has_primary,
            );
            let mut replay_cache = Vec::new();
            for (j, r) in f.replay_cache.unwrap_or_default().into_iter().enumerate() {
                let rk = k.key("replay_cache").index(j);
                let rpath = r.path.unwrap_or_else(|| path.clone());
                if !rpath.starts_with('/') {
                    self.err(
                        rk.key("path"),
                        format!("path {rpath:?} must start with '/'"),
                    );
                }
                let key = match (r.cookie, r.header) {
                    (Some(c), None) if is_token(&c) => Some(SessionKey::Cookie(c)),
                    (None, Some(h)) if is_token(&h) => {
                        Some(SessionKey::Header(h.to_ascii_lowercase()))
                    }
                    (Some(_), Some(_)) => {
                        self.err(rk.clone(), "use either `cookie` or `header`, not both");
                        None
                    }
                    (None, None) => {
                        self.err(
                            rk.clone(),
                            "missing `cookie` or `header` (the session identity)",
                        );
                        None
                    }
                    _ => {
                        self.err(rk.clone(), "invalid cookie or header name");
                        None
                    }
                };
                let ttl = dur(r.ttl, Duration::from_secs(600));
                if ttl.is_zero() {
                    self.err(rk.key("ttl"), "must be greater than zero");
                }
                if let Some(key) = key {
                    replay_cache.push(ReplayCacheRule {
                        path: rpath,
                        key,
                        ttl,
                    });
                }
            }
            let request_headers = self.header_rules(f.request_headers, &k.key("request_headers"));
            let response_headers =
                self.header_rules(f.response_headers, &k.key("response_headers"));
            let sticky = f
                .sticky
                .and_then(|s| self.sticky(s, &k.key("sticky"), f.upstream.as_deref()));
            if let (Some(Sticky::Cookie(c)), Some(up)) = (&sticky, &f.upstream) {
                // Two upstreams cannot share one pin cookie: each would find the other's pin
                // invalid and overwrite it, so their clients would never stay put.
                match cookies.get(&c.name) {
                    Some((prev, other)) if other != up => self.err(
                        k.key("sticky").key("name"),
                        format!(
                            "cookie {:?} already pins clients of routes[{prev}] to upstream {other:?}; routes to different upstreams need different cookie names",
                            c.name
                        ),
                    ),
                    Some(_) => {}
                    None => {
                        cookies.insert(c.name.clone(), (i, up.clone()));
                    }
                }
            }
            let static_files = f
                .static_files
                .and_then(|s| self.static_files(s, &k.key("static"), upstream_given));
            let ws_idle_timeout = f.ws_idle_timeout.map(|d| d.0).filter(|d| !d.is_zero());
            let max_websockets = match f.max_websockets.map(|n| n.0) {
                Some(0) => {
                    self.err(
                        k.key("max_websockets"),
                        "must be at least 1 (leave it out for no limit)",
                    );
                    None
                }
                n => n.map(|n| n as usize),
            };
            let ip_rules = ip_rules(self, f.allow, f.deny, &k);
            let rate_limit = f
                .rate_limit
                .and_then(|r| self.rate_limit(r, &k.key("rate_limit")));
            let compress = f
                .compress
                .and_then(|c| self.compress(c, &k.key("compress")));
            if let Some(upstream) = upstream {
                out.push(Route {
                    name,
                    hosts,
                    path,
                    upstream,
                    max_body: f.max_body.map(|s| s.0),
                    buffer_requests: f.buffer_requests.is_some_and(|v| v.0),
                    strip_prefix,
                    request_headers,
                    response_headers,
                    writes,
                    replay_cache,
                    sticky,
                    static_files,
                    ws_idle_timeout,
                    max_websockets,
                    ip_rules,
                    rate_limit,
                    compress,
                });
            }
        }
        out
    }

    /// The sources allowed to send PROXY protocol headers: `proxy_protocol_from`, else
    /// `[server] trusted_proxies`; `proxy_protocol = true` with neither is an error (anyone
    /// could claim any address).
    fn proxy_protocol_from(
        &mut self,
        on: bool,
        from: Option<Vec<String>>,
        trusted: &[IpNet],
        k: &KeyPath,
    ) -> Vec<IpNet> {
        let mut nets = Vec::new();
        for (i, p) in from.iter().flatten().enumerate() {
            match parse_cidr(p) {
                Ok(n) => nets.push(n),
                Err(e) => self.err(k.key("proxy_protocol_from").index(i), e),
            }
        }
        if !on {
            if from.is_some() {
                self.err(
                    k.key("proxy_protocol_from"),
                    "set proxy_protocol = true too (or remove this)",
                );
            }
            return Vec::new();
        }
        if nets.is_empty() && from.is_none() {
            nets = trusted.to_vec();
        }
        if nets.is_empty() {
            self.err(
                k.key("proxy_protocol"),
                "PROXY protocol needs the addresses of the load balancers that send it: set \
                 proxy_protocol_from = [\"10.0.0.0/8\"] (or [server] trusted_proxies)",
            );
        }
        nets
    }

    /// `compress = true | false | { min_size, types, gzip, brotli, zstd }`.
    fn compress(&mut self, f: CompressFile, k: &KeyPath) -> Option<Compress> {
        let t = match f {
            CompressFile::On(false) => return None,
            CompressFile::On(true) => return Some(Compress::default()),
            CompressFile::Table(t) => t,
        };
        let mut c = Compress::default();
        if let Some(m) = t.min_size {
            c.min_size = m.0;
        }
        if let Some(types) = t.types {
            for (i, ty) in types.iter().enumerate() {
                // `type/subtype`, `type/*` or `type/*+suffix`.
                let ok = ty.split_once('/').is_some_and(|(t, sub)| {
                    is_token(t)
                        && !t.contains('*')
                        && (sub == "*"
                            || sub
                                .strip_prefix('*')
                                .map_or(is_token(sub) && !sub.contains('*'), |rest| {
                                    rest.starts_with('+') && is_token(rest)
                                }))
                });
                if !ok {
                    self.err(
                        k.key("types").index(i),
                        format!("{ty:?} is not a media type (\"text/html\"), \"text/*\" or \"application/*+json\""),
                    );
                }
            }
            c.types = types.into_iter().map(|t| t.to_ascii_lowercase()).collect();
        }
        for (name, v, max, out) in [
            ("gzip", t.gzip, 9, &mut c.gzip_level),
            ("brotli", t.brotli, 11, &mut c.brotli_level),
            ("zstd", t.zstd, 19, &mut c.zstd_level),
        ] {
            if let Some(v) = v.map(|v| v.0) {
                if v > max {
                    self.err(
                        k.key(name),
                        format!("level {v} is above {max} (0 turns it off)"),
                    );
                } else {
                    *out = v as u32;
                }
            }
        }
        if c.gzip_level == 0 && c.brotli_level == 0 && c.zstd_level == 0 {
            self.err(
                k.clone(),
                "every coding is off: use compress = false instead",
            );
        }
        Some(c)
    }

    /// `rate_limit = { requests, per, key, max_clients }`.
    fn rate_limit(&mut self, f: RateLimitFile, k: &KeyPath) -> Option<RateLimit> {
        let requests = match f.requests.map(|n| n.0) {
            None => {
                self.err(k.key("requests"), "missing: requests allowed per window");
                return None;
            }
            Some(0) => {
                self.err(k.key("requests"), "must be at least 1");
                return None;
            }
            Some(n) => u32::try_from(n).unwrap_or(u32::MAX),
        };
        let per = f.per.map_or(Duration::from_secs(60), |d| d.0);
        if per < Duration::from_secs(1) || per > Duration::from_secs(86_400) {
            self.err(k.key("per"), "the window must be between 1s and 24h");
            return None;
        }
        let key = match f.key.as_deref() {
            None | Some("ip") => RateKey::Ip,
            Some(s) => match s.split_once(':') {
                Some(("header", name)) if is_token(name) => {
                    RateKey::Header(name.to_ascii_lowercase())
                }
                Some(("cookie", name)) if is_token(name) => RateKey::Cookie(name.to_string()),
                _ => {
                    self.err(
                        k.key("key"),
                        format!("{s:?}: expected \"ip\", \"header:NAME\" or \"cookie:NAME\""),
                    );
                    return None;
                }
            },
        };
        let max_clients = match f.max_clients.map(|n| n.0) {
            None => d::RATE_LIMIT_MAX_CLIENTS,
            Some(n) if (1..=10_000_000).contains(&n) => n as usize,
            Some(_) => {
                self.err(k.key("max_clients"), "must be between 1 and 10000000");
                return None;
            }
        };
        Some(RateLimit {
            requests,
            per,
            key,
            max_clients,
        })
    }

    /// `static = { root = "...", ... }`.
    fn static_files(
        &mut self,
        f: StaticFile,
        k: &KeyPath,
        upstream_given: bool,
    ) -> Option<StaticFiles> {
        let Some(root) = f.root.filter(|r| !r.is_empty()) else {
            self.err(k.key("root"), "missing: the directory to serve files from");
            return None;
        };
        let root_path = std::path::PathBuf::from(&root);
        if !root_path.is_absolute() {
            self.err(k.key("root"), format!("{root:?} must be an absolute path"));
        }
        let try_files = f.try_files.is_some_and(|v| v.0);
        if try_files && !upstream_given {
            self.err(
                k.key("try_files"),
                "try_files proxies to the route's upstream when no file matches: set `upstream`",
            );
        }
        let name_ok =
            |n: &str| !n.is_empty() && !n.contains(['/', '\\', '\0']) && n != "." && n != "..";
        for (key, v) in [("index", &f.index), ("fallback", &f.fallback)] {
            if let Some(n) = v {
                if !name_ok(n.trim_start_matches('/')) {
                    self.err(k.key(key), format!("{n:?} must be a file name inside root"));
                }
            }
        }
        let fallback_all = match f.fallback_for.as_deref() {
            None | Some("extensionless") => false,
            Some("all") => true,
            Some(other) => {
                self.err(
                    k.key("fallback_for"),
                    format!("{other:?} is not one of \"extensionless\", \"all\""),
                );
                false
            }
        };
        if f.fallback_for.is_some() && f.fallback.is_none() {
            self.err(
                k.key("fallback_for"),
                "only applies with `fallback` (the file to serve)",
            );
        }
        let header_ok =
            |v: &str| !v.is_empty() && v.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
        let cache_control = f.cache_control.unwrap_or_else(|| "no-cache".to_string());
        if !header_ok(&cache_control) {
            self.err(k.key("cache_control"), "not a valid header value");
        }
        let immutable_cache_control = f
            .immutable_cache_control
            .unwrap_or_else(|| "public, max-age=31536000, immutable".to_string());
        if !header_ok(&immutable_cache_control) {
            self.err(k.key("immutable_cache_control"), "not a valid header value");
        }
        let immutable_paths = f.immutable_paths.unwrap_or_default();
        for (i, p) in immutable_paths.iter().enumerate() {
            if !p.starts_with('/') {
                self.err(
                    k.key("immutable_paths").index(i),
                    format!("{p:?} must start with '/'"),
                );
            }
        }
        Some(StaticFiles {
            root: root_path,
            index: Some(f.index.unwrap_or_else(|| "index.html".to_string()))
                .filter(|s| !s.is_empty())
                .map(|s| s.trim_start_matches('/').to_string()),
            fallback: f
                .fallback
                .filter(|s| !s.is_empty())
                .map(|s| s.trim_start_matches('/').to_string()),
            fallback_all,
            try_files,
            cache_control,
            immutable_cache_control,
            hashed_names: f.hashed_names.is_none_or(|v| v.0),
            immutable_paths,
            precompressed: f.precompressed.is_none_or(|v| v.0),
            compress: f.compress.is_some_and(|v| v.0),
            compress_min_size: f.compress_min_size.map_or(1024, |s| s.0),
            dotfiles: f.dotfiles.is_some_and(|v| v.0),
        })
    }

    /// `sticky = { mode = "cookie" | "header" | "query" | "client_ip", ... }`.
    fn sticky(&mut self, f: StickyFile, k: &KeyPath, upstream: Option<&str>) -> Option<Sticky> {
        let mode = f.mode.as_deref().unwrap_or("cookie");
        let name_ok = |n: &str| is_token(n);
        let cookie_only = [
            ("path", f.path.is_some()),
            ("max_age", f.max_age.is_some()),
            ("secure", f.secure.is_some()),
            ("http_only", f.http_only.is_some()),
            ("same_site", f.same_site.is_some()),
            ("key", f.key.is_some()),
        ];
        if mode != "cookie" {
            for (key, set) in cookie_only {
                if set {
                    self.err(k.key(key), "only applies with mode = \"cookie\"");
                }
            }
        }
        match mode {
            "cookie" => {
                // One cookie per upstream by default, so routes to different upstreams on one
                // host keep their pins apart.
                let name = f.name.unwrap_or_else(|| match upstream {
                    Some(u) => format!("{}_{u}", d::STICKY_COOKIE),
                    None => d::STICKY_COOKIE.to_string(),
                });
                if !name_ok(&name) {
                    self.err(k.key("name"), format!("invalid cookie name {name:?}"));
                }
                let path = f.path.unwrap_or_else(|| "/".to_string());
                if !path.starts_with('/') || path.bytes().any(|b| b == b';' || b.is_ascii_control())
                {
                    self.err(k.key("path"), format!("invalid cookie path {path:?}"));
                }
                let same_site = match f
                    .same_site
                    .as_deref()
                    .map(str::to_ascii_lowercase)
                    .as_deref()
                {
                    None => Some("Lax".to_string()),
                    Some("lax") => Some("Lax".to_string()),
                    Some("strict") => Some("Strict".to_string()),
                    Some("none") => Some("None".to_string()),
                    Some("") | Some("off") => None,
                    Some(other) => {
                        self.err(
                            k.key("same_site"),
                            format!("unknown value {other:?}: expected \"lax\", \"strict\", \"none\" or \"off\""),
                        );
                        None
                    }
                };
                let key = f.key.filter(|k| !k.is_empty());
                if key.as_ref().is_some_and(|s| s.len() < 16) {
                    self.err(k.key("key"), "signing key too short: use at least 16 characters (e.g. `openssl rand -hex 32`)");
                }
                Some(Sticky::Cookie(StickyCookie {
                    name,
                    path,
                    max_age: f.max_age.map(|d| d.0),
                    secure: f.secure.map(|v| v.0),
                    http_only: f.http_only.is_none_or(|v| v.0),
                    same_site,
                    key,
                }))
            }
            "header" | "query" => {
                let Some(name) = f.name else {
                    self.err(
                        k.key("name"),
                        format!("mode = {mode:?} needs `name` (the {mode} to hash on)"),
                    );
                    return None;
                };
                if mode == "header" {
                    if !name_ok(&name) {
                        self.err(k.key("name"), format!("invalid header name {name:?}"));
                        return None;
                    }
                    Some(Sticky::Hash(HashKey::Header(name.to_ascii_lowercase())))
                } else {
                    if name.is_empty() || name.contains(['&', '=', '#']) {
                        self.err(k.key("name"), format!("invalid query parameter {name:?}"));
                        return None;
                    }
                    Some(Sticky::Hash(HashKey::Query(name)))
                }
            }
            "client_ip" => {
                if f.name.is_some() {
                    self.err(k.key("name"), "mode = \"client_ip\" takes no name");
                }
                Some(Sticky::Hash(HashKey::ClientIp))
            }
            other => {
                self.err(
                    k.key("mode"),
                    format!("unknown mode {other:?}: expected \"cookie\", \"header\", \"query\" or \"client_ip\""),
                );
                None
            }
        }
    }
}

/// A DNS name: dot-separated labels of letters, digits, `-` and `_`, at most 253 characters.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Parses a name server address: `ip`, `ip:port` or `[v6]:port` (port 53 by default).
pub fn parse_dns_server(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(ip) = s
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
    {
        return Ok(SocketAddr::new(ip, 53));
    }
    Err(format!("invalid name server {s:?}: expected an IP address, optionally with a port (\"[fdaa::3]:53\", \"10.0.0.2\")"))
}

/// Parses `hash_on`: `client_ip`, `path`, `header:NAME` or `cookie:NAME`.
pub fn parse_hash_key(spec: &str) -> Result<HashKey, String> {
    let usage = || {
        format!("invalid hash_on {spec:?}: expected \"client_ip\", \"path\", \"header:NAME\", \"cookie:NAME\" or \"query:NAME\"")
    };
    match spec.split_once(':') {
        None if spec == "client_ip" => Ok(HashKey::ClientIp),
        None if spec == "path" => Ok(HashKey::Path),
        Some(("header", name)) if is_token(name) => Ok(HashKey::Header(name.to_ascii_lowercase())),
        Some(("cookie", name)) if is_token(name) => Ok(HashKey::Cookie(name.to_string())),
        Some(("query", name)) if !name.is_empty() && !name.contains(['&', '=', '#']) => {
            Ok(HashKey::Query(name.to_string()))
        }
        _ => Err(usage()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(parse_listen_address("0.0.0.0:80").unwrap().port(), 80);
        assert_eq!(parse_listen_address("[::]:8443").unwrap().port(), 8443);
        assert_eq!(
            parse_listen_address(":8080").unwrap().to_string(),
            "0.0.0.0:8080"
        );
        assert_eq!(
            parse_listen_address("localhost:8080").unwrap().to_string(),
            "127.0.0.1:8080"
        );
        for bad in [
            "",
            "8080",
            "example.com:80",
            "1.2.3.4",
            "1.2.3.4:99999",
            ":x",
        ] {
            assert!(parse_listen_address(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn backend_addresses() {
        assert!(matches!(
            parse_backend_address("10.0.0.1:3000"),
            Ok(BackendAddr::Ip(_))
        ));
        assert!(matches!(
            parse_backend_address("[fdaa::1]:80"),
            Ok(BackendAddr::Ip(_))
        ));
        assert_eq!(
            parse_backend_address("App.Local:3000"),
            Ok(BackendAddr::Name {
                host: "app.local".into(),
                port: 3000
            })
        );
        for bad in [
            "",
            "10.0.0.1",
            "host",
            "host:",
            "host:0",
            "ho st:80",
            "http://x:80",
            "fdaa::1:80",
            "[fdaa::1]",
        ] {
            assert!(parse_backend_address(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn hash_keys() {
        assert_eq!(parse_hash_key("client_ip"), Ok(HashKey::ClientIp));
        assert_eq!(parse_hash_key("path"), Ok(HashKey::Path));
        assert_eq!(
            parse_hash_key("header:X-User"),
            Ok(HashKey::Header("x-user".into()))
        );
        assert_eq!(
            parse_hash_key("cookie:sid"),
            Ok(HashKey::Cookie("sid".into()))
        );
        assert_eq!(
            parse_hash_key("query:sid"),
            Ok(HashKey::Query("sid".into()))
        );
        for bad in ["", "ip", "header:", "cookie:a b", "query:", "query:a=b"] {
            assert!(parse_hash_key(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn suggestions() {
        assert_eq!(
            suggest("ap", ["app", "api2", "web"].into_iter()),
            " (did you mean \"app\"?)"
        );
        assert_eq!(suggest("zzzzzz", ["app"].into_iter()), "");
        assert_eq!(
            suggest("round-robin", ["round_robin", "random"].into_iter()),
            " (did you mean \"round_robin\"?)"
        );
    }

    #[test]
    fn host_patterns() {
        assert_eq!(validate_host_pattern("Example.COM").unwrap(), "example.com");
        assert_eq!(
            validate_host_pattern("*.example.com").unwrap(),
            "*.example.com"
        );
        for bad in [
            "https://a.com",
            "a.com:80",
            "a.*.com",
            "*",
            "a b",
            "a.com/x",
            "",
        ] {
            assert!(validate_host_pattern(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn log_levels() {
        assert!(parse_log_level("info").is_ok());
        assert!(parse_log_level("portico=debug,pingora=warn").is_ok());
        assert!(parse_log_level("loud").is_err());
        assert!(parse_log_level("portico=loud").is_err());
    }
}

//! Turns the file model into the runtime model, collecting every problem on the way.

//!
//! One submodule per section of the file model; each adds the `Validator` methods for its
//! section. Shared helpers (names, addresses, suggestions) live here.

mod acme;
mod health;
mod listeners;
mod routes;
mod server;
mod statics;
mod upstreams;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

use crate::error::{KeyPath, Problems};
use crate::file::*;
use crate::model::*;
use crate::routing::RouteTable;

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
    pub(super) fn err(&mut self, key: KeyPath, msg: impl Into<String>) {
        self.problems.add(key, msg);
    }

    pub(super) fn resolve_path(&self, p: &str) -> PathBuf {
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

//! The file model: what a `portico.toml` may contain, exactly as written.
//!
//! Every struct denies unknown fields, so a typo is an error and not a silently ignored key.
//! Everything is optional here; defaults and cross-checks are applied by [`crate::validate`].

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, value::MapAccessDeserializer, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

use crate::closed::Protocol;
use crate::model::{
    AccessLogFormat, AcmeChallenge, AllUnhealthy, Balance, CheckKind, ConcurrencyKind, LogFormat,
    ProxyProtocolVersion, TlsVersion,
};
use crate::units::{Dur, Flag, Int, Size};

/// `[server]`: process-wide settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    pub name: Option<String>,
    pub region: Option<String>,
    pub threads: Option<Int<usize>>,
    pub work_stealing: Option<Flag>,
    pub shutdown_timeout: Option<Dur>,
    pub drain_grace: Option<Dur>,
    pub log_level: Option<String>,
    pub log_format: Option<LogFormat>,
    pub access_log: Option<Flag>,
    pub access_log_format: Option<AccessLogFormat>,
    pub trusted_proxies: Option<Vec<String>>,
    pub fly_headers: Option<Flag>,
    pub request_id_header: Option<String>,
    pub max_open_files: Option<Int<u64>>,
    pub region_order: Option<Vec<String>>,
    pub routing_headers: Option<Flag>,
    pub primary_region: Option<String>,
}

/// `[replay]`: fly-replay handling.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayFile {
    pub enabled: Option<Flag>,
    pub max_body: Option<Size>,
    pub cache_size: Option<Int<usize>>,
}

/// One session-based replay cache rule of a route.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplayCacheFile {
    pub path: Option<String>,
    pub cookie: Option<String>,
    pub header: Option<String>,
    pub ttl: Option<Dur>,
}

/// `[dns]`: the resolver used for discovery.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsFile {
    pub servers: Option<Vec<String>>,
    pub timeout: Option<Dur>,
    pub attempts: Option<Int<usize>>,
    pub min_ttl: Option<Dur>,
    pub max_ttl: Option<Dur>,
    pub stale_for: Option<Dur>,
    pub startup_wait: Option<Dur>,
}

/// `discovery = { dns = "app.internal", port = 8080 }` or `{ fly_app = "app", port = 8080 }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscoveryFile {
    pub dns: Option<String>,
    pub fly_app: Option<String>,
    pub port: Option<Int<u16>>,
    pub region: Option<String>,
}

/// One discovery table or a list of them.
#[derive(Debug, Default)]
pub struct Discoveries(pub Vec<DiscoveryFile>);

impl<'de> Deserialize<'de> for Discoveries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Discoveries;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a table { dns = ..., port = ... } or a list of them")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Discoveries, A::Error> {
                Ok(Discoveries(vec![DiscoveryFile::deserialize(
                    MapAccessDeserializer::new(map),
                )?]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Discoveries, A::Error> {
                let mut out = Vec::new();
                while let Some(d) = seq.next_element::<DiscoveryFile>()? {
                    out.push(d);
                }
                Ok(Discoveries(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// One `[[listeners]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerFile {
    pub name: Option<String>,
    pub address: Option<String>,
    pub tls: Option<TlsFile>,
    pub force_https: Option<Flag>,
    pub https_port: Option<Int<u16>>,
    pub redirect_status: Option<Int<u16>>,
    pub h2c: Option<Flag>,
    pub max_connections: Option<Int<usize>>,
    pub header_read_timeout: Option<Dur>,
    pub keepalive_timeout: Option<Dur>,
    pub body_read_timeout: Option<Dur>,
    pub min_body_rate: Option<Size>,
    pub max_header_size: Option<Size>,
    pub max_requests_per_connection: Option<Int<u32>>,
    pub reuse_port: Option<Flag>,
    pub backlog: Option<Int<u32>>,
    pub tcp_fastopen: Option<Int<usize>>,
    pub tcp_nodelay: Option<Flag>,
    pub tcp_keepalive: Option<KeepaliveFile>,
    pub send_buffer: Option<Size>,
    pub recv_buffer: Option<Size>,
    pub tcp_defer_accept: Option<Dur>,
    pub ipv6_only: Option<Flag>,
    pub freebind: Option<Flag>,
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
    pub max_connections_per_ip: Option<Int<u64>>,
    pub proxy_protocol: Option<Flag>,
    pub proxy_protocol_from: Option<Vec<String>>,
}

/// `tcp_keepalive`: `false`, `true` (the defaults) or `{ idle, interval, count }`.
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "true, false or a table { idle = \"60s\", interval = \"15s\", count = 4 }"
)]
pub enum KeepaliveFile {
    /// On with the defaults, or off.
    Switch(Flag),
    /// On with these values (the rest default).
    Tuned(KeepaliveTable),
}

/// `tcp_keepalive = { ... }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepaliveTable {
    pub idle: Option<Dur>,
    pub interval: Option<Dur>,
    pub count: Option<Int<u32>>,
}

/// `tls = { ... }` of a listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFile {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub certificates: Option<Vec<CertFile>>,
    pub http2: Option<Flag>,
    pub min_version: Option<TlsVersion>,
    pub acme: Option<AcmeFile>,
}

/// `tls.acme = { ... }` of a listener.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcmeFile {
    pub hosts: Option<Vec<String>>,
    pub email: Option<String>,
    pub directory: Option<String>,
    pub challenge: Option<AcmeChallenge>,
    pub storage: Option<String>,
    pub ca_roots: Option<String>,
    pub retry_min: Option<Dur>,
}

/// One certificate and key pair.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertFile {
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// `[admin]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminFile {
    pub address: Option<String>,
    pub enabled: Option<Flag>,
    pub token: Option<String>,
    pub token_file: Option<String>,
}

/// One `[upstreams.<name>]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamFile {
    pub backends: Option<Vec<BackendFile>>,
    pub discovery: Option<Discoveries>,
    pub balance: Option<Balance>,
    pub hash_on: Option<String>,
    pub concurrency: Option<ConcurrencyFile>,
    pub queue_timeout: Option<Dur>,
    pub max_queue: Option<Int<usize>>,
    pub connect_timeout: Option<Dur>,
    pub read_timeout: Option<Dur>,
    pub write_timeout: Option<Dur>,
    pub idle_timeout: Option<Dur>,
    pub retries: Option<Int<usize>>,
    pub protocol: Option<Protocol>,
    pub tls_server_name: Option<String>,
    pub tls_skip_verify: Option<Flag>,
    pub tls_ca: Option<String>,
    pub http2: Option<Flag>,
    pub host_header: Option<String>,
    pub send_proxy_protocol: Option<ProxyProtocolVersion>,
    pub checks: Option<Vec<CheckFile>>,
    pub start_healthy: Option<Flag>,
    pub all_unhealthy: Option<AllUnhealthy>,
    pub passive: Option<PassiveFile>,
    pub writes: Option<String>,
    pub write_methods: Option<Vec<String>>,
    pub tcp_nodelay: Option<Flag>,
    pub tcp_keepalive: Option<KeepaliveFile>,
    pub send_buffer: Option<Size>,
    pub recv_buffer: Option<Size>,
}

/// One `[[upstreams.NAME.checks]]` entry (fly.toml's check vocabulary).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckFile {
    #[serde(rename = "type")]
    pub kind: Option<CheckKind>,
    pub path: Option<String>,
    pub method: Option<String>,
    pub interval: Option<Dur>,
    pub timeout: Option<Dur>,
    pub grace_period: Option<Dur>,
    pub protocol: Option<Protocol>,
    pub tls_server_name: Option<String>,
    pub tls_skip_verify: Option<Flag>,
    pub headers: Option<BTreeMap<String, String>>,
    pub port: Option<Int<u16>>,
    pub rise: Option<Int<u32>>,
    pub fall: Option<Int<u32>>,
    pub expect_status: Option<Vec<StatusSpec>>,
}

/// `passive = { connect_failures = 3, http_5xx = 0, eject_for = "10s", max_eject_for = "5m" }`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassiveFile {
    pub connect_failures: Option<Int<u32>>,
    pub http_5xx: Option<Int<u32>>,
    pub eject_for: Option<Dur>,
    pub max_eject_for: Option<Dur>,
}

/// A status code (`200`) or a class (`"2xx"`).
#[derive(Debug, Clone)]
pub enum StatusSpec {
    Code(i64),
    Text(String),
}

impl<'de> Deserialize<'de> for StatusSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = StatusSpec;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a status code like 200 or a class like \"2xx\"")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StatusSpec, E> {
                Ok(StatusSpec::Code(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StatusSpec, E> {
                Ok(StatusSpec::Text(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// `concurrency = { type = "requests", soft_limit = 200, hard_limit = 250 }` (fly.toml's shape).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyFile {
    #[serde(rename = "type")]
    pub kind: Option<ConcurrencyKind>,
    pub soft_limit: Option<Int<u32>>,
    pub hard_limit: Option<Int<u32>>,
}

/// A backend: `"10.0.0.1:3000"` or `{ address = "...", id = "...", region = "...", weight = 2 }`.
#[derive(Debug, Default)]
pub struct BackendFile {
    pub address: Option<String>,
    pub id: Option<String>,
    pub region: Option<String>,
    pub weight: Option<Int<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendTable {
    address: Option<String>,
    id: Option<String>,
    region: Option<String>,
    weight: Option<Int<u32>>,
}

impl<'de> Deserialize<'de> for BackendFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BackendFile;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an address string like \"10.0.0.1:3000\" or a table { address = ... }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<BackendFile, E> {
                Ok(BackendFile {
                    address: Some(v.to_string()),
                    ..Default::default()
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<BackendFile, A::Error> {
                let t = BackendTable::deserialize(MapAccessDeserializer::new(map))?;
                Ok(BackendFile {
                    address: t.address,
                    id: t.id,
                    region: t.region,
                    weight: t.weight,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// One `[[routes]]` entry.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteFile {
    pub name: Option<String>,
    pub host: Option<OneOrMany>,
    pub path: Option<String>,
    pub upstream: Option<String>,
    pub max_body: Option<Size>,
    pub buffer_requests: Option<Flag>,
    pub strip_prefix: Option<Flag>,
    pub request_headers: Option<HeaderRulesFile>,
    pub response_headers: Option<HeaderRulesFile>,
    pub writes: Option<String>,
    pub write_methods: Option<Vec<String>>,
    pub replay_cache: Option<Vec<ReplayCacheFile>>,
    pub sticky: Option<StickyFile>,
    #[serde(rename = "static")]
    pub static_files: Option<StaticFile>,
    pub ws_idle_timeout: Option<Dur>,
    pub max_websockets: Option<Int<u64>>,
    pub allow: Option<Vec<String>>,
    pub deny: Option<Vec<String>>,
    pub rate_limit: Option<RateLimitFile>,
    pub compress: Option<CompressFile>,
}

/// `compress = true` or `compress = { min_size, types, gzip, brotli, zstd }` of a route.
#[derive(Debug)]
pub enum CompressFile {
    On(bool),
    Table(CompressTable),
}

impl<'de> Deserialize<'de> for CompressFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // By hand rather than `untagged`, so a mistake in the table is reported as itself
        // ("unknown field `level`") and not as "did not match any variant".
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CompressFile;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("true, false or a table { min_size, types, gzip, brotli, zstd }")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<CompressFile, E> {
                Ok(CompressFile::On(v))
            }
            fn visit_map<A: MapAccess<'de>>(self, m: A) -> Result<CompressFile, A::Error> {
                CompressTable::deserialize(MapAccessDeserializer::new(m)).map(CompressFile::Table)
            }
        }
        d.deserialize_any(V)
    }
}

/// The table form of `compress`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompressTable {
    pub min_size: Option<Size>,
    pub types: Option<Vec<String>>,
    pub gzip: Option<Int<u64>>,
    pub brotli: Option<Int<u64>>,
    pub zstd: Option<Int<u64>>,
}

/// `rate_limit = { requests = 100, per = "1m", key = "ip" }` of a route.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitFile {
    pub requests: Option<Int<u64>>,
    pub per: Option<Dur>,
    pub key: Option<String>,
    pub max_clients: Option<Int<u64>>,
}

/// `static = { root = "...", ... }` of a route.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticFile {
    pub root: Option<String>,
    pub index: Option<String>,
    pub fallback: Option<String>,
    pub fallback_for: Option<String>,
    pub try_files: Option<Flag>,
    pub cache_control: Option<String>,
    pub immutable_cache_control: Option<String>,
    pub hashed_names: Option<Flag>,
    pub immutable_paths: Option<Vec<String>>,
    pub precompressed: Option<Flag>,
    pub compress: Option<Flag>,
    pub compress_min_size: Option<Size>,
    pub dotfiles: Option<Flag>,
}

/// `sticky = { mode = "cookie", ... }` of a route.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StickyFile {
    pub mode: Option<String>,
    pub name: Option<String>,
    pub path: Option<String>,
    pub max_age: Option<Dur>,
    pub secure: Option<Flag>,
    pub http_only: Option<Flag>,
    pub same_site: Option<String>,
    pub key: Option<String>,
}

/// Header edits: `set` replaces, `add` appends, `remove` deletes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderRulesFile {
    pub set: Option<BTreeMap<String, String>>,
    pub add: Option<BTreeMap<String, String>>,
    pub remove: Option<Vec<String>>,
}

/// A string or a list of strings (`host = "a.com"` or `host = ["a.com", "*.b.com"]`).
#[derive(Debug, Default, Clone)]
pub struct OneOrMany(pub Vec<String>);

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of strings")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<OneOrMany, E> {
                Ok(OneOrMany(vec![v.to_string()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<OneOrMany, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(OneOrMany(out))
            }
        }
        d.deserialize_any(V)
    }
}

//! DNS lookups for discovery (hickory-resolver), reduced to what discovery needs: addresses
//! or TXT strings with their TTL, and a clear split between "the name has nothing" (NXDOMAIN,
//! no data) and "the lookup failed" (timeout, SERVFAIL, server down).

use std::net::IpAddr;
use std::str::FromStr;
use std::time::{Duration, Instant};

use hickory_resolver::config::{LookupIpStrategy, NameServerConfig, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{Name, RData};
use hickory_resolver::TokioResolver;

/// What a name returned.
#[derive(Debug, Clone)]
pub struct Answer<T> {
    /// The values.
    pub values: Vec<T>,
    /// How long they may be used (the smallest record TTL).
    pub ttl: Duration,
}

/// A lookup that produced no values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LookupError {
    /// NXDOMAIN or no records of that type: the name has nothing (now).
    Empty,
    /// The lookup did not get an answer (timeout, SERVFAIL, refused, server down).
    Failed(String),
}

impl std::fmt::Display for LookupError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LookupError::Empty => f.write_str("no records"),
            LookupError::Failed(e) => f.write_str(e),
        }
    }
}

/// The resolver discovery uses.
pub struct Dns {
    resolver: TokioResolver,
}

fn classify(e: NetError) -> LookupError {
    if e.is_no_records_found() {
        if let NetError::Dns(hickory_resolver::net::DnsError::NoRecordsFound(nr)) = &e {
            use hickory_resolver::proto::op::ResponseCode;
            if !matches!(
                nr.response_code,
                ResponseCode::NXDomain | ResponseCode::NoError
            ) {
                return LookupError::Failed(format!("server answered {}", nr.response_code));
            }
        }
        return LookupError::Empty;
    }
    LookupError::Failed(e.to_string())
}

/// Names with a dot are queried as absolute names (no search list); single labels (a
/// docker-compose service name) go through the system's search domains.
fn to_name(name: &str) -> Result<Name, LookupError> {
    let fq = if name.contains('.') && !name.ends_with('.') {
        format!("{name}.")
    } else {
        name.to_string()
    };
    Name::from_str(&fq).map_err(|e| LookupError::Failed(format!("invalid name {name:?}: {e}")))
}

impl Dns {
    /// Builds the resolver: the configured servers, or `/etc/resolv.conf` when none are given.
    pub fn new(cfg: &portico_config::Dns) -> Result<Self, String> {
        let provider = TokioRuntimeProvider::default();
        let mut builder = if cfg.servers.is_empty() {
            TokioResolver::builder(provider)
                .map_err(|e| format!("cannot read the system resolver configuration: {e}"))?
        } else {
            let servers = cfg
                .servers
                .iter()
                .map(|s| {
                    let mut ns = NameServerConfig::udp_and_tcp(s.ip());
                    for c in &mut ns.connections {
                        c.port = s.port();
                    }
                    ns
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), servers),
                provider,
            )
        };
        let opts = builder.options_mut();
        opts.timeout = cfg.timeout;
        opts.attempts = cfg.attempts;
        opts.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
        // Discovery schedules its own refreshes from the TTLs; a cache would only hide changes.
        opts.cache_size = 0;
        opts.use_hosts_file = if cfg.servers.is_empty() {
            ResolveHosts::Always
        } else {
            ResolveHosts::Never
        };
        let resolver = builder
            .build()
            .map_err(|e| format!("cannot build the DNS resolver: {e}"))?;
        Ok(Self { resolver })
    }

    /// A and AAAA records of `name`.
    pub async fn ips(&self, name: &str) -> Result<Answer<IpAddr>, LookupError> {
        let lookup = self
            .resolver
            .lookup_ip(to_name(name)?)
            .await
            .map_err(classify)?;
        let ttl = lookup
            .valid_until()
            .saturating_duration_since(Instant::now());
        let mut values: Vec<IpAddr> = lookup.iter().collect();
        values.sort();
        values.dedup();
        if values.is_empty() {
            return Err(LookupError::Empty);
        }
        Ok(Answer { values, ttl })
    }

    /// TXT records of `name`, each record's strings joined.
    pub async fn txt(&self, name: &str) -> Result<Answer<String>, LookupError> {
        let lookup = self
            .resolver
            .txt_lookup(to_name(name)?)
            .await
            .map_err(classify)?;
        let ttl = lookup
            .valid_until()
            .saturating_duration_since(Instant::now());
        let values: Vec<String> = lookup
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::TXT(t) => Some(
                    t.txt_data
                        .iter()
                        .map(|part| String::from_utf8_lossy(part).into_owned())
                        .collect::<String>(),
                ),
                _ => None,
            })
            .collect();
        if values.is_empty() {
            return Err(LookupError::Empty);
        }
        Ok(Answer { values, ttl })
    }
}

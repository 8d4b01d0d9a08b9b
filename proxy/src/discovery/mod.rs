//! Background discovery of upstream backends over DNS (plain names and Fly's `.internal`).
//!
//! One task per discovered upstream resolves its targets, merges them with the static
//! backends and swaps the upstream's backend set when it changed. It never runs on the
//! request path. Its rules:
//! - refresh after the records' TTL, clamped to `[dns] min_ttl..max_ttl`, with ±10% jitter;
//! - on a failed lookup (timeout, SERVFAIL, server down) keep the last good addresses and
//!   retry with exponential backoff from `min_ttl`;
//! - an empty or NXDOMAIN answer is believed only after it has lasted `stale_for`.

pub mod fly;
pub mod resolve;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use portico_config::DiscoverySource;
use prometheus::IntCounter;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::state::Shared;
use crate::upstream::{BackendSpec, DiscoveryTarget, UpstreamRt};
use resolve::{Answer, Dns, LookupError};

/// What one target resolved to.
#[derive(Debug)]
struct Resolved {
    specs: Vec<BackendSpec>,
    ttl: Duration,
}

/// Resolves one discovery target.
async fn resolve_target(dns: &Dns, t: &DiscoveryTarget) -> Result<Resolved, LookupError> {
    let port = t.discovery.port;
    match &t.discovery.source {
        DiscoverySource::Dns { name, region } => {
            let Answer { values, ttl } = dns.ips(name).await?;
            Ok(Resolved {
                specs: values
                    .into_iter()
                    .map(|ip| BackendSpec {
                        addr: SocketAddr::new(ip, port),
                        id: None,
                        region: region.clone(),
                        weight: t.weight,
                        origin: format!("dns:{name}"),
                    })
                    .collect(),
                ttl,
            })
        }
        DiscoverySource::Fly { app } => resolve_fly(dns, app, port).await,
    }
}

/// Fly mode: instances with ids and regions from `vms.<app>.internal`, falling back to
/// `regions.<app>.internal` (regions without instance ids) when that name has nothing.
async fn resolve_fly(dns: &Dns, app: &str, port: u16) -> Result<Resolved, LookupError> {
    let origin = format!("fly:{app}");
    match dns.txt(&fly::vms_name(app)).await {
        Ok(txt) => {
            let mut instances = Vec::new();
            for t in &txt.values {
                let (pairs, bad) = fly::parse_vms(t);
                if bad > 0 {
                    tracing::warn!(app, bad, "ignoring malformed entries in vms.{app}.internal");
                }
                instances.extend(pairs);
            }
            let mut ttl = txt.ttl;
            let lookups = instances
                .iter()
                .map(|(id, _)| dns.ips_owned(fly::vm_name(id, app)));
            let answers = futures::future::join_all(lookups).await;
            let mut specs = Vec::new();
            for ((id, region), answer) in instances.into_iter().zip(answers) {
                match answer {
                    Ok(a) => {
                        ttl = ttl.min(a.ttl);
                        // An instance has one address; if several come back, each is a backend
                        // of the same instance and only the first keeps the id.
                        for (n, ip) in a.values.into_iter().enumerate() {
                            specs.push(BackendSpec {
                                addr: SocketAddr::new(ip, port),
                                id: (n == 0).then(|| id.clone()),
                                region: Some(region.clone()),
                                weight: 1,
                                origin: origin.clone(),
                            });
                        }
                    }
                    // Listed but without an address: stopped between the two queries.
                    Err(LookupError::Empty) => {}
                    Err(e) => return Err(e),
                }
            }
            if specs.is_empty() {
                return Err(LookupError::Empty);
            }
            Ok(Resolved { specs, ttl })
        }
        Err(LookupError::Empty) => {
            let txt = dns.txt(&fly::regions_name(app)).await?;
            let mut regions = Vec::new();
            for t in &txt.values {
                regions.extend(fly::parse_regions(t).0);
            }
            let mut ttl = txt.ttl;
            let lookups = regions
                .iter()
                .map(|r| dns.ips_owned(fly::region_name(r, app)));
            let answers = futures::future::join_all(lookups).await;
            let mut specs = Vec::new();
            for (region, answer) in regions.into_iter().zip(answers) {
                match answer {
                    Ok(a) => {
                        ttl = ttl.min(a.ttl);
                        specs.extend(a.values.into_iter().map(|ip| BackendSpec {
                            addr: SocketAddr::new(ip, port),
                            id: None,
                            region: Some(region.clone()),
                            weight: 1,
                            origin: origin.clone(),
                        }));
                    }
                    Err(LookupError::Empty) => {}
                    Err(e) => return Err(e),
                }
            }
            if specs.is_empty() {
                return Err(LookupError::Empty);
            }
            Ok(Resolved { specs, ttl })
        }
        Err(e) => Err(e),
    }
}

/// Resolves one discovery entry once, as the discovery task would (for `portico doctor`):
/// the backend addresses found.
pub async fn resolve_once(
    dns: &Dns,
    discovery: &portico_config::Discovery,
) -> Result<Vec<SocketAddr>, LookupError> {
    let target = DiscoveryTarget {
        discovery: discovery.clone(),
        weight: 1,
    };
    let r = resolve_target(dns, &target).await?;
    Ok(r.specs.into_iter().map(|s| s.addr).collect())
}

impl Dns {
    /// [`Dns::ips`] taking an owned name (for building many lookups at once).
    pub async fn ips_owned(&self, name: String) -> Result<Answer<std::net::IpAddr>, LookupError> {
        self.ips(&name).await
    }
}

/// Discovery metric children of one upstream.
struct DiscoveryMetrics {
    success: IntCounter,
    empty: IntCounter,
    error: IntCounter,
    changes: IntCounter,
}

impl DiscoveryMetrics {
    fn new(m: &Metrics, upstream: &str) -> Self {
        Self {
            success: m
                .discovery
                .discovery_resolutions
                .with_label_values(&[upstream, "success"]),
            empty: m
                .discovery
                .discovery_resolutions
                .with_label_values(&[upstream, "empty"]),
            error: m
                .discovery
                .discovery_resolutions
                .with_label_values(&[upstream, "error"]),
            changes: m.discovery.discovery_changes.with_label_values(&[upstream]),
        }
    }
}

/// The last good answer of one target.
#[derive(Debug, Default)]
struct TargetState {
    specs: Vec<BackendSpec>,
    /// Since when answers have been empty (the stale grace runs from here).
    empty_since: Option<Instant>,
    /// Consecutive failed lookups.
    failures: u32,
}

fn jitter(d: Duration, spread: f64) -> Duration {
    let f = 1.0 + (fastrand::f64() * 2.0 - 1.0) * spread;
    d.mul_f64(f.max(0.1))
}

/// Resolves the targets of `up` until `stop` turns true. `first_round` is signalled after the
/// first round (answered or not), which start-up waits for.
pub async fn run(
    up: Arc<UpstreamRt>,
    dns: Arc<Dns>,
    cfg: portico_config::Dns,
    shared: Arc<Shared>,
    first_round: Option<tokio::sync::oneshot::Sender<()>>,
    mut stop: watch::Receiver<bool>,
) {
    let name = up.name().to_string();
    let m = DiscoveryMetrics::new(&shared.metrics, &name);
    let mut states: HashMap<usize, TargetState> = HashMap::new();
    // Carry what the upstream already has (from a previous generation) as the last good set.
    for b in up
        .set
        .load()
        .backends
        .iter()
        .filter(|b| &*b.origin != "static")
    {
        if let Some(i) = up.discovery.iter().position(|t| origin_of(t) == *b.origin) {
            states.entry(i).or_default().specs.push(b.spec());
        }
    }
    let mut first_round = first_round;
    loop {
        let round_start = tokio::time::Instant::now();
        up.refresh.round_started();
        let mut next = cfg.max_ttl;
        let mut errors = Vec::new();
        for (i, target) in up.discovery.iter().enumerate() {
            let st = states.entry(i).or_default();
            match resolve_target(&dns, target).await {
                Ok(r) => {
                    m.success.inc();
                    if st.failures > 0 || st.empty_since.is_some() {
                        tracing::info!(upstream = %name, target = %target.discovery, backends = r.specs.len(), "discovery answers again");
                    }
                    st.specs = r.specs;
                    st.empty_since = None;
                    st.failures = 0;
                    next = next.min(r.ttl.clamp(cfg.min_ttl, cfg.max_ttl));
                }
                Err(LookupError::Empty) => {
                    m.empty.inc();
                    let first_empty = st.empty_since.is_none();
                    let since = *st.empty_since.get_or_insert_with(Instant::now);
                    let waited = since.elapsed();
                    if st.specs.is_empty() || waited >= cfg.stale_for {
                        if !st.specs.is_empty() {
                            tracing::warn!(upstream = %name, target = %target.discovery, "no addresses for {:?}; removing the last known backends", cfg.stale_for);
                        }
                        st.specs.clear();
                        next = next.min(cfg.min_ttl);
                    } else {
                        if first_empty {
                            tracing::warn!(upstream = %name, target = %target.discovery, keeping = st.specs.len(), "discovery returned no addresses; keeping the last known backends for up to {}", portico_config::units::format_duration(cfg.stale_for));
                        }
                        // Look again soon, and no later than when the grace ends.
                        next = next.min(cfg.min_ttl).min(cfg.stale_for - waited);
                    }
                }
                Err(LookupError::Failed(e)) => {
                    m.error.inc();
                    st.failures += 1;
                    if st.failures == 1 {
                        tracing::warn!(upstream = %name, target = %target.discovery, error = %e, keeping = st.specs.len(), "discovery failed; keeping the last known backends");
                    } else {
                        tracing::debug!(upstream = %name, target = %target.discovery, error = %e, failures = st.failures, "discovery still failing");
                    }
                    let backoff = cfg
                        .min_ttl
                        .saturating_mul(1u32 << st.failures.min(8).saturating_sub(1))
                        .min(cfg.max_ttl);
                    next = next.min(backoff);
                    errors.push(format!("{}: {e}", target.discovery));
                }
            }
        }
        let mut specs = up.static_specs.clone();
        for i in 0..up.discovery.len() {
            if let Some(st) = states.get(&i) {
                for s in &st.specs {
                    if !specs.iter().any(|x| x.addr == s.addr) {
                        specs.push(s.clone());
                    }
                }
            }
        }
        let (changed, added, removed) = up.replace_backends(&specs);
        if changed {
            m.changes.inc();
            tracing::info!(upstream = %name, backends = specs.len(), added = ?added, removed = ?removed, "backend set changed");
        }
        let next = jitter(next, 0.1);
        if let Ok(mut s) = up.discovery_status.lock() {
            s.attempted = true;
            s.rounds += 1;
            if errors.is_empty() {
                s.last_success = Some(SystemTime::now());
                s.last_error = None;
            } else {
                s.last_error = Some(errors.join("; "));
            }
            s.next_refresh = Some(SystemTime::now() + next);
        }
        up.refresh.round_done();
        if let Some(tx) = first_round.take() {
            let _ = tx.send(());
        }
        tokio::select! {
            _ = tokio::time::sleep(next) => {}
            _ = up.refresh.wanted() => {
                // A request named an instance not seen yet: look now, but no more often
                // than MIN_SPACING however many requests ask.
                tracing::debug!(upstream = %name, "discovery round on demand");
                tokio::select! {
                    _ = tokio::time::sleep_until(round_start + crate::upstream::Refresh::MIN_SPACING) => {}
                    _ = stop.changed() => return,
                }
            }
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// The `origin` string backends of a target carry.
fn origin_of(t: &DiscoveryTarget) -> String {
    match &t.discovery.source {
        DiscoverySource::Dns { name, .. } => format!("dns:{name}"),
        DiscoverySource::Fly { app } => format!("fly:{app}"),
    }
}

/// Starts discovery for every upstream of `snapshot` that needs it, and waits up to
/// `startup_wait` for their first rounds. Returns the number of upstreams discovered.
pub async fn start(
    snapshot: &crate::state::Snapshot,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    wait: bool,
) -> Result<usize, String> {
    let ups: Vec<&Arc<UpstreamRt>> = snapshot
        .upstreams
        .iter()
        .filter(|u| !u.discovery.is_empty())
        .collect();
    if ups.is_empty() {
        return Ok(0);
    }
    let cfg = snapshot.config.dns.clone();
    let dns = Arc::new(Dns::new(&cfg)?);
    let mut firsts = Vec::new();
    for up in &ups {
        let (tx, rx) = tokio::sync::oneshot::channel();
        firsts.push(rx);
        tokio::spawn(run(
            (*up).clone(),
            dns.clone(),
            cfg.clone(),
            shared.clone(),
            Some(tx),
            stop.clone(),
        ));
    }
    if wait {
        let all = async {
            for rx in firsts {
                let _ = rx.await;
            }
        };
        if tokio::time::timeout(cfg.startup_wait, all).await.is_err() {
            tracing::warn!(
                wait = %portico_config::units::format_duration(cfg.startup_wait),
                "some upstreams have no DNS answer yet; starting anyway (they answer 503 until discovered)"
            );
        }
    }
    Ok(ups.len())
}

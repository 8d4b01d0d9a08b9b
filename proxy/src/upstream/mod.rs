//! Upstreams at runtime: the current backend set (grouped into region tiers), selection with
//! leases, routing constraints (regions, instances), and the wait queue used when every
//! backend is at its hard limit.
//!
//! Region rule (Fly's): backends in the local region (or with no region) are used first;
//! traffic goes to another region only when every local backend is unhealthy, tried or at its
//! hard limit. Remote regions are ordered by measured connect latency, then `region_order`,
//! then name. Soft limits never move traffic across regions.

mod acquire;
pub mod backend;
pub mod health;
pub mod select;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use portico_config::{BackendAddr, Discovery, DiscoverySource, Upstream};
use prometheus::{IntCounter, IntGauge};
use smallvec::SmallVec;
use tokio::sync::Notify;

use crate::metrics::Metrics;
pub use acquire::{AcquireError, Lease};
pub use backend::{BackendRt, BackendSpec};
use select::Ring;

/// The backends of one region.
#[derive(Debug)]
pub struct Tier {
    /// Region name; `None` for the local tier (local region and backends without one).
    pub region: Option<Arc<str>>,
    /// Membership by backend index.
    pub mask: Vec<bool>,
    /// Member indices.
    pub members: Vec<u16>,
}

/// The backends of an upstream at one moment, with what selection precomputes over them.
#[derive(Debug, Default)]
pub struct BackendSet {
    /// The backends.
    pub backends: Vec<Arc<BackendRt>>,
    /// Consistent-hash ring over backend keys (for `consistent_hash` and sticky routes).
    pub ring: Option<Ring>,
    /// Backend index by stable key (instance id, else address), for affinity cookies.
    pub by_key: HashMap<Arc<str>, usize>,
    /// Region tiers; `tiers[0]` is the local one. A single tier means no region routing.
    pub tiers: Vec<Tier>,
    /// Backend index by instance id.
    pub by_id: HashMap<Arc<str>, usize>,
}

impl BackendSet {
    /// Builds a set, carrying over backends of `prev` with the same key and address so their
    /// counters, health and latency survive.
    pub fn build(
        specs: &[BackendSpec],
        up: &Upstream,
        local_region: &str,
        prev: Option<&BackendSet>,
    ) -> Self {
        let backends: Vec<Arc<BackendRt>> = specs
            .iter()
            .map(|s| {
                let key = s.key();
                prev.and_then(|p| {
                    p.backends
                        .iter()
                        .find(|b| *b.key == *key && b.addr == s.addr)
                        .cloned()
                })
                .unwrap_or_else(|| Arc::new(BackendRt::new(s, up)))
            })
            .collect();
        // Built for every upstream: any route may hash onto it (`sticky`).
        let ring = Some(Ring::new(&backends));
        let n = backends.len();
        let mut tiers = vec![Tier {
            region: None,
            mask: vec![false; n],
            members: Vec::new(),
        }];
        for (i, b) in backends.iter().enumerate() {
            let t = match b.region.as_deref() {
                None => 0,
                Some(r) if r == local_region => 0,
                Some(r) => match tiers.iter().position(|t| t.region.as_deref() == Some(r)) {
                    Some(t) => t,
                    None => {
                        tiers.push(Tier {
                            region: b.region.clone(),
                            mask: vec![false; n],
                            members: Vec::new(),
                        });
                        tiers.len() - 1
                    }
                },
            };
            tiers[t].mask[i] = true;
            tiers[t].members.push(i as u16);
        }
        let by_id = backends
            .iter()
            .enumerate()
            .filter_map(|(i, b)| b.id.clone().map(|id| (id, i)))
            .collect();
        let by_key = backends
            .iter()
            .enumerate()
            .map(|(i, b)| (b.key.clone(), i))
            .collect();
        Self {
            backends,
            ring,
            by_key,
            tiers,
            by_id,
        }
    }

    /// Whether every backend is in the local tier (no region routing to do).
    pub fn single_tier(&self) -> bool {
        self.tiers.len() == 1
    }

    /// The tier serving `region` (the local tier for the local region).
    fn tier_of(&self, region: &str, local_region: &str) -> Option<usize> {
        if region == local_region {
            return Some(0);
        }
        self.tiers
            .iter()
            .position(|t| t.region.as_deref() == Some(region))
    }

    /// Regions with at least one backend, local first.
    pub fn regions(&self, local_region: &str) -> Vec<String> {
        self.tiers
            .iter()
            .filter(|t| !t.members.is_empty())
            .map(|t| t.region.as_deref().unwrap_or(local_region).to_string())
            .collect()
    }
}

/// Per-upstream metric children.
struct UpstreamMetrics {
    connect_errors: IntCounter,
    retries: IntCounter,
    queue_waiting: IntGauge,
    queue_timeouts: IntCounter,
}

/// What discovery last did for an upstream, for `/status`, `/ready` and error bodies.
#[derive(Debug, Clone, Default)]
pub struct DiscoveryStatus {
    /// Whether at least one resolution round finished (successfully or not).
    pub attempted: bool,
    /// When the last round that returned addresses finished.
    pub last_success: Option<SystemTime>,
    /// The last failure, cleared by a success.
    pub last_error: Option<String>,
    /// Rounds so far.
    pub rounds: u64,
    /// When the next round is due.
    pub next_refresh: Option<SystemTime>,
}

/// A backend to aim for, from the client's routing headers or a replay instruction.
#[derive(Debug, Clone, Default)]
pub struct Want<'a> {
    /// Regions in order of preference.
    pub regions: SmallVec<[&'a str; 4]>,
    /// Only the listed regions may answer.
    pub regions_forced: bool,
    /// An instance id to aim for.
    pub instance: Option<&'a str>,
    /// Only that instance may answer.
    pub instance_forced: bool,
    /// A backend key from an affinity cookie: used when usable, else normal selection.
    pub sticky: Option<&'a str>,
}

impl Want<'_> {
    /// True when there is no constraint.
    #[cfg(test)]
    pub fn is_any(&self) -> bool {
        self.regions.is_empty() && self.instance.is_none() && self.sticky.is_none()
    }
}

/// On-demand discovery rounds: a request that names an instance discovery has not seen yet
/// (a primary that just moved, a machine that just started) asks the upstream's discovery
/// task for a round now and waits for it, instead of failing until the next TTL refresh.
///
/// One round runs at a time (the task is single), and the task spaces on-demand rounds at
/// least [`Refresh::MIN_SPACING`] apart, so a flood of requests for an unknown id costs one
/// lookup per spacing, not one per request.
#[derive(Debug)]
pub struct Refresh {
    wanted: Notify,
    running: std::sync::atomic::AtomicBool,
    rounds: tokio::sync::watch::Sender<u64>,
}

impl Default for Refresh {
    fn default() -> Self {
        Self {
            wanted: Notify::new(),
            running: std::sync::atomic::AtomicBool::new(false),
            rounds: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Refresh {
    /// Shortest time between two on-demand rounds of one upstream.
    pub const MIN_SPACING: Duration = Duration::from_millis(250);

    /// Waits (the discovery task's side) until a round is asked for.
    pub async fn wanted(&self) {
        self.wanted.notified().await
    }

    /// Marks a round as started (the discovery task's side).
    pub fn round_started(&self) {
        self.running.store(true, Ordering::Release);
    }

    /// Marks a round as finished (the discovery task's side).
    pub fn round_done(&self) {
        self.running.store(false, Ordering::Release);
        self.rounds.send_modify(|n| *n += 1);
    }

    /// Asks for a round and waits until one that started after this call has finished, or
    /// `wait` passes. Returns whether such a round finished.
    pub async fn now(&self, wait: Duration) -> bool {
        // A round already running may have asked DNS before the caller's news: then the one
        // after it is needed.
        let busy = u64::from(self.running.load(Ordering::Acquire));
        let mut rx = self.rounds.subscribe();
        let target = *rx.borrow_and_update() + 1 + busy;
        self.wanted.notify_one();
        let waiting = async {
            while rx.changed().await.is_ok() {
                if *rx.borrow_and_update() >= target {
                    return true;
                }
                self.wanted.notify_one();
            }
            false
        };
        tokio::time::timeout(wait, waiting).await.unwrap_or(false)
    }
}

/// One upstream at runtime.
pub struct UpstreamRt {
    /// Its configuration.
    pub cfg: Arc<Upstream>,
    /// The current backends; replaced as a whole when they change.
    pub set: ArcSwap<BackendSet>,
    /// Backends given as IP addresses in the config (kept whatever discovery finds).
    pub static_specs: Vec<BackendSpec>,
    /// What discovery resolves for this upstream (host-name backends included).
    pub discovery: Vec<DiscoveryTarget>,
    /// Discovery state.
    pub discovery_status: Mutex<DiscoveryStatus>,
    /// On-demand discovery rounds (shared with the previous generation's upstream of the same
    /// name and targets, whose task keeps running until the new one starts).
    pub refresh: Arc<Refresh>,
    /// This proxy's region.
    pub local_region: Arc<str>,
    /// Fallback order of remote regions.
    pub region_order: Vec<String>,
    cursor: AtomicUsize,
    queue: Notify,
    waiting: AtomicUsize,
    metrics: UpstreamMetrics,
}

impl std::fmt::Debug for UpstreamRt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamRt")
            .field("name", &self.cfg.name)
            .finish()
    }
}

/// One thing discovery resolves for an upstream.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DiscoveryTarget {
    /// Name or Fly app.
    pub discovery: Discovery,
    /// Weight of the backends found.
    pub weight: u32,
}

/// Splits the config's backends into IP backends (static) and host names (discovered).
pub fn split_backends(up: &Upstream) -> (Vec<BackendSpec>, Vec<DiscoveryTarget>) {
    let mut specs = Vec::new();
    let mut targets: Vec<DiscoveryTarget> = up
        .discovery
        .iter()
        .map(|d| DiscoveryTarget {
            discovery: d.clone(),
            weight: 1,
        })
        .collect();
    for b in &up.backends {
        match &b.address {
            BackendAddr::Ip(addr) => specs.push(BackendSpec {
                addr: *addr,
                id: b.id.clone(),
                region: b.region.clone(),
                weight: b.weight,
                origin: "static".to_string(),
            }),
            BackendAddr::Name { host, port } => targets.push(DiscoveryTarget {
                discovery: Discovery {
                    source: DiscoverySource::Dns {
                        name: host.clone(),
                        region: b.region.clone(),
                    },
                    port: *port,
                },
                weight: b.weight,
            }),
        }
    }
    (specs, targets)
}

impl UpstreamRt {
    /// Creates the runtime for `cfg`, carrying backends over from `prev`.
    pub fn new(
        cfg: Arc<Upstream>,
        server: &portico_config::Server,
        metrics: &Metrics,
        prev: Option<&UpstreamRt>,
    ) -> Self {
        let name = cfg.name.as_str();
        let (static_specs, discovery) = split_backends(&cfg);
        // Discovered backends already known are kept until the next answer replaces them.
        let initial: Vec<BackendSpec> = match prev {
            Some(p) if p.discovery == discovery => {
                let mut v = static_specs.clone();
                v.extend(
                    p.set
                        .load()
                        .backends
                        .iter()
                        .filter(|b| &*b.origin != "static")
                        .map(|b| b.spec()),
                );
                v
            }
            _ => static_specs.clone(),
        };
        let prev_set = prev.map(|p| p.set.load_full());
        let set = BackendSet::build(&initial, &cfg, &server.region, prev_set.as_deref());
        let status = match prev {
            Some(p) if p.discovery == discovery => p
                .discovery_status
                .lock()
                .map(|s| s.clone())
                .unwrap_or_default(),
            _ => DiscoveryStatus::default(),
        };
        let refresh = match prev {
            Some(p) if p.discovery == discovery => p.refresh.clone(),
            _ => Arc::default(),
        };
        Self {
            refresh,
            set: ArcSwap::from_pointee(set),
            static_specs,
            discovery,
            discovery_status: Mutex::new(status),
            local_region: server.region.as_str().into(),
            region_order: server.region_order.clone(),
            cursor: AtomicUsize::new(0),
            queue: Notify::new(),
            waiting: AtomicUsize::new(0),
            metrics: UpstreamMetrics {
                connect_errors: metrics
                    .upstreams
                    .upstream_connect_errors
                    .with_label_values(&[name]),
                retries: metrics
                    .upstreams
                    .upstream_retries
                    .with_label_values(&[name]),
                queue_waiting: metrics
                    .upstreams
                    .upstream_queue_waiting
                    .with_label_values(&[name]),
                queue_timeouts: metrics
                    .upstreams
                    .upstream_queue_timeouts
                    .with_label_values(&[name]),
            },
            cfg,
        }
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Replaces the backend set (from discovery). Returns whether anything changed, with the
    /// keys added and removed.
    pub fn replace_backends(&self, specs: &[BackendSpec]) -> (bool, Vec<String>, Vec<String>) {
        let old = self.set.load_full();
        let same = old.backends.len() == specs.len()
            && specs.iter().all(|s| {
                old.backends.iter().any(|b| {
                    *b.key == *s.key()
                        && b.addr == s.addr
                        && b.region.as_deref() == s.region.as_deref()
                        && b.weight == s.weight
                })
            });
        if same {
            return (false, Vec::new(), Vec::new());
        }
        let new = BackendSet::build(specs, &self.cfg, &self.local_region, Some(&old));
        let added = new
            .backends
            .iter()
            .filter(|b| !old.backends.iter().any(|o| Arc::ptr_eq(o, b)))
            .map(|b| format!("{}={}", b.key, b.addr))
            .collect();
        let removed = old
            .backends
            .iter()
            .filter(|o| !new.backends.iter().any(|b| Arc::ptr_eq(o, b)))
            .map(|b| format!("{}={}", b.key, b.addr))
            .collect();
        self.set.store(Arc::new(new));
        // Waiters may be able to use a new backend.
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.queue.notify_waiters();
        }
        (true, added, removed)
    }

    /// "3 backends unhealthy: 10.0.0.1:80 (HTTP 500), ..." for error bodies and `/ready`.
    pub fn unhealthy_summary(&self, set: &BackendSet) -> String {
        let mut parts: Vec<String> = set
            .backends
            .iter()
            .take(5)
            .map(|b| {
                let why = b
                    .health
                    .detail
                    .lock()
                    .ok()
                    .and_then(|d| d.reason.clone())
                    .unwrap_or_else(|| b.health.state_name().to_string());
                format!("{} ({why})", b.addr)
            })
            .collect();
        if set.backends.len() > 5 {
            parts.push(format!("and {} more", set.backends.len() - 5));
        }
        format!("every backend is unhealthy: {}", parts.join(", "))
    }

    /// Counts a failed connection attempt.
    pub fn record_connect_error(&self, backend: &BackendRt) {
        backend.connect_failures.fetch_add(1, Ordering::Relaxed);
        self.metrics.connect_errors.inc();
    }

    /// Counts a retry on another backend.
    pub fn record_retry(&self) {
        self.metrics.retries.inc();
    }

    /// Seconds a client should wait before retrying after a queue timeout (at least 1).
    pub fn retry_after(&self) -> u64 {
        self.cfg.queue_timeout.max(Duration::from_secs(1)).as_secs()
    }

    /// Requests in flight over all backends.
    pub fn in_flight(&self) -> u64 {
        self.set
            .load()
            .backends
            .iter()
            .map(|b| u64::from(b.in_flight()))
            .sum()
    }

    /// Why the upstream has no backends, for error bodies and `/ready`.
    pub fn empty_reason(&self) -> String {
        if self.discovery.is_empty() {
            return "no backends are configured".to_string();
        }
        let names: Vec<String> = self
            .discovery
            .iter()
            .map(|t| t.discovery.to_string())
            .collect();
        let status = self
            .discovery_status
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        match (status.attempted, status.last_error) {
            (false, _) => format!("no answer from DNS yet for {}", names.join(", ")),
            (true, Some(e)) => format!("discovery of {} failed: {e}", names.join(", ")),
            (true, None) => format!("{} returned no addresses", names.join(", ")),
        }
    }
}

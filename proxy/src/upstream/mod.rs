//! Upstreams at runtime: the current backend set, selection with leases, and the wait queue
//! used when every backend is at its hard limit.

pub mod backend;
pub mod select;

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use portico_config::{BackendAddr, Balance, KeyPath, Upstream};
use prometheus::{IntCounter, IntGauge};
use tokio::sync::Notify;

use crate::metrics::Metrics;
pub use backend::{BackendRt, BackendSpec};
pub use select::NoBackend;
use select::{Ring, Selection};

/// The backends of an upstream at one moment, with what selection precomputes over them.
#[derive(Debug, Default)]
pub struct BackendSet {
    /// The backends.
    pub backends: Vec<Arc<BackendRt>>,
    /// Consistent-hash ring (only for `consistent_hash`).
    pub ring: Option<Ring>,
}

impl BackendSet {
    /// Builds a set, carrying over backends of `prev` with the same key and address so their
    /// counters survive.
    pub fn build(specs: &[BackendSpec], up: &Upstream, prev: Option<&BackendSet>) -> Self {
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
        let ring = (up.balance == Balance::ConsistentHash).then(|| Ring::new(&backends));
        Self { backends, ring }
    }
}

/// Per-upstream metric children.
struct UpstreamMetrics {
    connect_errors: IntCounter,
    retries: IntCounter,
    queue_waiting: IntGauge,
    queue_timeouts: IntCounter,
}

/// One upstream at runtime.
pub struct UpstreamRt {
    /// Its configuration.
    pub cfg: Arc<Upstream>,
    /// The current backends; replaced as a whole when they change.
    pub set: ArcSwap<BackendSet>,
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

/// A slot taken on a backend; dropping it gives the slot back and wakes a queued request.
pub struct Lease {
    /// The backend.
    pub backend: Arc<BackendRt>,
    upstream: Arc<UpstreamRt>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.backend.release();
        if self.upstream.waiting.load(Ordering::Acquire) > 0 {
            self.upstream.queue.notify_one();
        }
    }
}

/// Why a request could not get a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireError {
    /// No backend exists.
    Empty,
    /// Every backend was tried and failed.
    AllTried,
    /// Every backend stayed at its hard limit for the whole queue timeout.
    QueueTimeout,
    /// The wait queue is full.
    QueueFull,
}

/// Static backend specs from config, resolving host names once (blocking; call off the
/// request path). Problems are returned with their config keys.
pub fn static_specs(up: &Upstream, key: &KeyPath) -> Result<Vec<BackendSpec>, (KeyPath, String)> {
    let mut out = Vec::new();
    for (i, b) in up.backends.iter().enumerate() {
        let addrs: Vec<SocketAddr> = match &b.address {
            BackendAddr::Ip(a) => vec![*a],
            BackendAddr::Name { host, port } => (host.as_str(), *port)
                .to_socket_addrs()
                .map_err(|e| {
                    (
                        key.key("backends").index(i),
                        format!("cannot resolve {host}: {e}"),
                    )
                })?
                .collect(),
        };
        let many = addrs.len() > 1;
        for addr in addrs {
            out.push(BackendSpec {
                addr,
                // An id names one instance: with several addresses behind a name, each is its own.
                id: b.id.clone().filter(|_| !many),
                region: b.region.clone(),
                weight: b.weight,
                origin: match &b.address {
                    BackendAddr::Ip(_) => "static".to_string(),
                    BackendAddr::Name { host, .. } => format!("static:{host}"),
                },
            });
        }
    }
    Ok(out)
}

impl UpstreamRt {
    /// Creates the runtime for `cfg` with the given backends.
    pub fn new(
        cfg: Arc<Upstream>,
        specs: &[BackendSpec],
        metrics: &Metrics,
        prev: Option<&UpstreamRt>,
    ) -> Self {
        let name = cfg.name.as_str();
        let prev_set = prev.map(|p| p.set.load_full());
        let set = BackendSet::build(specs, &cfg, prev_set.as_deref());
        Self {
            set: ArcSwap::from_pointee(set),
            cursor: AtomicUsize::new(0),
            queue: Notify::new(),
            waiting: AtomicUsize::new(0),
            metrics: UpstreamMetrics {
                connect_errors: metrics.upstream_connect_errors.with_label_values(&[name]),
                retries: metrics.upstream_retries.with_label_values(&[name]),
                queue_waiting: metrics.upstream_queue_waiting.with_label_values(&[name]),
                queue_timeouts: metrics.upstream_queue_timeouts.with_label_values(&[name]),
            },
            cfg,
        }
    }

    /// The upstream's name.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Tries once to take a slot on a backend.
    pub fn try_acquire(
        self: &Arc<Self>,
        hash: Option<u64>,
        tried: &[usize],
    ) -> Result<Lease, NoBackend> {
        let set = self.set.load();
        let c = &self.cfg.concurrency;
        let sel = Selection {
            backends: &set.backends,
            ring: set.ring.as_ref(),
            balance: self.cfg.balance,
            soft_limit: c.soft_limit,
            hard_limit: c.hard_limit,
            tried,
            hash,
            cursor: &self.cursor,
        };
        // Another request can take the last slot between the pick and the acquire: pick again.
        for _ in 0..8 {
            let i = sel.pick()?;
            let b = &set.backends[i];
            if b.try_acquire(c.hard_limit) {
                b.requests.fetch_add(1, Ordering::Relaxed);
                return Ok(Lease {
                    backend: b.clone(),
                    upstream: self.clone(),
                });
            }
        }
        Err(NoBackend::AllBusy)
    }

    /// Takes a slot, waiting in the upstream's queue while every backend is at its hard limit.
    pub async fn acquire(
        self: &Arc<Self>,
        hash: Option<u64>,
        tried: &[usize],
    ) -> Result<Lease, AcquireError> {
        match self.try_acquire(hash, tried) {
            Ok(l) => return Ok(l),
            Err(NoBackend::Empty) => return Err(AcquireError::Empty),
            Err(NoBackend::AllTried) => return Err(AcquireError::AllTried),
            Err(NoBackend::AllBusy) => {}
        }
        if self.waiting.load(Ordering::Acquire) >= self.cfg.max_queue {
            return Err(AcquireError::QueueFull);
        }
        let _waiting = WaitGuard::new(self);
        let deadline = tokio::time::Instant::now() + self.cfg.queue_timeout;
        loop {
            // Register interest before checking, so a slot freed in between is not missed.
            let notified = self.queue.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_acquire(hash, tried) {
                Ok(l) => {
                    // Pass the wake-up on if more slots may be free.
                    return Ok(l);
                }
                Err(NoBackend::Empty) => return Err(AcquireError::Empty),
                Err(NoBackend::AllTried) => return Err(AcquireError::AllTried),
                Err(NoBackend::AllBusy) => {}
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                self.metrics.queue_timeouts.inc();
                return Err(AcquireError::QueueTimeout);
            }
        }
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
}

/// Counts a request as waiting for as long as it lives.
struct WaitGuard<'a>(&'a UpstreamRt);

impl<'a> WaitGuard<'a> {
    fn new(up: &'a UpstreamRt) -> Self {
        up.waiting.fetch_add(1, Ordering::AcqRel);
        up.metrics.queue_waiting.inc();
        Self(up)
    }
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.queue_waiting.dec();
    }
}

//! The running state: one immutable [`Snapshot`] per configuration generation, held in an
//! `ArcSwap` and loaded once per request.
//!
//! A reload builds a complete new snapshot off the request path and swaps it in with one
//! `store`; requests already running keep the snapshot they started with. Upstream state
//! (backend counters) is carried over by upstream name and backend identity.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use http::HeaderValue;
use portico_config::{Config, Loaded};

use crate::metrics::{Metrics, RouteMetrics};
use crate::upstream::UpstreamRt;

/// Everything a request needs from one configuration generation.
pub struct Snapshot {
    /// Generation number, 1 for the configuration loaded at start.
    pub generation: u64,
    /// When this generation was installed.
    pub loaded_at: SystemTime,
    /// The configuration.
    pub config: Arc<Config>,
    /// Upstreams, indexed like `config.upstreams`.
    pub upstreams: Vec<Arc<UpstreamRt>>,
    /// Metric children per route, indexed like `config.routes.routes()`.
    pub route_metrics: Vec<RouteMetrics>,
    /// Metric children for requests that matched no route.
    pub unrouted_metrics: RouteMetrics,
    /// `portico_http_requests_in_flight`, reached through the request's snapshot handle
    /// (holding `Shared` for it was two more atomic writes to a shared count per request).
    pub requests_in_flight: prometheus::IntGauge,
    /// `Via` value this proxy appends (`1.1 portico`).
    pub via_h1: HeaderValue,
    /// `Via` value for HTTP/2 requests (`2 portico`).
    pub via_h2: HeaderValue,
    /// `Fly-Region` value.
    pub region: HeaderValue,
    /// The request id header's name.
    pub request_id_name: http::HeaderName,
    /// Header rules of each route, compiled (indexed like `config.routes.routes()`).
    pub route_headers: Vec<RouteHeaders>,
    /// `host_header` of each upstream, as a value (indexed like `config.upstreams`).
    pub host_headers: Vec<Option<HeaderValue>>,
    /// Affinity cookie signers, indexed like `config.routes.routes()` (cookie routes only).
    pub sticky_signers: Vec<Option<Arc<crate::sticky::CookieSigner>>>,
    /// Rate limiters, indexed like `config.routes.routes()`; a reload keeps the counts of a
    /// route whose name and limit stay the same.
    pub rate_limiters: Vec<Option<Arc<crate::ratelimit::Limiter>>>,
}

/// A request's hold on a [`Snapshot`]: it dereferences to the snapshot and clones like an
/// `Arc`, but the reference count it changes is its worker thread's own.
///
/// Every request takes the current snapshot, and its path clones and drops it a few times
/// (borrowing it across `&mut` uses of the request's state). On the snapshot's own `Arc`
/// that is six or more atomic writes per request to one count all worker threads write,
/// whose cache line then moves between cores. A `SnapRef` counts on a per-thread handle
/// instead, made once per thread and generation while requests hold it.
#[derive(Clone)]
// The outer `Arc` (one allocation per thread and generation) is the point: its count is
// the one requests change.
#[allow(clippy::redundant_allocation)]
pub struct SnapRef(Arc<Arc<Snapshot>>);

impl std::ops::Deref for SnapRef {
    type Target = Snapshot;
    fn deref(&self) -> &Snapshot {
        &self.0
    }
}

impl std::fmt::Debug for SnapRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        (**self.0).fmt(f)
    }
}

impl SnapRef {
    /// The current snapshot of `current`, through this thread's handle while it is the
    /// current one and some request on this thread holds it. The thread keeps only a weak
    /// reference: an idle thread keeps no old generation (nor its upstreams' connections)
    /// alive after a reload.
    pub fn current(current: &ArcSwap<Snapshot>) -> Self {
        thread_local! {
            static HANDLE: std::cell::RefCell<std::sync::Weak<Arc<Snapshot>>> =
                const { std::cell::RefCell::new(std::sync::Weak::new()) };
        }
        let now = current.load();
        HANDLE.with_borrow_mut(|handle| {
            if let Some(held) = handle.upgrade() {
                if Arc::ptr_eq(&*held, &*now) {
                    return SnapRef(held);
                }
            }
            let fresh = Arc::new(arc_swap::Guard::into_inner(now));
            *handle = Arc::downgrade(&fresh);
            SnapRef(fresh)
        })
    }
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("generation", &self.generation)
            .finish()
    }
}

fn header_value(s: &str) -> HeaderValue {
    // Validated by the config crate (tokens and region names are header-safe). Kept for the
    // process's life: requests clone these values without an atomic operation.
    match HeaderValue::from_str(s) {
        Ok(v) => crate::interned::value(&v),
        Err(_) => HeaderValue::from_static("invalid"),
    }
}

impl Snapshot {
    /// Builds the runtime state for `loaded`, carrying state over from `prev`.
    ///
    /// Host names are not resolved here: discovery does it in the background.
    pub fn build(
        loaded: Loaded,
        generation: u64,
        prev: Option<&Snapshot>,
        metrics: &Metrics,
    ) -> Result<Snapshot, portico_config::ConfigErrors> {
        let Loaded { config, .. } = loaded;
        let upstreams: Vec<Arc<UpstreamRt>> = config
            .upstreams
            .iter()
            .map(|up| {
                let prev_up = prev.and_then(|p| p.upstream(&up.name));
                Arc::new(UpstreamRt::new(
                    Arc::new(up.clone()),
                    &config.server,
                    metrics,
                    prev_up.map(|u| &**u),
                ))
            })
            .collect();
        let route_metrics = config
            .routes
            .routes()
            .iter()
            .map(|r| {
                let static_only = r.static_files.as_ref().is_some_and(|s| !s.try_files);
                let upstream = if static_only {
                    "static"
                } else {
                    config.upstreams[r.upstream].name.as_str()
                };
                RouteMetrics::new(metrics, &r.name, upstream)
            })
            .collect();
        let sticky_signers = config
            .routes
            .routes()
            .iter()
            .map(|r| match &r.sticky {
                Some(portico_config::Sticky::Cookie(c)) => Some(crate::sticky::signer(c)),
                _ => None,
            })
            .collect();
        let rate_limiters = config
            .routes
            .routes()
            .iter()
            .map(|r| {
                let cfg = r.rate_limit.as_ref()?;
                let kept = prev.and_then(|p| {
                    let i = p
                        .config
                        .routes
                        .routes()
                        .iter()
                        .position(|o| o.name == r.name)?;
                    p.rate_limiters.get(i)?.clone()
                });
                Some(match kept {
                    Some(l) if l.config() == cfg => l,
                    _ => Arc::new(crate::ratelimit::Limiter::new(cfg)),
                })
            })
            .collect();
        let name = &config.server.name;
        let token = instance_token();
        Ok(Snapshot {
            sticky_signers,
            rate_limiters,
            generation,
            loaded_at: SystemTime::now(),
            via_h1: header_value(&format!("1.1 {name} ({token})")),
            via_h2: header_value(&format!("2 {name} ({token})")),
            region: header_value(&config.server.region),
            request_id_name: http::HeaderName::from_bytes(
                config.server.request_id_header.as_bytes(),
            )
            .map(|n| crate::interned::name(&n))
            .unwrap_or_else(|_| http::HeaderName::from_static("x-request-id")),
            route_headers: config
                .routes
                .routes()
                .iter()
                .map(|r| RouteHeaders {
                    request: CompiledRules::new(&r.request_headers),
                    response: CompiledRules::new(&r.response_headers),
                })
                .collect(),
            host_headers: config
                .upstreams
                .iter()
                .map(|u| u.host_header.as_deref().map(header_value))
                .collect(),
            unrouted_metrics: RouteMetrics::new(metrics, "none", "none"),
            requests_in_flight: metrics.http.requests_in_flight.clone(),
            route_metrics,
            upstreams,
            config: Arc::new(config),
        })
    }

    /// The upstream with this name.
    pub fn upstream(&self, name: &str) -> Option<&Arc<UpstreamRt>> {
        self.upstreams.iter().find(|u| u.name() == name)
    }
}

/// A route's header rules as header names and values (validated by the config crate).
#[derive(Debug, Default)]
pub struct CompiledRules {
    /// Removed.
    pub remove: Vec<http::HeaderName>,
    /// Replaced.
    pub set: Vec<(http::HeaderName, HeaderValue)>,
    /// Appended.
    pub add: Vec<(http::HeaderName, HeaderValue)>,
}

impl CompiledRules {
    fn new(rules: &portico_config::HeaderRules) -> Self {
        // Kept for the process's life: applying a rule clones them without atomics.
        let name = |n: &str| {
            http::HeaderName::from_bytes(n.as_bytes())
                .ok()
                .map(|n| crate::interned::name(&n))
        };
        let value = |v: &str| {
            HeaderValue::from_str(v)
                .ok()
                .map(|v| crate::interned::value(&v))
        };
        let pair = |(n, v): &(String, String)| Some((name(n)?, value(v)?));
        Self {
            remove: rules.remove.iter().filter_map(|n| name(n)).collect(),
            set: rules.set.iter().filter_map(pair).collect(),
            add: rules.add.iter().filter_map(pair).collect(),
        }
    }
}

/// A route's compiled request and response header rules.
#[derive(Debug, Default)]
pub struct RouteHeaders {
    /// Applied to requests sent upstream.
    pub request: CompiledRules,
    /// Applied to responses to the client.
    pub response: CompiledRules,
}

/// What the admin `/status` shows about reloads.
#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    /// The last failed attempt's errors, cleared by a successful reload.
    pub last_error: Option<String>,
    /// When that failure happened.
    pub last_error_at: Option<SystemTime>,
    /// The latest attempts, oldest first, at most [`ReloadStatus::KEPT`].
    pub recent: std::collections::VecDeque<ReloadAttempt>,
}

impl ReloadStatus {
    /// How many attempts `recent` keeps.
    pub const KEPT: usize = 10;

    /// Records one attempt, dropping the oldest beyond [`ReloadStatus::KEPT`].
    pub fn record(&mut self, attempt: ReloadAttempt) {
        if self.recent.len() == Self::KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back(attempt);
    }
}

/// One reload attempt, for `/status` and the admin page.
#[derive(Debug, Clone)]
pub struct ReloadAttempt {
    /// When it finished.
    pub at: SystemTime,
    /// What asked for it (`SIGHUP`, `POST /reload`, `file changed`).
    pub trigger: String,
    /// The generation running afterwards.
    pub generation: u64,
    /// The error when it failed (the running configuration stayed).
    pub error: Option<String>,
}

/// A listener as bound, for `/status`.
#[derive(Debug, Clone)]
pub struct BoundListener {
    /// Listener name.
    pub name: String,
    /// Address actually bound (port 0 resolved).
    pub address: std::net::SocketAddr,
    /// Whether it terminates TLS.
    pub tls: bool,
}

/// State shared by every part of a running Portico.
pub struct Shared {
    /// The configuration in use.
    pub current: ArcSwap<Snapshot>,
    /// Metrics.
    pub metrics: Metrics,
    /// When the process started.
    pub started: Instant,
    /// The config file, if one was given.
    pub config_path: Option<PathBuf>,
    /// Set when a graceful shutdown begins: new responses carry `Connection: close`.
    pub draining: AtomicBool,
    /// Listeners as bound.
    pub listeners: Mutex<Vec<BoundListener>>,
    /// Reload outcome for `/status`.
    pub reload: Mutex<ReloadStatus>,
    /// Where earlier replays went (survives reloads).
    pub replay_cache: crate::replay::cache::ReplayCache,
    /// Open WebSockets per route (survives reloads).
    pub ws_counts: WsCounts,
    /// Static files in memory.
    pub files: crate::statics::cache::FileCache,
    /// Upgraded client connections, to close cleanly at shutdown.
    pub ws_conns: crate::wsclose::Registry,
    /// ACME challenge answers and certificate status.
    pub acme: Arc<crate::acme::AcmeState>,
    next_generation: AtomicU64,
}

impl Shared {
    /// Wraps the first snapshot.
    pub fn new(first: Snapshot, metrics: Metrics, config_path: Option<PathBuf>) -> Arc<Self> {
        metrics
            .config
            .config_generation
            .set(first.generation as i64);
        let replay_cache = crate::replay::cache::ReplayCache::new(first.config.replay.cache_size);
        Arc::new(Self {
            replay_cache,
            ws_counts: Default::default(),
            acme: Default::default(),
            files: Default::default(),
            ws_conns: Default::default(),
            next_generation: AtomicU64::new(first.generation + 1),
            current: ArcSwap::from_pointee(first),
            metrics,
            started: Instant::now(),
            config_path,
            draining: AtomicBool::new(false),
            listeners: Mutex::new(Vec::new()),
            reload: Mutex::new(ReloadStatus::default()),
        })
    }

    /// The generation number the next successful reload gets.
    pub fn take_generation(&self) -> u64 {
        self.next_generation.fetch_add(1, Ordering::Relaxed)
    }

    /// Whether a graceful shutdown is under way.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// This process's token in `Via` (`Via: 1.1 portico (3f9ac2d15e7b0a64)`): 16 random hex
/// digits made at start. A request whose `Via` already holds it has come back to this very
/// process (an upstream that points at Portico itself) and is refused with 508 instead of
/// looping until every connection is taken. The name alone cannot tell: every Portico in a
/// chain of them may be called `portico`.
pub fn instance_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| format!("{:016x}", fastrand::u64(..)))
}

/// Open upgraded connections per route name.
#[derive(Default)]
pub struct WsCounts(Mutex<HashMap<String, Arc<AtomicUsize>>>);

impl WsCounts {
    pub(crate) fn counter(&self, route: &str) -> Arc<AtomicUsize> {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(route.to_string()).or_default().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(generation: u64, metrics: &Metrics) -> Snapshot {
        let loaded = crate::load::load_config(None).expect("the embedded config loads");
        Snapshot::build(loaded, generation, None, metrics).expect("the embedded config builds")
    }

    #[test]
    fn snap_refs_share_a_thread_handle_follow_swaps_and_keep_no_idle_generation() {
        let metrics = Metrics::new();
        let current = ArcSwap::from_pointee(snapshot(1, &metrics));
        let a = SnapRef::current(&current);
        let b = SnapRef::current(&current);
        assert_eq!(a.generation, 1);
        assert!(
            Arc::ptr_eq(&a.0, &b.0),
            "one handle per thread and generation"
        );
        // Another thread counts on a handle of its own, over the same snapshot.
        let other = std::thread::scope(|s| {
            s.spawn(|| {
                let r = SnapRef::current(&current);
                (Arc::as_ptr(&r.0) as usize, Arc::as_ptr(&*r.0) as usize)
            })
            .join()
            .expect("the thread runs")
        });
        assert_ne!(other.0, Arc::as_ptr(&a.0) as usize);
        assert_eq!(other.1, Arc::as_ptr(&*a.0) as usize);

        // A reload: the next request takes the new generation; the old one lives while
        // requests hold it, and not after (the thread keeps only a weak reference).
        let first = Arc::downgrade(&*a.0);
        current.store(Arc::new(snapshot(2, &metrics)));
        let c = SnapRef::current(&current);
        assert_eq!(c.generation, 2);
        assert_eq!(a.generation, 1);
        assert!(first.upgrade().is_some());
        drop((a, b));
        assert!(first.upgrade().is_none());
        // With no request holding it, the thread's handle is made again.
        let weak_handle = Arc::downgrade(&c.0);
        drop(c);
        assert!(weak_handle.upgrade().is_none());
        assert_eq!(SnapRef::current(&current).generation, 2);
    }
}

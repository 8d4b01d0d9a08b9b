//! Every Prometheus metric Portico exports, named `portico_<subsystem>_<name>_<unit>`.
//!
//! Label values are bounded: listener, route and upstream names come from the config, status
//! is a class (`2xx`), reasons are fixed strings. Hot-path metrics are resolved to their label
//! children once (when a config snapshot is built) so a request only touches atomics.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Buckets for request durations: 0.5 ms to 60 s.
const DURATION_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// The registry and every metric family, grouped by what they describe.
pub struct Metrics {
    registry: Registry,
    /// Requests and answers.
    pub http: HttpMetrics,
    /// Client connections, by listener.
    pub listeners: ListenerMetrics,
    /// Backends and the requests sent to them, by upstream.
    pub upstreams: UpstreamMetrics,
    /// DNS discovery, by upstream.
    pub discovery: DiscoveryMetrics,
    /// Active health checks, by upstream.
    pub health: HealthMetrics,
    /// fly-replay and the replay cache.
    pub replay: ReplayMetrics,
    /// Upgraded connections (WebSockets).
    pub websockets: WebSocketMetrics,
    /// The configuration and its reloads.
    pub config: ConfigMetrics,
    /// Certificates and ACME.
    pub tls: TlsMetrics,
}

/// Requests and answers.
pub struct HttpMetrics {
    /// Requests completed, by route, upstream and status class.
    pub requests: IntCounterVec,
    /// Request durations, by route.
    pub request_duration: HistogramVec,
    /// Requests being processed now.
    pub requests_in_flight: IntGauge,
    /// Requests answered by Portico itself, by reason (`no_route`, `body_too_large`, ...).
    pub rejected: IntCounterVec,
    /// Responses that started and could not be completed, by route and reason
    /// (`upstream_failed_mid_response`, `client_gone`).
    pub incomplete: IntCounterVec,
    /// Sticky routing outcomes (`hit`, `moved`, `new`, `invalid`), by route.
    pub sticky: IntCounterVec,
}

impl HttpMetrics {
    fn new(registry: &Registry) -> Self {
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "portico_http_request_duration_seconds",
                "Time from request header received to response finished, by route.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["route"],
        )
        .unwrap_or_else(|e| unreachable!("histogram is well-formed: {e}"));
        let _ = registry.register(Box::new(request_duration.clone()));
        Self {
            requests: counter_vec(
                registry,
                "portico_http_requests_total",
                "HTTP requests completed, by route, upstream and status class.",
                &["route", "upstream", "status"],
            ),
            request_duration,
            requests_in_flight: gauge(
                registry,
                "portico_http_requests_in_flight",
                "HTTP requests being processed.",
            ),
            rejected: counter_vec(
                registry,
                "portico_http_rejected_total",
                "Requests answered by Portico without reaching an upstream, by reason.",
                &["reason"],
            ),
            incomplete: counter_vec(
                registry,
                "portico_http_incomplete_total",
                "Responses whose head went out and whose body could not be completed, by route and reason.",
                &["route", "reason"],
            ),
            sticky: counter_vec(
                registry,
                "portico_sticky_total",
                "Requests of sticky routes, by route and outcome (hit: pinned backend used, moved: pinned backend unusable, new: no pin, invalid: pin that did not verify).",
                &["route", "outcome"],
            ),
        }
    }
}

/// Client connections, by listener.
pub struct ListenerMetrics {
    /// Client connections open now, by listener.
    pub connections_open: IntGaugeVec,
    /// Client connections accepted, by listener.
    pub connections_accepted: IntCounterVec,
    /// TLS handshakes that failed, by listener.
    pub tls_handshake_errors: IntCounterVec,
}

impl ListenerMetrics {
    fn new(registry: &Registry) -> Self {
        Self {
            connections_open: gauge_vec(
                registry,
                "portico_connections_open",
                "Client connections open, by listener.",
                &["listener"],
            ),
            connections_accepted: counter_vec(
                registry,
                "portico_connections_accepted_total",
                "Client connections accepted, by listener.",
                &["listener"],
            ),
            tls_handshake_errors: counter_vec(
                registry,
                "portico_tls_handshake_errors_total",
                "TLS handshakes with clients that failed or timed out, by listener.",
                &["listener"],
            ),
        }
    }
}

/// Backends and the requests sent to them, by upstream.
pub struct UpstreamMetrics {
    /// Failed connection attempts to backends, by upstream.
    pub upstream_connect_errors: IntCounterVec,
    /// Requests sent again to another backend, by upstream.
    pub upstream_retries: IntCounterVec,
    /// Requests in flight to an upstream's backends (set at scrape time).
    pub upstream_in_flight: IntGaugeVec,
    /// Backends configured per upstream (set at scrape time).
    pub upstream_backends: IntGaugeVec,
    /// Requests waiting for a backend below its hard limit, by upstream.
    pub upstream_queue_waiting: IntGaugeVec,
    /// Requests that gave up waiting (503), by upstream.
    pub upstream_queue_timeouts: IntCounterVec,
    /// Backends able to take traffic, by upstream (set at scrape time).
    pub upstream_backends_healthy: IntGaugeVec,
    /// Backends ejected after failures on real traffic, by upstream.
    pub backend_ejections: IntCounterVec,
}

impl UpstreamMetrics {
    fn new(registry: &Registry) -> Self {
        Self {
            upstream_connect_errors: counter_vec(
                registry,
                "portico_upstream_connect_errors_total",
                "Failed connection attempts to backends, by upstream.",
                &["upstream"],
            ),
            upstream_retries: counter_vec(
                registry,
                "portico_upstream_retries_total",
                "Requests tried again on another backend, by upstream.",
                &["upstream"],
            ),
            upstream_in_flight: gauge_vec(
                registry,
                "portico_upstream_requests_in_flight",
                "Requests in flight to an upstream's backends.",
                &["upstream"],
            ),
            upstream_backends: gauge_vec(
                registry,
                "portico_upstream_backends",
                "Backends known for an upstream.",
                &["upstream"],
            ),
            upstream_queue_waiting: gauge_vec(
                registry,
                "portico_upstream_queue_waiting",
                "Requests waiting because every backend is at its hard limit.",
                &["upstream"],
            ),
            upstream_queue_timeouts: counter_vec(
                registry,
                "portico_upstream_queue_timeouts_total",
                "Requests answered 503 after waiting for a backend, by upstream.",
                &["upstream"],
            ),
            upstream_backends_healthy: gauge_vec(
                registry,
                "portico_upstream_backends_healthy",
                "Backends of an upstream able to take traffic (checks pass, not ejected).",
                &["upstream"],
            ),
            backend_ejections: counter_vec(
                registry,
                "portico_backend_ejections_total",
                "Backends ejected after consecutive failures on real traffic, by upstream.",
                &["upstream"],
            ),
        }
    }
}

/// DNS discovery, by upstream.
pub struct DiscoveryMetrics {
    /// Discovery lookups, by upstream and result (`success`, `empty`, `error`).
    pub discovery_resolutions: IntCounterVec,
    /// Changes of an upstream's backend set made by discovery.
    pub discovery_changes: IntCounterVec,
}

impl DiscoveryMetrics {
    fn new(registry: &Registry) -> Self {
        Self {
            discovery_resolutions: counter_vec(
                registry,
                "portico_discovery_resolutions_total",
                "DNS discovery lookups, by upstream and result (success, empty, error).",
                &["upstream", "result"],
            ),
            discovery_changes: counter_vec(
                registry,
                "portico_discovery_backend_changes_total",
                "Changes of an upstream's backend set made by discovery.",
                &["upstream"],
            ),
        }
    }
}

/// Active health checks, by upstream.
pub struct HealthMetrics {
    /// Health check results, by upstream and result (`pass`, `fail`).
    pub health_checks: IntCounterVec,
    /// Health check round trips, by upstream.
    pub health_check_duration: HistogramVec,
}

impl HealthMetrics {
    fn new(registry: &Registry) -> Self {
        let health_check_duration = HistogramVec::new(
            HistogramOpts::new(
                "portico_health_check_duration_seconds",
                "Health check round trips, by upstream.",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["upstream"],
        )
        .unwrap_or_else(|e| unreachable!("histogram is well-formed: {e}"));
        let _ = registry.register(Box::new(health_check_duration.clone()));
        Self {
            health_checks: counter_vec(
                registry,
                "portico_health_checks_total",
                "Active health checks, by upstream and result (pass, fail).",
                &["upstream", "result"],
            ),
            health_check_duration,
        }
    }
}

/// fly-replay and the replay cache.
pub struct ReplayMetrics {
    /// Replays, by upstream that asked, kind (`header`, `json`, `cache`) and outcome.
    pub replays: IntCounterVec,
    /// Replays per replayed request.
    pub replay_hops: Histogram,
    /// Replay cache events (`hit`, `miss`, `bypass`, `invalidated`).
    pub replay_cache: IntCounterVec,
    /// Entries in the replay cache (set at scrape time).
    pub replay_cache_entries: IntGauge,
    /// Request body bytes held for replays right now.
    pub replay_buffered_bytes: IntGauge,
}

impl ReplayMetrics {
    fn new(registry: &Registry) -> Self {
        let replay_hops = Histogram::with_opts(
            HistogramOpts::new(
                "portico_replay_hops",
                "Replays taken by each replayed request.",
            )
            .buckets(vec![1.0, 2.0, 3.0, 5.0, 10.0]),
        )
        .unwrap_or_else(|e| unreachable!("histogram is well-formed: {e}"));
        let _ = registry.register(Box::new(replay_hops.clone()));
        Self {
            replays: counter_vec(
                registry,
                "portico_replays_total",
                "fly-replay instructions, by upstream that sent them, kind (header, json, cache) and outcome.",
                &["upstream", "kind", "outcome"],
            ),
            replay_hops,
            replay_cache: counter_vec(
                registry,
                "portico_replay_cache_total",
                "Replay cache events (hit, miss, bypass, invalidated).",
                &["result"],
            ),
            replay_cache_entries: gauge(
                registry,
                "portico_replay_cache_entries",
                "Entries in the replay cache.",
            ),
            replay_buffered_bytes: gauge(
                registry,
                "portico_replay_buffered_bytes",
                "Request body bytes held by Portico for possible replays.",
            ),
        }
    }
}

/// Upgraded connections (WebSockets).
pub struct WebSocketMetrics {
    /// Open upgraded connections (WebSockets), by route and upstream.
    pub websockets_open: IntGaugeVec,
    /// Upgraded connections accepted, by route.
    pub websockets_total: IntCounterVec,
    /// Bytes through upgraded connections, by route and direction (`in`: from clients).
    pub websocket_bytes: IntCounterVec,
    /// Bytes of relay buffers held by tunnels right now (an idle tunnel on plain TCP holds
    /// none; one read through TLS holds a small one).
    pub websocket_buffer_bytes: IntGauge,
}

impl WebSocketMetrics {
    fn new(registry: &Registry) -> Self {
        Self {
            websockets_open: gauge_vec(
                registry,
                "portico_websockets_open",
                "Open upgraded connections (WebSockets), by route and upstream.",
                &["route", "upstream"],
            ),
            websockets_total: counter_vec(
                registry,
                "portico_websockets_total",
                "Upgraded connections established, by route.",
                &["route"],
            ),
            websocket_bytes: counter_vec(
                registry,
                "portico_websocket_bytes_total",
                "Bytes through upgraded connections, by route and direction (in: client to upstream, out: upstream to client).",
                &["route", "direction"],
            ),
            websocket_buffer_bytes: gauge(
                registry,
                "portico_websocket_buffer_bytes",
                "Bytes of relay buffers held by upgraded connections right now (idle tunnels on plain TCP hold none).",
            ),
        }
    }
}

/// The configuration and its reloads.
pub struct ConfigMetrics {
    /// Generation number of the running configuration.
    pub config_generation: IntGauge,
    /// Configuration reloads, by result (`success`, `error`).
    pub config_reloads: IntCounterVec,
}

impl ConfigMetrics {
    fn new(registry: &Registry) -> Self {
        Self {
            config_generation: gauge(
                registry,
                "portico_config_generation",
                "Generation number of the configuration in use (1 at start).",
            ),
            config_reloads: counter_vec(
                registry,
                "portico_config_reloads_total",
                "Configuration reload attempts, by result.",
                &["result"],
            ),
        }
    }
}

/// Certificates and ACME.
pub struct TlsMetrics {
    /// When each served certificate expires (UNIX seconds), by listener and host name (file
    /// certificates by each DNS name they hold, ACME ones by host).
    pub tls_certificate_expiry: IntGaugeVec,
    /// ACME orders by listener, host and result (`issued`, `renewed`, `error`).
    pub acme_orders: IntCounterVec,
}

impl TlsMetrics {
    fn new(registry: &Registry) -> Self {
        Self {
            tls_certificate_expiry: gauge_vec(
                registry,
                "portico_tls_certificate_expiry_seconds",
                "When the certificate served for a host expires, as a UNIX time (alert on \
                 `portico_tls_certificate_expiry_seconds - time() < 14 * 86400`).",
                &["listener", "host"],
            ),
            acme_orders: counter_vec(
                registry,
                "portico_acme_orders_total",
                "Certificate orders to the ACME CA, by listener, host and result (issued, \
                 renewed, error).",
                &["listener", "host", "result"],
            ),
        }
    }
}

fn counter_vec(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let m = IntCounterVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("metric {name} is well-formed: {e}"));
    reg.register(Box::new(m.clone()))
        .unwrap_or_else(|e| unreachable!("metric {name} is registered once: {e}"));
    m
}

fn gauge_vec(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let m = IntGaugeVec::new(Opts::new(name, help), labels)
        .unwrap_or_else(|e| unreachable!("metric {name} is well-formed: {e}"));
    reg.register(Box::new(m.clone()))
        .unwrap_or_else(|e| unreachable!("metric {name} is registered once: {e}"));
    m
}

fn gauge(reg: &Registry, name: &str, help: &str) -> IntGauge {
    let m = IntGauge::new(name, help)
        .unwrap_or_else(|e| unreachable!("metric {name} is well-formed: {e}"));
    reg.register(Box::new(m.clone()))
        .unwrap_or_else(|e| unreachable!("metric {name} is registered once: {e}"));
    m
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        {
            // process_cpu_seconds_total, process_resident_memory_bytes, open fds...
            let pc = prometheus::process_collector::ProcessCollector::for_self();
            let _ = registry.register(Box::new(pc));
        }
        // portico_build_info: a constant 1 labelled with what the binary is.
        if let Ok(info) = prometheus::IntGauge::with_opts(
            prometheus::Opts::new("portico_build_info", "Build information; always 1.")
                .const_label("version", crate::buildinfo::VERSION)
                .const_label("commit", crate::buildinfo::COMMIT)
                .const_label("rustc", crate::buildinfo::RUSTC)
                .const_label("target", crate::buildinfo::TARGET)
                .const_label("profile", crate::buildinfo::PROFILE),
        ) {
            info.set(1);
            let _ = registry.register(Box::new(info));
        }
        Self {
            http: HttpMetrics::new(&registry),
            listeners: ListenerMetrics::new(&registry),
            upstreams: UpstreamMetrics::new(&registry),
            discovery: DiscoveryMetrics::new(&registry),
            health: HealthMetrics::new(&registry),
            replay: ReplayMetrics::new(&registry),
            websockets: WebSocketMetrics::new(&registry),
            config: ConfigMetrics::new(&registry),
            tls: TlsMetrics::new(&registry),
            registry,
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(16 * 1024);
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            tracing::warn!(error = %e, "encoding metrics failed");
        }
        buf
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Status class label for a status code (`"2xx"`); `"none"` when no response was sent.
pub fn status_class(status: u16) -> usize {
    match status {
        100..=199 => 0,
        200..=299 => 1,
        300..=399 => 2,
        400..=499 => 3,
        500..=599 => 4,
        _ => 5,
    }
}

/// Label values for [`status_class`] indices.
pub const STATUS_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "none"];

/// A route's metric children, resolved once per config snapshot.
pub struct RouteMetrics {
    /// `portico_http_requests_total{route, upstream, status}` by status class index.
    pub requests: [IntCounter; 6],
    /// `portico_http_request_duration_seconds{route}`.
    pub duration: Histogram,
    /// `portico_websockets_open{route, upstream}`.
    pub ws_open: IntGauge,
    /// `portico_websockets_total{route}`.
    pub ws_total: IntCounter,
    /// `portico_websocket_bytes_total{route, direction="in"}`.
    pub ws_bytes_in: IntCounter,
    /// `portico_websocket_bytes_total{route, direction="out"}`.
    pub ws_bytes_out: IntCounter,
}

impl RouteMetrics {
    /// Resolves the children for one route.
    pub fn new(m: &Metrics, route: &str, upstream: &str) -> Self {
        Self {
            requests: STATUS_CLASSES
                .map(|c| m.http.requests.with_label_values(&[route, upstream, c])),
            duration: m.http.request_duration.with_label_values(&[route]),
            ws_open: m
                .websockets
                .websockets_open
                .with_label_values(&[route, upstream]),
            ws_total: m.websockets.websockets_total.with_label_values(&[route]),
            ws_bytes_in: m
                .websockets
                .websocket_bytes
                .with_label_values(&[route, "in"]),
            ws_bytes_out: m
                .websockets
                .websocket_bytes
                .with_label_values(&[route, "out"]),
        }
    }
}

//! Per-request state carried through pingora's phases.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::HeaderValue;
use smallvec::SmallVec;

use crate::state::{Shared, SnapRef};
use crate::upstream::Lease;

/// A response Portico decided to send itself, kept until `fail_to_proxy` writes it.
#[derive(Debug, Clone)]
pub struct LocalFailure {
    /// Status code.
    pub status: u16,
    /// Metric label for `portico_http_rejected_total`.
    pub reason: &'static str,
    /// Explanation for the body and the log.
    pub message: String,
    /// `Retry-After` seconds, when the client should come back later.
    pub retry_after: Option<u64>,
}

impl LocalFailure {
    /// Reason of an HTTP-01 answer: status 200, `message` is the body.
    pub const ACME_CHALLENGE: &'static str = "acme_challenge";

    /// Whether this is an ACME HTTP-01 answer rather than a failure.
    pub fn is_acme_answer(&self) -> bool {
        self.reason == Self::ACME_CHALLENGE
    }

    /// A failure without `Retry-After`.
    pub fn new(status: u16, reason: &'static str, message: String) -> Self {
        Self {
            status,
            reason,
            message,
            retry_after: None,
        }
    }
}

/// What the request path knows about the client connection a request came on, whichever
/// engine runs it.
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    /// The direct peer.
    pub peer: Option<std::net::SocketAddr>,
    /// The listener's address the client connected to.
    pub local: Option<std::net::SocketAddr>,
    /// TLS version of the connection (`TLSv1.3`), `None` for plain connections.
    pub tls: Option<&'static str>,
    /// The request came over HTTP/2.
    pub http2: bool,
    /// The direct peer's canonical address as a field value, made once per connection:
    /// the `X-Forwarded-For` (and `Fly-Client-IP`) of every request from an untrusted peer.
    pub peer_value: Option<http::HeaderValue>,
}

impl ConnInfo {
    /// [`Self::peer_value`] when `ip` is this connection's peer.
    pub fn peer_value_of(&self, ip: std::net::IpAddr) -> Option<&http::HeaderValue> {
        let peer = self.peer.map(|a| super::forwarded::canonical(a.ip()))?;
        (peer == ip).then_some(self.peer_value.as_ref()).flatten()
    }
}

/// Counts the request in `portico_http_requests_in_flight` while it lives.
pub struct InFlight(Arc<Shared>);

impl InFlight {
    /// Counts one more request.
    pub fn new(shared: &Arc<Shared>) -> Self {
        shared.metrics.http.requests_in_flight.inc();
        Self(shared.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.metrics.http.requests_in_flight.dec();
    }
}

/// State of one request.
pub struct RequestCtx {
    /// The route's rate limit decision when it refused the request (for the 429's
    /// `RateLimit-*` fields).
    pub rate_limit: Option<crate::ratelimit::Decision>,
    /// The response body's encoder when the route compresses this response (pingora's path).
    pub encoder: Option<crate::compress::Encoder>,
    /// The configuration this request runs on from start to end.
    pub snap: SnapRef,
    /// When the request head was received.
    pub start: Instant,
    /// Matched route (index into the snapshot's routes).
    pub route: Option<usize>,
    /// Request id sent upstream and echoed back.
    pub request_id: Option<HeaderValue>,
    /// The client's address after trusted-proxy resolution.
    pub client_ip: Option<IpAddr>,
    /// The direct peer's address.
    pub peer_ip: Option<IpAddr>,
    /// The client connection.
    pub conn: ConnInfo,
    /// Which field names the request holds, when its parser noted them: lets the request
    /// path skip looking up fields it knows are absent.
    pub names: super::names::NameSet,
    /// Whether the direct peer is a trusted proxy.
    pub peer_trusted: bool,
    /// The slot held on the chosen backend.
    pub lease: Option<Lease>,
    /// Backends tried so far (by pointer), so retries go elsewhere.
    pub tried: SmallVec<[usize; 4]>,
    /// Connection attempts made.
    pub attempts: u32,
    /// The last upstream error, in words, for the error body.
    pub last_error: Option<String>,
    /// Status that error maps to (502, or 504 for a timeout).
    pub last_error_status: u16,
    /// Reason that error maps to: `upstream_unreachable` (no connection), `upstream_error`
    /// (the backend was reached and failed), `upstream_timeout`.
    pub last_error_reason: &'static str,
    /// Why the request did not end cleanly, for the access log's `error` field: the reason
    /// of Portico's own answer, or what cut a response short.
    pub error: Option<&'static str>,
    /// A response Portico decided on (no route, queue timeout, ...).
    pub failure: Option<LocalFailure>,
    /// Request body bytes seen (for `max_body`).
    pub body_bytes: u64,
    /// The backend that served the request (for the log).
    pub backend_addr: Option<std::net::SocketAddr>,
    /// A preferred instance was asked for but could not be used.
    pub preferred_unavailable: bool,
    /// When the current upstream connection attempt started (for latency measurement).
    pub connect_started: Option<Instant>,
    /// Upstream of the current attempt (the route's, or a replay target's).
    pub upstream: usize,
    /// fly-replay state.
    pub replay: crate::replay::ReplayState,
    /// This request is a replay subrequest (its parent logs the exchange).
    pub is_subrequest: bool,
    /// Upgrade request state (admission slot, tunnel metrics).
    pub ws: Option<super::websocket::WsState>,
    /// Backend key of a verified affinity cookie.
    pub sticky_pin: Option<String>,
    /// Discovery was asked for an on-demand round for an instance it did not know.
    pub instance_refreshed: bool,
    /// Status of the last upstream response head (before Portico's own answer, if any).
    pub upstream_status: Option<u16>,
    /// Time from the start of the attempt that answered to its response head.
    pub upstream_time: Option<std::time::Duration>,
    /// pingora's upstream loop started (`upstream_peer` ran): a failure from here on ends
    /// the client connection.
    pub upstream_loop: bool,
}

impl Drop for RequestCtx {
    fn drop(&mut self) {
        // Counted in `new`; the gauge is the same object in every snapshot.
        self.snap.requests_in_flight.dec();
    }
}

impl RequestCtx {
    /// A new context on the current snapshot.
    pub fn new(shared: &Arc<Shared>) -> Self {
        let snap = SnapRef::current(&shared.current);
        snap.requests_in_flight.inc();
        Self {
            snap,
            start: Instant::now(),
            route: None,
            request_id: None,
            client_ip: None,
            peer_ip: None,
            conn: ConnInfo::default(),
            names: super::names::NameSet::UNKNOWN,
            peer_trusted: false,
            lease: None,
            tried: SmallVec::new(),
            attempts: 0,
            last_error: None,
            last_error_status: 502,
            last_error_reason: "upstream_unreachable",
            error: None,
            failure: None,
            body_bytes: 0,
            backend_addr: None,
            preferred_unavailable: false,
            connect_started: None,
            upstream: 0,
            replay: Default::default(),
            is_subrequest: false,
            ws: None,
            sticky_pin: None,
            instance_refreshed: false,
            upstream_loop: false,
            upstream_status: None,
            upstream_time: None,
            rate_limit: None,
            encoder: None,
        }
    }

    /// The request id as text, for log lines (`-` before it is known).
    pub fn id(&self) -> &str {
        self.request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
    }

    /// The matched route.
    pub fn route(&self) -> Option<&portico_config::Route> {
        self.route.map(|i| &self.snap.config.routes.routes()[i])
    }

    /// The upstream's name for logs and error bodies: `static` for a files-only route, `-`
    /// before routing.
    pub fn upstream_label(&self) -> &str {
        match self.route() {
            Some(r) if !r.proxies() => "static",
            Some(_) => self
                .snap
                .upstreams
                .get(self.upstream)
                .map_or("-", |u| u.name()),
            None => "-",
        }
    }
}

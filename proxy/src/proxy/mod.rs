//! The request path: Portico's `ProxyHttp` implementation. Each phase delegates to the module
//! that owns the decision (routing, forwarding headers, upstream selection, responses).

pub mod access;
pub mod ctx;
pub mod forwarded;
pub mod respond;
pub mod routing_headers;

use std::net::IpAddr;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use http::header::{CONTENT_LENGTH, HOST};
use http::HeaderValue;
use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_error::{Error, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};
use portico_config::routing::normalize_path;
use portico_config::HashKey;

use crate::metrics::status_class;
use crate::state::Shared;
use crate::upstream::select::{backend_ptr, hash_key};
use crate::upstream::{AcquireError, UpstreamRt, Want};
use ctx::{LocalFailure, RequestCtx};

/// Request headers only Portico may set: anything a client sends under these names is dropped
/// before the request goes upstream.
pub const INTERNAL_HEADERS: &[&str] = &[
    "fly-replay-src",
    "fly-replay-failed",
    "fly-preferred-instance-unavailable",
    "fly-replay-cache-status",
];

/// Fly's request headers, replaced by Portico's own values (or removed when the peer is not a
/// trusted proxy and `fly_headers` is off).
const FLY_HEADERS: &[&str] = &[
    "fly-client-ip",
    "fly-region",
    "fly-forwarded-port",
    "fly-request-id",
];

/// What a listener tells the request path about itself.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    /// Listener name (as in the config).
    pub name: Arc<str>,
    /// Whether it terminates TLS.
    pub tls: bool,
    /// The port it is bound to.
    pub port: u16,
    /// The port as a header value (`X-Forwarded-Port`, `Fly-Forwarded-Port`).
    pub port_value: HeaderValue,
    /// Port of the first TLS listener as bound, the default target of `force_https`.
    pub default_https_port: u16,
}

/// The proxy application of one listener.
pub struct Portico {
    /// Shared state (snapshot, metrics).
    pub shared: Arc<Shared>,
    /// The listener this instance serves.
    pub listener: ListenerInfo,
}

/// The authority a request is for: the Host header, else the URI's authority (HTTP/2).
pub fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

fn header_str<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers.get(name).and_then(|v| v.to_str().ok())
}

/// Value of cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    req.headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

impl Portico {
    fn listener_cfg<'a>(&self, ctx: &'a RequestCtx) -> Option<&'a portico_config::Listener> {
        ctx.snap
            .config
            .listeners
            .iter()
            .find(|l| *l.name == *self.listener.name)
    }

    fn affinity_hash(&self, session: &Session, ctx: &RequestCtx, key: &HashKey) -> Option<u64> {
        let req = session.req_header();
        match key {
            HashKey::ClientIp => ctx.client_ip.map(|ip| match ip {
                IpAddr::V4(v4) => hash_key(&v4.octets()),
                IpAddr::V6(v6) => hash_key(&v6.octets()),
            }),
            HashKey::Path => Some(hash_key(req.uri.path().as_bytes())),
            HashKey::Header(name) => req
                .headers
                .get(name.as_str())
                .map(|v| hash_key(v.as_bytes())),
            HashKey::Cookie(name) => cookie(req, name).map(|v| hash_key(v.as_bytes())),
        }
    }

    /// Identifies the request and the client; returns the redirect or local response to send,
    /// if any.
    fn classify_request(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Option<LocalFailure> {
        let server = &ctx.snap.config.server;
        let req = session.req_header();
        // Request id: keep a valid incoming one, else make one.
        let incoming = req
            .headers
            .get(server.request_id_header.as_str())
            .filter(|v| forwarded::valid_request_id(v.as_bytes()))
            .cloned();
        ctx.request_id = Some(incoming.unwrap_or_else(|| {
            HeaderValue::from_str(&forwarded::new_request_id())
                .unwrap_or_else(|_| HeaderValue::from_static("-"))
        }));
        // Client address.
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| forwarded::canonical(a.ip()));
        if let Some(peer) = peer {
            ctx.peer_ip = Some(peer);
            ctx.peer_trusted = forwarded::is_trusted(peer, &server.trusted_proxies);
            let xff = req.headers.get("x-forwarded-for").map(|v| v.as_bytes());
            ctx.client_ip = Some(forwarded::client_ip(peer, xff, &server.trusted_proxies));
        }
        let listener = self.listener_cfg(ctx)?;
        if listener.force_https && !self.listener.tls {
            let port = listener
                .https_port
                .unwrap_or(self.listener.default_https_port);
            return Some(self.https_redirect(session, port));
        }
        // Routing, on the normalized path.
        let host = request_host(req);
        let path = normalize_path(req.uri.path());
        match ctx.snap.config.routes.find(host, &path) {
            Some((i, _)) => ctx.route = Some(i),
            None => {
                return Some(LocalFailure {
                    status: 404,
                    reason: "no_route",
                    message: format!(
                        "no route for host \"{}\" and path \"{}\"",
                        host.unwrap_or(""),
                        req.uri.path()
                    ),
                    retry_after: None,
                })
            }
        }
        // Body limit: refuse up front when the length is declared.
        if let Some(max) = ctx.route().and_then(|r| r.max_body) {
            let declared =
                header_str(req, CONTENT_LENGTH.as_str()).and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > max) {
                return Some(too_large(max));
            }
        }
        None
    }

    fn https_redirect(&self, session: &Session, https_port: u16) -> LocalFailure {
        let req = session.req_header();
        let host = request_host(req).map(portico_config::routing::strip_port);
        let Some(host) = host.filter(|h| !h.is_empty()) else {
            return LocalFailure {
                status: 400,
                reason: "bad_request",
                message: "a Host header is required".into(),
                retry_after: None,
            };
        };
        let port = if https_port == 443 {
            String::new()
        } else {
            format!(":{https_port}")
        };
        let pq = req.uri.path_and_query().map_or("/", |p| p.as_str());
        LocalFailure {
            status: 301,
            reason: "force_https",
            message: format!("https://{host}{port}{pq}"),
            retry_after: None,
        }
    }

    fn forward_headers(
        &self,
        session: &Session,
        up: &mut RequestHeader,
        ctx: &RequestCtx,
    ) -> Result<()> {
        let server = &ctx.snap.config.server;
        let trusted = ctx.peer_trusted;
        // One pass over the (few) request headers decides whether any removal is needed, instead
        // of hashing every reserved name on every request.
        if up.headers.keys().any(|k| k.as_str().starts_with("fly-")) {
            for name in INTERNAL_HEADERS {
                up.remove_header(*name);
            }
            if !trusted || server.fly_headers {
                for name in FLY_HEADERS {
                    up.remove_header(*name);
                }
            }
        }
        if let Some(peer) = ctx.peer_ip {
            let mut buf = [0u8; 64];
            let peer = ip_bytes(peer, &mut buf);
            let previous = if trusted {
                up.headers.get("x-forwarded-for")
            } else {
                None
            };
            let xff = match previous {
                Some(prev) => {
                    let mut v = Vec::with_capacity(prev.len() + 2 + peer.len());
                    v.extend_from_slice(prev.as_bytes());
                    v.extend_from_slice(b", ");
                    v.extend_from_slice(peer);
                    v
                }
                None => peer.to_vec(),
            };
            let xff = HeaderValue::from_maybe_shared(Bytes::from(xff)).map_err(|e| {
                Error::because(
                    pingora_error::ErrorType::InvalidHTTPHeader,
                    "x-forwarded-for",
                    e,
                )
            })?;
            up.insert_header(names::X_FORWARDED_FOR, xff)?;
        }
        let keep = |up: &RequestHeader, name: &str| trusted && up.headers.contains_key(name);
        let tls = self.listener.tls;
        if !keep(up, "x-forwarded-proto") {
            let v = if tls { "https" } else { "http" };
            up.insert_header(names::X_FORWARDED_PROTO, HeaderValue::from_static(v))?;
        }
        if !keep(up, "x-forwarded-ssl") {
            let v = if tls { "on" } else { "off" };
            up.insert_header(names::X_FORWARDED_SSL, HeaderValue::from_static(v))?;
        }
        if !keep(up, "x-forwarded-port") {
            up.insert_header(names::X_FORWARDED_PORT, self.listener.port_value.clone())?;
        }
        if !keep(up, "x-forwarded-host") {
            if let Some(host) = session.req_header().headers.get(HOST) {
                up.insert_header(names::X_FORWARDED_HOST, host.clone())?;
            } else if let Some(a) = session.req_header().uri.authority() {
                let host = a.as_str().to_string();
                up.insert_header(names::X_FORWARDED_HOST, host)?;
            }
        }
        let via = if session.is_http2() {
            &ctx.snap.via_h2
        } else {
            &ctx.snap.via_h1
        };
        up.append_header(names::VIA, via.clone())?;
        if let Some(id) = &ctx.request_id {
            up.insert_header(ctx.snap.request_id_name.clone(), id.clone())?;
        }
        if server.fly_headers {
            if let Some(ip) = ctx.client_ip {
                let mut buf = [0u8; 64];
                let ip = ip_bytes(ip, &mut buf).to_vec();
                let v = HeaderValue::from_maybe_shared(Bytes::from(ip)).map_err(|e| {
                    Error::because(pingora_error::ErrorType::InternalError, "client ip", e)
                })?;
                up.insert_header(names::FLY_CLIENT_IP, v)?;
            }
            up.insert_header(names::FLY_REGION, ctx.snap.region.clone())?;
            up.insert_header(names::FLY_FORWARDED_PORT, self.listener.port_value.clone())?;
            if let Some(id) = &ctx.request_id {
                up.insert_header(names::FLY_REQUEST_ID, id.clone())?;
            }
        }
        Ok(())
    }
}

/// Header names as sent upstream, in their conventional case. Static `Bytes` spare pingora's
/// case-preserving map an allocation per insert.
mod names {
    use bytes::Bytes;
    pub const X_FORWARDED_FOR: Bytes = Bytes::from_static(b"X-Forwarded-For");
    pub const X_FORWARDED_PROTO: Bytes = Bytes::from_static(b"X-Forwarded-Proto");
    pub const X_FORWARDED_SSL: Bytes = Bytes::from_static(b"X-Forwarded-Ssl");
    pub const X_FORWARDED_PORT: Bytes = Bytes::from_static(b"X-Forwarded-Port");
    pub const X_FORWARDED_HOST: Bytes = Bytes::from_static(b"X-Forwarded-Host");
    pub const VIA: Bytes = Bytes::from_static(b"Via");
    pub const FLY_CLIENT_IP: Bytes = Bytes::from_static(b"Fly-Client-IP");
    pub const FLY_REGION: Bytes = Bytes::from_static(b"Fly-Region");
    pub const FLY_FORWARDED_PORT: Bytes = Bytes::from_static(b"Fly-Forwarded-Port");
    pub const FLY_REQUEST_ID: Bytes = Bytes::from_static(b"Fly-Request-Id");
}

/// Formats an IP address into `buf` without allocating.
fn ip_bytes(ip: IpAddr, buf: &mut [u8; 64]) -> &[u8] {
    use std::io::Write;
    let mut cur = std::io::Cursor::new(&mut buf[..]);
    let _ = write!(cur, "{ip}");
    let n = cur.position() as usize;
    &buf[..n]
}

/// The response for a request that got no backend.
fn acquire_failure(up: &UpstreamRt, e: AcquireError, ctx: &RequestCtx) -> LocalFailure {
    let name = up.name();
    match e {
        AcquireError::Empty => LocalFailure {
            status: 503,
            reason: "no_backend",
            message: format!("upstream \"{name}\" has no backends: {}", up.empty_reason()),
            retry_after: Some(up.retry_after()),
        },
        AcquireError::AllTried if ctx.last_error_status == 504 => LocalFailure {
            status: 504,
            reason: "upstream_timeout",
            message: format!(
                "upstream \"{name}\" did not answer in time: {}",
                ctx.last_error.as_deref().unwrap_or("timeout")
            ),
            retry_after: None,
        },
        AcquireError::AllTried => LocalFailure {
            status: 502,
            reason: "upstream_unreachable",
            message: format!(
                "upstream \"{name}\" unreachable: {}",
                ctx.last_error.as_deref().unwrap_or("every backend failed")
            ),
            retry_after: None,
        },
        AcquireError::QueueTimeout => LocalFailure {
            status: 503,
            reason: "queue_timeout",
            message: format!(
                "every backend of upstream \"{name}\" is at its hard limit; waited {}",
                portico_config::units::format_duration(up.cfg.queue_timeout)
            ),
            retry_after: Some(up.retry_after()),
        },
        AcquireError::QueueFull => LocalFailure {
            status: 503,
            reason: "queue_full",
            message: format!(
                "every backend of upstream \"{name}\" is at its hard limit and {} requests are already waiting",
                up.cfg.max_queue
            ),
            retry_after: Some(up.retry_after()),
        },
        AcquireError::InstanceMissing(id) => LocalFailure {
            status: 503,
            reason: "instance_not_found",
            message: format!("instance \"{id}\" is not a backend of upstream \"{name}\" (fly-force-instance-id)"),
            retry_after: None,
        },
        AcquireError::AllUnhealthy(summary) => LocalFailure {
            status: 503,
            reason: "all_unhealthy",
            message: format!("upstream \"{name}\": {summary}"),
            retry_after: Some(up.retry_after()),
        },
        AcquireError::RegionMissing(regions) => LocalFailure {
            status: 503,
            reason: "region_not_found",
            message: format!(
                "upstream \"{name}\" has no backend in region {regions} (fly-force-region); it has {}",
                up.set.load().regions(&up.local_region).join(", ")
            ),
            retry_after: None,
        },
    }
}

fn too_large(max: u64) -> LocalFailure {
    LocalFailure {
        status: 413,
        reason: "body_too_large",
        message: format!("request body larger than the {max} bytes allowed on this route"),
        retry_after: None,
    }
}

#[async_trait]
impl ProxyHttp for Portico {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(&self.shared)
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if self.shared.is_draining() {
            session.set_keepalive(None);
        }
        let Some(failure) = self.classify_request(session, ctx) else {
            return Ok(false);
        };
        // An unread body would have to be drained to reuse the connection: close it instead.
        if !session.is_body_empty() {
            session.set_keepalive(None);
        }
        if failure.status == 301 {
            let location = failure.message.clone();
            let body = format!("Moved Permanently: {location}\n");
            respond::send(session, ctx, 301, body, &[("location", location)]).await?;
        } else {
            self.shared
                .metrics
                .rejected
                .with_label_values(&[failure.reason])
                .inc();
            tracing::debug!(status = failure.status, reason = failure.reason, message = %failure.message, "answered locally");
            respond::send_failure(session, ctx, &failure).await?;
            ctx.failure = Some(failure);
        }
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let route = ctx
            .route()
            .ok_or_else(|| Error::explain(pingora_error::ErrorType::InternalError, "no route"))?;
        let up = ctx.snap.upstreams[route.upstream].clone();
        // A retry: the previous backend failed; leave it and try another.
        if let Some(prev) = ctx.lease.take() {
            ctx.tried.push(backend_ptr(&prev.backend));
            up.record_retry();
        }
        let hash = up
            .cfg
            .hash_on
            .as_ref()
            .and_then(|k| self.affinity_hash(session, ctx, k));
        ctx.attempts += 1;
        let routing = ctx.snap.config.server.routing_headers;
        let want = if routing {
            routing_headers::want_from_headers(session.req_header())
        } else {
            Want::default()
        };
        match up.acquire(hash, &ctx.tried, &want).await {
            Ok(acquired) => {
                let lease = acquired.lease;
                let mut peer = Box::new(lease.backend.peer.clone());
                // WebSocket and other upgrades only work over HTTP/1.1.
                if session.is_upgrade_req() && peer.is_tls() {
                    peer.options.alpn = ALPN::H1;
                }
                ctx.backend_addr = Some(lease.backend.addr);
                ctx.preferred_unavailable = acquired.preferred_unavailable;
                ctx.lease = Some(lease);
                ctx.connect_started = Some(std::time::Instant::now());
                Ok(peer)
            }
            Err(e) => {
                let failure = acquire_failure(&up, e, ctx);
                Err(respond::fail(ctx, failure))
            }
        }
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // New connections measure the round trip to the backend (it orders remote regions).
        if let (false, Some(start), Some(lease)) = (reused, ctx.connect_started, &ctx.lease) {
            lease.backend.record_latency(start.elapsed());
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        self.forward_headers(session, upstream_request, ctx)?;
        let Some(route) = ctx.route() else {
            return Ok(());
        };
        let up_cfg = &ctx.snap.config.upstreams[route.upstream];
        if let Some(host) = &up_cfg.host_header {
            upstream_request.insert_header(HOST, host.as_str())?;
        }
        let rules = &route.request_headers;
        for name in &rules.remove {
            upstream_request.remove_header(name.as_str());
        }
        for (name, value) in &rules.set {
            upstream_request.insert_header(name.clone(), value.as_str())?;
        }
        for (name, value) in &rules.add {
            upstream_request.append_header(name.clone(), value.as_str())?;
        }
        if route.strip_prefix {
            let path = upstream_request.uri.path();
            let rest = path
                .strip_prefix(route.path.trim_end_matches('/'))
                .unwrap_or(path);
            let rest = if rest.starts_with('/') {
                rest.to_string()
            } else {
                format!("/{rest}")
            };
            let new = match upstream_request.uri.query() {
                Some(q) => format!("{rest}?{q}"),
                None => rest,
            };
            let uri = http::Uri::try_from(new).map_err(|e| {
                Error::because(pingora_error::ErrorType::InternalError, "rewriting path", e)
            })?;
            upstream_request.set_uri(uri);
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(chunk) = body else {
            return Ok(());
        };
        ctx.body_bytes += chunk.len() as u64;
        if let Some(max) = ctx.route().and_then(|r| r.max_body) {
            if ctx.body_bytes > max {
                self.shared
                    .metrics
                    .rejected
                    .with_label_values(&["body_too_large"])
                    .inc();
                return Err(respond::fail(ctx, too_large(max)));
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Real traffic feeds passive ejection (consecutive 5xx, and resets connect failures).
        if let (Some(lease), Some(route)) = (&ctx.lease, ctx.route()) {
            let up = &ctx.snap.upstreams[route.upstream];
            let status = upstream_response.status.as_u16();
            if status >= 200 {
                let has_checks = !up.cfg.checks.is_empty();
                if let Some(t) =
                    lease
                        .backend
                        .health
                        .record_response(status, &up.cfg.passive, has_checks)
                {
                    crate::health::report(&self.shared, up.name(), &lease.backend, &t);
                }
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Speak HTTP/1.1 to HTTP/1.1 clients even when the backend answered in HTTP/1.0.
        if !session.is_http2() && session.req_header().version == http::Version::HTTP_11 {
            upstream_response.set_version(http::Version::HTTP_11);
        }
        respond::common_headers(upstream_response, ctx)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let Some(route) = ctx.route() else {
            return e;
        };
        let up = ctx.snap.upstreams[route.upstream].clone();
        if let Some(lease) = &ctx.lease {
            up.record_connect_error(&lease.backend);
            let has_checks = !up.cfg.checks.is_empty();
            if let Some(t) = lease
                .backend
                .health
                .record_connect_failure(&up.cfg.passive, has_checks)
            {
                crate::health::report(&self.shared, up.name(), &lease.backend, &t);
            }
        }
        let addr = peer.address();
        ctx.last_error_status = 502;
        ctx.last_error = Some(format!(
            "connecting to {addr} failed: {}",
            respond::describe_connect_error(&e, up.cfg.connect_timeout)
        ));
        tracing::debug!(upstream = up.name(), backend = %addr, error = %e, attempt = ctx.attempts, "connect to backend failed");
        // Nothing reached the backend: any method can go elsewhere, within the retry budget.
        e.set_retry(ctx.attempts as usize <= up.cfg.retries);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("backend {}", peer.address()));
        ctx.last_error = Some(e.to_string());
        // The request may have reached the backend: only idempotent requests go again, only
        // before any of the response reached the client, and within the retry budget. Like
        // nginx's proxy_next_upstream, this holds for fresh connections as well as pooled ones.
        let retries = ctx
            .route()
            .map_or(0, |r| ctx.snap.config.upstreams[r.upstream].retries);
        // Timeouts are not retried: a slow backend asked again is a retry storm in the making.
        let timed_out = matches!(
            e.etype(),
            pingora_error::ErrorType::ReadTimedout | pingora_error::ErrorType::WriteTimedout
        );
        ctx.last_error_status = if timed_out { 504 } else { 502 };
        let retry = !timed_out
            && session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && session.response_written().is_none()
            && (ctx.attempts as usize) <= retries;
        if retry {
            e.set_retry(true);
        } else if e.retry() && !timed_out {
            // pingora may still want a stale pooled connection retried; never for a request
            // that could have been processed and is not idempotent.
            if !session.req_header().method.is_idempotent() || (ctx.attempts as usize) > retries {
                e.set_retry(false);
            } else {
                e.retry.decide_reuse(client_reused);
            }
        }
        e
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
        _error: &Error,
        _context: pingora_proxy::ProxyWarnLogContext,
    ) -> bool {
        // Retries are counted in metrics and the final outcome is logged by Portico.
        true
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        // Portico logs failures itself (access log and `fail_to_proxy`), with context.
        true
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let (code, reason, message) = match &ctx.failure {
            Some(f) => (f.status, f.reason, f.message.clone()),
            None => respond::classify(e, ctx),
        };
        if code == 0 {
            tracing::debug!(error = %e, "client went away");
        } else if code >= 500 {
            tracing::warn!(status = code, reason, %message, "request failed");
        } else {
            tracing::debug!(status = code, reason, %message, "request refused");
        }
        if code > 0 {
            self.shared
                .metrics
                .rejected
                .with_label_values(&[reason])
                .inc();
            if session.response_written().is_none() {
                let failure = LocalFailure {
                    status: code,
                    reason,
                    message,
                    retry_after: ctx.failure.as_ref().and_then(|f| f.retry_after),
                };
                if let Err(we) = respond::send_failure(session, ctx, &failure).await {
                    tracing::debug!(error = %we, "could not write the error response");
                }
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        // Give the backend slot back before anything else.
        ctx.lease = None;
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let metrics = match ctx.route {
            Some(i) => &ctx.snap.route_metrics[i],
            None => &ctx.snap.unrouted_metrics,
        };
        metrics.requests[status_class(status)].inc();
        metrics.duration.observe(ctx.start.elapsed().as_secs_f64());
        if ctx.snap.config.server.access_log {
            access::log(session, ctx, status);
        }
    }
}

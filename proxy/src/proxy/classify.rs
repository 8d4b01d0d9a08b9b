//! Identifying a request: request id, client address, ACME HTTP-01 answers, `force_https`, the
//! route, and the declared body size. Runs once per request, before any upstream is chosen.

use http::header::CONTENT_LENGTH;
use pingora_http::RequestHeader;
use portico_config::routing::normalize_path;

use super::ctx::{LocalFailure, RequestCtx};
use super::{forwarded, header_value, request_host, Portico};

impl Portico {
    pub(crate) fn listener_cfg<'a>(
        &self,
        ctx: &'a RequestCtx,
    ) -> Option<&'a portico_config::Listener> {
        ctx.snap
            .config
            .listeners
            .iter()
            .find(|l| *l.name == *self.listener.name)
    }

    /// Identifies the request and the client; returns the redirect or local response to send,
    /// if any.
    pub(crate) fn classify_request(
        &self,
        req: &RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Option<LocalFailure> {
        let server = &ctx.snap.config.server;
        // Request id: keep a valid incoming one, else make one.
        let incoming = ctx
            .names
            .may_have(&ctx.snap.request_id_name)
            .then(|| req.headers.get(&ctx.snap.request_id_name))
            .flatten()
            .filter(|v| forwarded::valid_request_id(v.as_bytes()))
            .cloned();
        ctx.request_id = Some(incoming.unwrap_or_else(forwarded::new_request_id));
        // Client address.
        let peer = ctx.conn.peer.map(|a| forwarded::canonical(a.ip()));
        if let Some(peer) = peer {
            ctx.peer_ip = Some(peer);
            ctx.peer_trusted = forwarded::is_trusted(peer, &server.trusted_proxies);
            // Looked up by a constant name: a `&str` name is parsed and hashed per call.
            const XFF: http::HeaderName = http::HeaderName::from_static("x-forwarded-for");
            let xff = ctx
                .names
                .may_have(&XFF)
                .then(|| req.headers.get(XFF))
                .flatten()
                .map(|v| v.as_bytes());
            ctx.client_ip = Some(forwarded::client_ip(peer, xff, &server.trusted_proxies));
        }
        if ctx.names.may_have(&http::header::VIA) && super::forward::via_loop(req) {
            return Some(LocalFailure {
                status: 508,
                reason: "via_loop",
                message: "this request has already passed through this Portico (its Via \
                          field holds this process's token): the upstream leads back here"
                    .to_string(),
                retry_after: None,
            });
        }
        // ACME HTTP-01 answers come before routing and before force_https (the CA asks
        // over plain HTTP); only tokens being validated are answered.
        if !self.listener.tls {
            if let Some(body) = self.shared.acme.http01.answer(req.uri.path()) {
                return Some(LocalFailure {
                    status: 200,
                    reason: LocalFailure::ACME_CHALLENGE,
                    message: body,
                    retry_after: None,
                });
            }
        }
        let listener = self.listener_cfg(ctx)?;
        if listener.force_https && !self.listener.tls {
            let port = listener
                .https_port
                .unwrap_or(self.listener.default_https_port);
            return Some(self.https_redirect(req, port, listener.redirect_status));
        }
        // The listener's IP rules (the route's come with admission, once it is known).
        if let Some(f) = ip_rules(&listener.ip_rules, "listener", ctx.client_ip) {
            return Some(f);
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
        if let Some(f) = self.admission(req, ctx) {
            return Some(f);
        }
        // Body limit: refuse up front when the length is declared.
        if let Some(max) = ctx.route().and_then(|r| r.max_body) {
            let declared = header_value(&req.headers, CONTENT_LENGTH.as_str())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > max) {
                return Some(too_large(max));
            }
        }
        None
    }

    /// The route's IP rules (403), then its rate limit (429), on the real client address.
    fn admission(&self, req: &RequestHeader, ctx: &mut RequestCtx) -> Option<LocalFailure> {
        let route = ctx.route()?;
        let ip = ctx.client_ip?;
        if let Some(f) = ip_rules(&route.ip_rules, "route", Some(ip)) {
            return Some(f);
        }
        let route_index = ctx.route?;
        let limiter = ctx.snap.rate_limiters.get(route_index)?.clone()?;
        let octets = match ip {
            std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            std::net::IpAddr::V6(v6) => v6.octets(),
        };
        let key: &[u8] = match &limiter.config().key {
            portico_config::RateKey::Header(name) => req
                .headers
                .get(name.as_str())
                .map(|v| v.as_bytes())
                .filter(|v| !v.is_empty()),
            portico_config::RateKey::Cookie(name) => super::cookie(req, name)
                .map(str::as_bytes)
                .filter(|v| !v.is_empty()),
            portico_config::RateKey::Ip => None,
        }
        // Without the header or cookie, the client address is the key.
        .unwrap_or(&octets);
        let d = limiter.check(key, std::time::Instant::now());
        if d.allowed {
            return None;
        }
        let message = format!(
            "rate limit of route \"{}\" reached ({}); retry in {} s",
            route.name,
            crate::ratelimit::describe(limiter.config()),
            d.retry_after
        );
        ctx.rate_limit = Some(d);
        Some(LocalFailure {
            status: 429,
            reason: crate::ratelimit::REASON,
            message,
            retry_after: Some(d.retry_after),
        })
    }

    fn https_redirect(
        &self,
        req: &RequestHeader,
        https_port: u16,
        status: Option<u16>,
    ) -> LocalFailure {
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
        // A 301 makes browsers repeat a POST as a GET (losing its body); 308 keeps the method.
        let safe = matches!(req.method, http::Method::GET | http::Method::HEAD);
        LocalFailure {
            status: status.unwrap_or(if safe { 301 } else { 308 }),
            reason: "force_https",
            message: format!("https://{host}{port}{pq}"),
            retry_after: None,
        }
    }
}

/// The 413 of a route's `max_body`.
pub(crate) fn too_large(max: u64) -> LocalFailure {
    LocalFailure {
        status: 413,
        reason: "body_too_large",
        message: format!("request body larger than the {max} bytes allowed on this route"),
        retry_after: None,
    }
}

/// A 403 when `rules` refuse the client (`what`: "listener" or "route").
fn ip_rules(
    rules: &portico_config::IpRules,
    what: &str,
    ip: Option<std::net::IpAddr>,
) -> Option<LocalFailure> {
    let ip = ip?;
    (!rules.is_empty() && !rules.admits(ip)).then(|| LocalFailure {
        status: 403,
        reason: "ip_denied",
        message: format!("the {what}'s allow/deny rules refuse client {ip}"),
        retry_after: None,
    })
}

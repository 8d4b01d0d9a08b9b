//! The request path: Portico's per-request decisions, called by both engines (its own
//! HTTP/1.1 engine, `crate::engine`, and pingora's `ProxyHttp` for HTTP/2, `pingora`):
//! - [`classify`]: request id, client address, `force_https`, route, declared body size;
//! - [`pick`]: the backend of each attempt (replay target, write routing, routing headers);
//! - [`forward`]: headers of the request sent upstream;
//! - [`replaying`]: fly-replay instructions in responses, and the replay cache;
//! - [`respond`]: responses Portico writes itself, and error classification;
//! - [`access`]: the access log.

pub mod access;
pub mod affinity;
pub mod classify;
pub mod ctx;
pub mod edits;
pub mod files;
pub mod forward;
pub mod forwarded;
pub mod hop;
pub mod names;
pub mod pick;
mod pingora;
pub mod replaying;
pub mod respond;
pub mod routing_headers;
pub mod subrequest;
pub mod websocket;

use std::sync::Arc;

use bytes::Bytes;
use http::header::HOST;
use http::HeaderValue;
use pingora_error::Result;
use pingora_http::RequestHeader;

use crate::state::Shared;
use ctx::RequestCtx;

/// What a listener tells the request path about itself.
#[derive(Debug, Clone)]
pub struct ListenerInfo {
    /// Listener name (as in the config).
    pub name: Arc<str>,
    /// Whether it terminates TLS.
    pub tls: bool,
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
    /// Its constant forwarding fields, rendered for the latest configuration seen.
    pub constant_fields: arc_swap::ArcSwapOption<forward::ConstantFields>,
}

/// The PROXY header announcing this request's client (the real one: after the inbound PROXY
/// header or a trusted `X-Forwarded-For`) to an upstream with `send_proxy_protocol`.
pub(crate) fn proxy_header(
    version: portico_config::ProxyProtocolVersion,
    ctx: &RequestCtx,
) -> Option<Vec<u8>> {
    let peer = ctx.conn.peer?;
    let client = std::net::SocketAddr::new(ctx.client_ip.unwrap_or(peer.ip()), peer.port());
    let local = ctx.conn.local?;
    Some(crate::proxyproto::header(version, client, local))
}

/// A TLS version name as a static string (`TLSv1.3`).
pub fn tls_version_name(v: &str) -> &'static str {
    match v {
        "TLSv1.3" | "TLS1.3" | "TLSv1_3" => "TLSv1.3",
        "TLSv1.2" | "TLS1.2" | "TLSv1_2" => "TLSv1.2",
        _ => "TLS",
    }
}

/// The authority a request is for: the Host header, else the URI's authority (HTTP/2).
pub fn request_host(req: &RequestHeader) -> Option<&str> {
    req.headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.authority().map(|a| a.as_str()))
}

/// A header's value as text, trimmed; `None` when it is absent, empty or not visible ASCII.
pub(crate) fn header_value<'a>(h: &'a http::HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// Value of cookie `name` in the request's `Cookie` headers.
pub fn cookie<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
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
    /// Every edit of the request sent upstream, added to `e` (empty): forwarding headers,
    /// then the upstream's `host_header`, the route's rules and `strip_prefix`, then replay
    /// headers. The caller holds the edits: they are over a kilobyte, too large to return.
    pub(crate) fn request_edits(
        &self,
        req: &RequestHeader,
        ctx: &RequestCtx,
        e: &mut edits::Edits,
    ) -> Result<()> {
        self.forward_edits(req, ctx, e)?;
        if let Some(route_idx) = ctx.route {
            let route = &ctx.snap.config.routes.routes()[route_idx];
            if let Some(Some(host)) = ctx.snap.host_headers.get(ctx.upstream) {
                e.set(HOST, host.clone());
            }
            ctx.snap.route_headers[route_idx].request.apply(e);
            if route.strip_prefix {
                let path = req.uri.path();
                let rest = path
                    .strip_prefix(route.path.trim_end_matches('/'))
                    .unwrap_or(path);
                let mut t = String::with_capacity(rest.len() + 1);
                if !rest.starts_with('/') {
                    t.push('/');
                }
                t.push_str(rest);
                if let Some(q) = req.uri.query() {
                    t.push('?');
                    t.push_str(q);
                }
                e.target = Some(Bytes::from(t));
            }
        }
        self.replay_edits(ctx, e)
    }
}

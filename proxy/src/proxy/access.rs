//! The access log: one line per request, as structured `tracing` fields (text or JSON).

use pingora_proxy::Session;

use super::ctx::RequestCtx;
use crate::logging::ACCESS_TARGET;

/// Writes the access-log line of a finished request.
pub fn log(session: &Session, ctx: &RequestCtx, status: u16) {
    let req = session.req_header();
    let host = super::request_host(req).unwrap_or("-");
    let route = ctx.route().map_or("-", |r| r.name.as_str());
    let upstream = ctx.upstream_label();
    let request_id = ctx
        .request_id
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    let client = ctx.client_ip.map(|ip| ip.to_string());
    let backend = ctx.backend_addr.map(|a| a.to_string());
    let duration_ms = ctx.start.elapsed().as_secs_f64() * 1000.0;
    tracing::info!(
        target: ACCESS_TARGET,
        request_id,
        client = client.as_deref().unwrap_or("-"),
        method = req.method.as_str(),
        host,
        path = req.uri.path(),
        status,
        bytes = session.body_bytes_sent(),
        duration_ms = (duration_ms * 1000.0).round() / 1000.0,
        route,
        upstream,
        backend = backend.as_deref().unwrap_or("-"),
        attempts = ctx.attempts,
        replays = ctx.replay.hops,
        replayed_from = ctx.replay.first_from.as_deref().unwrap_or("-"),
    );
}

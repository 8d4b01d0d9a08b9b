//! The access log: one line per request, as structured `tracing` fields (text or JSON).

use pingora_http::RequestHeader;

use super::ctx::RequestCtx;
use crate::logging::ACCESS_TARGET;

/// Writes the access-log line of a finished request: `status` as sent, `bytes` of body.
pub fn log(req: &RequestHeader, ctx: &RequestCtx, status: u16, bytes: usize) {
    let host = super::request_host(req).unwrap_or("-");
    let route = ctx.route().map_or("-", |r| r.name.as_str());
    let upstream = ctx.upstream_label();
    let header = |name: &str| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
    };
    let client = ctx.client_ip.map(|ip| ip.to_string());
    let backend = ctx.backend_addr.map(|a| a.to_string());
    let ms = |d: std::time::Duration| (d.as_secs_f64() * 1_000_000.0).round() / 1000.0;
    let protocol = match req.version {
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    tracing::info!(
        target: ACCESS_TARGET,
        request_id = ctx.id(),
        client = client.as_deref().unwrap_or("-"),
        method = req.method.as_str(),
        host,
        path = req.uri.path(),
        query = req.uri.query().unwrap_or("-"),
        protocol,
        tls = ctx.conn.tls.unwrap_or("-"),
        status,
        bytes,
        duration_ms = ms(ctx.start.elapsed()),
        route,
        upstream,
        backend = backend.as_deref().unwrap_or("-"),
        upstream_status = ctx.upstream_status.unwrap_or(0),
        upstream_ms = ctx.upstream_time.map_or(-1.0, ms),
        attempts = ctx.attempts,
        replays = ctx.replay.hops,
        replayed_from = ctx.replay.first_from.as_deref().unwrap_or("-"),
        user_agent = header("user-agent"),
        referer = header("referer"),
    );
}

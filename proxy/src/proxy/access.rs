//! The access log line of a request: which fields, from the request and its context. The
//! writer is [`crate::accesslog`].

use pingora_http::RequestHeader;

use super::ctx::RequestCtx;
use crate::accesslog::{self, Value};

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
    let mut client = [0u8; 64];
    let client = ctx
        .client_ip
        .map_or("-", |ip| super::forward::ip_str(ip, &mut client));
    let mut backend_buf = [0u8; 72];
    let backend = ctx.backend_addr.map(|a| {
        let mut ip = [0u8; 64];
        let host = super::forward::ip_str(a.ip(), &mut ip);
        let mut n = 0;
        let v6 = a.is_ipv6();
        for part in [
            if v6 { "[" } else { "" },
            host,
            if v6 { "]:" } else { ":" },
            itoa::Buffer::new().format(a.port()),
        ] {
            let end = (n + part.len()).min(backend_buf.len());
            backend_buf[n..end].copy_from_slice(&part.as_bytes()[..end - n]);
            n = end;
        }
        n
    });
    let backend = backend.map_or("-", |n| {
        std::str::from_utf8(&backend_buf[..n]).unwrap_or("-")
    });
    let ms = |d: std::time::Duration| d.as_secs_f64() * 1000.0;
    let protocol = match req.version {
        http::Version::HTTP_2 => "HTTP/2",
        http::Version::HTTP_10 => "HTTP/1.0",
        _ => "HTTP/1.1",
    };
    let upstream_ms = ctx
        .upstream_time
        .map_or(Value::Num(-1.0), |d| Value::Num(ms(d)));
    accesslog::write(&[
        ("request_id", Value::Str(ctx.id())),
        ("client", Value::Str(client)),
        ("method", Value::Str(req.method.as_str())),
        ("host", Value::Str(host)),
        ("path", Value::Str(req.uri.path())),
        ("query", Value::Str(req.uri.query().unwrap_or("-"))),
        ("protocol", Value::Str(protocol)),
        ("tls", Value::Str(ctx.conn.tls.unwrap_or("-"))),
        ("status", Value::Int(u64::from(status))),
        ("bytes", Value::Int(bytes as u64)),
        ("duration_ms", Value::Num(ms(ctx.start.elapsed()))),
        ("route", Value::Str(route)),
        ("upstream", Value::Str(upstream)),
        ("backend", Value::Str(backend)),
        (
            "upstream_status",
            Value::Int(u64::from(ctx.upstream_status.unwrap_or(0))),
        ),
        ("upstream_ms", upstream_ms),
        ("attempts", Value::Int(u64::from(ctx.attempts))),
        ("replays", Value::Int(u64::from(ctx.replay.hops))),
        (
            "replayed_from",
            Value::Str(ctx.replay.first_from.as_deref().unwrap_or("-")),
        ),
        ("user_agent", Value::Str(header("user-agent"))),
        ("referer", Value::Str(header("referer"))),
    ]);
}

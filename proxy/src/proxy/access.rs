//! The access log line of a request: which fields, from the request and its context. The
//! writer is [`crate::accesslog`].
//!
//! A line is built in two steps: [`Fields`] borrows what the request says (nothing is
//! copied on the hot path), and [`write()`] adds what only the end knows (status, bytes,
//! duration). A WebSocket tunnel logs when it closes, long after its request head is gone,
//! so it keeps an [`Owned`] copy: one allocation of a few hundred bytes per tunnel.

use std::time::Duration;

use pingora_http::RequestHeader;

use super::ctx::RequestCtx;
use crate::accesslog::{self, Value};

/// Writes the access-log line of a finished request: `status` as sent, `bytes` of body.
pub fn log(req: &RequestHeader, ctx: &RequestCtx, status: u16, bytes: usize) {
    let mut bufs = Bufs::default();
    let fields = Fields::new(req, ctx, &mut bufs);
    write(&fields, status, bytes as u64, ctx.start.elapsed());
}

/// Stack space for the formatted addresses of a line.
pub struct Bufs {
    client: [u8; 64],
    backend: [u8; 72],
}

impl Default for Bufs {
    fn default() -> Self {
        Bufs {
            client: [0; 64],
            backend: [0; 72],
        }
    }
}

/// Number of text fields in a line.
const TEXT: usize = 14;

/// The fields of a line that the request and its context decide.
pub struct Fields<'a> {
    /// request_id, client, method, host, path, query, protocol, tls, route, upstream,
    /// backend, replayed_from, user_agent, referer.
    text: [&'a str; TEXT],
    upstream_status: u16,
    upstream_ms: Option<f64>,
    attempts: u32,
    replays: u32,
    error: &'static str,
}

impl<'a> Fields<'a> {
    /// Borrows the fields from the request head and its context.
    pub fn new(req: &'a RequestHeader, ctx: &'a RequestCtx, bufs: &'a mut Bufs) -> Self {
        let header = |name: &str| {
            req.headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
        };
        let client = ctx
            .client_ip
            .map_or("-", |ip| super::forward::ip_str(ip, &mut bufs.client));
        let backend = ctx.backend_addr.map_or("-", |a| {
            let mut ip = [0u8; 64];
            let host = super::forward::ip_str(a.ip(), &mut ip);
            let v6 = a.is_ipv6();
            let mut n = 0;
            for part in [
                if v6 { "[" } else { "" },
                host,
                if v6 { "]:" } else { ":" },
                itoa::Buffer::new().format(a.port()),
            ] {
                let end = (n + part.len()).min(bufs.backend.len());
                bufs.backend[n..end].copy_from_slice(&part.as_bytes()[..end - n]);
                n = end;
            }
            std::str::from_utf8(&bufs.backend[..n]).unwrap_or("-")
        });
        let protocol = match req.version {
            http::Version::HTTP_2 => "HTTP/2",
            http::Version::HTTP_10 => "HTTP/1.0",
            _ => "HTTP/1.1",
        };
        Fields {
            text: [
                ctx.id(),
                client,
                req.method.as_str(),
                super::request_host(req).unwrap_or("-"),
                req.uri.path(),
                req.uri.query().unwrap_or("-"),
                protocol,
                ctx.conn.tls.unwrap_or("-"),
                ctx.route().map_or("-", |r| r.name.as_str()),
                ctx.upstream_label(),
                backend,
                ctx.replay.first_from.as_deref().unwrap_or("-"),
                header("user-agent"),
                header("referer"),
            ],
            upstream_status: ctx.upstream_status.unwrap_or(0),
            upstream_ms: ctx.upstream_time.map(ms),
            attempts: ctx.attempts,
            replays: u32::from(ctx.replay.hops),
            error: ctx.error.unwrap_or("-"),
        }
    }

    /// An owned copy, for a line written later.
    pub fn to_owned(&self) -> Owned {
        let mut text = String::with_capacity(self.text.iter().map(|t| t.len()).sum());
        let mut ends = [0u32; TEXT];
        for (i, t) in self.text.iter().enumerate() {
            text.push_str(t);
            ends[i] = text.len() as u32;
        }
        Owned {
            text: text.into_boxed_str(),
            ends,
            upstream_status: self.upstream_status,
            upstream_ms: self.upstream_ms,
            attempts: self.attempts,
            replays: self.replays,
            error: self.error,
        }
    }
}

/// The fields of a line, owned: every text field in one allocation.
pub struct Owned {
    text: Box<str>,
    ends: [u32; TEXT],
    upstream_status: u16,
    upstream_ms: Option<f64>,
    attempts: u32,
    replays: u32,
    error: &'static str,
}

impl Owned {
    /// The fields, borrowed back.
    pub fn fields(&self) -> Fields<'_> {
        let mut text = [""; TEXT];
        let mut start = 0;
        for (i, &end) in self.ends.iter().enumerate() {
            text[i] = self.text.get(start..end as usize).unwrap_or("-");
            start = end as usize;
        }
        Fields {
            text,
            upstream_status: self.upstream_status,
            upstream_ms: self.upstream_ms,
            attempts: self.attempts,
            replays: self.replays,
            error: self.error,
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Writes one line: the request's fields with the status sent, the body bytes sent and the
/// time the request took.
pub fn write(f: &Fields<'_>, status: u16, bytes: u64, duration: Duration) {
    let [request_id, client, method, host, path, query, protocol, tls, route, upstream, backend, replayed_from, user_agent, referer] =
        f.text;
    accesslog::write(&[
        ("request_id", Value::Str(request_id)),
        ("client", Value::Str(client)),
        ("method", Value::Str(method)),
        ("host", Value::Str(host)),
        ("path", Value::Str(path)),
        ("query", Value::Str(query)),
        ("protocol", Value::Str(protocol)),
        ("tls", Value::Str(tls)),
        ("status", Value::Int(u64::from(status))),
        ("bytes", Value::Int(bytes)),
        ("duration_ms", Value::Num(ms(duration))),
        ("route", Value::Str(route)),
        ("upstream", Value::Str(upstream)),
        ("backend", Value::Str(backend)),
        ("upstream_status", Value::Int(u64::from(f.upstream_status))),
        ("upstream_ms", Value::Num(f.upstream_ms.unwrap_or(-1.0))),
        ("attempts", Value::Int(u64::from(f.attempts))),
        ("replays", Value::Int(u64::from(f.replays))),
        ("replayed_from", Value::Str(replayed_from)),
        ("user_agent", Value::Str(user_agent)),
        ("referer", Value::Str(referer)),
        ("error", Value::Str(f.error)),
    ]);
}

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
use crate::accesslog::{self, log_key, Value};

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
        // Only fields the request may hold are looked up (see `super::names`).
        let header = |name: &http::HeaderName| {
            ctx.names
                .may_have(name)
                .then(|| req.headers.get(name))
                .flatten()
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
        };
        // The usual client is the connection's peer, whose address text was made when the
        // connection was accepted.
        let client = ctx.client_ip.map_or("-", |ip| {
            match ctx.conn.peer_value_of(ip).and_then(|v| v.to_str().ok()) {
                Some(text) => text,
                None => super::forward::ip_str(ip, &mut bufs.client),
            }
        });
        // The backend's address text was made with the backend, while its lease lasts.
        let leased = ctx
            .lease
            .as_ref()
            .filter(|l| Some(l.backend.addr) == ctx.backend_addr)
            .map(|l| &*l.backend.addr_text);
        let backend = leased
            .or_else(|| {
                ctx.backend_addr.map(|a| {
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
                })
            })
            .unwrap_or("-");
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
                header(&http::header::USER_AGENT),
                header(&http::header::REFERER),
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
        (log_key!("request_id"), Value::Str(request_id)),
        (log_key!("client"), Value::Str(client)),
        (log_key!("method"), Value::Str(method)),
        (log_key!("host"), Value::Str(host)),
        (log_key!("path"), Value::Str(path)),
        (log_key!("query"), Value::Str(query)),
        (log_key!("protocol"), Value::Str(protocol)),
        (log_key!("tls"), Value::Str(tls)),
        (log_key!("status"), Value::Int(u64::from(status))),
        (log_key!("bytes"), Value::Int(bytes)),
        (log_key!("duration_ms"), Value::Num(ms(duration))),
        (log_key!("route"), Value::Str(route)),
        (log_key!("upstream"), Value::Str(upstream)),
        (log_key!("backend"), Value::Str(backend)),
        (
            log_key!("upstream_status"),
            Value::Int(u64::from(f.upstream_status)),
        ),
        (
            log_key!("upstream_ms"),
            Value::Num(f.upstream_ms.unwrap_or(-1.0)),
        ),
        (log_key!("attempts"), Value::Int(u64::from(f.attempts))),
        (log_key!("replays"), Value::Int(u64::from(f.replays))),
        (log_key!("replayed_from"), Value::Str(replayed_from)),
        (log_key!("user_agent"), Value::Str(user_agent)),
        (log_key!("referer"), Value::Str(referer)),
        (log_key!("error"), Value::Str(f.error)),
    ]);
}

//! Headers of the request sent upstream: forwarding headers, `Via`, request id, Fly headers,
//! and removal of headers only Portico may set.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::HOST;
use http::{HeaderName, HeaderValue};
use pingora_error::{Error, Result};
use pingora_http::RequestHeader;

use super::ctx::RequestCtx;
use super::edits::Edits;
use super::Portico;

/// Request headers only Portico may set: anything a client sends under these names, or under
/// any name starting with `fly-replay` (`fly-replay`, `fly-replay-src`, `fly-replay-failed`,
/// `fly-replay-cache-status`, ...), is dropped before the request goes upstream.
pub const INTERNAL_HEADERS: &[&str] = &["fly-preferred-instance-unavailable"];

/// Whether `Via` fields of a request show it has already passed through this process.
pub fn via_loop(req: &RequestHeader) -> bool {
    let token = crate::state::instance_token().as_bytes();
    req.headers
        .get_all(http::header::VIA)
        .iter()
        .any(|v| memchr::memmem::find(v.as_bytes(), token).is_some())
}

/// Whether a request header name is reserved to Portico (see [`INTERNAL_HEADERS`]).
pub fn is_internal(name: &str) -> bool {
    name.starts_with("fly-replay") || INTERNAL_HEADERS.contains(&name)
}

/// Fly's request headers, replaced by Portico's own values (or removed when the peer is not a
/// trusted proxy and `fly_headers` is off).
const FLY_HEADERS: &[&str] = &[
    "fly-client-ip",
    "fly-region",
    "fly-forwarded-port",
    "fly-request-id",
];

impl Portico {
    /// The forwarding headers of the request sent upstream, as edits to the client's head:
    /// `X-Forwarded-*`, `Via`, the request id, Fly's headers, and the removal of headers
    /// only Portico may set.
    pub(crate) fn forward_edits(
        &self,
        req: &RequestHeader,
        ctx: &RequestCtx,
        e: &mut Edits,
    ) -> Result<()> {
        let server = &ctx.snap.config.server;
        let trusted = ctx.peer_trusted;
        // One pass over the (few) request headers decides whether any removal is needed, instead
        // of hashing every reserved name on every request.
        if !ctx.names.only_common() && req.headers.keys().any(|k| k.as_str().starts_with("fly-")) {
            for name in req.headers.keys().filter(|k| is_internal(k.as_str())) {
                e.remove(name.clone());
            }
            if !trusted || server.fly_headers {
                for name in FLY_HEADERS {
                    e.remove(http::HeaderName::from_static(name));
                }
            }
            // Routing headers Portico was told not to honour must not reach an app that
            // might honour them itself (or another Portico behind this one).
            if !server.routing_headers {
                for name in super::routing_headers::NAMES {
                    e.remove(http::HeaderName::from_static(name));
                }
            }
        }
        // A request with only common field names (no `X-Forwarded-*`, `Via` or `Fly-*` of
        // its own) on a route whose rules leave these names alone gets the constant fields
        // as one block rendered for the listener and configuration, instead of six edits and
        // six field writes (about 1,200 instructions by callgrind).
        let constant = ctx.names.only_common()
            && !ctx.conn.http2
            && ctx.replay.target.is_none()
            && !CONSTANT_NAMES.contains(&ctx.snap.request_id_name)
            && ctx.route.is_none_or(|i| {
                !ctx.snap.route_headers[i]
                    .request
                    .touches_any(&CONSTANT_NAMES)
            });
        if constant {
            e.block = Some(self.constant_fields(ctx));
        }
        if let Some(peer_ip) = ctx.peer_ip {
            let previous = if trusted {
                req.headers.get(X_FORWARDED_FOR)
            } else {
                None
            };
            let xff = match (previous, ctx.conn.peer_value_of(peer_ip)) {
                // The usual case: the connection's address, formatted when it was accepted.
                (None, Some(v)) => v.clone(),
                (None, None) => ip_value(peer_ip),
                (Some(prev), _) => {
                    let mut buf = [0u8; 64];
                    let peer = ip_bytes(peer_ip, &mut buf);
                    let mut v = Vec::with_capacity(prev.len() + 2 + peer.len());
                    v.extend_from_slice(prev.as_bytes());
                    v.extend_from_slice(b", ");
                    v.extend_from_slice(peer);
                    HeaderValue::from_maybe_shared(Bytes::from(v)).map_err(|e| {
                        Error::because(
                            pingora_error::ErrorType::InvalidHTTPHeader,
                            "x-forwarded-for",
                            e,
                        )
                    })?
                }
            };
            e.set_new(X_FORWARDED_FOR, xff);
        }
        let keep = |name: &HeaderName| trusted && req.headers.contains_key(name);
        let tls = self.listener.tls;
        if !constant && !keep(&X_FORWARDED_PROTO) {
            let v = if tls { "https" } else { "http" };
            e.set_new(X_FORWARDED_PROTO, HeaderValue::from_static(v));
        }
        if !constant && !keep(&X_FORWARDED_SSL) {
            let v = if tls { "on" } else { "off" };
            e.set_new(X_FORWARDED_SSL, HeaderValue::from_static(v));
        }
        if !constant && !keep(&X_FORWARDED_PORT) {
            e.set_new(X_FORWARDED_PORT, self.listener.port_value.clone());
        }
        if !keep(&X_FORWARDED_HOST) {
            if let Some(host) = req.headers.get(HOST) {
                e.set_new(X_FORWARDED_HOST, host.clone());
            } else if let Some(a) = req.uri.authority() {
                e.set_new(X_FORWARDED_HOST, super::edits::value(a.as_str())?);
            }
        }
        if !constant {
            let via = if ctx.conn.http2 {
                &ctx.snap.via_h2
            } else {
                &ctx.snap.via_h1
            };
            e.add(http::header::VIA, via.clone());
        }
        // The request id's name is configurable (it may even be one of the names above, or
        // `fly-request-id` below): set with a search.
        if let Some(id) = &ctx.request_id {
            e.set(ctx.snap.request_id_name.clone(), id.clone());
        }
        if server.fly_headers {
            if let Some(ip) = ctx.client_ip {
                let v = match ctx.conn.peer_value_of(ip) {
                    Some(v) => v.clone(),
                    None => ip_value(ip),
                };
                e.set_new(FLY_CLIENT_IP, v);
            }
            if !constant {
                e.set_new(FLY_REGION, ctx.snap.region.clone());
                e.set_new(FLY_FORWARDED_PORT, self.listener.port_value.clone());
            }
            if let Some(id) = &ctx.request_id {
                e.set(FLY_REQUEST_ID, id.clone());
            }
        }
        Ok(())
    }
}

/// The fields whose values depend only on the listener and the configuration.
static CONSTANT_NAMES: [HeaderName; 6] = [
    X_FORWARDED_PROTO,
    X_FORWARDED_SSL,
    X_FORWARDED_PORT,
    http::header::VIA,
    FLY_REGION,
    FLY_FORWARDED_PORT,
];

/// The constant forwarding fields of one listener under one configuration, as lines.
pub struct ConstantFields {
    /// The configuration generation they were rendered for.
    generation: u64,
    /// Distinct for every rendering in the process: the key of each worker thread's copy.
    id: u64,
    /// `name: value\r\n` lines.
    lines: Bytes,
}

impl ConstantFields {
    /// This thread's copy of the lines. Every request clones (and drops) the block: on one
    /// shared `Bytes` that is two atomic writes per request to a reference count all worker
    /// threads write, whose cache line then moves between cores; a copy per thread keeps
    /// each count on its own core.
    fn local_lines(&self) -> Bytes {
        thread_local! {
            /// Copies by [`ConstantFields::id`], newest last: one per listener (and
            /// generation, until replaced).
            static COPIES: std::cell::RefCell<Vec<(u64, Bytes)>> =
                const { std::cell::RefCell::new(Vec::new()) };
        }
        COPIES.with_borrow_mut(|copies| {
            if let Some((_, b)) = copies.iter().find(|(id, _)| *id == self.id) {
                return b.clone();
            }
            if copies.len() == 8 {
                copies.remove(0);
            }
            let b = Bytes::copy_from_slice(&self.lines);
            copies.push((self.id, b.clone()));
            b
        })
    }
}

impl Portico {
    /// The constant forwarding fields for `ctx`'s configuration (HTTP/1.1 `Via`), rendered
    /// on the first request of each generation and shared by the rest.
    fn constant_fields(&self, ctx: &RequestCtx) -> Bytes {
        let snap = &ctx.snap;
        if let Some(c) = &*self.constant_fields.load() {
            if c.generation == snap.generation {
                return c.local_lines();
            }
        }
        let tls = self.listener.tls;
        let port = &self.listener.port_value;
        let [proto, ssl, port_name, via, region, fly_port] = &CONSTANT_NAMES;
        let mut fields: Vec<(&HeaderName, &[u8])> = vec![
            (proto, if tls { b"https" } else { b"http" }),
            (ssl, if tls { b"on" } else { b"off" }),
            (port_name, port.as_bytes()),
            (via, snap.via_h1.as_bytes()),
        ];
        if snap.config.server.fly_headers {
            fields.push((region, snap.region.as_bytes()));
            fields.push((fly_port, port.as_bytes()));
        }
        let mut lines = Vec::with_capacity(256);
        for (name, value) in fields {
            lines.extend_from_slice(name.as_str().as_bytes());
            lines.extend_from_slice(b": ");
            lines.extend_from_slice(value);
            lines.extend_from_slice(b"\r\n");
        }
        let lines = Bytes::from(lines);
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let fields = ConstantFields {
            generation: snap.generation,
            id: IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            lines,
        };
        let local = fields.local_lines();
        self.constant_fields
            .store(Some(std::sync::Arc::new(fields)));
        local
    }
}

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_SSL: HeaderName = HeaderName::from_static("x-forwarded-ssl");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const FLY_CLIENT_IP: HeaderName = HeaderName::from_static("fly-client-ip");
const FLY_REGION: HeaderName = HeaderName::from_static("fly-region");
const FLY_FORWARDED_PORT: HeaderName = HeaderName::from_static("fly-forwarded-port");
const FLY_REQUEST_ID: HeaderName = HeaderName::from_static("fly-request-id");

/// An IP address as text in `buf`, without allocating.
pub fn ip_str(ip: IpAddr, buf: &mut [u8; 64]) -> &str {
    std::str::from_utf8(ip_bytes(ip, buf)).unwrap_or("-")
}

/// `ip` as a field value.
pub(crate) fn ip_value(ip: IpAddr) -> HeaderValue {
    let mut buf = [0u8; 64];
    let text = Bytes::copy_from_slice(ip_bytes(ip, &mut buf));
    // An address's text is digits, dots, colons and hex letters: always a valid value.
    HeaderValue::from_maybe_shared(text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn ip_bytes(ip: IpAddr, buf: &mut [u8; 64]) -> &[u8] {
    match ip {
        // The common case by hand: `Display` goes through the formatting machinery, which
        // costs more than the rest of the header it goes into.
        IpAddr::V4(v4) => {
            let mut n = 0;
            for (i, octet) in v4.octets().iter().enumerate() {
                if i > 0 {
                    buf[n] = b'.';
                    n += 1;
                }
                let mut d = itoa::Buffer::new();
                let s = d.format(*octet).as_bytes();
                buf[n..n + s.len()].copy_from_slice(s);
                n += s.len();
            }
            &buf[..n]
        }
        IpAddr::V6(_) => {
            use std::io::Write;
            let mut cur = std::io::Cursor::new(&mut buf[..]);
            let _ = write!(cur, "{ip}");
            let n = cur.position() as usize;
            &buf[..n]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_format_as_display_does() {
        for ip in [
            "127.0.0.1",
            "10.20.255.0",
            "0.0.0.0",
            "2001:db8::1",
            "::ffff:1.2.3.4",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut buf = [0u8; 64];
            assert_eq!(ip_bytes(ip, &mut buf), ip.to_string().as_bytes());
            assert_eq!(ip_value(ip), ip.to_string());
        }
        // The per-connection value serves only its own peer (in canonical form).
        let info = crate::proxy::ctx::ConnInfo {
            peer: Some("[::ffff:10.0.0.7]:5000".parse().unwrap()),
            peer_value: Some(ip_value("10.0.0.7".parse().unwrap())),
            ..Default::default()
        };
        let own: IpAddr = "10.0.0.7".parse().unwrap();
        assert_eq!(info.peer_value_of(own).unwrap(), "10.0.0.7");
        assert!(info.peer_value_of("10.0.0.8".parse().unwrap()).is_none());
    }
}

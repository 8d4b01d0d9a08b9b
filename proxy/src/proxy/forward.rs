//! Headers of the request sent upstream: forwarding headers, `Via`, request id, Fly headers,
//! and removal of headers only Portico may set.

use std::net::IpAddr;

use bytes::Bytes;
use http::header::HOST;
use http::HeaderValue;
use pingora_error::{Error, Result};
use pingora_http::RequestHeader;
use smallvec::SmallVec;

use super::ctx::RequestCtx;
use super::Portico;

/// Request headers only Portico may set: anything a client sends under these names, or under
/// any name starting with `fly-replay` (`fly-replay`, `fly-replay-src`, `fly-replay-failed`,
/// `fly-replay-cache-status`, ...), is dropped before the request goes upstream.
pub const INTERNAL_HEADERS: &[&str] = &["fly-preferred-instance-unavailable"];

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
    /// Adds the forwarding headers to `up`, a copy of the client's request about to go
    /// upstream (before the route's own header edits).
    pub(crate) fn forward_headers(&self, up: &mut RequestHeader, ctx: &RequestCtx) -> Result<()> {
        let server = &ctx.snap.config.server;
        let trusted = ctx.peer_trusted;
        // One pass over the (few) request headers decides whether any removal is needed, instead
        // of hashing every reserved name on every request.
        if up.headers.keys().any(|k| k.as_str().starts_with("fly-")) {
            let internal: SmallVec<[http::HeaderName; 4]> = up
                .headers
                .keys()
                .filter(|k| is_internal(k.as_str()))
                .cloned()
                .collect();
            for name in internal {
                up.remove_header(&name);
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
            if let Some(host) = up.headers.get(HOST).cloned() {
                up.insert_header(names::X_FORWARDED_HOST, host)?;
            } else if let Some(a) = up.uri.authority() {
                let host = a.as_str().to_string();
                up.insert_header(names::X_FORWARDED_HOST, host)?;
            }
        }
        let via = if ctx.conn.http2 {
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
pub(super) mod names {
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

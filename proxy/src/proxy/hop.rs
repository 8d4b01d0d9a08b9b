//! Hop-by-hop fields (RFC 9110 section 7.6.1): they describe one connection and must not be
//! forwarded to the next. An upstream's `Keep-Alive: timeout=5` says nothing about the
//! client's connection, whose keep-alive Portico decides.

use http::header::{HeaderName, CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE};
use http::HeaderMap;
use smallvec::SmallVec;

/// Hop-by-hop fields without a constant in `http`.
const KEEP_ALIVE: &str = "keep-alive";
const PROXY_CONNECTION: &str = "proxy-connection";

/// The hop-by-hop fields of a response to remove before it goes to the client: `Connection`
/// and every field it names, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, and `Upgrade`
/// unless the response is a `101 Switching Protocols`. Empty (and allocation-free) for the
/// usual response that has none.
///
/// Framing (`Transfer-Encoding`, `Content-Length`) is left to the code that writes the body,
/// even when `Connection` names it: the body must still be delimited correctly.
pub fn response_fields(
    headers: &HeaderMap,
    switching_protocols: bool,
) -> SmallVec<[HeaderName; 6]> {
    let mut out: SmallVec<[HeaderName; 6]> = SmallVec::new();
    if !headers.contains_key(CONNECTION)
        && !headers.contains_key(KEEP_ALIVE)
        && !headers.contains_key(PROXY_CONNECTION)
        && !headers.contains_key(TE)
        && !headers.contains_key(TRAILER)
        && (switching_protocols || !headers.contains_key(UPGRADE))
    {
        return out;
    }
    for v in headers.get_all(CONNECTION) {
        let Ok(v) = v.to_str() else { continue };
        for token in v.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let Ok(name) = HeaderName::from_bytes(token.as_bytes()) else {
                continue;
            };
            let framing = name == TRANSFER_ENCODING || name == http::header::CONTENT_LENGTH;
            let upgrade = switching_protocols && (name == UPGRADE || name == CONNECTION);
            if !framing && !upgrade && headers.contains_key(&name) && !out.contains(&name) {
                out.push(name);
            }
        }
    }
    let fixed = [
        HeaderName::from_static(KEEP_ALIVE),
        HeaderName::from_static(PROXY_CONNECTION),
        TE,
        TRAILER,
    ];
    for name in fixed {
        if headers.contains_key(&name) && !out.contains(&name) {
            out.push(name);
        }
    }
    if !switching_protocols {
        for name in [CONNECTION, UPGRADE] {
            if headers.contains_key(&name) && !out.contains(&name) {
                out.push(name);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Removes [`response_fields`] from a header map, as the engines do.
    fn strip_response(headers: &mut HeaderMap, switching_protocols: bool) {
        for name in response_fields(headers, switching_protocols) {
            headers.remove(&name);
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_fields_do_not_reach_the_client() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x-checksum"),
            ("upgrade", "h2c"),
            ("x-secret", "1"),
            ("content-length", "3"),
            ("x-kept", "yes"),
        ]);
        strip_response(&mut h, false);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-length", "x-kept"]);
    }

    #[test]
    fn framing_named_in_connection_stays() {
        let mut h = map(&[
            ("connection", "transfer-encoding, content-length"),
            ("transfer-encoding", "chunked"),
        ]);
        strip_response(&mut h, false);
        assert!(h.contains_key("transfer-encoding"));
        assert!(!h.contains_key("connection"));
    }

    #[test]
    fn switching_protocols_keeps_its_upgrade() {
        let mut h = map(&[
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("keep-alive", "timeout=5"),
            ("sec-websocket-accept", "abc"),
        ]);
        strip_response(&mut h, true);
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "Upgrade");
        assert!(!h.contains_key("keep-alive"));
        assert!(h.contains_key("sec-websocket-accept"));
    }
}

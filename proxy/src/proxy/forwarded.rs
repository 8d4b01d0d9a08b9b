//! Who the client is, and the forwarding headers that tell the upstream.
//!
//! `X-Forwarded-*` values from a client are believed only when the connection comes from a
//! configured trusted proxy. The client address is the rightmost `X-Forwarded-For` entry that
//! is not itself a trusted proxy (the leftmost entries are whatever the client wrote).

use std::net::IpAddr;

use ipnet::IpNet;

/// Whether `ip` is inside any of `nets` (IPv4-mapped IPv6 addresses count as IPv4).
pub fn is_trusted(ip: IpAddr, nets: &[IpNet]) -> bool {
    if nets.is_empty() {
        return false;
    }
    let ip = canonical(ip);
    nets.iter().any(|n| n.contains(&ip))
}

/// `::ffff:1.2.3.4` as `1.2.3.4`.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Parses one `X-Forwarded-For` entry: an IP, optionally with a port or in brackets.
fn parse_entry(s: &str) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse() {
        return Some(ip);
    }
    if let Some(rest) = s.strip_prefix('[') {
        return rest.split(']').next()?.parse().ok();
    }
    s.rsplit_once(':').and_then(|(ip, _)| ip.parse().ok())
}

/// The client's address: the peer, unless the peer is a trusted proxy, in which case the
/// rightmost untrusted `X-Forwarded-For` entry (or the leftmost entry if all are trusted).
pub fn client_ip(peer: IpAddr, xff: Option<&[u8]>, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if !is_trusted(peer, trusted) {
        return peer;
    }
    let Some(xff) = xff.and_then(|v| std::str::from_utf8(v).ok()) else {
        return peer;
    };
    let mut last = peer;
    for entry in xff.rsplit(',') {
        match parse_entry(entry) {
            Some(ip) => {
                let ip = canonical(ip);
                if !is_trusted(ip, trusted) {
                    return ip;
                }
                last = ip;
            }
            // An unparsable entry ends what we can believe.
            None => break,
        }
    }
    last
}

/// Request ids from clients are kept when they look like ids (1 to 200 characters of
/// letters, digits and `-_.:+/=@`); anything else is replaced.
pub fn valid_request_id(v: &[u8]) -> bool {
    !v.is_empty()
        && v.len() <= 200
        && v.iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:+/=@".contains(b))
}

/// Ids made at once per worker thread: their text shares one allocation.
const IDS_PER_BLOCK: usize = 16;
/// Length of a request id made here (hex digits).
const ID_LEN: usize = 32;

thread_local! {
    /// This thread's block of fresh ids and how many of them were handed out.
    static ID_BLOCK: std::cell::RefCell<(bytes::Bytes, usize)> =
        const { std::cell::RefCell::new((bytes::Bytes::new(), IDS_PER_BLOCK)) };
}

/// A new random request id: 32 lower-case hex digits.
///
/// The text is a slice of a per-thread block of sixteen: a value of its own was an
/// allocation, and the first of its clones (the request, the response, the log) a second
/// one, about 300 instructions per request by callgrind. A block is 512 bytes, kept while
/// any of its ids lives.
pub fn new_request_id() -> http::HeaderValue {
    let id = ID_BLOCK.with(|b| {
        let mut b = b.borrow_mut();
        if b.1 == IDS_PER_BLOCK {
            let mut text = [0u8; ID_LEN * IDS_PER_BLOCK];
            for id in text.chunks_exact_mut(ID_LEN) {
                hex_id(id);
            }
            *b = (bytes::Bytes::from_owner(text), 0);
        }
        let at = b.1 * ID_LEN;
        b.1 += 1;
        b.0.slice(at..at + ID_LEN)
    });
    // Hex digits are always a valid header value.
    http::HeaderValue::from_maybe_shared(id).unwrap_or_else(|_| http::HeaderValue::from_static("-"))
}

/// Fills `out` (32 bytes) with the hex digits of a random 128-bit number.
fn hex_id(out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let n = fastrand::u128(..).to_be_bytes();
    // A byte (two digits) a step: half the steps and no 128-bit shifts.
    for (pair, byte) in out.chunks_exact_mut(2).zip(n) {
        pair[0] = HEX[usize::from(byte >> 4)];
        pair[1] = HEX[usize::from(byte & 0xf)];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(s: &[&str]) -> Vec<IpNet> {
        s.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn untrusted_peer_is_the_client_whatever_the_header_says() {
        let ip = client_ip(
            "1.2.3.4".parse().unwrap(),
            Some(b"9.9.9.9"),
            &nets(&["10.0.0.0/8"]),
        );
        assert_eq!(ip.to_string(), "1.2.3.4");
    }

    #[test]
    fn trusted_chain_is_walked_from_the_right() {
        let t = nets(&["10.0.0.0/8"]);
        let ip = client_ip(
            "10.0.0.1".parse().unwrap(),
            Some(b"6.6.6.6, 5.5.5.5, 10.0.0.2"),
            &t,
        );
        assert_eq!(ip.to_string(), "5.5.5.5");
        let ip = client_ip("10.0.0.1".parse().unwrap(), Some(b"10.0.0.3"), &t);
        assert_eq!(ip.to_string(), "10.0.0.3");
        let ip = client_ip("10.0.0.1".parse().unwrap(), None, &t);
        assert_eq!(ip.to_string(), "10.0.0.1");
        let ip = client_ip("10.0.0.1".parse().unwrap(), Some(b"garbage, 10.0.0.9"), &t);
        assert_eq!(ip.to_string(), "10.0.0.9");
        let ip = client_ip("10.0.0.1".parse().unwrap(), Some(b"[2001:db8::1]:443"), &t);
        assert_eq!(ip.to_string(), "2001:db8::1");
        let ip = client_ip("10.0.0.1".parse().unwrap(), Some(b"7.7.7.7:1234"), &t);
        assert_eq!(ip.to_string(), "7.7.7.7");
    }

    #[test]
    fn mapped_addresses_match_v4_nets() {
        assert!(is_trusted(
            "::ffff:10.1.1.1".parse().unwrap(),
            &nets(&["10.0.0.0/8"])
        ));
    }

    #[test]
    fn request_ids() {
        assert!(valid_request_id(b"abc-123"));
        assert!(valid_request_id(b"01H8XGJWBWBAQ4Z4GSWEP2ZQ3B"));
        assert!(!valid_request_id(b""));
        assert!(!valid_request_id(b"has space"));
        assert!(!valid_request_id(b"a\r\nb"));
        assert!(!valid_request_id(&[b'a'; 201]));
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(valid_request_id(id.as_bytes()));
        assert_ne!(id, new_request_id());
    }

    #[test]
    fn ids_from_several_blocks_are_distinct_hex() {
        let ids: Vec<_> = (0..IDS_PER_BLOCK * 5 + 3)
            .map(|_| new_request_id())
            .collect();
        let distinct: std::collections::HashSet<_> = ids.iter().map(|v| v.as_bytes()).collect();
        assert_eq!(distinct.len(), ids.len());
        for id in &ids {
            assert_eq!(id.len(), ID_LEN);
            assert!(id.as_bytes().iter().all(|b| b.is_ascii_hexdigit()));
        }
    }
}

//! Entry points for fuzzing every parser of peer bytes Portico owns: request and response
//! heads, chunked bodies, the head scanner, WebSocket frame boundaries, fly-replay
//! instructions (header and JSON), `X-Forwarded-For` chains, path normalization, and
//! static-file paths.
//!
//! The `fuzz/` crate runs them under libFuzzer (`cargo fuzz run <target>`), and
//! `proxy/tests/fuzz_smoke.rs` runs them in CI over the checked-in corpus and mutated and
//! random inputs. Each function panics only when an invariant breaks (a parser that claims
//! more bytes than it was given, a chunked reader that answers differently for the same
//! bytes split differently); malformed input must never panic.

use std::net::IpAddr;

use crate::engine::chunked::Chunked;
use crate::engine::codec;

/// One fuzz target: its name and the function that takes the fuzzer's bytes.
pub type Target = (&'static str, fn(&[u8]));

/// Every fuzz target, by the name `fuzz/` and the corpus directories use.
pub const TARGETS: &[Target] = &[
    ("request_head", request_head),
    ("response_head", response_head),
    ("chunked", chunked),
    ("head_end", head_end),
    ("ws_frames", ws_frames),
    ("replay_header", replay_header),
    ("replay_json", replay_json),
    ("forwarded_for", forwarded_for),
    ("paths", paths),
];

/// A request head: refused or parsed, never a panic, never more bytes than given.
pub fn request_head(data: &[u8]) {
    if let Ok(r) = codec::parse_request(data, 8192) {
        assert!(r.head_len <= data.len());
        // What is parsed can be written again.
        let mut out = bytes::BytesMut::new();
        codec::write_request(&mut out, &r.head);
        if let codec::Framing::Length(n) = r.body {
            assert!(n > 0);
        }
    }
}

/// A response head, for a GET and for a HEAD.
pub fn response_head(data: &[u8]) {
    for method in [http::Method::GET, http::Method::HEAD] {
        if let Ok(Some(r)) = codec::parse_response(data, &method) {
            assert!(r.head_len <= data.len());
            for (n, v) in r.fields(data) {
                assert!(n.len() + v.len() <= data.len());
            }
            let _ = r.to_header(data);
            copied_lines_read_as_rebuilt(data, &r);
            if method == http::Method::HEAD {
                assert_eq!(r.body, codec::Framing::None);
            }
        }
    }
}

/// The head written for the client with the backend's kept lines copied whole parses to the
/// same fields, in order, as the head rebuilt field by field, and has no bare LF.
fn copied_lines_read_as_rebuilt(data: &[u8], r: &codec::Response) {
    let fields: Vec<(&[u8], &[u8])> = r.fields(data).collect();
    // A dropped field, and none added: the written head has no more fields than the
    // backend's (which parsed within the field limit).
    let mut edits = crate::proxy::edits::Edits::default();
    edits.remove(http::HeaderName::from_static("x-request-id"));
    let write = |src: Option<&[u8]>| {
        let mut out = bytes::BytesMut::new();
        crate::engine::exchange::write_client_head(
            &mut out,
            http::Version::HTTP_11,
            200,
            b"OK",
            &fields,
            src,
            &edits,
            false,
            false,
            false,
            None,
        );
        out
    };
    let (copied, rebuilt) = (write(Some(data)), write(None));
    assert!(!copied.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'));
    let parse = |head: &[u8]| -> Vec<(Vec<u8>, Vec<u8>)> {
        let p = codec::parse_response(head, &http::Method::GET)
            .ok()
            .flatten()
            .expect("a written head parses");
        p.fields(head)
            .map(|(n, v)| (n.to_ascii_lowercase(), v.to_vec()))
            .collect()
    };
    assert_eq!(parse(&copied), parse(&rebuilt));
}

/// A chunked body: the verdict and the body's end do not depend on how the bytes arrive.
pub fn chunked(data: &[u8]) {
    let mut whole = Chunked::default();
    let all = whole.scan(data);
    if let Ok(n) = all {
        assert!(n <= data.len());
    }
    let cut = data.first().map_or(0, |&b| b as usize % (data.len() + 1));
    let mut split = Chunked::default();
    let first = split.scan(&data[..cut]);
    let joined = match first {
        Ok(a) if split.done() => Ok(a),
        Ok(a) => split.scan(&data[a..]).map(|b| a + b),
        Err(e) => Err(e),
    };
    match (all, joined) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a, b, "the end of the body moved with the split");
            assert_eq!(whole.done(), split.done());
            assert_eq!(whole.data, split.data);
        }
        (Err(_), Err(_)) => {}
        (a, b) => panic!("split changed the verdict: {a:?} vs {b:?}"),
    }
}

/// The end of a request head.
pub fn head_end(data: &[u8]) {
    if let Some(end) = crate::engine::head::find_head_end(data, 0) {
        assert!(end <= data.len());
        let from = data.first().map_or(0, |&b| b as usize % (data.len() + 1));
        if let Some(again) = crate::engine::head::find_head_end(data, from.min(end)) {
            assert!(again <= data.len());
        }
    }
}

/// WebSocket frame boundaries, fed in two pieces.
pub fn ws_frames(data: &[u8]) {
    let mut f = crate::wsclose::Frames::default();
    let cut = data.len() / 2;
    f.advance(&data[..cut]);
    f.advance(&data[cut..]);
    let _ = f.at_boundary();
}

/// A `fly-replay` header value.
pub fn replay_header(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = crate::replay::instruction::parse_header(s);
    }
}

/// A JSON replay instruction.
pub fn replay_json(data: &[u8]) {
    let _ = crate::replay::instruction::parse_json(data);
}

/// An `X-Forwarded-For` chain from a trusted proxy.
pub fn forwarded_for(data: &[u8]) {
    let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8"
        .parse()
        .unwrap_or_else(|_| ipnet::IpNet::from(IpAddr::from([10, 0, 0, 0])))];
    let peer = IpAddr::from([10, 0, 0, 1]);
    let _ = crate::proxy::forwarded::client_ip(peer, Some(data), &trusted);
}

/// Request paths: routing normalization and static-file resolution.
pub fn paths(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        let n = portico_config::routing::normalize_path(s);
        if s.starts_with('/') {
            assert!(n.starts_with('/'), "{n:?}");
            assert!(!n.contains("/../") && !n.ends_with("/.."), "{n:?}");
        }
        if let Some(segs) = crate::statics::path::segments(s, false) {
            for seg in segs {
                assert!(
                    seg != "." && seg != ".." && !seg.contains(['/', '\\', '\0']),
                    "{seg:?}"
                );
            }
        }
    }
}

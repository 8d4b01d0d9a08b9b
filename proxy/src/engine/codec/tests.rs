//! Tests of the HTTP/1.1 codec: request and response heads, framing decisions, rejections.

use super::*;

fn req(raw: &str) -> Result<Request, Refused> {
    parse_request(raw.as_bytes(), 8192)
}

fn status(raw: &str) -> u16 {
    match req(raw) {
        Ok(_) => 200,
        Err(r) => r.status,
    }
}

/// Both ways of building the head (a target the URI keeps exactly, and one it does not)
/// keep every field value in order and the target's bytes.
#[test]
fn fields_and_target_survive_both_head_builds() {
    for (raw, target) in [
        (
            "GET /p?q=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-B: b\r\nX-A: 2\r\n\r\n",
            "/p?q=1",
        ),
        (
            "OPTIONS * HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nX-B: b\r\nX-A: 2\r\n\r\n",
            "*",
        ),
    ] {
        let r = req(raw).unwrap();
        let values: Vec<&[u8]> = r
            .head
            .headers
            .get_all("x-a")
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(values, [&b"1"[..], b"2"], "{raw}");
        assert_eq!(r.head.headers["x-b"], "b");
        assert_eq!(r.head.headers["host"], "x");
        assert_eq!(r.head.raw_path(), target.as_bytes(), "{raw}");
    }
}

#[test]
fn framing_decisions() {
    let r = req("POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n").unwrap();
    assert_eq!(r.body, Framing::Length(5));
    let r = req("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
    assert_eq!(r.body, Framing::Chunked);
    let r = req("POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: ChUnKeD\r\n\r\n").unwrap();
    assert_eq!(r.body, Framing::Chunked);
    let r = req("GET /a HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    assert_eq!(r.body, Framing::None);
    // Identical duplicates collapse to one field.
    let r = req("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n")
        .unwrap();
    assert_eq!(r.body, Framing::Length(3));
    assert_eq!(r.head.headers.get_all(CONTENT_LENGTH).iter().count(), 1);
    let r = req("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\n").unwrap();
    assert_eq!(r.body, Framing::Length(3));
}

#[test]
fn smuggling_shapes_are_refused() {
    for (raw, want) in [
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x3\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3 3\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: \r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n", 400),
        ("POST / HTTP/1.1\r\nHost: x\r\n Transfer-Encoding: chunked\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: x\rX: y\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        ("GET secret.txt HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("GET example.com:80 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("GET /a\tb HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("GET / HTTP/2.0\r\nHost: x\r\n\r\n", 400),
        ("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com\r\n\r\n", 405),
    ] {
        assert_eq!(status(raw), want, "{raw:?}");
    }
}

#[test]
fn target_forms() {
    assert_eq!(status("OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"), 200);
    let r = req("GET http://example.com:8080/a?b=c HTTP/1.1\r\nHost: other\r\n\r\n").unwrap();
    assert_eq!(r.head.raw_path(), b"/a?b=c");
    assert_eq!(r.head.headers[HOST], "example.com:8080");
    let r = req("GET http://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n").unwrap();
    assert_eq!(r.head.raw_path(), b"/");
    // HTTP/1.0 needs no Host.
    assert_eq!(status("GET / HTTP/1.0\r\n\r\n"), 200);
}

#[test]
fn limits() {
    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100));
    assert_eq!(parse_request(long.as_bytes(), 50).unwrap_err().status, 414);
    let many: String = (0..MAX_HEADERS + 1)
        .map(|i| format!("x-{i}: 1\r\n"))
        .collect();
    let raw = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    assert_eq!(status(&raw), 431);
}

#[test]
fn connection_semantics() {
    let r = req("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    assert!(!r.keep_alive);
    let r = req("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap();
    assert!(r.keep_alive);
    let r = req("GET / HTTP/1.0\r\n\r\n").unwrap();
    assert!(!r.keep_alive);
    let r = req(
        "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n",
    )
    .unwrap();
    assert!(r.upgrade);
    let r = req("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nExpect: 100-continue\r\n\r\n")
        .unwrap();
    assert!(r.expect_continue);
}

#[test]
fn responses() {
    let get = Method::GET;
    let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", &get)
        .unwrap()
        .unwrap();
    assert_eq!(
        (r.body, r.keep_alive, r.head_len),
        (Framing::Length(2), true, 38)
    );
    let r = parse_response(b"HTTP/1.1 200 OK\r\n\r\n", &get)
        .unwrap()
        .unwrap();
    assert_eq!((r.body, r.keep_alive), (Framing::Close, false));
    let r = parse_response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n",
        &Method::HEAD,
    )
    .unwrap()
    .unwrap();
    assert_eq!(r.body, Framing::None);
    let r = parse_response(
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
        &get,
    )
    .unwrap()
    .unwrap();
    assert_eq!(r.body, Framing::None);
    let r = parse_response(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", &get)
        .unwrap()
        .unwrap();
    assert!(!r.keep_alive);
    assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Le", &get)
        .unwrap()
        .is_none());
    assert!(parse_response(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        &get
    )
    .is_err());
    assert!(parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", &get).is_err());
}

#[test]
fn heads_round_trip() {
    let r = req("GET /a?b HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n\r\n").unwrap();
    let mut out = BytesMut::new();
    write_request(&mut out, &r.head);
    assert_eq!(&out[..], b"GET /a?b HTTP/1.1\r\nhost: x\r\nx-a: 1\r\n\r\n");
    let mut resp = ResponseHeader::build_no_case(404, None).unwrap();
    resp.append_header("content-length", "0").unwrap();
    let mut out = BytesMut::new();
    write_response(&mut out, &resp, Version::HTTP_11);
    assert_eq!(
        &out[..],
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"
    );
}

#[test]
fn replay_markers_are_noted_while_parsing() {
    let get = Method::GET;
    let markers = |head: &[u8]| parse_response(head, &get).unwrap().unwrap().replay_markers;
    assert_eq!(
        markers(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n"),
        ReplayMarkers::default()
    );
    let m = markers(b"HTTP/1.1 307 R\r\nFly-Replay: region=iad\r\nContent-Length: 0\r\n\r\n");
    assert!(m.header && !m.json && !m.cache);
    let m = markers(
        b"HTTP/1.1 200 OK\r\ncontent-type: Application/Vnd.Fly.Replay+JSON; charset=utf-8\r\n\
          fly-replay-cache: /u/*;ttl=60\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(!m.header && m.json && m.cache);
    // A prefix of the JSON type is not it.
    let m = markers(b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.fly\r\n\r\n");
    assert!(!m.json);
}

#[test]
fn host_values_are_checked() {
    for (raw, want) in [
        ("GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", 200),
        ("GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n", 200),
        ("GET / HTTP/1.1\r\nHost: [::1]:443\r\n\r\n", 200),
        ("GET / HTTP/1.1\r\nHost: xn--bcher-kva.example\r\n\r\n", 200),
        ("GET / HTTP/1.0\r\n\r\n", 200),
        ("GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: a\"b\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nHost: b\u{e4}r.example\r\n\r\n", 400),
        ("GET / HTTP/1.1\r\nhost: a<b\r\n\r\n", 400),
        ("GET http://a\"b/ HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        ("GET http://ok.example/ HTTP/1.1\r\nHost: a b\r\n\r\n", 400),
    ] {
        assert_eq!(status(raw), want, "{raw:?}");
    }
}

/// The names `common_name` knows.
const COMMON: [&str; 14] = [
    "host",
    "accept",
    "cookie",
    "origin",
    "referer",
    "upgrade",
    "user-agent",
    "connection",
    "content-type",
    "authorization",
    "cache-control",
    "content-length",
    "accept-encoding",
    "accept-language",
];

#[test]
fn common_names_match_the_http_crate() {
    for raw in [
        "Host",
        "HOST",
        "accept",
        "Cookie",
        "origin",
        "Referer",
        "upgrade",
        "User-Agent",
        "connection",
        "Content-Type",
        "authorization",
        "Cache-Control",
        "content-length",
        "Accept-Encoding",
        "accept-language",
        "x-a",
        "hosts",
        "accept-charset",
        "",
        "content-lengtH",
        "user_agent",
    ] {
        let fast = common_name(raw.as_bytes());
        if let Some(n) = &fast {
            assert_eq!(
                Some(n),
                http::HeaderName::from_bytes(raw.as_bytes()).ok().as_ref(),
                "{raw}"
            );
        }
        assert_eq!(
            fast.is_some(),
            COMMON.contains(&raw.to_lowercase().as_str()),
            "{raw}"
        );
    }
}

/// Every one-byte change of a known name to another token byte gives the answer the http
/// crate gives: the fast comparison matches a name exactly when it is that name in any case.
#[test]
fn common_names_are_exact_for_every_token_byte() {
    let token: Vec<u8> =
        b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".to_vec();
    for name in COMMON {
        for i in 0..name.len() {
            for &b in &token {
                let mut raw = name.as_bytes().to_vec();
                raw[i] = b;
                let want = http::HeaderName::from_bytes(&raw)
                    .ok()
                    .filter(|n| n.as_str() == name);
                assert_eq!(
                    common_name(&raw),
                    want,
                    "{:?}",
                    String::from_utf8_lossy(&raw)
                );
            }
        }
    }
}

/// Values and the target are slices of the buffer read, not copies; a target the parser
/// rebuilds (absolute-form without a path) is copied, not sliced out of the wrong memory.
#[test]
fn shared_parse_slices_values_out_of_the_buffer() {
    let buf = Bytes::from_static(b"GET /a?b HTTP/1.1\r\nHost: x\r\nX-Y: zz\r\n\r\nBODY");
    let r = parse_request_shared(&buf, 8192).unwrap();
    let inside = |p: *const u8| {
        let p = p as usize;
        p >= buf.as_ptr() as usize && p < buf.as_ptr() as usize + buf.len()
    };
    assert!(inside(r.head.headers["x-y"].as_bytes().as_ptr()));
    assert!(inside(r.head.uri.path().as_ptr()));
    assert_eq!(r.head.uri.path(), "/a");
    assert_eq!(r.head_len, buf.len() - 4);
    let buf = Bytes::from_static(b"GET http://h.example HTTP/1.1\r\n\r\n");
    let r = parse_request_shared(&buf, 8192).unwrap();
    assert_eq!(r.head.uri.path(), "/");
    assert_eq!(r.head.headers["host"], "h.example");
}

/// A map given back for reuse carries nothing of its last request into the next one.
#[test]
fn recycled_maps_hold_nothing_of_the_last_request() {
    for _ in 0..3 {
        let big = req("GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nB: 3\r\nC: 4\r\n\r\n").unwrap();
        assert_eq!(big.head.headers.len(), 5);
        recycle_fields(http::request::Parts::from(big.head).headers);
        let small = req("GET / HTTP/1.1\r\nHost: b\r\n\r\n").unwrap();
        assert_eq!(small.head.headers.len(), 1);
        assert_eq!(small.head.headers["host"], "b");
        recycle_fields(http::request::Parts::from(small.head).headers);
    }
}

/// The parser notes which names a head holds: only common ones, or some other.
#[test]
fn names_seen_by_the_parser() {
    let r =
        req("GET / HTTP/1.1\r\nHOST: a\r\nAccept: */*\r\nConnection: keep-alive\r\n\r\n").unwrap();
    assert!(r.names.only_common());
    assert!(r.names.may_have(&CONNECTION));
    assert!(!r.names.may_have(&UPGRADE));
    assert!(!r.names.may_have(&http::header::VIA));
    let r = req("GET / HTTP/1.1\r\nHost: a\r\nVia: 1.1 x\r\n\r\n").unwrap();
    assert!(!r.names.only_common());
    assert!(r.names.may_have(&http::header::VIA));
    // The authority of an absolute-form target becomes the Host field.
    let r = req("GET http://h/ HTTP/1.1\r\n\r\n").unwrap();
    assert!(r.names.may_have(&HOST));
}

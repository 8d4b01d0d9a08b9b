//! Request smuggling: malformed and ambiguous framing from raw sockets. Every case either
//! reaches the backend as exactly the requests the client sent, or is refused with the
//! right status and a closed connection, and a request hidden in the bytes never arrives.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// Upstream `app` at `origin`, no retries (each case must reach the origin once).
fn config(origin: &RawOrigin) -> Config {
    Config::new().upstream(Upstream::new("app", [origin.addr]).set("retries", 0))
}

/// The request heads the backend received, as text.
fn heads(origin: &RawOrigin) -> Vec<String> {
    origin
        .requests()
        .iter()
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_refused_and_nothing_reaches_the_backend() {
    let origin = RawOrigin::start(|_| OK.to_vec()).await;
    let p = Portico::with(&config(&origin));
    let addr = p.addr("http");
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    let cases: Vec<(&str, String, u16)> = vec![
        (
            "CL then TE",
            format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
            400,
        ),
        (
            "TE then CL",
            format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n{smuggled}"),
            400,
        ),
        (
            "differing Content-Length",
            format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 41\r\n\r\nhello{smuggled}"),
            400,
        ),
        (
            "Content-Length list that differs",
            format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 41\r\n\r\nhello{smuggled}"),
            400,
        ),
        (
            "signed Content-Length",
            format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello{smuggled}"),
            400,
        ),
        (
            "hex Content-Length",
            format!("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello{smuggled}"),
            400,
        ),
        (
            "obfuscated transfer coding",
            format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"),
            400,
        ),
        (
            "chunked then identity",
            format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{smuggled}"),
            400,
        ),
        (
            "unknown coding before chunked",
            format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n{smuggled}"),
            501,
        ),
        (
            "two Transfer-Encoding fields",
            format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{smuggled}"),
            400,
        ),
        (
            "space before the colon",
            format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{smuggled}"),
            400,
        ),
        (
            "obsolete line folding",
            format!("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n chunked\r\n\r\n0\r\n\r\n{smuggled}"),
            400,
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            format!("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
            400,
        ),
        (
            "bare CR in a field",
            format!("GET / HTTP/1.1\r\nHost: a\rX-Smuggle: 1\r\n\r\n{smuggled}"),
            400,
        ),
        (
            "NUL in a value",
            format!("GET / HTTP/1.1\r\nHost: a\r\nX-A: a\0b\r\n\r\n{smuggled}"),
            400,
        ),
        ("no Host in HTTP/1.1", format!("GET / HTTP/1.1\r\n\r\n{smuggled}"), 400),
        (
            "two Host fields",
            format!("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n{smuggled}"),
            400,
        ),
        (
            "relative target",
            format!("GET secret.txt HTTP/1.1\r\nHost: a\r\n\r\n{smuggled}"),
            400,
        ),
        (
            "authority-form outside CONNECT",
            format!("GET a.example:80 HTTP/1.1\r\nHost: a\r\n\r\n{smuggled}"),
            400,
        ),
        (
            "asterisk outside OPTIONS",
            format!("GET * HTTP/1.1\r\nHost: a\r\n\r\n{smuggled}"),
            400,
        ),
        (
            "space in the target",
            format!("GET /a b HTTP/1.1\r\nHost: a\r\n\r\n{smuggled}"),
            400,
        ),
        (
            "tab in the target",
            format!("GET /a\tb HTTP/1.1\r\nHost: a\r\n\r\n{smuggled}"),
            400,
        ),
        (
            "raw UTF-8 in the target",
            format!("GET /caf\u{e9} HTTP/1.1\r\nHost: a\r\n\r\n{smuggled}"),
            400,
        ),
    ];
    for (name, req, status) in &cases {
        let out = raw(addr, req.as_bytes(), Duration::from_secs(5)).await;
        assert!(
            out.starts_with(&format!("HTTP/1.1 {status} ")),
            "{name}: expected {status}, got:\n{out}"
        );
        let answers = out.lines().filter(|l| l.starts_with("HTTP/1.1 ")).count();
        assert_eq!(answers, 1, "{name}: one answer only:\n{out}");
        assert!(
            out.to_ascii_lowercase().contains("connection: close"),
            "{name}: the connection must close:\n{out}"
        );
    }
    assert!(heads(&origin).is_empty(), "{:?}", heads(&origin));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_chunked_bodies_never_let_a_request_through() {
    let origin = RawOrigin::start(|_| OK.to_vec()).await;
    let p = Portico::with(&config(&origin));
    let addr = p.addr("http");
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n";
    for (name, body) in [
        (
            "size overflow",
            format!("fffffffffffffffff\r\nx\r\n0\r\n\r\n{smuggled}"),
        ),
        ("negative size", format!("-1\r\nx\r\n0\r\n\r\n{smuggled}")),
        ("hex prefix", format!("0x1\r\nx\r\n0\r\n\r\n{smuggled}")),
        (
            "bare LF after the size",
            format!("1\nx\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "data longer than its size",
            format!("1\r\nxx\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "bare LF after the data",
            format!("1\r\nx\n0\r\n\r\n{smuggled}"),
        ),
        (
            "size without digits",
            format!(";ext\r\nx\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "control byte in an extension",
            format!("1;a\u{1}b\r\nx\r\n0\r\n\r\n{smuggled}"),
        ),
        (
            "folded trailer",
            format!("1\r\nx\r\n0\r\nt: 1\r\n folded\r\n\r\n{smuggled}"),
        ),
    ] {
        let req =
            format!("POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
        let out = raw(addr, req.as_bytes(), Duration::from_secs(5)).await;
        // The head was fine, so the request may have started upstream; what matters is that
        // the body is refused, the connection closes, and nothing more is read from it.
        assert!(
            out.is_empty() || out.starts_with("HTTP/1.1 400 "),
            "{name}: got:\n{out}"
        );
        let answers = out.lines().filter(|l| l.starts_with("HTTP/1.1 ")).count();
        assert!(answers <= 1, "{name}: {out}");
    }
    for h in heads(&origin) {
        assert!(
            !h.contains("/smuggled"),
            "a hidden request reached the backend:\n{h}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn well_framed_requests_arrive_exactly_as_sent() {
    let origin = RawOrigin::start(|_| OK.to_vec()).await;
    let p = Portico::with(&config(&origin));
    let addr = p.addr("http");
    // Two pipelined requests, a chunked one with extensions and trailers, in one write.
    let req = concat!(
        "POST /one HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        "POST /two HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
        "3;name=value\r\nabc\r\n0\r\nx-sum: 3\r\n\r\n",
        "GET /three HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    let out = raw(addr, req.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(out.matches("HTTP/1.1 200 ").count(), 3, "{out}");
    let got = heads(&origin);
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(got[0].starts_with("POST /one HTTP/1.1\r\n") && got[0].ends_with("\r\n\r\nhello"));
    assert!(got[1].starts_with("POST /two HTTP/1.1\r\n"));
    assert!(got[2].starts_with("GET /three HTTP/1.1\r\n"));
    // Identical Content-Length fields are collapsed into one.
    let out = raw(
        addr,
        b"POST /dup HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
    let dup = heads(&origin).pop().unwrap().to_ascii_lowercase();
    assert_eq!(dup.matches("content-length:").count(), 1, "{dup}");
    // Absolute-form targets go upstream in origin-form, with their authority as Host.
    let out = raw(
        addr,
        b"GET http://example.test/abs?q=1 HTTP/1.1\r\nHost: other\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200 "), "{out}");
    let abs = heads(&origin).pop().unwrap();
    assert!(abs.starts_with("GET /abs?q=1 HTTP/1.1\r\n"), "{abs}");
    assert!(
        abs.to_ascii_lowercase().contains("host: example.test\r\n"),
        "{abs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_answers_from_the_backend_are_502() {
    for (name, answer) in [
        (
            "CL and TE",
            &b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
                [..],
        ),
        (
            "differing CL",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
        ),
        (
            "unknown coding",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok",
        ),
        ("garbage", b"SSH-2.0-OpenSSH_9.6\r\n\r\n"),
    ] {
        let origin = RawOrigin::start(move |_| answer.to_vec()).await;
        let p = Portico::with(&config(&origin));
        let out = raw(
            p.addr("http"),
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
            Duration::from_secs(5),
        )
        .await;
        assert!(out.starts_with("HTTP/1.1 502 "), "{name}: {out}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_on_the_request_line_and_field_count() {
    let origin = RawOrigin::start(|_| OK.to_vec()).await;
    let p = Portico::with(&config(&origin));
    let addr = p.addr("http");
    let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(10 * 1024));
    let out = raw(addr, long.as_bytes(), Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 414 "), "{out}");
    // A request line longer than the whole head limit is still a 414, not a 431.
    let longer = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(40 * 1024));
    let out = raw(addr, longer.as_bytes(), Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 414 "), "{out}");
    let many: String = (0..150).map(|i| format!("x-{i}: 1\r\n")).collect();
    let req = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
    let out = raw(addr, req.as_bytes(), Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
    assert!(heads(&origin).is_empty());
}

/// The part of a raw request after its head, and the value of its `x-tag` field.
fn tag_and_body(req: &[u8]) -> (String, &[u8]) {
    let end = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&req[..end]).to_ascii_lowercase();
    let tag = head
        .lines()
        .find_map(|l| l.strip_prefix("x-tag:"))
        .map_or(String::new(), |v| v.trim().to_string());
    (tag, &req[end..])
}

/// Reads complete `content-length` responses from `s` until `n` are in `buf`; returns their
/// bodies and leaves any later bytes in `buf`.
async fn read_bodies(s: &mut tokio::net::TcpStream, buf: &mut Vec<u8>, n: usize) -> Vec<String> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    while out.len() < n {
        if let Some((head, body)) = complete_response(buf) {
            assert!(head.starts_with("http/1.1 200 "), "{head}");
            out.push(String::from_utf8_lossy(&buf[body.clone()]).into_owned());
            buf.drain(..body.end);
            continue;
        }
        let got = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("responses in time")
            .unwrap();
        assert!(got > 0, "closed mid-response");
        buf.extend_from_slice(&chunk[..got]);
    }
    out
}

/// Heads, bodies and pipelined requests arriving in one write, hundreds of times in a row
/// on parallel connections, with bodies larger than the read buffer's first allocation:
/// every request reaches the backend with its own fields and body, in order. (The head's
/// values are slices of the connection's read buffer while the body is read after it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_and_pipelined_requests_keep_their_own_bytes() {
    use tokio::io::AsyncWriteExt;
    let origin = RawOrigin::start(|req| {
        let (tag, body) = tag_and_body(req);
        let sum: u64 = body.iter().map(|&b| u64::from(b)).sum();
        let text = format!("{tag};{};{sum}", body.len());
        format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{text}",
            text.len()
        )
        .into_bytes()
    })
    .await;
    let p = Portico::with(&config(&origin));
    let addr = p.addr("http");
    let mut tasks = Vec::new();
    for c in 0..6u64 {
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let mut buf = Vec::new();
            for i in 0..150u64 {
                let len = ((i * 997 + c * 131) % 9000) as usize;
                let body: Vec<u8> = (0..len).map(|k| b'a' + ((k as u64 + i) % 26) as u8).collect();
                let sum: u64 = body.iter().map(|&b| u64::from(b)).sum();
                let mut req = format!(
                    "POST /p/{c}/{i} HTTP/1.1\r\nHost: a\r\nX-Tag: post-{c}-{i}\r\nContent-Length: {len}\r\n\r\n"
                )
                .into_bytes();
                req.extend_from_slice(&body);
                req.extend_from_slice(
                    format!("GET /g/{c}/{i} HTTP/1.1\r\nHost: a\r\nX-Tag: get-{c}-{i}\r\n\r\n")
                        .as_bytes(),
                );
                s.write_all(&req).await.unwrap();
                let got = read_bodies(&mut s, &mut buf, 2).await;
                assert_eq!(got[0], format!("post-{c}-{i};{len};{sum}"));
                assert_eq!(got[1], format!("get-{c}-{i};0;0"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(origin.requests().len(), 6 * 150 * 2);
}

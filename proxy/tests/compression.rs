//! Compression of proxied responses (`compress` on a route) through the real binary, over
//! HTTP/1.1 (Portico's engine), HTTP/1.0 and HTTP/2 (pingora's path): every coding decoded
//! and compared with the origin's body, the header changes RFC 9110 asks for, and the
//! responses that must pass untouched.
#![allow(clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::time::Duration;

use common::*;

fn page() -> String {
    let mut s = String::from("<!doctype html><title>portico</title>");
    for i in 0..600 {
        s.push_str(&format!(
            "<p class=\"row\">row {i} of a page worth compressing</p>\n"
        ));
    }
    s
}

async fn origin() -> Origin {
    let body = page();
    Origin::start("app", move |seen| {
        let body = body.clone();
        Box::pin(async move {
            let path = seen.uri.split('?').next().unwrap_or("").to_string();
            match path.as_str() {
                "/page" => text(
                    200,
                    &body,
                    &[
                        ("content-type", "text/html; charset=utf-8"),
                        ("etag", "\"v1\""),
                    ],
                ),
                "/json" => text(200, &body, &[("content-type", "application/json")]),
                "/small" => text(200, "tiny", &[("content-type", "text/html")]),
                "/image" => text(200, &body, &[("content-type", "image/png")]),
                "/encoded" => text(
                    200,
                    &body,
                    &[("content-type", "text/html"), ("content-encoding", "gzip")],
                ),
                "/notransform" => text(
                    200,
                    &body,
                    &[
                        ("content-type", "text/html"),
                        ("cache-control", "public, no-transform"),
                    ],
                ),
                "/sse" => text(200, &body, &[("content-type", "text/event-stream")]),
                _ => text(404, "nope", &[("content-type", "text/plain")]),
            }
        })
    })
    .await
}

/// Upstream `app` at `origin`: `/` compressed (h2c allowed), `/plain/` not.
fn config(origin: std::net::SocketAddr) -> Config {
    Config::new()
        .listener_set("h2c", true)
        .upstream(Upstream::new("app", [origin]))
        .route(Route::to("app").path("/").set("compress", true))
        .route(Route::to("app").path("/plain/").set("strip_prefix", true))
}

fn decode(coding: &str, body: &[u8]) -> String {
    match coding {
        "gzip" => {
            let mut s = String::new();
            flate2::read::GzDecoder::new(body)
                .read_to_string(&mut s)
                .unwrap();
            s
        }
        "br" => {
            let mut out = Vec::new();
            brotli::BrotliDecompress(&mut &body[..], &mut out).expect("a complete brotli stream");
            String::from_utf8(out).unwrap()
        }
        "zstd" => String::from_utf8(zstd::decode_all(body).unwrap()).unwrap(),
        other => panic!("unexpected coding {other}"),
    }
}

fn h2_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_coding_round_trips_over_http1_and_http2_with_the_right_fields() {
    let o = origin().await;
    let p = Portico::with(&config(o.addr));
    let want = page();
    for (name, c) in [("h1", client()), ("h2", h2_client())] {
        for (ae, coding) in [
            ("gzip", "gzip"),
            ("br", "br"),
            ("zstd", "zstd"),
            ("gzip, deflate, br, zstd", "zstd"),
            ("gzip;q=1.0, br;q=0.5", "gzip"),
            ("br;q=0.9, gzip;q=0.8, zstd;q=0", "br"),
        ] {
            let r = c
                .get(p.url("http", "/page"))
                .header("accept-encoding", ae)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let h = r.headers().clone();
            assert_eq!(h["content-encoding"], coding, "{name} {ae}");
            assert_eq!(h["vary"], "accept-encoding", "{name} {ae}");
            assert!(
                h.get("content-length").is_none() || name == "h2",
                "{name} {ae}: {h:?}"
            );
            assert_eq!(h["etag"], "W/\"v1\"", "{name} {ae}");
            let body = r.bytes().await.unwrap();
            assert!(
                body.len() < want.len() / 4,
                "{name} {ae}: {} bytes",
                body.len()
            );
            assert_eq!(decode(coding, &body), want, "{name} {ae}");
        }
        // JSON too.
        let r = c
            .get(p.url("http", "/json"))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["content-encoding"], "gzip");
        assert_eq!(decode("gzip", &r.bytes().await.unwrap()), want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_must_not_be_compressed_passes_untouched() {
    let o = origin().await;
    let p = Portico::with(&config(o.addr));
    let want = page();
    let c = client();
    let get = |path: &str, extra: Option<(&str, &str)>| {
        let mut r = c
            .get(p.url("http", path))
            .header("accept-encoding", "gzip, br, zstd");
        if let Some((n, v)) = extra {
            r = r.header(n, v);
        }
        r.send()
    };
    for path in ["/small", "/image", "/notransform", "/sse"] {
        let r = get(path, None).await.unwrap();
        assert!(r.headers().get("content-encoding").is_none(), "{path}");
        assert!(r.headers().get("content-length").is_some(), "{path}");
    }
    // Already encoded: passed as the origin sent it.
    let r = get("/encoded", None).await.unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    assert_eq!(r.bytes().await.unwrap(), want.as_bytes());
    // A range request gets the origin's answer, with Vary for caches.
    let r = get("/page", Some(("range", "bytes=0-9"))).await.unwrap();
    assert!(r.headers().get("content-encoding").is_none());
    assert_eq!(r.headers()["vary"], "accept-encoding");
    // No Accept-Encoding: plain, with Vary.
    let r = c.get(p.url("http", "/page")).send().await.unwrap();
    assert!(r.headers().get("content-encoding").is_none());
    assert_eq!(r.headers()["vary"], "accept-encoding");
    assert_eq!(r.headers()["etag"], "\"v1\"");
    assert_eq!(r.text().await.unwrap(), want);
    // A route without `compress`.
    let r = get("/plain/page", None).await.unwrap();
    assert!(r.headers().get("content-encoding").is_none());
    assert!(r.headers().get("vary").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_head_and_keep_alive_reuse() {
    let o = origin().await;
    let p = Portico::with(&config(o.addr));
    let want = page();
    let addr = p.addr("http");
    // HTTP/1.0: the compressed body ends with the connection.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /page HTTP/1.0\r\nHost: x\r\nAccept-Encoding: gzip\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&out[..split]).to_lowercase();
    assert!(head.contains("content-encoding: gzip"), "{head}");
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert_eq!(decode("gzip", &out[split..]), want);

    // HEAD: the fields a GET would get, no body.
    let r = client()
        .head(p.url("http", "/page"))
        .header("accept-encoding", "br")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "br");
    assert!(r.bytes().await.unwrap().is_empty());

    // Keep-alive: compressed answers back to back on one connection, then a plain one.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    for _ in 0..3 {
        s.write_all(b"GET /page HTTP/1.1\r\nHost: x\r\nAccept-Encoding: zstd\r\n\r\n")
            .await
            .unwrap();
        // Read to the last chunk, exactly.
        let mut resp = Vec::new();
        while !resp.ends_with(b"\r\n0\r\n\r\n") {
            let mut chunk = [0u8; 512];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&resp));
            resp.extend_from_slice(&chunk[..n]);
        }
        let resp = String::from_utf8_lossy(&resp).to_lowercase();
        assert!(resp.starts_with("http/1.1 200"), "{resp}");
        assert!(resp.contains("content-encoding: zstd"));
        assert!(resp.contains("transfer-encoding: chunked"));
    }
    s.write_all(b"GET /small HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let resp = read_response(&mut s).await;
    assert!(resp.ends_with("tiny"), "{resp}");
}

/// Chunked and close-delimited bodies from the backend are decoded and compressed as they
/// come; trailers of a chunked body are dropped with its framing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_and_close_delimited_backend_bodies_are_compressed() {
    let want = page();
    let w = want.clone();
    let o = RawOrigin::start(move |req| {
        let req = String::from_utf8_lossy(req);
        let mut out = Vec::new();
        if req.starts_with("GET /chunked") {
            out.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n\r\n");
            for piece in w.as_bytes().chunks(1000) {
                out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                out.extend_from_slice(piece);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\nx-trailer: 1\r\n\r\n");
        } else {
            out.extend_from_slice(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n");
            out.extend_from_slice(w.as_bytes());
        }
        out
    })
    .await;
    let p = Portico::with(&config(o.addr));
    let r = client()
        .get(p.url("http", "/chunked"))
        .header("accept-encoding", "br")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "br");
    assert!(r.headers().get("x-trailer").is_none());
    assert_eq!(decode("br", &r.bytes().await.unwrap()), want);

    // A backend that ends its body by closing the connection.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closing = l.local_addr().unwrap();
    let w = want.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = l.accept().await {
            let w = w.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\n",
                    )
                    .await;
                for piece in w.as_bytes().chunks(3000) {
                    let _ = s.write_all(piece).await;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            });
        }
    });
    let p = Portico::with(&config(closing));
    for path in ["/close"] {
        let r = client()
            .get(p.url("http", path))
            .header("accept-encoding", "br")
            .send()
            .await
            .unwrap();
        assert_eq!(r.headers()["content-encoding"], "br", "{path}");
        assert_eq!(decode("br", &r.bytes().await.unwrap()), want, "{path}");
    }
}

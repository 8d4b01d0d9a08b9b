//! Client limits and their status codes: 431 header size, 413 body size, 408 header timeout,
//! 408 for stalled and too-slow request bodies, keep-alive idle close, requests per
//! connection, connections per listener.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn oversized_request_head_gets_431() {
    let o = Origin::named("o").await;
    let p = Portico::with(
        &Config::new()
            .listener_set("max_header_size", "4KiB")
            .upstream(Upstream::new("app", [o.addr]))
            .route(Route::to("app").path("/")),
    );
    let c = client();
    let ok = c
        .get(p.url("http", "/"))
        .header("x-a", "a".repeat(3000))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let r = c
        .get(p.url("http", "/"))
        .header("x-a", "a".repeat(5000))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 431);
    assert!(r.text().await.unwrap().contains("larger than 4096 bytes"));
    assert_eq!(o.count(), 1);
    wait_metric(
        &p,
        "portico_http_rejected_total",
        &[("reason", "header_too_large")],
        1.0,
    )
    .await;
}

#[tokio::test]
async fn oversized_body_gets_413_declared_or_streamed() {
    let o = Origin::start("o", |s| {
        Box::pin(async move { text(200, &s.body.len().to_string(), &[]) })
    })
    .await;
    let p = Portico::with(
        &Config::new()
            .upstream(Upstream::new("app", [o.addr]))
            .route(Route::to("app").path("/").set("max_body", "1KiB")),
    );
    let c = client();
    let r = c
        .post(p.url("http", "/"))
        .body(vec![b'x'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Declared length over the limit: refused before anything reaches the upstream.
    let r = c
        .post(p.url("http", "/"))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("larger than the 1024 bytes allowed"));
    assert_eq!(o.count(), 1);
    // Chunked body that grows past the limit.
    let req = format!(
        "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n{}\r\n0\r\n\r\n",
        "y".repeat(0x800)
    );
    let resp = raw(p.addr("http"), req.as_bytes(), Duration::from_secs(5)).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
}

#[tokio::test]
async fn slow_request_head_gets_408() {
    let o = Origin::named("o").await;
    let p = Portico::with(
        &Config::new()
            .listener_set("header_read_timeout", "300ms")
            .upstream(Upstream::new("app", [o.addr]))
            .route(Route::to("app").path("/")),
    );
    let mut s = TcpStream::connect(p.addr("http")).await.unwrap();
    let start = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    // Keep trickling bytes: per-read timeouts would never fire, the head deadline does.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(80)).await;
        let _ = s.write_all(b"X-A: b\r\n").await;
    }
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(3), s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    assert!(out.starts_with("HTTP/1.1 408 Request Timeout"), "{out}");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert_eq!(o.count(), 0);
}

#[tokio::test]
async fn idle_keepalive_connection_is_closed_quietly() {
    let o = Origin::named("o").await;
    let p = Portico::with(
        &Config::new()
            .listener_set("keepalive_timeout", "300ms")
            .upstream(Upstream::new("app", [o.addr]))
            .route(Route::to("app").path("/")),
    );
    let mut s = TcpStream::connect(p.addr("http")).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    let start = Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert!(
        rest.is_empty(),
        "no 408 on an idle connection: {}",
        String::from_utf8_lossy(&rest)
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[tokio::test]
async fn requests_per_connection_limit_closes_after_the_last() {
    let o = Origin::named("o").await;
    let p = Portico::with(
        &Config::new()
            .listener_set("max_requests_per_connection", 2)
            .upstream(Upstream::new("app", [o.addr]))
            .route(Route::to("app").path("/")),
    );
    let mut s = TcpStream::connect(p.addr("http")).await.unwrap();
    let mut all = String::new();
    for _ in 0..2 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        all.push_str(&read_response(&mut s).await);
    }
    assert_eq!(all.matches("HTTP/1.1 200").count(), 2);
    assert!(
        all.to_ascii_lowercase().contains("connection: close"),
        "{all}"
    );
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn connections_over_the_listener_limit_wait_for_a_free_slot() {
    let o = Origin::named("o").await;
    let p = Portico::with(
        &Config::new()
            .listener_set("max_connections", 2)
            .upstream(Upstream::new("app", [o.addr]))
            .route(Route::to("app").path("/")),
    );
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(p.addr("http")).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    // The third connection is accepted by the kernel but not served while two are open.
    let mut third = TcpStream::connect(p.addr("http")).await.unwrap();
    third
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let early = tokio::time::timeout(Duration::from_millis(400), third.read(&mut buf)).await;
    assert!(early.is_err(), "served beyond max_connections");
    drop(held.pop());
    let n = tokio::time::timeout(Duration::from_secs(3), third.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn malformed_requests_get_400_and_do_not_reach_upstream() {
    let o = Origin::named("o").await;
    let p = Portico::with(
        &Config::new()
            .upstream(Upstream::new("app", [o.addr]))
            .route(Route::to("app").path("/")),
    );
    for req in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    ] {
        let resp = raw(p.addr("http"), req, Duration::from_secs(3)).await;
        assert!(
            resp.starts_with("HTTP/1.1 400"),
            "{:?} -> {resp}",
            String::from_utf8_lossy(req)
        );
    }
    assert_eq!(o.count(), 0);
    // The proxy is still fine.
    assert_eq!(
        client()
            .get(p.url("http", "/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_routes_refuse_streamed_bodies_before_the_app_sees_them() {
    let o = Origin::start("o", |s| {
        Box::pin(async move {
            let te = s.header("transfer-encoding").unwrap_or("-").to_string();
            text(200, &format!("{} {te}", s.body.len()), &[])
        })
    })
    .await;
    let p = Portico::with(
        &Config::new()
            .listener_set("h2c", true)
            .upstream(Upstream::new("app", [o.addr]))
            .route(
                Route::to("app")
                    .path("/")
                    .set("max_body", "1KiB")
                    .set("buffer_requests", true),
            ),
    );
    // HTTP/1.1 chunked, over the limit: 413, and the app saw nothing at all.
    let over = format!(
        "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n{}\r\n400\r\n{}\r\n0\r\n\r\n",
        "a".repeat(1024),
        "b".repeat(1024)
    );
    let out = raw(p.addr("http"), over.as_bytes(), Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    // Under the limit: the app gets the whole body (as the client framed it).
    let under = format!(
        "POST /up HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n1f4\r\n{}\r\n0\r\n\r\n",
        "c".repeat(500)
    );
    let out = raw(p.addr("http"), under.as_bytes(), Duration::from_secs(5)).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("500 chunked"), "{out}");
    // HTTP/2 without a length, over and under the limit.
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for (size, want) in [(3000usize, 413), (700, 200)] {
        let chunks: Vec<Result<hyper::body::Frame<bytes::Bytes>, std::io::Error>> = vec![
            Ok(hyper::body::Frame::data(vec![b'x'; size / 2].into())),
            Ok(hyper::body::Frame::data(vec![b'y'; size - size / 2].into())),
        ];
        let body = reqwest::Body::wrap(http_body_util::StreamBody::new(futures::stream::iter(
            chunks,
        )));
        let r = h2
            .post(p.url("http", "/up"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), want, "h2 {size}");
        if want == 200 {
            assert_eq!(r.text().await.unwrap(), format!("{size} -"));
        }
    }
    assert_eq!(
        o.count(),
        2,
        "only the bodies under the limit reached the app"
    );
}

/// Sends a head announcing `len` body bytes, then `piece` bytes every `every` until the
/// connection answers or closes; returns the answer and how long it took.
async fn trickle(
    addr: std::net::SocketAddr,
    len: usize,
    piece: usize,
    every: Duration,
) -> (String, Duration) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let start = Instant::now();
    s.write_all(
        format!("POST /up HTTP/1.1\r\nHost: a\r\nContent-Length: {len}\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    let mut sent = 0;
    let end = start + Duration::from_secs(30);
    while Instant::now() < end {
        if sent < len && piece > 0 {
            let n = piece.min(len - sent);
            if s.write_all(&vec![b'x'; n]).await.is_err() {
                break;
            }
            sent += n;
        }
        let mut buf = [0u8; 4096];
        match tokio::time::timeout(every, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
        if out.windows(4).any(|w| w == b"\r\n\r\n") {
            // The head is in; read what follows of a short body and stop.
            let _ = tokio::time::timeout(Duration::from_millis(200), s.read_to_end(&mut out)).await;
            break;
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), start.elapsed())
}

/// A body that stops arriving is cut at `body_read_timeout` with a 408; one that trickles
/// (a byte now and then, never a long pause: R.U.D.Y.) is cut by `min_body_rate`; a normal
/// upload on the same listener is untouched. Both are metered by reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_too_slow_bodies_get_408() {
    let origin = Origin::named("app").await;
    let p = Portico::with(
        &Config::new()
            .listener_set("body_read_timeout", "1s")
            .listener_set("min_body_rate", "1KiB")
            .upstream(Upstream::new("app", [origin.addr]))
            .route(Route::to("app").path("/")),
    );
    let addr = p.addr("http");
    // Stalled: 10 bytes of 1000, then nothing.
    let (out, took) = trickle(addr, 1000, 10, Duration::from_secs(20)).await;
    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    assert!(out.contains("body_read_timeout"), "{out}");
    assert!(
        out.to_ascii_lowercase().contains("connection: close"),
        "{out}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Trickling: 50 bytes every 200 ms (250 B/s, below 1 KiB/s), never a 1 s pause.
    let (out, took) = trickle(addr, 100_000, 50, Duration::from_millis(200)).await;
    assert!(out.starts_with("HTTP/1.1 408 "), "{out}");
    assert!(out.contains("min_body_rate"), "{out}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    // A fast upload passes.
    let r = client()
        .post(p.url("http", "/up"))
        .body(vec![b'y'; 4 << 20])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(origin.requests().last().unwrap().body.len(), 4 << 20);
    assert_eq!(rejected(&p, "body_timeout").await, 1.0);
    assert_eq!(rejected(&p, "body_too_slow").await, 1.0);
}

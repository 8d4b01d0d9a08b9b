//! Edge traffic controls through the real binary, with clients on several loopback source
//! addresses (127.0.0.x): IP allow/deny on listeners and routes (behind trusted proxies too),
//! per-route rate limits with their 429 fields, connections per client address, and the
//! PROXY protocol (v1 and v2, plain and TLS) from trusted and untrusted sources.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A client whose connections come from `source`.
fn client_from(source: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .local_address(ip(source))
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// A TCP connection to `to` from `source`.
async fn connect_from(source: &str, to: SocketAddr) -> TcpStream {
    let s = tokio::net::TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(ip(source), 0)).unwrap();
    s.connect(to).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allow_and_deny_on_listeners_and_routes_use_the_real_client_address() {
    let origin = Origin::named("app").await;
    let p = Portico::with(
        &Config::new()
            .server("trusted_proxies", serde_json::json!(["127.0.0.1"]))
            .listener_set("deny", serde_json::json!(["127.0.0.9"]))
            .upstream(Upstream::new("app", [origin.addr]))
            .route(
                Route::to("app")
                    .path("/admin")
                    .set("allow", serde_json::json!(["127.0.0.0/30", "::1"]))
                    .set("deny", serde_json::json!(["127.0.0.2"])),
            )
            .route(Route::to("app")),
    );
    let get = |source: &'static str, path: &'static str, xff: Option<&'static str>| {
        let url = p.url("http", path);
        async move {
            let mut r = client_from(source).get(url);
            if let Some(x) = xff {
                r = r.header("x-forwarded-for", x);
            }
            r.send().await.unwrap().status().as_u16()
        }
    };
    assert_eq!(get("127.0.0.1", "/admin", None).await, 200);
    assert_eq!(get("127.0.0.3", "/admin", None).await, 200);
    assert_eq!(get("127.0.0.2", "/admin", None).await, 403, "deny wins");
    assert_eq!(get("127.0.0.4", "/admin", None).await, 403, "not allowed");
    assert_eq!(get("127.0.0.4", "/", None).await, 200, "another route");
    assert_eq!(
        get("127.0.0.9", "/", None).await,
        403,
        "the listener's deny"
    );
    // Behind the trusted proxy (127.0.0.1) the forwarded address decides.
    assert_eq!(get("127.0.0.1", "/admin", Some("127.0.0.2")).await, 403);
    assert_eq!(get("127.0.0.1", "/", Some("127.0.0.9")).await, 403);
    // From an untrusted peer the header is not believed.
    assert_eq!(get("127.0.0.3", "/admin", Some("127.0.0.1")).await, 200);
    assert_eq!(get("127.0.0.2", "/admin", Some("127.0.0.1")).await, 403);
    assert!(rejected(&p, "ip_denied").await >= 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_over_the_rate_limit_gets_429_for_one_client_and_not_another_then_resets() {
    let origin = Origin::named("app").await;
    let p = Portico::with(
        &Config::new()
            .upstream(Upstream::new("app", [origin.addr]))
            .route(Route::to("app").path("/api/").set(
                "rate_limit",
                serde_json::json!({"requests": 5, "per": "2s"}),
            ))
            .route(Route::to("app").path("/keyed/").set(
                "rate_limit",
                serde_json::json!({"requests": 2, "per": "1m", "key": "header:x-api-key"}),
            ))
            .route(Route::to("app")),
    );
    let a = client_from("127.0.0.2");
    let b = client_from("127.0.0.3");
    let url = p.url("http", "/api/x");
    let mut codes = Vec::new();
    let mut refused = None;
    for _ in 0..8 {
        let r = a.get(&url).send().await.unwrap();
        codes.push(r.status().as_u16());
        if r.status() == 429 {
            refused = Some(r);
            break;
        }
    }
    let ok = codes.iter().filter(|c| **c == 200).count();
    assert!((4..=5).contains(&ok), "{codes:?}");
    let r = refused.expect("a 429 within the burst");
    let h = |n: &str| r.headers().get(n).map(|v| v.to_str().unwrap().to_string());
    let retry: u64 = h("retry-after").unwrap().parse().unwrap();
    assert!((1..=4).contains(&retry), "{retry}");
    assert_eq!(h("ratelimit-limit").as_deref(), Some("5"));
    assert_eq!(h("ratelimit-remaining").as_deref(), Some("0"));
    assert_eq!(h("ratelimit-policy").as_deref(), Some("5;w=2"));
    assert!(h("ratelimit-reset").is_some());
    assert!(r.text().await.unwrap().contains("rate limit"));
    // Another client address is not affected.
    assert_eq!(b.get(&url).send().await.unwrap().status(), 200);
    // Nor another route.
    assert_eq!(
        a.get(p.url("http", "/other"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // After Retry-After the first client gets through again.
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(a.get(&url).send().await.unwrap().status(), 200);
    assert!(rejected(&p, "rate_limited").await >= 1.0);

    // Keyed by a header: two keys from one address are counted apart; without the header the
    // address is the key.
    let keyed = p.url("http", "/keyed/");
    let send = |key: Option<&'static str>| {
        let r = a.get(&keyed);
        let r = match key {
            Some(k) => r.header("x-api-key", k),
            None => r,
        };
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(send(Some("k1")).await, 200);
    assert_eq!(send(Some("k1")).await, 200);
    assert_eq!(send(Some("k1")).await, 429);
    assert_eq!(send(Some("k2")).await, 200);
    assert_eq!(send(None).await, 200);
    assert_eq!(send(None).await, 200);
    assert_eq!(send(None).await, 429);
}

/// Many distinct clients under parallel load: every one of them gets exactly its quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_clients_each_get_exactly_their_quota() {
    let origin = Origin::named("app").await;
    let p = Portico::with(
        &Config::new()
            .server("trusted_proxies", serde_json::json!(["127.0.0.1"]))
            .upstream(Upstream::new("app", [origin.addr]))
            .route(Route::to("app").set(
                "rate_limit",
                serde_json::json!({"requests": 20, "per": "1m"}),
            )),
    );
    let url = p.url("http", "/");
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..50u32 {
        let (c, url) = (c.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let me = format!("10.1.{}.{}", i / 200, i % 200 + 1);
            let mut ok = 0;
            for _ in 0..30 {
                let r = c
                    .get(&url)
                    .header("x-forwarded-for", &me)
                    .send()
                    .await
                    .unwrap();
                if r.status() == 200 {
                    ok += 1;
                }
            }
            ok
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 20);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_client_address_are_capped() {
    let origin = Origin::named("app").await;
    let p = Portico::with(
        &Config::new()
            .listener_set("max_connections_per_ip", 2)
            .upstream(Upstream::new("app", [origin.addr])),
    );
    let addr = p.addr("http");
    let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect_from("127.0.0.2", addr).await;
        s.write_all(req).await.unwrap();
        assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
        held.push(s);
    }
    // A third from the same address is closed without an answer.
    let mut third = connect_from("127.0.0.2", addr).await;
    let _ = third.write_all(req).await;
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), third.read_to_end(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf));
    // Another address is fine.
    let mut other = connect_from("127.0.0.3", addr).await;
    other.write_all(req).await.unwrap();
    assert!(read_response(&mut other).await.starts_with("HTTP/1.1 200"));
    // Closing one frees a slot.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut s = connect_from("127.0.0.2", addr).await;
        let _ = s
            .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut out)).await;
        if out.starts_with(b"HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was not freed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(rejected(&p, "connections_per_ip").await >= 1.0);
}

/// The connection ends without a byte of answer.
async fn assert_closed_unanswered(s: &mut TcpStream) {
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    assert!(buf.is_empty(), "{}", String::from_utf8_lossy(&buf));
}

fn v2_header(src: &str, dst: SocketAddr) -> Vec<u8> {
    ppp_v2(src.parse().unwrap(), dst)
}

/// A PROXY v2 header by hand (the signature, version/command, family, length, addresses).
fn ppp_v2(src: SocketAddr, dst: SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            h.push(0x11); // TCP over IPv4
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&s.ip().octets());
            h.extend_from_slice(&d.ip().octets());
            h.extend_from_slice(&s.port().to_be_bytes());
            h.extend_from_slice(&d.port().to_be_bytes());
        }
        _ => panic!("IPv4 only here"),
    }
    h
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v1_and_v2_from_trusted_sources_only() {
    let origin = Origin::named("app").await;
    let pki = Pki::new();
    let config = Config::new()
        .listener_set("proxy_protocol", true)
        .listener_set("proxy_protocol_from", ["127.0.0.1"])
        .listener(
            Listener::http("https")
                .set("proxy_protocol", true)
                .set("proxy_protocol_from", ["127.0.0.1"])
                .set(
                    "tls",
                    serde_json::json!({ "cert": "a.pem", "key": "a.key" }),
                ),
        )
        .upstream(Upstream::new("app", [origin.addr]))
        .route(Route::to("app").set("deny", ["198.51.100.66"]))
        .render();
    let p = Portico::start_with(&config, &[], |dir| {
        pki.leaf(dir, "a", &["a.test"]);
    });
    let http = p.addr("http");
    let xff_of_last = || {
        origin
            .requests()
            .last()
            .and_then(|r| r.header("x-forwarded-for").map(str::to_string))
    };

    // v1 from the trusted balancer.
    let mut s = connect_from("127.0.0.1", http).await;
    s.write_all(b"PROXY TCP4 203.0.113.7 127.0.0.1 51000 80\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    assert_eq!(xff_of_last().as_deref(), Some("203.0.113.7"));
    // The connection stays usable (keep-alive) with the same client.
    s.write_all(b"GET /again HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    assert_eq!(xff_of_last().as_deref(), Some("203.0.113.7"));

    // v2, and the real client address is what IP rules see.
    let mut s = connect_from("127.0.0.1", http).await;
    let mut msg = v2_header("198.51.100.66:4000", http);
    msg.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(&msg).await.unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 403"));

    // v2 in front of TLS.
    let mut tcp = connect_from("127.0.0.1", p.addr("https")).await;
    tcp.write_all(&v2_header("192.0.2.44:5555", p.addr("https")))
        .await
        .unwrap();
    let mut tls = tls_connector(&pki.ca_pem)
        .connect("a.test".try_into().unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /tls HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    assert!(String::from_utf8_lossy(&out).starts_with("HTTP/1.1 200"));
    assert_eq!(xff_of_last().as_deref(), Some("192.0.2.44"));

    // The trusted balancer without a header: refused.
    let mut s = connect_from("127.0.0.1", http).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_closed_unanswered(&mut s).await;

    // An untrusted source claiming an address: refused; speaking plain HTTP: served as itself.
    let mut s = connect_from("127.0.0.2", http).await;
    s.write_all(b"PROXY TCP4 10.9.9.9 127.0.0.1 1 80\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert_closed_unanswered(&mut s).await;
    let mut s = connect_from("127.0.0.2", http).await;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    assert_eq!(xff_of_last().as_deref(), Some("127.0.0.2"));
    assert_eq!(rejected(&p, "proxy_protocol_untrusted").await, 1.0);
    assert_eq!(rejected(&p, "proxy_protocol_missing").await, 1.0);
}

/// `send_proxy_protocol` on an upstream: every connection to it starts with the client's
/// address (v1 or v2), from Portico's HTTP/1.1 engine and from pingora's HTTP/2 path, and a
/// connection carrying one client is not reused for another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_proxy_protocol_is_sent_to_upstreams_that_ask() {
    let o = RawOrigin::start(|_| {
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-type: text/plain\r\n\r\nok".to_vec()
    })
    .await;
    let config = Config::new()
        .listener_set("h2c", true)
        .upstream(Upstream::new("v1", [o.addr]).set("send_proxy_protocol", "v1"))
        .upstream(Upstream::new("v2", [o.addr]).set("send_proxy_protocol", "v2"))
        .route(Route::to("v2").path("/v2/"))
        .route(Route::to("v1"))
        .render();
    let p = Portico::start(&config);
    let addr = p.addr("http");

    // Two requests on one client connection from 127.0.0.2, then one from 127.0.0.3.
    let mut s = connect_from("127.0.0.2", addr).await;
    let client_port = s.local_addr().unwrap().port();
    for _ in 0..2 {
        s.write_all(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        assert!(read_response(&mut s).await.starts_with("HTTP/1.1 200"));
    }
    let mut other = connect_from("127.0.0.3", addr).await;
    other
        .write_all(b"GET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(read_response(&mut other).await.starts_with("HTTP/1.1 200"));
    let seen: Vec<String> = o
        .requests()
        .iter()
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect();
    let want_a = format!(
        "PROXY TCP4 127.0.0.2 127.0.0.1 {client_port} {}\r\nGET /a ",
        addr.port()
    );
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen[0].starts_with(&want_a), "{seen:?}");
    assert!(
        seen[1].starts_with(&want_a),
        "a new connection, announced again: {seen:?}"
    );
    assert!(
        seen[2].starts_with("PROXY TCP4 127.0.0.3 127.0.0.1 "),
        "{seen:?}"
    );

    // v2, from an HTTP/2 client (pingora's path).
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .local_address(ip("127.0.0.4"))
        .build()
        .unwrap();
    let r = h2.get(p.url("http", "/v2/x")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // The test origin cuts "requests" at blank lines, and the v2 signature starts with one:
    // look at the bytes as sent.
    let all: Vec<u8> = o.requests().concat();
    let at = all
        .windows(12)
        .position(|w| w == b"\r\n\r\n\0\r\nQUIT\n")
        .expect("a v2 signature");
    let last = &all[at..];
    assert_eq!(last[12], 0x21);
    assert_eq!(last[13], 0x11);
    assert_eq!(&last[16..20], &[127, 0, 0, 4]);
    assert_eq!(&last[20..24], &[127, 0, 0, 1]);
    assert!(String::from_utf8_lossy(&last[28..]).starts_with("GET /v2/x "));
}

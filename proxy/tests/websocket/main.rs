//! WebSockets and sticky affinity through the real binary: echo of every frame kind, close
//! codes both ways, cookie pins that survive reconnects and move when their backend dies,
//! consistent hashing that moves few keys, long-polling affinity, the admission cap, idle
//! timeouts and graceful shutdown.

#![allow(clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;
mod lifecycle;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::dns::TestDns;
use common::*;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket server that greets each connection with its id, echoes data frames, closes
/// with code 4002 when told "close-me", and reports the close code a client sent.
struct WsServer {
    id: String,
    addr: SocketAddr,
    closes: std::sync::Arc<std::sync::Mutex<Vec<u16>>>,
    task: tokio::task::JoinHandle<()>,
}

impl WsServer {
    async fn start(id: &str) -> WsServer {
        Self::start_on("127.0.0.1:0", id).await
    }

    async fn start_on(addr: &str, id: &str) -> WsServer {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let closes = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (id2, closes2) = (id.to_string(), closes.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (id, closes) = (id2.clone(), closes2.clone());
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                        return;
                    };
                    if ws
                        .send(Message::text(format!("hello from {id}")))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    while let Some(Ok(m)) = ws.next().await {
                        if m.is_text() && m.to_text().ok() != Some("close-me") || m.is_binary() {
                            if ws.send(m).await.is_err() {
                                return;
                            }
                            continue;
                        }
                        match m {
                            Message::Text(_) => {
                                let _ = ws
                                    .close(Some(CloseFrame {
                                        code: CloseCode::from(4002),
                                        reason: "server says bye".into(),
                                    }))
                                    .await;
                            }
                            Message::Close(f) => {
                                closes
                                    .lock()
                                    .unwrap()
                                    .push(f.map_or(1005, |f| u16::from(f.code)));
                            }
                            _ => {}
                        }
                    }
                });
            }
        });
        WsServer {
            id: id.to_string(),
            addr,
            closes,
            task,
        }
    }

    fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for WsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects through Portico with extra headers; returns the socket, the greeting and the
/// `Set-Cookie` of the handshake.
async fn connect(url: &str, headers: &[(&str, &str)]) -> (Ws, String, Option<String>) {
    let mut req = url.into_client_request().unwrap();
    for (k, v) in headers {
        req.headers_mut().insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let (mut ws, resp) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::connect_async(req),
    )
    .await
    .expect("handshake in time")
    .expect("handshake");
    let cookie = resp
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().unwrap().to_string());
    let hello = match ws.next().await {
        Some(Ok(Message::Text(t))) => t.to_string(),
        other => panic!("no greeting: {other:?}"),
    };
    (ws, hello, cookie)
}

fn cookie_pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_string()
}

fn ws_url(p: &Portico, path: &str) -> String {
    format!("ws://{}{path}", p.addr("http"))
}

/// Upstream `app` over `backends` (ids `b0`, `b1`, ...) behind one route shaped by `f`.
fn config(backends: &[SocketAddr], f: impl FnOnce(Route) -> Route) -> Config {
    let list = backends
        .iter()
        .enumerate()
        .map(|(i, a)| serde_json::json!({ "address": a.to_string(), "id": format!("b{i}") }))
        .collect();
    Config::new()
        .upstream(Upstream::with_backends("app", list).set("connect_timeout", "1s"))
        .route(f(Route::to("app")))
}

#[tokio::test]
async fn frames_of_every_kind_and_close_codes_pass_both_ways() {
    let s = WsServer::start("a").await;
    let p = Portico::with(&config(&[s.addr], |r| r));
    let (mut ws, hello, _) = connect(&ws_url(&p, "/chat"), &[]).await;
    assert_eq!(hello, "hello from a");

    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2, 255])
    );
    // A large message crosses many reads and writes.
    let big: Vec<u8> = (0..3 * 1024 * 1024).map(|i| (i % 253) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(big));
    // Ping is answered by the server's pong, through the proxy.
    ws.send(Message::Ping(b"p1".to_vec().into())).await.unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Pong(p) => assert_eq!(&p[..], b"p1"),
        other => panic!("expected pong, got {other:?}"),
    }
    assert_eq!(
        metric(&p, "portico_websockets_open", &[("route", "*/")]).await,
        1.0
    );
    // The client closes with 4001: the server sees 4001.
    ws.close(Some(CloseFrame {
        code: CloseCode::from(4001),
        reason: "client bye".into(),
    }))
    .await
    .unwrap();
    while ws.next().await.is_some() {}
    let start = Instant::now();
    while s.closes.lock().unwrap().is_empty() && start.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(*s.closes.lock().unwrap(), vec![4001]);

    // The server closes with 4002: the client sees 4002.
    let (mut ws, _, _) = connect(&ws_url(&p, "/chat"), &[]).await;
    ws.send(Message::text("close-me")).await.unwrap();
    let mut code = None;
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Close(f) = m {
            code = f.map(|f| u16::from(f.code));
        }
    }
    assert_eq!(code, Some(4002));
    wait_metric(&p, "portico_websockets_open", &[("route", "*/")], 0.0).await;
    assert_eq!(
        metric(&p, "portico_websockets_total", &[("route", "*/")]).await,
        2.0
    );
    assert!(
        metric(
            &p,
            "portico_websocket_bytes_total",
            &[("route", "*/"), ("direction", "in")]
        )
        .await
            > 3.0 * 1024.0 * 1024.0
    );
}

#[tokio::test]
async fn cookie_affinity_survives_reconnects_and_moves_when_its_backend_dies() {
    let servers = [
        WsServer::start("a").await,
        WsServer::start("b").await,
        WsServer::start("c").await,
    ];
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.addr).collect();
    let p = Portico::with(&config(&addrs, |r| {
        r.set("sticky", serde_json::json!({"mode": "cookie", "name": "aff", "key": "0123456789abcdef0123456789abcdef", "max_age": "1h"}))
    }));
    let url = ws_url(&p, "/live");
    let (_ws, hello, set) = connect(&url, &[]).await;
    let set = set.expect("first connection is pinned");
    assert!(set.starts_with("aff="), "{set}");
    assert!(
        set.contains("Max-Age=3600") && set.contains("HttpOnly") && set.contains("SameSite=Lax"),
        "{set}"
    );
    let pinned = hello.clone();
    let cookie = cookie_pair(&set);
    // 100 reconnects with the cookie: one backend, no new cookie.
    for i in 0..100 {
        let (mut ws, hello, set) = connect(&url, &[("cookie", &cookie)]).await;
        assert_eq!(hello, pinned, "reconnect {i}");
        assert_eq!(set, None, "reconnect {i} was re-pinned");
        let _ = ws.close(None).await;
    }
    // A tampered cookie is ignored: the connection works and is pinned afresh.
    // Flip one character of the sealed value.
    let eq_pos = cookie.find('=').unwrap();
    let mut forged = cookie.clone().into_bytes();
    let i = eq_pos + 5;
    forged[i] = if forged[i] == b'A' { b'B' } else { b'A' };
    let forged = String::from_utf8(forged).unwrap();
    let (_ws2, _, set2) = connect(&url, &[("cookie", &forged)]).await;
    assert!(set2.is_some(), "a tampered cookie gets a fresh pin");
    let (_ws3, _, set3) = connect(&url, &[("cookie", "aff=garbage")]).await;
    assert!(set3.is_some());

    // The pinned backend dies: the next connection moves and gets a new cookie.
    let idx = servers
        .iter()
        .position(|s| hello == format!("hello from {}", s.id))
        .unwrap();
    servers[idx].stop();
    drop(_ws);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_ws4, hello4, set4) = connect(&url, &[("cookie", &cookie)]).await;
    assert_ne!(hello4, pinned);
    let new_cookie = cookie_pair(&set4.expect("moved clients get a new cookie"));
    assert_ne!(new_cookie, cookie);
    for _ in 0..10 {
        let (_ws, hello, set) = connect(&url, &[("cookie", &new_cookie)]).await;
        assert_eq!(hello, hello4);
        assert_eq!(set, None);
    }
    assert!(metric(&p, "portico_sticky_total", &[("outcome", "hit")]).await >= 110.0);
    assert!(metric(&p, "portico_sticky_total", &[("outcome", "invalid")]).await >= 2.0);
    assert!(metric(&p, "portico_sticky_total", &[("outcome", "moved")]).await >= 1.0);
}

#[tokio::test]
async fn long_polling_http_requests_keep_cookie_affinity() {
    let origins = [
        Origin::named("a").await,
        Origin::named("b").await,
        Origin::named("c").await,
    ];
    let addrs: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
    let p = Portico::with(&config(&addrs, |r| {
        r.set(
            "sticky",
            serde_json::json!({"mode": "cookie", "key": "0123456789abcdef0123456789abcdef"}),
        )
    }));
    let c = client();
    for _ in 0..5 {
        let r = c.get(p.url("http", "/poll")).send().await.unwrap();
        let set = r.headers()["set-cookie"].to_str().unwrap().to_string();
        assert!(set.starts_with("portico_affinity_app="), "{set}");
        let cookie = cookie_pair(&set);
        let first = r.text().await.unwrap();
        for _ in 0..20 {
            let r = c
                .get(p.url("http", "/poll"))
                .header("cookie", format!("other=1; {cookie}"))
                .send()
                .await
                .unwrap();
            assert!(r.headers().get("set-cookie").is_none());
            assert_eq!(r.text().await.unwrap(), first);
        }
    }
}

#[tokio::test]
async fn cookie_routes_to_two_upstreams_on_one_host_keep_their_pins() {
    // A socket.io-style app on `/` and an API on `/api`, both cookie-sticky, one host.
    let apps = [Origin::named("app-a").await, Origin::named("app-b").await];
    let apis = [Origin::named("api-a").await, Origin::named("api-b").await];
    let list = |o: &[Origin; 2]| [o[0].addr, o[1].addr];
    let p = Portico::start(
        &Config::new()
            .upstream(Upstream::new("app", list(&apps)))
            .upstream(Upstream::new("api", list(&apis)))
            .route(Route::to("app").path("/").set(
                "sticky",
                serde_json::json!({ "mode": "cookie", "key": "0123456789abcdef0123456789abcdef" }),
            ))
            .route(Route::to("api").path("/api").set(
                "sticky",
                serde_json::json!({ "mode": "cookie", "key": "0123456789abcdef0123456789abcdef" }),
            ))
            .render(),
    );
    let c = client();
    let mut jar: Vec<String> = Vec::new();
    let get = async |path: &str, jar: &mut Vec<String>| {
        let r = c
            .get(p.url("http", path))
            .header("cookie", jar.join("; "))
            .send()
            .await
            .unwrap();
        let set: Vec<String> = r
            .headers()
            .get_all("set-cookie")
            .iter()
            .map(|v| cookie_pair(v.to_str().unwrap()))
            .collect();
        for s in &set {
            let name = s.split('=').next().unwrap().to_string();
            jar.retain(|c| !c.starts_with(&format!("{name}=")));
            jar.push(s.clone());
        }
        (r.text().await.unwrap(), set)
    };
    let (app, set) = get("/socket", &mut jar).await;
    assert_eq!(set.len(), 1);
    assert!(set[0].starts_with("portico_affinity_app="), "{set:?}");
    let (api, set) = get("/api/x", &mut jar).await;
    assert!(set[0].starts_with("portico_affinity_api="), "{set:?}");
    for _ in 0..20 {
        let (a, set) = get("/socket", &mut jar).await;
        assert_eq!((a.as_str(), set.len()), (app.as_str(), 0));
        let (b, set) = get("/api/x", &mut jar).await;
        assert_eq!((b.as_str(), set.len()), (api.as_str(), 0));
    }
    // The values are opaque: no backend address, in text or hex.
    for pair in &jar {
        let value = pair.split_once('=').unwrap().1;
        for o in apps.iter().chain(&apis) {
            let addr = o.addr.to_string();
            let hex: String = addr.bytes().map(|b| format!("{b:02x}")).collect();
            assert!(!value.contains(&addr) && !value.contains(&hex), "{pair}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_affinity_moves_only_the_keys_of_a_backend_that_leaves() {
    // Ten backends on 127.0.0.10-19, one port, found through DNS so one can leave and return.
    let origins: Vec<Origin> = 'retry: loop {
        let first = Origin::named("o10").await;
        let first = {
            let port = first.addr.port();
            drop(first);
            port
        };
        let mut out = Vec::new();
        for i in 10..20 {
            let addr = format!("127.0.0.{i}:{first}");
            if std::net::TcpListener::bind(&addr).is_err() {
                continue 'retry;
            }
            let name = format!("o{i}");
            let n2 = name.clone();
            out.push(
                Origin::start_on(&addr, &name, move |_| {
                    let n = n2.clone();
                    Box::pin(async move { text(200, &n, &[]) })
                })
                .await,
            );
        }
        break out;
    };
    let port = origins[0].addr.port();
    let ips: Vec<IpAddr> = origins.iter().map(|o| o.addr.ip()).collect();
    let dns = TestDns::start().await;
    dns.set_ips("app.test", &ips, 1);
    let p = Portico::start(
        &Config::new()
            .section("dns", "servers", serde_json::json!([dns.addr.to_string()]))
            .section("dns", "min_ttl", "200ms")
            .upstream(Upstream::named("app").set(
                "discovery",
                serde_json::json!({ "dns": "app.test", "port": port }),
            ))
            .route(Route::to("app").set(
                "sticky",
                serde_json::json!({ "mode": "header", "name": "x-user" }),
            ))
            .render(),
    );
    let keys: Vec<String> = (0..10_000).map(|k| format!("user-{k}")).collect();
    let map_keys = |keys: Vec<String>| {
        let url = p.url("http", "/");
        async move {
            let c = client();
            futures::stream::iter(keys.into_iter().map(|k| {
                let (c, url) = (c.clone(), url.clone());
                async move {
                    let r = c.get(url).header("x-user", &k).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    (k, r.text().await.unwrap())
                }
            }))
            .buffer_unordered(32)
            .collect::<HashMap<String, String>>()
            .await
        }
    };
    let before = map_keys(keys.clone()).await;
    // Every backend got a share.
    let mut per: HashMap<&str, usize> = HashMap::new();
    for v in before.values() {
        *per.entry(v.as_str()).or_default() += 1;
    }
    assert_eq!(per.len(), 10, "{per:?}");

    // o15 leaves.
    let gone = "o15";
    let fewer: Vec<IpAddr> = ips
        .iter()
        .copied()
        .filter(|ip| ip.to_string() != "127.0.0.15")
        .collect();
    dns.set_ips("app.test", &fewer, 1);
    let start = Instant::now();
    loop {
        if metric(&p, "portico_upstream_backends", &[("upstream", "app")]).await == 9.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "backend not removed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = map_keys(keys.clone()).await;
    let moved: Vec<&String> = keys.iter().filter(|k| before[*k] != after[*k]).collect();
    assert!(moved.len() <= 1500, "{} of 10000 keys moved", moved.len());
    assert!(
        moved.iter().all(|k| before[*k] == gone),
        "only keys of the removed backend move"
    );
    assert_eq!(moved.len(), per[gone]);

    // It returns: its keys move back.
    dns.set_ips("app.test", &ips, 1);
    let start = Instant::now();
    loop {
        if metric(&p, "portico_upstream_backends", &[("upstream", "app")]).await == 10.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "backend not re-added"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let back = map_keys(keys.clone()).await;
    assert_eq!(back, before);
}

#[tokio::test]
async fn query_and_client_ip_modes_pin_requests() {
    let origins = [
        Origin::named("a").await,
        Origin::named("b").await,
        Origin::named("c").await,
    ];
    let addrs: Vec<SocketAddr> = origins.iter().map(|o| o.addr).collect();
    let p = Portico::with(&config(&addrs, |r| {
        r.set(
            "sticky",
            serde_json::json!({"mode": "query", "name": "sid"}),
        )
    }));
    let c = client();
    let mut seen = std::collections::HashSet::new();
    for k in 0..30 {
        let url = p.url(
            "http",
            &format!("/socket.io/?EIO=4&sid=s{k}&transport=polling"),
        );
        let first = c.get(&url).send().await.unwrap().text().await.unwrap();
        seen.insert(first.clone());
        for _ in 0..5 {
            assert_eq!(
                c.get(&url).send().await.unwrap().text().await.unwrap(),
                first
            );
        }
    }
    assert!(seen.len() > 1, "keys spread over backends");

    let p = Portico::with(&config(&addrs, |r| {
        r.set("sticky", serde_json::json!({"mode": "client_ip"}))
    }));
    let first = c
        .get(p.url("http", "/"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for _ in 0..20 {
        assert_eq!(
            c.get(p.url("http", "/"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
            first
        );
    }
}

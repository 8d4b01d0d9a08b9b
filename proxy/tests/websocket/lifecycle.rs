//! Tunnels over time: the admission cap, idle timeouts, graceful shutdown, relay buffers, the access log line, reloads.

use super::*;

#[tokio::test]
async fn admission_cap_refuses_at_the_limit_and_accepts_after_a_close() {
    let s = WsServer::start("a").await;
    let p = Portico::with(&config(&[s.addr], |r| r.set("max_websockets", 2)));
    let url = ws_url(&p, "/");
    let (mut w1, _, _) = connect(&url, &[]).await;
    let (_w2, _, _) = connect(&url, &[]).await;
    let err = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status(), 503);
            assert_eq!(resp.headers()["retry-after"], "1");
            // tungstenite may not read the body; the reason is checked in Portico's log.
        }
        other => panic!("expected a 503, got {other:?}"),
    }
    assert_eq!(
        metric(
            &p,
            "portico_http_rejected_total",
            &[("reason", "websocket_limit")]
        )
        .await,
        1.0
    );
    // Plain requests are not counted.
    let r = client().get(p.url("http", "/")).send().await.unwrap();
    assert_ne!(r.status(), 503);
    w1.close(None).await.unwrap();
    while w1.next().await.is_some() {}
    wait_metric(&p, "portico_websockets_open", &[], 1.0).await;
    let (_w3, hello, _) = connect(&url, &[]).await;
    assert_eq!(hello, "hello from a");
}

#[tokio::test]
async fn idle_sockets_outlive_the_upstream_read_timeout() {
    let s = WsServer::start("a").await;
    let p = Portico::start(
        &Config::new()
            .upstream(Upstream::new("app", [s.addr]).set("read_timeout", "300ms"))
            .route(Route::to("app"))
            .render(),
    );
    let (mut ws, _, _) = connect(&ws_url(&p, "/"), &[]).await;
    // A request's read timeout does not apply to a tunnel: silence is normal there.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    ws.send(Message::text("still open")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("still open")
    );
}

#[tokio::test]
async fn idle_sockets_live_until_ws_idle_timeout() {
    let s = WsServer::start("a").await;
    let p = Portico::with(&config(&[s.addr], |r| r.set("ws_idle_timeout", "700ms")));
    let (mut ws, _, _) = connect(&ws_url(&p, "/"), &[]).await;
    // Traffic keeps it open past the timeout.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        ws.send(Message::text("x")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("x"));
    }
    // Silence closes it, with a closing handshake on both sides (1001, going away), not a
    // cut connection.
    let start = Instant::now();
    let mut code = None;
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(f) = m {
                code = f.map(|f| u16::from(f.code));
            }
        }
    })
    .await;
    assert!(end.is_ok(), "idle socket was not closed");
    let idle = start.elapsed();
    assert!(idle >= Duration::from_millis(600), "closed after {idle:?}");
    assert_eq!(code, Some(1001), "the client got a close frame");
    let t = Instant::now();
    while s.closes.lock().unwrap().is_empty() && t.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        s.closes.lock().unwrap().as_slice(),
        [1001],
        "the server got one"
    );
}

#[tokio::test]
async fn graceful_shutdown_leaves_sockets_open_then_closes_them_with_close_frames() {
    let s = WsServer::start("a").await;
    let mut p = Portico::with(&config(&[s.addr], |r| r).server("shutdown_timeout", "1s"));
    let (mut ws, _, _) = connect(&ws_url(&p, "/"), &[]).await;
    p.signal("TERM");
    // Open sockets are left to finish: still usable during the grace period.
    tokio::time::sleep(Duration::from_millis(200)).await;
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("still here")
    );
    // At the shutdown timeout both peers get a close frame (1001, going away): the server
    // from Portico, the client from the server's answer.
    let start = Instant::now();
    let mut code = None;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(f) = m {
                code = f.map(|f| u16::from(f.code));
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "socket still open after the shutdown timeout"
    );
    assert_eq!(code, Some(1001));
    assert!(start.elapsed() < Duration::from_secs(3));
    let (status, _) = p.wait_exit(Duration::from_secs(5));
    assert_eq!(status, Some(0));
    let t = Instant::now();
    while s.closes.lock().unwrap().is_empty() && t.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(*s.closes.lock().unwrap(), vec![1001]);
}

/// Opens a WebSocket over TLS through Portico, trusting `ca_pem`, and reads the greeting.
type TlsWs =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

async fn connect_tls(addr: SocketAddr, pki: &Pki) -> TlsWs {
    let tls = pki.tls_connect(addr, "ws.test").await;
    let url = format!("wss://ws.test:{}/", addr.port());
    let (mut ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async(url, tls),
    )
    .await
    .expect("handshake in time")
    .expect("handshake");
    match ws.next().await {
        Some(Ok(Message::Text(t))) => assert_eq!(t.as_str(), "hello from a"),
        other => panic!("no greeting: {other:?}"),
    }
    ws
}

/// Sends one message on every socket at once and reads each echo.
async fn echo_all<S>(socks: &mut [tokio_tungstenite::WebSocketStream<S>], round: usize)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let all = socks.iter_mut().enumerate().map(|(i, ws)| async move {
        let msg = format!("round {round} socket {i}");
        ws.send(Message::text(msg.clone())).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(msg));
    });
    futures::future::join_all(all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_tunnels_hold_no_relay_buffers_over_tcp_and_a_small_one_over_tls() {
    const PLAIN: usize = 150;
    const TLS: usize = 50;
    let s = WsServer::start("a").await;
    let pki = Pki::new();
    let cfg = config(&[s.addr], |r| r)
        .listener(Listener::tls("https", &[("ws.pem", "ws.key")]))
        .render();
    let p = Portico::start_with(&cfg, &[], |dir| {
        pki.leaf(dir, "ws", &["ws.test"]);
    });
    let buffers = || metric(&p, "portico_websocket_buffer_bytes", &[]);
    let url = ws_url(&p, "/");
    for round in 0..3 {
        // Opened in parallel, greeted (bytes went through every tunnel), then left idle.
        let mut plain: Vec<Ws> = futures::future::join_all((0..PLAIN).map(|_| {
            let url = url.clone();
            async move { connect(&url, &[]).await.0 }
        }))
        .await;
        wait_metric(&p, "portico_websockets_open", &[], PLAIN as f64).await;
        // The bound, not a timing: a tunnel may still be handing its last buffer back when
        // the client has read the bytes, so the gauge gets a moment (up to 5 s) to settle.
        wait_metric(&p, "portico_websocket_buffer_bytes", &[], 0.0).await;
        // Traffic on every tunnel at once takes buffers only while it is in flight.
        echo_all(&mut plain, round).await;
        wait_metric(&p, "portico_websocket_buffer_bytes", &[], 0.0).await;

        let mut tls: Vec<TlsWs> =
            futures::future::join_all((0..TLS).map(|_| connect_tls(p.addr("https"), &pki))).await;
        echo_all(&mut tls, round).await;
        wait_metric(&p, "portico_websockets_open", &[], (PLAIN + TLS) as f64).await;
        // A TLS read waits with a 2 KiB buffer: one per idle TLS tunnel, none for plain.
        let settle = std::time::Instant::now() + Duration::from_secs(5);
        let mut held = buffers().await;
        while held > (TLS * 2048) as f64 && std::time::Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(20)).await;
            held = buffers().await;
        }
        assert!(
            held <= (TLS * 2048) as f64,
            "round {round}: {held} bytes held by {TLS} idle TLS tunnels"
        );
        for ws in plain.iter_mut() {
            ws.close(None).await.unwrap();
            while ws.next().await.is_some() {}
        }
        for ws in tls.iter_mut() {
            ws.close(None).await.unwrap();
            while ws.next().await.is_some() {}
        }
        wait_metric(&p, "portico_websockets_open", &[], 0.0).await;
        wait_metric(&p, "portico_websocket_buffer_bytes", &[], 0.0).await;
    }
    // Every tunnel's end was recorded once: 101s counted and logged when they closed.
    let rounds = 3.0 * (PLAIN + TLS) as f64;
    assert_eq!(
        metric(&p, "portico_websockets_total", &[("route", "*/")]).await,
        rounds
    );
    assert_eq!(
        metric(&p, "portico_http_requests_total", &[("status", "1xx")]).await,
        rounds
    );
    assert_eq!(
        metric(&p, "portico_http_requests_in_flight", &[]).await,
        0.0
    );
}

#[tokio::test]
async fn a_tunnel_is_logged_when_it_closes_with_its_bytes_and_lifetime() {
    let s = WsServer::start("a").await;
    let p = Portico::with(&config(&[s.addr], |r| r).server("log_format", "json"));
    let (mut ws, _, _) = connect(
        &ws_url(&p, "/live?room=7"),
        &[("x-request-id", "ws-log-me"), ("user-agent", "ws-test/1")],
    )
    .await;
    ws.send(Message::text("0123456789")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("0123456789")
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Nothing is logged while the tunnel is open.
    assert!(!p.stdout_lines().iter().any(|l| l.contains("ws-log-me")));
    ws.close(None).await.unwrap();
    while ws.next().await.is_some() {}
    let line = p.wait_stdout("ws-log-me", Duration::from_secs(5)).await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["status"], 101);
    assert_eq!(v["upstream_status"], 101);
    assert_eq!(v["path"], "/live");
    assert_eq!(v["query"], "room=7");
    assert_eq!(v["user_agent"], "ws-test/1");
    assert_eq!(v["backend"], s.addr.to_string());
    // Greeting (14-byte frame) + echo (12) + the server's close frame, at least.
    assert!(v["bytes"].as_u64().unwrap() >= 26, "{v}");
    assert!(v["duration_ms"].as_f64().unwrap() >= 300.0, "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_tunnels_carry_traffic_across_twenty_reloads_while_new_ones_open() {
    const OPEN: usize = 40;
    let s = WsServer::start("a").await;
    let cfg = |tag: &str| {
        config(&[s.addr], |r| {
            r.set("max_websockets", 2 * OPEN).set(
                "response_headers",
                serde_json::json!({ "set": { "x-config": tag } }),
            )
        })
        .render()
    };
    let p = Portico::start(&cfg("A"));
    let url = ws_url(&p, "/");
    let mut socks: Vec<Ws> = futures::future::join_all((0..OPEN).map(|_| {
        let url = url.clone();
        async move { connect(&url, &[]).await.0 }
    }))
    .await;
    for round in 0..20 {
        let tag = if round % 2 == 0 { "B" } else { "A" };
        std::fs::write(&p.config_path, cfg(tag)).unwrap();
        let r = client().post(p.admin_url("/reload")).send().await.unwrap();
        assert_eq!(r.status(), 200, "reload {round}");
        // Every tunnel opened before still relays both ways, while a new one opens and
        // closes on the new config (and the admission count stays exact across reloads).
        let (_, (mut fresh, _, _)) = tokio::join!(echo_all(&mut socks, round), connect(&url, &[]));
        fresh.close(None).await.unwrap();
        while fresh.next().await.is_some() {}
        wait_metric(&p, "portico_websockets_open", &[], OPEN as f64).await;
    }
    for ws in socks.iter_mut() {
        ws.close(None).await.unwrap();
        while ws.next().await.is_some() {}
    }
    wait_metric(&p, "portico_websockets_open", &[], 0.0).await;
}

//! Replays of large bodies, over HTTP/2 and TLS, of WebSocket upgrades, and to instances discovery has not seen yet.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_too_large_to_replay() {
    let c = cluster().await;
    let c2 = Cluster {
        p: Portico::start(
            &std::fs::read_to_string(&c.p.config_path)
                .unwrap()
                .replace("[dns]", "[replay]\nmax_body = \"100KiB\"\n\n[dns]"),
        ),
        dns: TestDns::start().await,
        origins: HashMap::new(),
    };
    let _ = &c2.dns;
    let (status, _, text) = c2
        .send(
            "POST",
            "/",
            &[
                ("x-replay-from-a1", "region=iad"),
                ("x-replay-from-a2", "region=iad"),
            ],
            vec![7u8; 200 * 1024],
        )
        .await;
    assert_eq!(status, 413, "{text}");
    assert!(
        text.contains("larger than the 102400 bytes that can be replayed"),
        "{text}"
    );
    // Within the limit it works.
    let (status, _, _) = c2
        .send(
            "POST",
            "/",
            &[
                ("x-replay-from-a1", "region=iad"),
                ("x-replay-from-a2", "region=iad"),
            ],
            vec![7u8; 90 * 1024],
        )
        .await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_over_http2_and_tls() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.leaf(dir.path(), "s", &["r.test"]);
    let tls = serde_json::json!({
        "cert": cert.display().to_string(),
        "key": key.display().to_string()
    });
    let c = cluster_with(|c| c.listener(Listener::http("https").set("tls", tls))).await;
    let addr = c.p.addr("https");
    let client = pki.client(&[("r.test", addr)], true);
    let json = r#"{"region":"iad"}"#;
    // Small bodies ride pingora's retry buffer, large ones a subrequest; both header and JSON.
    for (size, hname) in [
        (10 * 1024, "x-replay-from"),
        (300 * 1024, "x-replay-from"),
        (10 * 1024, "x-json-from"),
        (300 * 1024, "x-json-from"),
    ] {
        let body = vec![3u8; size];
        let value = if hname == "x-json-from" {
            json
        } else {
            "region=iad"
        };
        let r = client
            .post(format!("https://r.test:{}/", addr.port()))
            .header(format!("{hname}-a1"), value)
            .header(format!("{hname}-a2"), value)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status(), 200, "{size} {hname}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["id"], "p1");
        assert_eq!(v["body_len"], body.len());
        assert_eq!(v["body_fnv"], fnv(&body));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_upgrade_is_replayed_and_the_target_upgrades() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    // Local replica: an HTTP origin that answers the upgrade with fly-replay. Target: a real
    // WebSocket echo server, on the same port at another address.
    let local = Origin::start_on("127.0.0.2:0", "a1", |_| {
        Box::pin(async { text(409, "go to iad", &[("fly-replay", "region=iad")]) })
    })
    .await;
    let port = local.addr.port();
    let ws_listener = tokio::net::TcpListener::bind(("127.0.0.4", port))
        .await
        .unwrap();
    let ws_task = tokio::spawn(async move {
        loop {
            let (tcp, _) = ws_listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut src = None;
                #[allow(clippy::result_large_err)] // the callback's type is tungstenite's
                let cb = |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                          resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
                    src = req.headers().get("fly-replay-src").map(|v| v.to_str().unwrap().to_string());
                    Ok(resp)
                };
                let mut ws = tokio_tungstenite::accept_hdr_async(tcp, cb).await.unwrap();
                let src = src.unwrap_or_default();
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() {
                        ws.send(Message::text(format!("{src}|{}", m.to_text().unwrap())))
                            .await
                            .unwrap();
                    } else if m.is_close() {
                        break;
                    }
                }
            });
        }
    });
    let dns = TestDns::start().await;
    dns.set_txt("vms.web.internal", "a1 ams,p1 iad", 30);
    dns.set_ips("a1.vm.web.internal", &[local.addr.ip()], 30);
    dns.set_ips("p1.vm.web.internal", &["127.0.0.4".parse().unwrap()], 30);
    let p = Portico::start(
        &Config::new()
            .server("region", "ams")
            .section("dns", "servers", serde_json::json!([dns.addr.to_string()]))
            .upstream(Upstream::named("web").set(
                "discovery",
                serde_json::json!({ "fly_app": "web", "port": port }),
            ))
            .render(),
    );
    let (mut ws, resp) =
        tokio_tungstenite::connect_async(format!("ws://{}/socket", p.addr("http")))
            .await
            .unwrap();
    assert_eq!(resp.status(), 101);
    ws.send(Message::text("hello")).await.unwrap();
    let echoed = ws.next().await.unwrap().unwrap();
    let text = echoed.to_text().unwrap();
    assert!(text.starts_with("instance=a1;region=ams;t="), "{text}");
    assert!(text.ends_with("|hello"), "{text}");
    ws.close(None).await.unwrap();
    assert_eq!(local.count(), 1);
    ws_task.abort();
    let _ = Arc::new(());
}

/// Borrows owned header values as the `(&str, &str)` pairs the client helpers take.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_to_an_instance_discovery_has_not_seen_yet() {
    let c = cluster().await;
    // The primary moves to a new machine, p2 (at the old primary's address here). DNS knows
    // at once; Portico's copy lives for the record's 30 s TTL.
    c.dns
        .set_txt("vms.web.internal", "a1 ams,a2 ams,p2 iad,f1 fra", 30);
    c.dns
        .set_ips("p2.vm.web.internal", &[c.origins["p1"].addr.ip()], 30);
    let replay = [
        ("x-replay-from-a1", "instance=p2"),
        ("x-replay-from-a2", "instance=p2"),
    ];
    let start = Instant::now();
    let v = c.json("POST", &replay, b"write".to_vec()).await;
    assert_eq!(v["id"], "p1", "the machine at p2's address answered: {v}");
    assert_eq!(v["body_len"], 5);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    // Known from now on: no lookup needed.
    let v = c.json("POST", &replay, b"again".to_vec()).await;
    assert_eq!(v["id"], "p1");
    // The same for a client forcing an instance discovery has not seen yet.
    c.dns
        .set_txt("vms.web.internal", "a1 ams,a2 ams,p2 iad,f3 fra", 30);
    c.dns
        .set_ips("f3.vm.web.internal", &[c.origins["f1"].addr.ip()], 30);
    let v = c
        .json("GET", &[("fly-force-instance-id", "f3")], vec![])
        .await;
    assert_eq!(v["id"], "f1");
    // An id that really does not exist still fails, after one lookup; a burst of such
    // requests costs a few lookups, not one per request.
    let before = c.dns.queries();
    let burst = futures::future::join_all(
        (0..40).map(|_| c.send("GET", "/", &[("fly-force-instance-id", "ghost")], vec![])),
    )
    .await;
    for (status, _, text) in &burst {
        assert_eq!(*status, 503, "{text}");
        assert!(text.contains("instance \"ghost\""), "{text}");
    }
    let lookups = c.dns.queries() - before;
    // One round is a TXT query plus one per instance (4): at most a few rounds.
    assert!(lookups <= 5 * 4, "{lookups} DNS queries for 40 requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hop_replays_of_large_bodies_never_lose_the_answer() {
    // A local replica sends the write to the primary's region, where a replica names the
    // primary instance: two hops, with a body above 64 KiB, many times in a row.
    let c = cluster().await;
    let headers = [
        ("x-replay-from-a1", "region=fra"),
        ("x-replay-from-a2", "region=fra"),
        ("x-replay-from-f1", "instance=p1"),
    ];
    // 4 clients at once, 50 rounds each, every answer checked.
    let client = |k: usize| {
        let c = &c;
        async move {
            for r in 0..50usize {
                let i = k * 50 + r;
                let size = 100 * 1024 + i;
                let body: Vec<u8> = (0..size).map(|j| ((i + j) % 251) as u8).collect();
                let want = fnv(&body);
                let (status, _, text) = c.send("POST", "/", &headers, body).await;
                assert_eq!(status, 200, "round {i}: {text}");
                let v: Value = serde_json::from_str(&text)
                    .unwrap_or_else(|e| panic!("round {i}: {e}: {text:?}"));
                assert_eq!(v["id"], "p1", "round {i}");
                assert_eq!(v["body_len"], size, "round {i}");
                assert_eq!(v["body_fnv"], want, "round {i}");
            }
        }
    };
    futures::future::join_all((0..4).map(client)).await;
    let lines: Vec<String> =
        c.p.stdout_lines()
            .into_iter()
            .filter(|l| l.contains("method=POST"))
            .collect();
    assert!(
        lines.iter().all(|l| l.contains("replays=2")),
        "each access-log line counts both hops: {:?}",
        lines.iter().find(|l| !l.contains("replays=2"))
    );
}

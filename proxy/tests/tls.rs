//! TLS listeners: HTTP/1.1 and HTTP/2 via ALPN, certificates chosen by SNI, h2c, and a config
//! with two TLS hostnames, three routes and two upstreams carrying real traffic.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

/// An HTTPS listener with two certificates (`a.pem`, `b.pem`, made by the test in the config
/// directory), a plain listener that redirects to it, and routes by host to `web` and `api`.
fn config(web: &Origin, api: &Origin) -> String {
    Config::new()
        .listener_set("force_https", true)
        .listener(Listener::tls(
            "https",
            &[("a.pem", "a.key"), ("b.pem", "b.key")],
        ))
        .upstream(Upstream::new("web", [web.addr]))
        .upstream(Upstream::new("api", [api.addr]))
        .route(Route::to("web").host("a.test"))
        .route(Route::to("api").host(["b.test", "*.b.test"]))
        .route(Route::to("api").host("a.test").path("/api"))
        .render()
}

async fn peer_cert_names(addr: std::net::SocketAddr, sni: &str, pki: &Pki) -> Vec<String> {
    // Handshake with a client that trusts the test CA and report which names the served
    // certificate holds.
    let tls = pki.tls_connect(addr, sni).await;
    let (_, conn) = tls.get_ref();
    let leaf = conn.peer_certificates().unwrap()[0].clone();
    let ee = webpki::EndEntityCert::try_from(&leaf).unwrap();
    ee.valid_dns_names().map(str::to_string).collect()
}

#[tokio::test]
async fn two_hostnames_three_routes_two_upstreams_over_h1_and_h2() {
    let web = Origin::named("web").await;
    let api = Origin::named("api").await;
    let pki = Pki::new();
    let p = Portico::start_with(&config(&web, &api), &[], |dir| {
        pki.leaf(dir, "a", &["a.test"]);
        pki.leaf(dir, "b", &["b.test", "*.b.test"]);
    });
    let addr = p.addr("https");
    // Each certificate file's names carry its expiry (rcgen's default: year 4096).
    for name in ["a.test", "b.test", "*.b.test"] {
        let at = metric(
            &p,
            "portico_tls_certificate_expiry_seconds",
            &[("listener", "https"), ("host", name)],
        )
        .await;
        assert!(at > 4.0e9, "{name}: {at}");
    }
    for http2 in [false, true] {
        let c = pki.client(
            &[("a.test", addr), ("b.test", addr), ("x.b.test", addr)],
            http2,
        );
        let want_version = if http2 {
            reqwest::Version::HTTP_2
        } else {
            reqwest::Version::HTTP_11
        };
        for (url, body) in [
            ("https://a.test/", "web"),
            ("https://a.test/api/x", "api"),
            ("https://b.test/", "api"),
            ("https://x.b.test/", "api"),
        ] {
            let url = url.replace(".test/", &format!(".test:{}/", addr.port()));
            let r = c.get(&url).send().await.unwrap();
            assert_eq!(r.version(), want_version, "{url}");
            assert_eq!(r.status(), 200, "{url}");
            assert_eq!(r.text().await.unwrap(), body, "{url}");
        }
    }
    let seen = web.requests().pop().unwrap();
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-forwarded-ssl"), Some("on"));
    // HTTP/2 requests reach the HTTP/1.1 upstream with a Host header.
    assert!(seen.header("host").unwrap().starts_with("a.test"));

    // SNI picks the certificate; an unknown name gets the first (default) certificate.
    assert_eq!(peer_cert_names(addr, "a.test", &pki).await, vec!["a.test"]);
    assert_eq!(
        peer_cert_names(addr, "b.test", &pki).await,
        vec!["b.test", "*.b.test"]
    );
    assert_eq!(
        peer_cert_names(addr, "z.b.test", &pki).await,
        vec!["b.test", "*.b.test"]
    );

    // The plain listener redirects to the TLS one.
    let r = client()
        .get(p.url("http", "/x"))
        .header("host", "a.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 301);
    assert_eq!(
        r.headers()["location"].to_str().unwrap(),
        format!("https://a.test:{}/x", addr.port())
    );
}

#[tokio::test]
async fn h2c_on_a_plain_listener() {
    let web = Origin::named("web").await;
    let config = Config::new()
        .listener_set("h2c", true)
        .upstream(Upstream::new("web", [web.addr]))
        .render();
    let p = Portico::start(&config);
    let h2 = reqwest::Client::builder()
        .no_proxy()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(p.url("http", "/")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.text().await.unwrap(), "web");
    // HTTP/1.1 still works on the same listener.
    let r = client().get(p.url("http", "/")).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn failed_handshakes_are_counted_and_harmless() {
    let web = Origin::named("web").await;
    let pki = Pki::new();
    let config = Config::bare()
        .admin_set("address", "127.0.0.1:0")
        .listener(Listener::http("https").set(
            "tls",
            serde_json::json!({ "cert": "a.pem", "key": "a.key" }),
        ))
        .upstream(Upstream::new("web", [web.addr]))
        .render();
    let p = Portico::start_with(&config, &[], |dir| {
        pki.leaf(dir, "a", &["a.test"]);
    });
    // Plain HTTP on a TLS port is not a handshake.
    let resp = raw(
        p.addr("https"),
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        std::time::Duration::from_secs(2),
    )
    .await;
    assert!(!resp.contains("200 OK"), "{resp}");
    wait_metric(
        &p,
        "portico_tls_handshake_errors_total",
        &[("listener", "https")],
        1.0,
    )
    .await;
    let c = pki.client(&[("a.test", p.addr("https"))], false);
    let r = c
        .get(format!("https://a.test:{}/", p.addr("https").port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_body_gets_its_413_not_a_reset() {
    // Browsers send a large upload without `Expect: 100-continue`: the 413 must reach them
    // although most of the body is still on its way (nginx's lingering close).
    let web = Origin::named("web").await;
    let pki = Pki::new();
    let cfg = Config::bare()
        .admin_set("address", "127.0.0.1:0")
        .listener(Listener::http("https").set(
            "tls",
            serde_json::json!({ "cert": "a.pem", "key": "a.key" }),
        ))
        .listener(Listener::http("http"))
        .upstream(Upstream::new("web", [web.addr]))
        .route(Route::to("web").set("max_body", "1MiB"))
        .render();
    let p = Portico::start_with(&cfg, &[], |dir| {
        pki.leaf(dir, "a", &["a.test"]);
    });
    let body = vec![b'x'; 2 << 20];
    let tls_addr = p.addr("https");
    let tls = pki.client(&[("a.test", tls_addr)], false);
    let plain = client();
    for i in 0..20 {
        for (c, url) in [
            (&tls, format!("https://a.test:{}/upload", tls_addr.port())),
            (&plain, p.url("http", "/upload")),
        ] {
            // A fresh connection each time, as a browser's first upload would be.
            let r = c
                .post(&url)
                .header("connection", "close")
                .body(body.clone())
                .send()
                .await
                .unwrap_or_else(|e| panic!("try {i} {url}: {e:?}"));
            assert_eq!(r.status(), 413, "try {i} {url}");
        }
    }
    assert_eq!(web.count(), 0);
}

/// An HTTPS upstream whose certificate a private CA signed: `tls_ca` makes Portico trust it
/// for HTTP/1.1 and HTTP/2 clients and in its health checks; without it the system's store
/// refuses the backend (502, check down); an unusable CA file is a located config error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_ca_trusts_a_private_pki() {
    let backend_pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = backend_pki.leaf(dir.path(), "backend", &["backend.test"]);
    let ca_file = dir.path().join("backend-ca.pem");
    std::fs::write(&ca_file, &backend_pki.ca_pem).unwrap();
    let origin = Origin::start_tls("private", &cert, &key, |_| {
        Box::pin(async { text(200, "private", &[]) })
    })
    .await;
    let front = Pki::new();
    let config = |ca: Option<&std::path::Path>| {
        let mut app = Upstream::new("app", [origin.addr])
            .set("protocol", "https")
            .set("tls_server_name", "backend.test")
            .check(serde_json::json!({
                "protocol": "https", "path": "/", "interval": "200ms", "timeout": "500ms",
                "rise": 1, "fall": 1
            }));
        if let Some(ca) = ca {
            app = app.set("tls_ca", ca.display().to_string());
        }
        Config::new()
            .listener(Listener::tls("https", &[("front.pem", "front.key")]))
            .upstream(app)
            .render()
    };
    async fn backend_state(p: &Portico) -> String {
        let s = status(p).await;
        s["upstreams"][0]["backends"][0]["state"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
    let trusted = Portico::start_with(&config(Some(&ca_file)), &[], |d| {
        front.leaf(d, "front", &["front.test"]);
    });
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend_state(&trusted).await != "up" {
        assert!(Instant::now() < deadline, "the check never passed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = client().get(trusted.url("http", "/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "private");
    let https = trusted.addr("https");
    let h2 = front.client(&[("front.test", https)], true);
    let r = h2
        .get(format!("https://front.test:{}/", https.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "private");

    // The system's trust store does not know the private CA.
    let untrusted = Portico::start_with(&config(None), &[], |d| {
        front.leaf(d, "front", &["front.test"]);
    });
    let r = client()
        .get(untrusted.url("http", "/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let deadline = Instant::now() + Duration::from_secs(5);
    while backend_state(&untrusted).await != "down" {
        assert!(Instant::now() < deadline, "the check never failed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A CA file that holds no certificate: `portico check` names the key and the reason.
    let bad = dir.path().join("not-a-ca.pem");
    std::fs::write(&bad, "hello\n").unwrap();
    let cfg_dir = tempfile::tempdir().unwrap();
    front.leaf(cfg_dir.path(), "front", &["front.test"]);
    let path = cfg_dir.path().join("portico.toml");
    std::fs::write(&path, config(Some(&bad))).unwrap();
    let (code, out, err) = run_cli(&["check", "-c", path.to_str().unwrap()], &[]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("upstreams.app.tls_ca") && err.contains("no CERTIFICATE"),
        "{err}"
    );
}

//! Process lifecycle and operations: the embedded default config, admin endpoints, graceful
//! and fast shutdown, startup failures, and `portico check`.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;

#[tokio::test]
async fn embedded_default_config_proxies_to_portico_upstream() {
    let o = Origin::named("origin").await;
    let upstream = o.addr.to_string();
    let mut p = Portico::start_default(&[
        ("PORTICO_LISTEN", "127.0.0.1:0"),
        ("PORTICO_ADMIN", "127.0.0.1:0"),
        ("PORTICO_UPSTREAM", &upstream),
    ]);
    let r = client().get(p.url("http", "/")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "origin");
    let status = status(&p).await;
    assert_eq!(status["config"]["source"], "<embedded default>");
    p.stop();
}

#[tokio::test]
async fn admin_endpoints() {
    let o = Origin::named("origin").await;
    let p = Portico::with(
        &Config::new()
            .server("region", "ams")
            .upstream(Upstream::new("app", [o.addr])),
    );
    let c = client();
    for _ in 0..3 {
        c.get(p.url("http", "/")).send().await.unwrap();
    }
    let r = c.get(p.admin_url("/healthz")).send().await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.text().await.unwrap()),
        (200, "ok\n".to_string())
    );
    let r = c.get(p.admin_url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let s: serde_json::Value = c
        .get(p.admin_url("/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(s["config"]["generation"], 1);
    assert_eq!(s["server"]["region"], "ams");
    assert_eq!(s["listeners"][0]["name"], "http");
    assert_eq!(s["listeners"][0]["address"], p.addr("http").to_string());
    assert_eq!(s["routes"][0]["upstream"], "app");
    let b = &s["upstreams"][0]["backends"][0];
    assert_eq!(b["address"], o.addr.to_string());
    assert_eq!(b["requests"], 3);
    assert_eq!(b["in_flight"], 0);
    assert_eq!(b["state"], "up");

    let m = metrics_text(&p).await;
    for family in [
        "portico_http_requests_total{route=\"default\",status=\"2xx\",upstream=\"app\"} 3",
        "portico_http_request_duration_seconds_bucket",
        "portico_http_requests_in_flight",
        "portico_connections_open{listener=\"http\"}",
        "portico_connections_accepted_total{listener=\"http\"}",
        "portico_upstream_requests_in_flight{upstream=\"app\"} 0",
        "portico_upstream_backends{upstream=\"app\"} 1",
        "portico_config_generation 1",
        "process_cpu_seconds_total",
    ] {
        assert!(m.contains(family), "missing {family} in\n{m}");
    }
    assert_eq!(
        c.post(p.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
    assert_eq!(
        c.get(p.admin_url("/nope")).send().await.unwrap().status(),
        404
    );
}

#[tokio::test]
async fn admin_is_on_loopback_by_default() {
    let o = Origin::named("origin").await;
    let config = Config::new()
        .no_admin()
        .upstream(Upstream::new("app", [o.addr]))
        .render();
    let (code, out, _) = {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.toml");
        std::fs::write(&path, config).unwrap();
        run_cli(&["check", "-c", path.to_str().unwrap()], &[])
    };
    assert_eq!(code, 0);
    assert!(out.contains("admin             127.0.0.1:9901"), "{out}");
}

#[tokio::test]
async fn graceful_shutdown_finishes_in_flight_requests() {
    let slow = Origin::start("slow", |_| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(600)).await;
            text(200, "finished", &[])
        })
    })
    .await;
    let mut p = Portico::with(&Config::new().upstream(Upstream::new("app", [slow.addr])));
    let c = client();
    let url = p.url("http", "/");
    let in_flight =
        tokio::spawn(async move { c.get(url).send().await.unwrap().text().await.unwrap() });
    let start = Instant::now();
    while slow.count() == 0 {
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    p.signal("TERM");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // No new connections once draining.
    assert!(tokio::net::TcpStream::connect(p.addr("http"))
        .await
        .is_err());
    assert_eq!(in_flight.await.unwrap(), "finished");
    let (code, _) = p.wait_exit(Duration::from_secs(5));
    assert_eq!(code, Some(0));
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn idle_shutdown_is_fast() {
    let o = Origin::named("o").await;
    let mut p = Portico::with(
        &Config::new()
            .server("drain_grace", "100ms")
            .upstream(Upstream::new("app", [o.addr])),
    );
    // An idle keep-alive connection holds the shutdown for `drain_grace` at most.
    let mut s = tokio::net::TcpStream::connect(p.addr("http"))
        .await
        .unwrap();
    use tokio::io::AsyncWriteExt;
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    read_response(&mut s).await;
    let took = p.stop();
    assert!(took < Duration::from_millis(900), "shutdown took {took:?}");
}

#[tokio::test]
async fn shutdown_timeout_bounds_the_drain() {
    let stuck = Origin::start("stuck", |_| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            text(200, "late", &[])
        })
    })
    .await;
    let mut p = Portico::with(
        &Config::new()
            .server("shutdown_timeout", "500ms")
            .upstream(Upstream::new("app", [stuck.addr])),
    );
    let c = client();
    let url = p.url("http", "/");
    let _req = tokio::spawn(async move { c.get(url).send().await });
    let start = Instant::now();
    while stuck.count() == 0 {
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    p.signal("TERM");
    let (code, took) = p.wait_exit(Duration::from_secs(5));
    assert_eq!(code, Some(0));
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(2),
        "{took:?}"
    );
    p.wait_log("shutdown timeout reached", Duration::from_secs(1));
}

#[tokio::test]
async fn sigint_stops_at_once() {
    let o = Origin::named("o").await;
    let mut p = Portico::with(&Config::new().upstream(Upstream::new("app", [o.addr])));
    p.signal("INT");
    let (code, took) = p.wait_exit(Duration::from_secs(5));
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_millis(900));
}

#[tokio::test]
async fn taken_port_fails_fast_with_a_clear_error() {
    let o = Origin::named("o").await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(
        &path,
        Config::bare()
            .admin_set("enabled", false)
            .listener(Listener::http("web").set("address", addr.to_string()))
            .upstream(Upstream::new("app", [o.addr]))
            .render(),
    )
    .unwrap();
    let start = Instant::now();
    let (code, _, err) = run_cli(&["run", "-c", path.to_str().unwrap()], &[]);
    assert_eq!(code, 1);
    assert!(start.elapsed() < Duration::from_secs(3));
    assert!(
        err.contains(&format!("listeners[0] (web): cannot listen on {addr}")),
        "{err}"
    );
    assert!(err.contains("Address already in use"), "{err}");
}

#[tokio::test]
async fn invalid_config_refuses_to_start_and_lists_problems() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(&path, "[[listeners]]\naddress = \"127.0.0.1:0\"\n[upstreams.app]\nbackends = [\"x\"]\nbalanse = \"random\"\n").unwrap();
    let (code, _, err) = run_cli(&["run", "-c", path.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    let p = path.display().to_string();
    assert!(
        err.contains(&format!(
            "{p}:4:13: upstreams.app.backends[0]: invalid backend address \"x\""
        )),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{p}:5:1: upstreams.app.balanse: unknown key (did you mean \"balance\"?)"
        )),
        "{err}"
    );
}

#[tokio::test]
async fn check_prints_a_summary_or_every_problem() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    pki.leaf(dir.path(), "site", &["example.com"]);
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        r#"
[[listeners]]
name = "https"
address = "0.0.0.0:8443"
tls = { cert = "site.pem", key = "site.key" }
[upstreams.app]
backends = ["127.0.0.1:3000", "127.0.0.1:3001"]
balance = "round_robin"
[[routes]]
host = "example.com"
upstream = "app"
"#,
    )
    .unwrap();
    let (code, out, err) = run_cli(&["check", "-c", good.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": ok"));
    assert!(out.contains("listener https"));
    assert!(out.contains("tls (1 certificate(s), h2)"));
    assert!(
        out.contains("upstream app          2 backend(s), round_robin"),
        "{out}"
    );

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        r#"
[[listeners]]
name = "https"
address = "0.0.0.0:8443"
tls = { certificates = [ { cert = "missing.pem", key = "site.key" }, { cert = "site.key", key = "site.pem" } ] }
[upstreams.app]
backends = ["127.0.0.1:3000"]
"#,
    )
    .unwrap();
    let (code, _, err) = run_cli(&["check", "-c", bad.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    assert!(
        err.contains("listeners[0].tls.certificates[0]: cannot read"),
        "{err}"
    );
    assert!(
        err.contains("listeners[0].tls.certificates[1]:") && err.contains("no certificate found"),
        "{err}"
    );
    assert!(err.contains("2 problem(s) found"), "{err}");

    // A key that does not match its certificate.
    pki.leaf(dir.path(), "other", &["other.com"]);
    let mismatch = dir.path().join("mismatch.toml");
    std::fs::write(
        &mismatch,
        "[[listeners]]\naddress = \"0.0.0.0:8443\"\ntls = { cert = \"site.pem\", key = \"other.key\" }\n[upstreams.app]\nbackends = [\"127.0.0.1:3000\"]\n",
    )
    .unwrap();
    let (code, _, err) = run_cli(&["check", "-c", mismatch.to_str().unwrap()], &[]);
    assert_eq!(code, 2);
    assert!(err.contains("do not belong together"), "{err}");
}

#[tokio::test]
async fn default_config_command_prints_a_valid_config() {
    let (code, out, _) = run_cli(&["default-config"], &[]);
    assert_eq!(code, 0);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.toml");
    std::fs::write(&path, out).unwrap();
    let (code, _, err) = run_cli(&["check", "-c", path.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{err}");
}

/// With `[admin] token`, `/metrics` and `POST /reload` need the bearer token, `/status`
/// hides addresses without it, probes stay open, and cross-site browser requests cannot
/// reload even with a token. Without a token (loopback), a request naming the admin by a
/// host name (DNS rebinding) is refused and cross-site reloads too.
#[tokio::test]
async fn admin_token_origin_checks_and_redacted_status() {
    let o = Origin::named("origin").await;
    let token = "s3cret-admin-token-0123456789";
    let p = Portico::start(
        &Config::new()
            .admin_set("token", token.to_string())
            .upstream(Upstream::new("app", [o.addr]))
            .render(),
    );
    let c = client();
    let bearer = format!("Bearer {token}");
    let get = |path: &str, auth: Option<&str>| {
        let mut rb = c.get(p.admin_url(path));
        if let Some(a) = auth {
            rb = rb.header("authorization", a);
        }
        rb.send()
    };
    assert_eq!(get("/healthz", None).await.unwrap().status(), 200);
    assert_eq!(get("/ready", None).await.unwrap().status(), 200);
    let r = get("/metrics", None).await.unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .starts_with("Bearer"));
    assert_eq!(
        get("/metrics", Some("Bearer wrong-token-0123456789"))
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(get("/metrics", Some(&bearer)).await.unwrap().status(), 200);
    let anon = get("/status", None).await.unwrap().text().await.unwrap();
    assert!(!anon.contains(&o.addr.to_string()), "{anon}");
    assert!(!anon.contains(&p.addr("http").to_string()), "{anon}");
    assert!(anon.contains("\"in_flight\""), "{anon}");
    let full = get("/status", Some(&bearer))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(full.contains(&o.addr.to_string()), "{full}");
    let reload = |headers: &[(&str, &str)]| {
        let mut rb = c.post(p.admin_url("/reload"));
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        rb.send()
    };
    assert_eq!(reload(&[]).await.unwrap().status(), 401);
    assert_eq!(
        reload(&[("authorization", &bearer)])
            .await
            .unwrap()
            .status(),
        200
    );
    for cross in [
        ("origin", "http://evil.example"),
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
    ] {
        let r = reload(&[("authorization", &bearer), cross]).await.unwrap();
        assert_eq!(r.status(), 403, "{cross:?}");
    }
    // The admin's own origin is fine.
    let own = format!("http://{}", p.admin());
    assert_eq!(
        reload(&[("authorization", &bearer), ("origin", &own)])
            .await
            .unwrap()
            .status(),
        200
    );

    // No token, loopback: open to local tools, closed to web pages.
    let q = Portico::with(&Config::new().upstream(Upstream::new("app", [o.addr])));
    let r = c.get(q.admin_url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .get(q.admin_url("/status"))
        .header("host", "rebind.evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .get(q.admin_url("/status"))
        .header("host", format!("localhost:{}", q.admin().port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(q.admin_url("/reload"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(
        c.post(q.admin_url("/reload"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

/// Off loopback the admin needs a token: `portico check` names the key and the fix; bad
/// tokens and unreadable token files are errors too; a token file works.
#[tokio::test]
async fn admin_off_loopback_without_a_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let check = |admin: &str| {
        let path = dir.path().join("p.toml");
        std::fs::write(
            &path,
            format!("[[listeners]]\naddress = \"127.0.0.1:8080\"\n[admin]\n{admin}\n[upstreams.app]\nbackends = [\"127.0.0.1:3000\"]\n"),
        )
        .unwrap();
        run_cli(&["check", "-c", path.to_str().unwrap()], &[])
    };
    let (code, _, err) = check("address = \"0.0.0.0:9901\"");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("admin.address"), "{err}");
    assert!(
        err.contains("not a loopback address: set admin.token"),
        "{err}"
    );
    let (code, _, err) = check("address = \"0.0.0.0:9901\"\ntoken = \"short\"");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("admin.token") && err.contains("at least 16"),
        "{err}"
    );
    let (code, _, err) = check("address = \"0.0.0.0:9901\"\ntoken_file = \"missing-token\"");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("admin.token_file") && err.contains("cannot read"),
        "{err}"
    );
    std::fs::write(dir.path().join("admin-token"), "0123456789abcdef0123\n").unwrap();
    let (code, _, err) = check("address = \"0.0.0.0:9901\"\ntoken_file = \"admin-token\"");
    assert_eq!(code, 0, "{err}");
}

//! Active health checks and passive ejection, against real origins whose health endpoint can
//! be switched, closed or made to hang.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

/// An origin named `name` whose `/health` answers with the status in `health` (0: hang).
async fn switchable(name: &str, health: Arc<AtomicU16>) -> Origin {
    let n = name.to_string();
    Origin::start(name, move |s| {
        let n = n.clone();
        let health = health.clone();
        Box::pin(async move {
            if s.uri.starts_with("/health") {
                let code = health.load(Ordering::Relaxed);
                if code == 0 {
                    tokio::time::sleep(Duration::from_secs(10)).await;
                }
                return text(code.max(200), "health", &[]);
            }
            text(200, &n, &[])
        })
    })
    .await
}

/// Upstream `app` over `backends`, round robin, shaped by `f`, with one active check.
fn config(
    backends: &[&Origin],
    f: impl FnOnce(Upstream) -> Upstream,
    check: serde_json::Value,
) -> String {
    let app = Upstream::new("app", backends.iter().map(|o| o.addr)).balance("round_robin");
    Config::new().upstream(f(app).check(check)).render()
}

async fn backend_state(p: &Portico, addr: std::net::SocketAddr) -> (String, serde_json::Value) {
    let s = status(p).await;
    let b = s["upstreams"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["address"] == addr.to_string())
        .unwrap()
        .clone();
    (
        b["state"].as_str().unwrap().to_string(),
        b["health"].clone(),
    )
}

async fn wait_state(
    p: &Portico,
    addr: std::net::SocketAddr,
    want: &str,
    within: Duration,
) -> Duration {
    let start = Instant::now();
    loop {
        let (state, _) = backend_state(p, addr).await;
        if state == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{addr} did not become {want} within {within:?} (is {state})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_backend_leaves_and_returns_without_failed_requests() {
    let flags: Vec<Arc<AtomicU16>> = (0..3).map(|_| Arc::new(AtomicU16::new(200))).collect();
    let a = switchable("a", flags[0].clone()).await;
    let b = switchable("b", flags[1].clone()).await;
    let c = switchable("c", flags[2].clone()).await;
    let p = Portico::with(&Config::new().upstream(Upstream::new("app", [&a, &b, &c].iter().map(|o| o.addr)).balance("round_robin").check(serde_json::json!({"type": "http", "path": "/health", "interval": "200ms", "timeout": "100ms", "rise": 2, "fall": 2}))));
    for o in [&a, &b, &c] {
        wait_state(&p, o.addr, "up", Duration::from_secs(3)).await;
    }
    // Steady traffic from four clients for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let url = p.url("http", "/");
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            let c = client();
            let mut seen: HashMap<String, usize> = HashMap::new();
            let mut failed = 0;
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        *seen.entry(r.text().await.unwrap()).or_default() += 1
                    }
                    _ => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (seen, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // b's checks start failing: it leaves rotation within interval * fall + timeout (+ jitter).
    flags[1].store(500, Ordering::Relaxed);
    let took = wait_state(&p, b.addr, "down", Duration::from_secs(3)).await;
    // Bound: interval * fall + timeout, plus 10% jitter and scheduling slack.
    assert!(
        took < Duration::from_millis(200 * 2 + 100 + 400),
        "left after {took:?}"
    );
    let (_, health) = backend_state(&p, b.addr).await;
    assert!(
        health["reason"].as_str().unwrap().contains("HTTP 500"),
        "{health}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b_at_down = b.requests().iter().filter(|s| s.uri == "/").count();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        b.requests().iter().filter(|s| s.uri == "/").count(),
        b_at_down,
        "b got traffic while down"
    );
    // b recovers: back within interval * rise (+ jitter).
    flags[1].store(200, Ordering::Relaxed);
    let took = wait_state(&p, b.addr, "up", Duration::from_secs(3)).await;
    assert!(
        took < Duration::from_millis(200 * 2 + 400),
        "came back after {took:?}"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let mut total: HashMap<String, usize> = HashMap::new();
    for w in workers {
        let (seen, failed) = w.await.unwrap();
        assert_eq!(failed, 0, "client requests failed");
        for (k, v) in seen {
            *total.entry(k).or_default() += v;
        }
    }
    assert!(
        b.requests().iter().filter(|s| s.uri == "/").count() > b_at_down,
        "b got traffic again"
    );
    assert_eq!(total.len(), 3);
    // Transitions are logged once each.
    let log = p.stderr_text();
    assert_eq!(log.matches("backend is unhealthy").count(), 1, "{log}");
    assert!(
        metric(
            &p,
            "portico_health_checks_total",
            &[("upstream", "app"), ("result", "fail")]
        )
        .await
            >= 2.0
    );
    assert_eq!(
        metric(
            &p,
            "portico_upstream_backends_healthy",
            &[("upstream", "app")]
        )
        .await,
        3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_check_against_a_closed_port_and_a_hanging_http_check() {
    let closed = dead_addr();
    let a = switchable("a", Arc::new(AtomicU16::new(200))).await;
    let hang = switchable("hang", Arc::new(AtomicU16::new(0))).await;
    let cfg = Config::new().upstream(Upstream::new("app", [a.addr]).set("checks", serde_json::json!([{ "type": "tcp", "port": closed.port(), "interval": "200ms", "timeout": "150ms", "rise": 1, "fall": 1 }]))).upstream(Upstream::new("slow", [hang.addr]).set("start_healthy", true).set("checks", serde_json::json!([{ "path": "/health", "interval": "300ms", "timeout": "200ms", "fall": 1 }]))).route(Route::to("app")).route(Route::to("slow").path("/slow")).render();
    let p = Portico::start(&cfg);
    let start = Instant::now();
    loop {
        let s = status(&p).await;
        let b = &s["upstreams"][0]["backends"][0];
        if b["health"]["last_result"].is_string() {
            // Never passed, now failed: no traffic, and the reason is there.
            assert_eq!(b["state"], "down");
            assert_eq!(b["health"]["last_result"], "connection refused");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(3));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let start = Instant::now();
    loop {
        let s = status(&p).await;
        let b = &s["upstreams"][1]["backends"][0];
        if b["state"] == "down" {
            assert_eq!(b["health"]["last_result"], "no answer within 200ms");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(3));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grace_period_and_start_healthy() {
    let failing = Arc::new(AtomicU16::new(500));
    let a = switchable("a", failing.clone()).await;
    // start_healthy: traffic at once; the grace period hides the failures for a while.
    let start = Instant::now();
    let p = Portico::with(&Config::new().upstream(Upstream::new("app", [&a].iter().map(|o| o.addr)).balance("round_robin").set("start_healthy", true).set("all_unhealthy", "refuse").check(serde_json::json!({"path": "/health", "interval": "100ms", "timeout": "100ms", "fall": 1, "grace_period": "800ms"}))));
    assert_eq!(
        client()
            .get(p.url("http", "/"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        backend_state(&p, a.addr).await.0,
        "up",
        "failures counted during the grace period"
    );
    wait_state(&p, a.addr, "down", Duration::from_secs(3)).await;
    assert!(
        start.elapsed() >= Duration::from_millis(800),
        "down after {:?}",
        start.elapsed()
    );

    // Without start_healthy a new backend gets nothing until its checks pass.
    let b_flag = Arc::new(AtomicU16::new(500));
    let b = switchable("b", b_flag.clone()).await;
    let p = Portico::with(&Config::new().upstream(Upstream::new("app", [&b].iter().map(|o| o.addr)).balance("round_robin").set("all_unhealthy", "refuse").check(serde_json::json!({"path": "/health", "interval": "100ms", "timeout": "100ms", "rise": 1}))));
    assert_eq!(backend_state(&p, b.addr).await.0, "pending");
    let r = client().get(p.url("http", "/")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("every backend is unhealthy"));
    assert_eq!(b.requests().iter().filter(|s| s.uri == "/").count(), 0);
    b_flag.store(200, Ordering::Relaxed);
    wait_state(&p, b.addr, "up", Duration::from_secs(3)).await;
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
async fn all_unhealthy_fails_open_or_refuses() {
    let a = switchable("a", Arc::new(AtomicU16::new(503))).await;
    let b = switchable("b", Arc::new(AtomicU16::new(503))).await;
    let check = serde_json::json!({
        "path": "/health", "interval": "100ms", "timeout": "100ms", "fall": 1
    });
    let open = Portico::start(&config(
        &[&a, &b],
        |u| u.set("start_healthy", true),
        check.clone(),
    ));
    wait_state(&open, a.addr, "down", Duration::from_secs(3)).await;
    wait_state(&open, b.addr, "down", Duration::from_secs(3)).await;
    for _ in 0..4 {
        assert_eq!(
            client()
                .get(open.url("http", "/"))
                .send()
                .await
                .unwrap()
                .status(),
            200,
            "fail_open serves anyway"
        );
    }
    let r = client().get(open.admin_url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("every backend is unhealthy"));

    let refuse = Portico::start(&config(
        &[&a, &b],
        |u| u.set("start_healthy", true).set("all_unhealthy", "refuse"),
        check,
    ));
    wait_state(&refuse, a.addr, "down", Duration::from_secs(3)).await;
    wait_state(&refuse, b.addr, "down", Duration::from_secs(3)).await;
    let r = client().get(refuse.url("http", "/")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let body = r.text().await.unwrap();
    assert!(
        body.contains("upstream \"app\": every backend is unhealthy:"),
        "{body}"
    );
    assert!(body.contains("HTTP 503"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_ejection_after_connect_failures_with_growing_backoff() {
    let live = Origin::named("live").await;
    let dead = dead_addr();
    let cfg = Config::new().upstream(Upstream::new("app", [dead, live.addr]).balance("round_robin").set("passive", serde_json::json!({ "connect_failures": 2, "eject_for": "600ms", "max_eject_for": "10s" }))).render();
    let p = Portico::start(&cfg);
    let c = client();
    for _ in 0..4 {
        assert_eq!(
            c.get(p.url("http", "/")).send().await.unwrap().status(),
            200
        );
    }
    let (state, health) = backend_state(&p, dead).await;
    assert_eq!(state, "ejected");
    assert!(
        health["reason"]
            .as_str()
            .unwrap()
            .contains("ejected for 600ms: 2 consecutive connection failures"),
        "{health}"
    );
    assert_eq!(
        metric(
            &p,
            "portico_backend_ejections_total",
            &[("upstream", "app")]
        )
        .await,
        1.0
    );
    // While ejected it is not tried at all.
    let errors = metric(
        &p,
        "portico_upstream_connect_errors_total",
        &[("upstream", "app")],
    )
    .await;
    for _ in 0..10 {
        assert_eq!(
            c.get(p.url("http", "/")).send().await.unwrap().status(),
            200
        );
    }
    assert_eq!(
        metric(
            &p,
            "portico_upstream_connect_errors_total",
            &[("upstream", "app")]
        )
        .await,
        errors
    );
    // After the back-off it is tried again, fails again, and is ejected for twice as long.
    tokio::time::sleep(Duration::from_millis(700)).await;
    for _ in 0..6 {
        assert_eq!(
            c.get(p.url("http", "/")).send().await.unwrap().status(),
            200
        );
    }
    let (state, health) = backend_state(&p, dead).await;
    assert_eq!(state, "ejected");
    assert!(
        health["reason"]
            .as_str()
            .unwrap()
            .contains("ejected for 1200ms"),
        "{health}"
    );
    assert_eq!(
        metric(
            &p,
            "portico_backend_ejections_total",
            &[("upstream", "app")]
        )
        .await,
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_replica_returns_when_its_checks_pass_not_when_the_ejection_ends() {
    // A rolling restart: the replica's port refuses connections for a moment, real traffic
    // ejects it for 10 s, and it comes back up within `interval * rise` of restarting.
    let other = Origin::named("other").await;
    let mut replica = Origin::named("replica").await;
    let addr = replica.addr;
    let cfg = Config::new().upstream(Upstream::new("app", [addr, other.addr]).balance("round_robin").set("passive", serde_json::json!({ "connect_failures": 1, "eject_for": "10s" })).set("checks", serde_json::json!([{ "type": "tcp", "interval": "200ms", "timeout": "100ms", "rise": 2, "fall": 100 }]))).render();
    let p = Portico::start(&cfg);
    // Both up first: with no usable backend left, fail-open would use the dead one again.
    wait_state(&p, addr, "up", Duration::from_secs(3)).await;
    wait_state(&p, other.addr, "up", Duration::from_secs(3)).await;
    replica.stop().await;
    let c = client();
    for _ in 0..4 {
        let r = c.get(p.url("http", "/")).send().await.unwrap();
        assert_eq!(r.status(), 200, "the other replica answers");
    }
    let (state, health) = backend_state(&p, addr).await;
    assert_eq!(state, "down", "{health}");
    assert!(
        health["reason"]
            .as_str()
            .unwrap()
            .contains("ejected for 10s"),
        "{health}"
    );
    let _replica = Origin::start_on(&addr.to_string(), "replica", |_| {
        Box::pin(async { text(200, "replica", &[]) })
    })
    .await;
    let took = wait_state(&p, addr, "up", Duration::from_secs(4)).await;
    assert!(took < Duration::from_secs(4), "back after {took:?}");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..6 {
        seen.insert(
            c.get(p.url("http", "/"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    assert!(seen.contains("replica"), "{seen:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_checks_with_a_self_signed_certificate() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.leaf(dir.path(), "backend", &["backend.test"]);
    let tls_origin = Origin::start_tls("tls", &cert, &key, |_| {
        Box::pin(async { text(200, "ok", &[]) })
    })
    .await;
    let check = |key: &str, v: serde_json::Value| {
        let mut c = serde_json::json!({
            "path": "/health", "protocol": "https", "interval": "200ms", "timeout": "300ms",
            "rise": 1, "fall": 1
        });
        c[key] = v;
        c
    };
    let skip = Portico::start(&config(
        &[&tls_origin],
        |u| u,
        check("tls_skip_verify", true.into()),
    ));
    wait_state(&skip, tls_origin.addr, "up", Duration::from_secs(3)).await;
    let verify = Portico::start(&config(
        &[&tls_origin],
        |u| u,
        check("tls_server_name", "backend.test".into()),
    ));
    let start = Instant::now();
    loop {
        let (state, health) = backend_state(&verify, tls_origin.addr).await;
        if let Some(r) = health["last_result"].as_str() {
            assert_eq!(state, "down");
            assert!(r.contains("TLS handshake failed"), "{r}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(3));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_replica_costs_no_client_request() {
    let flags: Vec<Arc<AtomicU16>> = (0..3).map(|_| Arc::new(AtomicU16::new(200))).collect();
    let a = switchable("a", flags[0].clone()).await;
    let mut b = switchable("b", flags[1].clone()).await;
    let c = switchable("c", flags[2].clone()).await;
    let p = Portico::with(&Config::new().upstream(Upstream::new("app", [&a, &b, &c].iter().map(|o| o.addr)).balance("round_robin").check(serde_json::json!({"type": "tcp", "interval": "200ms", "timeout": "100ms", "rise": 1, "fall": 2}))));
    for o in [&a, &b, &c] {
        wait_state(&p, o.addr, "up", Duration::from_secs(3)).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let url = p.url("http", "/");
        let stop = stop.clone();
        workers.push(tokio::spawn(async move {
            // A fresh connection per request, as many browsers and load balancers do.
            let mut failed = Vec::new();
            let mut ok = 0;
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                // GET: a request that may have reached the dying replica is retried only when
                // it is idempotent.
                match client().get(&url).send().await {
                    Ok(r) if r.status() == 200 => ok += 1,
                    Ok(r) => failed.push(r.text().await.unwrap()),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            (ok, failed)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let b_addr = b.addr;
    b.stop().await;
    wait_state(&p, b_addr, "down", Duration::from_secs(3)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let (ok, failed) = w.await.unwrap();
        assert!(ok > 0);
        assert!(failed.is_empty(), "{failed:?}");
    }
}

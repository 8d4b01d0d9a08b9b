//! DNS discovery against a real DNS server on loopback: backends follow record changes,
//! outages keep the last good set, Fly `.internal` naming gives ids and regions, regions order
//! the choice, and the client routing headers are honoured.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dns::{Mode, TestDns};
use common::*;

/// Origins named `names[i]` on `127.0.0.<2+i>`, all on one port (discovery gives one port).
async fn origins_on_one_port(names: &[&str]) -> Vec<Origin> {
    'retry: loop {
        let first = Origin::start_on("127.0.0.2:0", names[0], echo(names[0])).await;
        let port = first.addr.port();
        let mut out = vec![first];
        for (i, n) in names.iter().enumerate().skip(1) {
            let addr = format!("127.0.0.{}:{port}", 2 + i);
            if std::net::TcpListener::bind(&addr).is_err() {
                continue 'retry;
            }
            out.push(Origin::start_on(&addr, n, echo(n)).await);
        }
        return out;
    }
}

fn echo(name: &str) -> impl Fn(Seen) -> futures_like::BoxFut + Send + Sync + 'static {
    let n = name.to_string();
    move |_| {
        let n = n.clone();
        Box::pin(async move { text(200, &n, &[]) })
    }
}

fn ips(origins: &[&Origin]) -> Vec<IpAddr> {
    origins.iter().map(|o| o.addr.ip()).collect()
}

/// Portico in region `ams` asking the tests' DNS server, with short TTL bounds so changes
/// show within a second; no upstream yet.
fn base(dns: &TestDns) -> Config {
    [
        ("servers", serde_json::json!([dns.addr.to_string()])),
        ("timeout", "300ms".into()),
        ("attempts", 1.into()),
        ("min_ttl", "200ms".into()),
        ("max_ttl", "1s".into()),
        ("stale_for", "1s".into()),
        ("startup_wait", "3s".into()),
    ]
    .into_iter()
    .fold(Config::new().server("region", "ams"), |c, (k, v)| {
        c.section("dns", k, v)
    })
}

/// [`base`] with upstream `app` found by `discovery` (`{ dns = ..., port = ... }` or
/// `{ fly_app = ..., port = ... }`), shaped by `f`.
fn config(
    dns: &TestDns,
    discovery: serde_json::Value,
    f: impl FnOnce(Upstream) -> Upstream,
) -> Config {
    base(dns).upstream(f(Upstream::discovered("app", discovery)))
}

/// Sends requests from `workers` loops until `stop`; counts answers by body and failures.
fn steady_load(
    url: String,
    workers: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(HashMap<String, usize>, Vec<String>)> {
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let url = url.clone();
            let stop = stop.clone();
            tasks.push(tokio::spawn(async move {
                let c = client();
                let mut seen: HashMap<String, usize> = HashMap::new();
                let mut failures = Vec::new();
                let deadline = Instant::now() + Duration::from_secs(30);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match c.get(&url).send().await {
                        Ok(r) if r.status() == 200 => {
                            *seen.entry(r.text().await.unwrap_or_default()).or_default() += 1
                        }
                        Ok(r) => failures.push(format!(
                            "{} {}",
                            r.status(),
                            r.text().await.unwrap_or_default()
                        )),
                        Err(e) => failures.push(e.to_string()),
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (seen, failures)
            }));
        }
        let mut seen = HashMap::new();
        let mut failures = Vec::new();
        for t in tasks {
            let (s, f) = t.await.unwrap();
            for (k, v) in s {
                *seen.entry(k).or_default() += v;
            }
            failures.extend(f);
        }
        (seen, failures)
    })
}

async fn wait_until(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> bool) {
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn body(p: &Portico, headers: &[(&str, &str)]) -> (u16, String) {
    let mut rb = client().get(p.url("http", "/"));
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let r = rb.send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backends_follow_record_changes_without_failed_requests() {
    let o = origins_on_one_port(&["a", "b", "c"]).await;
    let port = o[0].addr.port();
    let dns = TestDns::start().await;
    dns.set_ips("app.internal", &ips(&[&o[0], &o[1]]), 1);
    let p = Portico::with(&config(
        &dns,
        serde_json::json!({ "dns": "app.internal", "port": port }),
        |u| u,
    ));
    let s = status(&p).await;
    assert_eq!(s["upstreams"][0]["backends"].as_array().unwrap().len(), 2);
    assert_eq!(
        s["upstreams"][0]["backends"][0]["origin"],
        "dns:app.internal"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(p.url("http", "/"), 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A third replica appears: it gets traffic within the refresh bound (max_ttl 1s).
    let before_c = o[2].count();
    dns.set_ips("app.internal", &ips(&[&o[0], &o[1], &o[2]]), 1);
    let t = Instant::now();
    wait_until(
        "the new backend to get traffic",
        Duration::from_secs(3),
        async || o[2].count() > before_c,
    )
    .await;
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "took {:?}",
        t.elapsed()
    );
    // The first one goes away (still running, so nothing in flight is cut): no new work for it.
    dns.set_ips("app.internal", &ips(&[&o[1], &o[2]]), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let a_after_removal = o[0].count();
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    let (seen, failures) = load.await.unwrap();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert_eq!(
        o[0].count(),
        a_after_removal,
        "removed backend still got new requests"
    );
    assert!(seen["b"] > 0 && seen["c"] > 0);
    assert!(
        metric(
            &p,
            "portico_discovery_backend_changes_total",
            &[("upstream", "app")]
        )
        .await
            >= 3.0
    );
    assert!(
        metric(
            &p,
            "portico_discovery_resolutions_total",
            &[("upstream", "app"), ("result", "success")]
        )
        .await
            >= 3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_outage_keeps_the_last_good_set() {
    let o = origins_on_one_port(&["a", "b"]).await;
    let port = o[0].addr.port();
    let mut dns = TestDns::start().await;
    dns.set_ips("app.internal", &ips(&[&o[0], &o[1]]), 1);
    let p = Portico::with(&config(
        &dns,
        serde_json::json!({ "dns": "app.internal", "port": port }),
        |u| u,
    ));
    assert_eq!(body(&p, &[]).await.0, 200);
    for mode in [Mode::ServFail, Mode::Silent] {
        dns.set_mode(mode);
        let q = dns.queries();
        wait_until("failed lookups", Duration::from_secs(5), async || {
            dns.queries() > q + 1
        })
        .await;
        for _ in 0..20 {
            assert_eq!(body(&p, &[]).await.0, 200, "{mode:?}");
        }
    }
    dns.stop();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for _ in 0..20 {
        assert_eq!(body(&p, &[]).await.0, 200);
    }
    let s = status(&p).await;
    assert_eq!(s["upstreams"][0]["backends"].as_array().unwrap().len(), 2);
    assert!(s["upstreams"][0]["discovery"]["last_error"]
        .as_str()
        .unwrap()
        .contains("dns:app.internal"));
    assert!(
        metric(
            &p,
            "portico_discovery_resolutions_total",
            &[("upstream", "app"), ("result", "error")]
        )
        .await
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_answer_is_believed_only_after_stale_for() {
    let o = origins_on_one_port(&["a"]).await;
    let port = o[0].addr.port();
    let dns = TestDns::start().await;
    dns.set_ips("app.internal", &ips(&[&o[0]]), 1);
    let p = Portico::with(&config(
        &dns,
        serde_json::json!({ "dns": "app.internal", "port": port }),
        |u| u,
    ));
    assert_eq!(body(&p, &[]).await.0, 200);
    dns.remove("app.internal");
    let t = Instant::now();
    // Within the grace the last known backend keeps serving.
    let q = dns.queries();
    wait_until(
        "the NXDOMAIN to be seen",
        Duration::from_secs(3),
        async || dns.queries() > q,
    )
    .await;
    assert_eq!(body(&p, &[]).await.0, 200);
    wait_until("the set to empty", Duration::from_secs(5), async || {
        body(&p, &[]).await.0 == 503
    })
    .await;
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "emptied after {:?}",
        t.elapsed()
    );
    let (_, text) = body(&p, &[]).await;
    assert!(
        text.contains("upstream \"app\" has no backends: dns:app.internal returned no addresses"),
        "{text}"
    );
    let r = client().get(p.admin_url("/ready")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    // The name comes back.
    dns.set_ips("app.internal", &ips(&[&o[0]]), 1);
    wait_until(
        "the backend to return",
        Duration::from_secs(3),
        async || body(&p, &[]).await.0 == 200,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_at_start_serves_503_saying_why_then_recovers() {
    let o = origins_on_one_port(&["a"]).await;
    let port = o[0].addr.port();
    let dns = TestDns::start().await;
    dns.set_mode(Mode::Silent);
    let cfg = config(
        &dns,
        serde_json::json!({ "dns": "app.internal", "port": port }),
        |u| u,
    )
    .section("dns", "startup_wait", "100ms")
    .render();
    let start = Instant::now();
    let p = Portico::start(&cfg);
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "start-up waited {:?}",
        start.elapsed()
    );
    let (code, text) = body(&p, &[]).await;
    assert_eq!(code, 503);
    assert!(
        text.contains("no answer from DNS yet for dns:app.internal")
            || text.contains("discovery of dns:app.internal failed"),
        "{text}"
    );
    dns.set_ips("app.internal", &ips(&[&o[0]]), 1);
    dns.set_mode(Mode::Normal);
    wait_until("discovery to succeed", Duration::from_secs(5), async || {
        body(&p, &[]).await.0 == 200
    })
    .await;
}

fn fly_zone(dns: &TestDns, o: &[Origin]) {
    // ams: a1, a2; fra: f1; sjc: s1
    dns.set_txt("vms.app.internal", "a1 ams,a2 ams,f1 fra,s1 sjc", 1);
    for (i, id) in ["a1", "a2", "f1", "s1"].iter().enumerate() {
        dns.set_ips(&format!("{id}.vm.app.internal"), &[o[i].addr.ip()], 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fly_mode_gives_ids_and_regions_and_prefers_the_local_region() {
    let o = origins_on_one_port(&["a1", "a2", "f1", "s1"]).await;
    let port = o[0].addr.port();
    let dns = TestDns::start().await;
    fly_zone(&dns, &o);
    let p = Portico::with(
        &config(
            &dns,
            serde_json::json!({ "fly_app": "app", "port": port }),
            |u| u,
        )
        .server("region_order", ["fra", "sjc"]),
    );
    let s = status(&p).await;
    let mut backends: Vec<(String, String, String, String)> = s["upstreams"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["id"].as_str().unwrap().to_string(),
                b["region"].as_str().unwrap().to_string(),
                b["address"].as_str().unwrap().to_string(),
                b["origin"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    backends.sort();
    assert_eq!(
        backends[0],
        (
            "a1".into(),
            "ams".into(),
            o[0].addr.to_string(),
            "fly:app".into()
        )
    );
    assert_eq!(
        backends[2],
        (
            "f1".into(),
            "fra".into(),
            o[2].addr.to_string(),
            "fly:app".into()
        )
    );
    assert_eq!(
        s["upstreams"][0]["regions"],
        serde_json::json!(["ams", "fra", "sjc"])
    );

    // Everything stays in the local region while it can take work.
    let mut seen = HashMap::new();
    for _ in 0..40 {
        *seen.entry(body(&p, &[]).await.1).or_insert(0) += 1;
    }
    assert_eq!(
        seen.keys().filter(|k| k.starts_with('a')).count(),
        2,
        "{seen:?}"
    );
    assert!(
        seen.keys().all(|k| k.starts_with('a')),
        "left the local region: {seen:?}"
    );

    // Client routing headers.
    assert_eq!(
        body(&p, &[("fly-prefer-region", "sjc,fra")]).await,
        (200, "s1".into())
    );
    assert_eq!(
        body(&p, &[("fly-force-region", "fra")]).await,
        (200, "f1".into())
    );
    assert_eq!(
        body(&p, &[("fly-prefer-instance-id", "f1")]).await,
        (200, "f1".into())
    );
    assert_eq!(
        body(&p, &[("fly-force-instance-id", "s1")]).await,
        (200, "s1".into())
    );
    let (code, text) = body(&p, &[("fly-force-instance-id", "nope")]).await;
    assert_eq!(code, 503);
    assert!(
        text.contains("instance \"nope\" is not a backend of upstream \"app\""),
        "{text}"
    );
    let (code, text) = body(&p, &[("fly-force-region", "syd")]).await;
    assert_eq!(code, 503);
    assert!(
        text.contains("no backend in region syd (fly-force-region); it has ams, fra, sjc"),
        "{text}"
    );
    let (code, text) = body(&p, &[("fly-prefer-instance-id", "nope")]).await;
    assert_eq!(code, 200);
    assert!(text.starts_with('a'), "{text}");
    let (code, text) = body(&p, &[("fly-prefer-region", "syd")]).await;
    assert_eq!(code, 200);
    assert!(text.starts_with('a'), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fails_over_to_the_nearest_region_and_comes_back() {
    let mut o = origins_on_one_port(&["a1", "a2", "f1", "s1"]).await;
    let port = o[0].addr.port();
    let dns = TestDns::start().await;
    fly_zone(&dns, &o);
    let cfg = config(
        &dns,
        serde_json::json!({ "fly_app": "app", "port": port }),
        |u| u.set("passive", serde_json::json!({ "eject_for": "300ms" })),
    )
    .server("region_order", ["fra", "sjc"])
    .render();
    let p = Portico::start(&cfg);
    assert!(body(&p, &[]).await.1.starts_with('a'));
    // Both local replicas die (their DNS records stay: no health checks yet, so connect
    // failures are what moves the traffic).
    let (a1, a2) = (o[0].addr, o[1].addr);
    o[0].stop().await;
    o[1].stop().await;
    for _ in 0..10 {
        assert_eq!(
            body(&p, &[]).await,
            (200, "f1".into()),
            "nearest remote region by region_order"
        );
    }
    // They come back on the same addresses: traffic returns home once their ejection (after
    // the connection failures) is over.
    let _a1 = Origin::start_on(&a1.to_string(), "a1", echo("a1")).await;
    let _a2 = Origin::start_on(&a2.to_string(), "a2", echo("a2")).await;
    wait_until(
        "traffic to return to the local region",
        Duration::from_secs(3),
        async || body(&p, &[]).await.1.starts_with('a'),
    )
    .await;
    for _ in 0..10 {
        assert!(body(&p, &[]).await.1.starts_with('a'));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fly_regions_fallback_without_vms_records() {
    let o = origins_on_one_port(&["a1", "f1"]).await;
    let port = o[0].addr.port();
    let dns = TestDns::start().await;
    dns.set_txt("regions.app.internal", "ams,fra", 1);
    dns.set_ips("ams.app.internal", &[o[0].addr.ip()], 1);
    dns.set_ips("fra.app.internal", &[o[1].addr.ip()], 1);
    let p = Portico::with(&config(
        &dns,
        serde_json::json!({ "fly_app": "app", "port": port }),
        |u| u,
    ));
    let s = status(&p).await;
    let regions: Vec<&str> = s["upstreams"][0]["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["region"].as_str().unwrap())
        .collect();
    assert_eq!(regions.len(), 2);
    assert!(regions.contains(&"ams") && regions.contains(&"fra"));
    assert_eq!(body(&p, &[]).await, (200, "a1".into()));
    assert_eq!(
        body(&p, &[("fly-force-region", "fra")]).await,
        (200, "f1".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_host_names_are_discovered_and_refreshed() {
    let o = origins_on_one_port(&["a", "b"]).await;
    let port = o[0].addr.port();
    let dns = TestDns::start().await;
    dns.set_ips("web.test", &[o[0].addr.ip()], 1);
    let cfg = base(&dns)
        .upstream(Upstream::new("app", [format!("web.test:{port}")]))
        .render();
    let p = Portico::start(&cfg);
    assert_eq!(body(&p, &[]).await, (200, "a".into()));
    dns.set_ips("web.test", &[o[1].addr.ip()], 1);
    wait_until(
        "the new address to be used",
        Duration::from_secs(4),
        async || body(&p, &[]).await.1 == "b",
    )
    .await;
    let s = status(&p).await;
    assert_eq!(s["upstreams"][0]["backends"][0]["origin"], "dns:web.test");
}

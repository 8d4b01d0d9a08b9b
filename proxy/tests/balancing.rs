//! Balancing modes and Fly's concurrency model: round robin, random, least requests,
//! consistent hashing, soft and hard limits, and the wait queue.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;

/// An origin that answers `/slow` after `delay` and everything else at once.
async fn slowish(name: &str, delay: Duration) -> Origin {
    let n = name.to_string();
    Origin::start(name, move |s| {
        let n = n.clone();
        Box::pin(async move {
            if s.uri.starts_with("/slow") {
                tokio::time::sleep(delay).await;
            }
            text(200, &n, &[])
        })
    })
    .await
}

/// Portico with one upstream `app` over `backends`, shaped by `f`.
fn start(backends: &[&Origin], f: impl FnOnce(Upstream) -> Upstream) -> Portico {
    let app = Upstream::new("app", backends.iter().map(|o| o.addr));
    Portico::with(&Config::new().upstream(f(app)))
}

async fn tally(
    p: &Portico,
    n: usize,
    path: &str,
    headers: &[(&str, &str)],
) -> HashMap<String, usize> {
    let c = client();
    let mut out = HashMap::new();
    for _ in 0..n {
        let mut rb = c.get(p.url("http", path));
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let body = rb.send().await.unwrap().text().await.unwrap();
        *out.entry(body).or_insert(0) += 1;
    }
    out
}

#[tokio::test]
async fn round_robin_is_even_and_weighted() {
    let a = Origin::named("a").await;
    let b = Origin::named("b").await;
    let c = Origin::named("c").await;
    let p = start(&[&a, &b, &c], |u| u.balance("round_robin"));
    let t = tally(&p, 30, "/", &[]).await;
    assert_eq!(
        t,
        HashMap::from([("a".into(), 10), ("b".into(), 10), ("c".into(), 10)])
    );

    let weighted = Upstream::with_backends(
        "app",
        vec![
            serde_json::json!(a.addr.to_string()),
            serde_json::json!({ "address": b.addr.to_string(), "weight": 3 }),
        ],
    )
    .balance("round_robin");
    let p = Portico::with(&Config::new().upstream(weighted));
    let t = tally(&p, 40, "/", &[]).await;
    assert_eq!(t, HashMap::from([("a".into(), 10), ("b".into(), 30)]));
}

#[tokio::test]
async fn random_reaches_every_backend() {
    let a = Origin::named("a").await;
    let b = Origin::named("b").await;
    let c = Origin::named("c").await;
    let p = start(&[&a, &b, &c], |u| u.balance("random"));
    let t = tally(&p, 300, "/", &[]).await;
    assert_eq!(t.len(), 3);
    for (k, v) in &t {
        assert!(*v > 50, "{k} got only {v} of 300");
    }
}

#[tokio::test]
async fn least_requests_avoids_the_busy_backend() {
    let a = slowish("a", Duration::from_millis(800)).await;
    let b = slowish("b", Duration::from_millis(800)).await;
    let p = start(&[&a, &b], |u| u.balance("least_requests"));
    let c = client();
    let slow_url = p.url("http", "/slow");
    let slow =
        tokio::spawn(async move { c.get(slow_url).send().await.unwrap().text().await.unwrap() });
    // Wait until the slow request is in flight somewhere.
    let start = Instant::now();
    while a.count() + b.count() == 0 {
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let busy = if a.count() == 1 { "a" } else { "b" };
    let t = tally(&p, 10, "/", &[]).await;
    assert_eq!(t.len(), 1, "{t:?}");
    assert!(
        !t.contains_key(busy),
        "requests went to the busy backend {busy}: {t:?}"
    );
    assert_eq!(slow.await.unwrap(), busy);
}

#[tokio::test]
async fn consistent_hash_keeps_keys_on_one_backend() {
    let a = Origin::named("a").await;
    let b = Origin::named("b").await;
    let c = Origin::named("c").await;
    let p = start(&[&a, &b, &c], |u| {
        u.balance("consistent_hash").set("hash_on", "header:x-user")
    });
    let mut owners = HashMap::new();
    for k in 0..40 {
        let key = format!("user-{k}");
        let t = tally(&p, 5, "/", &[("x-user", &key)]).await;
        assert_eq!(t.len(), 1, "{key} spread over {t:?}");
        owners.insert(key, t.into_keys().next().unwrap());
    }
    let distinct: std::collections::HashSet<_> = owners.values().collect();
    assert_eq!(distinct.len(), 3, "40 keys should use every backend");

    // Cookie-based hashing.
    let p2 = start(&[&a, &b, &c], |u| {
        u.balance("consistent_hash").set("hash_on", "cookie:sid")
    });
    for k in 0..10 {
        let cookie = format!("theme=dark; sid=s{k}");
        let t = tally(&p2, 4, "/", &[("cookie", &cookie)]).await;
        assert_eq!(t.len(), 1);
    }
}

#[tokio::test]
async fn soft_limit_steers_new_work_away_from_a_busy_backend() {
    let a = slowish("a", Duration::from_millis(800)).await;
    let b = slowish("b", Duration::from_millis(800)).await;
    let p = start(&[&a, &b], |u| {
        u.balance("round_robin").set(
            "concurrency",
            serde_json::json!({ "type": "requests", "soft_limit": 1, "hard_limit": 10 }),
        )
    });
    let c = client();
    let url = p.url("http", "/slow");
    let slow = tokio::spawn(async move { c.get(url).send().await.unwrap().text().await.unwrap() });
    let start = Instant::now();
    while a.count() + b.count() == 0 {
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let busy = if a.count() == 1 { "a" } else { "b" };
    // Round robin would alternate; the soft limit keeps every quick request on the idle one.
    let t = tally(&p, 6, "/", &[]).await;
    assert!(!t.contains_key(busy), "{t:?}");
    slow.await.unwrap();
}

#[tokio::test]
async fn hard_limit_queues_then_answers_503_with_retry_after() {
    let a = slowish("a", Duration::from_millis(1500)).await;
    let p = start(&[&a], |u| {
        u.set("concurrency", serde_json::json!({ "hard_limit": 1 }))
            .set("queue_timeout", "300ms")
            .set("max_queue", 1)
    });
    let c = client();
    let url = p.url("http", "/slow");
    let c1 = c.clone();
    let first = tokio::spawn(async move { c1.get(url).send().await.unwrap().status() });
    let start = Instant::now();
    while a.count() == 0 {
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The second waits in the queue for the queue timeout, then gets 503.
    let c2 = c.clone();
    let url2 = p.url("http", "/");
    let second = tokio::spawn(async move {
        let t = Instant::now();
        let r = c2.get(url2).send().await.unwrap();
        (
            r.status(),
            r.headers().get("retry-after").cloned(),
            t.elapsed(),
            r.text().await.unwrap(),
        )
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The queue holds one: a third request is refused at once.
    let t = Instant::now();
    let r = c.get(p.url("http", "/")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(t.elapsed() < Duration::from_millis(250));
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("requests are already waiting"));

    let (status, retry_after, waited, body) = second.await.unwrap();
    assert_eq!(status, 503);
    assert_eq!(retry_after.unwrap(), "1");
    assert!(waited >= Duration::from_millis(280), "waited {waited:?}");
    assert!(
        body.contains("is at its hard limit; waited 300ms"),
        "{body}"
    );
    assert_eq!(first.await.unwrap(), 200);
    assert_eq!(
        metric(
            &p,
            "portico_upstream_queue_timeouts_total",
            &[("upstream", "app")]
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn queued_request_proceeds_when_a_slot_frees() {
    let a = slowish("a", Duration::from_millis(300)).await;
    let p = start(&[&a], |u| {
        u.set("concurrency", serde_json::json!({ "hard_limit": 1 }))
            .set("queue_timeout", "5s")
    });
    let c = client();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let c = c.clone();
        let url = p.url("http", "/slow");
        tasks.push(tokio::spawn(async move {
            c.get(url).send().await.unwrap().status()
        }));
    }
    let start = Instant::now();
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    // One at a time: four requests of 300 ms each take at least 1.2 s.
    assert!(
        start.elapsed() >= Duration::from_millis(1150),
        "{:?}",
        start.elapsed()
    );
}

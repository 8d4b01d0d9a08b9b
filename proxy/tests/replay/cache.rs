//! The replay cache: hits, invalidation, bypass, expiry, session keys.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_cache_hit_invalidate_bypass() {
    let c = cluster().await;
    let replay_with_cache = |bypass: bool| {
        let cache = if bypass {
            "x.test/app/*;30;bypass"
        } else {
            "x.test/app/*;30"
        };
        vec![
            ("host", "x.test"),
            ("x-replay-from-a1", "region=iad"),
            ("x-replay-from-a2", "region=iad"),
            ("x-cache-from-a1", cache),
            ("x-cache-from-a2", cache),
        ]
    };
    let get = |path: &'static str, headers: Vec<(&'static str, &'static str)>| {
        let c = &c;
        async move {
            let (status, _, text) = c.send("GET", path, &headers, vec![]).await;
            assert_eq!(status, 200, "{text}");
            serde_json::from_str::<Value>(&text).unwrap()
        }
    };
    // First request: the origin replays and asks for the entry; the target sees a miss.
    let v = get("/app/one", replay_with_cache(true)).await;
    assert_eq!(v["id"], "p1");
    assert_eq!(v["cache_status"], "miss");
    // Second request: straight to the primary, the origin is skipped.
    let local = c.count("a1") + c.count("a2");
    let v = get("/app/two", vec![("host", "x.test")]).await;
    assert_eq!(v["id"], "p1");
    assert_eq!(v["cache_status"], "hit");
    assert_eq!(
        v["src"],
        Value::Null,
        "no fly-replay-src on a request routed by the cache"
    );
    assert_eq!(c.count("a1") + c.count("a2"), local);
    // Other paths are not covered.
    let v = get("/other", vec![("host", "x.test")]).await;
    assert!(v["id"].as_str().unwrap().starts_with('a'));
    // Bypass, allowed by the origin: the request goes to the origin again.
    let mut h = replay_with_cache(true);
    h.push(("fly-replay-cache-control", "skip"));
    let local = c.count("a1") + c.count("a2");
    let v = get("/app/three", h).await;
    assert_eq!(c.count("a1") + c.count("a2"), local + 1);
    assert_eq!(v["cache_status"], "bypass");
    // The target invalidates: it replays back with fly-replay-cache: invalidate.
    let (status, _, text) = c
        .send(
            "GET",
            "/app/four",
            &[
                ("host", "x.test"),
                ("x-replay-from-p1", "instance=a1"),
                ("x-invalidate-at-p1", "1"),
            ],
            vec![],
        )
        .await;
    assert_eq!(status, 200, "{text}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["id"], "a1");
    let v = get("/app/five", vec![("host", "x.test")]).await;
    assert!(
        v["id"].as_str().unwrap().starts_with('a'),
        "entry gone: {v}"
    );
    assert!(metric(&c.p, "portico_replay_cache_total", &[("result", "hit")]).await >= 1.0);
    assert!(
        metric(
            &c.p,
            "portico_replay_cache_total",
            &[("result", "invalidated")]
        )
        .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_cache_entries_expire() {
    let c = cluster().await;
    let h = [
        ("host", "y.test"),
        ("x-replay-from-a1", "region=fra"),
        ("x-replay-from-a2", "region=fra"),
        ("x-cache-from-a1", "y.test/*;10"),
        ("x-cache-from-a2", "y.test/*;10"),
    ];
    assert_eq!(c.json("GET", &h, vec![]).await["id"], "f1");
    assert_eq!(
        c.json("GET", &[("host", "y.test")], vec![]).await["id"],
        "f1"
    );
    tokio::time::sleep(Duration::from_millis(10_300)).await;
    let v = c.json("GET", &[("host", "y.test")], vec![]).await;
    assert!(
        v["id"].as_str().unwrap().starts_with('a'),
        "expired after its ttl: {v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_replay_cache() {
    let c = cluster_with(|c| {
        c.route_set(
            0,
            "replay_cache",
            serde_json::json!([{ "cookie": "sid", "ttl": "1m" }]),
        )
    })
    .await;
    let h = [
        ("cookie", "sid=s-1"),
        ("x-replay-from-a1", "instance=f1"),
        ("x-replay-from-a2", "instance=f1"),
    ];
    assert_eq!(c.json("GET", &h, vec![]).await["id"], "f1");
    let local = c.count("a1") + c.count("a2");
    let v = c.json("GET", &[("cookie", "sid=s-1")], vec![]).await;
    assert_eq!(v["id"], "f1");
    assert_eq!(v["cache_status"], "hit");
    assert_eq!(c.count("a1") + c.count("a2"), local);
    // Another session is not affected.
    let v = c.json("GET", &[("cookie", "sid=s-2")], vec![]).await;
    assert!(v["id"].as_str().unwrap().starts_with('a'));
}

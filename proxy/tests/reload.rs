//! Hot reload through the real binary: alternating configs under load, bad configs that
//! change nothing, every trigger (POST /reload, SIGHUP, file edits, renames, symlink swaps),
//! certificate rotation and health state carried over.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Upstream `app` at `origin` (shaped by `f`) behind one route that tags its answers with
/// `x-config: <tag>`, so a test sees which configuration served it.
fn tagged(origin: std::net::SocketAddr, tag: &str, f: impl FnOnce(Upstream) -> Upstream) -> Config {
    Config::new()
        .upstream(f(Upstream::new("app", [origin])))
        .route(Route::to("app").set(
            "response_headers",
            serde_json::json!({ "set": { "x-config": tag } }),
        ))
}

/// [`tagged`] as a file's text.
fn config(origin: std::net::SocketAddr, tag: &str) -> String {
    tagged(origin, tag, |u| u).render()
}

async fn post_reload(p: &Portico) -> (u16, Value) {
    let r = client().post(p.admin_url("/reload")).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn tag_of(p: &Portico) -> (String, String) {
    let r = client().get(p.url("http", "/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let tag = r.headers()["x-config"].to_str().unwrap().to_string();
    (tag, r.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_reloads_under_load_drop_nothing_and_never_mix() {
    let a = Origin::named("a").await;
    let b = Origin::named("b").await;
    let (ca, cb) = (config(a.addr, "A"), config(b.addr, "B"));
    let p = Portico::start(&ca);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, bad) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (url, stop, ok, bad) = (p.url("http", "/"), stop.clone(), ok.clone(), bad.clone());
        load.push(tokio::spawn(async move {
            let c = client();
            // Bounded: stops when told, or after 60 s at most.
            let end = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        let tag = r.headers()["x-config"].to_str().unwrap().to_string();
                        let body = r.text().await.unwrap();
                        // One config or the other, never half of each.
                        if (tag == "A" && body == "a") || (tag == "B" && body == "b") {
                            ok.fetch_add(1, Ordering::Relaxed);
                        } else {
                            bad.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    _ => {
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    for i in 0..50 {
        let next = if i % 2 == 0 { &cb } else { &ca };
        std::fs::write(&p.config_path, next).unwrap();
        let (code, v) = post_reload(&p).await;
        assert_eq!(code, 200, "{v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    assert_eq!(bad.load(Ordering::Relaxed), 0);
    assert!(ok.load(Ordering::Relaxed) > 100);
    // Every request counted in flight was counted out, whichever generation it ran on (the
    // gauge is reached through the request's snapshot).
    // (A request's context ends just after its response is written: allow a moment.)
    let counted_out = Instant::now();
    while metric(&p, "portico_http_requests_in_flight", &[]).await != 0.0 {
        assert!(
            counted_out.elapsed() < Duration::from_secs(5),
            "requests stay counted in flight"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // 50 reloads through POST (the file watcher may have added its own).
    assert!(metric(&p, "portico_config_reloads_total", &[("result", "success")]).await >= 50.0);
    assert_eq!(tag_of(&p).await, ("A".to_string(), "a".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_changes_nothing_and_its_fix_applies() {
    let a = Origin::named("a").await;
    let b = Origin::named("b").await;
    let p = Portico::start(&config(a.addr, "A"));
    let gen_before = status(&p).await["config"]["generation"].as_u64().unwrap();
    std::fs::write(
        &p.config_path,
        tagged(b.addr, "B", |u| u.balance("fastest")).render(),
    )
    .unwrap();
    let (code, v) = post_reload(&p).await;
    assert_eq!(code, 422);
    let err = v["error"].as_str().unwrap();
    assert!(
        err.contains("portico.toml:") && err.contains("balance") && err.contains("fastest"),
        "{err}"
    );
    assert_eq!(tag_of(&p).await, ("A".into(), "a".into()));
    let s = status(&p).await;
    assert_eq!(s["config"]["generation"].as_u64().unwrap(), gen_before);
    assert!(s["config"]["last_reload_error"]
        .as_str()
        .unwrap()
        .contains("balance"));
    assert!(metric(&p, "portico_config_reloads_total", &[("result", "error")]).await >= 1.0);
    // Fixing the file applies it (the watcher notices without being asked).
    std::fs::write(&p.config_path, config(b.addr, "B")).unwrap();
    let start = Instant::now();
    while tag_of(&p).await.0 != "B" {
        assert!(start.elapsed() < Duration::from_secs(5), "fix not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let s = status(&p).await;
    assert_eq!(s["config"]["last_reload_error"], Value::Null);
    assert!(s["config"]["generation"].as_u64().unwrap() > gen_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rename_and_symlink_swap_reload() {
    let a = Origin::named("a").await;
    let b = Origin::named("b").await;
    let c = Origin::named("c").await;
    let dir = tempfile::tempdir().unwrap();
    // Like a Kubernetes ConfigMap: portico.toml -> ..data/portico.toml, ..data -> v1.
    let v1 = dir.path().join("v1");
    std::fs::create_dir(&v1).unwrap();
    std::fs::write(v1.join("portico.toml"), config(a.addr, "A")).unwrap();
    std::os::unix::fs::symlink("v1", dir.path().join("..data")).unwrap();
    let link = dir.path().join("portico.toml");
    std::os::unix::fs::symlink("..data/portico.toml", &link).unwrap();
    let p = Portico::start_path(&link, &[]);
    assert_eq!(tag_of(&p).await.0, "A");

    // Symlink swap: a new directory, and ..data pointed at it atomically.
    let v2 = dir.path().join("v2");
    std::fs::create_dir(&v2).unwrap();
    std::fs::write(v2.join("portico.toml"), config(b.addr, "B")).unwrap();
    std::os::unix::fs::symlink("v2", dir.path().join("..data_tmp")).unwrap();
    std::fs::rename(dir.path().join("..data_tmp"), dir.path().join("..data")).unwrap();
    wait_tag(&p, "B").await;

    // Replaced by rename (what editors do) inside the current version directory.
    std::fs::write(v2.join("new.toml"), config(c.addr, "C")).unwrap();
    std::fs::rename(v2.join("new.toml"), v2.join("portico.toml")).unwrap();
    wait_tag(&p, "C").await;

    // SIGHUP: reloads even when the watcher has nothing to notice.
    let before = metric(&p, "portico_config_reloads_total", &[("result", "success")]).await;
    p.signal("HUP");
    let start = Instant::now();
    while metric(&p, "portico_config_reloads_total", &[("result", "success")]).await <= before {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "SIGHUP did not reload"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The log line is written by a background writer: it may trail the metric a little.
    p.wait_log("trigger=\"SIGHUP\"", Duration::from_secs(5));
}

async fn wait_tag(p: &Portico, want: &str) {
    let start = Instant::now();
    while tag_of(p).await.0 != want {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "config {want} not applied:\n{}",
            p.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_certificates_serve_new_handshakes() {
    let a = Origin::named("a").await;
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = pki.leaf(dir.path(), "s", &["old.test"]);
    let cfg = |c: &std::path::Path, k: &std::path::Path| {
        let https = Listener::http("https").set(
            "tls",
            serde_json::json!({ "cert": c.display().to_string(), "key": k.display().to_string() }),
        );
        tagged(a.addr, "A", |u| u).listener(https).render()
    };
    let p = Portico::start(&cfg(&cert, &key));
    let addr = p.addr("https");
    let get = |name: &'static str| {
        let client = pki.client(&[(name, addr)], false);
        async move {
            client
                .get(format!("https://{name}:{}/", addr.port()))
                .send()
                .await
        }
    };
    assert!(get("old.test").await.is_ok());
    assert!(
        get("new.test").await.is_err(),
        "the old certificate does not name new.test"
    );
    // Rotate the files in place and reload.
    let (c2, k2) = pki.leaf(dir.path(), "s2", &["new.test"]);
    std::fs::copy(&c2, &cert).unwrap();
    std::fs::copy(&k2, &key).unwrap();
    let (code, v) = post_reload(&p).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(get("new.test").await.unwrap().status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_state_survives_a_reload_that_keeps_the_upstream() {
    let up = Origin::named("up").await;
    let down = dead_addr();
    let check = serde_json::json!({ "type": "tcp", "interval": "200ms", "rise": 1, "fall": 1 });
    let two = |tag: &str| {
        let app = Upstream::new("app", [up.addr, down]).check(check.clone());
        tagged(up.addr, tag, |_| app).render()
    };
    let p = Portico::start(&two("A"));
    let state_of = |s: &Value, addr: String| {
        s["upstreams"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["address"] == addr.as_str())
            .map(|b| b["state"].as_str().unwrap().to_string())
            .unwrap()
    };
    let start = Instant::now();
    loop {
        let s = status(&p).await;
        if state_of(&s, down.to_string()) == "down" && state_of(&s, up.addr.to_string()) == "up" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::write(&p.config_path, two("B")).unwrap();
    let (code, _) = post_reload(&p).await;
    assert_eq!(code, 200);
    // Right after the reload: still known down (not pending again), the live one still up.
    let s = status(&p).await;
    assert_eq!(state_of(&s, down.to_string()), "down");
    assert_eq!(state_of(&s, up.addr.to_string()), "up");
    for _ in 0..20 {
        let (tag, body) = tag_of(&p).await;
        assert_eq!((tag.as_str(), body.as_str()), ("B", "up"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_changes_are_reported_as_not_applied() {
    let a = Origin::named("a").await;
    let p = Portico::start(&config(a.addr, "A"));
    let moved = tagged(a.addr, "B", |u| u)
        .listener_set("address", "127.0.0.1:1")
        .render();
    std::fs::write(&p.config_path, moved).unwrap();
    let (code, v) = post_reload(&p).await;
    assert_eq!(code, 200);
    assert!(
        v["not_applied"][0].as_str().unwrap().contains("listeners"),
        "{v}"
    );
    // The rest applied, on the listener still bound.
    assert_eq!(tag_of(&p).await.0, "B");
}

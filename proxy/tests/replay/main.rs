//! fly-replay across regions of real origins discovered through a real DNS server.
//!
//! Every replica runs the same handler. Request headers tell a replica how to answer, so that
//! one request can be replayed along a chosen path: `x-replay-from-<id>: <fly-replay value>`
//! makes replica `<id>` answer with that instruction, `x-json-from-<id>: <json>` with the JSON
//! form, `x-chain: N` makes every replica replay to the next one until the request has been
//! replayed N times. Replicas that answer describe the request they got as JSON.
#![allow(clippy::unwrap_used)]

mod cache;
#[path = "../common/mod.rs"]
mod common;
mod transports;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::dns::TestDns;
use common::*;
use serde_json::Value;

const IDS: [(&str, &str); 5] = [
    ("a1", "ams"),
    ("a2", "ams"),
    ("p1", "iad"),
    ("f1", "fra"),
    ("o1", "lhr"),
];

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}

fn replica_handler(
    id: &'static str,
) -> impl Fn(Seen) -> futures_like::BoxFut + Send + Sync + 'static {
    move |s: Seen| {
        Box::pin(async move {
            let h = |n: &str| s.header(n).map(str::to_string);
            // Like a real app, an instance handed a failed replay answers it itself, unless
            // the test wants it to (wrongly) ask again.
            let handed_back = h("fly-replay-failed").is_some() && h("x-stubborn").is_none();
            if let Some(v) = h(&format!("x-replay-from-{id}")).filter(|_| !handed_back) {
                let mut headers = vec![("fly-replay", v.clone())];
                if let Some(c) = h(&format!("x-cache-from-{id}")) {
                    let mut parts = c.split(';');
                    headers.push(("fly-replay-cache", parts.next().unwrap_or("").to_string()));
                    headers.push((
                        "fly-replay-cache-ttl-secs",
                        parts.next().unwrap_or("10").to_string(),
                    ));
                    if parts.next() == Some("bypass") {
                        headers.push(("fly-replay-cache-allow-bypass", "yes".to_string()));
                    }
                }
                if h(&format!("x-invalidate-at-{id}")).is_some() {
                    headers.push(("fly-replay-cache", "invalidate".to_string()));
                }
                let hs: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
                return text(307, &format!("{id} says: replay {v}"), &hs);
            }
            if let Some(json) = h(&format!("x-json-from-{id}")) {
                return text(
                    200,
                    &json,
                    &[("content-type", "application/vnd.fly.replay+json")],
                );
            }
            if let Some(n) = h("x-chain") {
                let n: u32 = n.parse().unwrap();
                let done: u32 = s
                    .header("fly-replay-src")
                    .and_then(|src| src.split(';').find_map(|kv| kv.strip_prefix("state=")))
                    .map_or(0, |v| v.parse().unwrap());
                if done < n {
                    let next = IDS[(IDS.iter().position(|(i, _)| *i == id).unwrap() + 1) % 4].0;
                    let v = format!("instance={next};state={}", done + 1);
                    return text(307, "chain", &[("fly-replay", v.as_str())]);
                }
            }
            let body = serde_json::json!({
                "id": id,
                "method": s.method,
                "uri": s.uri,
                "body_len": s.body.len(),
                "body_fnv": fnv(&s.body),
                "src": s.header("fly-replay-src"),
                "failed": s.header("fly-replay-failed"),
                "unavailable": s.header("fly-preferred-instance-unavailable"),
                "cache_status": s.header("fly-replay-cache-status"),
                "client_replay": s.header("fly-replay"),
                "client_replay_other": s.header("fly-replay-whatever"),
                "x_added": s.header("x-added"),
                "cookie": s.header("cookie"),
            });
            text(
                200,
                &body.to_string(),
                &[("content-type", "application/json")],
            )
        })
    }
}

struct Cluster {
    p: Portico,
    dns: TestDns,
    origins: HashMap<&'static str, Origin>,
}

/// The replay cluster: replicas a1, a2 (ams), p1 (iad), f1 (fra) of `web` and o1 (lhr) of
/// `other`, found by DNS; Portico in ams.
async fn cluster() -> Cluster {
    cluster_with(|c| c).await
}

/// [`cluster`] with its configuration shaped by `shape`.
async fn cluster_with(shape: impl FnOnce(Config) -> Config) -> Cluster {
    let origins: Vec<Origin> = 'retry: loop {
        let first = Origin::start_on("127.0.0.2:0", IDS[0].0, replica_handler(IDS[0].0)).await;
        let port = first.addr.port();
        let mut out = vec![first];
        for (i, (id, _)) in IDS.iter().enumerate().skip(1) {
            let addr = format!("127.0.0.{}:{port}", 2 + i);
            if std::net::TcpListener::bind(&addr).is_err() {
                continue 'retry;
            }
            out.push(Origin::start_on(&addr, id, replica_handler(id)).await);
        }
        break out;
    };
    let port = origins[0].addr.port();
    let dns = TestDns::start().await;
    dns.set_txt("vms.web.internal", "a1 ams,a2 ams,p1 iad,f1 fra", 30);
    dns.set_txt("vms.other.internal", "o1 lhr", 30);
    for (i, (id, _)) in IDS.iter().enumerate() {
        let app = if *id == "o1" { "other" } else { "web" };
        dns.set_ips(
            &format!("{id}.vm.{app}.internal"),
            &[origins[i].addr.ip()],
            30,
        );
    }
    // Region ams, primary iad; `web` and `other` found under Fly's names at the tests' DNS.
    let discovered = |app: &str| serde_json::json!({ "fly_app": app, "port": port });
    let config = Config::new()
        .server("region", "ams")
        .server("primary_region", "iad")
        .server("region_order", ["iad", "fra", "lhr"])
        .section("dns", "servers", [dns.addr.to_string()])
        .section("dns", "timeout", "500ms")
        .section("dns", "min_ttl", "1s")
        .upstream(Upstream::discovered("web", discovered("web")).balance("round_robin"))
        .upstream(Upstream::discovered("other", discovered("other")))
        .route(Route::to("web"));
    let p = Portico::with(&shape(config));
    let origins = IDS.iter().map(|(id, _)| *id).zip(origins).collect();
    Cluster { p, dns, origins }
}

impl Cluster {
    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (u16, HashMap<String, String>, String) {
        let c = client();
        let mut rb = c
            .request(method.parse().unwrap(), self.p.url("http", path))
            .body(body);
        for (k, v) in headers {
            rb = rb.header(*k, *v);
        }
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let hs = r
            .headers()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        (status, hs, r.text().await.unwrap())
    }

    async fn json(&self, method: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Value {
        let (status, _, text) = self.send(method, "/", headers, body).await;
        assert_eq!(status, 200, "{text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
    }

    fn count(&self, id: &str) -> usize {
        self.origins[id].count()
    }
}

fn src_field(v: &Value, key: &str) -> Option<String> {
    v["src"]
        .as_str()?
        .split(';')
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")).map(str::to_string))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_replayed_to_the_primary_with_their_bodies() {
    let c = cluster().await;
    // A GET is answered locally.
    let v = c.json("GET", &[], vec![]).await;
    assert!(v["id"].as_str().unwrap().starts_with('a'), "{v}");
    assert_eq!(v["src"], Value::Null);
    for size in [0usize, 1024, 60 * 1024, 1024 * 1024] {
        let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        let want_fnv = fnv(&body);
        let before_local = c.count("a1") + c.count("a2");
        let v = c
            .json(
                "POST",
                &[
                    ("x-replay-from-a1", "region=iad;state=write-1"),
                    ("x-replay-from-a2", "region=iad;state=write-1"),
                ],
                body,
            )
            .await;
        assert_eq!(v["id"], "p1", "size {size}: {v}");
        assert_eq!(v["body_len"], size, "size {size}");
        assert_eq!(v["body_fnv"], want_fnv, "size {size}");
        assert_eq!(src_field(&v, "region").as_deref(), Some("ams"));
        assert_eq!(src_field(&v, "state").as_deref(), Some("write-1"));
        let inst = src_field(&v, "instance").unwrap();
        assert!(inst == "a1" || inst == "a2");
        let t: u128 = src_field(&v, "t").unwrap().parse().unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros();
        assert!(now - t < 10_000_000, "t is in microseconds since the epoch");
        assert_eq!(
            c.count("a1") + c.count("a2"),
            before_local + 1,
            "asked the local replica once"
        );
    }
    assert!(
        metric(
            &c.p,
            "portico_replays_total",
            &[("upstream", "web"), ("outcome", "replayed")]
        )
        .await
            >= 4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_prefer_instance_app_and_elsewhere() {
    let c = cluster().await;
    let all_local = |v: &str| {
        vec![
            ("x-replay-from-a1", v.to_string()),
            ("x-replay-from-a2", v.to_string()),
        ]
    };

    let h = all_local("instance=f1");
    let v = c.json("GET", &hs(&h), vec![]).await;
    assert_eq!(v["id"], "f1");

    // A preferred instance that does not exist: any instance matching the rest, and the
    // request says so.
    let h = all_local("prefer_instance=gone;region=iad");
    let v = c.json("GET", &hs(&h), vec![]).await;
    assert_eq!(v["id"], "p1");
    assert_eq!(v["unavailable"], "gone");

    // Another app (upstream).
    let h = all_local("app=other");
    let v = c.json("GET", &hs(&h), vec![]).await;
    assert_eq!(v["id"], "o1");

    // elsewhere: the responder is excluded, so the other local replica answers.
    let v = c
        .json("GET", &[("x-replay-from-a1", "elsewhere=true")], vec![])
        .await;
    let v2 = c
        .json("GET", &[("x-replay-from-a1", "elsewhere=true")], vec![])
        .await;
    for v in [v, v2] {
        assert_eq!(v["id"], "a2", "{v}");
    }

    // A forced instance that does not exist: 503 naming it.
    let (status, _, text) = c
        .send("GET", "/", &hs(&all_local("instance=nope")), vec![])
        .await;
    assert_eq!(status, 503);
    assert!(text.contains("replay target has no usable instance: instance \"nope\" is not a backend of upstream \"web\""), "{text}");
    // An unknown app: 502.
    let (status, _, text) = c
        .send("GET", "/", &hs(&all_local("app=ghost")), vec![])
        .await;
    assert_eq!(status, 502, "{text}\n{}", c.p.stderr_text());
    assert!(
        text.contains("replay target app \"ghost\" is not an upstream"),
        "{text}"
    );
    // A malformed instruction: 502.
    let (status, _, text) = c
        .send("GET", "/", &hs(&all_local("region=\"iad")), vec![])
        .await;
    assert_eq!(status, 502);
    assert!(
        text.contains("sent a malformed replay instruction"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_lists_with_and_without_any() {
    let c = cluster().await;
    let local = |v: &'static str| [("x-replay-from-a1", v), ("x-replay-from-a2", v)];
    assert_eq!(
        c.json("GET", &local("region=\"fra,iad\""), vec![]).await["id"],
        "f1"
    );
    // Forced list with no instance: 503.
    let (status, _, text) = c
        .send("GET", "/", &local("region=\"syd,nrt\""), vec![])
        .await;
    assert_eq!(status, 503);
    assert!(text.contains("no backend in region syd,nrt"), "{text}");
    // With `any`, another region answers (the nearest: iad by region_order after ams... but
    // the local replicas asked to leave, and the local region comes first in normal order).
    let v = c
        .json(
            "GET",
            &[("x-replay-from-a1", "region=\"syd,any\";elsewhere=true")],
            vec![],
        )
        .await;
    assert_eq!(v["id"], "a2", "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_and_fallbacks() {
    let mut c = cluster().await;
    // The primary is down: the replay target cannot be reached.
    let p1 = c.origins.get_mut("p1").unwrap();
    p1.stop().await;
    let local = |v: &'static str| [("x-replay-from-a1", v), ("x-replay-from-a2", v)];
    let (status, _, text) = c
        .send("POST", "/", &local("region=iad"), b"x".to_vec())
        .await;
    assert_eq!(status, 502, "{text}\n{}", c.p.stderr_text());
    assert!(
        text.contains("replay target has no usable instance"),
        "{text}"
    );

    // force_self: back to the instance that asked, which is told why.
    let v = c
        .json(
            "POST",
            &[("x-replay-from-a1", "region=iad;fallback=force_self")],
            b"x".to_vec(),
        )
        .await;
    // a2 did not ask: the request went to a1 or a2 first; whichever asked gets it back.
    let id = v["id"].as_str().unwrap().to_string();
    let failed = v["failed"].as_str().unwrap_or_else(|| panic!("{v}"));
    assert!(
        failed.starts_with(&format!(
            "instance={id};app=web;region=ams;reason=retries_exhausted;elapsed_ms="
        )),
        "{failed}"
    );

    // prefer_self with no candidate at all.
    let v = c
        .json(
            "POST",
            &local("region=syd;fallback=prefer_self"),
            b"x".to_vec(),
        )
        .await;
    assert!(v["id"].as_str().unwrap().starts_with('a'));
    assert!(
        v["failed"]
            .as_str()
            .unwrap()
            .contains("reason=no_candidate"),
        "{v}"
    );

    // A timeout bounds how long the target is tried: every iad candidate is at its limit.
    // (Region iad has no live instance; timeout with fallback reports `timeout` when the
    // deadline passes first.)
    let start = Instant::now();
    let v = c
        .json(
            "POST",
            &local("region=iad;timeout=300ms;fallback=force_self"),
            b"x".to_vec(),
        )
        .await;
    assert!(start.elapsed() < Duration::from_secs(5));
    let failed = v["failed"].as_str().unwrap();
    assert!(
        failed.contains("reason=retries_exhausted") || failed.contains("reason=timeout"),
        "{failed}"
    );

    // A request delivered by a fallback may not replay again.
    let (status, _, text) = c
        .send(
            "POST",
            "/",
            &[
                ("x-replay-from-a1", "region=syd;fallback=force_self"),
                ("x-replay-from-a2", "region=syd;fallback=force_self"),
                ("x-stubborn", "1"),
            ],
            b"x".to_vec(),
        )
        .await;
    assert_eq!(status, 502, "{text}\n{}", c.p.stderr_text());
    assert!(
        text.contains("delivered by a replay fallback may not be replayed again"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_form_with_transforms() {
    let c = cluster().await;
    let json = r#"{"region":"iad","state":"j","transform":{"path":"/rewritten?q=1","delete_headers":["Cookie"],"set_headers":[{"name":"X-Added","value":"yes"}]}}"#;
    for http2 in [false, true] {
        let _ = http2;
        let v = c
            .json(
                "POST",
                &[
                    ("x-json-from-a1", json),
                    ("x-json-from-a2", json),
                    ("cookie", "secret=1"),
                ],
                b"payload".to_vec(),
            )
            .await;
        assert_eq!(v["id"], "p1");
        assert_eq!(v["uri"], "/rewritten?q=1");
        assert_eq!(v["x_added"], "yes");
        assert_eq!(v["cookie"], Value::Null);
        assert_eq!(v["body_len"], 7);
        assert_eq!(src_field(&v, "state").as_deref(), Some("j"));
    }
    // A broken JSON instruction is a 502, and nothing of it reaches the client.
    let bad = r#"{"region":5}"#;
    let (status, _, text) = c
        .send(
            "GET",
            "/",
            &[("x-json-from-a1", bad), ("x-json-from-a2", bad)],
            vec![],
        )
        .await;
    assert_eq!(status, 502);
    assert!(text.contains("malformed replay instruction"), "{text}");
    assert!(
        metric(
            &c.p,
            "portico_replays_total",
            &[("kind", "json"), ("outcome", "replayed")]
        )
        .await
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_form_over_raw_http1_shows_only_the_final_response() {
    let c = cluster().await;
    let json = r#"{"region":"fra"}"#;
    let req = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nx-json-from-a1: {json}\r\nx-json-from-a2: {json}\r\n\r\n"
    );
    let resp = raw(c.p.addr("http"), req.as_bytes(), Duration::from_secs(5)).await;
    // An interim 100 may precede the final answer; the instruction body never appears.
    let final_part = resp.rsplit("HTTP/1.1 ").next().unwrap();
    assert!(final_part.starts_with("200"), "{resp}");
    assert!(resp.contains("\"id\":\"f1\""), "{resp}");
    assert!(!resp.contains("\"region\":\"fra\""), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chains_of_ten_replays_succeed_and_the_eleventh_fails() {
    let c = cluster().await;
    let v = c.json("POST", &[("x-chain", "10")], b"body".to_vec()).await;
    assert_eq!(src_field(&v, "state").as_deref(), Some("10"), "{v}");
    assert_eq!(v["body_len"], 4);
    let (status, _, text) = c
        .send("POST", "/", &[("x-chain", "11")], b"body".to_vec())
        .await;
    assert_eq!(status, 508, "{text}");
    assert!(text.contains("replayed 10 times already"), "{text}");
    assert!(
        metric(
            &c.p,
            "portico_replays_total",
            &[("outcome", "replay_hop_limit")]
        )
        .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_internal_headers_never_reach_an_upstream() {
    let c = cluster().await;
    let spoof = [
        ("fly-replay-src", "instance=evil;region=xxx;t=1;state=admin"),
        ("fly-replay-failed", "instance=evil"),
        ("fly-preferred-instance-unavailable", "evil"),
        ("fly-replay-cache-status", "hit"),
        ("fly-replay", "region=evil"),
        ("fly-replay-whatever", "x"),
    ];
    let v = c.json("GET", &spoof, vec![]).await;
    assert_eq!(v["client_replay"], Value::Null);
    assert_eq!(v["client_replay_other"], Value::Null);
    assert_eq!(v["src"], Value::Null);
    assert_eq!(v["failed"], Value::Null);
    assert_eq!(v["unavailable"], Value::Null);
    assert_eq!(v["cache_status"], Value::Null);
    // On a replayed request the header is Portico's, not the client's.
    let mut h = spoof.to_vec();
    h.push(("x-replay-from-a1", "region=iad"));
    h.push(("x-replay-from-a2", "region=iad"));
    let v = c.json("GET", &h, vec![]).await;
    assert_eq!(src_field(&v, "region").as_deref(), Some("ams"));
    assert_eq!(v["failed"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_routing_sends_writes_straight_to_the_primary() {
    let c = cluster_with(|c| c.upstream_set("web", "writes", "primary")).await;
    let local_before = c.count("a1") + c.count("a2");
    for _ in 0..5 {
        let v = c.json("POST", &[], b"w".to_vec()).await;
        assert_eq!(v["id"], "p1");
        assert_eq!(v["src"], Value::Null, "not a replay");
    }
    assert_eq!(
        c.count("a1") + c.count("a2"),
        local_before,
        "the local replicas saw nothing"
    );
    // Reads stay local.
    let v = c.json("GET", &[], vec![]).await;
    assert!(v["id"].as_str().unwrap().starts_with('a'));
}

/// Header pairs as `(&str, &str)` for the request helpers.
fn hs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

//! Basic proxying over HTTP/1.1: routing by host and path, forwarding headers, request ids,
//! error bodies, retries and force_https.
#![allow(clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;
mod failures;

use std::time::Duration;

use common::*;

/// Upstreams `web` and `api`: `example.com` goes to web, `/api` on example.com and its
/// subdomains to api, anything else to web (route `catchall`).
fn two_upstreams(a: &Origin, b: &Origin) -> Config {
    Config::new()
        .upstream(Upstream::new("web", [a.addr]))
        .upstream(Upstream::new("api", [b.addr]))
        .route(Route::to("web").host("example.com").path("/"))
        .route(
            Route::to("api")
                .host(["example.com", "*.example.com"])
                .path("/api"),
        )
        .route(Route::to("web").name("catchall").path("/"))
}

#[tokio::test]
async fn routes_by_host_and_path() {
    let web = Origin::named("web").await;
    let api = Origin::named("api").await;
    let p = Portico::with(&two_upstreams(&web, &api));
    let c = client();
    let get = |host: &'static str, path: &'static str| {
        let c = c.clone();
        let url = p.url("http", path);
        async move {
            let r = c.get(url).header("host", host).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    assert_eq!(get("example.com", "/").await, (200, "web".into()));
    assert_eq!(get("example.com", "/api/users").await, (200, "api".into()));
    assert_eq!(get("EXAMPLE.com:80", "/api").await, (200, "api".into()));
    assert_eq!(get("x.example.com", "/api/v1").await, (200, "api".into()));
    assert_eq!(get("example.com", "/apix").await, (200, "web".into()));
    assert_eq!(get("other.org", "/api").await, (200, "web".into()));
    // Dot segments and encoded dots are resolved before routing (clients like reqwest would
    // resolve them already, so these go raw).
    for (path, want) in [
        ("/api/../x", "web"),
        ("/static/../api/x", "api"),
        ("/static/%2e%2e/api/x", "api"),
        ("//api//x", "api"),
        ("/%61pi/x", "api"),
    ] {
        let req = format!("GET {path} HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n");
        let resp = raw(p.addr("http"), req.as_bytes(), Duration::from_secs(5)).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{path}: {resp}");
        assert!(resp.ends_with(want), "{path} should reach {want}: {resp}");
    }
}

#[tokio::test]
async fn unknown_host_is_a_labelled_404() {
    let web = Origin::named("web").await;
    let config = Config::new()
        .upstream(Upstream::new("web", [web.addr]))
        .route(Route::to("web").host("example.com"))
        .render();
    let p = Portico::start(&config);
    let r = client()
        .get(p.url("http", "/x"))
        .header("host", "nope.test")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    let body = r.text().await.unwrap();
    assert!(
        body.starts_with("404 Not Found\nportico: no route for host \"nope.test\""),
        "{body}"
    );
    assert!(body.contains(&id));
    assert_eq!(web.count(), 0);
    assert_eq!(rejected(&p, "no_route").await, 1.0);
}

#[tokio::test]
async fn forwarded_headers_and_request_ids() {
    let web = Origin::named("web").await;
    let api = Origin::named("api").await;
    let p = Portico::with(&two_upstreams(&web, &api));
    let c = client();
    let r = c
        .get(p.url("http", "/a?b=1"))
        .header("host", "example.com")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("fly-replay-src", "instance=evil")
        .header("fly-client-ip", "6.6.6.6")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echoed_id = r.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(echoed_id.len(), 32);
    let seen = web.requests().pop().unwrap();
    assert_eq!(seen.uri, "/a?b=1");
    // Untrusted peer: client-supplied forwarding headers are replaced, not believed.
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-ssl"), Some("off"));
    assert_eq!(seen.header("x-forwarded-host"), Some("example.com"));
    assert_eq!(
        seen.header("x-forwarded-port"),
        Some(p.addr("http").port().to_string().as_str())
    );
    assert_eq!(seen.header("host"), Some("example.com"));
    // `1.1 portico (<this process's token>)`: the token is what loop detection looks for.
    let via = seen.header("via").unwrap();
    let token = via
        .strip_prefix("1.1 portico (")
        .and_then(|t| t.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{via}"));
    assert!(
        token.len() == 16 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "{via}"
    );
    assert_eq!(seen.header("x-request-id"), Some(echoed_id.as_str()));
    // Internal and hop-by-hop headers never reach the upstream.
    assert_eq!(seen.header("fly-replay-src"), None);
    assert_eq!(seen.header("fly-client-ip"), None);
    assert_eq!(seen.header("x-hop"), None);

    // A valid incoming request id is kept; an invalid one is replaced.
    let r = c
        .get(p.url("http", "/"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "abc-123");
    assert_eq!(
        web.requests().pop().unwrap().header("x-request-id"),
        Some("abc-123")
    );
    let r = c
        .get(p.url("http", "/"))
        .header("x-request-id", "bad id with spaces")
        .send()
        .await
        .unwrap();
    let id = r.headers()["x-request-id"].to_str().unwrap();
    assert_ne!(id, "bad id with spaces");
    assert_eq!(id.len(), 32);
}

#[tokio::test]
async fn trusted_proxies_and_fly_headers() {
    let web = Origin::named("web").await;
    let api = Origin::named("api").await;
    let p = Portico::with(
        &two_upstreams(&web, &api)
            .server("trusted_proxies", serde_json::json!(["127.0.0.0/8"]))
            .server("fly_headers", true)
            .server("region", "ams"),
    );
    let r = client()
        .get(p.url("http", "/"))
        .header("x-forwarded-for", "203.0.113.9, 127.0.0.5")
        .header("x-forwarded-proto", "https")
        .header("fly-client-ip", "1.1.1.1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let fly_id = r.headers()["fly-request-id"].to_str().unwrap().to_string();
    let seen = web.requests().pop().unwrap();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.5, 127.0.0.1")
    );
    assert_eq!(
        seen.header("x-forwarded-proto"),
        Some("https"),
        "kept from a trusted proxy"
    );
    assert_eq!(
        seen.header("fly-client-ip"),
        Some("203.0.113.9"),
        "rightmost untrusted hop"
    );
    assert_eq!(seen.header("fly-region"), Some("ams"));
    assert_eq!(
        seen.header("fly-forwarded-port"),
        Some(p.addr("http").port().to_string().as_str())
    );
    assert_eq!(seen.header("fly-request-id"), Some(fly_id.as_str()));
}

/// A request with only common field names gets the listener's constant forwarding fields
/// (rendered once per configuration); route rules on those names still apply, and a reload
/// that changes them is seen by the next request.
#[tokio::test]
async fn constant_forwarding_fields_follow_rules_and_reloads() {
    let web = Origin::named("web").await;
    let config = |region: &str| {
        Config::new()
            .server("fly_headers", true)
            .server("region", region)
            .upstream(Upstream::new("web", [web.addr]))
            .route(Route::to("web").path("/"))
            .route(Route::to("web").path("/rules").set(
                "request_headers",
                serde_json::json!({ "set": { "x-forwarded-proto": "wss" }, "remove": ["via"] }),
            ))
            .render()
    };
    let p = Portico::start(&config("ams"));
    let port = p.addr("http").port().to_string();
    let c = client();
    for round in 0..3 {
        let r = c.get(p.url("http", "/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let seen = web.requests().pop().unwrap();
        assert_eq!(seen.header("x-forwarded-proto"), Some("http"), "{round}");
        assert_eq!(seen.header("x-forwarded-ssl"), Some("off"));
        assert_eq!(seen.header("x-forwarded-port"), Some(port.as_str()));
        assert_eq!(seen.header("fly-forwarded-port"), Some(port.as_str()));
        assert_eq!(seen.header("fly-region"), Some("ams"));
        assert!(seen.header("via").unwrap().starts_with("1.1 portico ("));
        assert_eq!(seen.header("fly-client-ip"), Some("127.0.0.1"));
        assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));

        let r = c.get(p.url("http", "/rules")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let seen = web.requests().pop().unwrap();
        assert_eq!(seen.header("x-forwarded-proto"), Some("wss"));
        assert_eq!(seen.header("via"), None);
        assert_eq!(seen.header("x-forwarded-ssl"), Some("off"));
        assert_eq!(seen.header("fly-region"), Some("ams"));
    }
    std::fs::write(&p.config_path, config("fra")).unwrap();
    let r = c.post(p.admin_url("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(p.url("http", "/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        web.requests().pop().unwrap().header("fly-region"),
        Some("fra")
    );
}

/// The request id's configured name and the routes' header rules (names and values kept for
/// the process's life, see `interned`) reach backend and client, and a reload that renames
/// them takes effect on the next request.
#[tokio::test]
async fn configured_request_id_name_and_rule_fields_follow_reloads() {
    let web = Origin::named("web").await;
    let config = |id: &str, tag: &str| {
        Config::new()
            .server("request_id_header", id)
            .upstream(Upstream::new("web", [web.addr]))
            .route(
                Route::to("web")
                    .path("/")
                    .set(
                        "request_headers",
                        serde_json::json!({ "set": { "x-portico-tag": tag } }),
                    )
                    .set(
                        "response_headers",
                        serde_json::json!({ "add": { "x-served-tag": tag } }),
                    ),
            )
            .render()
    };
    let p = Portico::start(&config("x-trace-id", "one"));
    let c = client();
    for round in 0..20 {
        let r = c.get(p.url("http", "/")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let id = r.headers()["x-trace-id"].to_str().unwrap().to_string();
        assert_eq!(id.len(), 32, "{round}");
        assert_eq!(r.headers()["x-served-tag"], "one");
        assert!(r.headers().get("x-request-id").is_none());
        let seen = web.requests().pop().unwrap();
        assert_eq!(seen.header("x-trace-id"), Some(id.as_str()));
        assert_eq!(seen.header("x-portico-tag"), Some("one"));
    }
    // A client's own id under the configured name is kept.
    let r = c
        .get(p.url("http", "/"))
        .header("x-trace-id", "client-chosen-1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-trace-id"], "client-chosen-1");
    assert_eq!(
        web.requests().pop().unwrap().header("x-trace-id"),
        Some("client-chosen-1")
    );

    std::fs::write(&p.config_path, config("x-correlation-id", "two")).unwrap();
    let r = c.post(p.admin_url("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let r = c.get(p.url("http", "/")).send().await.unwrap();
    assert!(r.headers().get("x-trace-id").is_none());
    let id = r.headers()["x-correlation-id"]
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(r.headers()["x-served-tag"], "two");
    let seen = web.requests().pop().unwrap();
    assert_eq!(seen.header("x-correlation-id"), Some(id.as_str()));
    assert_eq!(seen.header("x-trace-id"), None);
    assert_eq!(seen.header("x-portico-tag"), Some("two"));
}

#[tokio::test]
async fn dead_backend_is_retried_on_another_and_502_names_the_failure() {
    let live = Origin::named("live").await;
    let dead = dead_addr();
    let config = Config::new()
        .upstream(Upstream::new("app", [dead, live.addr]).balance("round_robin"))
        .upstream(Upstream::new("gone", [dead]))
        .route(Route::to("app").path("/"))
        .route(Route::to("gone").path("/gone"))
        .render();
    let p = Portico::start(&config);
    let c = client();
    for _ in 0..10 {
        let r = c.post(p.url("http", "/")).body("x").send().await.unwrap();
        assert_eq!(
            r.status(),
            200,
            "connect failures are retried on another backend, even for POST"
        );
    }
    assert_eq!(live.count(), 10);
    assert!(
        metric(
            &p,
            "portico_upstream_connect_errors_total",
            &[("upstream", "app")]
        )
        .await
            >= 1.0
    );

    let r = c.get(p.url("http", "/gone")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    let body = r.text().await.unwrap();
    assert!(
        body.contains(&format!(
            "upstream \"gone\" unreachable: connecting to {dead} failed: connection refused"
        )),
        "{body}"
    );
}

#[tokio::test]
async fn slow_backend_gets_504_with_the_reason() {
    let slow = Origin::start("slow", |_| {
        Box::pin(async {
            tokio::time::sleep(Duration::from_secs(3)).await;
            text(200, "late", &[])
        })
    })
    .await;
    let config = Config::new()
        .upstream(Upstream::new("app", [slow.addr]).set("read_timeout", "300ms"))
        .render();
    let p = Portico::start(&config);
    let r = client().get(p.url("http", "/")).send().await.unwrap();
    assert_eq!(r.status(), 504);
    assert!(r
        .text()
        .await
        .unwrap()
        .contains("upstream \"app\" did not answer in time"));
}

#[tokio::test]
async fn force_https_redirects_with_301_or_308() {
    let web = Origin::named("web").await;
    let config = Config::new()
        .listener_set("force_https", true)
        .listener_set("https_port", 8443)
        .upstream(Upstream::new("web", [web.addr]))
        .render();
    let p = Portico::start(&config);
    let r = client()
        .get(p.url("http", "/a/b?c=d"))
        .header("host", "example.com:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 301);
    assert_eq!(r.headers()["location"], "https://example.com:8443/a/b?c=d");
    // A POST gets a 308, so browsers repeat it with its method and body.
    let r = client()
        .post(p.url("http", "/form"))
        .header("host", "example.com")
        .body("a=1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
    assert_eq!(r.headers()["location"], "https://example.com:8443/form");
    assert_eq!(web.count(), 0);
    // `redirect_status` sets it for every method.
    let p = Portico::start(&config.replace(
        "https_port = 8443",
        "https_port = 8443\nredirect_status = 308",
    ));
    let r = client()
        .get(p.url("http", "/a"))
        .header("host", "example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 308);
}

#[tokio::test]
async fn response_and_request_header_rules_and_strip_prefix() {
    let web = Origin::start("web", |_| {
        Box::pin(async { text(200, "ok", &[("server", "secret/1.0"), ("x-a", "1")]) })
    })
    .await;
    let config = Config::new().upstream(Upstream::new("web", [web.addr])).route(Route::to("web").path("/app").set("strip_prefix", true).set("response_headers", serde_json::json!({ "set": { "Strict-Transport-Security": "max-age=63072000", "X-Frame-Options": "DENY" }, "add": { "x-a": "2" }, "remove": ["Server"] })).set("request_headers", serde_json::json!({ "set": { "x-from": "portico" }, "remove": ["cookie"] }))).render();
    let p = Portico::start(&config);
    let r = client()
        .get(p.url("http", "/app/x/y?z=1"))
        .header("cookie", "a=b")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["strict-transport-security"], "max-age=63072000");
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert!(r.headers().get("server").is_none());
    let xa: Vec<_> = r
        .headers()
        .get_all("x-a")
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect();
    assert_eq!(xa, vec!["1", "2"]);
    let seen = web.requests().pop().unwrap();
    assert_eq!(seen.uri, "/x/y?z=1");
    assert_eq!(seen.header("x-from"), Some("portico"));
    assert_eq!(seen.header("cookie"), None);
    // Local responses (404 for an unrouted path) still carry the request id.
    let r = client().get(p.url("http", "/other")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.headers().contains_key("x-request-id"));
}

#[tokio::test]
async fn request_bodies_are_streamed_through() {
    let echo = Origin::start("echo", |s| {
        Box::pin(async move { text(200, &format!("{}:{}", s.method, s.body.len()), &[]) })
    })
    .await;
    let config = Config::new()
        .upstream(Upstream::new("a", [echo.addr]))
        .render();
    let p = Portico::start(&config);
    let body = vec![b'x'; 3 * 1024 * 1024];
    let r = client()
        .put(p.url("http", "/"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "PUT:3145728");
}

#[tokio::test]
async fn access_log_in_combined_format() {
    let web = Origin::named("web").await;
    let config = Config::new()
        .no_admin()
        .server("log_format", "json")
        .server("access_log_format", "combined")
        .upstream(Upstream::new("web", [web.addr]))
        .render();
    let p = Portico::start(&config);
    let r = client()
        .get(p.url("http", "/combined?x=1"))
        .header("user-agent", "curl/8.5.0")
        .header("referer", "https://example.com/from")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let line = p.wait_stdout("/combined", Duration::from_secs(5)).await;
    // 127.0.0.1 - - [01/Dec/2026:21:00:00 +0000] "GET /combined?x=1 HTTP/1.1" 200 3 "..." "..."
    let (head, rest) = line.split_once(" [").unwrap();
    assert_eq!(head, "127.0.0.1 - -");
    let (time, rest) = rest.split_once("] ").unwrap();
    assert!(time.ends_with(" +0000") && time.len() == 26, "{time}");
    assert_eq!(
        rest,
        "\"GET /combined?x=1 HTTP/1.1\" 200 3 \"https://example.com/from\" \"curl/8.5.0\""
    );
}

#[tokio::test]
async fn access_log_line_per_request() {
    let web = Origin::named("web").await;
    let config = Config::new()
        .server("log_format", "json")
        .upstream(Upstream::new("web", [web.addr]))
        .render();
    let p = Portico::start(&config);
    let r = client()
        .get(p.url("http", "/hello?x=1&y=two"))
        .header("x-request-id", "log-me")
        .header("user-agent", "curl/8.5.0")
        .header("referer", "https://example.com/from")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let line = p.wait_stdout("log-me", Duration::from_secs(5)).await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["request_id"], "log-me");
    assert_eq!(v["method"], "GET");
    assert_eq!(v["path"], "/hello");
    assert_eq!(v["status"], 200);
    assert_eq!(v["client"], "127.0.0.1");
    assert_eq!(v["route"], "default");
    assert_eq!(v["upstream"], "web");
    assert_eq!(v["backend"], web.addr.to_string());
    assert!(v["duration_ms"].as_f64().is_some());
    assert_eq!(v["bytes"], 3);
    assert_eq!(v["query"], "x=1&y=two");
    assert_eq!(v["user_agent"], "curl/8.5.0");
    assert_eq!(v["referer"], "https://example.com/from");
    assert_eq!(v["protocol"], "HTTP/1.1");
    assert_eq!(v["tls"], "-");
    assert_eq!(v["error"], "-");
    assert_eq!(v["upstream_status"], 200);
    let up_ms = v["upstream_ms"].as_f64().unwrap();
    assert!(
        up_ms >= 0.0 && up_ms <= v["duration_ms"].as_f64().unwrap(),
        "{v}"
    );
}

#[tokio::test]
async fn warnings_about_a_request_carry_its_id() {
    let config = Config::new()
        .server("log_format", "json")
        .upstream(Upstream::new("web", [dead_addr()]).set("retries", 0))
        .render();
    let p = Portico::start(&config);
    let r = client()
        .get(p.url("http", "/"))
        .header("x-request-id", "find-me-123")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let line = p.wait_log("request failed", Duration::from_secs(5));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["level"], "WARN", "{line}");
    assert_eq!(v["request_id"], "find-me-123", "{line}");
}

#[tokio::test]
async fn hop_by_hop_response_fields_stay_on_their_hop() {
    let origin = RawOrigin::start(|_| {
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\nX-Secret: 1\r\nProxy-Connection: keep-alive\r\nUpgrade: h2c\r\nTrailer: x-sum\r\nTE: trailers\r\nX-Kept: yes\r\n\r\nok"
            .to_vec()
    })
    .await;
    let p = Portico::start(
        &Config::new()
            .listener_set("keepalive_timeout", "60s")
            .upstream(Upstream::new("app", [origin.addr]))
            .render(),
    );
    let out = raw(
        p.addr("http"),
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    let fields = head_fields(&out);
    let names: Vec<&str> = fields.iter().map(|(k, _)| k.as_str()).collect();
    for gone in [
        "keep-alive",
        "x-secret",
        "proxy-connection",
        "upgrade",
        "trailer",
        "te",
    ] {
        assert!(!names.contains(&gone), "{gone} reached the client:\n{out}");
    }
    assert!(names.contains(&"x-kept"), "{out}");
    // The Connection field the client gets is Portico's own, about its own connection.
    let conn: Vec<&str> = fields
        .iter()
        .filter(|(k, _)| k == "connection")
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(conn, ["close"], "{out}");
    assert!(out.ends_with("ok"), "{out}");
}

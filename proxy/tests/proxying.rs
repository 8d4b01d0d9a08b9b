//! Basic proxying over HTTP/1.1: routing by host and path, forwarding headers, request ids,
//! error bodies, retries and force_https.
#![allow(clippy::unwrap_used)]

mod common;

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

/// Sends `first` on a fresh connection, then a good request on the same connection. Every
/// answer must either leave the connection usable or say `Connection: close` and close it.
async fn then_reuse(addr: std::net::SocketAddr, first: &str) -> (String, Option<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(first.as_bytes()).await.unwrap();
    let r1 = read_response(&mut s).await;
    let close = head_fields(&r1)
        .iter()
        .any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"));
    if close {
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest))
            .await
            .expect("closes after Connection: close");
        let _ = n;
        return (r1, None);
    }
    s.write_all(b"GET /ok HTTP/1.1\r\nHost: good\r\n\r\n")
        .await
        .unwrap();
    let r2 = read_response(&mut s).await;
    (r1, Some(r2))
}

#[tokio::test]
async fn local_failures_keep_the_connection_or_say_close() {
    let good = Origin::named("good").await;
    let dead = dead_addr();
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hang_addr = hang.local_addr().unwrap();
    let _hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = hang.accept().await {
            held.push(s);
        }
    });
    let p = Portico::start(
        &Config::new()
            .upstream(Upstream::new("good", [good.addr]))
            .upstream(Upstream::new("dead", [dead]).set("retries", 0))
            .upstream(Upstream::new("hang", [hang_addr]).set("read_timeout", "300ms"))
            .route(Route::to("good").host("good").set("max_body", 4))
            .route(Route::to("dead").host("dead"))
            .route(Route::to("hang").host("hang"))
            .render(),
    );
    let addr = p.addr("http");
    let cases = [
        ("404", "GET / HTTP/1.1\r\nHost: nowhere\r\n\r\n"),
        ("502", "GET / HTTP/1.1\r\nHost: dead\r\n\r\n"),
        (
            "502",
            "POST / HTTP/1.1\r\nHost: dead\r\nContent-Length: 3\r\n\r\nabc",
        ),
        (
            "503",
            "GET / HTTP/1.1\r\nHost: good\r\nfly-force-instance-id: nope\r\n\r\n",
        ),
        ("504", "GET / HTTP/1.1\r\nHost: hang\r\n\r\n"),
        (
            "413",
            "POST / HTTP/1.1\r\nHost: good\r\nContent-Length: 10\r\n\r\n0123456789",
        ),
    ];
    for (status, req) in cases {
        eprintln!("case {status}: {req:?}");
        let (r1, r2) = then_reuse(addr, req).await;
        assert!(
            r1.starts_with(&format!("HTTP/1.1 {status}")),
            "{req:?}:\n{r1}"
        );
        if let Some(r2) = r2 {
            assert!(r2.starts_with("HTTP/1.1 200"), "after {status}:\n{r2}");
            assert!(r2.ends_with("good"), "{r2}");
        }
    }
}

/// An upstream that points back at Portico itself: the request comes back with this
/// process's token in `Via` and is answered 508 at once, instead of looping until every
/// connection is taken. Another Portico's `Via` (same name, other token) passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_looping_back_through_portico_is_508() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let web = Origin::named("web").await;
    let p = Portico::start(
        &Config::bare()
            .admin_set("address", "127.0.0.1:0")
            .listener(Listener::http("http").set("address", format!("127.0.0.1:{}", port)))
            .upstream(Upstream::new("self", [format!("127.0.0.1:{}", port)]))
            .upstream(Upstream::new("web", [web.addr]))
            .route(Route::to("self").path("/loop"))
            .route(Route::to("web").path("/"))
            .render(),
    );
    let c = client();
    for _ in 0..20 {
        let started = std::time::Instant::now();
        let r = c.get(p.url("http", "/loop")).send().await.unwrap();
        assert_eq!(r.status(), 508);
        let text = r.text().await.unwrap();
        assert!(
            text.contains("already passed through this Portico"),
            "{text}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    assert!(rejected(&p, "via_loop").await >= 20.0);
    // A chain of Porticos, all named "portico", is not a loop.
    let r = c
        .get(p.url("http", "/"))
        .header("via", "1.1 portico (0123456789abcdef), 1.1 portico")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = web.requests().pop().unwrap();
    let via = seen.headers["via"].join(", ");
    assert!(
        via.starts_with("1.1 portico (0123456789abcdef), 1.1 portico, 1.1 portico ("),
        "{via}"
    );
}

/// With `routing_headers = false`, the routing headers are neither honoured nor forwarded.
#[tokio::test]
async fn routing_headers_off_are_ignored_and_removed() {
    let web = Origin::named("web").await;
    let api = Origin::named("api").await;
    let p = Portico::with(&two_upstreams(&web, &api).server("routing_headers", false));
    let r = client()
        .get(p.url("http", "/"))
        .header("fly-force-region", "nowhere")
        .header("fly-force-instance-id", "nope")
        .header("fly-prefer-region", "syd")
        .header("fly-prefer-instance-id", "x")
        .header("fly-other", "kept")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let seen = web.requests().pop().unwrap();
    for name in [
        "fly-force-region",
        "fly-force-instance-id",
        "fly-prefer-region",
        "fly-prefer-instance-id",
    ] {
        assert_eq!(seen.header(name), None, "{name}");
    }
    assert_eq!(seen.header("fly-other"), Some("kept"));
}

/// An origin that reads one request per connection and answers with `answer`, then closes.
async fn closing_origin(answer: &'static [u8]) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = s.write_all(answer).await;
                // Dropped: the connection ends here, in the head or the body.
            });
        }
    });
    addr
}

/// One truthful outcome per request: a backend that closes in the response head was
/// reached, so the 502 says `upstream_error` (not "unreachable"); one that closes in the
/// middle of the body leaves the status the client got (200) in the log, with
/// `error=upstream_failed_mid_response` and a count in `portico_http_incomplete_total`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_have_one_truthful_outcome_in_answer_log_and_metrics() {
    let in_head = closing_origin(b"HTTP/1.1 200 OK\r\nContent-Le").await;
    let mid_body =
        closing_origin(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\npartial body").await;
    let p = Portico::start(
        &Config::new()
            .server("log_format", "json")
            .upstream(Upstream::new("head", [in_head]))
            .upstream(Upstream::new("body", [mid_body]))
            .upstream(Upstream::new("dead", [dead_addr()]))
            .route(Route::to("head").path("/head"))
            .route(Route::to("body").path("/body"))
            .route(Route::to("dead").path("/dead"))
            .render(),
    );
    let c = client();
    let r = c
        .get(p.url("http", "/head"))
        .header("x-request-id", "in-head")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    let text = r.text().await.unwrap();
    assert!(text.contains("upstream \"head\" failed"), "{text}");
    let r = c
        .get(p.url("http", "/dead"))
        .header("x-request-id", "dead")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 502);
    assert!(r.text().await.unwrap().contains("unreachable"));
    let r = c
        .get(p.url("http", "/body"))
        .header("x-request-id", "mid-body")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.is_err(), "the body must end early");

    let line = |id: &str| {
        let start = std::time::Instant::now();
        loop {
            if let Some(l) = p
                .stdout_lines()
                .into_iter()
                .find(|l| l.contains(&format!("\"{id}\"")))
            {
                return serde_json::from_str::<serde_json::Value>(&l).unwrap();
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "no access log line for {id}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    let v = line("in-head");
    assert_eq!(
        (v["status"].as_u64(), v["error"].as_str()),
        (Some(502), Some("upstream_error")),
        "{v}"
    );
    let v = line("dead");
    assert_eq!(
        (v["status"].as_u64(), v["error"].as_str()),
        (Some(502), Some("upstream_unreachable")),
        "{v}"
    );
    let v = line("mid-body");
    assert_eq!(
        (v["status"].as_u64(), v["error"].as_str()),
        (Some(200), Some("upstream_failed_mid_response")),
        "{v}"
    );
    assert_eq!(rejected(&p, "upstream_error").await, 1.0);
    assert_eq!(rejected(&p, "upstream_unreachable").await, 1.0);
    wait_metric(
        &p,
        "portico_http_incomplete_total",
        &[("reason", "upstream_failed_mid_response")],
        1.0,
    )
    .await;
    // The warning about the head failure names the same reason as the answer and the log.
    let err = p.stderr_text();
    let warning = err
        .lines()
        .find(|l| l.contains("in-head") && l.contains("request failed"));
    assert!(
        warning.is_some_and(|l| l.contains("upstream_error")),
        "{err}"
    );
}

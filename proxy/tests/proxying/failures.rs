//! Portico's own answers: keep-alive after local failures, loops back through Portico, routing headers turned off, one truthful outcome per failure.

use super::*;

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
        // Portico lingers up to 5 s reading what the client still sends (1 s of silence
        // ends it); the bound is generous so a loaded machine does not fail the case.
        let n = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut rest))
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

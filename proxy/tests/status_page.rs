//! The admin's HTML status page, loaded in a real headless browser (Debian's
//! `chromium-headless-shell` or `chromium`, installed by `scripts/ensure-deps`): the DOM it
//! builds shows backends with their health and region, open connections and recent reloads,
//! and hides addresses from a caller without the admin token.
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;

/// The headless browser on this machine.
fn browser() -> &'static str {
    for b in ["chromium-headless-shell", "chromium", "chromium-browser"] {
        if Command::new(b).arg("--version").output().is_ok() {
            return b;
        }
    }
    panic!(
        "no headless browser: install Debian's chromium-headless-shell (scripts/ensure-deps does \
         as root)"
    );
}

/// The DOM chromium builds from `url`, after the page loaded.
fn dump_dom(url: &str, home: &std::path::Path) -> String {
    let out = Command::new(browser())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--timeout=10000",
            "--dump-dom",
            url,
        ])
        // A private profile: the browser writes its state under HOME.
        .env("HOME", home)
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        dom.contains("</html>"),
        "the browser loaded nothing from {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}

/// The admin page's DOM as the browser builds it (off the async runtime: the browser blocks).
async fn page_dom(p: &Portico, home: &tempfile::TempDir) -> String {
    let url = p.admin_url("/");
    let home = home.path().to_path_buf();
    tokio::task::spawn_blocking(move || dump_dom(&url, &home))
        .await
        .unwrap()
}

/// The text of the element with `id` (and its children) with tags removed, roughly as a
/// person reads it.
fn section(dom: &str, id: &str) -> String {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in {dom}"));
    let rest = &dom[start..];
    let end = rest.find("</section>").unwrap_or(rest.len());
    let mut text = String::new();
    let mut in_tag = false;
    for c in rest[..end].chars() {
        match c {
            '<' => {
                in_tag = true;
                text.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Portico `edge-1` in `ams` with one backend up (`app-live`, ams) and one down (`app-dead`,
/// iad) under fast TCP checks; the admin token if given.
fn config(live: std::net::SocketAddr, dead: std::net::SocketAddr, token: Option<&str>) -> Config {
    let backends = vec![
        serde_json::json!({ "address": live.to_string(), "id": "app-live", "region": "ams" }),
        serde_json::json!({ "address": dead.to_string(), "id": "app-dead", "region": "iad" }),
    ];
    let check = serde_json::json!({
        "type": "tcp", "interval": "200ms", "timeout": "150ms", "rise": 1, "fall": 1
    });
    let c = Config::new()
        .server("name", "edge-1")
        .server("region", "ams")
        .upstream(Upstream::with_backends("app", backends).check(check))
        .route(Route::to("app"));
    match token {
        Some(t) => c.admin_set("token", t),
        None => c,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_backends_health_connections_and_reloads_in_a_browser() {
    let live = Origin::named("live").await;
    let dead = dead_addr();
    let p = Portico::with(&config(live.addr, dead, None));
    let home = tempfile::tempdir().unwrap();

    // Wait for the checks to decide both backends.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(&p).await;
        let states: Vec<&str> = s["upstreams"][0]["backends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b["state"].as_str().unwrap())
            .collect();
        if states.contains(&"up") && states.contains(&"down") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "states: {states:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // One good reload and one bad one.
    let good = std::fs::read_to_string(&p.config_path).unwrap();
    std::fs::write(&p.config_path, good.replace("edge-1", "edge-2")).unwrap();
    let r = client().post(p.admin_url("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // A located validation error: the check's interval is not a duration.
    let bad = good.replace("interval = \"200ms\"", "interval = \"soon\"");
    assert_ne!(bad, good);
    std::fs::write(&p.config_path, bad).unwrap();
    let r = client().post(p.admin_url("/reload")).send().await.unwrap();
    assert_eq!(r.status(), 422);

    // A client holding a connection open on the proxy listener.
    let mut held = tokio::net::TcpStream::connect(p.addr("http"))
        .await
        .unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut held, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let _ = read_response(&mut held).await;

    let dom = page_dom(&p, &home).await;

    assert!(dom.contains("<title>Portico · edge-2</title>"), "{dom}");
    let header = section(&dom, "summary");
    assert!(header.contains("region ams"), "{header}");
    assert!(header.contains("config generation 2"), "{header}");
    let alert = section(&dom, "reload-error");
    assert!(alert.contains("The last reload failed"), "{alert}");

    let listeners = section(&dom, "listeners");
    assert!(
        listeners.contains(&format!("http {} no 1", p.addr("http"))),
        "the held connection is counted: {listeners}"
    );

    let ups = section(&dom, "upstreams");
    assert!(ups.contains("1 of 2 backends up"), "{ups}");
    assert!(
        ups.contains(&format!("app-live {} ams up", live.addr)),
        "{ups}"
    );
    assert!(ups.contains(&format!("app-dead {dead} iad down")), "{ups}");

    let reloads = section(&dom, "reloads");
    // Newest first: the failed attempt, then the one that made generation 2.
    let err_at = reloads.find("POST /reload error").expect(&reloads);
    let ok_at = reloads.find("POST /reload reloaded 2").expect(&reloads);
    assert!(err_at < ok_at, "{reloads}");
    assert!(
        reloads.contains("portico.toml"),
        "errors name the file: {reloads}"
    );

    // Served as a page that cannot run script or load anything.
    let r = client().get(p.admin_url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'none'"), "{csp}");
    let r = client().post(p.admin_url("/")).send().await.unwrap();
    assert_eq!(r.status(), 405);
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_token_the_page_hides_addresses_and_errors() {
    let live = Origin::named("live").await;
    let dead = dead_addr();
    let token = "page-token-0123456789abcdef";
    let p = Portico::with(&config(live.addr, dead, Some(token)));
    let home = tempfile::tempdir().unwrap();
    let dom = page_dom(&p, &home).await;
    assert!(dom.contains("id=\"redacted\""), "{dom}");
    let ups = section(&dom, "upstreams");
    assert!(ups.contains("app-live"), "ids stay: {ups}");
    assert!(!dom.contains(&live.addr.to_string()), "{dom}");
    assert!(!dom.contains(&dead.to_string()), "{dom}");
    assert!(!dom.contains(&p.addr("http").to_string()), "{dom}");

    // With the token (as a person's tool would send it) everything shows.
    let page = client()
        .get(p.admin_url("/"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!page.contains("id=\"redacted\""));
    assert!(page.contains(&live.addr.to_string()));
}

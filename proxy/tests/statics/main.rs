//! Static file serving through the real binary, on files made in a temp dir: cache headers per
//! file kind, validators and 304s, ranges, precompressed and on-the-fly encodings, types, index
//! and SPA fallback, traversal and symlink escapes, fresh content after a change, HEAD, 405,
//! and try_files in front of an upstream.

#![allow(clippy::unwrap_used)]

#[path = "../common/mod.rs"]
mod common;
mod delivery;

use std::path::Path;
use std::time::Duration;

use common::*;

struct Site {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    outside: std::path::PathBuf,
}

fn site() -> Site {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("dist");
    let outside = dir.path().join("secret.txt");
    std::fs::write(&outside, "top secret").unwrap();
    let w = |p: &str, body: &[u8]| {
        let f = root.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, body).unwrap();
    };
    w("index.html", b"<!doctype html><title>app</title>");
    w("assets/index-BXp3d9fK.js", &vec![b'j'; 1024]);
    w("assets/index-DiwrgTda.css", b"body{}");
    w("assets/logo.svg", b"<svg/>");
    w("assets/app.wasm", b"\0asm");
    w("assets/font-a1b2c3d4.woff2", b"wOF2");
    // Real bundler output (Vite 5 base64url hashes with `-`/`_`) and ordinary names that must
    // not be mistaken for hashes.
    w("assets/page01-C7-9Ngwl.js", b"p1");
    w("assets/page01-C7-9Ngwl.js.map", b"{}");
    w("assets/page29-6Ywn-_AW.js", b"p29");
    w("fonts/Inter-SemiBold.woff2", b"wOF2");
    w("img/logo-DarkMode.svg", b"<svg/>");
    w("files/report-20240315.pdf", b"%PDF");
    w("data.json", b"{}");
    w("robots.txt", b"User-agent: *");
    w(
        "big.bin",
        &(0..300 * 1024)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    w("text.txt", &b"0123456789".repeat(300));
    w("text.txt.br", b"BROTLI");
    w("text.txt.gz", b"GZIP");
    w("docs/index.html", b"docs");
    w(".env", b"SECRET=1");
    w(".git/config", b"[core]");
    w("nohtml/readme.md", b"# hi");
    std::os::unix::fs::symlink(&outside, root.join("escape.txt")).unwrap();
    std::os::unix::fs::symlink(dir.path(), root.join("up")).unwrap();
    std::os::unix::fs::symlink(root.join("robots.txt"), root.join("alias.txt")).unwrap();
    Site {
        _dir: dir,
        root,
        outside,
    }
}

/// Portico serving `site` (SPA fallback `index.html`, `X-Frame-Options: DENY`) with `extra`
/// keys added to the route's `static` table.
fn start(site: &Site, extra: &[(&str, serde_json::Value)]) -> Portico {
    let mut files = serde_json::json!({
        "root": site.root.display().to_string(),
        "fallback": "index.html",
    });
    for (k, v) in extra {
        files[*k] = v.clone();
    }
    let route = Route::to("app").set("static", files).set(
        "response_headers",
        serde_json::json!({ "set": { "x-frame-options": "DENY" } }),
    );
    Portico::with(
        &Config::new()
            .upstream(Upstream::new("app", ["127.0.0.1:9"]))
            .route(route),
    )
}

async fn get(p: &Portico, path: &str, headers: &[(&str, &str)]) -> reqwest::Response {
    let c = reqwest::Client::builder()
        .no_proxy()
        .no_gzip()
        .no_brotli()
        .build()
        .unwrap();
    let mut rb = c.get(p.url("http", path));
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    rb.send().await.unwrap()
}

fn h(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn cache_headers_types_and_validators() {
    let s = site();
    let p = start(&s, &[]);
    let r = get(&p, "/assets/index-BXp3d9fK.js", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        h(&r, "cache-control"),
        "public, max-age=31536000, immutable"
    );
    assert_eq!(h(&r, "content-type"), "text/javascript; charset=utf-8");
    assert_eq!(h(&r, "x-content-type-options"), "nosniff");
    assert_eq!(h(&r, "x-frame-options"), "DENY");
    assert_eq!(h(&r, "accept-ranges"), "bytes");
    assert_eq!(h(&r, "content-length"), "1024");
    let etag = h(&r, "etag");
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    let lm = h(&r, "last-modified");
    assert!(lm.ends_with("GMT"));
    assert_eq!(r.bytes().await.unwrap().len(), 1024);

    let r = get(&p, "/", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(h(&r, "cache-control"), "no-cache");
    assert_eq!(h(&r, "content-type"), "text/html; charset=utf-8");

    for (path, ty) in [
        ("/assets/index-DiwrgTda.css", "text/css; charset=utf-8"),
        ("/assets/logo.svg", "image/svg+xml; charset=utf-8"),
        ("/assets/app.wasm", "application/wasm"),
        ("/assets/font-a1b2c3d4.woff2", "font/woff2"),
        ("/data.json", "application/json; charset=utf-8"),
        ("/robots.txt", "text/plain; charset=utf-8"),
        ("/big.bin", "application/octet-stream"),
        ("/nohtml/readme.md", "text/markdown; charset=utf-8"),
    ] {
        let r = get(&p, path, &[]).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(h(&r, "content-type"), ty, "{path}");
    }
    assert_eq!(
        h(&get(&p, "/assets/logo.svg", &[]).await, "cache-control"),
        "no-cache"
    );

    // 304 by ETag and by date; a different ETag gets the body.
    let r = get(&p, "/assets/index-BXp3d9fK.js", &[("if-none-match", &etag)]).await;
    assert_eq!(r.status(), 304);
    assert_eq!(h(&r, "etag"), etag);
    assert_eq!(r.bytes().await.unwrap().len(), 0);
    let r = get(
        &p,
        "/assets/index-BXp3d9fK.js",
        &[("if-modified-since", &lm)],
    )
    .await;
    assert_eq!(r.status(), 304);
    let r = get(
        &p,
        "/assets/index-BXp3d9fK.js",
        &[("if-none-match", "\"nope\"")],
    )
    .await;
    assert_eq!(r.status(), 200);
    let r = get(
        &p,
        "/assets/index-BXp3d9fK.js",
        &[("if-modified-since", "Thu, 01 Jan 1970 00:00:00 GMT")],
    )
    .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn ranges() {
    let s = site();
    let p = start(&s, &[]);
    let whole: Vec<u8> = (0..300 * 1024).map(|i| (i % 251) as u8).collect();
    let len = whole.len();
    let r = get(&p, "/big.bin", &[("range", "bytes=0-99")]).await;
    assert_eq!(r.status(), 206);
    assert_eq!(h(&r, "content-range"), format!("bytes 0-99/{len}"));
    assert_eq!(r.bytes().await.unwrap(), whole[..100]);
    let r = get(&p, "/big.bin", &[("range", "bytes=-10")]).await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), whole[len - 10..]);
    let r = get(&p, "/big.bin", &[("range", "bytes=300000-")]).await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.bytes().await.unwrap(), whole[300000..]);
    let r = get(&p, "/big.bin", &[("range", "bytes=999999-")]).await;
    assert_eq!(r.status(), 416);
    assert_eq!(h(&r, "content-range"), format!("bytes */{len}"));
    // Small (cached) files too.
    let r = get(&p, "/robots.txt", &[("range", "bytes=5-")]).await;
    assert_eq!(r.status(), 206);
    assert_eq!(r.text().await.unwrap(), "agent: *");
    // If-Range: a matching ETag keeps the range, a stale one gets everything.
    let etag = h(&get(&p, "/big.bin", &[]).await, "etag");
    let r = get(
        &p,
        "/big.bin",
        &[("range", "bytes=0-9"), ("if-range", &etag)],
    )
    .await;
    assert_eq!(r.status(), 206);
    let r = get(
        &p,
        "/big.bin",
        &[("range", "bytes=0-9"), ("if-range", "\"old\"")],
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap().len(), len);
    // HEAD: headers only.
    let r = reqwest::Client::new()
        .head(p.url("http", "/big.bin"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(h(&r, "content-length"), len.to_string());
}

#[tokio::test]
async fn precompressed_siblings_and_on_the_fly_gzip() {
    let s = site();
    let p = start(&s, &[("compress", true.into())]);
    let r = get(&p, "/text.txt", &[("accept-encoding", "gzip, br")]).await;
    assert_eq!(h(&r, "content-encoding"), "br");
    assert_eq!(h(&r, "vary"), "Accept-Encoding");
    let br_etag = h(&r, "etag");
    assert_eq!(r.text().await.unwrap(), "BROTLI");
    let r = get(
        &p,
        "/text.txt",
        &[("accept-encoding", "br;q=0.1, gzip;q=0.9")],
    )
    .await;
    assert_eq!(h(&r, "content-encoding"), "gzip");
    assert_eq!(r.text().await.unwrap(), "GZIP");
    let r = get(&p, "/text.txt", &[("accept-encoding", "identity")]).await;
    assert_eq!(h(&r, "content-encoding"), "");
    assert_eq!(h(&r, "vary"), "Accept-Encoding");
    assert_ne!(
        h(&r, "etag"),
        br_etag,
        "each representation has its own ETag"
    );
    assert_eq!(r.text().await.unwrap().len(), 3000);
    // No sibling: compressed on the fly (compress = true), and the result is real gzip.
    let r = get(
        &p,
        "/assets/index-BXp3d9fK.js",
        &[("accept-encoding", "gzip")],
    )
    .await;
    assert_eq!(h(&r, "content-encoding"), "gzip");
    let gz = r.bytes().await.unwrap();
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut out).unwrap();
    assert_eq!(out, vec![b'j'; 1024]);
    // Below compress_min_size: as is.
    let r = get(&p, "/data.json", &[("accept-encoding", "gzip")]).await;
    assert_eq!(h(&r, "content-encoding"), "");
}

#[tokio::test]
async fn hashed_names_follow_what_bundlers_emit() {
    let s = site();
    let p = start(&s, &[]);
    for path in [
        "/assets/page01-C7-9Ngwl.js",
        "/assets/page01-C7-9Ngwl.js.map",
        "/assets/page29-6Ywn-_AW.js",
    ] {
        let r = get(&p, path, &[]).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(
            h(&r, "cache-control"),
            "public, max-age=31536000, immutable",
            "{path}"
        );
    }
    for path in [
        "/fonts/Inter-SemiBold.woff2",
        "/img/logo-DarkMode.svg",
        "/files/report-20240315.pdf",
    ] {
        let r = get(&p, path, &[]).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(h(&r, "cache-control"), "no-cache", "{path}");
    }
    // `immutable_paths` is exact whatever the names look like.
    let p = start(&s, &[("immutable_paths", serde_json::json!(["/fonts/"]))]);
    let r = get(&p, "/fonts/Inter-SemiBold.woff2", &[]).await;
    assert_eq!(
        h(&r, "cache-control"),
        "public, max-age=31536000, immutable"
    );
}

#[tokio::test]
async fn fallback_for_all_paths() {
    let s = site();
    // By default a path with a dot is a missing file.
    let p = start(&s, &[]);
    assert_eq!(get(&p, "/users/john.doe", &[]).await.status(), 404);
    // `fallback_for = "all"`: nginx's `try_files $uri /index.html`.
    let p = start(&s, &[("fallback_for", "all".into())]);
    for path in ["/users/john.doe", "/files/a.pdf", "/settings"] {
        let r = get(&p, path, &[]).await;
        assert_eq!(r.status(), 200, "{path}");
        assert_eq!(h(&r, "cache-control"), "no-cache");
        assert!(r.text().await.unwrap().contains("<title>app</title>"));
    }
    // Existing files are still served as themselves.
    let r = get(&p, "/robots.txt", &[]).await;
    assert_eq!(r.text().await.unwrap(), "User-agent: *");
}

#[tokio::test]
async fn index_fallback_404_dotfiles_head_and_405() {
    let s = site();
    let p = start(&s, &[]);
    assert_eq!(get(&p, "/docs/", &[]).await.text().await.unwrap(), "docs");
    assert_eq!(get(&p, "/docs", &[]).await.text().await.unwrap(), "docs");
    // SPA: unknown paths without an extension get the shell, not cached as immutable.
    let r = get(&p, "/settings/profile", &[]).await;
    assert_eq!(r.status(), 200);
    assert_eq!(h(&r, "cache-control"), "no-cache");
    assert!(r.text().await.unwrap().contains("<title>app</title>"));
    // Missing files with an extension: 404.
    assert_eq!(get(&p, "/assets/missing.js", &[]).await.status(), 404);
    assert_eq!(get(&p, "/robots.txt/", &[]).await.status(), 404);
    // No directory listing: a directory without an index gets the shell, or 404 without one.
    let r = get(&p, "/nohtml/", &[]).await;
    assert!(r.text().await.unwrap().contains("<title>app</title>"));
    let strict = Portico::start(
        &Config::new()
            .upstream(Upstream::new("app", ["127.0.0.1:9"]))
            .route(Route::new().set(
                "static",
                serde_json::json!({ "root": s.root.display().to_string() }),
            ))
            .render(),
    );
    assert_eq!(get(&strict, "/nohtml/", &[]).await.status(), 404);
    assert_eq!(get(&strict, "/settings", &[]).await.status(), 404);
    assert_eq!(get(&strict, "/", &[]).await.status(), 200);
    // Dotfiles are hidden.
    assert_eq!(get(&p, "/.env", &[]).await.status(), 404);
    assert_eq!(get(&p, "/.git/config", &[]).await.status(), 404);
    // HEAD and 405.
    let c = reqwest::Client::new();
    let r = c.head(p.url("http", "/robots.txt")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(h(&r, "content-length"), "13");
    for m in ["POST", "PUT", "DELETE"] {
        let r = c
            .request(m.parse().unwrap(), p.url("http", "/robots.txt"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{m}");
        assert_eq!(h(&r, "allow"), "GET, HEAD");
    }
}

#[tokio::test]
async fn nothing_outside_the_root_is_reachable() {
    let s = site();
    let p = start(&s, &[]);
    let secret = std::fs::read_to_string(&s.outside).unwrap();
    let attempts = [
        "/../secret.txt",
        "/../../etc/passwd",
        "/assets/../../secret.txt",
        "/%2e%2e/secret.txt",
        "/%2E%2E/secret.txt",
        "/%2e%2e%2fsecret.txt",
        "/..%2fsecret.txt",
        "/..%2Fsecret.txt",
        "/%252e%252e/secret.txt",
        "/%252e%252e%252fsecret.txt",
        "/..%5csecret.txt",
        "/..%5Csecret.txt",
        "/%5c..%5csecret.txt",
        "/..\\secret.txt",
        "/%c0%ae%c0%ae/secret.txt",
        "/%c0%ae%c0%ae%c0%afsecret.txt",
        "/%e0%80%ae%e0%80%ae/secret.txt",
        "/%c1%9c..%c1%9csecret.txt",
        "/robots.txt%00.html",
        "/%00/../secret.txt",
        "/./../secret.txt",
        "/assets/./../../secret.txt",
        "/.%2e/secret.txt",
        "/%2e./secret.txt",
        "/escape.txt",
        "/up/secret.txt",
        "/%2e%2e%5csecret.txt",
        "//..//secret.txt",
        "/assets/%2e%2e/%2e%2e/secret.txt",
        "/....//secret.txt",
        "/%u002e%u002e/secret.txt",
        "/.%00./secret.txt",
    ];
    assert!(attempts.len() >= 30);
    for a in attempts {
        // Raw request: clients would normalize some of these away before sending.
        let req = format!("GET {a} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let resp = raw(p.addr("http"), req.as_bytes(), Duration::from_secs(5)).await;
        let status: u16 = resp
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!(!resp.contains(&secret), "{a} leaked the secret:\n{resp}");
        assert!(
            status == 404
                || status == 400
                || (status == 200 && resp.contains("<title>app</title>")),
            "{a}: {resp}"
        );
    }
    // A symlink inside the root to a file inside the root is fine.
    assert_eq!(
        get(&p, "/alias.txt", &[]).await.text().await.unwrap(),
        "User-agent: *"
    );
}

#[tokio::test]
async fn changed_files_are_served_fresh() {
    let s = site();
    let p = start(&s, &[]);
    assert_eq!(
        get(&p, "/robots.txt", &[]).await.text().await.unwrap(),
        "User-agent: *"
    );
    let old_etag = h(&get(&p, "/robots.txt", &[]).await, "etag");
    std::fs::write(s.root.join("robots.txt"), "User-agent: *\nDisallow: /").unwrap();
    // Cached entries are re-checked against the disk at most once a second.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = get(&p, "/robots.txt", &[]).await;
    assert_ne!(h(&r, "etag"), old_etag);
    assert_eq!(r.text().await.unwrap(), "User-agent: *\nDisallow: /");
    std::fs::remove_file(s.root.join("robots.txt")).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(get(&p, "/robots.txt", &[]).await.status(), 404);
}

#[tokio::test]
async fn try_files_serves_files_and_proxies_the_rest() {
    let s = site();
    let app = Origin::named("api").await;
    let p = Portico::start(
        &Config::new()
            .upstream(Upstream::new("app", [app.addr]))
            .route(Route::to("app").set(
                "static",
                serde_json::json!({ "root": s.root.display().to_string(), "try_files": true }),
            ))
            .render(),
    );
    assert_eq!(
        get(&p, "/robots.txt", &[]).await.text().await.unwrap(),
        "User-agent: *"
    );
    assert_eq!(
        get(&p, "/api/users", &[]).await.text().await.unwrap(),
        "api"
    );
    let r = client()
        .post(p.url("http", "/robots.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.text().await.unwrap(), "api", "non-GET goes to the app");
    assert_eq!(app.count(), 2);
}

#[tokio::test]
async fn a_files_only_config_needs_no_upstream() {
    let s = site();
    let p = Portico::start(
        &Config::new()
            .route(Route::new().set(
                "static",
                serde_json::json!({ "root": s.root.display().to_string() }),
            ))
            .render(),
    );
    assert_eq!(get(&p, "/robots.txt", &[]).await.status(), 200);
    assert_eq!(get(&p, "/missing.txt", &[]).await.status(), 404);
    let ready = client().get(p.admin_url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(
        metric(&p, "portico_http_requests_total", &[("upstream", "static")]).await,
        2.0
    );
    let _ = Path::new("/");
}

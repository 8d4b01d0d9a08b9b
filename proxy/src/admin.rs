//! The admin listener: `/metrics`, `/healthz`, `/ready`, `/status` (JSON), `/` (the same as an
//! HTML page for a person, see [`crate::statuspage`]) and `POST /reload`.
//!
//! It binds to loopback unless the config says otherwise, and runs on the control runtime so
//! that it answers even when the proxy's workers are saturated.
//!
//! Access: with `[admin] token` (mandatory off loopback) `/metrics`, `POST /reload`, the
//! reasons of `/ready` and the addresses in `/status` need `Authorization: Bearer <token>`
//! (compared in constant time); `/healthz`, `/ready`'s status and a redacted `/status` stay
//! open for probes. Without a token (loopback only) everything is open to local processes,
//! but a request must name the admin by IP address or `localhost` (a web page cannot reach it
//! through DNS rebinding). `POST /reload` refuses cross-site browser requests (`Origin`,
//! `Sec-Fetch-Site`) in every mode, so a page open in a browser on the host cannot reload.

use std::sync::Arc;
use std::time::UNIX_EPOCH;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::state::Shared;

fn health_json(b: &crate::upstream::BackendRt) -> Value {
    let d = b
        .health
        .detail
        .lock()
        .map(|d| d.clone())
        .unwrap_or_default();
    let unix = |t: Option<std::time::SystemTime>| {
        t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64())
    };
    json!({
        "verdict": b.health.verdict().as_str(),
        "reason": d.reason,
        "last_result": d.last_result,
        "last_check_unix": unix(d.last_check_at),
        "last_check_ms": d.last_latency.map(|l| l.as_secs_f64() * 1000.0),
        "since_unix": unix(d.since),
        "ejected_for_ms": b.health.ejected_for().map(|e| e.as_millis() as u64),
    })
}

/// The admin HTTP application.
pub struct Admin {
    shared: Arc<Shared>,
    reloader: Option<Arc<crate::reload::Reloader>>,
}

/// What a request may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// No token configured (loopback): everything.
    Open,
    /// The right bearer token: everything.
    Granted,
    /// A token is configured and the request lacks it: probes and redacted status only.
    Anonymous,
    /// Refused outright (a loopback admin named by a host name: DNS rebinding).
    Refused,
}

impl Access {
    fn full(self) -> bool {
        matches!(self, Access::Open | Access::Granted)
    }
}

/// Constant-time equality of two secrets of any length: their SHA-256 digests are compared
/// with every byte examined.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let (da, db) = (
        ring::digest::digest(&ring::digest::SHA256, a),
        ring::digest::digest(&ring::digest::SHA256, b),
    );
    da.as_ref()
        .iter()
        .zip(db.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

/// Whether a `Host` field names the admin by address or `localhost` (with any port).
fn host_is_literal(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => {
            return rest
                .split(']')
                .next()
                .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
        }
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

fn access(req: &pingora_http::RequestHeader, token: Option<&str>) -> Access {
    let Some(token) = token else {
        let host = req
            .headers
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        // No Host (HTTP/1.0) is a local tool, not a browser.
        return if host.is_empty() || host_is_literal(host) {
            Access::Open
        } else {
            Access::Refused
        };
    };
    let presented = req
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, cred) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| cred.trim())
        });
    match presented {
        Some(p) if same_secret(p.as_bytes(), token.as_bytes()) => Access::Granted,
        _ => Access::Anonymous,
    }
}

/// Whether a browser sent this request from another site: `Sec-Fetch-Site` other than
/// `same-origin`/`none`, or an `Origin` that is not this admin's own.
fn cross_site(req: &pingora_http::RequestHeader) -> bool {
    let h = |n: &str| req.headers.get(n).and_then(|v| v.to_str().ok());
    if let Some(site) = h("sec-fetch-site") {
        if !matches!(site, "same-origin" | "none") {
            return true;
        }
    }
    match h("origin") {
        None => false,
        Some(origin) => {
            let host = h("host").unwrap_or("");
            let own = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            own != Some(host)
        }
    }
}

fn unauthorized() -> Response<Vec<u8>> {
    let mut r = text(
        StatusCode::UNAUTHORIZED,
        "this admin endpoint needs Authorization: Bearer <admin.token>\n",
    );
    r.headers_mut().insert(
        "www-authenticate",
        http::HeaderValue::from_static("Bearer realm=\"portico admin\""),
    );
    r
}

fn text(status: StatusCode, body: impl Into<String>) -> Response<Vec<u8>> {
    let body = body.into().into_bytes();
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn json_response(status: StatusCode, v: &Value) -> Response<Vec<u8>> {
    let mut body = serde_json::to_vec_pretty(v).unwrap_or_default();
    body.push(b'\n');
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("content-length", body.len())
        .header("cache-control", "no-store")
        .body(body)
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

fn html_response(page: &str) -> Response<Vec<u8>> {
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "text/html; charset=utf-8")
        .header("content-length", page.len())
        .header("cache-control", "no-store")
        .header("content-security-policy", crate::statuspage::CSP)
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        .body(page.as_bytes().to_vec())
        .unwrap_or_else(|_| Response::new(Vec::new()))
}

impl Admin {
    /// An admin app over `shared`.
    pub fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            reloader: None,
        }
    }

    /// Serves `POST /reload` with this reloader.
    pub fn with_reloader(mut self, reloader: Arc<crate::reload::Reloader>) -> Self {
        self.reloader = Some(reloader);
        self
    }

    /// Readiness: not draining, and every route's upstream has a backend to send to.
    /// Returns the reasons it is not ready.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        if self.shared.is_draining() {
            reasons.push("shutting down".to_string());
        }
        let snap = self.shared.current.load();
        for r in snap.config.routes.routes().iter().filter(|r| r.proxies()) {
            let Some(up) = snap.upstreams.get(r.upstream) else {
                continue;
            };
            let set = up.set.load();
            if !set.backends.is_empty() && !set.backends.iter().any(|b| b.health.usable()) {
                let msg = format!("upstream \"{}\": {}", up.name(), up.unhealthy_summary(&set));
                if !reasons.contains(&msg) {
                    reasons.push(msg);
                }
            }
            if set.backends.is_empty() {
                let msg = format!(
                    "upstream \"{}\" (route \"{}\") has no backends",
                    up.name(),
                    r.name
                );
                if !reasons.contains(&msg) {
                    reasons.push(msg);
                }
            }
        }
        reasons
    }

    fn metrics(&self) -> Response<Vec<u8>> {
        let snap = self.shared.current.load();
        let m = &self.shared.metrics;
        for up in &snap.upstreams {
            let set = up.set.load();
            m.upstream_in_flight
                .with_label_values(&[up.name()])
                .set(up.in_flight() as i64);
            m.upstream_backends
                .with_label_values(&[up.name()])
                .set(set.backends.len() as i64);
            m.upstream_backends_healthy
                .with_label_values(&[up.name()])
                .set(set.backends.iter().filter(|b| b.health.usable()).count() as i64);
        }
        m.replay_cache_entries
            .set(self.shared.replay_cache.len() as i64);
        let body = m.render();
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/plain; version=0.0.4")
            .header("content-length", body.len())
            .body(body)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }

    /// The `/status` document; `full` is false for a caller without the admin token, who sees
    /// no listener, backend or discovery addresses and no static roots.
    pub fn status(&self, full: bool) -> Value {
        let mut v = self.status_full();
        if !full {
            redact(&mut v);
        }
        v
    }

    fn status_full(&self) -> Value {
        let snap = self.shared.current.load();
        let cfg = &snap.config;
        let listeners: Vec<Value> = self
            .shared
            .listeners
            .lock()
            .map(|ls| {
                ls.iter()
                    .map(|l| {
                        json!({
                            "name": l.name,
                            "address": l.address.to_string(),
                            "tls": l.tls,
                            "connections_open": self.shared.metrics.connections_open.with_label_values(&[&l.name]).get(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let routes: Vec<Value> = cfg
            .routes
            .routes()
            .iter()
            .map(|r| {
                json!({
                    "name": r.name,
                    "hosts": r.hosts,
                    "path": r.path,
                    "upstream": r.proxies().then(|| cfg.upstreams.get(r.upstream).map(|u| u.name.clone())).flatten(),
                    "static_root": r.static_files.as_ref().map(|f| f.root.display().to_string()),
                })
            })
            .collect();
        let upstreams: Vec<Value> = snap
            .upstreams
            .iter()
            .map(|u| {
                let set = u.set.load();
                let backends: Vec<Value> = set
                    .backends
                    .iter()
                    .map(|b| {
                        json!({
                            "key": &*b.key,
                            "id": b.id.as_deref(),
                            "address": b.addr.to_string(),
                            "region": b.region.as_deref(),
                            "origin": &*b.origin,
                            "weight": b.weight,
                            "in_flight": b.in_flight(),
                            "requests": b.requests.load(std::sync::atomic::Ordering::Relaxed),
                            "connect_failures": b.connect_failures.load(std::sync::atomic::Ordering::Relaxed),
                            "latency_ms": (b.latency_us() > 0).then(|| b.latency_us() as f64 / 1000.0),
                            "state": b.health.state_name(),
                            "health": health_json(b),
                        })
                    })
                    .collect();
                let discovery = if u.discovery.is_empty() {
                    Value::Null
                } else {
                    let st = u.discovery_status.lock().map(|s| s.clone()).unwrap_or_default();
                    let unix = |t: Option<std::time::SystemTime>| {
                        t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs_f64())
                    };
                    json!({
                        "targets": u.discovery.iter().map(|t| t.discovery.to_string()).collect::<Vec<_>>(),
                        "rounds": st.rounds,
                        "last_success_unix": unix(st.last_success),
                        "last_error": st.last_error,
                        "next_refresh_unix": unix(st.next_refresh),
                    })
                };
                json!({
                    "name": u.name(),
                    "balance": u.cfg.balance.as_str(),
                    "in_flight": u.in_flight(),
                    "regions": set.regions(&u.local_region),
                    "discovery": discovery,
                    "backends": backends,
                })
            })
            .collect();
        let reload = self
            .shared
            .reload
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        let unix = |t: Option<std::time::SystemTime>| {
            t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs())
        };
        let acme: Vec<Value> = self
            .shared
            .acme
            .hosts
            .lock()
            .map(|hosts| {
                hosts
                    .iter()
                    .map(|h| {
                        json!({
                            "listener": h.listener,
                            "host": h.host,
                            "challenge": h.challenge,
                            "directory": h.directory,
                            "serving": h.serving,
                            "not_after_unix": unix(h.not_after),
                            "last_attempt_unix": unix(h.last_attempt),
                            "last_error": h.last_error,
                            "next_attempt_unix": unix(h.next_attempt),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let (nofile_soft, nofile_hard) = rlimit::Resource::NOFILE.get().unwrap_or((0, 0));
        let recent_reloads: Vec<Value> = reload
            .recent
            .iter()
            .rev()
            .map(|a| {
                json!({
                    "at_unix": a.at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                    "trigger": a.trigger,
                    "result": if a.error.is_some() { "error" } else { "reloaded" },
                    "generation": a.generation,
                    "error": a.error,
                })
            })
            .collect();
        json!({
            "version": crate::buildinfo::VERSION,
            "commit": crate::buildinfo::COMMIT,
            "uptime_seconds": self.shared.started.elapsed().as_secs_f64(),
            "draining": self.shared.is_draining(),
            "config": {
                "source": cfg.source_name,
                "generation": snap.generation,
                "loaded_at_unix": snap.loaded_at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
                "last_reload_error": reload.last_error,
                "last_reload_error_at_unix": reload.last_error_at.and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map(|d| d.as_secs()),
            },
            "server": {
                "name": cfg.server.name,
                "region": cfg.server.region,
                "threads": cfg.server.threads,
                "open_files_limit": nofile_soft,
                "open_files_hard_limit": nofile_hard,
                "open_files_needed": crate::doctor::Needs::of(cfg).descriptors,
            },
            "listeners": listeners,
            "routes": routes,
            "upstreams": upstreams,
            "recent_reloads": recent_reloads,
            "acme": acme,
        })
    }
}

/// Removes addresses and paths from a `/status` document.
fn redact(v: &mut Value) {
    let hide = |o: &mut Value, keys: &[&str]| {
        if let Some(o) = o.as_object_mut() {
            for k in keys {
                if o.contains_key(*k) {
                    o.insert(
                        (*k).to_string(),
                        Value::String("(hidden: needs admin.token)".into()),
                    );
                }
            }
        }
    };
    if let Some(ls) = v.get_mut("listeners").and_then(Value::as_array_mut) {
        ls.iter_mut().for_each(|l| hide(l, &["address"]));
    }
    if let Some(rs) = v.get_mut("routes").and_then(Value::as_array_mut) {
        rs.iter_mut().for_each(|r| hide(r, &["static_root"]));
    }
    if let Some(us) = v.get_mut("upstreams").and_then(Value::as_array_mut) {
        for u in us {
            if let Some(d) = u.get_mut("discovery") {
                hide(d, &["targets", "last_error"]);
            }
            if let Some(bs) = u.get_mut("backends").and_then(Value::as_array_mut) {
                bs.iter_mut()
                    .for_each(|b| hide(b, &["key", "address", "origin"]));
            }
        }
    }
    if let Some(hs) = v.get_mut("acme").and_then(Value::as_array_mut) {
        // Errors name storage paths.
        hs.iter_mut()
            .filter(|h| !h["last_error"].is_null())
            .for_each(|h| hide(h, &["last_error"]));
    }
    if let Some(rs) = v.get_mut("recent_reloads").and_then(Value::as_array_mut) {
        // Errors name files and lines of the config.
        rs.iter_mut()
            .filter(|r| !r["error"].is_null())
            .for_each(|r| hide(r, &["error"]));
    }
    hide(
        v.get_mut("config").unwrap_or(&mut Value::Null),
        &["source", "last_reload_error"],
    );
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        let get = method == http::Method::GET || method == http::Method::HEAD;
        let token = self
            .shared
            .current
            .load()
            .config
            .admin
            .as_ref()
            .and_then(|a| a.token.clone());
        let access = access(req, token.as_deref());
        if access == Access::Refused {
            return text(
                StatusCode::FORBIDDEN,
                "the admin answers requests addressed to it by IP address or localhost\n",
            );
        }
        match path.as_str() {
            "/" | "/metrics" | "/healthz" | "/ready" | "/status" if !get => {
                let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
                r.headers_mut()
                    .insert("allow", http::HeaderValue::from_static("GET, HEAD"));
                r
            }
            "/metrics" if !access.full() => unauthorized(),
            "/metrics" => self.metrics(),
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/ready" => {
                let reasons = self.not_ready_reasons();
                if reasons.is_empty() {
                    text(StatusCode::OK, "ready\n")
                } else if !access.full() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {}\n", reasons.join("; ")),
                    )
                }
            }
            "/status" => json_response(StatusCode::OK, &self.status(access.full())),
            "/reload" if method != http::Method::POST => {
                let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use POST /reload\n");
                r.headers_mut()
                    .insert("allow", http::HeaderValue::from_static("POST"));
                r
            }
            "/reload" if cross_site(req) => text(
                StatusCode::FORBIDDEN,
                "cross-site requests cannot reload (Origin / Sec-Fetch-Site)\n",
            ),
            "/reload" if !access.full() => unauthorized(),
            "/reload" => match &self.reloader {
                None => text(StatusCode::SERVICE_UNAVAILABLE, "reload is not available\n"),
                Some(r) => match r.reload("POST /reload").await {
                    Ok(done) => json_response(
                        StatusCode::OK,
                        &json!({
                            "result": "reloaded",
                            "generation": done.generation,
                            "not_applied": done.not_applied,
                        }),
                    ),
                    Err(e) => json_response(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        &json!({
                            "result": "error",
                            "error": e,
                            "generation": self.shared.current.load().generation,
                        }),
                    ),
                },
            },
            "/" => html_response(&crate::statuspage::render(
                &self.status(access.full()),
                access.full(),
            )),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try / (status page) /metrics /healthz /ready /status\n",
            ),
        }
    }
}

/// Serves the admin application on `listener` until shutdown.
pub async fn serve(
    listener: std::net::TcpListener,
    admin: Arc<Admin>,
    mut shutdown: watch::Receiver<bool>,
) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "cannot register the admin socket");
            return;
        }
    };
    loop {
        let accepted = tokio::select! {
            biased;
            _ = shutdown.changed() => return,
            a = listener.accept() => a,
        };
        let Ok((tcp, _peer)) = accepted else {
            continue;
        };
        let admin = admin.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let stream: L4Stream = tcp.into();
            let _ = admin.process_new(Box::new(stream), &shutdown).await;
        });
    }
}

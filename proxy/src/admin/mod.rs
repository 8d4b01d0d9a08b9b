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

mod status;

use std::sync::Arc;

use async_trait::async_trait;
use http::{Response, StatusCode};
use pingora_core::apps::http_app::ServeHttp;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::state::Shared;

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
            m.upstreams
                .upstream_in_flight
                .with_label_values(&[up.name()])
                .set(up.in_flight() as i64);
            m.upstreams
                .upstream_backends
                .with_label_values(&[up.name()])
                .set(set.backends.len() as i64);
            m.upstreams
                .upstream_backends_healthy
                .with_label_values(&[up.name()])
                .set(set.backends.iter().filter(|b| b.health.usable()).count() as i64);
        }
        m.replay
            .replay_cache_entries
            .set(self.shared.replay_cache.len() as i64);
        let body = m.render();
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "text/plain; version=0.0.4")
            .header("content-length", body.len())
            .body(body)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
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

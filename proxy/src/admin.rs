//! The admin listener: `/metrics`, `/healthz`, `/ready`, `/status` and `POST /reload`.
//!
//! It binds to loopback unless the config says otherwise, and runs on the control runtime so
//! that it answers even when the proxy's workers are saturated.

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

    /// The `/status` document.
    pub fn status(&self) -> Value {
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
        json!({
            "version": env!("CARGO_PKG_VERSION"),
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
            },
            "listeners": listeners,
            "routes": routes,
            "upstreams": upstreams,
        })
    }
}

#[async_trait]
impl ServeHttp for Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let method = req.method.clone();
        let path = req.uri.path().to_string();
        let get = method == http::Method::GET || method == http::Method::HEAD;
        match path.as_str() {
            "/metrics" | "/healthz" | "/ready" | "/status" if !get => {
                let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
                r.headers_mut()
                    .insert("allow", http::HeaderValue::from_static("GET, HEAD"));
                r
            }
            "/metrics" => self.metrics(),
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/ready" => {
                let reasons = self.not_ready_reasons();
                if reasons.is_empty() {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {}\n", reasons.join("; ")),
                    )
                }
            }
            "/status" => json_response(StatusCode::OK, &self.status()),
            "/reload" if method != http::Method::POST => {
                let mut r = text(StatusCode::METHOD_NOT_ALLOWED, "use POST /reload\n");
                r.headers_mut()
                    .insert("allow", http::HeaderValue::from_static("POST"));
                r
            }
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
            "/" => text(
                StatusCode::OK,
                "portico admin: /metrics /healthz /ready /status, POST /reload\n",
            ),
            _ => text(
                StatusCode::NOT_FOUND,
                "not found: try /metrics /healthz /ready /status\n",
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

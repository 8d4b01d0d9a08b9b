//! The `/status` document: server, listeners, upstreams with every backend's health, routes,
//! discovery, ACME and recent reloads; and its redaction for callers without the admin token.

use std::time::UNIX_EPOCH;

use serde_json::{json, Value};

use super::*;

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

impl Admin {
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
                            "connections_open": self.shared.metrics.listeners.connections_open.with_label_values(&[&l.name]).get(),
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

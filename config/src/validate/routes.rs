//! Validation of `[[routes]]`: matching, targets, header rules, compression and rate limits.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::defaults as d;
use crate::error::KeyPath;
use crate::file::*;
use crate::model::*;
use crate::routing::normalize_path;

use super::*;

impl Validator<'_> {
    pub(super) fn routes(
        &mut self,
        files: Vec<(usize, RouteFile)>,
        present: bool,
        upstreams: &[Upstream],
        index: &HashMap<String, usize>,
    ) -> Vec<Route> {
        let root = KeyPath::root().key("routes");
        if files.is_empty() && !present {
            // Without routes, a single upstream takes every request.
            return match upstreams {
                [_] => vec![Route::new("default", Vec::new(), "/", 0)],
                [] => Vec::new(),
                _ => {
                    self.err(root, "several upstreams and no routes: add [[routes]] saying which requests go to which upstream");
                    Vec::new()
                }
            };
        }
        let mut out = Vec::new();
        let mut seen: HashMap<(String, String), usize> = HashMap::new();
        let mut names: HashSet<String> = HashSet::new();
        // Affinity cookie name -> (route index, upstream name) of the first route using it.
        let mut cookies: HashMap<String, (usize, String)> = HashMap::new();
        for (i, f) in files {
            let k = root.index(i);
            let mut hosts = Vec::new();
            for (j, h) in f.host.clone().unwrap_or_default().0.iter().enumerate() {
                let hk = if f.host.as_ref().is_some_and(|h| h.0.len() > 1) {
                    k.key("host").index(j)
                } else {
                    k.key("host")
                };
                match validate_host_pattern(h) {
                    Ok(h) => hosts.push(h),
                    Err(e) => self.err(hk, e),
                }
            }
            let path = f.path.clone().unwrap_or_else(|| "/".to_string());
            if !path.starts_with('/') || path.contains(['?', '#']) {
                self.err(
                    k.key("path"),
                    format!("path {path:?} must start with '/' and hold no query or fragment"),
                );
            } else if normalize_path(&path) != path {
                self.err(
                    k.key("path"),
                    format!(
                        "path {path:?} is not normalized (write {:?})",
                        normalize_path(&path)
                    ),
                );
            }
            let upstream_given = f.upstream.is_some();
            let upstream = match &f.upstream {
                // A files-only route needs no upstream (the index is never used).
                None if f.static_files.is_some() => Some(0),
                None => {
                    self.err(
                        k.clone(),
                        "missing `upstream` (the upstream this route sends requests to)",
                    );
                    None
                }
                Some(u) => match index.get(u) {
                    Some(&idx) => Some(idx),
                    None => {
                        let hint = suggest(u, upstreams.iter().map(|x| x.name.as_str()));
                        self.err(k.key("upstream"), format!("no upstream named {u:?}{hint}"));
                        None
                    }
                },
            };
            let host_keys: Vec<String> = if hosts.is_empty() {
                vec!["*any*".into()]
            } else {
                hosts.clone()
            };
            for h in &host_keys {
                if let Some(prev) = seen.insert((h.clone(), path.clone()), i) {
                    let shown = if h == "*any*" {
                        "any host".to_string()
                    } else {
                        format!("host {h:?}")
                    };
                    self.err(
                        k.key("path"),
                        format!("{shown} with path {path:?} is already routed by routes[{prev}]"),
                    );
                }
            }
            let name = f.name.clone().unwrap_or_else(|| {
                format!("{}{}", hosts.first().map_or("*", |h| h.as_str()), path)
            });
            if !names.insert(name.clone()) {
                self.err(k.key("name"), format!("route name {name:?} is used twice"));
            }
            let strip_prefix = f.strip_prefix.is_some_and(|v| v.0);
            if strip_prefix && path == "/" {
                self.err(
                    k.key("strip_prefix"),
                    "strip_prefix needs a path other than \"/\"",
                );
            }
            let writes = self.writes(
                f.writes.clone(),
                f.write_methods.clone(),
                &k,
                self.has_primary,
            );
            let mut replay_cache = Vec::new();
            for (j, r) in f.replay_cache.unwrap_or_default().into_iter().enumerate() {
                let rk = k.key("replay_cache").index(j);
                let rpath = r.path.unwrap_or_else(|| path.clone());
                if !rpath.starts_with('/') {
                    self.err(
                        rk.key("path"),
                        format!("path {rpath:?} must start with '/'"),
                    );
                }
                let key = match (r.cookie, r.header) {
                    (Some(c), None) if is_token(&c) => Some(SessionKey::Cookie(c)),
                    (None, Some(h)) if is_token(&h) => {
                        Some(SessionKey::Header(h.to_ascii_lowercase()))
                    }
                    (Some(_), Some(_)) => {
                        self.err(rk.clone(), "use either `cookie` or `header`, not both");
                        None
                    }
                    (None, None) => {
                        self.err(
                            rk.clone(),
                            "missing `cookie` or `header` (the session identity)",
                        );
                        None
                    }
                    _ => {
                        self.err(rk.clone(), "invalid cookie or header name");
                        None
                    }
                };
                let ttl = dur(r.ttl, Duration::from_secs(600));
                if ttl.is_zero() {
                    self.err(rk.key("ttl"), "must be greater than zero");
                }
                if let Some(key) = key {
                    replay_cache.push(ReplayCacheRule {
                        path: rpath,
                        key,
                        ttl,
                    });
                }
            }
            let request_headers = self.header_rules(f.request_headers, &k.key("request_headers"));
            let response_headers =
                self.header_rules(f.response_headers, &k.key("response_headers"));
            let sticky = f
                .sticky
                .and_then(|s| self.sticky(s, &k.key("sticky"), f.upstream.as_deref()));
            if let (Some(Sticky::Cookie(c)), Some(up)) = (&sticky, &f.upstream) {
                // Two upstreams cannot share one pin cookie: each would find the other's pin
                // invalid and overwrite it, so their clients would never stay put.
                match cookies.get(&c.name) {
                    Some((prev, other)) if other != up => self.err(
                        k.key("sticky").key("name"),
                        format!(
                            "cookie {:?} already pins clients of routes[{prev}] to upstream {other:?}; routes to different upstreams need different cookie names",
                            c.name
                        ),
                    ),
                    Some(_) => {}
                    None => {
                        cookies.insert(c.name.clone(), (i, up.clone()));
                    }
                }
            }
            let static_files = f
                .static_files
                .and_then(|s| self.static_files(s, &k.key("static"), upstream_given));
            let ws_idle_timeout = f.ws_idle_timeout.map(|d| d.0).filter(|d| !d.is_zero());
            let max_websockets = match f.max_websockets.map(|n| n.0) {
                Some(0) => {
                    self.err(
                        k.key("max_websockets"),
                        "must be at least 1 (leave it out for no limit)",
                    );
                    None
                }
                n => n.map(|n| n as usize),
            };
            let ip_rules = ip_rules(self, f.allow, f.deny, &k);
            let rate_limit = f
                .rate_limit
                .and_then(|r| self.rate_limit(r, &k.key("rate_limit")));
            let compress = f
                .compress
                .and_then(|c| self.compress(c, &k.key("compress")));
            if let Some(upstream) = upstream {
                out.push(Route {
                    name,
                    hosts,
                    path,
                    upstream,
                    max_body: f.max_body.map(|s| s.0),
                    buffer_requests: f.buffer_requests.is_some_and(|v| v.0),
                    strip_prefix,
                    request_headers,
                    response_headers,
                    writes,
                    replay_cache,
                    sticky,
                    static_files,
                    ws_idle_timeout,
                    max_websockets,
                    ip_rules,
                    rate_limit,
                    compress,
                });
            }
        }
        out
    }

    pub(super) fn header_rules(&mut self, f: Option<HeaderRulesFile>, k: &KeyPath) -> HeaderRules {
        let Some(f) = f else {
            return HeaderRules::default();
        };
        let mut rules = HeaderRules::default();
        for (field, map, dst) in [
            ("set", f.set, &mut rules.set),
            ("add", f.add, &mut rules.add),
        ] {
            for (name, value) in map.unwrap_or_default() {
                let hk = k.key(field).key(&name);
                if !is_token(&name) {
                    self.problems
                        .add(hk, format!("{name:?} is not a valid header name"));
                } else if !is_header_value(&value) {
                    self.problems
                        .add(hk, "header values cannot contain control characters");
                } else {
                    dst.push((name.to_ascii_lowercase(), value));
                }
            }
        }
        for (i, name) in f.remove.unwrap_or_default().into_iter().enumerate() {
            if is_token(&name) {
                rules.remove.push(name.to_ascii_lowercase());
            } else {
                self.err(
                    k.key("remove").index(i),
                    format!("{name:?} is not a valid header name"),
                );
            }
        }
        rules
    }

    /// `compress = true | false | { min_size, types, gzip, brotli, zstd }`.
    pub(super) fn compress(&mut self, f: CompressFile, k: &KeyPath) -> Option<Compress> {
        let t = match f {
            CompressFile::On(false) => return None,
            CompressFile::On(true) => return Some(Compress::default()),
            CompressFile::Table(t) => t,
        };
        let mut c = Compress::default();
        if let Some(m) = t.min_size {
            c.min_size = m.0;
        }
        if let Some(types) = t.types {
            for (i, ty) in types.iter().enumerate() {
                // `type/subtype`, `type/*` or `type/*+suffix`.
                let ok = ty.split_once('/').is_some_and(|(t, sub)| {
                    is_token(t)
                        && !t.contains('*')
                        && (sub == "*"
                            || sub
                                .strip_prefix('*')
                                .map_or(is_token(sub) && !sub.contains('*'), |rest| {
                                    rest.starts_with('+') && is_token(rest)
                                }))
                });
                if !ok {
                    self.err(
                        k.key("types").index(i),
                        format!("{ty:?} is not a media type (\"text/html\"), \"text/*\" or \"application/*+json\""),
                    );
                }
            }
            c.types = types.into_iter().map(|t| t.to_ascii_lowercase()).collect();
        }
        for (name, v, max, out) in [
            ("gzip", t.gzip, 9, &mut c.gzip_level),
            ("brotli", t.brotli, 11, &mut c.brotli_level),
            ("zstd", t.zstd, 19, &mut c.zstd_level),
        ] {
            if let Some(v) = v.map(|v| v.0) {
                if v > max {
                    self.err(
                        k.key(name),
                        format!("level {v} is above {max} (0 turns it off)"),
                    );
                } else {
                    *out = v as u32;
                }
            }
        }
        if c.gzip_level == 0 && c.brotli_level == 0 && c.zstd_level == 0 {
            self.err(
                k.clone(),
                "every coding is off: use compress = false instead",
            );
        }
        Some(c)
    }

    /// `rate_limit = { requests, per, key, max_clients }`.
    pub(super) fn rate_limit(&mut self, f: RateLimitFile, k: &KeyPath) -> Option<RateLimit> {
        let requests = match f.requests.map(|n| n.0) {
            None => {
                self.err(k.key("requests"), "missing: requests allowed per window");
                return None;
            }
            Some(0) => {
                self.err(k.key("requests"), "must be at least 1");
                return None;
            }
            Some(n) => u32::try_from(n).unwrap_or(u32::MAX),
        };
        let per = f.per.map_or(Duration::from_secs(60), |d| d.0);
        if per < Duration::from_secs(1) || per > Duration::from_secs(86_400) {
            self.err(k.key("per"), "the window must be between 1s and 24h");
            return None;
        }
        let key = match f.key.as_deref() {
            None | Some("ip") => RateKey::Ip,
            Some(s) => match s.split_once(':') {
                Some(("header", name)) if is_token(name) => {
                    RateKey::Header(name.to_ascii_lowercase())
                }
                Some(("cookie", name)) if is_token(name) => RateKey::Cookie(name.to_string()),
                _ => {
                    self.err(
                        k.key("key"),
                        format!("{s:?}: expected \"ip\", \"header:NAME\" or \"cookie:NAME\""),
                    );
                    return None;
                }
            },
        };
        let max_clients = match f.max_clients.map(|n| n.0) {
            None => d::RATE_LIMIT_MAX_CLIENTS,
            Some(n) if (1..=10_000_000).contains(&n) => n as usize,
            Some(_) => {
                self.err(k.key("max_clients"), "must be between 1 and 10000000");
                return None;
            }
        };
        Some(RateLimit {
            requests,
            per,
            key,
            max_clients,
        })
    }
}

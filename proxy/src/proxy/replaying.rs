//! The request path's side of fly-replay: reading instructions from upstream responses,
//! deciding the next target, the replay cache, and the headers of replayed requests.
//! The mechanism is described in [`crate::replay`].

use std::time::Instant;

use bytes::Bytes;
use http::HeaderName;
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::Session;

use super::ctx::{LocalFailure, RequestCtx};
use super::edits::Edits;
use super::subrequest::Carried;
use super::{cookie, header_value as header, request_host, Portico};
use crate::replay::cache::{self, CacheKey, CachedTarget};
use crate::replay::{self as rp, instruction, Instruction, Issuer, Target};

impl Portico {
    /// Counts a replay outcome.
    pub(crate) fn count_replay(&self, ctx: &RequestCtx, outcome: &str) {
        let upstream = ctx.snap.upstreams[ctx.upstream].name();
        let kind = if ctx.replay.kind.is_empty() {
            "header"
        } else {
            ctx.replay.kind
        };
        self.shared
            .metrics
            .replay
            .replays
            .with_label_values(&[upstream, kind, outcome])
            .inc();
    }

    /// A replay cannot happen: records why and returns the error that ends the request.
    fn refuse(&self, ctx: &mut RequestCtx, f: LocalFailure) -> Box<Error> {
        self.count_replay(ctx, f.reason);
        tracing::warn!(request_id = ctx.id(), status = f.status, reason = f.reason, message = %f.message, "replay refused");
        super::respond::fail(ctx, f)
    }

    /// In a replay subrequest: takes over the state of the request being replayed.
    /// Returns false for ordinary requests.
    pub(super) fn adopt_carried(&self, session: &Session, ctx: &mut RequestCtx) -> bool {
        let Some(c) = super::subrequest::carried(session) else {
            return false;
        };
        let Carried {
            snap,
            route,
            request_id,
            client_ip,
            peer_ip,
            peer_trusted,
            hops,
            target,
            by_fallback,
            first_from,
            cache_key,
            kind,
            handback,
        } = c;
        let snap_route_upstream = snap.config.routes.routes()[route].upstream;
        ctx.snap = snap;
        ctx.route = Some(route);
        ctx.request_id = request_id;
        ctx.client_ip = client_ip;
        ctx.peer_ip = peer_ip;
        ctx.peer_trusted = peer_trusted;
        ctx.upstream = target.as_ref().map_or(snap_route_upstream, |t| t.upstream);
        ctx.replay.hops = hops;
        ctx.replay.target = target;
        ctx.replay.by_fallback = by_fallback;
        ctx.replay.first_from = first_from;
        ctx.replay.cache_key = cache_key;
        ctx.replay.kind = kind;
        ctx.replay.handback = Some(handback);
        ctx.is_subrequest = true;
        true
    }

    /// On the first attempt: routes the request by the replay cache when an entry matches.
    pub(crate) fn route_by_cache(&self, req: &RequestHeader, ctx: &mut RequestCtx) {
        let cache = &self.shared.replay_cache;
        let Some(route_idx) = ctx.route else { return };
        if cache.is_empty() || !ctx.snap.config.replay.enabled {
            return;
        }
        let snap = ctx.snap.clone();
        let route = &snap.config.routes.routes()[route_idx];
        let path = req.uri.path();
        let mut hit = request_host(req).and_then(|h| cache.lookup_path(h, path));
        if hit.is_none() {
            hit = session_keys(route, req)
                .into_iter()
                .find_map(|k| cache.lookup(&k));
        }
        let Some(hit) = hit else {
            return;
        };
        let m = &self.shared.metrics;
        let skip = header(&req.headers, "fly-replay-cache-control")
            .is_some_and(|v| v.eq_ignore_ascii_case("skip"));
        if skip && hit.allow_bypass {
            m.replay.replay_cache.with_label_values(&["bypass"]).inc();
            ctx.replay.cache_bypass = true;
            return;
        }
        let Some(up) = snap
            .upstreams
            .iter()
            .position(|u| u.name() == hit.target.upstream)
        else {
            cache.remove(&hit.key);
            return;
        };
        m.replay.replay_cache.with_label_values(&["hit"]).inc();
        let t = hit.target;
        ctx.replay.target = Some(Target {
            upstream: up,
            regions: t.regions,
            regions_forced: t.regions_forced,
            instance: t.instance,
            instance_forced: t.instance_forced,
            exclude: Default::default(),
            src: None,
            failed: None,
            cache_status: Some("hit"),
            transform: None,
            deadline: None,
            fallback: None,
            started: Instant::now(),
        });
        ctx.replay.cache_key = Some(hit.key);
        ctx.replay.kind = "cache";
    }

    /// What a replayed request carries: `fly-replay-src`, `fly-replay-failed`,
    /// `fly-replay-cache-status`, `fly-preferred-instance-unavailable`, and the JSON form's
    /// rewrites.
    pub(crate) fn replay_edits(&self, ctx: &RequestCtx, e: &mut Edits) -> Result<()> {
        let Some(t) = &ctx.replay.target else {
            return Ok(());
        };
        let set = |e: &mut Edits, name: &'static str, value: &str| -> Result<()> {
            e.set(HeaderName::from_static(name), super::edits::value(value)?);
            Ok(())
        };
        if let Some(src) = &t.src {
            set(e, "fly-replay-src", src)?;
        }
        if let Some(failed) = &t.failed {
            set(e, "fly-replay-failed", failed)?;
        }
        let status = t
            .cache_status
            .or(ctx.replay.cache_bypass.then_some("bypass"));
        if let Some(status) = status {
            set(e, "fly-replay-cache-status", status)?;
        }
        if ctx.preferred_unavailable && !t.instance_forced {
            if let Some(id) = &t.instance {
                set(e, "fly-preferred-instance-unavailable", id)?;
            }
        }
        if let Some(tr) = &t.transform {
            for name in &tr.delete_headers {
                e.remove(super::edits::name(name)?);
            }
            for (name, value) in &tr.set_headers {
                e.set(super::edits::name(name)?, super::edits::value(value)?);
            }
            if let Some(path) = &tr.path {
                // Checked now, so a bad path is an error here rather than at write time.
                http::Uri::try_from(path.as_str())
                    .map_err(|e| Error::because(ErrorType::InternalError, "transform path", e))?;
                e.target = Some(Bytes::from(path.clone()));
            }
        }
        Ok(())
    }

    /// Reads a response head for a replay instruction. Returns the error that ends this
    /// attempt when the upstream asked for a replay (or sent a malformed instruction).
    pub(crate) fn inspect_response(
        &self,
        req: &RequestHeader,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if !ctx.snap.config.replay.enabled || resp.status.is_informational() {
            return Ok(());
        }
        // The target of a cached replay can drop the entry.
        if ctx.replay.cache_key.is_some()
            && header(&resp.headers, "fly-replay-cache")
                .is_some_and(|v| v.eq_ignore_ascii_case("invalidate"))
        {
            if let Some(k) = ctx.replay.cache_key.take() {
                self.shared.replay_cache.remove(&k);
                self.shared
                    .metrics
                    .replay
                    .replay_cache
                    .with_label_values(&["invalidated"])
                    .inc();
            }
        }
        if let Some(value) = resp.headers.get("fly-replay") {
            let parsed = value
                .to_str()
                .map_err(|_| "not valid text".to_string())
                .and_then(instruction::parse_header);
            return Err(match parsed {
                Ok(inst) => {
                    let cache = cache_instruction(&resp.headers, &inst, ctx.id());
                    self.begin_replay(req, ctx, inst, "header", cache)
                }
                Err(why) => {
                    let f = self.malformed(ctx, &why);
                    self.refuse(ctx, f)
                }
            });
        }
        let is_json = header(&resp.headers, "content-type")
            .is_some_and(|ct| ct.to_ascii_lowercase().starts_with(rp::JSON_CONTENT_TYPE));
        if is_json {
            let empty = req.method == http::Method::HEAD
                || header(&resp.headers, "content-length") == Some("0");
            if empty {
                let f = self.malformed(ctx, "the JSON replay instruction has no body");
                return Err(self.refuse(ctx, f));
            }
            // Hold the response back while its body (the instruction) arrives: the head becomes
            // an interim 100, which HTTP/1.1 clients skip and HTTP/2 never sends.
            ctx.replay.json = Some(Vec::new());
            resp.set_status(100)?;
            for h in [
                "content-length",
                "transfer-encoding",
                "content-type",
                "content-encoding",
            ] {
                resp.remove_header(h);
            }
        }
        Ok(())
    }

    /// Collects the body of a JSON replay instruction; at its end, starts the replay.
    pub(crate) fn inspect_body(
        &self,
        req: &RequestHeader,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(buf) = ctx.replay.json.as_mut() else {
            return Ok(());
        };
        if let Some(chunk) = body.take() {
            if buf.len() + chunk.len() > rp::MAX_JSON {
                ctx.replay.json = None;
                let f = self.malformed(ctx, "the JSON replay instruction is larger than 64 KiB");
                return Err(self.refuse(ctx, f));
            }
            buf.extend_from_slice(&chunk);
        }
        if !end_of_stream {
            return Ok(());
        }
        let json = ctx.replay.json.take().unwrap_or_default();
        Err(match instruction::parse_json(&json) {
            Ok(inst) => self.begin_replay(req, ctx, inst, "json", None),
            Err(why) => {
                let f = self.malformed(ctx, &why);
                self.refuse(ctx, f)
            }
        })
    }

    fn malformed(&self, ctx: &RequestCtx, why: &str) -> LocalFailure {
        let from = ctx.backend_addr.map(|a| a.to_string()).unwrap_or_default();
        LocalFailure::new(
            502,
            "replay_malformed",
            format!(
                "upstream \"{}\" ({from}) sent a malformed replay instruction: {why}",
                ctx.snap.upstreams[ctx.upstream].name()
            ),
        )
    }

    /// Acts on an instruction: checks the limits, records the target, and returns the
    /// retryable error that sends the request there.
    fn begin_replay(
        &self,
        req: &RequestHeader,
        ctx: &mut RequestCtx,
        inst: Instruction,
        kind: &'static str,
        cache: Option<(CacheKey, std::time::Duration, bool)>,
    ) -> Box<Error> {
        ctx.replay.kind = kind;
        let snap = ctx.snap.clone();
        if ctx.replay.by_fallback {
            let f = LocalFailure::new(
                502,
                "replay_after_fallback",
                "a request delivered by a replay fallback may not be replayed again".into(),
            );
            return self.refuse(ctx, f);
        }
        if ctx.replay.hops >= rp::MAX_HOPS {
            let f = LocalFailure::new(
                508,
                "replay_hop_limit",
                format!(
                    "replay limit reached: the request was replayed {} times already",
                    rp::MAX_HOPS
                ),
            );
            return self.refuse(ctx, f);
        }
        if ctx.replay.body.overflow {
            let f = super::subrequest::super_too_large(snap.config.replay.max_body);
            return self.refuse(ctx, f);
        }
        let up_idx = match &inst.app {
            Some(app) => match snap.upstreams.iter().position(|u| u.name() == app) {
                Some(i) => i,
                None => {
                    let f = LocalFailure::new(
                        502,
                        "replay_unknown_app",
                        format!("replay target app \"{app}\" is not an upstream of this proxy"),
                    );
                    return self.refuse(ctx, f);
                }
            },
            None => ctx.upstream,
        };
        let issuer = ctx.lease.as_ref().map(|l| Issuer {
            backend: l.backend.clone(),
            upstream: ctx.upstream,
            upstream_name: snap.upstreams[ctx.upstream].name().to_string(),
        });
        let mut target = rp::target_for(
            &inst,
            up_idx,
            issuer.clone(),
            &snap.config.server.region,
            Instant::now(),
        );
        let cached = CachedTarget {
            upstream: snap.upstreams[up_idx].name().to_string(),
            regions: target.regions.clone(),
            regions_forced: target.regions_forced,
            instance: target.instance.clone(),
            instance_forced: target.instance_forced,
        };
        if ctx.replay.cache_bypass {
            target.cache_status = Some("bypass");
        }
        if let Some((key, ttl, bypass)) = cache {
            self.shared
                .replay_cache
                .insert(key, cached.clone(), ttl, bypass);
            self.shared
                .metrics
                .replay
                .replay_cache
                .with_label_values(&["miss"])
                .inc();
            target.cache_status.get_or_insert("miss");
        }
        // Session rules of the route remember where this session's replays go.
        if let Some(route) = ctx.route {
            let route = &snap.config.routes.routes()[route];
            for (key, ttl) in session_keys_with_ttl(route, req) {
                self.shared
                    .replay_cache
                    .insert(key, cached.clone(), ttl, false);
            }
        }
        if let Some(i) = &issuer {
            ctx.replay
                .first_from
                .get_or_insert_with(|| rp::instance_name(&i.backend));
        }
        ctx.replay.hops += 1;
        self.count_replay(ctx, "replayed");
        tracing::debug!(hops = ctx.replay.hops, kind, to = %cached.upstream, regions = ?cached.regions, instance = ?cached.instance, "replaying");
        ctx.replay.target = Some(target);
        ctx.replay.pending = true;
        ctx.tried.clear();
        ctx.attempts = 0;
        let mut e = Error::explain(
            ErrorType::Custom("fly-replay"),
            "upstream asked for a replay",
        );
        e.set_retry(true);
        e
    }
}

/// The path cache entry a replay response asks for, if it is well-formed and allowed.
fn cache_instruction(
    h: &http::HeaderMap,
    inst: &Instruction,
    request_id: &str,
) -> Option<(CacheKey, std::time::Duration, bool)> {
    let pattern = header(h, "fly-replay-cache")?;
    if pattern.eq_ignore_ascii_case("invalidate") {
        return None;
    }
    // Fly's rule: a cached replay cannot depend on per-request details.
    if inst.state.is_some()
        || inst.transform.is_some()
        || inst.timeout.is_some()
        || inst.fallback.is_some()
    {
        tracing::warn!(
            request_id,
            pattern,
            "fly-replay-cache ignored: not allowed with state, transforms, timeout or fallback"
        );
        return None;
    }
    let key = cache::parse_pattern(pattern)?;
    let ttl: u64 = header(h, "fly-replay-cache-ttl-secs")?.parse().ok()?;
    if ttl < cache::MIN_TTL.as_secs() {
        tracing::warn!(
            request_id,
            pattern,
            ttl,
            "fly-replay-cache ignored: fly-replay-cache-ttl-secs must be at least 10"
        );
        return None;
    }
    let bypass =
        header(h, "fly-replay-cache-allow-bypass").is_some_and(|v| v.eq_ignore_ascii_case("yes"));
    Some((key, std::time::Duration::from_secs(ttl), bypass))
}

/// Session cache keys of a request under its route's rules.
fn session_keys(route: &portico_config::Route, req: &RequestHeader) -> Vec<CacheKey> {
    session_keys_with_ttl(route, req)
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

fn session_keys_with_ttl(
    route: &portico_config::Route,
    req: &RequestHeader,
) -> Vec<(CacheKey, std::time::Duration)> {
    let path = req.uri.path();
    route
        .replay_cache
        .iter()
        .enumerate()
        .filter(|(_, r)| portico_config::routing::path_matches(&r.path, path))
        .filter_map(|(i, r)| {
            let value = match &r.key {
                portico_config::SessionKey::Cookie(c) => cookie(req, c),
                portico_config::SessionKey::Header(h) => {
                    req.headers.get(h.as_str()).and_then(|v| v.to_str().ok())
                }
            }?;
            Some((
                CacheKey::Session {
                    route: route.name.clone(),
                    rule: i,
                    value: value.to_string(),
                },
                r.ttl,
            ))
        })
        .collect()
}

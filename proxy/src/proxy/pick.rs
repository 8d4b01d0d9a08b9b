//! Choosing the backend of an attempt: the target (a replay, write routing, the client's
//! routing headers, or plain balancing), the affinity hash, the wait queue, and what to answer
//! when nothing can be chosen.

use std::net::IpAddr;

use pingora_http::RequestHeader;
use portico_config::HashKey;
use smallvec::SmallVec;

use super::ctx::{LocalFailure, RequestCtx};
use super::{cookie, Portico};
use crate::upstream::select::hash_key;
use crate::upstream::{AcquireError, UpstreamRt};

impl Portico {
    pub(crate) fn affinity_hash(
        &self,
        req: &RequestHeader,
        ctx: &RequestCtx,
        key: &HashKey,
    ) -> Option<u64> {
        match key {
            HashKey::ClientIp => ctx.client_ip.map(|ip| match ip {
                IpAddr::V4(v4) => hash_key(&v4.octets()),
                IpAddr::V6(v6) => hash_key(&v6.octets()),
            }),
            HashKey::Path => Some(hash_key(req.uri.path().as_bytes())),
            HashKey::Header(name) => req
                .headers
                .get(name.as_str())
                .map(|v| hash_key(v.as_bytes())),
            HashKey::Cookie(name) => cookie(req, name).map(|v| hash_key(v.as_bytes())),
            HashKey::Query(name) => {
                crate::sticky::query_param(req.uri.query(), name).map(|v| hash_key(v.as_bytes()))
            }
        }
    }
}

/// The response for a request that got no backend.
pub(super) fn acquire_failure(up: &UpstreamRt, e: AcquireError, ctx: &RequestCtx) -> LocalFailure {
    let name = up.name();
    match e {
        AcquireError::Empty => LocalFailure {
            status: 503,
            reason: "no_backend",
            message: format!("upstream \"{name}\" has no backends: {}", up.empty_reason()),
            retry_after: Some(up.retry_after()),
        },
        AcquireError::AllTried if ctx.last_error_status == 504 => LocalFailure {
            status: 504,
            reason: "upstream_timeout",
            message: format!(
                "upstream \"{name}\" did not answer in time: {}",
                ctx.last_error.as_deref().unwrap_or("timeout")
            ),
            retry_after: None,
        },
        // The last attempt says what happened: no connection at all, or a backend that was
        // reached and failed (a reset in the response head is not "unreachable").
        AcquireError::AllTried => LocalFailure {
            status: 502,
            reason: ctx.last_error_reason,
            message: format!(
                "upstream \"{name}\" {}: {}",
                if ctx.last_error_reason == "upstream_unreachable" {
                    "unreachable"
                } else {
                    "failed"
                },
                ctx.last_error.as_deref().unwrap_or("every backend failed")
            ),
            retry_after: None,
        },
        AcquireError::QueueTimeout => LocalFailure {
            status: 503,
            reason: "queue_timeout",
            message: format!(
                "every backend of upstream \"{name}\" is at its hard limit; waited {}",
                portico_config::units::format_duration(up.cfg.queue_timeout)
            ),
            retry_after: Some(up.retry_after()),
        },
        AcquireError::QueueFull => LocalFailure {
            status: 503,
            reason: "queue_full",
            message: format!(
                "every backend of upstream \"{name}\" is at its hard limit and {} requests are already waiting",
                up.cfg.max_queue
            ),
            retry_after: Some(up.retry_after()),
        },
        AcquireError::InstanceMissing(id) => LocalFailure {
            status: 503,
            reason: "instance_not_found",
            message: format!("instance \"{id}\" is not a backend of upstream \"{name}\" (fly-force-instance-id)"),
            retry_after: None,
        },
        AcquireError::AllUnhealthy(summary) => LocalFailure {
            status: 503,
            reason: "all_unhealthy",
            message: format!("upstream \"{name}\": {summary}"),
            retry_after: Some(up.retry_after()),
        },
        AcquireError::RegionMissing(regions) => LocalFailure {
            status: 503,
            reason: "region_not_found",
            message: format!(
                "upstream \"{name}\" has no backend in region {regions} (fly-force-region); it has {}",
                up.set.load().regions(&up.local_region).join(", ")
            ),
            retry_after: None,
        },
    }
}

/// The response for a replay whose target could not be served.
fn replay_failure(up: &UpstreamRt, e: AcquireError, ctx: &RequestCtx) -> LocalFailure {
    let name = up.name();
    let (status, reason, why) = match e {
        AcquireError::InstanceMissing(id) => (
            503,
            "replay_no_target",
            format!("instance \"{id}\" is not a backend of upstream \"{name}\""),
        ),
        AcquireError::RegionMissing(r) => (
            503,
            "replay_no_target",
            format!(
                "upstream \"{name}\" has no backend in region {r}; it has {}",
                up.set.load().regions(&up.local_region).join(", ")
            ),
        ),
        AcquireError::AllTried => (
            502,
            "replay_unreachable",
            format!(
                "upstream \"{name}\" unreachable: {}",
                ctx.last_error
                    .as_deref()
                    .unwrap_or("every candidate failed")
            ),
        ),
        AcquireError::Empty => (
            503,
            "replay_no_target",
            format!("upstream \"{name}\" has no backends: {}", up.empty_reason()),
        ),
        AcquireError::AllUnhealthy(s) => {
            (503, "replay_no_target", format!("upstream \"{name}\": {s}"))
        }
        AcquireError::QueueTimeout | AcquireError::QueueFull => (
            503,
            "replay_no_target",
            format!("every candidate of upstream \"{name}\" is at its hard limit"),
        ),
    };
    LocalFailure {
        status,
        reason,
        message: format!("replay target has no usable instance: {why}"),
        retry_after: None,
    }
}

impl Portico {
    /// Chooses the backend of one attempt: on success `ctx.lease` holds a slot on it. On
    /// failure `ctx.failure` says what to answer, and the error ends the request.
    pub(crate) async fn pick_backend(
        &self,
        req: &RequestHeader,
        ctx: &mut RequestCtx,
    ) -> pingora_error::Result<()> {
        use crate::replay::{fallback_target, remaining, FailReason};
        use crate::upstream::select::backend_ptr;
        use crate::upstream::Want;

        let snap = ctx.snap.clone();
        let Some(route_idx) = ctx.route else {
            return Err(pingora_error::Error::explain(
                pingora_error::ErrorType::InternalError,
                "no route",
            ));
        };
        let route = &snap.config.routes.routes()[route_idx];
        // A retry: the previous backend failed; leave it and try another.
        if let Some(prev) = ctx.lease.take() {
            ctx.tried.push(backend_ptr(&prev.backend));
            snap.upstreams[ctx.upstream].record_retry();
        }
        if ctx.attempts == 0 {
            self.read_pin(req, ctx);
        }
        let sticky_pin = ctx.sticky_pin.clone();
        // pingora re-sends its retry buffer from the start on every attempt.
        ctx.replay.body.attempt_offset = 0;
        ctx.replay.pending = false;
        loop {
            let up_idx = ctx
                .replay
                .target
                .as_ref()
                .map_or(route.upstream, |t| t.upstream);
            // Borrowed from this request's own snapshot handle: a clone of the upstream's
            // `Arc` is an atomic write to a count every worker thread shares.
            let up = &snap.upstreams[up_idx];
            ctx.upstream = up_idx;
            let deadline_left = ctx.replay.target.as_ref().and_then(remaining);
            let outcome = if deadline_left.is_some_and(|d| d.is_zero()) {
                Err(AcquireError::QueueTimeout)
            } else {
                // A route's sticky key outranks the upstream's hash_on.
                let key = match &route.sticky {
                    Some(portico_config::Sticky::Hash(k)) => Some(k),
                    _ => up.cfg.hash_on.as_ref(),
                };
                let hash = key.and_then(|k| self.affinity_hash(req, ctx, k));
                // The request's own list unless a replay target excludes more (a copy of
                // even an empty SmallVec was about 170 instructions).
                let mut with_excluded: Option<SmallVec<[usize; 4]>> = None;
                let mut want = match &ctx.replay.target {
                    Some(t) => {
                        let mut all = ctx.tried.clone();
                        all.extend(t.exclude.iter().copied());
                        with_excluded = Some(all);
                        t.want()
                    }
                    None => {
                        let writes = match &route.writes {
                            Some(w) => w.as_ref(),
                            None => up.cfg.writes.as_ref(),
                        };
                        match (writes, snap.config.server.primary_region.as_deref()) {
                            (Some(w), Some(primary)) if w.is_write(req.method.as_str()) => Want {
                                regions: std::iter::once(primary).collect(),
                                regions_forced: true,
                                ..Want::default()
                            },
                            // Routing headers are `Fly-*` names, never common ones.
                            _ if snap.config.server.routing_headers && !ctx.names.only_common() => {
                                super::routing_headers::want_from_headers(req)
                            }
                            _ => Want::default(),
                        }
                    }
                };
                if ctx.replay.target.is_none() {
                    want.sticky = sticky_pin.as_deref();
                }
                let tried = with_excluded.as_deref().unwrap_or(&ctx.tried);
                let acquire = up.acquire(hash, tried, &want);
                match deadline_left {
                    Some(left) => tokio::time::timeout(left, acquire)
                        .await
                        .unwrap_or(Err(AcquireError::QueueTimeout)),
                    None => acquire.await,
                }
            };
            ctx.attempts += 1;
            // An instance discovery has not seen yet (a primary that just moved, a machine
            // that just started): look it up now, once per request, within the replay's time.
            if let Err(AcquireError::InstanceMissing(id)) = &outcome {
                if !ctx.instance_refreshed && !up.discovery.is_empty() {
                    ctx.instance_refreshed = true;
                    let dns = &snap.config.dns;
                    let mut wait = dns.timeout.saturating_mul(dns.attempts.max(1) as u32);
                    if let Some(left) = deadline_left {
                        wait = wait.min(left);
                    }
                    tracing::debug!(upstream = up.name(), instance = %id, "unknown instance; asking discovery");
                    if up.refresh.now(wait).await {
                        ctx.attempts -= 1;
                        continue;
                    }
                }
            }
            match outcome {
                Ok(acquired) => {
                    let lease = acquired.lease;
                    ctx.backend_addr = Some(lease.backend.addr);
                    ctx.preferred_unavailable = acquired.preferred_unavailable;
                    ctx.lease = Some(lease);
                    ctx.connect_started = Some(std::time::Instant::now());
                    return Ok(());
                }
                Err(e) => {
                    let Some(target) = ctx.replay.target.clone() else {
                        let failure = acquire_failure(up, e, ctx);
                        return Err(super::respond::fail(ctx, failure));
                    };
                    let reason = match &e {
                        AcquireError::AllTried => FailReason::RetriesExhausted,
                        AcquireError::QueueTimeout if target.deadline.is_some() => {
                            FailReason::Timeout
                        }
                        _ => FailReason::NoCandidate,
                    };
                    if let Some(fb) = fallback_target(&target, reason) {
                        tracing::info!(
                            request_id = ctx.id(),
                            reason = reason.as_str(),
                            "replay target unavailable; falling back to the issuing instance"
                        );
                        ctx.replay.target = Some(fb);
                        ctx.replay.by_fallback = true;
                        ctx.tried.clear();
                        self.count_replay(ctx, "fallback");
                        continue;
                    }
                    let failure = replay_failure(up, e, ctx);
                    self.count_replay(ctx, failure.reason);
                    return Err(super::respond::fail(ctx, failure));
                }
            }
        }
    }
}

//! fly-replay: an upstream answers `fly-replay: region=…` (or a
//! `application/vnd.fly.replay+json` body) and Portico sends the original request, body
//! included, to the named target instead; the client only sees the target's answer.
//!
//! How a replay travels through pingora:
//! - The instruction is read in `upstream_response_filter` (header form) or, for the JSON form,
//!   in `upstream_response_body_filter` once the body is in (meanwhile the response head is
//!   turned into a `100 Continue`, which clients ignore and HTTP/2 never sends, so nothing of
//!   the replay response reaches the client).
//! - The filter fails the attempt with a retryable error and records the target here;
//!   pingora's retry loop calls `upstream_peer` again, which selects from the target.
//! - pingora re-sends the request body from its retry buffer, which holds 64 KiB. Larger
//!   bodies (up to `[replay] max_body`) are kept by Portico ([`BodyCopy`]) and replayed
//!   through a pingora subrequest fed with the copy (`proxy::subrequest`).
//!
//! Limits: at most [`MAX_HOPS`] replays per request (the next is a 508), a body over
//! `max_body` cannot be replayed (413), a malformed instruction is a 502, a target with no
//! usable instance a 503 (unless a `fallback` sends the request back to the issuer).

pub mod cache;
pub mod handback;
pub mod instruction;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use smallvec::SmallVec;

use crate::upstream::{BackendRt, Want};
pub use instruction::{FailReason, Fallback, Instruction, Transform};

/// Replays one request may take (Fly's limit).
pub const MAX_HOPS: u8 = 10;

/// Largest JSON replay instruction read.
pub const MAX_JSON: usize = 64 * 1024;

/// The content type of the JSON form.
pub const JSON_CONTENT_TYPE: &str = "application/vnd.fly.replay+json";

/// The instance that issued a replay, for `fly-replay-src` and fallbacks.
#[derive(Debug, Clone)]
pub struct Issuer {
    /// Its backend.
    pub backend: Arc<BackendRt>,
    /// Index of its upstream in the snapshot.
    pub upstream: usize,
    /// Name of its upstream (the "app" in `fly-replay-failed`).
    pub upstream_name: String,
}

/// Where the current attempt of a replayed request goes.
#[derive(Debug, Clone)]
pub struct Target {
    /// Upstream index in the snapshot.
    pub upstream: usize,
    /// Regions in order.
    pub regions: Vec<String>,
    /// Only those regions.
    pub regions_forced: bool,
    /// Instance (id, or backend key) to aim for.
    pub instance: Option<String>,
    /// Only that instance.
    pub instance_forced: bool,
    /// Backends excluded (`elsewhere`), by pointer.
    pub exclude: SmallVec<[usize; 2]>,
    /// `fly-replay-src` value (absent when routed by the cache or write routing).
    pub src: Option<String>,
    /// `fly-replay-failed` value, after a fallback.
    pub failed: Option<String>,
    /// `fly-replay-cache-status` value.
    pub cache_status: Option<&'static str>,
    /// Rewrites of the JSON form.
    pub transform: Option<Transform>,
    /// Give up (or fall back) after this.
    pub deadline: Option<Instant>,
    /// What to do when the target cannot be reached, and who issued the replay.
    pub fallback: Option<(Fallback, Issuer)>,
    /// When the replay started.
    pub started: Instant,
}

impl Target {
    /// The selection constraint of this target.
    pub fn want(&self) -> Want<'_> {
        Want {
            regions: self.regions.iter().map(String::as_str).collect(),
            regions_forced: self.regions_forced,
            instance: self.instance.as_deref(),
            instance_forced: self.instance_forced,
            sticky: None,
        }
    }
}

/// Portico's copy of the request body, for replays larger than pingora's retry buffer.
#[derive(Debug, Default)]
pub struct BodyCopy {
    /// The chunks (reference-counted: no bytes are copied).
    pub chunks: Vec<Bytes>,
    /// Bytes seen from the client so far.
    pub len: u64,
    /// The body went over `max_body`: the chunks were dropped and it cannot be replayed.
    pub overflow: bool,
    /// Bytes seen in the current attempt (pingora re-feeds its retry buffer on retries).
    pub attempt_offset: u64,
}

impl BodyCopy {
    /// Records a chunk passing through the request body filter. Returns the bytes that are
    /// new from the client (not a re-send of earlier bytes), for body-size accounting.
    pub fn observe(&mut self, chunk: &Bytes, max: u64, keep: bool) -> u64 {
        let start = self.attempt_offset;
        let end = start + chunk.len() as u64;
        self.attempt_offset = end;
        if end <= self.len {
            return 0;
        }
        let skip = usize::try_from(self.len.saturating_sub(start)).unwrap_or(usize::MAX);
        let fresh = chunk.slice(skip.min(chunk.len())..);
        let n = fresh.len() as u64;
        self.len += n;
        if keep && !self.overflow {
            if self.len > max {
                self.overflow = true;
                self.chunks = Vec::new();
            } else if !fresh.is_empty() {
                self.chunks.push(fresh);
            }
        }
        n
    }

    /// Bytes held.
    pub fn held(&self) -> u64 {
        if self.overflow {
            0
        } else {
            self.len
        }
    }
}

/// The replay state of one request.
#[derive(Debug, Default)]
pub struct ReplayState {
    /// Replays taken so far.
    pub hops: u8,
    /// Where the current attempt goes; `None` for a request not (yet) replayed.
    pub target: Option<Target>,
    /// The JSON form's body, while it is being read.
    pub json: Option<Vec<u8>>,
    /// The request body copy.
    pub body: BodyCopy,
    /// A replay was decided and pingora should retry (set until the retry happens).
    pub pending: bool,
    /// The replay needs the large-body path (pingora's retry buffer overflowed).
    pub needs_large: bool,
    /// The current target was reached through a fallback: it may not replay again.
    pub by_fallback: bool,
    /// The cache entry that routed this request, if any.
    pub cache_key: Option<cache::CacheKey>,
    /// The first instance that asked for a replay (for the access log).
    pub first_from: Option<String>,
    /// How the current replay was triggered (`header`, `json`, `cache`), for metrics.
    pub kind: &'static str,
    /// The client skipped a cache entry that allowed it (`fly-replay-cache-control: skip`).
    pub cache_bypass: bool,
    /// In a large-body replay subrequest: where a further replay is handed back.
    pub handback: Option<handback::Handback>,
    /// This subrequest handed a further replay back: it ends without answering.
    pub handed_back: bool,
}

/// Microseconds since the Unix epoch (the `t` of `fly-replay-src`).
pub fn now_us() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros())
}

/// How an instance is named in replay headers: its instance id, else its address.
pub fn instance_name(b: &BackendRt) -> String {
    b.id.as_deref()
        .map(str::to_string)
        .unwrap_or_else(|| b.key.to_string())
}

/// Builds the target of an instruction. `app` must already be resolved to `upstream`.
#[allow(clippy::too_many_arguments)]
pub fn target_for(
    inst: &Instruction,
    upstream: usize,
    issuer: Option<Issuer>,
    local_region: &str,
    now: Instant,
) -> Target {
    let mut exclude = SmallVec::new();
    let mut src = None;
    if let Some(i) = &issuer {
        if inst.elsewhere {
            exclude.push(Arc::as_ptr(&i.backend) as usize);
        }
        let region = i.backend.region.as_deref().unwrap_or(local_region);
        src = Some(instruction::replay_src(
            &instance_name(&i.backend),
            region,
            now_us(),
            inst.state.as_deref(),
        ));
    }
    let (instance, instance_forced) = match (&inst.instance, &inst.prefer_instance) {
        (Some(i), _) => (Some(i.clone()), true),
        (None, Some(p)) => (Some(p.clone()), false),
        (None, None) => (None, false),
    };
    Target {
        upstream,
        regions: inst.regions.clone(),
        regions_forced: !inst.regions.is_empty() && !inst.any_region,
        instance,
        instance_forced,
        exclude,
        src,
        failed: None,
        cache_status: None,
        transform: inst.transform.clone(),
        deadline: inst.timeout.map(|t| now + t),
        fallback: inst.fallback.zip(issuer),
        started: now,
    }
}

/// The fallback target after the replay target could not be reached.
pub fn fallback_target(t: &Target, reason: FailReason) -> Option<Target> {
    let (mode, issuer) = t.fallback.clone()?;
    let failed = instruction::replay_failed(
        Some(&instance_name(&issuer.backend)),
        &issuer.upstream_name,
        issuer.backend.region.as_deref(),
        reason,
        t.started.elapsed(),
    );
    Some(Target {
        upstream: issuer.upstream,
        regions: Vec::new(),
        regions_forced: false,
        instance: Some(instance_name(&issuer.backend)),
        instance_forced: mode == Fallback::ForceSelf,
        exclude: SmallVec::new(),
        src: None,
        failed: Some(failed),
        cache_status: None,
        transform: None,
        deadline: None,
        fallback: None,
        started: t.started,
    })
}

/// Remaining time before a target's deadline (`None`: no deadline).
pub fn remaining(t: &Target) -> Option<Duration> {
    t.deadline
        .map(|d| d.saturating_duration_since(Instant::now()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_copy_dedupes_retry_resends() {
        let mut c = BodyCopy::default();
        assert_eq!(c.observe(&Bytes::from_static(b"hello"), 100, true), 5);
        assert_eq!(c.observe(&Bytes::from_static(b" world"), 100, true), 6);
        // A retry re-sends the first bytes, then the client sends more.
        c.attempt_offset = 0;
        assert_eq!(c.observe(&Bytes::from_static(b"hello wo"), 100, true), 0);
        assert_eq!(c.observe(&Bytes::from_static(b"rld!!"), 100, true), 2);
        let all: Vec<u8> = c.chunks.iter().flat_map(|b| b.to_vec()).collect();
        assert_eq!(all, b"hello world!!");
        assert_eq!(c.len, 13);
    }

    #[test]
    fn body_copy_overflow_drops_the_copy() {
        let mut c = BodyCopy::default();
        c.observe(&Bytes::from_static(b"12345"), 8, true);
        c.observe(&Bytes::from_static(b"6789"), 8, true);
        assert!(c.overflow);
        assert!(c.chunks.is_empty());
        assert_eq!(c.held(), 0);
        assert_eq!(c.len, 9);
    }
}

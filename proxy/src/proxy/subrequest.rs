//! Requests sent from Portico's copy of their body: replays of bodies larger than pingora's
//! 64 KiB retry buffer, and requests of `buffer_requests` routes (read in full before any
//! upstream sees them). The request runs as a pingora subrequest fed with the copy, and its
//! response is piped to the client. The subrequest goes through Portico's own `ProxyHttp`
//! filters with the routing state carried over; when its upstream asks for a replay, it hands
//! the new target back and the spawning request runs the next hop, so every hop goes out from
//! the one request that holds the body and answers the client.

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderValue;
use pingora_proxy::subrequest::pipe::{pipe_subrequest, InputBody, InputBodyType};
use pingora_proxy::subrequest::{BodyMode, Ctx as SubCtx};
use pingora_proxy::Session;

use super::ctx::{LocalFailure, RequestCtx};
use crate::replay::cache::CacheKey;
use crate::replay::handback::Handback;
use crate::replay::Target;

/// What a subrequest takes over from the request it replays.
#[derive(Clone)]
pub struct Carried {
    /// The configuration generation of the original request.
    pub snap: crate::state::SnapRef,
    /// Matched route.
    pub route: usize,
    /// Request id.
    pub request_id: Option<HeaderValue>,
    /// Client address.
    pub client_ip: Option<IpAddr>,
    /// Peer address.
    pub peer_ip: Option<IpAddr>,
    /// Whether the peer is a trusted proxy.
    pub peer_trusted: bool,
    /// Replays taken.
    pub hops: u8,
    /// Where this attempt goes (`None`: the route's upstream, balanced as usual).
    pub target: Option<Target>,
    /// The target came from a fallback.
    pub by_fallback: bool,
    /// First instance that asked for a replay.
    pub first_from: Option<String>,
    /// Cache entry that routed the request.
    pub cache_key: Option<CacheKey>,
    /// Trigger of the replay.
    pub kind: &'static str,
    /// Where the subrequest hands a further replay back.
    pub handback: Handback,
}

/// The carried state, when `session` is a replay subrequest.
pub fn carried(session: &Session) -> Option<Carried> {
    session
        .subrequest_ctx
        .as_ref()?
        .user_ctx()?
        .downcast_ref::<Carried>()
        .cloned()
}

/// Reads the rest of the request body into Portico's copy, up to `max` bytes.
pub async fn read_rest(
    session: &mut Session,
    ctx: &mut RequestCtx,
    max: u64,
) -> Result<(), ReadRest> {
    while !session.is_body_done() {
        match session.downstream_session.read_request_body().await {
            Ok(Some(chunk)) => {
                ctx.replay.body.attempt_offset = ctx.replay.body.len;
                ctx.replay.body.observe(&chunk, max, true);
                if ctx.replay.body.overflow {
                    return Err(ReadRest::TooLarge);
                }
            }
            Ok(None) => break,
            Err(e) => return Err(ReadRest::Failed(e.to_string())),
        }
    }
    if ctx.replay.body.overflow {
        return Err(ReadRest::TooLarge);
    }
    Ok(())
}

/// Why the rest of a body could not be held.
#[derive(Debug)]
pub enum ReadRest {
    /// It is larger than allowed.
    TooLarge,
    /// Reading it failed (the client went away, timed out, or sent a malformed body).
    Failed(String),
}

/// Replays the request through a subrequest. On success the response was written to the
/// client and its status is returned.
pub async fn run(session: &mut Session, ctx: &mut RequestCtx) -> Result<u16, LocalFailure> {
    let max = ctx.snap.config.replay.max_body;
    // The client may still be sending: read the rest into the copy (bounded by max_body).
    match read_rest(session, ctx, max).await {
        Ok(()) => {}
        Err(ReadRest::TooLarge) => return Err(super_too_large(max)),
        Err(ReadRest::Failed(e)) => {
            return Err(LocalFailure::new(
                400,
                "client_gone",
                format!("reading the rest of the request body for the replay failed: {e}"),
            ))
        }
    }
    run_held(session, ctx).await
}

/// Sends the request with the body held in `ctx.replay.body`, hop after hop, and pipes the
/// final answer to the client. Returns its status.
pub async fn run_held(session: &mut Session, ctx: &mut RequestCtx) -> Result<u16, LocalFailure> {
    // Each hop runs as one subrequest from here; a subrequest whose upstream asks for another
    // replay hands the new target back instead of spawning a subrequest of its own.
    loop {
        let handback: Handback = Arc::default();
        let outcome = hop(session, ctx, &handback).await;
        let next = handback.lock().unwrap_or_else(|e| e.into_inner()).take();
        match next {
            Some(n) => {
                ctx.replay.target = Some(n.target);
                ctx.replay.hops = n.hops;
                ctx.replay.by_fallback = n.by_fallback;
                ctx.replay.first_from = n.first_from;
                ctx.replay.cache_key = n.cache_key;
                ctx.replay.kind = n.kind;
                if session
                    .response_written()
                    .is_some_and(|r| !r.status.is_informational())
                {
                    // Cannot happen (a hop that hands back writes nothing); never answer twice.
                    return outcome;
                }
            }
            None => return outcome,
        }
    }
}

/// Runs one hop of a large-body replay as a subrequest.
async fn hop(
    session: &mut Session,
    ctx: &mut RequestCtx,
    handback: &Handback,
) -> Result<u16, LocalFailure> {
    let (target, Some(route)) = (ctx.replay.target.clone(), ctx.route) else {
        return Err(LocalFailure::new(
            500,
            "internal",
            "held request without a route".into(),
        ));
    };
    if session.subrequest_spawner.is_none() {
        return Err(LocalFailure::new(
            500,
            "internal",
            "subrequests are not available".into(),
        ));
    }
    let carried = Carried {
        snap: ctx.snap.clone(),
        route,
        request_id: ctx.request_id.clone(),
        client_ip: ctx.client_ip,
        peer_ip: ctx.peer_ip,
        peer_trusted: ctx.peer_trusted,
        hops: ctx.replay.hops,
        target,
        by_fallback: ctx.replay.by_fallback,
        first_from: ctx.replay.first_from.clone(),
        cache_key: ctx.replay.cache_key.clone(),
        kind: ctx.replay.kind,
        handback: handback.clone(),
    };
    let sub_ctx = SubCtx::builder()
        .user_ctx(Box::new(carried))
        .body_mode(BodyMode::ExpectBody)
        .build();
    // pingora builds the subrequest by re-parsing the request head as HTTP/1.1 text, which an
    // HTTP/2 head (version "HTTP/2", no Host) does not survive: present it as HTTP/1.1 while
    // the subrequest is created, then put the original back.
    // pingora builds the subrequest by re-parsing the request head as HTTP/1.1 text: the
    // client's own bytes for HTTP/1.1 (its framing fits the held body: a length, or chunked,
    // which pingora re-chunks), a rendering of the header for HTTP/2, which does not survive
    // as is (version "HTTP/2", no Host, no framing). Present an HTTP/2 head as HTTP/1.1 with
    // the held length while the subrequest is created, then put the original back.
    let original = session.is_http2().then(|| session.req_header().clone());
    if original.is_some() {
        let body_len = ctx.replay.body.len;
        let req = session.req_header_mut();
        req.set_version(http::Version::HTTP_11);
        if req.headers.get(http::header::HOST).is_none() {
            if let Some(a) = req.uri.authority().map(|a| a.as_str().to_string()) {
                let _ = req.insert_header(http::header::HOST, a);
            }
        }
        req.remove_header(&http::header::TRANSFER_ENCODING);
        let _ = req.insert_header(http::header::CONTENT_LENGTH, body_len.to_string());
        if let Some(pq) = req.uri.path_and_query().cloned() {
            req.set_uri(http::Uri::from(pq));
        }
    }
    let Some(spawner) = session.subrequest_spawner.as_ref() else {
        return Err(LocalFailure::new(
            500,
            "internal",
            "subrequests are not available".into(),
        ));
    };
    let (prepared, handle) = spawner.create_subrequest(session.as_downstream(), sub_ctx);
    if let Some(h) = original {
        *session.req_header_mut() = h;
    }
    // Bytes are reference-counted: every hop gets the whole body without copying it.
    let body = InputBody::Bytes(ctx.replay.body.chunks.clone());
    match pipe_subrequest(
        session,
        prepared,
        handle,
        |t| Ok(Some(t)),
        InputBodyType::Preset(body),
    )
    .await
    {
        Ok(mut state) => {
            // Let the subrequest finish its own bookkeeping without holding this request.
            if let (Some(mut rx), Some(join)) = (state.pipe_rx.take(), state.join_handle.take()) {
                tokio::spawn(async move {
                    let drain = async { while rx.recv().await.is_some() {} };
                    let _ = tokio::join!(drain, join);
                });
            }
            match session.response_written() {
                Some(r) if !r.status.is_informational() => Ok(r.status.as_u16()),
                _ => Err(LocalFailure::new(
                    502,
                    "replay_failed",
                    "the replayed request produced no response".into(),
                )),
            }
        }
        Err(e) => {
            if let Some(r) = session
                .response_written()
                .filter(|r| !r.status.is_informational())
            {
                return Ok(r.status.as_u16());
            }
            Err(LocalFailure::new(
                502,
                "replay_failed",
                format!("the replayed request failed: {}", e.error),
            ))
        }
    }
}

/// The failure for a body too large to replay.
pub fn super_too_large(max: u64) -> LocalFailure {
    LocalFailure::new(
        413,
        "replay_body_too_large",
        format!(
            "the upstream asked for a replay, but the request body is larger than the {max} bytes that can be replayed ([replay] max_body)"
        ),
    )
}

impl super::Portico {
    /// `buffer_requests`: reads the whole body first (413 past the limit, with nothing sent
    /// upstream), then sends the request from the copy. Always answers the client.
    pub(super) async fn send_buffered(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> pingora_error::Result<bool> {
        let limit = ctx.route().map_or(0, |r| r.buffer_limit());
        let held = read_rest(session, ctx, limit).await;
        let delta = ctx.replay.body.held() as i64;
        self.shared.metrics.replay.replay_buffered_bytes.add(delta);
        ctx.body_bytes = ctx.replay.body.len;
        let outcome = match held {
            Ok(()) => run_held(session, ctx).await,
            Err(ReadRest::TooLarge) => Err(super::classify::too_large(limit)),
            Err(ReadRest::Failed(e)) => Err(LocalFailure::new(0, "client_gone", e)),
        };
        if let Err(failure) = outcome {
            if failure.status > 0 {
                self.shared
                    .metrics
                    .http
                    .rejected
                    .with_label_values(&[failure.reason])
                    .inc();
                session.set_keepalive(None);
                if session.response_written().is_none() {
                    super::respond::send_failure(session, ctx, &failure).await?;
                }
            }
            ctx.failure = Some(failure);
        }
        Ok(true)
    }
}

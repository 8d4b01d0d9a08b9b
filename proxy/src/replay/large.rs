//! Replays of bodies larger than pingora's 64 KiB retry buffer: the request is run again as a
//! pingora subrequest, fed with Portico's copy of the body, and its response is piped to the
//! client. The subrequest goes through Portico's own `ProxyHttp` filters with the replay
//! target carried over, so its answer may itself be replayed.

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderValue;
use pingora_proxy::subrequest::pipe::{pipe_subrequest, InputBody, InputBodyType};
use pingora_proxy::subrequest::{BodyMode, Ctx as SubCtx};
use pingora_proxy::Session;

use super::cache::CacheKey;
use super::Target;
use crate::proxy::ctx::{LocalFailure, RequestCtx};
use crate::state::Snapshot;

/// What a subrequest takes over from the request it replays.
#[derive(Clone)]
pub struct Carried {
    /// The configuration generation of the original request.
    pub snap: Arc<Snapshot>,
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
    /// Where this attempt goes.
    pub target: Target,
    /// The target came from a fallback.
    pub by_fallback: bool,
    /// First instance that asked for a replay.
    pub first_from: Option<String>,
    /// Cache entry that routed the request.
    pub cache_key: Option<CacheKey>,
    /// Trigger of the replay.
    pub kind: &'static str,
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

/// Replays the request through a subrequest. On success the response was written to the
/// client and its status is returned.
pub async fn run(session: &mut Session, ctx: &mut RequestCtx) -> Result<u16, LocalFailure> {
    let max = ctx.snap.config.replay.max_body;
    // The client may still be sending: read the rest into the copy (bounded by max_body).
    while !session.is_body_done() {
        match session.downstream_session.read_request_body().await {
            Ok(Some(chunk)) => {
                ctx.replay.body.attempt_offset = ctx.replay.body.len;
                ctx.replay.body.observe(&chunk, max, true);
                if ctx.replay.body.overflow {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                return Err(LocalFailure::new(
                    400,
                    "client_gone",
                    format!("reading the rest of the request body for the replay failed: {e}"),
                ))
            }
        }
    }
    if ctx.replay.body.overflow {
        return Err(super_too_large(max));
    }
    let (Some(target), Some(route)) = (ctx.replay.target.clone(), ctx.route) else {
        return Err(LocalFailure::new(
            500,
            "internal",
            "replay without a target".into(),
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
    };
    let sub_ctx = SubCtx::builder()
        .user_ctx(Box::new(carried))
        .body_mode(BodyMode::ExpectBody)
        .build();
    // pingora builds the subrequest by re-parsing the request head as HTTP/1.1 text, which an
    // HTTP/2 head (version "HTTP/2", no Host) does not survive: present it as HTTP/1.1 while
    // the subrequest is created, then put the original back.
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
    let body = InputBody::Bytes(std::mem::take(&mut ctx.replay.body.chunks));
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

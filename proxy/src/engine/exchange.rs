//! One HTTP/1.1 request from its head to its access-log line: the request path's decisions,
//! then attempts on backends (connect or reuse, send, read the answer) with retries and
//! fly-replay hops, then the answer to the client, and the decision to keep the connection.
//!
//! A request body is streamed to the first backend as it arrives, while a copy is kept for
//! replays and retries (bounded by `[replay] max_body`); `buffer_requests` routes read it
//! whole first. An answer the backend sends before the body is complete stops the upload.
//! The response head and the first body bytes go to the client in one write.

mod answer;
mod attempt;
mod body;
mod relay;
mod write;

use bytes::{BufMut, Bytes};
use pingora_http::RequestHeader;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::codec::{self};
use super::tunnel::{End, Handoff};
use super::{Client, ClientIo};
use crate::metrics::status_class;
use crate::proxy::ctx::{InFlight, LocalFailure, RequestCtx};
use crate::proxy::{access, respond, websocket, Portico};
use crate::wsclose::Frames;

use body::*;
use relay::*;
use write::*;

/// For the fuzz targets: the client's response head, its kept lines copied.
pub(crate) use write::write_client_head;

/// What the connection does after a request.
pub enum After {
    /// Read the next request.
    KeepAlive,
    /// Close it (the answer said `Connection: close`).
    Close,
    /// It is gone or unusable: drop it.
    Gone,
    /// The backend switched protocols: the connection becomes a tunnel.
    Tunnel(Box<super::tunnel::Handoff>),
}

/// Longest response head accepted from a backend.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Response bodies of replay answers up to this size are read so the connection can be
/// reused; larger ones close it.
const DRAIN_LIMIT: u64 = 64 * 1024;

/// How an attempt on a backend ended, when it did not produce an answer to forward.
#[derive(Debug)]
enum AttemptError {
    /// Nothing reached the backend (connect failed): any request may go elsewhere.
    Connect(String),
    /// The backend failed after the request may have reached it.
    Failed { message: String, timeout: bool },
    /// The client's body failed (went away, too slow, malformed, over `max_body`): the
    /// answer to give, if any.
    Client(LocalFailure),
    /// The backend's answer is malformed.
    BadResponse(String),
}

/// Serves one request whose head is at the start of `client.rbuf`.
pub async fn handle<S: ClientIo>(app: &Portico, client: &mut Client<S>, last: bool) -> After {
    let max_target = codec::MAX_TARGET;
    // The head's values become slices of what was read (no copies); what follows the head
    // (a body's first bytes, a pipelined request: usually nothing) is copied back into the
    // read buffer, which reuses its space once this request's slices are gone.
    let read = client.rbuf.split().freeze();
    let parsed = codec::parse_request_shared(&read, max_target);
    let head_len = parsed.as_ref().map_or(0, |p| p.head_len);
    client.rbuf.extend_from_slice(&read[head_len..]);
    let parsed = match parsed {
        Ok(p) => p,
        Err(r) => {
            let reason = match r.status {
                431 => "header_too_large",
                414 => "uri_too_long",
                _ => "bad_request",
            };
            app.shared
                .metrics
                .http
                .rejected
                .with_label_values(&[reason])
                .inc();
            tracing::debug!(status = r.status, reason = %r.reason, "malformed request");
            let ctx = RequestCtx::new(&app.shared);
            let _ = write_local(client, &ctx, r.status, &r.reason, &[], true, false).await;
            return After::Close;
        }
    };
    let parsed_names = parsed.names;
    let mut ex = Exchange {
        app,
        ctx: RequestCtx::new(&app.shared),
        body: ClientBody::new(parsed.body),
        head: parsed.head,
        client_keep_alive: parsed.keep_alive && !last && !app.shared.is_draining(),
        upgrade: parsed.upgrade,
        expect_continue: parsed.expect_continue,
        status: 0,
        bytes_sent: 0,
        answered: false,
        body_sent_all: true,
        give_back: false,
        switched: None,
    };
    ex.ctx.conn = client.info.clone();
    ex.ctx.names = parsed_names;
    let after = ex.run(client).await;
    match ex.switched.take() {
        Some((up, frames)) => match ex.hand_off(up, frames) {
            Some(h) => After::Tunnel(Box::new(h)),
            None => After::Gone,
        },
        None => {
            ex.finish();
            codec::recycle_fields(http::request::Parts::from(ex.head).headers);
            after
        }
    }
}

/// The state of one request.
struct Exchange<'a> {
    app: &'a Portico,
    ctx: RequestCtx,
    head: RequestHeader,
    body: ClientBody,
    client_keep_alive: bool,
    upgrade: bool,
    expect_continue: bool,
    /// Status written to the client (0: none yet).
    status: u16,
    /// Body bytes written to the client.
    bytes_sent: u64,
    /// A final response head reached the client.
    answered: bool,
    /// The whole client body reached the backend that answered.
    body_sent_all: bool,
    /// The connection of a replay answer can go back to the pool.
    give_back: bool,
    /// The backend connection of an upgrade it accepted, with the client's frame position.
    switched: Option<(super::upstream::UpIo, Frames)>,
}

impl Exchange<'_> {
    async fn run<S: ClientIo>(&mut self, client: &mut Client<S>) -> After {
        let app = self.app;
        // The request path's decisions, as for every engine.
        let failure = match app.classify_request(&self.head, &mut self.ctx) {
            Some(f) => Some(f),
            None => websocket::admit(&app.shared, self.upgrade, &mut self.ctx),
        };
        if let Some(f) = failure {
            return self.answer_failure(client, f).await;
        }
        self.ctx.upstream = self.ctx.route().map_or(0, |r| r.upstream);
        let snap = self.ctx.snap.clone();
        let Some(route) = self.ctx.route.map(|i| &snap.config.routes.routes()[i]) else {
            return After::Gone;
        };
        if let Some(files) = &route.static_files {
            match crate::proxy::files::serve(&app.shared.files, &self.head, &self.ctx, route, files)
                .await
            {
                Ok(crate::proxy::files::Outcome::Reply(reply)) => {
                    return self.write_static(client, *reply).await
                }
                Ok(crate::proxy::files::Outcome::Proxy) => {}
                Err(e) => {
                    let f = LocalFailure::new(500, "internal", format!("static file: {e}"));
                    return self.answer_failure(client, f).await;
                }
            }
        }
        app.route_by_cache(&self.head, &mut self.ctx);
        // The client waits for `100 Continue` before sending its body: Portico accepted the
        // request, so it says so itself (the backend is not asked; nginx does the same).
        if self.expect_continue && !self.body.done {
            client.wbuf.put_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
            if client.flush_wbuf().await.is_err() {
                return After::Gone;
            }
        }
        if route.buffer_requests && !self.body.done && !self.upgrade {
            let limit = route.buffer_limit();
            if let Err(f) = self.hold_rest(client, limit).await {
                return self.answer_failure(client, f).await;
            }
        }
        self.proxy(client).await
    }

    /// Reads the rest of the client body into the copy (for a buffered route or a replay).
    async fn hold_rest<S: ClientIo>(
        &mut self,
        client: &mut Client<S>,
        limit: u64,
    ) -> Result<(), LocalFailure> {
        while let Some(chunk) = self.next_body(client).await? {
            self.keep_copy(&chunk, limit);
            if self.ctx.replay.body.overflow || self.body.data > limit {
                return Err(crate::proxy::classify::too_large(limit));
            }
        }
        Ok(())
    }

    /// Reads the next body piece, turning client failures into the answer they deserve.
    async fn next_body<S: ClientIo>(
        &mut self,
        client: &mut Client<S>,
    ) -> Result<Option<Bytes>, LocalFailure> {
        let chunk = self.body.next(client).await.map_err(body_failure)?;
        self.ctx.body_bytes = self.body.data;
        if let Some(max) = self.ctx.route().and_then(|r| r.max_body) {
            if self.body.data > max {
                self.app
                    .shared
                    .metrics
                    .http
                    .rejected
                    .with_label_values(&["body_too_large"])
                    .inc();
                return Err(crate::proxy::classify::too_large(max));
            }
        }
        Ok(chunk)
    }

    /// Keeps a copy of a body piece for replays and retries (bounded).
    fn keep_copy(&mut self, chunk: &Bytes, limit: u64) {
        let copy = &mut self.ctx.replay.body;
        copy.attempt_offset = copy.len;
        let before = copy.held();
        copy.observe(chunk, limit, true);
        let delta = copy.held() as i64 - before as i64;
        if delta != 0 {
            self.app
                .shared
                .metrics
                .replay
                .replay_buffered_bytes
                .add(delta);
        }
    }

    /// Tries backends until one answers (retries, replays), then forwards the answer.
    async fn proxy<S: ClientIo>(&mut self, client: &mut Client<S>) -> After {
        let app = self.app;
        loop {
            if let Err(e) = app.pick_backend(&self.head, &mut self.ctx).await {
                let f = self.ctx.failure.take().unwrap_or_else(|| {
                    LocalFailure::new(502, "upstream_error", format!("no backend: {e}"))
                });
                return self.answer_failure(client, f).await;
            }
            let outcome = self.attempt(client).await;
            match outcome {
                Ok(Some(after)) => return after,
                // A replay: the next attempt goes where the backend said.
                Ok(None) => continue,
                Err(e) => {
                    if let Some(f) = self.after_error(e) {
                        return self.answer_failure(client, f).await;
                    }
                }
            }
        }
    }

    /// What a failed attempt leads to: `None` to try again, else the answer.
    fn after_error(&mut self, e: AttemptError) -> Option<LocalFailure> {
        let replayable = self.body_replayable();
        let idempotent = self.head.method.is_idempotent();
        let nothing_read = self.body.data == 0;
        let answered = self.answered;
        let ctx = &mut self.ctx;
        let up = ctx.snap.upstreams[ctx.upstream].clone();
        let retries = up.cfg.retries;
        let addr = ctx.backend_addr.map(|a| a.to_string()).unwrap_or_default();
        match e {
            AttemptError::Client(f) => Some(f),
            AttemptError::BadResponse(why) => {
                ctx.last_error_reason = "upstream_error";
                ctx.last_error = Some(format!("backend {addr}: {why}"));
                Some(LocalFailure::new(
                    502,
                    "upstream_error",
                    format!("upstream \"{}\" failed: backend {addr}: {why}", up.name()),
                ))
            }
            AttemptError::Connect(why) => {
                if let Some(lease) = &ctx.lease {
                    up.record_connect_error(&lease.backend);
                    let has_checks = !up.cfg.checks.is_empty();
                    if let Some(t) = lease
                        .backend
                        .health
                        .record_connect_failure(&up.cfg.passive, has_checks)
                    {
                        crate::health::report(&self.app.shared, up.name(), &lease.backend, &t);
                    }
                }
                ctx.last_error_status = 502;
                ctx.last_error_reason = "upstream_unreachable";
                ctx.last_error = Some(format!("connecting to {addr} failed: {why}"));
                tracing::debug!(request_id = ctx.id(), upstream = up.name(), backend = %addr, error = %why, "connect to backend failed");
                // Nothing reached the backend: any method may go elsewhere, if the body can
                // be sent again.
                if (ctx.attempts as usize) <= retries && (nothing_read || replayable) {
                    return None;
                }
                let (status, reason, kind) = (502, "upstream_unreachable", "unreachable");
                Some(LocalFailure::new(
                    status,
                    reason,
                    format!(
                        "upstream \"{}\" {kind}: {}",
                        up.name(),
                        ctx.last_error.as_deref().unwrap_or("")
                    ),
                ))
            }
            AttemptError::Failed { message, timeout } => {
                ctx.last_error = Some(format!("backend {addr}: {message}"));
                ctx.last_error_status = if timeout { 504 } else { 502 };
                ctx.last_error_reason = if timeout {
                    "upstream_timeout"
                } else {
                    "upstream_error"
                };
                // The request may have reached the backend: only idempotent requests go
                // again, before anything reached the client, within the retry budget, and not
                // after a timeout (a retry storm in the making).
                let retry = !timeout
                    && idempotent
                    && !answered
                    && replayable
                    && (ctx.attempts as usize) <= retries;
                if retry {
                    return None;
                }
                let detail = ctx.last_error.clone().unwrap_or_default();
                Some(if timeout {
                    LocalFailure::new(
                        504,
                        "upstream_timeout",
                        format!(
                            "upstream \"{}\" did not answer in time: {detail}",
                            up.name()
                        ),
                    )
                } else {
                    LocalFailure::new(
                        502,
                        "upstream_error",
                        format!("upstream \"{}\" failed: {detail}", up.name()),
                    )
                })
            }
        }
    }

    /// Whether the body can be sent again: all of it was read and the copy holds it.
    fn body_replayable(&self) -> bool {
        self.body.done && !self.ctx.replay.body.overflow
    }

    /// After an early answer with the body still arriving: read and discard it for a bounded
    /// time, so the client reads the answer instead of a reset (nginx's lingering close).
    async fn linger<S: ClientIo>(&mut self, client: &mut Client<S>) {
        if self.body.done {
            return;
        }
        let _ = client.io.flush().await;
        let deadline = tokio::time::Instant::now() + respond::LINGER_TIME;
        loop {
            client.rbuf.clear();
            client.rbuf.reserve(16 * 1024);
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let read = client.io.read_buf(&mut client.rbuf);
            match tokio::time::timeout(left.min(respond::LINGER_READ), read).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => break,
            }
        }
        client.rbuf.clear();
    }

    /// The backend switched protocols: what the tunnel keeps of this request. The rest (the
    /// head, the context, the snapshot it holds) is dropped with the exchange.
    fn hand_off(&mut self, up: super::upstream::UpIo, frames: Frames) -> Option<Handoff> {
        let ctx = &mut self.ctx;
        let ws = ctx.ws.take()?;
        let route = ctx.route?;
        let metrics = &ctx.snap.route_metrics[route];
        let log = ctx.snap.config.server.access_log.then(|| {
            let mut bufs = access::Bufs::default();
            Box::new(access::Fields::new(&self.head, ctx, &mut bufs).to_owned())
        });
        Some(Handoff {
            up,
            frames,
            idle: ctx.route().and_then(|r| r.ws_idle_timeout),
            end: End {
                ws,
                _lease: ctx.lease.take(),
                _in_flight: InFlight::new(&self.app.shared),
                request_id: ctx.id().into(),
                requests: metrics.requests[status_class(101)].clone(),
                duration: metrics.duration.clone(),
                start: ctx.start,
                log,
                bytes_out: self.bytes_sent,
            },
        })
    }

    /// A response that started could not be completed.
    fn incomplete(&mut self, reason: &'static str) {
        self.ctx.error = Some(reason);
        let route = self.ctx.route().map_or("-", |r| r.name.as_str());
        self.app
            .shared
            .metrics
            .http
            .incomplete
            .with_label_values(&[route, reason])
            .inc();
    }

    fn finish(&mut self) {
        let ctx = &mut self.ctx;
        let held = ctx.replay.body.held();
        if held > 0 {
            self.app
                .shared
                .metrics
                .replay
                .replay_buffered_bytes
                .sub(held as i64);
        }
        let status = self.status;
        let metrics = match ctx.route {
            Some(i) => &ctx.snap.route_metrics[i],
            None => &ctx.snap.unrouted_metrics,
        };
        metrics.requests[status_class(status)].inc();
        metrics.duration.observe(ctx.start.elapsed().as_secs_f64());
        if ctx.replay.hops > 0 {
            self.app
                .shared
                .metrics
                .replay
                .replay_hops
                .observe(f64::from(ctx.replay.hops));
        }
        if ctx.snap.config.server.access_log {
            crate::proxy::access::log(&self.head, ctx, status, self.bytes_sent as usize);
        }
        // After the line: it names the backend from the lease.
        ctx.lease = None;
    }
}

fn status_of(ctx: &RequestCtx) -> u16 {
    ctx.failure.as_ref().map_or(0, |f| f.status)
}

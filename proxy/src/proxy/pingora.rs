//! Portico on pingora's `ProxyHttp`: the path HTTP/2 clients take (ALPN `h2`, and h2c where a
//! listener allows it), and the large-body replay subrequests. Each phase calls the request
//! path's decision modules, as Portico's own HTTP/1.1 engine does; what is pingora-specific
//! (its sessions, retry loop, subrequests, static bodies through its writer) lives here.

use async_trait::async_trait;
use bytes::Bytes;
use pingora_core::upstreams::peer::{HttpPeer, Peer};
use pingora_error::{Error, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::metrics::status_class;
use ctx::{LocalFailure, RequestCtx};

/// What a listener tells the request path about itself.
use super::*;

/// What the request path needs to know about a pingora session's connection.
fn conn_info(session: &Session) -> ctx::ConnInfo {
    let digest = session.digest();
    ctx::ConnInfo {
        peer: session.client_addr().and_then(|a| a.as_inet()).copied(),
        local: session.server_addr().and_then(|a| a.as_inet()).copied(),
        tls: digest
            .and_then(|d| d.ssl_digest.as_ref())
            .map(|s| tls_version_name(&s.version)),
        http2: session.is_http2(),
        // Made per request here: pingora gives no per-connection place to keep it.
        peer_value: None,
    }
}

/// Writes a static answer through pingora: the head, then the body from memory or the file.
async fn write_static(session: &mut Session, reply: crate::proxy::files::Reply) -> Result<()> {
    use crate::proxy::files::Body;
    let no_body = matches!(reply.body, Body::Empty);
    session
        .write_response_header(Box::new(reply.head), no_body)
        .await?;
    match reply.body {
        Body::Empty => Ok(()),
        Body::Bytes(b) => session.write_response_body(Some(b), true).await,
        Body::File { path, start, count } => stream_file(session, &path, start, count).await,
    }
}

/// Streams `count` bytes of a file from `start`, 64 KiB at a time.
async fn stream_file(
    session: &mut Session,
    path: &std::path::Path,
    start: u64,
    count: u64,
) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let io = |e: std::io::Error| {
        Error::because(
            pingora_error::ErrorType::InternalError,
            "reading a static file",
            e,
        )
    };
    let mut file = tokio::fs::File::open(path).await.map_err(io)?;
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start))
            .await
            .map_err(io)?;
    }
    let mut left = count;
    while left > 0 {
        let want = left.min(64 * 1024) as usize;
        let mut buf = vec![0u8; want];
        let n = file.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            // The file shrank under us: the response cannot be completed honestly.
            return Err(Error::explain(
                pingora_error::ErrorType::InternalError,
                "static file shrank while being sent",
            ));
        }
        buf.truncate(n);
        left -= n as u64;
        session
            .write_response_body(Some(Bytes::from(buf)), left == 0)
            .await?;
    }
    Ok(())
}

#[async_trait]
impl ProxyHttp for Portico {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx::new(&self.shared)
    }

    fn allow_spawning_subrequest(&self, _session: &Session, ctx: &RequestCtx) -> bool {
        // Replays of bodies larger than pingora's retry buffer, and buffered requests, run as
        // subrequests.
        ctx.snap.config.replay.enabled || ctx.route().is_some_and(|r| r.buffer_requests)
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if self.adopt_carried(session, ctx) {
            return Ok(false);
        }
        if self.shared.is_draining() {
            session.set_keepalive(None);
        }
        ctx.conn = conn_info(session);
        let upgrade = session.is_upgrade_req();
        let failure = match self.classify_request(session.req_header(), ctx) {
            Some(f) => f,
            None => match websocket::admit(&self.shared, upgrade, ctx) {
                Some(f) => f,
                None => {
                    ctx.upstream = ctx.route().map_or(0, |r| r.upstream);
                    let snap = ctx.snap.clone();
                    if let Some(route) = ctx.route.map(|i| &snap.config.routes.routes()[i]) {
                        if let Some(files) = &route.static_files {
                            let served = crate::proxy::files::serve(
                                &self.shared.files,
                                session.req_header(),
                                ctx,
                                route,
                                files,
                            )
                            .await?;
                            if let crate::proxy::files::Outcome::Reply(reply) = served {
                                write_static(session, *reply).await?;
                                return Ok(true);
                            }
                        }
                    }
                    self.route_by_cache(session.req_header(), ctx);
                    if ctx.route().is_some_and(|r| r.buffer_requests)
                        && !session.is_body_empty()
                        && !session.is_upgrade_req()
                    {
                        return self.send_buffered(session, ctx).await;
                    }
                    return Ok(false);
                }
            },
        };
        // An unread body would have to be drained to reuse the connection: close it instead.
        if !session.is_body_empty() {
            session.set_keepalive(None);
        }
        if failure.is_acme_answer() {
            respond::send(session, ctx, 200, failure.message.clone(), &[]).await?;
        } else if failure.reason == "force_https" {
            let location = failure.message.clone();
            let body = format!("Redirecting to {location}\n");
            respond::send(
                session,
                ctx,
                failure.status,
                body,
                &[("location", location)],
            )
            .await?;
        } else {
            self.shared
                .metrics
                .http
                .rejected
                .with_label_values(&[failure.reason])
                .inc();
            tracing::debug!(status = failure.status, reason = failure.reason, message = %failure.message, "answered locally");
            respond::send_failure(session, ctx, &failure).await?;
            ctx.failure = Some(failure);
        }
        Ok(true)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        ctx.upstream_loop = true;
        self.pick_backend(session.req_header(), ctx).await?;
        let Some(lease) = &ctx.lease else {
            return Err(Error::explain(
                pingora_error::ErrorType::InternalError,
                "no backend chosen",
            ));
        };
        let mut peer = lease.backend.peer.clone();
        let up = &ctx.snap.config.upstreams[ctx.upstream];
        if let Some(t) = up.tls.as_ref().filter(|t| t.ca.is_some()) {
            // A backend kept across reloads keeps the peer it was made with: the CA comes
            // from the last load, so a rotated `tls_ca` file applies here too.
            peer.options.ca = crate::tls_client::pingora_ca(t);
        }
        if let Some(version) = up.send_proxy_protocol {
            if let Some(header) = proxy_header(version, ctx) {
                // Connections carry one client's address: reused by that client only.
                peer.group_key = xxhash_rust::xxh3::xxh3_64(&header);
                peer.options.custom_l4 = Some(std::sync::Arc::new(crate::proxyproto::SendHeader {
                    header,
                }));
            }
        }
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // New connections measure the round trip to the backend (it orders remote regions).
        if let (false, Some(start), Some(lease)) = (reused, ctx.connect_started, &ctx.lease) {
            lease.backend.record_latency(start.elapsed());
        }
        Ok(())
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let mut edits = super::edits::Edits::default();
        self.request_edits(upstream_request, ctx, &mut edits)?;
        edits.apply_request(upstream_request)
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(chunk) = body else {
            return Ok(());
        };
        // pingora re-feeds its retry buffer on every attempt: only bytes new from the client
        // count, and Portico keeps its own copy for replays the retry buffer cannot hold.
        let replay = &ctx.snap.config.replay;
        let held = ctx.replay.body.held();
        let fresh = ctx
            .replay
            .body
            .observe(chunk, replay.max_body, replay.enabled);
        let delta = ctx.replay.body.held() as i64 - held as i64;
        if delta != 0 {
            self.shared.metrics.replay.replay_buffered_bytes.add(delta);
        }
        ctx.body_bytes += fresh;
        if let Some(max) = ctx.route().and_then(|r| r.max_body) {
            if ctx.body_bytes > max {
                self.shared
                    .metrics
                    .http
                    .rejected
                    .with_label_values(&["body_too_large"])
                    .inc();
                return Err(respond::fail(ctx, classify::too_large(max)));
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        ctx.upstream_status = Some(upstream_response.status.as_u16());
        ctx.upstream_time = ctx.connect_started.map(|t| t.elapsed());
        // Real traffic feeds passive ejection (consecutive 5xx, and resets connect failures).
        if let Some(lease) = &ctx.lease {
            let up = &ctx.snap.upstreams[ctx.upstream];
            let status = upstream_response.status.as_u16();
            if status >= 200 {
                let has_checks = !up.cfg.checks.is_empty();
                if let Some(t) =
                    lease
                        .backend
                        .health
                        .record_response(status, &up.cfg.passive, has_checks)
                {
                    crate::health::report(&self.shared, up.name(), &lease.backend, &t);
                }
            }
        }
        self.inspect_response(session.req_header(), upstream_response, ctx)
    }

    fn upstream_response_body_filter(
        &self,
        session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        self.inspect_body(session.req_header(), body, end_of_stream, ctx)?;
        Ok(None)
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Speak HTTP/1.1 to HTTP/1.1 clients even when the backend answered in HTTP/1.0.
        if !session.is_http2() && session.req_header().version == http::Version::HTTP_11 {
            upstream_response.set_version(http::Version::HTTP_11);
        }
        let status = upstream_response.status.as_u16();
        for name in hop::response_fields(&upstream_response.headers, status == 101) {
            upstream_response.remove_header(&name);
        }
        let mut e = respond::common_edits(ctx);
        self.pin_edits(ctx, &mut e)?;
        if let Some(cfg) = ctx.route().and_then(|r| r.compress.as_ref()) {
            if status != 101 {
                let h = &upstream_response.headers;
                let get = |n: http::HeaderName| h.get(n).map(|v| v.as_bytes());
                let req = session.req_header();
                let head_only = req.method == http::Method::HEAD;
                let facts = crate::compress::ResponseFacts {
                    status,
                    content_type: get(http::header::CONTENT_TYPE),
                    content_encoding: get(http::header::CONTENT_ENCODING),
                    content_length: get(http::header::CONTENT_LENGTH)
                        .and_then(|v| std::str::from_utf8(v).ok()?.trim().parse().ok()),
                    cache_control: get(http::header::CACHE_CONTROL),
                    bodiless: !head_only && matches!(status, 204 | 304 | 100..=199),
                };
                let plan = crate::compress::plan(
                    cfg,
                    req.headers
                        .get(http::header::ACCEPT_ENCODING)
                        .map(|v| v.as_bytes()),
                    req.headers.contains_key(http::header::RANGE),
                    &facts,
                    get(http::header::ETAG),
                );
                for n in plan.drop {
                    e.drop_name(n.clone());
                }
                e.extend_add(plan.add);
                if plan.encoder.is_some() && !session.is_http2() {
                    // HTTP/1.1 through pingora: the length is unknown now.
                    e.set(
                        http::header::TRANSFER_ENCODING,
                        http::HeaderValue::from_static("chunked"),
                    );
                }
                ctx.encoder = plan.encoder.filter(|_| !head_only);
            }
        }
        e.apply_response(upstream_response)
    }

    fn response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<std::time::Duration>> {
        if let Some(enc) = &mut ctx.encoder {
            let input = body.as_deref().unwrap_or(&[]);
            match enc.encode(input, end_of_stream) {
                Ok(out) => *body = (!out.is_empty() || end_of_stream).then_some(out),
                Err(e) => {
                    return Err(Error::explain(
                        pingora_error::ErrorType::InternalError,
                        format!("compressing the response failed: {e}"),
                    ))
                }
            }
            if end_of_stream {
                ctx.encoder = None;
            }
        }
        Ok(None)
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let up = ctx.snap.upstreams[ctx.upstream].clone();
        if let Some(lease) = &ctx.lease {
            up.record_connect_error(&lease.backend);
            let has_checks = !up.cfg.checks.is_empty();
            if let Some(t) = lease
                .backend
                .health
                .record_connect_failure(&up.cfg.passive, has_checks)
            {
                crate::health::report(&self.shared, up.name(), &lease.backend, &t);
            }
        }
        let addr = peer.address();
        ctx.last_error_status = 502;
        ctx.last_error = Some(format!(
            "connecting to {addr} failed: {}",
            respond::describe_connect_error(&e, up.cfg.connect_timeout)
        ));
        tracing::debug!(upstream = up.name(), backend = %addr, error = %e, attempt = ctx.attempts, "connect to backend failed");
        // Nothing reached the backend: any method can go elsewhere, within the retry budget.
        e.set_retry(ctx.attempts as usize <= up.cfg.retries);
        e
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        if ctx.replay.pending {
            // The upstream asked for a replay: retry whatever the method, with the body from
            // pingora's retry buffer, or through Portico's copy when that buffer overflowed.
            let mut e = e;
            if let Some(slot) = &ctx.replay.handback {
                // A large-body replay subrequest: the request that spawned it runs the next
                // hop with its copy of the body.
                ctx.replay.pending = false;
                if let Some(target) = ctx.replay.target.clone() {
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) =
                        Some(crate::replay::handback::NextHop {
                            target,
                            hops: ctx.replay.hops,
                            by_fallback: ctx.replay.by_fallback,
                            first_from: ctx.replay.first_from.clone(),
                            cache_key: ctx.replay.cache_key.clone(),
                            kind: ctx.replay.kind,
                        });
                    ctx.replay.handed_back = true;
                }
                e.set_retry(false);
                return e;
            }
            if session.as_ref().retry_buffer_truncated() {
                ctx.replay.pending = false;
                ctx.replay.needs_large = true;
                e.set_retry(false);
            } else {
                e.set_retry(true);
            }
            return e;
        }
        if ctx.failure.is_some() {
            // Portico itself decided this request's answer (a refused replay): final.
            let mut e = e;
            e.set_retry(false);
            return e;
        }
        let mut e = e.more_context(format!("backend {}", peer.address()));
        ctx.last_error = Some(e.to_string());
        // Timeouts are not retried: a slow backend asked again is a retry storm in the making.
        let timed_out = matches!(
            e.etype(),
            pingora_error::ErrorType::ReadTimedout | pingora_error::ErrorType::WriteTimedout
        );
        ctx.last_error_status = if timed_out { 504 } else { 502 };
        // The request may have reached the backend: only idempotent requests go again, only
        // before any of the response reached the client, and within the retry budget. Like
        // nginx's proxy_next_upstream, this holds for fresh connections as well as pooled ones.
        let retries = ctx.snap.config.upstreams[ctx.upstream].retries;
        let nothing_sent = session
            .response_written()
            .is_none_or(|r| r.status.is_informational());
        let retry = !timed_out
            && session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && nothing_sent
            && (ctx.attempts as usize) <= retries;
        if retry {
            e.set_retry(true);
        } else if e.retry() && !timed_out {
            // pingora may still want a stale pooled connection retried; never for a request
            // that could have been processed and is not idempotent.
            if !session.req_header().method.is_idempotent() || (ctx.attempts as usize) > retries {
                e.set_retry(false);
            } else {
                e.retry.decide_reuse(client_reused);
            }
        }
        e
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        _ctx: &RequestCtx,
        _error: &Error,
        _context: pingora_proxy::ProxyWarnLogContext,
    ) -> bool {
        // Retries are counted in metrics and the final outcome is logged by Portico.
        true
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _error: &Error) -> bool {
        // Portico logs failures itself (access log and `fail_to_proxy`), with context.
        true
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        if ctx.replay.handed_back {
            // The spawning request runs the next hop and answers the client.
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        if ctx.replay.needs_large {
            ctx.replay.needs_large = false;
            match subrequest::run(session, ctx).await {
                Ok(status) => {
                    return FailToProxy {
                        error_code: status,
                        can_reuse_downstream: false,
                    }
                }
                Err(f) => {
                    self.count_replay(ctx, f.reason);
                    ctx.failure = Some(f);
                }
            }
        }
        let (code, reason, message) = match &ctx.failure {
            Some(f) => (f.status, f.reason, f.message.clone()),
            None => respond::classify(e, ctx),
        };
        if code == 0 {
            tracing::debug!(request_id = ctx.id(), error = %e, "client went away");
        } else if code >= 500 {
            tracing::warn!(request_id = ctx.id(), status = code, reason, %message, "request failed");
        } else {
            tracing::debug!(request_id = ctx.id(), status = code, reason, %message, "request refused");
        }
        let written = session
            .response_written()
            .is_some_and(|r| !r.status.is_informational());
        // The connection can serve another request only when this one was read to its end and
        // its answer is complete. Otherwise the answer must say `Connection: close`, so the
        // client knows not to send its next request (a POST it could not tell was applied).
        // pingora reuses the connection only after a failure in a filter; after a failure in its
        // upstream loop (`upstream_peer` ran) it closes it whatever is returned here.
        let reuse = code > 0
            && !ctx.upstream_loop
            && !written
            && !self.shared.is_draining()
            && !session.is_http2()
            && session.as_mut().is_body_done();
        if !reuse {
            session.set_keepalive(None);
        }
        if code > 0 {
            self.shared
                .metrics
                .http
                .rejected
                .with_label_values(&[reason])
                .inc();
            if !written {
                let failure = LocalFailure {
                    status: code,
                    reason,
                    message,
                    retry_after: ctx.failure.as_ref().and_then(|f| f.retry_after),
                };
                if let Err(we) = respond::send_failure(session, ctx, &failure).await {
                    tracing::debug!(error = %we, "could not write the error response");
                }
            }
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: reuse,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        // Give the backend slot back before anything else.
        ctx.lease = None;
        let held = ctx.replay.body.held();
        if held > 0 {
            self.shared
                .metrics
                .replay
                .replay_buffered_bytes
                .sub(held as i64);
        }
        if ctx.is_subrequest {
            // The request being replayed accounts for the whole exchange.
            return;
        }
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let metrics = match ctx.route {
            Some(i) => &ctx.snap.route_metrics[i],
            None => &ctx.snap.unrouted_metrics,
        };
        metrics.requests[status_class(status)].inc();
        metrics.duration.observe(ctx.start.elapsed().as_secs_f64());
        if ctx.replay.hops > 0 {
            self.shared
                .metrics
                .replay
                .replay_hops
                .observe(f64::from(ctx.replay.hops));
        }
        if ctx.snap.config.server.access_log {
            access::log(session.req_header(), ctx, status, session.body_bytes_sent());
        }
    }
}

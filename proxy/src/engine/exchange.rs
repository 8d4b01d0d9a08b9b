//! One HTTP/1.1 request from its head to its access-log line: the request path's decisions,
//! then attempts on backends (connect or reuse, send, read the answer) with retries and
//! fly-replay hops, then the answer to the client, and the decision to keep the connection.
//!
//! A request body is streamed to the first backend as it arrives, while a copy is kept for
//! replays and retries (bounded by `[replay] max_body`); `buffer_requests` routes read it
//! whole first. An answer the backend sends before the body is complete stops the upload.
//! The response head and the first body bytes go to the client in one write.

use std::io;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE};
use http::{Method, Version};
use pingora_http::RequestHeader;
use smallvec::SmallVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::chunked::Chunked;
use super::codec::{self, Framing};
use super::tunnel::{End, Handoff};
use super::upstream::{self, PoolKey, UpConn};
use super::{pool, Client, ClientIo, CLIENT_IO_TIMEOUT};
use crate::metrics::status_class;
use crate::proxy::ctx::{InFlight, LocalFailure, RequestCtx};
use crate::proxy::{access, respond, websocket, Portico};
use crate::wsclose::Frames;

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

/// Why a request body could not be read.
#[derive(Debug)]
enum BodyError {
    /// The client went away or reset.
    Gone,
    /// The client sent nothing for `body_read_timeout`.
    Timeout,
    /// The body fell behind `min_body_rate` by more than the slack.
    TooSlow,
    /// The body's framing is broken.
    Malformed(&'static str),
}

/// The part of the request body still to come from the client.
#[derive(Debug)]
struct ClientBody {
    framing: Framing,
    left: u64,
    chunked: Chunked,
    done: bool,
    /// Body bytes read so far (data only, without chunk framing).
    data: u64,
    /// When the first read of the body began (the clock of `min_body_rate`).
    started: Option<tokio::time::Instant>,
}

impl ClientBody {
    fn new(framing: Framing) -> Self {
        let (left, done) = match framing {
            Framing::Length(n) => (n, n == 0),
            Framing::Chunked => (0, false),
            Framing::None | Framing::Close => (0, true),
        };
        Self {
            framing,
            left,
            chunked: Chunked::default(),
            done,
            data: 0,
            started: None,
        }
    }

    /// The next piece of the body as the client framed it, `None` at its end.
    async fn next<S: ClientIo>(
        &mut self,
        client: &mut Client<S>,
    ) -> Result<Option<Bytes>, BodyError> {
        loop {
            if self.done {
                return Ok(None);
            }
            if !client.rbuf.is_empty() {
                match self.framing {
                    Framing::Length(_) => {
                        let n = (self.left.min(client.rbuf.len() as u64)) as usize;
                        self.left -= n as u64;
                        self.data += n as u64;
                        self.done = self.left == 0;
                        return Ok(Some(client.rbuf.split_to(n).freeze()));
                    }
                    Framing::Chunked => {
                        let before = self.chunked.data;
                        let n = self
                            .chunked
                            .scan(&client.rbuf)
                            .map_err(BodyError::Malformed)?;
                        self.data += self.chunked.data - before;
                        self.done = self.chunked.done();
                        if n > 0 {
                            return Ok(Some(client.rbuf.split_to(n).freeze()));
                        }
                    }
                    Framing::None | Framing::Close => {
                        self.done = true;
                        return Ok(None);
                    }
                }
            }
            client.rbuf.reserve(16 * 1024);
            // The wait ends at `body_read_timeout`, or sooner when the body falls behind
            // `min_body_rate`: the bytes read so far must have come within `read_timeout`
            // plus `data / rate` seconds of the start (Apache's `MinRate`), so a trickle of
            // bytes (R.U.D.Y.) cannot hold a connection and a backend for long.
            let limits = client.body_limits;
            let now = tokio::time::Instant::now();
            let started = *self.started.get_or_insert(now);
            // A configured timeout too large for the clock means "no timeout" (about 30 years).
            let mut deadline = now
                .checked_add(limits.read_timeout)
                .unwrap_or_else(|| now + Duration::from_secs(1 << 30));
            let mut too_slow = false;
            if let Some(rate) = limits.min_rate {
                // Checked arithmetic: no byte count or rate can make this panic.
                let allowed = Duration::try_from_secs_f64(self.data as f64 / rate as f64)
                    .ok()
                    .and_then(|d| d.checked_add(limits.read_timeout));
                let due = allowed.and_then(|d| started.checked_add(d));
                if let Some(due) = due.filter(|due| *due < deadline) {
                    deadline = due;
                    too_slow = true;
                }
            }
            match tokio::time::timeout_at(deadline, client.io.read_buf(&mut client.rbuf)).await {
                Err(_) if too_slow => return Err(BodyError::TooSlow),
                Err(_) => return Err(BodyError::Timeout),
                Ok(Ok(0)) | Ok(Err(_)) => return Err(BodyError::Gone),
                Ok(Ok(_)) => {}
            }
        }
    }
}

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
    let parsed = match codec::parse_request(&client.rbuf, max_target) {
        Ok(p) => p,
        Err(r) => {
            let reason = match r.status {
                431 => "header_too_large",
                414 => "uri_too_long",
                _ => "bad_request",
            };
            app.shared
                .metrics
                .rejected
                .with_label_values(&[reason])
                .inc();
            tracing::debug!(status = r.status, reason = %r.reason, "malformed request");
            let ctx = RequestCtx::new(&app.shared);
            let _ = write_local(client, &ctx, r.status, &r.reason, &[], true, false).await;
            return After::Close;
        }
    };
    let _ = client.rbuf.split_to(parsed.head_len);
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
    let after = ex.run(client).await;
    match ex.switched.take() {
        Some((up, frames)) => match ex.hand_off(up, frames) {
            Some(h) => After::Tunnel(Box::new(h)),
            None => After::Gone,
        },
        None => {
            ex.finish();
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
            self.app.shared.metrics.replay_buffered_bytes.add(delta);
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

    /// One attempt on the backend chosen in `ctx.lease`. `Ok(Some)`: the answer went to the
    /// client. `Ok(None)`: the backend asked for a replay; try again.
    async fn attempt<S: ClientIo>(
        &mut self,
        client: &mut Client<S>,
    ) -> Result<Option<After>, AttemptError> {
        let snap = self.ctx.snap.clone();
        let up_idx = self.ctx.upstream;
        let up_cfg = &snap.config.upstreams[up_idx];
        let Some(lease) = &self.ctx.lease else {
            return Err(AttemptError::Connect("no backend".into()));
        };
        let backend = lease.backend.clone();
        let key = PoolKey::new(backend.addr, up_cfg);
        // A connection that announces this client (PROXY protocol) is its own: never pooled.
        let proxy_header = up_cfg
            .send_proxy_protocol
            .and_then(|v| crate::proxy::proxy_header(v, &self.ctx));
        let pooled = if proxy_header.is_none() {
            pool::take(&key)
        } else {
            None
        };
        let mut conn = match pooled {
            Some(c) => c,
            None => {
                let started = Instant::now();
                let c = upstream::connect(backend.addr, up_cfg, proxy_header.as_deref())
                    .await
                    .map_err(|e| AttemptError::Connect(e.to_string()))?;
                backend.record_latency(started.elapsed());
                c
            }
        };
        let reused = conn.served > 0;
        // Send the head (and the body: from the copy on a retry or replay, else streamed).
        let mut out = BytesMut::with_capacity(1024);
        self.write_upstream_head(&mut out)
            .map_err(|e| AttemptError::Failed {
                message: e,
                timeout: false,
            })?;
        // Nothing of the body was read yet: it streams to this backend. Otherwise all of it
        // is in the copy (a retry, a replay, a buffered route, or no body).
        let early = if self.body.done {
            // The whole body is in the copy (or there is none).
            let mut chunks: Vec<Bytes> = Vec::new();
            if !self.ctx.replay.body.chunks.is_empty() && !self.ctx.replay.body.overflow {
                chunks = self.ctx.replay.body.chunks.clone();
            }
            let small: usize = chunks.iter().map(Bytes::len).sum();
            if small <= 16 * 1024 {
                for c in &chunks {
                    out.put_slice(c);
                }
                chunks.clear();
            }
            self.write_up(&mut conn, &out, up_cfg.write_timeout, reused)
                .await?;
            for c in &chunks {
                self.write_up(&mut conn, c, up_cfg.write_timeout, reused)
                    .await?;
            }
            false
        } else {
            // Streamed: what the client already sent goes with the head.
            self.stream_body(client, &mut conn, out, up_cfg, reused)
                .await?
        };
        self.body_sent_all = !early;
        // The answer.
        self.ctx.connect_started.get_or_insert_with(Instant::now);
        let resp = loop {
            let parsed = self
                .read_response_head(&mut conn, up_cfg.read_timeout, reused)
                .await?;
            let code = parsed.status;
            if (100..200).contains(&code) && code != 101 {
                // 100 Continue was Portico's to send; other interim answers (103 Early Hints)
                // reach HTTP/1.1 clients.
                if code != 100 && self.head.version == Version::HTTP_11 {
                    codec::put_status_line(
                        &mut client.wbuf,
                        Version::HTTP_11,
                        code,
                        parsed.reason(&conn.rbuf),
                    );
                    for (n, v) in parsed.fields(&conn.rbuf) {
                        codec::put_field(&mut client.wbuf, n, v);
                    }
                    client.wbuf.put_slice(b"\r\n");
                    let _ = client.flush_wbuf().await;
                }
                let _ = conn.rbuf.split_to(parsed.head_len);
                continue;
            }
            break parsed;
        };
        conn.served += 1;
        self.after_response_head(client, conn, resp, up_cfg).await
    }

    /// Writes the request head for the backend: the client's fields without the ones that
    /// describe the client's connection (RFC 9110 section 7.6.1) or that the request path's
    /// edits replace, then the edits' own fields (forwarding headers, route rules, replay
    /// headers). No second header map is built.
    fn write_upstream_head(&self, out: &mut BytesMut) -> Result<(), String> {
        let e = self
            .app
            .request_edits(&self.head, &self.ctx)
            .map_err(|e| e.to_string())?;
        out.put_slice(self.head.method.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(e.target.as_deref().unwrap_or(self.head.raw_path()));
        out.put_slice(b" HTTP/1.1\r\n");
        let nominated: SmallVec<[&[u8]; 4]> = self
            .head
            .headers
            .get_all(CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty())
            .collect();
        for (name, value) in &self.head.headers {
            let n = name.as_str().as_bytes();
            let hop = matches!(
                n,
                b"connection"
                    | b"keep-alive"
                    | b"proxy-connection"
                    | b"te"
                    | b"trailer"
                    | b"expect"
                    | b"http2-settings"
            ) || (*name == UPGRADE && !self.upgrade)
                || (*name != UPGRADE
                    && *name != CONTENT_LENGTH
                    && *name != TRANSFER_ENCODING
                    && nominated.iter().any(|t| t.eq_ignore_ascii_case(n)));
            if hop || e.drops(n) {
                continue;
            }
            codec::put_field(out, n, value.as_bytes());
        }
        if self.upgrade {
            out.put_slice(b"connection: upgrade\r\n");
        }
        for (n, v) in &e.add {
            codec::put_field(out, n.as_str().as_bytes(), v.as_bytes());
        }
        out.put_slice(b"\r\n");
        Ok(())
    }

    async fn write_up(
        &self,
        conn: &mut UpConn,
        bytes: &[u8],
        timeout: Duration,
        _reused: bool,
    ) -> Result<(), AttemptError> {
        match tokio::time::timeout(timeout, conn.io.write_all(bytes)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AttemptError::Failed {
                message: format!("sending the request failed: {e}"),
                timeout: false,
            }),
            Err(_) => Err(AttemptError::Failed {
                message: "sending the request timed out".into(),
                timeout: true,
            }),
        }
    }

    /// Streams the client's body to the backend, keeping a copy. Returns true when the
    /// backend answered before the body was complete (the rest is not sent).
    async fn stream_body<S: ClientIo>(
        &mut self,
        client: &mut Client<S>,
        conn: &mut UpConn,
        mut out: BytesMut,
        up_cfg: &portico_config::Upstream,
        reused: bool,
    ) -> Result<bool, AttemptError> {
        let replay_max = self.ctx.snap.config.replay.max_body;
        let keep = self.ctx.snap.config.replay.enabled && !self.upgrade;
        // What the client already sent rides with the head.
        if !client.rbuf.is_empty() && !self.body.done {
            match self.next_body(client).await {
                Ok(Some(c)) => {
                    if keep {
                        self.keep_copy(&c, replay_max);
                    }
                    out.put_slice(&c);
                }
                Ok(None) => {}
                Err(f) => return Err(AttemptError::Client(f)),
            }
        }
        self.write_up(conn, &out, up_cfg.write_timeout, reused)
            .await?;
        while !self.body.done {
            let chunk = tokio::select! {
                biased;
                r = conn.io.tcp().readable() => {
                    // The backend answers (or closes) before the body is complete.
                    let _ = r;
                    return Ok(true);
                }
                c = self.next_body(client) => c,
            };
            match chunk {
                Ok(Some(c)) => {
                    if keep {
                        self.keep_copy(&c, replay_max);
                    }
                    self.write_up(conn, &c, up_cfg.write_timeout, reused)
                        .await?;
                }
                Ok(None) => break,
                Err(f) => return Err(AttemptError::Client(f)),
            }
        }
        Ok(false)
    }

    async fn read_response_head(
        &self,
        conn: &mut UpConn,
        timeout: Duration,
        _reused: bool,
    ) -> Result<codec::Response, AttemptError> {
        loop {
            if !conn.rbuf.is_empty() {
                match codec::parse_response(&conn.rbuf, &self.head.method) {
                    Ok(Some(r)) => return Ok(r),
                    Ok(None) => {}
                    Err(e) => return Err(AttemptError::BadResponse(e.0)),
                }
                if conn.rbuf.len() > MAX_RESPONSE_HEAD {
                    return Err(AttemptError::BadResponse(
                        "response head larger than 64 KiB".into(),
                    ));
                }
            }
            conn.rbuf.reserve(16 * 1024);
            match tokio::time::timeout(timeout, conn.io.read_buf(&mut conn.rbuf)).await {
                Err(_) => {
                    return Err(AttemptError::Failed {
                        message: format!(
                            "no answer within the read timeout ({})",
                            portico_config::units::format_duration(timeout)
                        ),
                        timeout: true,
                    })
                }
                Ok(Ok(0)) => {
                    return Err(AttemptError::Failed {
                        message: "connection closed before a response".into(),
                        timeout: false,
                    })
                }
                Ok(Err(e)) => {
                    return Err(AttemptError::Failed {
                        message: format!("reading the response failed: {e}"),
                        timeout: false,
                    })
                }
                Ok(Ok(_)) => {}
            }
        }
    }

    /// A final response head arrived (it is at the start of `conn.rbuf`): replay inspection,
    /// the response path's decisions, and the answer to the client.
    ///
    /// The usual answer is forwarded from its bytes, its fields filtered and the request
    /// path's edits added as they are written. A header map is built only when the answer
    /// may hold a fly-replay instruction.
    async fn after_response_head<S: ClientIo>(
        &mut self,
        client: &mut Client<S>,
        mut conn: UpConn,
        resp: codec::Response,
        up_cfg: &portico_config::Upstream,
    ) -> Result<Option<After>, AttemptError> {
        let app = self.app;
        let status = resp.status;
        let framing = resp.body;
        let up_keep_alive = resp.keep_alive;
        self.ctx.upstream_status = Some(status);
        self.ctx.upstream_time = self.ctx.connect_started.map(|t| t.elapsed());
        // Real traffic feeds passive ejection.
        if let Some(lease) = &self.ctx.lease {
            let up = &self.ctx.snap.upstreams[self.ctx.upstream];
            let has_checks = !up.cfg.checks.is_empty();
            if let Some(t) =
                lease
                    .backend
                    .health
                    .record_response(status, &up.cfg.passive, has_checks)
            {
                crate::health::report(&app.shared, up.name(), &lease.backend, &t);
            }
        }
        let buf = &conn.rbuf[..];
        let may_replay = self.ctx.snap.config.replay.enabled
            && (resp.get(buf, "fly-replay").is_some()
                || resp.get(buf, "content-type").is_some_and(|ct| {
                    ct.len() >= crate::replay::JSON_CONTENT_TYPE.len()
                        && ct[..crate::replay::JSON_CONTENT_TYPE.len()]
                            .eq_ignore_ascii_case(crate::replay::JSON_CONTENT_TYPE.as_bytes())
                })
                || (self.ctx.replay.cache_key.is_some()
                    && resp.get(buf, "fly-replay-cache").is_some()));
        let mapped = if may_replay {
            let mut head = resp
                .to_header(buf)
                .map_err(|e| AttemptError::BadResponse(e.0))?;
            let _ = conn.rbuf.split_to(resp.head_len);
            self.give_back = false;
            let checked = self
                .replay_check(client, &mut conn, &mut head, framing, up_keep_alive, up_cfg)
                .await;
            if self.give_back {
                pool::give(conn, up_cfg.idle_timeout);
                return checked.map(|c| c.unwrap_or(None));
            }
            if let Some(after) = checked? {
                return Ok(after);
            }
            Some(head)
        } else {
            None
        };
        // The response path's decisions.
        let switching = status == 101;
        if switching && !self.upgrade {
            return Err(AttemptError::BadResponse(
                "101 Switching Protocols to a request that did not ask for it".into(),
            ));
        }
        websocket::on_response(&mut self.ctx, status);
        let mut edits = respond::common_edits(&self.ctx);
        if let Err(e) = app.pin_edits(&self.ctx, &mut edits) {
            tracing::debug!(error = %e, "affinity cookie not set");
        }
        // How the body goes to this client.
        let client_version = self.head.version;
        let head_only = self.head.method == Method::HEAD;
        let mut mode = Relay::from(framing);
        let mut close_after = !self.client_keep_alive || !self.body.done;
        let mut rechunk = false;
        let mut dechunk = false;
        let encoder = match self.ctx.route().and_then(|r| r.compress.as_ref()) {
            Some(cfg) if !switching => {
                let field = |name: &str| -> Option<Vec<u8>> {
                    match &mapped {
                        Some(h) => h.headers.get(name).map(|v| v.as_bytes().to_vec()),
                        None => resp.get(&conn.rbuf, name).map(<[u8]>::to_vec),
                    }
                };
                let ct = field("content-type");
                let ce = field("content-encoding");
                let cc = field("cache-control");
                let etag = field("etag");
                let facts = crate::compress::ResponseFacts {
                    status,
                    content_type: ct.as_deref(),
                    content_encoding: ce.as_deref(),
                    content_length: match framing {
                        Framing::Length(n) => Some(n),
                        _ => field("content-length")
                            .and_then(|v| std::str::from_utf8(&v).ok()?.trim().parse().ok()),
                    },
                    cache_control: cc.as_deref(),
                    // A HEAD answer gets the fields a GET would (without a body).
                    bodiless: matches!(framing, Framing::None) && !head_only,
                };
                let plan = crate::compress::plan(
                    cfg,
                    self.head
                        .headers
                        .get(http::header::ACCEPT_ENCODING)
                        .map(|v| v.as_bytes()),
                    self.head.headers.contains_key(http::header::RANGE),
                    &facts,
                    etag.as_deref(),
                );
                for n in plan.drop {
                    edits.drop.push(n.clone());
                }
                edits.add.extend(plan.add);
                plan.encoder
            }
            _ => None,
        };
        if let Some(enc) = encoder {
            // The body is decoded from the backend's framing and re-framed here: chunked to
            // an HTTP/1.1 client, close-delimited to an HTTP/1.0 one.
            edits.drop.push(http::header::TRANSFER_ENCODING);
            if client_version == Version::HTTP_11 {
                rechunk = true;
            } else {
                close_after = true;
            }
            let mut c = Compressing::new(framing, enc);
            c.chunk_out = client_version == Version::HTTP_11;
            mode = Relay::Compress(Box::new(c));
        }
        match framing {
            _ if matches!(mode, Relay::Compress(_)) => {}
            Framing::Close if !head_only => {
                if client_version == Version::HTTP_11 {
                    mode = Relay::Rechunk;
                    rechunk = true;
                } else {
                    close_after = true;
                }
            }
            Framing::Chunked if client_version == Version::HTTP_10 => {
                mode = Relay::Dechunk(Chunked::default());
                dechunk = true;
                close_after = true;
            }
            _ => {}
        }
        if switching {
            close_after = false;
        }
        let connection: Option<&[u8]> = if switching {
            None
        } else if close_after {
            Some(b"close")
        } else if client_version == Version::HTTP_10 {
            Some(b"keep-alive")
        } else {
            None
        };
        let wbuf = &mut client.wbuf;
        match &mapped {
            Some(head) => {
                let fields: SmallVec<[(&[u8], &[u8]); 24]> = head
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
                    .collect();
                let reason = head.status.canonical_reason().unwrap_or("Unknown");
                write_client_head(
                    wbuf,
                    client_version,
                    status,
                    reason.as_bytes(),
                    &fields,
                    &edits,
                    switching,
                    dechunk,
                    rechunk,
                    connection,
                );
            }
            None => {
                {
                    let buf = &conn.rbuf[..];
                    let fields: SmallVec<[(&[u8], &[u8]); 24]> = resp.fields(buf).collect();
                    write_client_head(
                        wbuf,
                        client_version,
                        status,
                        resp.reason(buf),
                        &fields,
                        &edits,
                        switching,
                        dechunk,
                        rechunk,
                        connection,
                    );
                }
                let _ = conn.rbuf.split_to(resp.head_len);
            }
        }
        self.status = status;
        self.answered = true;
        if switching {
            // The backend's first frames (sent right after its 101) go out with the head.
            if !conn.rbuf.is_empty() {
                self.bytes_sent = conn.rbuf.len() as u64;
                if let Some(ws) = &self.ctx.ws {
                    ws.count_out(conn.rbuf.len());
                }
                client.wbuf.extend_from_slice(&conn.rbuf);
            }
            if client.flush_wbuf().await.is_err() {
                return Ok(Some(After::Gone));
            }
            // The client's first frames (sent before the 101 came) go to the backend.
            let mut frames = Frames::default();
            if !client.rbuf.is_empty() {
                frames.advance(&client.rbuf);
                if let Some(ws) = &self.ctx.ws {
                    ws.count_in(client.rbuf.len());
                }
                let sent = tokio::time::timeout(CLIENT_IO_TIMEOUT, conn.io.write_all(&client.rbuf));
                if !matches!(sent.await, Ok(Ok(()))) {
                    return Ok(Some(After::Gone));
                }
                client.rbuf.clear();
            }
            self.switched = Some((conn.io, frames));
            return Ok(Some(After::Gone));
        }
        let pumped = relay_body(client, &mut conn, mode, up_cfg.read_timeout, head_only).await;
        self.bytes_sent = pumped.bytes;
        if pumped.up_done && up_keep_alive && self.body_sent_all && !pumped.client_failed {
            pool::give(conn, up_cfg.idle_timeout);
        }
        if pumped.client_failed {
            self.incomplete("client_gone");
            return Ok(Some(After::Gone));
        }
        if let Some(e) = pumped.up_error {
            // The answer started: the client can only see the connection end early. The
            // status it got stays in the log and metrics; `error` says it was cut short.
            self.incomplete("upstream_failed_mid_response");
            tracing::warn!(request_id = self.ctx.id(), status, reason = "upstream_failed_mid_response", error = %e, "backend failed in the middle of the response");
            return Ok(Some(After::Gone));
        }
        Ok(Some(if close_after {
            self.linger(client).await;
            After::Close
        } else {
            After::KeepAlive
        }))
    }

    /// fly-replay: the header form ends the attempt here, the JSON form once its body is in.
    /// `Ok(Some(answer))` when the attempt is over (a replay to run: `Some(None)`; a refused
    /// one: its answer), `Ok(None)` when the response goes to the client.
    async fn replay_check<S: ClientIo>(
        &mut self,
        client: &mut Client<S>,
        conn: &mut UpConn,
        head: &mut pingora_http::ResponseHeader,
        framing: Framing,
        up_keep_alive: bool,
        up_cfg: &portico_config::Upstream,
    ) -> Result<Option<Option<After>>, AttemptError> {
        let app = self.app;
        let mut replay = app.inspect_response(&self.head, head, &mut self.ctx);
        let mut body_read = false;
        if replay.is_ok() && self.ctx.replay.json.is_some() {
            let body =
                read_whole(conn, framing, crate::replay::MAX_JSON, up_cfg.read_timeout).await;
            body_read = body.is_some();
            let mut chunk = Some(Bytes::from(body.unwrap_or_default()));
            replay = app.inspect_body(&self.head, &mut chunk, true, &mut self.ctx);
            if replay.is_ok() {
                self.ctx.replay.json = None;
                return Err(AttemptError::BadResponse(
                    "the JSON replay instruction was not understood".into(),
                ));
            }
        }
        if replay.is_ok() {
            return Ok(None);
        }
        // The replay answer itself is dropped; a small body is read so the connection can be
        // reused.
        let drained = up_keep_alive
            && framing != Framing::Close
            && (body_read
                || read_whole(conn, framing, DRAIN_LIMIT as usize, up_cfg.read_timeout)
                    .await
                    .is_some());
        self.give_back = drained && self.body_sent_all;
        if let Some(f) = self.ctx.failure.take() {
            // A refused replay (malformed, hop limit, unknown app...).
            return Ok(Some(Some(self.answer_failure(client, f).await)));
        }
        self.ctx.replay.pending = false;
        // The whole body must be in the copy to go again.
        let max = self.ctx.snap.config.replay.max_body;
        if !self.body.done {
            if let Err(f) = self.hold_rest(client, max).await {
                let f = if f.status == 413 {
                    crate::proxy::subrequest::super_too_large(max)
                } else {
                    f
                };
                return Ok(Some(Some(self.answer_failure(client, f).await)));
            }
        }
        if self.ctx.replay.body.overflow {
            let f = crate::proxy::subrequest::super_too_large(max);
            return Ok(Some(Some(self.answer_failure(client, f).await)));
        }
        self.ctx.lease = None;
        Ok(Some(None))
    }

    /// Writes Portico's own answer (a redirect, a refusal, an upstream failure) and decides
    /// the connection's fate: kept when the request was read to its end, else `Connection:
    /// close` after a lingering read of the rest.
    async fn answer_failure<S: ClientIo>(
        &mut self,
        client: &mut Client<S>,
        f: LocalFailure,
    ) -> After {
        if f.reason != "force_https" && !f.is_acme_answer() {
            self.ctx.error = Some(f.reason);
        }
        if f.status == 0 || self.answered {
            tracing::debug!(request_id = self.ctx.id(), reason = f.reason, message = %f.message, "request ended without an answer");
            self.ctx.failure = Some(f);
            return After::Gone;
        }
        let redirect = f.reason == "force_https";
        if !redirect && !f.is_acme_answer() {
            self.app
                .shared
                .metrics
                .rejected
                .with_label_values(&[f.reason])
                .inc();
            if f.status >= 500 {
                tracing::warn!(request_id = self.ctx.id(), status = f.status, reason = f.reason, message = %f.message, "request failed");
            } else {
                tracing::debug!(request_id = self.ctx.id(), status = f.status, reason = f.reason, message = %f.message, "answered locally");
            }
        }
        let close = !self.client_keep_alive || !self.body.done;
        let head_only = self.head.method == Method::HEAD;
        let written = if f.is_acme_answer() {
            write_text(
                client,
                &self.ctx,
                200,
                f.message.clone(),
                &[],
                close,
                head_only,
                self.head.version,
            )
            .await
        } else if redirect {
            let location = f.message.clone();
            let body = format!("Redirecting to {location}\n");
            write_text(
                client,
                &self.ctx,
                f.status,
                body,
                &[("location", location)],
                close,
                head_only,
                self.head.version,
            )
            .await
        } else {
            let (body, extra) = respond::failure_parts(&self.ctx, &f);
            write_text(
                client,
                &self.ctx,
                f.status,
                body,
                &extra,
                close,
                head_only,
                self.head.version,
            )
            .await
        };
        self.status = f.status;
        self.answered = true;
        self.ctx.failure = Some(f);
        if written.is_err() {
            return After::Gone;
        }
        if close {
            // A malformed body cannot be read to its end, and a too-slow one is what the
            // 408 ends: close at once. Any other early answer lingers, so an uploading
            // client reads it instead of a reset.
            if !matches!(status_of(&self.ctx), 400 | 408) {
                self.linger(client).await;
            }
            After::Close
        } else {
            After::KeepAlive
        }
    }

    async fn write_static<S: ClientIo>(
        &mut self,
        client: &mut Client<S>,
        reply: crate::proxy::files::Reply,
    ) -> After {
        use crate::proxy::files::Body;
        let close = !self.client_keep_alive || !self.body.done;
        let mut head = reply.head;
        if close {
            let _ = head.insert_header(CONNECTION, "close");
        }
        self.status = head.status.as_u16();
        self.answered = true;
        codec::write_response(&mut client.wbuf, &head, self.head.version);
        let ok = match reply.body {
            Body::Empty => client.flush_wbuf().await.is_ok(),
            Body::Bytes(b) => {
                self.bytes_sent = b.len() as u64;
                if b.len() <= 4096 {
                    client.wbuf.put_slice(&b);
                    client.flush_wbuf().await.is_ok()
                } else {
                    client.write_with(&b).await.is_ok()
                }
            }
            Body::File { path, start, count } => {
                if client.flush_wbuf().await.is_err() {
                    false
                } else {
                    match send_file(client, &path, start, count).await {
                        Ok(n) => {
                            self.bytes_sent = n;
                            n == count
                        }
                        Err(_) => false,
                    }
                }
            }
        };
        if !ok {
            return After::Gone;
        }
        if close {
            self.linger(client).await;
            After::Close
        } else {
            After::KeepAlive
        }
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
                lease: ctx.lease.take(),
                in_flight: InFlight::new(&self.app.shared),
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
            .incomplete
            .with_label_values(&[route, reason])
            .inc();
    }

    fn finish(&mut self) {
        let ctx = &mut self.ctx;
        ctx.lease = None;
        let held = ctx.replay.body.held();
        if held > 0 {
            self.app
                .shared
                .metrics
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
                .replay_hops
                .observe(f64::from(ctx.replay.hops));
        }
        if ctx.snap.config.server.access_log {
            crate::proxy::access::log(&self.head, ctx, status, self.bytes_sent as usize);
        }
    }
}

fn body_failure(e: BodyError) -> LocalFailure {
    match e {
        BodyError::Gone => LocalFailure::new(0, "client_gone", "the client went away".into()),
        BodyError::Timeout => LocalFailure::new(
            408,
            "body_timeout",
            "the request body stopped arriving (body_read_timeout)".into(),
        ),
        BodyError::TooSlow => LocalFailure::new(
            408,
            "body_too_slow",
            "the request body arrived slower than min_body_rate".into(),
        ),
        BodyError::Malformed(why) => {
            LocalFailure::new(400, "bad_request", format!("malformed request body: {why}"))
        }
    }
}

fn status_of(ctx: &RequestCtx) -> u16 {
    ctx.failure.as_ref().map_or(0, |f| f.status)
}

/// Writes Portico's own plain-text answer for a request that could not be parsed.
async fn write_local<S: ClientIo>(
    client: &mut Client<S>,
    ctx: &RequestCtx,
    status: u16,
    message: &str,
    extra: &[(&'static str, String)],
    close: bool,
    head_only: bool,
) -> io::Result<()> {
    let body = respond::error_body(status, message, ctx);
    write_text(
        client,
        ctx,
        status,
        body,
        extra,
        close,
        head_only,
        Version::HTTP_11,
    )
    .await
}

/// Writes a plain-text answer with the common headers, in one write.
#[allow(clippy::too_many_arguments)]
async fn write_text<S: ClientIo>(
    client: &mut Client<S>,
    ctx: &RequestCtx,
    status: u16,
    body: String,
    extra: &[(&'static str, String)],
    close: bool,
    head_only: bool,
    version: Version,
) -> io::Result<()> {
    let Ok(mut head) = respond::local_head(ctx, status, body.len(), extra) else {
        return Err(io::Error::other("building the answer"));
    };
    if close {
        let _ = head.insert_header(CONNECTION, "close");
    } else if version == Version::HTTP_10 {
        let _ = head.insert_header(CONNECTION, "keep-alive");
    }
    codec::write_response(&mut client.wbuf, &head, version);
    if !head_only {
        client.wbuf.put_slice(body.as_bytes());
    }
    client.flush_wbuf().await
}

/// Writes the response head for the client: the status line, the backend's fields less
/// the hop-by-hop ones (RFC 9110 section 7.6.1) and the ones the edits replace, the edits'
/// fields, and Portico's own framing and connection fields.
#[allow(clippy::too_many_arguments)]
fn write_client_head(
    out: &mut BytesMut,
    version: Version,
    status: u16,
    reason: &[u8],
    fields: &[(&[u8], &[u8])],
    edits: &crate::proxy::edits::Edits,
    switching: bool,
    dechunk: bool,
    rechunk: bool,
    connection: Option<&[u8]>,
) {
    codec::put_status_line(out, version, status, reason);
    let nominated: SmallVec<[&[u8]; 4]> = fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
        .flat_map(|(_, v)| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .collect();
    for &(n, v) in fields {
        let lower = |s: &[u8]| n.eq_ignore_ascii_case(s);
        let framing = lower(b"transfer-encoding") || lower(b"content-length");
        let hop = (lower(b"connection") && !switching)
            || lower(b"keep-alive")
            || lower(b"proxy-connection")
            || lower(b"te")
            || lower(b"trailer")
            || (lower(b"upgrade") && !switching)
            || (!framing
                && !(switching && (lower(b"upgrade") || lower(b"connection")))
                && nominated.iter().any(|t| t.eq_ignore_ascii_case(n)));
        if hop || (dechunk && lower(b"transfer-encoding")) || edits.drops(n) {
            continue;
        }
        codec::put_field(out, n, v);
    }
    for (n, v) in &edits.add {
        codec::put_field(out, n.as_str().as_bytes(), v.as_bytes());
    }
    if rechunk {
        out.put_slice(b"transfer-encoding: chunked\r\n");
    }
    if let Some(c) = connection {
        codec::put_field(out, b"connection", c);
    }
    out.put_slice(b"\r\n");
}

/// How a response body is relayed.
#[derive(Debug)]
enum Relay {
    None,
    Length(u64),
    Chunked(Chunked),
    /// Read until the backend closes, chunk-encode for an HTTP/1.1 client.
    Rechunk,
    /// Read until the backend closes, as is (HTTP/1.0 client, closed after).
    Close,
    /// Chunked from the backend, decoded for an HTTP/1.0 client.
    Dechunk(Chunked),
    /// Decoded from the backend's framing, compressed, and sent chunked (HTTP/1.1) or
    /// close-delimited (HTTP/1.0).
    Compress(Box<Compressing>),
}

/// A response body being compressed on its way.
#[derive(Debug)]
struct Compressing {
    /// The backend's framing, decoded: bytes left of a length, or a chunked decoder, or
    /// `None` for a body that ends when the backend closes.
    left: Option<u64>,
    chunked: Option<Chunked>,
    encoder: crate::compress::Encoder,
    /// Whether the client gets chunks (else raw bytes, then close).
    chunk_out: bool,
}

impl Compressing {
    fn new(framing: Framing, encoder: crate::compress::Encoder) -> Self {
        let (left, chunked) = match framing {
            Framing::Length(n) => (Some(n), None),
            Framing::Chunked => (None, Some(Chunked::default())),
            Framing::None => (Some(0), None),
            Framing::Close => (None, None),
        };
        Self {
            left,
            chunked,
            encoder,
            chunk_out: true,
        }
    }

    fn put(&self, out: &mut BytesMut, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if self.chunk_out {
            put_hex(out, data.len());
            out.put_slice(b"\r\n");
            out.put_slice(data);
            out.put_slice(b"\r\n");
        } else {
            out.put_slice(data);
        }
    }

    /// Takes what `rbuf` holds of the body, compresses it into `out`; `Ok(true)` once the
    /// body has ended (the last compressed bytes and the final chunk are in `out`).
    fn step(&mut self, rbuf: &mut BytesMut, out: &mut BytesMut, eof: bool) -> Result<bool, String> {
        let mut plain = BytesMut::new();
        let done;
        if let Some(c) = &mut self.chunked {
            let mut at = 0;
            while at < rbuf.len() && !c.done() {
                let step = c
                    .advance(&rbuf[at..])
                    .map_err(|e| format!("malformed chunked body: {e}"))?;
                if let Some((s, e)) = step.data {
                    plain.extend_from_slice(&rbuf[at + s..at + e]);
                }
                if step.consumed == 0 {
                    break;
                }
                at += step.consumed;
            }
            let _ = rbuf.split_to(at);
            done = c.done();
        } else if let Some(left) = &mut self.left {
            let n = (*left).min(rbuf.len() as u64) as usize;
            plain.extend_from_slice(&rbuf.split_to(n));
            *left -= n as u64;
            done = *left == 0;
        } else {
            plain.extend_from_slice(&rbuf.split());
            done = eof;
        }
        if eof && !done {
            return Err("the backend closed the connection mid-body".into());
        }
        let encoded = self.encoder.encode(&plain, done)?;
        self.put(out, &encoded);
        if done && self.chunk_out {
            out.put_slice(b"0\r\n\r\n");
        }
        Ok(done)
    }
}

impl From<Framing> for Relay {
    fn from(f: Framing) -> Self {
        match f {
            Framing::None => Relay::None,
            Framing::Length(n) => Relay::Length(n),
            Framing::Chunked => Relay::Chunked(Chunked::default()),
            Framing::Close => Relay::Close,
        }
    }
}

struct Pumped {
    bytes: u64,
    up_done: bool,
    client_failed: bool,
    up_error: Option<String>,
}

/// Relays the response body from the backend to the client; the response head is in
/// `client.wbuf` and goes out with the first body bytes.
async fn relay_body<S: ClientIo>(
    client: &mut Client<S>,
    conn: &mut UpConn,
    mut mode: Relay,
    read_timeout: Duration,
    head_only: bool,
) -> Pumped {
    let mut p = Pumped {
        bytes: 0,
        up_done: false,
        client_failed: false,
        up_error: None,
    };
    if head_only {
        mode = Relay::None;
    }
    loop {
        // Move what the buffer holds into the client's write buffer.
        let mut finished = false;
        match &mut mode {
            Relay::None => finished = true,
            Relay::Length(left) => {
                let n = (*left).min(conn.rbuf.len() as u64) as usize;
                if n > 0 {
                    let chunk = conn.rbuf.split_to(n);
                    client.wbuf.put_slice(&chunk);
                    *left -= n as u64;
                    p.bytes += n as u64;
                }
                finished = *left == 0;
            }
            Relay::Chunked(c) => match c.scan(&conn.rbuf) {
                Ok(n) => {
                    let chunk = conn.rbuf.split_to(n);
                    client.wbuf.put_slice(&chunk);
                    p.bytes += n as u64;
                    finished = c.done();
                }
                Err(e) => {
                    p.up_error = Some(format!("malformed chunked body: {e}"));
                    let _ = client.flush_wbuf().await;
                    return p;
                }
            },
            Relay::Dechunk(c) => {
                let mut at = 0;
                while at < conn.rbuf.len() && !c.done() {
                    match c.advance(&conn.rbuf[at..]) {
                        Ok(step) => {
                            if let Some((s, e)) = step.data {
                                client.wbuf.put_slice(&conn.rbuf[at + s..at + e]);
                                p.bytes += (e - s) as u64;
                            }
                            if step.consumed == 0 {
                                break;
                            }
                            at += step.consumed;
                        }
                        Err(e) => {
                            p.up_error = Some(format!("malformed chunked body: {e}"));
                            let _ = client.flush_wbuf().await;
                            return p;
                        }
                    }
                }
                let _ = conn.rbuf.split_to(at);
                finished = c.done();
            }
            Relay::Compress(c) => {
                let before = client.wbuf.len();
                match c.step(&mut conn.rbuf, &mut client.wbuf, false) {
                    Ok(done) => {
                        finished = done;
                        p.bytes += (client.wbuf.len() - before) as u64;
                    }
                    Err(e) => {
                        p.up_error = Some(e);
                        let _ = client.flush_wbuf().await;
                        return p;
                    }
                }
            }
            Relay::Rechunk | Relay::Close => {
                if !conn.rbuf.is_empty() {
                    let chunk = conn.rbuf.split();
                    if matches!(mode, Relay::Rechunk) {
                        put_hex(&mut client.wbuf, chunk.len());
                        client.wbuf.put_slice(b"\r\n");
                        client.wbuf.put_slice(&chunk);
                        client.wbuf.put_slice(b"\r\n");
                    } else {
                        client.wbuf.put_slice(&chunk);
                    }
                    p.bytes += chunk.len() as u64;
                }
            }
        }
        if finished {
            p.up_done = true;
            if client.flush_wbuf().await.is_err() {
                p.client_failed = true;
            }
            return p;
        }
        if !client.wbuf.is_empty() && client.flush_wbuf().await.is_err() {
            p.client_failed = true;
            return p;
        }
        conn.rbuf.reserve(32 * 1024);
        match tokio::time::timeout(read_timeout, conn.io.read_buf(&mut conn.rbuf)).await {
            Err(_) => {
                p.up_error = Some("the backend stopped sending the body".into());
                return p;
            }
            Ok(Ok(0)) => {
                if let Relay::Compress(c) = &mut mode {
                    match c.step(&mut conn.rbuf, &mut client.wbuf, true) {
                        Ok(_) => {
                            if client.flush_wbuf().await.is_err() {
                                p.client_failed = true;
                            }
                        }
                        Err(e) => p.up_error = Some(e),
                    }
                    // Close-delimited: the connection is not reusable.
                    return p;
                }
                if matches!(mode, Relay::Rechunk | Relay::Close) {
                    if matches!(mode, Relay::Rechunk) {
                        client.wbuf.put_slice(b"0\r\n\r\n");
                    }
                    if client.flush_wbuf().await.is_err() {
                        p.client_failed = true;
                    }
                    // Close-delimited: the connection is not reusable.
                    return p;
                }
                p.up_error = Some("the backend closed the connection mid-body".into());
                return p;
            }
            Ok(Err(e)) => {
                p.up_error = Some(format!("reading the body failed: {e}"));
                return p;
            }
            Ok(Ok(_)) => {}
        }
    }
}

/// Writes `n` in lower-case hex (a chunk size).
fn put_hex(out: &mut BytesMut, n: usize) {
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.put_u8(b"0123456789abcdef"[(n >> (i * 4)) & 0xf]);
    }
}

/// Reads a whole (small) response body; `None` if it is larger than `max` or fails.
async fn read_whole(
    conn: &mut UpConn,
    framing: Framing,
    max: usize,
    timeout: Duration,
) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut chunked = Chunked::default();
    loop {
        match framing {
            Framing::None => return Some(out),
            Framing::Length(n) => {
                if n as usize > max {
                    return None;
                }
                if conn.rbuf.len() as u64 >= n {
                    out.extend_from_slice(&conn.rbuf.split_to(n as usize));
                    return Some(out);
                }
            }
            Framing::Chunked => {
                let mut at = 0;
                while at < conn.rbuf.len() && !chunked.done() {
                    let step = chunked.advance(&conn.rbuf[at..]).ok()?;
                    if let Some((s, e)) = step.data {
                        out.extend_from_slice(&conn.rbuf[at + s..at + e]);
                    }
                    if step.consumed == 0 {
                        break;
                    }
                    at += step.consumed;
                }
                let _ = conn.rbuf.split_to(at);
                if chunked.done() {
                    return Some(out);
                }
                if out.len() > max {
                    return None;
                }
            }
            Framing::Close => {
                out.extend_from_slice(&conn.rbuf.split());
                if out.len() > max {
                    return None;
                }
            }
        }
        conn.rbuf.reserve(16 * 1024);
        match tokio::time::timeout(timeout, conn.io.read_buf(&mut conn.rbuf)).await {
            Ok(Ok(0)) if framing == Framing::Close => return Some(out),
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

/// Sends `count` bytes of a file from `start` to the client.
async fn send_file<S: ClientIo>(
    client: &mut Client<S>,
    path: &std::path::Path,
    start: u64,
    count: u64,
) -> io::Result<u64> {
    let file = tokio::fs::File::open(path).await?.into_std().await;
    if let Some(tcp) = client.io.tcp() {
        return sendfile(tcp, &file, start, count).await;
    }
    copy_file(&mut client.io, file, start, count).await
}

/// `sendfile(2)` from `file` to a plain socket: the kernel moves page-cache pages to the
/// socket with no copy through Portico. Like nginx without `aio threads`, a read of a page
/// not in the page cache blocks this worker thread for the disk; files served this way are
/// the ones too large for the memory cache.
async fn sendfile(
    tcp: &tokio::net::TcpStream,
    file: &std::fs::File,
    start: u64,
    count: u64,
) -> io::Result<u64> {
    use nix::sys::sendfile::sendfile as sys_sendfile;
    let mut offset =
        i64::try_from(start).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut sent = 0;
    while sent < count {
        // At most 1 MiB per call, so one large file does not hold the thread for long.
        let want = (count - sent).min(1 << 20) as usize;
        tcp.writable().await?;
        let res = tcp.try_io(tokio::io::Interest::WRITABLE, || {
            sys_sendfile(tcp, file, Some(&mut offset), want).map_err(io::Error::from)
        });
        match res {
            // The file shrank under us: the answer cannot be completed honestly.
            Ok(0) => return Ok(sent),
            Ok(n) => sent += n as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

/// Copies `count` bytes of `file` from `start` through a buffer (TLS: the bytes must be
/// encrypted in user space, so `sendfile` cannot apply). Reads run on the blocking pool.
async fn copy_file<W: tokio::io::AsyncWrite + Unpin>(
    out: &mut W,
    file: std::fs::File,
    start: u64,
    count: u64,
) -> io::Result<u64> {
    use tokio::io::AsyncSeekExt;
    let mut file = tokio::fs::File::from_std(file);
    if start > 0 {
        file.seek(io::SeekFrom::Start(start)).await?;
    }
    let mut left = count;
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = file.read(&mut buf[..want]).await?;
        if n == 0 {
            // The file shrank under us: the answer cannot be completed honestly.
            return Ok(sent);
        }
        out.write_all(&buf[..n]).await?;
        left -= n as u64;
        sent += n as u64;
    }
    Ok(sent)
}

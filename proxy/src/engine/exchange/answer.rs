//! What the exchange does with a backend's answer (forward it, replay, retry, hand off a
//! tunnel) and with Portico's own failures.

use bytes::Bytes;
use http::{Method, Version};
use smallvec::SmallVec;
use tokio::io::AsyncWriteExt;

use crate::engine::chunked::Chunked;
use crate::engine::codec::{self, Framing};
use crate::engine::upstream::UpConn;
use crate::engine::{pool, Client, ClientIo, CLIENT_IO_TIMEOUT};
use crate::proxy::ctx::LocalFailure;
use crate::proxy::{respond, websocket};
use crate::wsclose::Frames;

use super::*;

impl Exchange<'_> {
    /// A final response head arrived (it is at the start of `conn.rbuf`): replay inspection,
    /// the response path's decisions, and the answer to the client.
    ///
    /// The usual answer is forwarded from its bytes, its fields filtered and the request
    /// path's edits added as they are written. A header map is built only when the answer
    /// may hold a fly-replay instruction.
    pub(super) async fn after_response_head<S: ClientIo>(
        &mut self,
        client: &mut Client<S>,
        mut conn: UpConn,
        resp: &codec::Response,
        up_cfg: &portico_config::Upstream,
    ) -> Result<Option<After>, AttemptError> {
        let app = self.app;
        let status = resp.status;
        let framing = resp.body;
        let up_keep_alive = resp.keep_alive;
        self.ctx.upstream_status = Some(status);
        let answered_at = std::time::Instant::now();
        self.ctx.upstream_time = self
            .ctx
            .connect_started
            .map(|t| answered_at.saturating_duration_since(t));
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
        let m = resp.replay_markers;
        let may_replay = self.ctx.snap.config.replay.enabled
            && (m.header || m.json || (self.ctx.replay.cache_key.is_some() && m.cache));
        let mapped = if may_replay {
            let mut head = resp
                .to_header(buf)
                .map_err(|e| AttemptError::BadResponse(e.0))?;
            let _ = conn.rbuf.split_to(resp.head_len);
            self.give_back = false;
            // Boxed: a rare path, kept out of the future every request carries.
            let checked = Box::pin(self.replay_check(
                client,
                &mut conn,
                &mut head,
                framing,
                up_keep_alive,
                up_cfg,
            ))
            .await;
            if self.give_back {
                pool::give(conn, up_cfg.idle_timeout, answered_at);
                return checked.map(|c| c.unwrap_or(None));
            }
            if let Some(after) = checked? {
                return Ok(after);
            }
            Some(head)
        } else {
            None
        };
        let switching = status == 101;
        let Plan {
            mode,
            close_after,
            head_only,
        } = self.answer_head(client, &mut conn, resp, mapped)?;
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
            pool::give(conn, up_cfg.idle_timeout, answered_at);
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

    /// The response path's decisions for a forwarded answer (edits, compression, framing to
    /// this client) and its head written into `client.wbuf`. Synchronous on purpose: the
    /// edits (over a kilobyte) and the header map live only here, not in the future every
    /// request carries across its awaits.
    fn answer_head<S: ClientIo>(
        &mut self,
        client: &mut Client<S>,
        conn: &mut UpConn,
        resp: &codec::Response,
        mapped: Option<pingora_http::ResponseHeader>,
    ) -> Result<Plan, AttemptError> {
        let app = self.app;
        let status = resp.status;
        let framing = resp.body;
        let switching = status == 101;
        if switching && !self.upgrade {
            return Err(AttemptError::BadResponse(
                "101 Switching Protocols to a request that did not ask for it".into(),
            ));
        }
        websocket::on_response(&mut self.ctx, status);
        let mut edits = crate::proxy::edits::Edits::default();
        respond::add_common_edits(&self.ctx, &mut edits);
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
                    edits.drop_name(n.clone());
                }
                edits.extend_add(plan.add);
                plan.encoder
            }
            _ => None,
        };
        if let Some(enc) = encoder {
            // The body is decoded from the backend's framing and re-framed here: chunked to
            // an HTTP/1.1 client, close-delimited to an HTTP/1.0 one.
            edits.drop_name(http::header::TRANSFER_ENCODING);
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
                    None,
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
                    // Filled in place: `collect` built the 768-byte vector aside and then
                    // moved it (a memcpy of 100 instructions per response).
                    let mut fields: SmallVec<[(&[u8], &[u8]); 24]> = SmallVec::new();
                    fields.extend(resp.fields(buf));
                    write_client_head(
                        wbuf,
                        client_version,
                        status,
                        resp.reason(buf),
                        &fields,
                        Some(buf),
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
        Ok(Plan {
            mode,
            close_after,
            head_only,
        })
    }

    /// fly-replay: the header form ends the attempt here, the JSON form once its body is in.
    /// `Ok(Some(answer))` when the attempt is over (a replay to run: `Some(None)`; a refused
    /// one: its answer), `Ok(None)` when the response goes to the client.
    pub(super) async fn replay_check<S: ClientIo>(
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
    pub(super) async fn answer_failure<S: ClientIo>(
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
                .http
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
}

/// How a forwarded answer's body goes to the client, decided with its head.
pub(super) struct Plan {
    mode: Relay,
    close_after: bool,
    head_only: bool,
}

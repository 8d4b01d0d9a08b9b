//! One attempt on a backend: connect or reuse, the request head in one write, the body
//! streamed with a copy kept for replays, and the answer's head read.

use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING, UPGRADE};
use http::Version;
use smallvec::SmallVec;
use tokio::io::AsyncWriteExt;

use crate::engine::codec;
use crate::engine::upstream::{self, PoolKey, UpConn};
use crate::engine::{pool, Client, ClientIo};

use super::*;

impl Exchange<'_> {
    /// One attempt on the backend chosen in `ctx.lease`. `Ok(Some)`: the answer went to the
    /// client. `Ok(None)`: the backend asked for a replay; try again.
    pub(super) async fn attempt<S: ClientIo>(
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
            pool::take(&key, self.ctx.connect_started.unwrap_or_else(Instant::now))
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
                .read_response_head(&mut conn, &mut client.up_timer, up_cfg.read_timeout)
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
        self.after_response_head(client, conn, &resp, up_cfg).await
    }

    /// Writes the request head for the backend: the client's fields without the ones that
    /// describe the client's connection (RFC 9110 section 7.6.1) or that the request path's
    /// edits replace, then the edits' own fields (forwarding headers, route rules, replay
    /// headers). No second header map is built.
    pub(super) fn write_upstream_head(&self, out: &mut BytesMut) -> Result<(), String> {
        let mut e = crate::proxy::edits::Edits::default();
        self.app
            .request_edits(&self.head, &self.ctx, &mut e)
            .map_err(|e| e.to_string())?;
        out.put_slice(self.head.method.as_str().as_bytes());
        out.put_u8(b' ');
        out.put_slice(e.target.as_deref().unwrap_or(self.head.raw_path()));
        out.put_slice(b" HTTP/1.1\r\n");
        let listed = self.ctx.names.may_have(&CONNECTION);
        let nominated: SmallVec<[&[u8]; 4]> = listed
            .then(|| self.head.headers.get_all(CONNECTION))
            .into_iter()
            .flat_map(|all| all.iter())
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
        for (n, v) in e.added() {
            codec::put_field(out, n.as_str().as_bytes(), v.as_bytes());
        }
        if let Some(block) = &e.block {
            out.put_slice(block);
        }
        out.put_slice(b"\r\n");
        Ok(())
    }

    pub(super) async fn write_up(
        &self,
        conn: &mut UpConn,
        bytes: &[u8],
        timeout: Duration,
        _reused: bool,
    ) -> Result<(), AttemptError> {
        let mut write = std::pin::pin!(conn.io.write_all(bytes));
        // A head (and a small body) almost always goes out in one write: try it before a
        // timer is made (which reads the clock and, if the write waits, registers it).
        let done = futures::FutureExt::now_or_never(write.as_mut());
        let result = match done {
            Some(r) => Ok(r),
            None => tokio::time::timeout(timeout, write).await,
        };
        match result {
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
    pub(super) async fn stream_body<S: ClientIo>(
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

    pub(super) async fn read_response_head(
        &self,
        conn: &mut UpConn,
        timer: &mut crate::engine::deadline::Deadline,
        timeout: Duration,
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
            match conn.read_within(timer, timeout).await {
                None => {
                    return Err(AttemptError::Failed {
                        message: format!(
                            "no answer within the read timeout ({})",
                            portico_config::units::format_duration(timeout)
                        ),
                        timeout: true,
                    })
                }
                Some(Ok(0)) => {
                    return Err(AttemptError::Failed {
                        message: "connection closed before a response".into(),
                        timeout: false,
                    })
                }
                Some(Err(e)) => {
                    return Err(AttemptError::Failed {
                        message: format!("reading the response failed: {e}"),
                        timeout: false,
                    })
                }
                Some(Ok(_)) => {}
            }
        }
    }
}

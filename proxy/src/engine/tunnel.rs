//! Upgraded connections (WebSockets): once the backend answered `101`, the HTTP exchange
//! hands the two sockets over as a [`Tunnel`] and ends; the tunnel runs as a task of its own
//! and relays bytes both ways until either side closes.
//!
//! An idle tunnel is small: the connection's HTTP state (request head, context, the
//! exchange's future, read and write buffers) is gone with the task that served the
//! handshake, and on plain TCP the relay waits for a socket to become readable before it
//! takes a buffer, for as long as the bytes take to forward. A TLS client connection is read
//! through the TLS stream, which needs a buffer to wait with; it gets a small one. The
//! `portico_websocket_buffer_bytes` gauge shows what tunnels hold.
//!
//! The relay follows the client's WebSocket frames, so that at the shutdown deadline or after
//! `ws_idle_timeout` without traffic it can send the backend a close frame (1001, going
//! away) between two client frames; the backend's own close frame reaches the client, and
//! both see a closing handshake. The connection ends [`CLOSE_GRACE`] later at most.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use prometheus::{Histogram, IntCounter, IntGauge};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::upstream::UpIo;
use super::{ClientIo, CLIENT_IO_TIMEOUT};
use crate::proxy::access;
use crate::proxy::ctx::InFlight;
use crate::proxy::websocket::WsState;
use crate::state::Shared;
use crate::upstream::Lease;
use crate::wsclose::{close_frame, ConnState, Frames};

/// How long peers get to finish a closing handshake Portico started.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Bytes read at once.
const CHUNK: usize = 16 * 1024;
/// Buffer a TLS client read waits with.
const TLS_WAIT: usize = 2 * 1024;

/// What the HTTP exchange hands over once the backend switched protocols.
pub struct Handoff {
    /// The backend connection.
    pub up: UpIo,
    /// Where the client's bytes stand in its frames (the handshake's early bytes counted).
    pub frames: Frames,
    /// The route's `ws_idle_timeout`.
    pub idle: Option<Duration>,
    /// What the tunnel keeps of its request.
    pub end: End,
}

/// An upgraded connection, out of the HTTP exchange that set it up.
pub struct Tunnel<S> {
    client: S,
    h: Handoff,
}

/// What a tunnel keeps of its request: the admission slot, backend lease and in-flight count
/// it holds until it closes, and what its end records (metrics, the access-log line).
pub struct End {
    /// Admission slot and byte counters.
    pub ws: WsState,
    /// The backend's in-flight count (least_requests sees open tunnels as load); held, never
    /// read: dropping it when the tunnel closes gives the slot back.
    pub _lease: Option<Lease>,
    /// The request counts as in flight until the tunnel closes.
    pub _in_flight: InFlight,
    /// Request id, for debug lines.
    pub request_id: Box<str>,
    /// The route's 1xx request counter.
    pub requests: IntCounter,
    /// The route's request duration histogram.
    pub duration: Histogram,
    /// When the request head arrived.
    pub start: std::time::Instant,
    /// The access-log fields, when the access log is on.
    pub log: Option<Box<access::Owned>>,
    /// Upstream-to-client bytes before the tunnel started (the handshake's early bytes).
    pub bytes_out: u64,
}

impl End {
    fn finish(self) {
        self.requests.inc();
        let elapsed = self.start.elapsed();
        self.duration.observe(elapsed.as_secs_f64());
        if let Some(log) = &self.log {
            access::write(&log.fields(), 101, self.bytes_out, elapsed);
        }
    }
}

impl<S: ClientIo> Tunnel<S> {
    /// The tunnel between `client` and the handed-over backend connection.
    pub fn new(client: S, h: Handoff) -> Self {
        Self { client, h }
    }

    /// Relays bytes between the client and the backend until both sides are done, then
    /// records the request's end.
    pub async fn run(self, shared: Arc<Shared>) {
        let Tunnel {
            mut client,
            h:
                Handoff {
                    mut up,
                    mut frames,
                    idle,
                    mut end,
                },
        } = self;
        let state = Arc::new(ConnState::default());
        shared.ws_conns.register(&state);
        let gauge = &shared.metrics.websockets.websocket_buffer_bytes;
        relay(
            &mut client,
            &mut up,
            &mut frames,
            idle,
            &mut end,
            &state,
            gauge,
        )
        .await;
        end.finish();
    }
}

/// A relay buffer, counted in `portico_websocket_buffer_bytes` while it lives.
struct Held<'a> {
    buf: BytesMut,
    counted: usize,
    gauge: &'a IntGauge,
}

impl<'a> Held<'a> {
    fn new(size: usize, gauge: &'a IntGauge) -> Self {
        gauge.add(size as i64);
        Held {
            buf: BytesMut::with_capacity(size),
            counted: size,
            gauge,
        }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.gauge.sub(self.counted as i64);
    }
}

enum Event<'a> {
    /// Bytes from the client (empty: it closed its side).
    FromClient(Held<'a>),
    /// Bytes from the backend (empty: it closed its side).
    FromUpstream(Held<'a>),
    /// A shutdown asked for a close.
    Closing,
    /// Nothing moved for `ws_idle_timeout`.
    Idle,
    /// The closing handshake's time is up.
    Done,
    /// A read failed.
    Failed,
}

/// Reads from the client without holding a buffer while waiting (plain TCP).
async fn read_client<'g, S: ClientIo>(client: &mut S, gauge: &'g IntGauge) -> Option<Held<'g>> {
    if let Some(tcp) = client.tcp() {
        loop {
            if tcp.readable().await.is_err() {
                return None;
            }
            let mut held = Held::new(CHUNK, gauge);
            match tcp.try_read_buf(&mut held.buf) {
                Ok(_) => return Some(held),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return None,
            }
        }
    }
    let mut held = Held::new(TLS_WAIT, gauge);
    match client.read_buf(&mut held.buf).await {
        Ok(_) => Some(held),
        Err(_) => None,
    }
}

/// Reads from the backend, waiting on the TCP socket's readiness first.
async fn read_upstream<'g>(up: &mut UpIo, gauge: &'g IntGauge) -> Option<Held<'g>> {
    loop {
        if up.tcp().readable().await.is_err() {
            return None;
        }
        let mut held = Held::new(CHUNK, gauge);
        match up {
            UpIo::Plain(t) => match t.try_read_buf(&mut held.buf) {
                Ok(_) => return Some(held),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return None,
            },
            // Readable TCP under TLS: a record (or part of one) is there, the read does not
            // wait long with its buffer.
            UpIo::Tls(t) => {
                return match t.read_buf(&mut held.buf).await {
                    Ok(_) => Some(held),
                    Err(_) => None,
                }
            }
        }
    }
}

async fn write_all<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, data: &[u8]) -> bool {
    matches!(
        tokio::time::timeout(CLIENT_IO_TIMEOUT, w.write_all(data)).await,
        Ok(Ok(()))
    )
}

async fn relay<S: ClientIo>(
    client: &mut S,
    up: &mut UpIo,
    frames: &mut Frames,
    idle: Option<Duration>,
    end: &mut End,
    state: &ConnState,
    gauge: &IntGauge,
) {
    let mut last_active = Instant::now();
    let mut close_wanted = false;
    let mut close_sent = false;
    let mut deadline: Option<Instant> = None;
    let mut client_open = true;
    loop {
        let idle_at = idle.map(|d| last_active + d);
        let event = tokio::select! {
            b = read_client(client, gauge), if client_open => match b {
                Some(b) => Event::FromClient(b),
                None => Event::Failed,
            },
            b = read_upstream(up, gauge) => match b {
                Some(b) => Event::FromUpstream(b),
                None => Event::Failed,
            },
            _ = state.wait_closing(), if !close_wanted => Event::Closing,
            _ = tokio::time::sleep_until(idle_at.unwrap_or_else(Instant::now)), if idle_at.is_some() && !close_wanted => Event::Idle,
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => Event::Done,
        };
        match event {
            Event::FromClient(b) if b.buf.is_empty() => {
                // The client is done sending: the backend may still answer (a WebSocket
                // server closes after the client's close), for a little while.
                client_open = false;
                let _ = up.shutdown().await;
                deadline.get_or_insert_with(|| Instant::now() + CLOSE_GRACE);
            }
            Event::FromClient(b) => {
                last_active = Instant::now();
                if !close_sent {
                    frames.advance(&b.buf);
                }
                end.ws.count_in(b.buf.len());
                if !write_all(up, &b.buf).await {
                    return;
                }
            }
            Event::FromUpstream(b) if b.buf.is_empty() => {
                // The backend closed: the tunnel is over (a WebSocket client waits for the
                // server to close the connection, as RFC 6455 asks).
                let _ = client.shutdown().await;
                return;
            }
            Event::FromUpstream(b) => {
                last_active = Instant::now();
                end.ws.count_out(b.buf.len());
                end.bytes_out += b.buf.len() as u64;
                if !write_all(client, &b.buf).await {
                    return;
                }
            }
            Event::Closing | Event::Idle => {
                if matches!(event, Event::Idle) {
                    tracing::debug!(
                        request_id = &*end.request_id,
                        "WebSocket idle: closing with close frames"
                    );
                }
                close_wanted = true;
                deadline = Some(Instant::now() + CLOSE_GRACE);
            }
            Event::Done | Event::Failed => return,
        }
        // A close is due: sent between two client frames, as if the client had sent it.
        if close_wanted && !close_sent && frames.at_boundary() {
            close_sent = true;
            if !write_all(up, &close_frame()).await {
                return;
            }
        }
    }
}

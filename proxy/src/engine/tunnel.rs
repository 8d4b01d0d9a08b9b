//! Upgraded connections (WebSockets): once the backend answered `101`, bytes are relayed both
//! ways until either side closes.
//!
//! An idle tunnel holds no data buffer: on plain TCP the relay waits for the socket to become
//! readable and only then takes a buffer, for as long as the bytes take to forward (the HTTP
//! state that served the handshake is dropped before). A TLS client connection is read
//! through pingora's TLS stream, which needs a buffer to wait with; it gets a small one.
//!
//! Like the pingora path, the relay follows the client's WebSocket frames, so that at the
//! shutdown deadline or after `ws_idle_timeout` without traffic it can send the backend a
//! close frame (1001, going away) between two client frames; the backend's own close frame
//! reaches the client, and both see a closing handshake. The connection ends
//! [`CLOSE_GRACE`] later at most.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::upstream::UpConn;
use super::{Client, ClientIo, CLIENT_IO_TIMEOUT};
use crate::proxy::ctx::RequestCtx;
use crate::proxy::websocket;
use crate::server::wsclose::{close_frame, ConnState, Frames};
use crate::state::Shared;

/// How long peers get to finish a closing handshake Portico started.
pub const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// Bytes read at once.
const CHUNK: usize = 16 * 1024;
/// Buffer a TLS client read waits with.
const TLS_WAIT: usize = 2 * 1024;

enum Event {
    /// Bytes from the client (empty: it closed its side).
    FromClient(BytesMut),
    /// Bytes from the backend (empty: it closed its side).
    FromUpstream(BytesMut),
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
async fn read_client<S: ClientIo>(client: &mut Client<S>) -> Option<BytesMut> {
    if let Some(tcp) = client.io.tcp() {
        loop {
            if tcp.readable().await.is_err() {
                return None;
            }
            let mut buf = BytesMut::with_capacity(CHUNK);
            match tcp.try_read_buf(&mut buf) {
                Ok(_) => return Some(buf),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return None,
            }
        }
    }
    let mut buf = BytesMut::with_capacity(TLS_WAIT);
    match client.io.read_buf(&mut buf).await {
        Ok(_) => Some(buf),
        Err(_) => None,
    }
}

/// Reads from the backend, waiting on the TCP socket's readiness first.
async fn read_upstream(conn: &mut UpConn) -> Option<BytesMut> {
    loop {
        if conn.io.tcp().readable().await.is_err() {
            return None;
        }
        let mut buf = BytesMut::with_capacity(CHUNK);
        match &mut conn.io {
            super::upstream::UpIo::Plain(t) => match t.try_read_buf(&mut buf) {
                Ok(_) => return Some(buf),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return None,
            },
            super::upstream::UpIo::Tls(t) => {
                return match t.read_buf(&mut buf).await {
                    Ok(_) => Some(buf),
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

/// Relays bytes between the client and the backend until both sides are done.
pub async fn relay<S: ClientIo>(
    client: &mut Client<S>,
    mut conn: UpConn,
    ctx: &RequestCtx,
    shared: &Shared,
    idle: Option<Duration>,
) {
    let state = Arc::new(ConnState::default());
    shared.ws_conns.register(&state);
    let mut frames = Frames::default();
    // Bytes that came with the handshake on either side.
    if !client.rbuf.is_empty() {
        let early = client.rbuf.split();
        frames.advance(&early);
        websocket::count_in(ctx, early.len());
        if !write_all(&mut conn.io, &early).await {
            return;
        }
    }
    if !conn.rbuf.is_empty() {
        let early = conn.rbuf.split();
        websocket::count_out(ctx, early.len());
        if !write_all(&mut client.io, &early).await {
            return;
        }
    }
    // Release what the HTTP exchange held: an idle tunnel keeps no buffer.
    client.rbuf = BytesMut::new();
    client.wbuf = BytesMut::new();
    conn.rbuf = BytesMut::new();
    let mut last_active = Instant::now();
    let mut close_wanted = false;
    let mut close_sent = false;
    let mut deadline: Option<Instant> = None;
    let mut client_open = true;
    loop {
        let idle_at = idle.map(|d| last_active + d);
        let event = tokio::select! {
            b = read_client(client), if client_open => match b {
                Some(b) => Event::FromClient(b),
                None => Event::Failed,
            },
            b = read_upstream(&mut conn) => match b {
                Some(b) => Event::FromUpstream(b),
                None => Event::Failed,
            },
            _ = state.wait_closing(), if !close_wanted => Event::Closing,
            _ = tokio::time::sleep_until(idle_at.unwrap_or_else(Instant::now)), if idle_at.is_some() && !close_wanted => Event::Idle,
            _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => Event::Done,
        };
        match event {
            Event::FromClient(b) if b.is_empty() => {
                // The client is done sending: the backend may still answer (a WebSocket
                // server closes after the client's close), for a little while.
                client_open = false;
                let _ = conn.io.shutdown().await;
                deadline.get_or_insert_with(|| Instant::now() + CLOSE_GRACE);
            }
            Event::FromClient(b) => {
                last_active = Instant::now();
                if !close_sent {
                    frames.advance(&b);
                }
                websocket::count_in(ctx, b.len());
                if !write_all(&mut conn.io, &b).await {
                    return;
                }
            }
            Event::FromUpstream(b) if b.is_empty() => {
                // The backend closed: the tunnel is over (a WebSocket client waits for the
                // server to close the connection, as RFC 6455 asks).
                let _ = client.io.shutdown().await;
                return;
            }
            Event::FromUpstream(b) => {
                last_active = Instant::now();
                websocket::count_out(ctx, b.len());
                if !write_all(&mut client.io, &b).await {
                    return;
                }
            }
            Event::Closing | Event::Idle => {
                if matches!(event, Event::Idle) {
                    tracing::debug!(
                        request_id = ctx.id(),
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
            if !write_all(&mut conn.io, &close_frame()).await {
                return;
            }
        }
    }
}

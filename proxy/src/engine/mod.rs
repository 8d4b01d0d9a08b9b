//! Portico's own HTTP/1.1 data plane: the client connection loop, the exchange with the
//! upstream, and tunnels, written for one read and one write per direction per request.
//!
//! Why not pingora's HTTP/1 proxy loop (which serves HTTP/2 clients still, see
//! [`crate::proxy`]): per request it creates two channels and joins an upstream and a
//! downstream task half, its connection pool tests every connection with a read on release
//! and on reuse and spawns a watch task per idle connection, and an upgraded connection keeps
//! two 64 KiB body buffers for its whole life. Measured with `loadtest/compare`, a bare
//! pingora hop costs 1.7x nginx's CPU per request before Portico adds anything.
//!
//! What is reused: every decision of the request path ([`crate::proxy`]: classification,
//! routing, backend choice, forwarding headers, fly-replay, affinity, static files, limits,
//! access log, metrics) through the same functions the pingora path calls, `httparse` for
//! heads (as pingora does), pingora's header types, rustls, and pingora's TLS acceptor and
//! HTTP/2 for the connections this engine does not take.
//!
//! The layout: [`codec`] parses and writes heads and decides framing; [`chunked`] reads
//! chunked bodies; [`upstream`] connects to backends; [`pool`] keeps idle upstream
//! connections per thread; [`exchange`] runs one request; [`tunnel`] relays upgraded
//! connections; [`deadline`] is a connection's lazily moved timer.

pub mod chunked;
pub mod codec;
pub mod deadline;
pub mod exchange;
pub mod head;
pub mod pool;
pub mod tunnel;
pub mod upstream;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::engine::head::{read_head, HeadError, HeadLimits, Stop};
use crate::proxy::ctx::ConnInfo;
use crate::proxy::Portico;

/// A client connection's transport: plain TCP, or TLS through pingora's acceptor.
pub trait ClientIo: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The TCP socket, when the transport is plain TCP (tunnels then wait on its readiness
    /// instead of holding a buffer).
    fn tcp(&self) -> Option<&TcpStream>;
}

impl ClientIo for TcpStream {
    fn tcp(&self) -> Option<&TcpStream> {
        Some(self)
    }
}

impl ClientIo for pingora_core::protocols::Stream {
    fn tcp(&self) -> Option<&TcpStream> {
        None
    }
}

/// A client connection with its read buffer (kept across requests: pipelined bytes stay in
/// it) and its write buffer (a response head and the first body bytes go out in one write).
pub struct Client<S> {
    /// The transport.
    pub io: S,
    /// Bytes read and not yet used.
    pub rbuf: BytesMut,
    /// Bytes to write.
    pub wbuf: BytesMut,
    /// What the request path knows about the connection.
    pub info: ConnInfo,
    /// Body limits of the listener (as of the current request).
    pub body_limits: BodyLimits,
    /// The connection's deadline while it waits for a request head (one timer for the
    /// connection's life, moved forward per request: see [`head`]).
    pub head_timer: deadline::Deadline,
    /// The deadline of reads from the backend serving the current request (the same
    /// reasoning: one timer, moved forward per read).
    pub up_timer: deadline::Deadline,
}

impl<S: ClientIo> Client<S> {
    /// Writes `wbuf` out and clears it.
    pub async fn flush_wbuf(&mut self) -> std::io::Result<()> {
        if !self.wbuf.is_empty() {
            self.io.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Writes `wbuf` (a response head) and then `body`, with vectored writes: one system
    /// call when the socket takes both, and no copy of the body into `wbuf`. Clears `wbuf`.
    pub async fn write_with(&mut self, body: &[u8]) -> std::io::Result<()> {
        let (mut head_at, mut body_at) = (0, 0);
        while head_at < self.wbuf.len() || body_at < body.len() {
            let bufs = [
                std::io::IoSlice::new(&self.wbuf[head_at..]),
                std::io::IoSlice::new(&body[body_at..]),
            ];
            let n = self.io.write_vectored(&bufs).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            let from_head = (self.wbuf.len() - head_at).min(n);
            head_at += from_head;
            body_at += n - from_head;
        }
        self.wbuf.clear();
        Ok(())
    }
}

/// The limits of one client connection, from its listener (they follow reloads).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time to receive a whole request head.
    pub header_timeout: Duration,
    /// Idle time between requests.
    pub keepalive: Duration,
    /// Largest request head.
    pub max_header_size: usize,
    /// Requests per connection.
    pub max_requests: Option<u32>,
    /// Request body timeouts.
    pub body: BodyLimits,
    /// On shutdown, how long an idle connection waits for a request already on its way.
    pub drain_grace: Duration,
}

/// How slowly a request body may arrive (`body_read_timeout`, `min_body_rate`).
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// Longest wait for the next piece.
    pub read_timeout: Duration,
    /// Slowest average rate, bytes per second: the body must have arrived by `read_timeout`
    /// plus `bytes / min_rate` seconds from its first read.
    pub min_rate: Option<u64>,
}

impl Default for BodyLimits {
    fn default() -> Self {
        BodyLimits {
            read_timeout: portico_config::defaults::BODY_READ_TIMEOUT,
            min_rate: None,
        }
    }
}

/// `wait` from now; a configured time too large for the clock means "no deadline" (about
/// 34 years), never a panic.
pub fn deadline_after(wait: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(wait)
        .unwrap_or_else(|| now + Duration::from_secs(1 << 30))
}

/// Timeout of writes to clients.
pub const CLIENT_IO_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves HTTP/1.1 requests on one client connection until it closes, the client stops
/// sending, or a shutdown ends it between requests. When a backend switches protocols, the
/// connection comes back as a [`tunnel::Tunnel`] for the caller to run as a task of its own.
pub async fn serve<S: ClientIo>(
    io: S,
    info: ConnInfo,
    app: &Portico,
    shutdown: watch::Receiver<bool>,
    mut limits: impl FnMut() -> Limits,
) -> Option<tunnel::Tunnel<S>> {
    let mut client = Client {
        io,
        rbuf: BytesMut::with_capacity(4096),
        wbuf: BytesMut::with_capacity(4096),
        info,
        body_limits: BodyLimits::default(),
        head_timer: deadline::Deadline::new(),
        up_timer: deadline::Deadline::new(),
    };
    let mut shutdown = Stop::new(shutdown);
    let mut served: u32 = 0;
    loop {
        let l = limits();
        let head_limits = HeadLimits {
            idle: if served == 0 {
                l.header_timeout
            } else {
                l.keepalive
            },
            header_timeout: l.header_timeout,
            max_size: l.max_header_size,
            fresh: served == 0,
            drain_grace: l.drain_grace,
        };
        client.body_limits = l.body;
        let read = read_head(
            &mut client.io,
            &mut client.rbuf,
            head_limits,
            &mut shutdown,
            &mut client.head_timer,
        );
        match read.await {
            Ok(()) => {}
            Err(HeadError::Timeout) => {
                reject(app, "header_timeout");
                let _ = crate::engine::head::write_simple_response(
                    &mut client.io,
                    "408 Request Timeout",
                    "408 Request Timeout\nportico: the request head was not received in time\n",
                )
                .await;
                return None;
            }
            Err(HeadError::TooLarge)
                if memchr::memchr(b'\n', &client.rbuf).is_none_or(|i| i > codec::MAX_TARGET) =>
            {
                // The request line is what is too long: a target over the limit (RFC 9112).
                reject(app, "uri_too_long");
                let _ = crate::engine::head::write_simple_response(
                    &mut client.io,
                    "414 URI Too Long",
                    &format!(
                        "414 URI Too Long\nportico: the request line is longer than {} bytes\n",
                        l.max_header_size
                    ),
                )
                .await;
                return None;
            }
            Err(HeadError::TooLarge) => {
                reject(app, "header_too_large");
                let _ = crate::engine::head::write_simple_response(
                    &mut client.io,
                    "431 Request Header Fields Too Large",
                    &format!(
                        "431 Request Header Fields Too Large\nportico: the request head is larger than {} bytes\n",
                        l.max_header_size
                    ),
                )
                .await;
                return None;
            }
            Err(HeadError::Io(e)) => {
                tracing::debug!(error = %e, "reading a request head failed");
                return None;
            }
            Err(HeadError::Idle | HeadError::Truncated | HeadError::Shutdown) => return None,
        }
        served = served.saturating_add(1);
        let last = l.keepalive.is_zero()
            || shutdown.is_set()
            || l.max_requests.is_some_and(|m| served >= m);
        match exchange::handle(app, &mut client, last).await {
            exchange::After::KeepAlive => {}
            exchange::After::Close => {
                let _ = client.io.shutdown().await;
                return None;
            }
            exchange::After::Gone => return None,
            exchange::After::Tunnel(h) => return Some(tunnel::Tunnel::new(client.io, *h)),
        }
    }
}

fn reject(app: &Portico, reason: &str) {
    app.shared
        .metrics
        .http
        .rejected
        .with_label_values(&[reason])
        .inc();
}

/// The peer address of an accepted connection, as the request path wants it.
pub fn conn_info(peer: SocketAddr, local: SocketAddr, tls: Option<&'static str>) -> ConnInfo {
    ConnInfo {
        peer: Some(peer),
        local: Some(local),
        tls,
        http2: false,
        peer_value: Some(crate::proxy::forward::ip_value(
            crate::proxy::forwarded::canonical(peer.ip()),
        )),
    }
}

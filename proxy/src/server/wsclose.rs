//! Closing WebSockets cleanly when a shutdown's grace period ends or a route's
//! `ws_idle_timeout` passes without traffic.
//!
//! Once a connection is upgraded, pingora copies bytes both ways and Portico has no hook to
//! write into either stream. So every HTTP/1.1 client stream is wrapped: after an upgrade, the
//! wrapper follows the client's frame boundaries, and when the shutdown deadline comes it
//! injects a masked close frame (1001, going away) between two client frames, as if the
//! client had sent it. The upstream answers with its own close frame, which reaches the client
//! through the proxy: both peers see a WebSocket close, not a cut TCP connection.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

tokio::task_local! {
    /// The state of the connection whose task is running (HTTP/1.1 connections only).
    static CONN: Arc<ConnState>;
}

/// What the proxy and the shutdown path share about one client connection.
#[derive(Debug, Default)]
pub struct ConnState {
    upgraded: AtomicBool,
    closing: AtomicBool,
    waker: Mutex<Option<Waker>>,
    /// When bytes last moved either way after the upgrade (ms on [`clock_ms`]).
    last_active_ms: AtomicU64,
    /// Wakes relays that wait for a close request (Portico's own HTTP/1.1 engine).
    closed: tokio::sync::Notify,
}

/// A coarse monotonic clock in milliseconds, for idle tracking.
fn clock_ms() -> u64 {
    static EPOCH: std::sync::LazyLock<std::time::Instant> =
        std::sync::LazyLock::new(std::time::Instant::now);
    u64::try_from(EPOCH.elapsed().as_millis()).unwrap_or(u64::MAX)
}

impl ConnState {
    /// Whether a close was asked for (shutdown deadline).
    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Waits until a close is asked for.
    pub async fn wait_closing(&self) {
        loop {
            // Registered before the check, so a close between the two is not missed.
            let n = self.closed.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.is_closing() {
                return;
            }
            n.await;
        }
    }

    fn close(&self) {
        self.closing.store(true, Ordering::Release);
        self.closed.notify_waiters();
        if let Some(w) = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
            w.wake();
        }
    }
}

/// Upgraded connections that may need a close frame.
#[derive(Default)]
pub struct Registry(Mutex<Vec<Weak<ConnState>>>);

impl Registry {
    /// Marks the running connection as upgraded (called when the upstream answers 101).
    /// With `idle`, a watchdog closes it with close frames after that long without traffic.
    pub fn mark_upgraded(&self, idle: Option<Duration>) {
        let _ = CONN.try_with(|c| {
            c.last_active_ms.store(clock_ms(), Ordering::Relaxed);
            if !c.upgraded.swap(true, Ordering::AcqRel) {
                let mut list = self.0.lock().unwrap_or_else(|e| e.into_inner());
                list.retain(|w| w.strong_count() > 0);
                list.push(Arc::downgrade(c));
                if let Some(idle) = idle {
                    tokio::spawn(idle_watch(Arc::downgrade(c), idle));
                }
            }
        });
    }

    /// Registers a tunnel run by Portico's own engine, so a shutdown can ask it to close.
    pub fn register(&self, c: &Arc<ConnState>) {
        let mut list = self.0.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(c));
    }

    /// Asks every open upgraded connection to close; returns how many were asked.
    pub fn close_all(&self) -> usize {
        let list = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        let mut n = 0;
        for c in list.iter().filter_map(Weak::upgrade) {
            c.close();
            n += 1;
        }
        n
    }
}

/// Closes a tunnel with close frames once it has been idle for `idle`: a close frame (1001)
/// goes to the upstream as if the client had sent it, and the upstream's answer reaches the
/// client, so both peers see a closing handshake rather than a cut connection.
async fn idle_watch(conn: Weak<ConnState>, idle: Duration) {
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    loop {
        let Some(c) = conn.upgrade() else { return };
        let last = c.last_active_ms.load(Ordering::Relaxed);
        let due = last.saturating_add(idle_ms);
        let now = clock_ms();
        if now >= due {
            tracing::debug!(idle = ?idle, "WebSocket idle: closing with close frames");
            c.close();
            return;
        }
        drop(c);
        tokio::time::sleep(Duration::from_millis(due - now)).await;
    }
}

/// Runs `fut` (a connection's HTTP/1.1 loop) with `state` as its connection state.
pub async fn scope<F: std::future::Future>(state: Arc<ConnState>, fut: F) -> F::Output {
    CONN.scope(state, fut).await
}

/// Follows WebSocket frame boundaries in one direction.
#[derive(Debug, Default)]
pub struct Frames {
    head: [u8; 14],
    have: usize,
    left: u64,
}

impl Frames {
    /// Whether the bytes seen so far end exactly at a frame boundary.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.left == 0
    }

    /// Follows `data`, the next bytes of the stream.
    pub fn advance(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.left > 0 {
                let n = (self.left.min(data.len() as u64)) as usize;
                self.left -= n as u64;
                data = &data[n..];
                continue;
            }
            self.head[self.have] = data[0];
            self.have += 1;
            data = &data[1..];
            if let Some(len) = payload_len(&self.head[..self.have]) {
                self.have = 0;
                self.left = len;
            }
        }
    }
}

/// The payload length once `head` holds a whole frame header.
fn payload_len(head: &[u8]) -> Option<u64> {
    if head.len() < 2 {
        return None;
    }
    let masked = head[1] & 0x80 != 0;
    let len7 = head[1] & 0x7f;
    let ext = match len7 {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let need = 2 + ext + if masked { 4 } else { 0 };
    if head.len() < need {
        return None;
    }
    Some(match len7 {
        126 => u64::from(u16::from_be_bytes([head[2], head[3]])),
        127 => u64::from_be_bytes(head[2..10].try_into().ok()?),
        n => u64::from(n),
    })
}

/// A masked close frame (FIN, opcode 8, status 1001 "going away"), as a client sends it.
pub fn close_frame() -> [u8; 8] {
    let k = fastrand::u32(..).to_be_bytes();
    [0x88, 0x82, k[0], k[1], k[2], k[3], 0x03 ^ k[0], 0xE9 ^ k[1]]
}

/// A client stream that can inject a close frame after an upgrade.
#[derive(Debug)]
pub struct CloseOnShutdown {
    inner: Stream,
    state: Arc<ConnState>,
    frames: Frames,
    injected: usize,
    frame: [u8; 8],
}

impl CloseOnShutdown {
    /// Wraps a client stream.
    pub fn new(inner: Stream, state: Arc<ConnState>) -> Self {
        Self {
            inner,
            state,
            frames: Frames::default(),
            injected: 0,
            frame: close_frame(),
        }
    }
}

impl AsyncRead for CloseOnShutdown {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let upgraded = this.state.upgraded.load(Ordering::Acquire);
        if upgraded {
            if this.state.closing.load(Ordering::Acquire)
                && this.injected < this.frame.len()
                && this.frames.at_boundary()
            {
                let rest = &this.frame[this.injected..];
                let n = rest.len().min(buf.remaining());
                buf.put_slice(&rest[..n]);
                this.injected += n;
                return Poll::Ready(Ok(()));
            }
            *this.state.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
        }
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if upgraded {
            if let Poll::Ready(Ok(())) = &r {
                if buf.filled().len() > before {
                    this.state
                        .last_active_ms
                        .store(clock_ms(), Ordering::Relaxed);
                }
                if this.injected == 0 {
                    this.frames.advance(&buf.filled()[before..]);
                }
            }
        }
        r
    }
}

impl AsyncWrite for CloseOnShutdown {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.state.upgraded.load(Ordering::Relaxed) && !buf.is_empty() {
            this.state
                .last_active_ms
                .store(clock_ms(), Ordering::Relaxed);
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        if this.state.upgraded.load(Ordering::Relaxed) {
            this.state
                .last_active_ms
                .store(clock_ms(), Ordering::Relaxed);
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for CloseOnShutdown {
    async fn shutdown(&mut self) {
        self.inner.shutdown().await
    }
}

impl UniqueID for CloseOnShutdown {
    fn id(&self) -> pingora_core::protocols::UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for CloseOnShutdown {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }
    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }
    fn selected_alpn_proto(&self) -> Option<pingora_core::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for CloseOnShutdown {
    fn get_timing_digest(&self) -> Vec<Option<pingora_core::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }
    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }
    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for CloseOnShutdown {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for CloseOnShutdown {
    fn get_socket_digest(&self) -> Option<Arc<pingora_core::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
    fn set_socket_digest(&mut self, d: pingora_core::protocols::SocketDigest) {
        self.inner.set_socket_digest(d)
    }
}

#[async_trait]
impl Peek for CloseOnShutdown {
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        self.inner.try_peek(buf).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_boundaries() {
        let mut f = Frames::default();
        assert!(f.at_boundary());
        // Masked text "hi": 2 + 4 + 2 bytes, fed byte by byte.
        let frame = [0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
        for (i, b) in frame.iter().enumerate() {
            f.advance(&[*b]);
            assert_eq!(f.at_boundary(), i == frame.len() - 1, "after byte {i}");
        }
        // 16-bit length: 300 bytes of payload, split across reads, then another frame.
        let mut big = vec![0x82, 0xFE, 0x01, 0x2C, 0, 0, 0, 0];
        big.extend(std::iter::repeat_n(7u8, 300));
        big.extend_from_slice(&frame);
        f.advance(&big[..100]);
        assert!(!f.at_boundary());
        f.advance(&big[100..308]);
        assert!(f.at_boundary());
        f.advance(&big[308..]);
        assert!(f.at_boundary());
        // 64-bit length.
        let mut huge = vec![0x82, 0xFF];
        huge.extend_from_slice(&70_000u64.to_be_bytes());
        huge.extend_from_slice(&[0, 0, 0, 0]);
        f.advance(&huge);
        assert!(!f.at_boundary());
        f.advance(&vec![0u8; 70_000]);
        assert!(f.at_boundary());
    }
}

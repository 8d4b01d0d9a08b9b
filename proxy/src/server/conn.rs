//! One client connection: TLS handshake and protocol choice. HTTP/2 (by ALPN, or h2c's
//! preface) is pingora's; HTTP/1.1 is Portico's own engine ([`crate::engine`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pingora_core::apps::ServerApp;
use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::SocketDigest;
use pingora_core::protocols::{GetSocketDigest, Stream, ALPN};
use pingora_proxy::HttpProxy;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify, OwnedSemaphorePermit};

use crate::proxy::Portico;
use crate::state::Shared;

/// Counts open connections so a graceful shutdown knows when everything has drained.
#[derive(Default)]
pub struct Tracker {
    open: AtomicUsize,
    idle: Notify,
}

impl Tracker {
    /// Registers a connection until the guard is dropped.
    pub fn enter(self: &Arc<Self>) -> TrackGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        TrackGuard(self.clone())
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Resolves once no connection is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Keeps a connection counted.
pub struct TrackGuard(Arc<Tracker>);

impl Drop for TrackGuard {
    fn drop(&mut self) {
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// What every connection of one listener shares.
pub struct ListenerCtx {
    /// Listener name.
    pub name: Arc<str>,
    /// The proxy application (pingora's engine: HTTP/2, and HTTP/1.1 unless Portico's own
    /// engine serves it).
    pub proxy: Arc<HttpProxy<Portico>>,
    /// The request path's decisions, for Portico's own HTTP/1.1 engine.
    pub app: Arc<Portico>,
    /// TLS acceptor, for TLS listeners.
    pub tls: Option<Arc<Acceptor>>,
    /// Shared state.
    pub shared: Arc<Shared>,
    /// Open-connection tracking for drain.
    pub tracker: Arc<Tracker>,
    /// Open connections per client address (`max_connections_per_ip`).
    pub per_ip: Arc<PerIp>,
}

/// Open connections per client address of one listener.
#[derive(Debug, Default)]
pub struct PerIp {
    counts: std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
}

impl PerIp {
    /// Counts a connection from `ip` unless it already has `max` open.
    fn enter(self: &Arc<Self>, ip: std::net::IpAddr, max: usize) -> Option<PerIpGuard> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(PerIpGuard(self.clone(), ip))
    }
}

/// Keeps one connection counted for its address.
struct PerIpGuard(Arc<PerIp>, std::net::IpAddr);

impl Drop for PerIpGuard {
    fn drop(&mut self) {
        let mut counts = self.0.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                // No entry outlives its address's last connection: memory follows the
                // connections open.
                counts.remove(&self.1);
            }
        }
    }
}

struct Settings {
    header_timeout: Duration,
    keepalive: Duration,
    body: crate::engine::BodyLimits,
    drain_grace: Duration,
    max_header_size: usize,
    max_requests: Option<u32>,
    h2c: bool,
    proxy_from: Vec<ipnet::IpNet>,
    max_per_ip: Option<usize>,
}

impl Settings {
    fn limits(&self) -> crate::engine::Limits {
        crate::engine::Limits {
            header_timeout: self.header_timeout,
            keepalive: self.keepalive,
            body: self.body,
            drain_grace: self.drain_grace,
            max_header_size: self.max_header_size,
            max_requests: self.max_requests,
        }
    }
}

impl ListenerCtx {
    /// The engine's limits for a connection's next request, from `cache` while the
    /// configuration generation is the one they were made for: finding the listener by
    /// name and copying its settings for every request was about 200 instructions.
    fn limits(&self, cache: &mut Option<(u64, crate::engine::Limits)>) -> crate::engine::Limits {
        let generation = self.shared.current.load().generation;
        match cache {
            Some((g, l)) if *g == generation => *l,
            _ => {
                // Made from a snapshot at least as new as `generation`: at worst the next
                // request makes them again.
                let l = self.settings().limits();
                *cache = Some((generation, l));
                l
            }
        }
    }

    /// Current per-connection settings (they follow config reloads).
    fn settings(&self) -> Settings {
        let snap = self.shared.current.load();
        let drain_grace = snap.config.server.drain_grace;
        match snap.config.listeners.iter().find(|l| *l.name == *self.name) {
            Some(l) => Settings {
                header_timeout: l.header_read_timeout,
                keepalive: l.keepalive_timeout,
                body: crate::engine::BodyLimits {
                    read_timeout: l.body_read_timeout,
                    min_rate: l.min_body_rate,
                },
                drain_grace,
                max_header_size: l.max_header_size,
                max_requests: l.max_requests_per_connection,
                h2c: l.h2c,
                proxy_from: l.proxy_protocol_from.clone(),
                max_per_ip: l.max_connections_per_ip,
            },
            None => Settings {
                header_timeout: portico_config::defaults::HEADER_READ_TIMEOUT,
                keepalive: portico_config::defaults::KEEPALIVE_TIMEOUT,
                body: crate::engine::BodyLimits::default(),
                drain_grace,
                max_header_size: portico_config::defaults::MAX_HEADER_SIZE as usize,
                max_requests: None,
                h2c: false,
                proxy_from: Vec::new(),
                max_per_ip: None,
            },
        }
    }
}

/// Serves one accepted TCP connection until it closes: HTTP/2 (by ALPN, or h2c's preface on
/// plain listeners that allow it) goes to pingora, HTTP/1.1 to Portico's own engine.
pub async fn serve(
    mut tcp: TcpStream,
    mut peer: SocketAddr,
    local: SocketAddr,
    lctx: Arc<ListenerCtx>,
    shutdown: watch::Receiver<bool>,
    permit: OwnedSemaphorePermit,
) {
    let open = lctx
        .shared
        .metrics
        .listeners
        .connections_open
        .with_label_values(&[&lctx.name]);
    open.inc();
    let mut held = Held {
        _tracked: lctx.tracker.enter(),
        _open: Dec(open),
        _permit: permit,
        _per_ip: None,
    };

    // TCP_NODELAY, keepalive and buffer sizes come from the listening socket (accepted sockets
    // inherit them): no system call here.
    let settings = lctx.settings();
    let refuse = |reason: &'static str| {
        lctx.shared
            .metrics
            .http
            .rejected
            .with_label_values(&[reason])
            .inc();
    };
    if !settings.proxy_from.is_empty() {
        if crate::proxy::forwarded::is_trusted(peer.ip(), &settings.proxy_from) {
            match crate::proxyproto::read(&mut tcp, settings.header_timeout).await {
                Ok(Some(client)) => peer = client,
                Ok(None) => {}
                Err(e) => {
                    refuse("proxy_protocol_missing");
                    tracing::debug!(%peer, error = ?e, "connection without a valid PROXY header refused");
                    return;
                }
            }
        } else if crate::proxyproto::refuse_spoofed(&tcp, settings.header_timeout)
            .await
            .is_err()
        {
            refuse("proxy_protocol_untrusted");
            tracing::warn!(%peer, "PROXY header from a source not in proxy_protocol_from refused");
            return;
        }
    }
    if let Some(max) = settings.max_per_ip {
        match lctx
            .per_ip
            .enter(crate::proxy::forwarded::canonical(peer.ip()), max)
        {
            Some(g) => held._per_ip = Some(g),
            None => {
                refuse("connections_per_ip");
                tracing::debug!(%peer, max, "max_connections_per_ip reached; connection closed");
                return;
            }
        }
    }
    let Some(acceptor) = &lctx.tls else {
        // Plain HTTP/1.1 runs straight on the TCP socket.
        let h2c = settings.h2c && {
            const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
            let mut buf = [0u8; PREFACE.len()];
            peek_full(&tcp, &mut buf, settings.header_timeout).await && buf == PREFACE
        };
        if !h2c {
            let info = crate::engine::conn_info(peer, local, None);
            let l = lctx.clone();
            let mut cache = None;
            let tunnel =
                crate::engine::serve(tcp, info, &lctx.app, shutdown, move || l.limits(&mut cache))
                    .await;
            if let Some(t) = tunnel {
                spawn_tunnel(t, &lctx, held);
            }
            return;
        }
        // pingora runs the HTTP/2 connection: streams, flow control and GOAWAY on shutdown.
        lctx.proxy
            .process_new(Box::new(l4(tcp, peer, local)), &shutdown)
            .await;
        return;
    };
    let handshake = acceptor.tls_handshake(l4(tcp, peer, local));
    let stream: Stream = match tokio::time::timeout(settings.header_timeout, handshake).await {
        Ok(Ok(tls)) => Box::new(tls),
        Ok(Err(e)) => {
            lctx.shared
                .metrics
                .listeners
                .tls_handshake_errors
                .with_label_values(&[&lctx.name])
                .inc();
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            lctx.shared
                .metrics
                .listeners
                .tls_handshake_errors
                .with_label_values(&[&lctx.name])
                .inc();
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
        lctx.proxy.process_new(stream, &shutdown).await;
        return;
    }
    let tls = stream
        .get_ssl_digest()
        .map(|d| crate::proxy::tls_version_name(&d.version));
    let info = crate::engine::conn_info(peer, local, tls);
    let l = lctx.clone();
    let mut cache = None;
    let tunnel = crate::engine::serve(stream, info, &lctx.app, shutdown, move || {
        l.limits(&mut cache)
    })
    .await;
    if let Some(t) = tunnel {
        spawn_tunnel(t, &lctx, held);
    }
}

/// What keeps a connection counted: drain tracking, the open-connections gauge and the
/// listener's `max_connections` slot. A tunnel takes them over from its connection.
struct Held {
    _tracked: TrackGuard,
    _open: Dec,
    _permit: OwnedSemaphorePermit,
    _per_ip: Option<PerIpGuard>,
}

struct Dec(prometheus::IntGauge);

impl Drop for Dec {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Runs an upgraded connection as a task of its own: the task that served its HTTP
/// exchange ends, and with it every byte of HTTP state (see [`crate::engine::tunnel`]).
fn spawn_tunnel<S: crate::engine::ClientIo>(
    t: crate::engine::tunnel::Tunnel<S>,
    lctx: &ListenerCtx,
    held: Held,
) {
    let shared = lctx.shared.clone();
    tokio::spawn(async move {
        t.run(shared).await;
        drop(held);
    });
}

/// The TCP socket as pingora's stream, with its addresses known (pingora's TLS and HTTP/2
/// code read them from the stream's digest).
fn l4(tcp: TcpStream, peer: SocketAddr, local: SocketAddr) -> L4Stream {
    let mut l4: L4Stream = tcp.into();
    use std::os::fd::AsRawFd;
    let digest = SocketDigest::from_raw_fd(l4.as_raw_fd());
    let _ = digest.peer_addr.set(Some(peer.into()));
    let _ = digest.local_addr.set(Some(local.into()));
    l4.set_socket_digest(digest);
    l4
}

/// Peeks until `buf` is full (the h2c preface may arrive in pieces), for at most `timeout`.
async fn peek_full(tcp: &TcpStream, buf: &mut [u8], timeout: Duration) -> bool {
    let work = async {
        loop {
            match tcp.peek(buf).await {
                Ok(n) if n >= buf.len() => return true,
                Ok(0) | Err(_) => return false,
                Ok(n) => {
                    // A prefix that already differs cannot become the preface.
                    if buf[..n] != b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..n] {
                        return false;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    };
    tokio::time::timeout(timeout, work).await.unwrap_or(false)
}

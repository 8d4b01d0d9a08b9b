//! One client connection: TLS handshake, protocol choice (HTTP/2 by ALPN or h2c preface,
//! else HTTP/1.1), and the HTTP/1.1 keep-alive loop with Portico's request-head checks.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::listeners::tls::Acceptor;
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::SocketDigest;
use pingora_core::protocols::{GetSocketDigest, Stream, ALPN};
use pingora_proxy::HttpProxy;
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};

use super::head::{read_head, write_simple_response, HeadError, HeadLimits};
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
}

struct Settings {
    header_timeout: Duration,
    keepalive: Duration,
    max_header_size: usize,
    max_requests: Option<u32>,
    h2c: bool,
    engine: portico_config::Engine,
}

/// `PORTICO_ENGINE=portico|pingora` overrides `[server] engine` (to run a test suite on
/// either engine).
fn engine_override() -> Option<portico_config::Engine> {
    static OVERRIDE: std::sync::OnceLock<Option<portico_config::Engine>> =
        std::sync::OnceLock::new();
    *OVERRIDE.get_or_init(|| {
        std::env::var("PORTICO_ENGINE")
            .ok()
            .and_then(|v| portico_config::Engine::parse(v.trim()))
    })
}

impl Settings {
    fn limits(&self) -> crate::engine::Limits {
        crate::engine::Limits {
            header_timeout: self.header_timeout,
            keepalive: self.keepalive,
            max_header_size: self.max_header_size,
            max_requests: self.max_requests,
        }
    }
}

impl ListenerCtx {
    /// Current per-connection settings (they follow config reloads).
    fn settings(&self) -> Settings {
        let snap = self.shared.current.load();
        let engine = engine_override().unwrap_or(snap.config.server.engine);
        match snap.config.listeners.iter().find(|l| *l.name == *self.name) {
            Some(l) => Settings {
                header_timeout: l.header_read_timeout,
                keepalive: l.keepalive_timeout,
                max_header_size: l.max_header_size,
                max_requests: l.max_requests_per_connection,
                h2c: l.h2c,
                engine,
            },
            None => Settings {
                header_timeout: portico_config::defaults::HEADER_READ_TIMEOUT,
                keepalive: portico_config::defaults::KEEPALIVE_TIMEOUT,
                max_header_size: portico_config::defaults::MAX_HEADER_SIZE as usize,
                max_requests: None,
                h2c: false,
                engine,
            },
        }
    }
}

/// Serves one accepted TCP connection until it closes.
pub async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
    lctx: Arc<ListenerCtx>,
    shutdown: watch::Receiver<bool>,
) {
    let _tracked = lctx.tracker.enter();
    let open = lctx
        .shared
        .metrics
        .connections_open
        .with_label_values(&[&lctx.name]);
    open.inc();
    struct Dec(prometheus::IntGauge);
    impl Drop for Dec {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    let _open = Dec(open);

    let _ = tcp.set_nodelay(true);
    let settings = lctx.settings();
    let own = settings.engine == portico_config::Engine::Portico;
    if own && lctx.tls.is_none() {
        // Plain HTTP/1.1 on Portico's engine, straight on the TCP socket; h2c goes to pingora.
        let h2c = settings.h2c && {
            const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
            let mut buf = [0u8; PREFACE.len()];
            peek_full(&tcp, &mut buf, settings.header_timeout).await && buf == PREFACE
        };
        if !h2c {
            let info = crate::engine::conn_info(peer, None);
            let l = lctx.clone();
            crate::engine::serve(tcp, info, &lctx.app, shutdown, move || {
                l.settings().limits()
            })
            .await;
            return;
        }
    }
    let mut l4: L4Stream = tcp.into();
    {
        use std::os::fd::AsRawFd;
        let digest = SocketDigest::from_raw_fd(l4.as_raw_fd());
        let _ = digest.peer_addr.set(Some(peer.into()));
        let _ = digest.local_addr.set(Some(local.into()));
        l4.set_socket_digest(digest);
    }
    let mut stream: Stream = match &lctx.tls {
        Some(acceptor) => {
            match tokio::time::timeout(settings.header_timeout, acceptor.tls_handshake(l4)).await {
                Ok(Ok(tls)) => Box::new(tls),
                Ok(Err(e)) => {
                    lctx.shared
                        .metrics
                        .tls_handshake_errors
                        .with_label_values(&[&lctx.name])
                        .inc();
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    lctx.shared
                        .metrics
                        .tls_handshake_errors
                        .with_label_values(&[&lctx.name])
                        .inc();
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            }
        }
        None => Box::new(l4),
    };

    let h2 = if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
        true
    } else if settings.h2c && lctx.tls.is_none() {
        const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        let mut buf = [0u8; PREFACE.len()];
        matches!(
            tokio::time::timeout(settings.header_timeout, stream.try_peek(&mut buf)).await,
            Ok(Ok(true))
        ) && buf == PREFACE
    } else {
        false
    };
    if h2 {
        // pingora runs the HTTP/2 connection: streams, flow control and GOAWAY on shutdown.
        lctx.proxy.process_new(stream, &shutdown).await;
        return;
    }
    if own {
        let tls = stream
            .get_ssl_digest()
            .map(|d| crate::proxy::tls_version_name(&d.version));
        let info = crate::engine::conn_info(peer, tls);
        let l = lctx.clone();
        crate::engine::serve(stream, info, &lctx.app, shutdown, move || {
            l.settings().limits()
        })
        .await;
        return;
    }
    // HTTP/1.1 may upgrade to a WebSocket, which a shutdown should close with a close frame.
    let state = Arc::new(super::wsclose::ConnState::default());
    let stream: Stream = Box::new(super::wsclose::CloseOnShutdown::new(stream, state.clone()));
    super::wsclose::scope(state, http1(stream, peer, &lctx, shutdown, settings)).await;
}

async fn http1(
    mut stream: Stream,
    peer: SocketAddr,
    lctx: &ListenerCtx,
    mut shutdown: watch::Receiver<bool>,
    mut settings: Settings,
) {
    let mut served: u32 = 0;
    loop {
        let limits = HeadLimits {
            idle: if served == 0 {
                settings.header_timeout
            } else {
                settings.keepalive
            },
            header_timeout: settings.header_timeout,
            max_size: settings.max_header_size,
            fresh: served == 0,
        };
        let mut buf = BytesMut::new();
        match read_head(&mut stream, &mut buf, limits, &mut shutdown).await {
            Ok(()) => {}
            Err(HeadError::Timeout) => {
                reject(lctx, "header_timeout");
                tracing::debug!(%peer, "request head not received in time");
                let _ = write_simple_response(
                    &mut stream,
                    "408 Request Timeout",
                    "408 Request Timeout\nportico: the request head was not received in time\n",
                )
                .await;
                return;
            }
            Err(HeadError::TooLarge) => {
                reject(lctx, "header_too_large");
                tracing::debug!(%peer, limit = settings.max_header_size, "request head too large");
                let _ = write_simple_response(
                    &mut stream,
                    "431 Request Header Fields Too Large",
                    &format!(
                        "431 Request Header Fields Too Large\nportico: the request head is larger than {} bytes\n",
                        settings.max_header_size
                    ),
                )
                .await;
                return;
            }
            Err(_) => return,
        }
        served = served.saturating_add(1);
        let mut session = ServerSession::new_http1(stream);
        session.set_pipelined_prefix(buf);
        // pingora re-derives keep-alive from the request's own headers when it parses them, so
        // the connection's limits are expressed as "reuses remaining", which it keeps.
        let remaining = if settings.keepalive.is_zero() || *shutdown.borrow() {
            Some(0)
        } else {
            settings.max_requests.map(|m| m.saturating_sub(served))
        };
        session.set_keepalive_reuses_remaining(remaining);
        match lctx.proxy.process_new_http(session, &shutdown).await {
            Some(reused) => {
                let (s, _) = reused.consume();
                stream = s;
                settings = lctx.settings();
            }
            None => return,
        }
    }
}

fn reject(lctx: &ListenerCtx, reason: &str) {
    lctx.shared
        .metrics
        .rejected
        .with_label_values(&[reason])
        .inc();
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

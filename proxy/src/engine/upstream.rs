//! Connections to backends: TCP, or TLS with rustls (ALPN `http/1.1`), with the upstream's
//! connect timeout covering the TCP connect and the handshake; and the liveness test a pooled
//! connection passes before it is used again.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::BytesMut;
use portico_config::Upstream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The transport of an upstream connection.
#[derive(Debug)]
pub enum UpIo {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl UpIo {
    /// The TCP socket under the transport.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            UpIo::Plain(t) => t,
            UpIo::Tls(t) => t.get_ref().0,
        }
    }
}

impl AsyncRead for UpIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Plain(t) => Pin::new(t).poll_read(cx, buf),
            UpIo::Tls(t) => Pin::new(t.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpIo::Plain(t) => Pin::new(t).poll_write(cx, buf),
            UpIo::Tls(t) => Pin::new(t.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpIo::Plain(t) => Pin::new(t).poll_write_vectored(cx, bufs),
            UpIo::Tls(t) => Pin::new(t.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpIo::Plain(t) => t.is_write_vectored(),
            UpIo::Tls(t) => t.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Plain(t) => Pin::new(t).poll_flush(cx),
            UpIo::Tls(t) => Pin::new(t.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpIo::Plain(t) => Pin::new(t).poll_shutdown(cx),
            UpIo::Tls(t) => Pin::new(t.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Which pooled connections may serve a request: same address, same TLS settings.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    /// Backend address.
    pub addr: SocketAddr,
    /// TLS server name and whether the certificate is verified; `None` for plain TCP.
    pub tls: Option<(Arc<str>, bool)>,
}

impl PoolKey {
    /// The key for `addr` under `up`'s transport settings.
    pub fn new(addr: SocketAddr, up: &Upstream) -> Self {
        Self {
            addr,
            tls: up
                .tls
                .as_ref()
                .map(|t| (Arc::from(t.server_name.as_str()), !t.skip_verify)),
        }
    }
}

/// An open connection to a backend.
#[derive(Debug)]
pub struct UpConn {
    /// The transport.
    pub io: UpIo,
    /// Bytes read but not yet used (kept across requests: a response never leaves any).
    pub rbuf: BytesMut,
    /// What it may be reused for.
    pub key: PoolKey,
    /// Requests it served before this one.
    pub served: u32,
    /// It announced one client's address (PROXY protocol): never pooled for another.
    pub private: bool,
}

impl UpConn {
    /// One read of the backend's answer into `rbuf`; `None` when `timeout` passes first.
    /// `timer` is the client connection's upstream deadline, moved forward for this read
    /// (no timer registered per read: see [`super::head`]).
    pub async fn read_within(
        &mut self,
        timer: &mut super::deadline::Deadline,
        timeout: Duration,
    ) -> Option<io::Result<usize>> {
        timer.set_after(timeout);
        tokio::select! {
            biased;
            r = self.io.read_buf(&mut self.rbuf) => Some(r),
            () = timer.passed() => None,
        }
    }
}

/// Why a connection could not be made.
#[derive(Debug)]
pub enum ConnectError {
    /// The backend refused the connection.
    Refused,
    /// No answer within the connect timeout.
    Timeout(Duration),
    /// No route to the backend.
    NoRoute,
    /// The TLS handshake failed.
    Tls(String),
    /// Anything else.
    Other(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Refused => f.write_str("connection refused"),
            ConnectError::Timeout(t) => write!(
                f,
                "no answer within the connect timeout ({})",
                portico_config::units::format_duration(*t)
            ),
            ConnectError::NoRoute => f.write_str("no route to host"),
            ConnectError::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            ConnectError::Other(e) => f.write_str(e),
        }
    }
}

fn io_error(e: io::Error) -> ConnectError {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ConnectError::Refused,
        io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => ConnectError::NoRoute,
        _ => ConnectError::Other(e.to_string()),
    }
}

/// Connects to `addr` as `up` says (TCP, or TLS offering HTTP/1.1 only); `proxy_header`, when
/// given, goes first on the connection, before TLS.
pub async fn connect(
    addr: SocketAddr,
    up: &Upstream,
    proxy_header: Option<&[u8]>,
) -> Result<UpConn, ConnectError> {
    let key = PoolKey::new(addr, up);
    let timeout = up.connect_timeout;
    let work = async {
        let mut tcp = TcpStream::connect(addr).await.map_err(io_error)?;
        if let Err(e) = crate::sockopt::apply(&socket2::SockRef::from(&tcp), &up.socket) {
            tracing::debug!(backend = %addr, error = %e, "cannot set the upstream socket options");
        }
        if let Some(h) = proxy_header {
            use tokio::io::AsyncWriteExt;
            tcp.write_all(h).await.map_err(io_error)?;
        }
        let io = match &up.tls {
            None => UpIo::Plain(tcp),
            Some(t) => {
                let name =
                    crate::tls_client::server_name(&t.server_name).map_err(ConnectError::Tls)?;
                let config = crate::tls_client::upstream_config(t, true);
                let tls = tokio_rustls::TlsConnector::from(config)
                    .connect(name, tcp)
                    .await
                    .map_err(|e| ConnectError::Tls(e.to_string()))?;
                UpIo::Tls(Box::new(tls))
            }
        };
        Ok(io)
    };
    // The TLS handshake happens inside the budget too: give it room beyond the TCP connect.
    let budget = if up.tls.is_some() {
        timeout * 2
    } else {
        timeout
    };
    let io = tokio::time::timeout(budget, work)
        .await
        .map_err(|_| ConnectError::Timeout(timeout))??;
    Ok(UpConn {
        io,
        rbuf: BytesMut::new(),
        key,
        served: 0,
        private: proxy_header.is_some(),
    })
}

/// Whether an idle connection can carry another request: nothing arrived on it since its
/// last response (a close, a stray byte). `try_read` answers from the runtime's cached
/// readiness, without a system call, while the socket has not become readable; only a
/// socket the runtime saw become readable is read. (`poll_read_ready` answered the same but
/// registered a waker under the socket's lock each time: about 150 instructions per
/// request by callgrind.) A byte read here is never given back: the connection is dropped.
pub fn alive(conn: &mut UpConn) -> bool {
    if !conn.rbuf.is_empty() {
        return false;
    }
    let mut probe = [0u8; 1];
    matches!(conn.io.tcp().try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

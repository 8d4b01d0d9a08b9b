//! Reads an HTTP/1.x request head off a client connection until it is complete: one deadline
//! for the whole head (a client sending a byte a minute gets 408 at `header_read_timeout`),
//! a size limit (431, or 414 when the request line is what is too long), the keep-alive idle
//! wait between requests, and the drain grace (an idle connection at shutdown still serves a
//! request already on its way). The bytes stay in the connection's buffer for the parser
//! ([`super::codec`]), so nothing is read twice.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use memchr::memmem;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

/// How reading a request head ended, when it did not produce one.
#[derive(Debug)]
pub enum HeadError {
    /// The client closed the connection (or sent nothing before the idle timeout) between
    /// requests: close quietly.
    Idle,
    /// The client started a request but did not finish its head in time: answer 408.
    Timeout,
    /// The head is larger than allowed: answer 431.
    TooLarge,
    /// The client closed the connection in the middle of a head.
    Truncated,
    /// The server is shutting down and no request had started.
    Shutdown,
    /// A read failed.
    Io(io::Error),
}

/// Position just past the end of the head (`\r\n\r\n` or a bare `\n\n`), searching from
/// `from` (the bytes before it were already searched).
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(3);
    let hay = &buf[start..];
    // Nearly every client ends lines with CRLF, so one search usually settles it. A head
    // with bare-LF endings is found by the second search; pingora parses the exact end itself.
    // One searcher built once: `memmem::find` builds one per call, which cost more than the
    // search of a short head.
    static END: std::sync::LazyLock<memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memmem::Finder::new(b"\r\n\r\n"));
    END.find(hay)
        .map(|i| start + i + 4)
        .or_else(|| memmem::find(hay, b"\n\n").map(|j| start + j + 2))
}

/// Where the head in `buf` ends, searching from `from` (at most `buf.len()`), for callers
/// outside this module (fuzzing).
pub fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    head_end(buf, from.min(buf.len()))
}

/// Limits for reading one head.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    /// How long to wait for the first byte (keepalive idle time, or the header timeout on a
    /// fresh connection).
    pub idle: Duration,
    /// How long the whole head may take once its first byte arrived.
    pub header_timeout: Duration,
    /// Largest head accepted.
    pub max_size: usize,
    /// The connection is new: its client is about to send a request and expects an answer,
    /// so a shutdown does not close it before its first request (within `idle`).
    pub fresh: bool,
    /// Once a shutdown began, how long to wait for a request the client may already have
    /// sent before closing an idle connection.
    pub drain_grace: Duration,
}

/// Reads until `buf` holds a complete request head. Bytes after the head (a body) may be in
/// `buf` too. Gives up quietly on shutdown only while no request has started.
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    limits: HeadLimits,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), HeadError> {
    // Phase 1: wait for the first byte (the connection is idle until then).
    //
    // On a shutdown or upgrade, an idle connection is not closed at once: its client may
    // have sent its next request already (it is in the socket buffer, or on the wire), and
    // a close now would reset it unanswered: a POST the client cannot know the fate of.
    // A request arriving within `drain_grace` is served (with `Connection: close`, as the
    // caller sees the shutdown); a connection that stays silent for it is closed.
    if buf.is_empty() {
        buf.reserve(4096);
        let first = if limits.fresh {
            // Accepted just before a shutdown (or handed over by an upgrade): serve it.
            tokio::time::timeout(limits.idle, stream.read_buf(buf)).await
        } else if *shutdown.borrow() {
            match tokio::time::timeout(limits.drain_grace.min(limits.idle), stream.read_buf(buf))
                .await
            {
                Err(_) => return Err(HeadError::Shutdown),
                r => r,
            }
        } else {
            let idle_until = Instant::now() + limits.idle;
            tokio::select! {
                // `read_buf` is cancel-safe: bytes read before the shutdown stay in `buf`.
                r = tokio::time::timeout_at(idle_until, stream.read_buf(buf)) => r,
                _ = shutdown.changed() => {
                    let grace = (Instant::now() + limits.drain_grace).min(idle_until);
                    if !buf.is_empty() {
                        Ok(Ok(buf.len()))
                    } else {
                        match tokio::time::timeout_at(grace, stream.read_buf(buf)).await {
                            Err(_) => return Err(HeadError::Shutdown),
                            r => r,
                        }
                    }
                }
            }
        };
        match first {
            Err(_) => return Err(HeadError::Idle),
            Ok(Ok(0)) => return Err(HeadError::Idle),
            Ok(Ok(_)) => {}
            // A reset between requests is how many clients say goodbye.
            Ok(Err(_)) => return Err(HeadError::Idle),
        }
    }
    // Phase 2: the rest of the head, under one deadline.
    let deadline = Instant::now() + limits.header_timeout;
    let mut searched = 0;
    loop {
        if let Some(end) = head_end(buf, searched) {
            if end > limits.max_size {
                return Err(HeadError::TooLarge);
            }
            return Ok(());
        }
        if buf.len() > limits.max_size {
            return Err(HeadError::TooLarge);
        }
        searched = buf.len();
        buf.reserve(4096);
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Err(_) => return Err(HeadError::Timeout),
            Ok(Ok(0)) => return Err(HeadError::Truncated),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(HeadError::Io(e)),
        }
    }
}

/// Writes a minimal error response (used before pingora has a session) and closes.
pub async fn write_simple_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    status: &str,
    body: &str,
) -> io::Result<()> {
    let msg = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\ncache-control: no-store\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(msg.as_bytes()).await?;
    stream.flush().await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn limits() -> HeadLimits {
        HeadLimits {
            fresh: false,
            idle: Duration::from_millis(200),
            header_timeout: Duration::from_millis(200),
            max_size: 64,
            drain_grace: Duration::from_millis(100),
        }
    }

    #[test]
    fn finds_head_end() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\n", 0), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\nbody", 0), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n", 0), None);
        // A terminator split across reads is still found.
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\n", 16), Some(18));
    }

    #[tokio::test]
    async fn complete_head_with_body_bytes() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(b"POST / HTTP/1.1\r\ncontent-length: 2\r\n\r\nhi")
            .await
            .unwrap();
        let (_tx, mut rx) = watch::channel(false);
        let mut buf = BytesMut::new();
        read_head(&mut b, &mut buf, limits(), &mut rx)
            .await
            .unwrap();
        assert!(buf.ends_with(b"hi"));
    }

    #[tokio::test]
    async fn slow_head_times_out() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let (_tx, mut rx) = watch::channel(false);
        let mut buf = BytesMut::new();
        let r = read_head(&mut b, &mut buf, limits(), &mut rx).await;
        assert!(matches!(r, Err(HeadError::Timeout)), "{r:?}");
    }

    #[tokio::test]
    async fn idle_connection_is_quiet() {
        let (_a, mut b) = tokio::io::duplex(1024);
        let (_tx, mut rx) = watch::channel(false);
        let mut buf = BytesMut::new();
        let r = read_head(&mut b, &mut buf, limits(), &mut rx).await;
        assert!(matches!(r, Err(HeadError::Idle)), "{r:?}");
    }

    #[tokio::test]
    async fn oversized_head() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        a.write_all(format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(100)).as_bytes())
            .await
            .unwrap();
        let (_tx, mut rx) = watch::channel(false);
        let mut buf = BytesMut::new();
        let r = read_head(&mut b, &mut buf, limits(), &mut rx).await;
        assert!(matches!(r, Err(HeadError::TooLarge)), "{r:?}");
    }

    #[tokio::test]
    async fn shutdown_while_idle() {
        let (_a, mut b) = tokio::io::duplex(1024);
        let (tx, mut rx) = watch::channel(false);
        let mut buf = BytesMut::new();
        let t = tokio::spawn(async move { read_head(&mut b, &mut buf, limits(), &mut rx).await });
        tx.send(true).unwrap();
        assert!(matches!(t.await.unwrap(), Err(HeadError::Shutdown)));
    }
}

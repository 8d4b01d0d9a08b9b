//! Reads an HTTP/1.x request head off a client connection until it is complete: one deadline
//! for the whole head (a client sending a byte a minute gets 408 at `header_read_timeout`),
//! a size limit (431, or 414 when the request line is what is too long), the keep-alive idle
//! wait between requests, and the drain grace (an idle connection at shutdown still serves a
//! request already on its way). The bytes stay in the connection's buffer for the parser
//! ([`super::codec`]), so nothing is read twice.
//!
//! The deadlines are one timer per connection, moved forward for each request
//! ([`Sleep::reset`]): tokio moves a registered timer to a later deadline without touching
//! its timer wheel, where a new `timeout` per read registered and removed an entry every
//! request (about 900 instructions of the 30k a proxied request cost, by callgrind).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use bytes::BytesMut;
use memchr::memmem;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::deadline::Deadline;

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

/// A connection's view of the server's shutdown: the flag, and one waiter that stays
/// registered with the channel for the connection's life. `watch::Receiver::changed` per
/// idle wait registered and removed a waiter every request (about 400 instructions).
pub struct Stop {
    rx: watch::Receiver<bool>,
    /// The flag was set when this watch was made (its receiver may have seen the change
    /// already, so `has_changed` would not report it).
    already: bool,
    /// Completes when the flag changes (or the sender is gone); `None` once it has.
    waiter: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
}

impl Stop {
    /// Watches `rx`.
    pub fn new(rx: watch::Receiver<bool>) -> Self {
        let mut waiter_rx = rx.clone();
        let already = *rx.borrow();
        Stop {
            already,
            rx,
            waiter: Some(Box::pin(async move {
                let _ = waiter_rx.changed().await;
            })),
        }
    }

    /// Whether a shutdown began. Asked once per request: `has_changed` is one atomic load,
    /// where `borrow` takes the channel's read lock (two atomic writes to a cache line every
    /// connection of every worker thread shares); the value is read only once it changed.
    pub fn is_set(&self) -> bool {
        match self.rx.has_changed() {
            Ok(false) => self.already,
            // Changed, or the sender is gone: the value says (a shutdown only sets it).
            Ok(true) | Err(_) => *self.rx.borrow(),
        }
    }

    /// Resolves when a shutdown begins (at once if one did since this watch was made); never
    /// again after it did once (the caller then sees [`Self::is_set`]).
    async fn changed(&mut self) {
        match &mut self.waiter {
            Some(w) => {
                w.as_mut().await;
                self.waiter = None;
            }
            None => std::future::pending().await,
        }
    }
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
/// `buf` too. Gives up quietly on shutdown only while no request has started. `timer` is the
/// connection's deadline, reset here for each wait.
pub async fn read_head<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    limits: HeadLimits,
    shutdown: &mut Stop,
    timer: &mut Deadline,
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
        let idle_until = super::deadline_after(limits.idle);
        let first = if limits.fresh {
            // Accepted just before a shutdown (or handed over by an upgrade): serve it.
            timer.set(idle_until);
            read_until(stream, buf, timer).await
        } else if shutdown.is_set() {
            timer.set_after(limits.drain_grace.min(limits.idle));
            match read_until(stream, buf, timer).await {
                None => return Err(HeadError::Shutdown),
                r => r,
            }
        } else {
            timer.set(idle_until);
            tokio::select! {
                biased;
                // `read_buf` is cancel-safe: bytes read before the shutdown stay in `buf`.
                r = stream.read_buf(buf) => Some(r),
                () = timer.passed() => None,
                () = shutdown.changed() => {
                    if !buf.is_empty() {
                        Some(Ok(buf.len()))
                    } else {
                        let grace = super::deadline_after(limits.drain_grace).min(idle_until);
                        timer.set(grace);
                        match read_until(stream, buf, timer).await {
                            None => return Err(HeadError::Shutdown),
                            r => r,
                        }
                    }
                }
            }
        };
        match first {
            None => return Err(HeadError::Idle),
            Some(Ok(0)) => return Err(HeadError::Idle),
            Some(Ok(_)) => {}
            // A reset between requests is how many clients say goodbye.
            Some(Err(_)) => return Err(HeadError::Idle),
        }
    }
    // Phase 2: the rest of the head, under one deadline (set only when the first read did
    // not bring the whole head).
    let mut searched = 0;
    let mut armed = false;
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
        if !armed {
            timer.set_after(limits.header_timeout);
            armed = true;
        }
        searched = buf.len();
        buf.reserve(4096);
        match read_until(stream, buf, timer).await {
            None => return Err(HeadError::Timeout),
            Some(Ok(0)) => return Err(HeadError::Truncated),
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(HeadError::Io(e)),
        }
    }
}

/// One read into `buf`, or `None` when `timer` fires first.
async fn read_until<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    timer: &mut Deadline,
) -> Option<io::Result<usize>> {
    tokio::select! {
        biased;
        r = stream.read_buf(buf) => Some(r),
        () = timer.passed() => None,
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

    /// [`read_head`] with the test limits, a new shutdown watch and a new timer.
    async fn read_fresh(
        b: &mut tokio::io::DuplexStream,
        buf: &mut BytesMut,
        rx: watch::Receiver<bool>,
    ) -> Result<(), HeadError> {
        read_head(b, buf, limits(), &mut Stop::new(rx), &mut Deadline::new()).await
    }

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
        let (_tx, rx) = watch::channel(false);
        let mut buf = BytesMut::new();
        read_fresh(&mut b, &mut buf, rx).await.unwrap();
        assert!(buf.ends_with(b"hi"));
    }

    #[tokio::test]
    async fn slow_head_times_out() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        a.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        let (_tx, rx) = watch::channel(false);
        let mut buf = BytesMut::new();
        let r = read_fresh(&mut b, &mut buf, rx).await;
        assert!(matches!(r, Err(HeadError::Timeout)), "{r:?}");
    }

    #[tokio::test]
    async fn idle_connection_is_quiet() {
        let (_a, mut b) = tokio::io::duplex(1024);
        let (_tx, rx) = watch::channel(false);
        let mut buf = BytesMut::new();
        let r = read_fresh(&mut b, &mut buf, rx).await;
        assert!(matches!(r, Err(HeadError::Idle)), "{r:?}");
    }

    #[tokio::test]
    async fn oversized_head() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        a.write_all(format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(100)).as_bytes())
            .await
            .unwrap();
        let (_tx, rx) = watch::channel(false);
        let mut buf = BytesMut::new();
        let r = read_fresh(&mut b, &mut buf, rx).await;
        assert!(matches!(r, Err(HeadError::TooLarge)), "{r:?}");
    }

    #[test]
    fn stop_sees_a_shutdown_however_its_receiver_was_made() {
        let (tx, mut rx) = watch::channel(false);
        let before = Stop::new(rx.clone());
        assert!(!before.is_set());
        tx.send(true).unwrap();
        assert!(before.is_set());
        // A receiver that saw the change already, and clones of it.
        rx.borrow_and_update();
        assert!(Stop::new(rx.clone()).is_set());
        // The sender gone without a shutdown: not set; gone after one: set.
        let (tx2, rx2) = watch::channel(false);
        let gone = Stop::new(rx2);
        drop(tx2);
        assert!(!gone.is_set());
        drop(tx);
        assert!(before.is_set());
    }

    #[tokio::test]
    async fn shutdown_while_idle() {
        let (_a, mut b) = tokio::io::duplex(1024);
        let (tx, rx) = watch::channel(false);
        let mut buf = BytesMut::new();
        let t = tokio::spawn(async move { read_fresh(&mut b, &mut buf, rx).await });
        tx.send(true).unwrap();
        assert!(matches!(t.await.unwrap(), Err(HeadError::Shutdown)));
    }

    #[tokio::test]
    async fn shutdown_after_a_served_request() {
        // The waiter registered during the first wait is the one that sees a shutdown
        // during the second: the idle connection closes after the drain grace.
        let (mut a, mut b) = tokio::io::duplex(1024);
        let (tx, rx) = watch::channel(false);
        let mut stop = Stop::new(rx);
        let mut timer = Deadline::new();
        let mut buf = BytesMut::new();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            a.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            a
        });
        read_head(&mut b, &mut buf, limits(), &mut stop, &mut timer)
            .await
            .unwrap();
        let _a = writer.await.unwrap();
        buf.clear();
        // The shutdown comes while the connection waits for its next request.
        let mut l = limits();
        l.idle = Duration::from_secs(30);
        let started = std::time::Instant::now();
        let send = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            tx.send(true).unwrap();
        };
        let (r, ()) = tokio::join!(read_head(&mut b, &mut buf, l, &mut stop, &mut timer), send);
        assert!(matches!(r, Err(HeadError::Shutdown)), "{r:?}");
        assert!(stop.is_set());
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

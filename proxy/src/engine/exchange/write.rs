//! Heads and local answers written to the client: Portico's own text answers, the response
//! head, static answers and file bodies (`sendfile` when the client socket is plain).

use std::io;

use bytes::{BufMut, BytesMut};
use http::header::CONNECTION;
use http::Version;
use smallvec::SmallVec;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::engine::codec;
use crate::engine::{Client, ClientIo};
use crate::proxy::ctx::RequestCtx;
use crate::proxy::respond;

use super::*;

/// Writes Portico's own plain-text answer for a request that could not be parsed.
pub(super) async fn write_local<S: ClientIo>(
    client: &mut Client<S>,
    ctx: &RequestCtx,
    status: u16,
    message: &str,
    extra: &[(&'static str, String)],
    close: bool,
    head_only: bool,
) -> io::Result<()> {
    let body = respond::error_body(status, message, ctx);
    write_text(
        client,
        ctx,
        status,
        body,
        extra,
        close,
        head_only,
        Version::HTTP_11,
    )
    .await
}

/// Writes a plain-text answer with the common headers, in one write.
#[allow(clippy::too_many_arguments)]
pub(super) async fn write_text<S: ClientIo>(
    client: &mut Client<S>,
    ctx: &RequestCtx,
    status: u16,
    body: String,
    extra: &[(&'static str, String)],
    close: bool,
    head_only: bool,
    version: Version,
) -> io::Result<()> {
    let Ok(mut head) = respond::local_head(ctx, status, body.len(), extra) else {
        return Err(io::Error::other("building the answer"));
    };
    if close {
        let _ = head.insert_header(CONNECTION, "close");
    } else if version == Version::HTTP_10 {
        let _ = head.insert_header(CONNECTION, "keep-alive");
    }
    codec::write_response(&mut client.wbuf, &head, version);
    if !head_only {
        client.wbuf.put_slice(body.as_bytes());
    }
    client.flush_wbuf().await
}

/// Writes the response head for the client: the status line, the backend's fields less
/// the hop-by-hop ones (RFC 9110 section 7.6.1) and the ones the edits replace, the edits'
/// fields, and Portico's own framing and connection fields.
#[allow(clippy::too_many_arguments)]
pub(super) fn write_client_head(
    out: &mut BytesMut,
    version: Version,
    status: u16,
    reason: &[u8],
    fields: &[(&[u8], &[u8])],
    edits: &crate::proxy::edits::Edits,
    switching: bool,
    dechunk: bool,
    rechunk: bool,
    connection: Option<&[u8]>,
) {
    codec::put_status_line(out, version, status, reason);
    let nominated: SmallVec<[&[u8]; 4]> = fields
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
        .flat_map(|(_, v)| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .collect();
    for &(n, v) in fields {
        let lower = |s: &[u8]| n.eq_ignore_ascii_case(s);
        let framing = lower(b"transfer-encoding") || lower(b"content-length");
        let hop = (lower(b"connection") && !switching)
            || lower(b"keep-alive")
            || lower(b"proxy-connection")
            || lower(b"te")
            || lower(b"trailer")
            || (lower(b"upgrade") && !switching)
            || (!framing
                && !(switching && (lower(b"upgrade") || lower(b"connection")))
                && nominated.iter().any(|t| t.eq_ignore_ascii_case(n)));
        if hop || (dechunk && lower(b"transfer-encoding")) || edits.drops(n) {
            continue;
        }
        codec::put_field(out, n, v);
    }
    for (n, v) in &edits.add {
        codec::put_field(out, n.as_str().as_bytes(), v.as_bytes());
    }
    if rechunk {
        out.put_slice(b"transfer-encoding: chunked\r\n");
    }
    if let Some(c) = connection {
        codec::put_field(out, b"connection", c);
    }
    out.put_slice(b"\r\n");
}

/// Sends `count` bytes of a file from `start` to the client.
pub(super) async fn send_file<S: ClientIo>(
    client: &mut Client<S>,
    path: &std::path::Path,
    start: u64,
    count: u64,
) -> io::Result<u64> {
    let file = tokio::fs::File::open(path).await?.into_std().await;
    if let Some(tcp) = client.io.tcp() {
        return sendfile(tcp, &file, start, count).await;
    }
    copy_file(&mut client.io, file, start, count).await
}

/// `sendfile(2)` from `file` to a plain socket: the kernel moves page-cache pages to the
/// socket with no copy through Portico. Like nginx without `aio threads`, a read of a page
/// not in the page cache blocks this worker thread for the disk; files served this way are
/// the ones too large for the memory cache.
pub(super) async fn sendfile(
    tcp: &tokio::net::TcpStream,
    file: &std::fs::File,
    start: u64,
    count: u64,
) -> io::Result<u64> {
    use nix::sys::sendfile::sendfile as sys_sendfile;
    let mut offset =
        i64::try_from(start).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut sent = 0;
    while sent < count {
        // At most 1 MiB per call, so one large file does not hold the thread for long.
        let want = (count - sent).min(1 << 20) as usize;
        tcp.writable().await?;
        let res = tcp.try_io(tokio::io::Interest::WRITABLE, || {
            sys_sendfile(tcp, file, Some(&mut offset), want).map_err(io::Error::from)
        });
        match res {
            // The file shrank under us: the answer cannot be completed honestly.
            Ok(0) => return Ok(sent),
            Ok(n) => sent += n as u64,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(sent)
}

/// Copies `count` bytes of `file` from `start` through a buffer (TLS: the bytes must be
/// encrypted in user space, so `sendfile` cannot apply). Reads run on the blocking pool.
pub(super) async fn copy_file<W: tokio::io::AsyncWrite + Unpin>(
    out: &mut W,
    file: std::fs::File,
    start: u64,
    count: u64,
) -> io::Result<u64> {
    use tokio::io::AsyncSeekExt;
    let mut file = tokio::fs::File::from_std(file);
    if start > 0 {
        file.seek(io::SeekFrom::Start(start)).await?;
    }
    let mut left = count;
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent = 0;
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = file.read(&mut buf[..want]).await?;
        if n == 0 {
            // The file shrank under us: the answer cannot be completed honestly.
            return Ok(sent);
        }
        out.write_all(&buf[..n]).await?;
        left -= n as u64;
        sent += n as u64;
    }
    Ok(sent)
}

impl Exchange<'_> {
    pub(super) async fn write_static<S: ClientIo>(
        &mut self,
        client: &mut Client<S>,
        reply: crate::proxy::files::Reply,
    ) -> After {
        use crate::proxy::files::Body;
        let close = !self.client_keep_alive || !self.body.done;
        let mut head = reply.head;
        if close {
            let _ = head.insert_header(CONNECTION, "close");
        }
        self.status = head.status.as_u16();
        self.answered = true;
        codec::write_response(&mut client.wbuf, &head, self.head.version);
        let ok = match reply.body {
            Body::Empty => client.flush_wbuf().await.is_ok(),
            Body::Bytes(b) => {
                self.bytes_sent = b.len() as u64;
                if b.len() <= 4096 {
                    client.wbuf.put_slice(&b);
                    client.flush_wbuf().await.is_ok()
                } else {
                    client.write_with(&b).await.is_ok()
                }
            }
            Body::File { path, start, count } => {
                if client.flush_wbuf().await.is_err() {
                    false
                } else {
                    match send_file(client, &path, start, count).await {
                        Ok(n) => {
                            self.bytes_sent = n;
                            n == count
                        }
                        Err(_) => false,
                    }
                }
            }
        };
        if !ok {
            return After::Gone;
        }
        if close {
            self.linger(client).await;
            After::Close
        } else {
            After::KeepAlive
        }
    }
}

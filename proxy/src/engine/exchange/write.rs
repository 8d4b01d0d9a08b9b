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
///
/// `src`, when given, is the backend's head that every slice of `fields` points into: kept
/// fields that are whole CRLF-ended lines next to each other there go out as one copy of
/// those lines (about 80 instructions saved per field against rebuilding each line).
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_client_head(
    out: &mut BytesMut,
    version: Version,
    status: u16,
    reason: &[u8],
    fields: &[(&[u8], &[u8])],
    src: Option<&[u8]>,
    edits: &crate::proxy::edits::Edits,
    switching: bool,
    dechunk: bool,
    rechunk: bool,
    connection: Option<&[u8]>,
) {
    codec::put_status_line(out, version, status, reason);
    let nominated: SmallVec<[&[u8]; 4]> = fields
        .iter()
        .filter(|(n, _)| codec::is_name(n, b"connection"))
        .flat_map(|(_, v)| v.split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|t| !t.is_empty())
        .collect();
    // The run of source lines not yet copied: `start..end` of `src`.
    let mut run = 0..0;
    for &(n, v) in fields {
        let lower = |s: &[u8]| codec::is_name(n, s);
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
        let Some(src) = src else {
            codec::put_field(out, n, v);
            continue;
        };
        match line_of(src, n, v) {
            Some(line) if line.start == run.end => run.end = line.end,
            Some(line) => {
                out.put_slice(&src[run]);
                run = line;
            }
            None => {
                // What is pending goes first: the fields keep their order.
                out.put_slice(&src[run]);
                run = 0..0;
                codec::put_field(out, n, v);
            }
        }
    }
    if let Some(src) = src {
        out.put_slice(&src[run]);
    }
    for (n, v) in edits.added() {
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

/// Where the field line of `name` and `value` (slices of `src`) lies in `src`, CRLF
/// included, when it is one whole line ending in CRLF; `None` otherwise (an empty value, a
/// slice from elsewhere, a bare-LF line), and the field is written from its parts.
fn line_of(src: &[u8], name: &[u8], value: &[u8]) -> Option<std::ops::Range<usize>> {
    let base = src.as_ptr() as usize;
    let start = (name.as_ptr() as usize).checked_sub(base)?;
    let value_at = (value.as_ptr() as usize).checked_sub(base)?;
    if value.is_empty() || start + name.len() >= value_at {
        return None;
    }
    let end = value_at.checked_add(value.len())?.checked_add(2)?;
    // The line starts where a line starts, and nothing but the value and CRLF ends it.
    let starts_line = start >= 2 && src.get(start - 2..start) == Some(b"\r\n");
    (starts_line && src.get(end - 2..end) == Some(b"\r\n")).then_some(start..end)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8], edits: &crate::proxy::edits::Edits) -> String {
        let resp = codec::parse_response(raw, &http::Method::GET)
            .unwrap()
            .unwrap();
        let fields: Vec<_> = resp.fields(raw).collect();
        let mut out = BytesMut::new();
        write_client_head(
            &mut out,
            Version::HTTP_11,
            resp.status,
            resp.reason(raw),
            &fields,
            Some(raw),
            edits,
            false,
            false,
            false,
            None,
        );
        let mut parts = BytesMut::new();
        write_client_head(
            &mut parts,
            Version::HTTP_11,
            resp.status,
            resp.reason(raw),
            &fields,
            None,
            edits,
            false,
            false,
            false,
            None,
        );
        // The lines copied whole say what the lines rebuilt from their parts say.
        let canon = |s: &[u8]| String::from_utf8_lossy(s).replace(":v", ": v");
        assert_eq!(canon(&out), canon(&parts));
        String::from_utf8(out.to_vec()).unwrap()
    }

    #[test]
    fn kept_lines_are_copied_and_the_rest_rebuilt() {
        let mut edits = crate::proxy::edits::Edits::default();
        edits.set(
            http::HeaderName::from_static("x-request-id"),
            http::HeaderValue::from_static("r1"),
        );
        let raw = b"HTTP/1.1 200 OK\r\nServer: s\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\n\
Content-Length: 3\r\nX-Request-Id: theirs\r\nX-Empty:\r\nX-Trail: v  \r\nX-Tight:v\r\nX-Last: z\r\n\r\nabc";
        assert_eq!(
            head(raw, &edits),
            "HTTP/1.1 200 OK\r\nServer: s\r\nContent-Length: 3\r\nX-Empty: \r\n\
X-Trail: v\r\nX-Tight:v\r\nX-Last: z\r\nx-request-id: r1\r\n\r\n"
        );
    }

    #[test]
    fn bare_lf_lines_are_rebuilt_with_crlf() {
        let edits = crate::proxy::edits::Edits::default();
        let raw = b"HTTP/1.1 204 No Content\nA: 1\nB: 2\r\nC: 3\r\n\r\n";
        assert_eq!(
            head(raw, &edits),
            "HTTP/1.1 204 No Content\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n"
        );
    }

    /// The fields a client parses from the head: names lower-cased, values as parsed.
    fn parsed_fields(head: &[u8]) -> Vec<(String, Vec<u8>)> {
        let resp = codec::parse_response(head, &http::Method::GET)
            .unwrap()
            .unwrap();
        resp.fields(head)
            .map(|(n, v)| (String::from_utf8_lossy(n).to_lowercase(), v.to_vec()))
            .collect()
    }

    proptest::proptest! {
        /// Whatever mix of whole CRLF lines, bare-LF lines, odd whitespace, empty values and
        /// dropped fields a backend sends, the head written with line copies parses to the
        /// same fields, in the same order, as the head rebuilt field by field.
        #[test]
        fn copied_lines_parse_as_rebuilt_ones(
            lines in proptest::collection::vec(
                (0usize..6, "[a-z]{0,6}", 0usize..3, proptest::prelude::any::<bool>(), 0usize..2),
                0..12,
            ),
        ) {
            const NAMES: [&str; 6] = ["server", "x-a", "connection", "x-request-id", "Content-Type", "te"];
            let mut raw = b"HTTP/1.1 200 OK\r\n".to_vec();
            for (name, value, ows, lf, trail) in &lines {
                raw.extend_from_slice(NAMES[*name].as_bytes());
                raw.push(b':');
                raw.extend_from_slice(&b"  \t"[..*ows]);
                raw.extend_from_slice(value.as_bytes());
                raw.extend_from_slice(&b" "[..*trail]);
                raw.extend_from_slice(if *lf { b"\n" } else { b"\r\n" });
            }
            raw.extend_from_slice(b"\r\n");
            let mut edits = crate::proxy::edits::Edits::default();
            edits.set(
                http::HeaderName::from_static("x-request-id"),
                http::HeaderValue::from_static("r1"),
            );
            let resp = codec::parse_response(&raw, &http::Method::GET).unwrap().unwrap();
            let fields: Vec<_> = resp.fields(&raw).collect();
            let write = |src: Option<&[u8]>| {
                let mut out = BytesMut::new();
                write_client_head(
                    &mut out, Version::HTTP_11, 200, b"OK", &fields, src, &edits,
                    false, false, false, None,
                );
                out
            };
            let copied = write(Some(&raw));
            let rebuilt = write(None);
            proptest::prop_assert!(!copied.windows(2).any(|w| w[1] == b'\n' && w[0] != b'\r'));
            proptest::prop_assert_eq!(parsed_fields(&copied), parsed_fields(&rebuilt));
        }
    }
}

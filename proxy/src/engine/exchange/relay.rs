//! Response bodies relayed to the client: re-framing, compression on the way, chunk sizes,
//! and bodies read whole (replay instructions in JSON).

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::AsyncReadExt;

use crate::engine::chunked::Chunked;
use crate::engine::codec::Framing;
use crate::engine::upstream::UpConn;
use crate::engine::{Client, ClientIo};

/// How a response body is relayed.
#[derive(Debug)]
pub(super) enum Relay {
    None,
    Length(u64),
    Chunked(Chunked),
    /// Read until the backend closes, chunk-encode for an HTTP/1.1 client.
    Rechunk,
    /// Read until the backend closes, as is (HTTP/1.0 client, closed after).
    Close,
    /// Chunked from the backend, decoded for an HTTP/1.0 client.
    Dechunk(Chunked),
    /// Decoded from the backend's framing, compressed, and sent chunked (HTTP/1.1) or
    /// close-delimited (HTTP/1.0).
    Compress(Box<Compressing>),
}

/// A response body being compressed on its way.
#[derive(Debug)]
pub(super) struct Compressing {
    /// The backend's framing, decoded: bytes left of a length, or a chunked decoder, or
    /// `None` for a body that ends when the backend closes.
    pub(super) left: Option<u64>,
    pub(super) chunked: Option<Chunked>,
    pub(super) encoder: crate::compress::Encoder,
    /// Whether the client gets chunks (else raw bytes, then close).
    pub(super) chunk_out: bool,
}

impl Compressing {
    pub(super) fn new(framing: Framing, encoder: crate::compress::Encoder) -> Self {
        let (left, chunked) = match framing {
            Framing::Length(n) => (Some(n), None),
            Framing::Chunked => (None, Some(Chunked::default())),
            Framing::None => (Some(0), None),
            Framing::Close => (None, None),
        };
        Self {
            left,
            chunked,
            encoder,
            chunk_out: true,
        }
    }

    pub(super) fn put(&self, out: &mut BytesMut, data: &[u8]) {
        if data.is_empty() {
            return;
        }
        if self.chunk_out {
            put_hex(out, data.len());
            out.put_slice(b"\r\n");
            out.put_slice(data);
            out.put_slice(b"\r\n");
        } else {
            out.put_slice(data);
        }
    }

    /// Takes what `rbuf` holds of the body, compresses it into `out`; `Ok(true)` once the
    /// body has ended (the last compressed bytes and the final chunk are in `out`).
    pub(super) fn step(
        &mut self,
        rbuf: &mut BytesMut,
        out: &mut BytesMut,
        eof: bool,
    ) -> Result<bool, String> {
        let mut plain = BytesMut::new();
        let done;
        if let Some(c) = &mut self.chunked {
            let mut at = 0;
            while at < rbuf.len() && !c.done() {
                let step = c
                    .advance(&rbuf[at..])
                    .map_err(|e| format!("malformed chunked body: {e}"))?;
                if let Some((s, e)) = step.data {
                    plain.extend_from_slice(&rbuf[at + s..at + e]);
                }
                if step.consumed == 0 {
                    break;
                }
                at += step.consumed;
            }
            let _ = rbuf.split_to(at);
            done = c.done();
        } else if let Some(left) = &mut self.left {
            let n = (*left).min(rbuf.len() as u64) as usize;
            plain.extend_from_slice(&rbuf.split_to(n));
            *left -= n as u64;
            done = *left == 0;
        } else {
            plain.extend_from_slice(&rbuf.split());
            done = eof;
        }
        if eof && !done {
            return Err("the backend closed the connection mid-body".into());
        }
        let encoded = self.encoder.encode(&plain, done)?;
        self.put(out, &encoded);
        if done && self.chunk_out {
            out.put_slice(b"0\r\n\r\n");
        }
        Ok(done)
    }
}

impl From<Framing> for Relay {
    fn from(f: Framing) -> Self {
        match f {
            Framing::None => Relay::None,
            Framing::Length(n) => Relay::Length(n),
            Framing::Chunked => Relay::Chunked(Chunked::default()),
            Framing::Close => Relay::Close,
        }
    }
}

pub(super) struct Pumped {
    pub(super) bytes: u64,
    pub(super) up_done: bool,
    pub(super) client_failed: bool,
    pub(super) up_error: Option<String>,
}

/// Relays the response body from the backend to the client; the response head is in
/// `client.wbuf` and goes out with the first body bytes.
pub(super) async fn relay_body<S: ClientIo>(
    client: &mut Client<S>,
    conn: &mut UpConn,
    mut mode: Relay,
    read_timeout: Duration,
    head_only: bool,
) -> Pumped {
    let mut p = Pumped {
        bytes: 0,
        up_done: false,
        client_failed: false,
        up_error: None,
    };
    if head_only {
        mode = Relay::None;
    }
    loop {
        // Move what the buffer holds into the client's write buffer.
        let mut finished = false;
        match &mut mode {
            Relay::None => finished = true,
            Relay::Length(left) => {
                let n = (*left).min(conn.rbuf.len() as u64) as usize;
                if n > 0 {
                    let chunk = conn.rbuf.split_to(n);
                    client.wbuf.put_slice(&chunk);
                    *left -= n as u64;
                    p.bytes += n as u64;
                }
                finished = *left == 0;
            }
            Relay::Chunked(c) => match c.scan(&conn.rbuf) {
                Ok(n) => {
                    let chunk = conn.rbuf.split_to(n);
                    client.wbuf.put_slice(&chunk);
                    p.bytes += n as u64;
                    finished = c.done();
                }
                Err(e) => {
                    p.up_error = Some(format!("malformed chunked body: {e}"));
                    let _ = client.flush_wbuf().await;
                    return p;
                }
            },
            Relay::Dechunk(c) => {
                let mut at = 0;
                while at < conn.rbuf.len() && !c.done() {
                    match c.advance(&conn.rbuf[at..]) {
                        Ok(step) => {
                            if let Some((s, e)) = step.data {
                                client.wbuf.put_slice(&conn.rbuf[at + s..at + e]);
                                p.bytes += (e - s) as u64;
                            }
                            if step.consumed == 0 {
                                break;
                            }
                            at += step.consumed;
                        }
                        Err(e) => {
                            p.up_error = Some(format!("malformed chunked body: {e}"));
                            let _ = client.flush_wbuf().await;
                            return p;
                        }
                    }
                }
                let _ = conn.rbuf.split_to(at);
                finished = c.done();
            }
            Relay::Compress(c) => {
                let before = client.wbuf.len();
                match c.step(&mut conn.rbuf, &mut client.wbuf, false) {
                    Ok(done) => {
                        finished = done;
                        p.bytes += (client.wbuf.len() - before) as u64;
                    }
                    Err(e) => {
                        p.up_error = Some(e);
                        let _ = client.flush_wbuf().await;
                        return p;
                    }
                }
            }
            Relay::Rechunk | Relay::Close => {
                if !conn.rbuf.is_empty() {
                    let chunk = conn.rbuf.split();
                    if matches!(mode, Relay::Rechunk) {
                        put_hex(&mut client.wbuf, chunk.len());
                        client.wbuf.put_slice(b"\r\n");
                        client.wbuf.put_slice(&chunk);
                        client.wbuf.put_slice(b"\r\n");
                    } else {
                        client.wbuf.put_slice(&chunk);
                    }
                    p.bytes += chunk.len() as u64;
                }
            }
        }
        if finished {
            p.up_done = true;
            if client.flush_wbuf().await.is_err() {
                p.client_failed = true;
            }
            return p;
        }
        if !client.wbuf.is_empty() && client.flush_wbuf().await.is_err() {
            p.client_failed = true;
            return p;
        }
        conn.rbuf.reserve(32 * 1024);
        match conn.read_within(&mut client.up_timer, read_timeout).await {
            None => {
                p.up_error = Some("the backend stopped sending the body".into());
                return p;
            }
            Some(Ok(0)) => {
                if let Relay::Compress(c) = &mut mode {
                    match c.step(&mut conn.rbuf, &mut client.wbuf, true) {
                        Ok(_) => {
                            if client.flush_wbuf().await.is_err() {
                                p.client_failed = true;
                            }
                        }
                        Err(e) => p.up_error = Some(e),
                    }
                    // Close-delimited: the connection is not reusable.
                    return p;
                }
                if matches!(mode, Relay::Rechunk | Relay::Close) {
                    if matches!(mode, Relay::Rechunk) {
                        client.wbuf.put_slice(b"0\r\n\r\n");
                    }
                    if client.flush_wbuf().await.is_err() {
                        p.client_failed = true;
                    }
                    // Close-delimited: the connection is not reusable.
                    return p;
                }
                p.up_error = Some("the backend closed the connection mid-body".into());
                return p;
            }
            Some(Err(e)) => {
                p.up_error = Some(format!("reading the body failed: {e}"));
                return p;
            }
            Some(Ok(_)) => {}
        }
    }
}

/// Writes `n` in lower-case hex (a chunk size).
pub(super) fn put_hex(out: &mut BytesMut, n: usize) {
    let digits = (usize::BITS - n.leading_zeros()).div_ceil(4).max(1);
    for i in (0..digits).rev() {
        out.put_u8(b"0123456789abcdef"[(n >> (i * 4)) & 0xf]);
    }
}

/// Reads a whole (small) response body; `None` if it is larger than `max` or fails.
pub(super) async fn read_whole(
    conn: &mut UpConn,
    framing: Framing,
    max: usize,
    timeout: Duration,
) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut chunked = Chunked::default();
    loop {
        match framing {
            Framing::None => return Some(out),
            Framing::Length(n) => {
                if n as usize > max {
                    return None;
                }
                if conn.rbuf.len() as u64 >= n {
                    out.extend_from_slice(&conn.rbuf.split_to(n as usize));
                    return Some(out);
                }
            }
            Framing::Chunked => {
                let mut at = 0;
                while at < conn.rbuf.len() && !chunked.done() {
                    let step = chunked.advance(&conn.rbuf[at..]).ok()?;
                    if let Some((s, e)) = step.data {
                        out.extend_from_slice(&conn.rbuf[at + s..at + e]);
                    }
                    if step.consumed == 0 {
                        break;
                    }
                    at += step.consumed;
                }
                let _ = conn.rbuf.split_to(at);
                if chunked.done() {
                    return Some(out);
                }
                if out.len() > max {
                    return None;
                }
            }
            Framing::Close => {
                out.extend_from_slice(&conn.rbuf.split());
                if out.len() > max {
                    return None;
                }
            }
        }
        conn.rbuf.reserve(16 * 1024);
        match tokio::time::timeout(timeout, conn.io.read_buf(&mut conn.rbuf)).await {
            Ok(Ok(0)) if framing == Framing::Close => return Some(out),
            Ok(Ok(n)) if n > 0 => {}
            _ => return None,
        }
    }
}

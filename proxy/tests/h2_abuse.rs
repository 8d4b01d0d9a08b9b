//! HTTP/2 abuse from raw frames on an h2c listener: rapid reset (CVE-2023-44487) and a
//! CONTINUATION flood are answered with GOAWAY and a closed connection, the origin sees
//! nothing of the flood, and the proxy keeps serving.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// `GET /` for authority `a`, HPACK: indexed :method GET, :scheme http, :path /, and a
/// literal :authority without indexing.
fn get_headers() -> Vec<u8> {
    vec![0x82, 0x86, 0x84, 0x01, 0x01, b'a']
}

/// Reads frames until the connection closes (or `limit` passes); returns the frame types.
async fn frames_until_close(s: &mut tokio::net::TcpStream, limit: Duration) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 65536];
    let end = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(end, s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    let mut kinds = Vec::new();
    let mut at = 0;
    while at + 9 <= buf.len() {
        let len = (usize::from(buf[at]) << 16)
            | (usize::from(buf[at + 1]) << 8)
            | usize::from(buf[at + 2]);
        kinds.push(buf[at + 3]);
        at += 9 + len;
    }
    kinds
}

async fn setup() -> (Origin, Portico) {
    let origin = Origin::named("app").await;
    let p = Portico::start(
        &Config::new()
            .listener_set("h2c", true)
            .upstream(Upstream::new("app", [origin.addr]))
            .render(),
    );
    (origin, p)
}

/// A plain connection to the h2c listener and the bytes that open HTTP/2 on it (the
/// preface and an empty SETTINGS frame), for the test to extend and send.
async fn open(p: &Portico) -> (tokio::net::TcpStream, Vec<u8>) {
    let s = tokio::net::TcpStream::connect(p.addr("http"))
        .await
        .unwrap();
    let mut out = PREFACE.to_vec();
    out.extend(frame(4, 0, 0, &[]));
    (s, out)
}

async fn still_serves(p: &Portico) {
    let r = client().get(p.url("http", "/after")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_gets_goaway() {
    let (origin, p) = setup().await;
    let (mut s, mut out) = open(&p).await;
    // 2,000 streams opened and cancelled at once, as fast as the socket takes them.
    for i in 0..2000u32 {
        let id = 2 * i + 1;
        out.extend(frame(1, 0x5, id, &get_headers()));
        out.extend(frame(3, 0, id, &8u32.to_be_bytes()));
    }
    let _ = s.write_all(&out).await;
    let kinds = frames_until_close(&mut s, Duration::from_secs(10)).await;
    assert!(kinds.contains(&7), "no GOAWAY: frame types {kinds:?}");
    // Most streams never reach the origin; none is left hanging there.
    assert!(
        origin.count() < 2000,
        "{} requests reached the origin",
        origin.count()
    );
    still_serves(&p).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_flood_gets_goaway_and_reaches_nobody() {
    let (origin, p) = setup().await;
    let (mut s, mut out) = open(&p).await;
    // HEADERS without END_HEADERS, then CONTINUATION frames that never end: 16 MiB of
    // header block, far over the 32 KiB header limit.
    out.extend(frame(1, 0x1, 1, &get_headers()));
    let _ = s.write_all(&out).await;
    // A literal field without indexing, new name `x-a`, a 254-byte value (7-bit prefix:
    // 127, then 127 more).
    let mut field = vec![0x00, 0x03, b'x', b'-', b'a', 0x7f, 0x7f];
    field.extend(std::iter::repeat_n(b'v', 254));
    let cont: Vec<u8> = frame(9, 0, 1, &field.repeat(60));
    let mut sent = 0usize;
    for _ in 0..1100 {
        if s.write_all(&cont).await.is_err() {
            break;
        }
        sent += cont.len();
    }
    let kinds = frames_until_close(&mut s, Duration::from_secs(10)).await;
    assert!(
        kinds.contains(&7),
        "no GOAWAY after {sent} bytes: {kinds:?}"
    );
    assert_eq!(origin.count(), 0, "a flooded request reached the origin");
    still_serves(&p).await;
}

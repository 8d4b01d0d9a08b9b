//! Large files: exact bytes over sendfile (plain) and TLS, to slow and parallel readers.

use super::*;

/// Files too large for the memory cache go out with `sendfile(2)` on plain listeners and
/// through a copy on TLS ones: whole and byte-exact to a reader slower than the socket
/// buffers (the kernel says "would block" many times), to many parallel range readers, and
/// with the connection reusable afterwards.
#[tokio::test]
async fn large_files_are_exact_over_sendfile_and_tls_to_slow_and_parallel_readers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("www");
    std::fs::create_dir_all(&root).unwrap();
    let whole: Vec<u8> = (0..6 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    std::fs::write(root.join("big.bin"), &whole).unwrap();
    let pki = Pki::new();
    let p = Portico::start_with(
        &Config::new()
            .listener(Listener::http("https").set(
                "tls",
                serde_json::json!({ "cert": "a.pem", "key": "a.key" }),
            ))
            .route(Route::new().set(
                "static",
                serde_json::json!({ "root": root.display().to_string() }),
            ))
            .render(),
        &[],
        |d| {
            pki.leaf(d, "a", &["a.test"]);
        },
    );

    // A slow reader on one keep-alive connection: two whole files back to back.
    let mut s = tokio::net::TcpStream::connect(p.addr("http"))
        .await
        .unwrap();
    for round in 0..2 {
        s.write_all(b"GET /big.bin HTTP/1.1\r\nHost: a\r\n\r\n")
            .await
            .unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await.unwrap();
            head.push(b[0]);
        }
        let head = String::from_utf8(head).unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains(&format!("content-length: {}", whole.len())),
            "{head}"
        );
        let mut body = vec![0u8; whole.len()];
        let mut got = 0;
        while got < body.len() {
            let n = s
                .read(&mut body[got..(got + 64 * 1024).min(whole.len())])
                .await
                .unwrap();
            assert!(n > 0, "round {round}: closed after {got} bytes");
            got += n;
            if got < 1024 * 1024 {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        assert!(body == whole, "round {round}: body differs");
    }

    // Many parallel range readers, plain and TLS.
    let plain = client();
    let addr = p.addr("https");
    let tls = pki.client(&[("a.test", addr)], false);
    let tls_url = format!("https://a.test:{}/big.bin", addr.port());
    let mut tasks = Vec::new();
    for i in 0..64usize {
        let (c, url) = if i % 2 == 0 {
            (plain.clone(), p.url("http", "/big.bin"))
        } else {
            (tls.clone(), tls_url.clone())
        };
        let whole_len = whole.len();
        tasks.push(tokio::spawn(async move {
            let start = (i * 97_531) % (whole_len - 1);
            let end = (start + 1 + i * 40_000).min(whole_len - 1);
            let r = c
                .get(&url)
                .header("range", format!("bytes={start}-{end}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 206);
            (start, end, r.bytes().await.unwrap())
        }));
    }
    for t in tasks {
        let (start, end, got) = t.await.unwrap();
        assert!(got[..] == whole[start..=end], "range {start}-{end} differs");
    }
    let r = tls.get(&tls_url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.unwrap()[..] == whole[..]);
}

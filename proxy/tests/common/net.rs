//! Clients and raw exchanges: the plain HTTP client, TLS connectors, raw HTTP/1.1 on a socket,
//! reading responses, header fields, refused addresses, test certificates.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::BodyExt;

/// A plain HTTP client (HTTP/1.1, no proxy, no pooling surprises).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .http1_only()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

/// A loopback port kept for this test process, for a server started later (Portico's
/// listener, pebble): a socket bound with `SO_REUSEADDR` that never listens stays bound until
/// the process exits. While it is bound the kernel hands the port to no connection as its
/// ephemeral source port (a port merely found free and released can be taken that way
/// seconds later under parallel tests, and the server then fails to bind), and servers that
/// bind with `SO_REUSEADDR` (Portico's listeners, Go's) can still listen on it. Connections
/// to it are refused until one does.
pub fn reserved_port() -> u16 {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_reuse_address(true).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    let port = socket.local_addr().unwrap().as_socket().unwrap().port();
    // Kept bound for the life of the test process (each test runs in its own under nextest).
    std::mem::forget(socket);
    port
}

/// An address for a backend that refuses connections (nothing listens there). Reserved as
/// [`reserved_port`] is, so no connection takes it as its source port meanwhile (a connect to
/// it from that very port would otherwise reach itself) and a test can start a server there
/// later.
pub fn dead_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], reserved_port()))
}

/// A TLS client trusting only the certificates of `root_pem`.
#[allow(dead_code)]
pub fn tls_connector(root_pem: &str) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut root_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
}

/// Test certificates: a CA and leaf certificates signed by it.
pub struct Pki {
    pub ca_pem: String,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Pki {
    pub fn new() -> Pki {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "Portico Test CA");
        let cert = params.self_signed(&key).unwrap();
        let ca_pem = cert.pem();
        Pki {
            ca_pem,
            ca: rcgen::Issuer::new(params, key),
        }
    }

    /// Writes `<stem>.pem` and `<stem>.key` for `names` into `dir`.
    pub fn leaf(&self, dir: &Path, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let cert_path = dir.join(format!("{stem}.pem"));
        let key_path = dir.join(format!("{stem}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }

    /// A raw TLS connection to `addr` with SNI `sni`, trusting only this CA.
    #[allow(dead_code)]
    pub async fn tls_connect(
        &self,
        addr: SocketAddr,
        sni: &str,
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        use rustls::pki_types::ServerName;
        let connector = tls_connector(&self.ca_pem);
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        connector
            .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
            .await
            .unwrap()
    }

    /// A client trusting this CA; `resolve` maps host names to the proxy's address.
    pub fn client(&self, resolve: &[(&str, SocketAddr)], http2: bool) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .no_proxy()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.ca_pem.as_bytes()).unwrap())
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(20));
        for (name, addr) in resolve {
            b = b.resolve(name, *addr);
        }
        b = if http2 {
            b.http2_prior_knowledge()
        } else {
            b.http1_only()
        };
        b.build().unwrap()
    }
}

/// Raw HTTP/1.1 exchange on a fresh TCP connection: sends `request`, returns everything read
/// until the server closes or `timeout` passes.
pub async fn raw(addr: SocketAddr, request: &[u8], timeout: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(timeout, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The first complete response (head and `content-length` body) at the start of `buf`: its
/// head lower-cased and the range of its body, or `None` while incomplete.
#[allow(dead_code)]
pub fn complete_response(buf: &[u8]) -> Option<(String, std::ops::Range<usize>)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .map_or(0, |v| v.trim().parse().unwrap());
    (buf.len() >= end + 4 + len).then_some((head, end + 4..end + 4 + len))
}

/// Reads one HTTP/1.1 response (head and a `content-length` body) from `s`.
pub async fn read_response(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if complete_response(&buf).is_some() {
            return String::from_utf8_lossy(&buf).into_owned();
        }
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk))
            .await
            .expect("response in time")
            .unwrap();
        assert!(
            n > 0,
            "connection closed mid-response: {}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The header fields of a raw response (or request) head, names lower-cased, in order.
pub fn head_fields(raw: &str) -> Vec<(String, String)> {
    let head = raw.split("\r\n\r\n").next().unwrap_or("");
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}

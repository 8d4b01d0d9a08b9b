//! In-process origins: `Origin` (hyper, records what it receives) and `RawOrigin` (raw bytes both
//! ways, for framing cases).

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::BufRead;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// What an origin saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HashMap<String, Vec<String>>,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

type Handler = Arc<dyn Fn(Seen) -> futures_like::BoxFut + Send + Sync>;

pub mod futures_like {
    use super::*;
    pub type BoxFut =
        std::pin::Pin<Box<dyn std::future::Future<Output = Response<Full<Bytes>>> + Send>>;
}

/// An in-process HTTP/1.1 origin on 127.0.0.1:0 that records what it receives.
pub struct Origin {
    pub name: String,
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Origin {
    /// An origin answering 200 with its name as body and `x-origin: <name>`.
    pub async fn named(name: &str) -> Origin {
        let n = name.to_string();
        Self::start(name, move |_seen| {
            let n = n.clone();
            Box::pin(async move { text(200, &n, &[("x-origin", &n)]) })
        })
        .await
    }

    /// An origin answering with `handler`.
    pub async fn start(
        name: &str,
        handler: impl Fn(Seen) -> futures_like::BoxFut + Send + Sync + 'static,
    ) -> Origin {
        Self::start_on("127.0.0.1:0", name, handler).await
    }

    /// An origin on a given address (to bring a backend back on the same port).
    pub async fn start_on(
        addr: &str,
        name: &str,
        handler: impl Fn(Seen) -> futures_like::BoxFut + Send + Sync + 'static,
    ) -> Origin {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut rx => break,
                    a = listener.accept() => {
                        let Ok((tcp, _)) = a else { continue };
                        let handler = handler.clone();
                        let seen = seen2.clone();
                        conns.spawn(async move {
                            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                                let handler = handler.clone();
                                let seen = seen.clone();
                                async move {
                                    let (parts, body) = req.into_parts();
                                    let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                                    let mut headers: HashMap<String, Vec<String>> = HashMap::new();
                                    for (k, v) in &parts.headers {
                                        headers.entry(k.as_str().to_string()).or_default().push(v.to_str().unwrap_or("").to_string());
                                    }
                                    let s = Seen { method: parts.method.to_string(), uri: parts.uri.to_string(), headers, body };
                                    seen.lock().unwrap().push(s.clone());
                                    Ok::<_, Infallible>(handler(s).await)
                                }
                            });
                            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                                .await;
                        });
                    }
                }
            }
            conns.abort_all();
        });
        Origin {
            name: name.to_string(),
            addr,
            seen,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// An HTTPS origin on 127.0.0.1:0 with the given certificate.
    pub async fn start_tls(
        name: &str,
        cert_pem: &Path,
        key_pem: &Path,
        handler: impl Fn(Seen) -> futures_like::BoxFut + Send + Sync + 'static,
    ) -> Origin {
        let certs: Vec<_> = rustls_pemfile::certs(&mut std::fs::read(cert_pem).unwrap().as_slice())
            .map(|c| c.unwrap())
            .collect();
        let key = rustls_pemfile::private_key(&mut std::fs::read(key_pem).unwrap().as_slice())
            .unwrap()
            .unwrap();
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let handler: Handler = Arc::new(handler);
        let (tx, mut rx) = tokio::sync::oneshot::channel::<()>();
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = &mut rx => break,
                    a = listener.accept() => {
                        let Ok((tcp, _)) = a else { continue };
                        let acceptor = acceptor.clone();
                        let handler = handler.clone();
                        let seen = seen2.clone();
                        tokio::spawn(async move {
                            let Ok(tls) = acceptor.accept(tcp).await else { return };
                            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                                let handler = handler.clone();
                                let seen = seen.clone();
                                async move {
                                    let (parts, _body) = req.into_parts();
                                    let s = Seen { method: parts.method.to_string(), uri: parts.uri.to_string(), headers: HashMap::new(), body: Bytes::new() };
                                    seen.lock().unwrap().push(s.clone());
                                    Ok::<_, Infallible>(handler(s).await)
                                }
                            });
                            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                                .serve_connection(TokioIo::new(tls), svc)
                                .await;
                        });
                    }
                }
            }
        });
        Origin {
            name: name.to_string(),
            addr,
            seen,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Stops listening and drops open connections.
    pub async fn stop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A plain-text response.
pub fn text(status: u16, body: &str, headers: &[(&str, &str)]) -> Response<Full<Bytes>> {
    let mut b = Response::builder().status(status);
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        b = b.header("content-type", "text/plain");
    }
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

/// An origin speaking raw HTTP/1.1: for every request on a connection (head plus a
/// `content-length` body) it records the exact bytes received and writes whatever `respond`
/// returns for them, verbatim. For framing and header cases a library server would tidy up.
pub struct RawOrigin {
    pub addr: SocketAddr,
    pub requests: Arc<Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawOrigin {
    pub async fn start(respond: impl Fn(&[u8]) -> Vec<u8> + Send + Sync + 'static) -> RawOrigin {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let respond = Arc::new(respond);
        let reqs = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    continue;
                };
                let respond = respond.clone();
                let reqs = reqs.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    loop {
                        let end = loop {
                            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break end + 4;
                            }
                            match tcp.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let chunked = head
                            .lines()
                            .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
                        let len = if chunked {
                            // Reads until the body's end: the last chunk and the trailers.
                            loop {
                                if let Some(n) = chunked_len(&buf[end..]) {
                                    break n;
                                }
                                match tcp.read(&mut chunk).await {
                                    Ok(0) | Err(_) => return,
                                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                                }
                            }
                        } else {
                            head.lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse().ok())
                                .unwrap_or(0)
                        };
                        while buf.len() < end + len {
                            match tcp.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let req: Vec<u8> = buf.drain(..end + len).collect();
                        let out = respond(&req);
                        reqs.lock().unwrap().push(req);
                        if out.is_empty() || tcp.write_all(&out).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        RawOrigin {
            addr,
            requests,
            task,
        }
    }

    /// The raw requests received so far.
    pub fn requests(&self) -> Vec<Vec<u8>> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for RawOrigin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The length of a complete chunked body at the start of `b`, or `None` while incomplete.
fn chunked_len(b: &[u8]) -> Option<usize> {
    let mut at = 0;
    loop {
        let line_end = b[at..].windows(2).position(|w| w == b"\r\n")? + at;
        let size_text = std::str::from_utf8(&b[at..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        at = line_end + 2;
        if size == 0 {
            // Trailer lines, then an empty line.
            loop {
                let e = b[at..].windows(2).position(|w| w == b"\r\n")? + at;
                let empty = e == at;
                at = e + 2;
                if empty {
                    return Some(at);
                }
            }
        }
        if b.len() < at + size + 2 {
            return None;
        }
        at += size + 2;
    }
}

//! Test harness: starts the real `portico` binary on ephemeral loopback ports, in-process HTTP
//! origins, and clients. Every server listens on 127.0.0.1:0; nothing uses a fixed port.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

pub mod config;
pub mod dns;

use std::collections::HashMap;
use std::convert::Infallible;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

pub use config::{Config, Listener, Route, Upstream};

/// A running Portico process.
pub struct Portico {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config_path: PathBuf,
    listeners: HashMap<String, SocketAddr>,
    admin: Option<SocketAddr>,
    stderr: Arc<Mutex<Vec<String>>>,
    stdout: Arc<Mutex<Vec<String>>>,
}

/// The portico binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_portico")
}

/// Parses `key=value` fields out of a text log line (values may be quoted).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!(" {key}=");
    let start = line.find(&pat)? + pat.len();
    let rest = &line[start..];
    if let Some(q) = rest.strip_prefix('"') {
        return q.split('"').next();
    }
    rest.split_whitespace().next()
}

impl Portico {
    /// Writes `config` to a temp dir and starts `portico run -c` on it; waits until it listens.
    pub fn start(config: &str) -> Portico {
        Self::start_with(config, &[], |_| {})
    }

    /// Starts Portico on a configuration built with [`Config`].
    pub fn with(config: &Config) -> Portico {
        Self::start(&config.render())
    }

    /// Like [`Portico::start`], with extra environment variables and a hook to add files to the
    /// config directory first.
    pub fn start_with(config: &str, env: &[(&str, &str)], prepare: impl FnOnce(&Path)) -> Portico {
        let dir = tempfile::tempdir().unwrap();
        prepare(dir.path());
        let config_path = dir.path().join("portico.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("run").arg("-c").arg(&config_path);
        Self::spawn(cmd, dir, config_path, env)
    }

    /// Starts `portico run -c path` on a config the test manages itself.
    #[allow(dead_code)]
    pub fn start_path(path: &Path, env: &[(&str, &str)]) -> Portico {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("run").arg("-c").arg(path);
        Self::spawn(cmd, dir, path.to_path_buf(), env)
    }

    /// Starts `portico run --upgrade -c path`: it takes the sockets of a running Portico,
    /// which must be sent SIGQUIT meanwhile.
    #[allow(dead_code)]
    pub fn start_upgrade(path: &Path, env: &[(&str, &str)]) -> Portico {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("run").arg("--upgrade").arg("-c").arg(path);
        Self::spawn(cmd, dir, path.to_path_buf(), env)
    }

    /// Starts the binary with exactly `args` (no config file unless they name one).
    #[allow(dead_code)]
    pub fn start_args(args: &[&str], env: &[(&str, &str)]) -> Portico {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(bin());
        cmd.args(args).env_remove("PORTICO_CONFIG");
        let path = dir.path().join("none");
        Self::spawn(cmd, dir, path, env)
    }

    /// Starts `portico run` with no config file (the embedded default).
    pub fn start_default(env: &[(&str, &str)]) -> Portico {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(bin());
        cmd.arg("run").env_remove("PORTICO_CONFIG");
        let path = dir.path().join("none");
        Self::spawn(cmd, dir, path, env)
    }

    fn spawn(
        mut cmd: Command,
        dir: tempfile::TempDir,
        config_path: PathBuf,
        env: &[(&str, &str)],
    ) -> Portico {
        cmd.env_remove("PORTICO_LOG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().expect("start portico");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        {
            let out = child.stderr.take().unwrap();
            let lines = stderr.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line.clone());
                    let _ = tx.send(line);
                }
            });
        }
        {
            let out = child.stdout.take().unwrap();
            let lines = stdout.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            });
        }
        let mut p = Portico {
            child: Some(child),
            dir,
            config_path,
            listeners: HashMap::new(),
            admin: None,
            stderr,
            stdout,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(remaining.min(Duration::from_millis(200))) {
                Ok(line) => {
                    let (msg, listener, address) = if line.starts_with('{') {
                        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_default();
                        (
                            v["message"].as_str().unwrap_or("").to_string(),
                            v["listener"].as_str().map(str::to_string),
                            v["address"].as_str().map(str::to_string),
                        )
                    } else {
                        let msg =
                            if line.contains(" listening ") || line.contains(" admin listening ") {
                                if line.contains("admin listening") {
                                    "admin listening"
                                } else {
                                    "listening"
                                }
                            } else if line.contains("portico started") {
                                "portico started"
                            } else {
                                ""
                            };
                        (
                            msg.to_string(),
                            field(&line, "listener").map(str::to_string),
                            field(&line, "address").map(str::to_string),
                        )
                    };
                    match msg.as_str() {
                        "listening" => {
                            p.listeners
                                .insert(listener.unwrap(), address.unwrap().parse().unwrap());
                        }
                        "admin listening" => p.admin = Some(address.unwrap().parse().unwrap()),
                        "portico started" => return p,
                        _ => {}
                    }
                }
                Err(_) => {
                    if let Some(status) = p.child.as_mut().unwrap().try_wait().unwrap() {
                        std::thread::sleep(Duration::from_millis(100));
                        panic!(
                            "portico exited with {status} before starting:\n{}",
                            p.stderr_text()
                        );
                    }
                    if Instant::now() > deadline {
                        panic!("portico did not start in time:\n{}", p.stderr_text());
                    }
                }
            }
        }
    }

    /// Address of a listener, by name.
    pub fn addr(&self, listener: &str) -> SocketAddr {
        *self
            .listeners
            .get(listener)
            .unwrap_or_else(|| panic!("no listener {listener:?}; have {:?}", self.listeners))
    }

    /// `http://<listener addr><path>`.
    pub fn url(&self, listener: &str, path: &str) -> String {
        format!("http://{}{path}", self.addr(listener))
    }

    /// Admin address.
    pub fn admin(&self) -> SocketAddr {
        self.admin.expect("admin listener")
    }

    /// `http://<admin addr><path>`.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin())
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit; returns its exit code and how long it took.
    pub fn wait_exit(&mut self, timeout: Duration) -> (Option<i32>, Duration) {
        let start = Instant::now();
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return (status.code(), start.elapsed());
            }
            if start.elapsed() > timeout {
                panic!(
                    "portico did not exit within {timeout:?}:\n{}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// SIGTERM and wait.
    pub fn stop(&mut self) -> Duration {
        self.signal("TERM");
        let (code, took) = self.wait_exit(Duration::from_secs(10));
        assert_eq!(code, Some(0), "portico exit code:\n{}", self.stderr_text());
        took
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn stdout_lines(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// Waits until stdout (the access log) holds a line containing `needle`.
    #[allow(dead_code)]
    pub async fn wait_stdout(&self, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self.stdout_lines().into_iter().find(|l| l.contains(needle)) {
                return l;
            }
            assert!(
                start.elapsed() < timeout,
                "no stdout line with {needle:?} within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until stderr holds a line containing `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some(l) = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            if start.elapsed() > timeout {
                panic!(
                    "no log line with {needle:?} within {timeout:?}:\n{}",
                    self.stderr_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Portico {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if c.try_wait().ok().flatten().is_none() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// The admin's `/status` document.
#[allow(dead_code)]
pub async fn status(p: &Portico) -> serde_json::Value {
    client()
        .get(p.admin_url("/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Runs `portico <args>` to completion; returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args).env_remove("PORTICO_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

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

/// A free address for a backend that refuses connections (nothing listens there).
pub fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
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

/// Fetches a Prometheus metric value (sum over series matching every `labels` pair).
pub async fn metric(p: &Portico, name: &str, labels: &[(&str, &str)]) -> f64 {
    let body = client()
        .get(p.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name)
                && (l.len() == name.len() || matches!(l.as_bytes()[name.len()], b'{' | b' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `portico_http_rejected_total{reason}`: requests Portico answered itself for `reason`.
#[allow(dead_code)]
pub async fn rejected(p: &Portico, reason: &str) -> f64 {
    metric(p, "portico_http_rejected_total", &[("reason", reason)]).await
}

/// Waits until a metric reaches `want` (metrics are updated after the client may already have
/// seen the connection close), failing after five seconds.
pub async fn wait_metric(p: &Portico, name: &str, labels: &[(&str, &str)], want: f64) {
    let start = Instant::now();
    loop {
        let v = metric(p, name, labels).await;
        if v == want {
            return;
        }
        if start.elapsed() > Duration::from_secs(5) {
            panic!("{name}{labels:?} is {v}, expected {want}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Reads one HTTP/1.1 response (head and a `content-length` body) from `s`.
pub async fn read_response(s: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() >= end + 4 + len {
                return String::from_utf8_lossy(&buf).into_owned();
            }
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

/// The header fields of a raw response (or request) head, names lower-cased, in order.
pub fn head_fields(raw: &str) -> Vec<(String, String)> {
    let head = raw.split("\r\n\r\n").next().unwrap_or("");
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect()
}

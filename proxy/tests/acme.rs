//! Automatic HTTPS against a real ACME CA on loopback: Debian's `pebble` (Let's Encrypt's test
//! CA, installed by `scripts/ensure-deps`), whose validation resolves the test host names
//! through the tests' own DNS server to 127.0.0.1, where Portico answers the challenges.
//! Covered: first issuance with TLS-ALPN-01 and with HTTP-01 (ahead of `force_https`),
//! renewal of short-lived certificates, a restart that reuses storage while the CA is down,
//! a CA that is down at start, and an expired stored certificate replaced.
#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::dns::TestDns;
use common::*;
use rustls::pki_types::{CertificateDer, ServerName};

/// A loopback port for a server this test starts later (see [`reserved_port`]): the CA's
/// port in particular stays unused for seconds while Portico retries against it.
fn free_port() -> u16 {
    reserved_port()
}

/// A running pebble.
struct Pebble {
    child: Child,
    /// ACME directory URL.
    directory: String,
    /// Management API (roots).
    management: SocketAddr,
    /// The CA that signed pebble's own HTTPS certificate (for Portico's `ca_roots`).
    https_ca: PathBuf,
    _dir: tempfile::TempDir,
}

impl Pebble {
    /// Starts pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port`,
    /// resolving names with `dns`, issuing certificates valid for `validity` seconds.
    async fn start(
        dns: SocketAddr,
        http_port: u16,
        tls_port: u16,
        validity: Option<u64>,
        listen: Option<u16>,
    ) -> Pebble {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new();
        let (cert, key) = pki.leaf(dir.path(), "pebble", &["127.0.0.1", "localhost"]);
        let https_ca = dir.path().join("pebble-https-ca.pem");
        std::fs::write(&https_ca, &pki.ca_pem).unwrap();
        let listen = SocketAddr::from(([127, 0, 0, 1], listen.unwrap_or_else(free_port)));
        let management = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let mut cfg = serde_json::json!({
            "pebble": {
                "listenAddress": listen.to_string(),
                "managementListenAddress": management.to_string(),
                "certificate": cert,
                "privateKey": key,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
            }
        });
        if let Some(v) = validity {
            cfg["pebble"]["certificateValidityPeriod"] = v.into();
        }
        let cfg_path = dir.path().join("pebble.json");
        std::fs::write(&cfg_path, cfg.to_string()).unwrap();
        let log_path = dir.path().join("pebble.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut child = Command::new("pebble")
            .arg("-config")
            .arg(&cfg_path)
            .arg("-dnsserver")
            .arg(dns.to_string())
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("pebble is installed (scripts/ensure-deps installs it as root)");
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(listen).await.is_err()
            || tokio::net::TcpStream::connect(management).await.is_err()
        {
            let exited = child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "pebble did not start ({exited:?}) on {listen} and {management}: {}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Pebble {
            child,
            directory: format!("https://{listen}/dir"),
            management,
            https_ca,
            _dir: dir,
        }
    }

    /// The root that signs the certificates pebble issues (regenerated per pebble run).
    async fn issuing_root(&self) -> String {
        let ca = std::fs::read(&self.https_ca).unwrap();
        reqwest::Client::builder()
            .no_proxy()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap()
            .get(format!("https://{}/roots/0", self.management))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What every test starts with: a DNS server answering 127.0.0.1 for `host`, an origin, and
/// free ports for Portico's plain and TLS listeners (where the CA validates).
struct Setup {
    dns: TestDns,
    origin: Origin,
    http_port: u16,
    tls_port: u16,
}

impl Setup {
    async fn new(host: &str) -> Setup {
        let dns = TestDns::start().await;
        dns.set_ips(host, &["127.0.0.1".parse().unwrap()], 1);
        Setup {
            dns,
            origin: Origin::named("app").await,
            http_port: free_port(),
            tls_port: free_port(),
        }
    }
}

/// The chain `addr` serves for `sni` when verified against `root_pem`, or why not.
async fn verified_chain(
    addr: SocketAddr,
    sni: &str,
    root_pem: &str,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let connector = tls_connector(root_pem);
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let tls = connector
        .connect(ServerName::try_from(sni.to_string()).unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    Ok(tls.get_ref().1.peer_certificates().unwrap().to_vec())
}

/// Waits until `addr` serves a certificate for `sni` that `root_pem` verifies.
async fn wait_verified(
    addr: SocketAddr,
    sni: &str,
    root_pem: &str,
    p: &Portico,
) -> Vec<CertificateDer<'static>> {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        match verified_chain(addr, sni, root_pem).await {
            Ok(chain) => return chain,
            Err(e) => {
                if Instant::now() > deadline {
                    panic!(
                        "no CA-issued certificate for {sni}: {e}\n/status acme: {}\n{}",
                        status(p).await["acme"],
                        p.stderr_text()
                    );
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A plain listener on `http_port` and a TLS listener on `tls_port` whose certificates come
/// from `acme` (the `tls.acme` table), in front of `origin`.
fn config(http_port: u16, tls_port: u16, origin: SocketAddr, acme: serde_json::Value) -> Config {
    Config::bare()
        .listener(Listener::http("http").set("address", format!("127.0.0.1:{http_port}")))
        .listener(
            Listener::http("https")
                .set("address", format!("127.0.0.1:{tls_port}"))
                .set("tls", serde_json::json!({ "acme": acme })),
        )
        .admin_set("address", "127.0.0.1:0")
        .upstream(Upstream::new("app", [origin]))
        .route(Route::to("app"))
}

/// The `tls.acme` table for `host` against pebble (its HTTPS root trusted), storing in
/// `storage`, retrying after a second.
fn acme_block(pebble: &Pebble, storage: &Path, host: &str) -> serde_json::Value {
    serde_json::json!({
        "hosts": [host],
        "email": "ops@portico.test",
        "directory": pebble.directory,
        "ca_roots": pebble.https_ca.display().to_string(),
        "storage": storage.display().to_string(),
        "retry_min": "1s",
    })
}

async fn acme_status(p: &Portico, host: &str) -> serde_json::Value {
    let s = status(p).await;
    s["acme"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["host"] == host)
        .cloned()
        .unwrap_or_default()
}

/// First issuance over TLS-ALPN-01 on the TLS listener itself; the certificate is served to
/// browsers-to-be, traffic flows, status and metrics say so; then a restart with the CA gone
/// serves the stored certificate at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_alpn_01_issues_then_a_restart_reuses_storage_without_the_ca() {
    let host = "alpn.portico.test";
    let Setup {
        dns,
        origin,
        http_port,
        tls_port,
    } = Setup::new(host).await;
    let pebble = Pebble::start(dns.addr, http_port, tls_port, None, None).await;
    let storage = tempfile::tempdir().unwrap();
    // The CA's HTTPS root stays where the config names it after the CA is gone.
    let kept = tempfile::tempdir().unwrap();
    let ca_file = kept.path().join("ca.pem");
    std::fs::copy(&pebble.https_ca, &ca_file).unwrap();
    let mut acme = acme_block(&pebble, storage.path(), host);
    acme["ca_roots"] = ca_file.display().to_string().into();
    let cfg = config(http_port, tls_port, origin.addr, acme).render();
    let mut p = Portico::start(&cfg);
    let tls_addr = p.addr("https");
    let root = pebble.issuing_root().await;
    let chain = wait_verified(tls_addr, host, &root, &p).await;

    // Traffic over the issued certificate.
    let client = reqwest::Client::builder()
        .no_proxy()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(root.as_bytes()).unwrap())
        .resolve(host, tls_addr)
        .build()
        .unwrap();
    let r = client
        .get(format!("https://{host}:{}/", tls_addr.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "app");

    let st = acme_status(&p, host).await;
    assert_eq!(st["serving"], "issued", "{st}");
    assert_eq!(st["challenge"], "tls-alpn-01");
    assert!(st["last_error"].is_null(), "{st}");
    assert_eq!(
        metric(
            &p,
            "portico_acme_orders_total",
            &[("host", host), ("result", "issued")]
        )
        .await,
        1.0
    );
    let expiry = metric(
        &p,
        "portico_tls_certificate_expiry_seconds",
        &[("host", host)],
    )
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(expiry > now + 86_400.0, "expiry {expiry} vs now {now}");

    // The admin page lists it.
    let page = client_get_text(&p.admin_url("/")).await;
    let row = &page[page.find("id=\"acme\"").expect("an ACME section")..];
    assert!(row.contains(host) && row.contains(">issued<"), "{row}");

    // Stored privately.
    use std::os::unix::fs::PermissionsExt;
    let stored: Vec<_> = walk(storage.path());
    let pem = stored
        .iter()
        .find(|f| f.ends_with(format!("{host}.pem")))
        .unwrap_or_else(|| panic!("no stored certificate in {stored:?}"));
    assert_eq!(
        std::fs::metadata(pem).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert!(stored.iter().any(|f| f.ends_with("account.json")));

    // Restart with the CA gone: the stored certificate is served at once.
    p.stop();
    drop(pebble);
    let p = Portico::start(&cfg);
    let again = verified_chain(p.addr("https"), host, &root)
        .await
        .expect("the stored certificate is served without the CA");
    assert_eq!(again[0], chain[0]);
    assert_eq!(acme_status(&p, host).await["serving"], "stored");
    p.wait_log(
        "serving the stored ACME certificate",
        Duration::from_secs(5),
    );
}

async fn client_get_text(url: &str) -> String {
    client()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// HTTP-01 is answered on the plain listener before `force_https` redirects everything else;
/// other challenge paths are not answered by Portico.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_01_is_answered_ahead_of_force_https() {
    let host = "web.portico.test";
    let Setup {
        dns,
        origin,
        http_port,
        tls_port,
    } = Setup::new(host).await;
    let pebble = Pebble::start(dns.addr, http_port, tls_port, None, None).await;
    let storage = tempfile::tempdir().unwrap();
    let mut acme = acme_block(&pebble, storage.path(), host);
    acme["challenge"] = "http-01".into();
    let p = Portico::with(
        &config(http_port, tls_port, origin.addr, acme).listener_set("force_https", true),
    );
    let root = pebble.issuing_root().await;
    wait_verified(p.addr("https"), host, &root, &p).await;
    let st = acme_status(&p, host).await;
    assert_eq!(st["challenge"], "http-01");
    assert_eq!(st["serving"], "issued");
    // Everything else on the plain listener still redirects, unknown tokens included.
    let r = raw(
        p.addr("http"),
        format!("GET /.well-known/acme-challenge/unknown HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        Duration::from_secs(5),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 301"), "{r}");
}

/// Short-lived certificates are renewed unattended, a third of their lifetime before expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificates_are_renewed() {
    let host = "renew.portico.test";
    let Setup {
        dns,
        origin,
        http_port,
        tls_port,
    } = Setup::new(host).await;
    // 12 s of validity: renewal 8 s after issuance.
    let pebble = Pebble::start(dns.addr, http_port, tls_port, Some(12), None).await;
    let storage = tempfile::tempdir().unwrap();
    let p = Portico::with(&config(
        http_port,
        tls_port,
        origin.addr,
        acme_block(&pebble, storage.path(), host),
    ));
    let root = pebble.issuing_root().await;
    let first = wait_verified(p.addr("https"), host, &root, &p).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let renewed = metric(
            &p,
            "portico_acme_orders_total",
            &[("host", host), ("result", "renewed")],
        )
        .await;
        if renewed >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no renewal: {}\n{}",
            acme_status(&p, host).await,
            p.stderr_text()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let second = verified_chain(p.addr("https"), host, &root).await.unwrap();
    assert_ne!(first[0], second[0], "a new certificate is served");
}

/// The CA is down at start: a placeholder is served and the failure shown; once the CA is
/// up, the retry gets the certificate. An expired stored certificate is replaced likewise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_down_at_start_and_an_expired_stored_certificate_are_recovered() {
    let dns = TestDns::start().await;
    let host = "late.portico.test";
    dns.set_ips(host, &["127.0.0.1".parse().unwrap()], 1);
    let origin = Origin::named("app").await;
    let (http_port, tls_port, ca_port) = (free_port(), free_port(), free_port());
    let storage = tempfile::tempdir().unwrap();
    // An expired certificate for the host in storage, as a previous run would have left it.
    let dir_key = format!("127.0.0.1_{ca_port}_dir");
    let certs = storage.path().join(&dir_key).join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).unwrap();
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(90);
    params.not_after = now - time::Duration::days(1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(
        certs.join(format!("{host}.pem")),
        format!("{}{}", key.serialize_pem(), cert.pem()),
    )
    .unwrap();

    // The CA's address is known but nothing listens there yet. Its HTTPS CA is made now so
    // the config can name it.
    let https_dir = tempfile::tempdir().unwrap();
    let directory = format!("https://127.0.0.1:{ca_port}/dir");
    let placeholder_ca = https_dir.path().join("ca.pem");
    std::fs::write(&placeholder_ca, Pki::new().ca_pem).unwrap();
    let acme = serde_json::json!({
        "hosts": [host],
        "directory": directory,
        "ca_roots": placeholder_ca.display().to_string(),
        "storage": storage.path().display().to_string(),
        "retry_min": "1s",
    });
    let cfg = config(http_port, tls_port, origin.addr, acme).render();
    let p = Portico::start(&cfg);
    p.wait_log("stored certificate has expired", Duration::from_secs(5));
    p.wait_log("placeholder", Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = acme_status(&p, host).await;
        if !st["last_error"].is_null() {
            assert_eq!(st["serving"], "placeholder", "{st}");
            break;
        }
        assert!(Instant::now() < deadline, "no failure shown: {st}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The placeholder answers handshakes (self-signed: a verifying client refuses it).
    let refused = verified_chain(p.addr("https"), host, &Pki::new().ca_pem).await;
    assert!(refused.is_err());

    // The CA comes up on that address, with Portico's ca_roots file now naming its HTTPS CA.
    let pebble = Pebble::start(dns.addr, http_port, tls_port, None, Some(ca_port)).await;
    std::fs::copy(&pebble.https_ca, &placeholder_ca).unwrap();
    let root = pebble.issuing_root().await;
    wait_verified(p.addr("https"), host, &root, &p).await;
    let st = acme_status(&p, host).await;
    assert_eq!(st["serving"], "issued", "{st}");
    assert!(st["last_error"].is_null(), "{st}");
    assert!(metric(&p, "portico_acme_orders_total", &[("result", "error")]).await >= 1.0);
}

/// A challenge the CA cannot validate (its TLS-ALPN-01 connection reaches nobody): the failure
/// and the CA's reason are shown, the placeholder stays served, and the process carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_challenge_is_reported_and_the_placeholder_stays() {
    let host = "unreachable.portico.test";
    let Setup {
        dns,
        origin,
        http_port,
        tls_port,
    } = Setup::new(host).await;
    // The CA validates on a port where nothing listens.
    let pebble = Pebble::start(dns.addr, http_port, free_port(), None, None).await;
    let storage = tempfile::tempdir().unwrap();
    let p = Portico::with(&config(
        http_port,
        tls_port,
        origin.addr,
        acme_block(&pebble, storage.path(), host),
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    let st = loop {
        let st = acme_status(&p, host).await;
        if !st["last_error"].is_null() {
            break st;
        }
        assert!(Instant::now() < deadline, "no failure shown: {st}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let err = st["last_error"].as_str().unwrap();
    assert!(
        err.contains("validation") && err.contains("tls-alpn-01"),
        "the CA's reason: {err}"
    );
    assert_eq!(st["serving"], "placeholder");
    assert!(!st["next_attempt_unix"].is_null());
    assert!(metric(&p, "portico_acme_orders_total", &[("result", "error")]).await >= 1.0);
    // Traffic still flows over the placeholder for a client that accepts it (here: plain).
    let r = client().get(p.url("http", "/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

//! TLS client settings for connections to backends (requests and health checks): the
//! system's trust store, an upstream's own CA file (`tls_ca`), or no verification for
//! `tls_skip_verify`, each with and without ALPN `http/1.1`. Built once and shared; CA files
//! are read when a configuration is loaded (start, reload), so a rotated CA applies on reload
//! and an unreadable one is a located config error that keeps the running configuration.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, RwLock};

use pingora_core::utils::tls::WrappedX509;
use portico_config::{Check, UpstreamTls};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};

/// Accepts any certificate (for `tls_skip_verify`).
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Verifying client config over the system's trust store (built once).
static VERIFYING_PLAIN: LazyLock<Arc<ClientConfig>> = LazyLock::new(|| {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .unwrap_or_else(|e| unreachable!("ring supports the default versions: {e}")),
    )
});

/// Non-verifying client config (built once).
static SKIP_VERIFY_PLAIN: LazyLock<Arc<ClientConfig>> = LazyLock::new(|| {
    let p = provider();
    Arc::new(
        ClientConfig::builder_with_provider(p.clone())
            .with_safe_default_protocol_versions()
            .map(|b| {
                b.dangerous()
                    .with_custom_certificate_verifier(Arc::new(NoVerify(p)))
                    .with_no_client_auth()
            })
            .unwrap_or_else(|e| unreachable!("ring supports the default versions: {e}")),
    )
});

fn with_h1(base: &ClientConfig) -> Arc<ClientConfig> {
    let mut c = base.clone();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

static VERIFYING_H1: LazyLock<Arc<ClientConfig>> = LazyLock::new(|| with_h1(&VERIFYING_PLAIN));
static SKIP_VERIFY_H1: LazyLock<Arc<ClientConfig>> = LazyLock::new(|| with_h1(&SKIP_VERIFY_PLAIN));

/// The client config to use: verifying the backend's certificate or not, offering ALPN
/// `http/1.1` (for requests) or nothing (health checks, which speak HTTP/1.1 anyway).
pub fn config(verify: bool, alpn_h1: bool) -> Arc<ClientConfig> {
    match (verify, alpn_h1) {
        (true, false) => VERIFYING_PLAIN.clone(),
        (false, false) => SKIP_VERIFY_PLAIN.clone(),
        (true, true) => VERIFYING_H1.clone(),
        (false, true) => SKIP_VERIFY_H1.clone(),
    }
}

/// What an upstream's CA file gives: client configs trusting only its certificates, and the
/// certificates for pingora's per-peer CA (the HTTP/2 path).
struct CaConfigs {
    plain: Arc<ClientConfig>,
    h1: Arc<ClientConfig>,
    certs: Arc<[WrappedX509]>,
}

/// CA files loaded by the last configuration load, by path.
static CAS: LazyLock<RwLock<HashMap<PathBuf, Arc<CaConfigs>>>> = LazyLock::new(Default::default);

/// Reads the PEM file at `path` (one or more CA certificates) and makes it available to
/// [`upstream_config`], [`check_config`] and [`pingora_ca`]. Errors say what is wrong with the
/// file, for a located config error.
pub fn load_ca(path: &Path) -> Result<(), String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    let mut certs = Vec::new();
    for item in rustls_pemfile::certs(&mut pem.as_slice()) {
        let der = item.map_err(|e| format!("{}: not a PEM file: {e}", path.display()))?;
        // Parsed by webpki (the verifier) and by x509-parser (pingora's wrapper, which would
        // panic on what it cannot parse) before either uses it.
        roots
            .add(der.clone())
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
        if x509_parser::parse_x509_certificate(der.as_ref()).is_err() {
            return Err(format!("{}: a certificate does not parse", path.display()));
        }
        certs.push(WrappedX509::new(
            der.to_vec(),
            pingora_core::utils::tls::parse_x509,
        ));
    }
    if certs.is_empty() {
        return Err(format!("{}: no CERTIFICATE in the file", path.display()));
    }
    let plain = Arc::new(
        ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .map_err(|e| format!("TLS client settings: {e}"))?,
    );
    let entry = CaConfigs {
        h1: with_h1(&plain),
        plain,
        certs: certs.into(),
    };
    let mut cas = CAS.write().unwrap_or_else(|e| e.into_inner());
    cas.insert(path.to_path_buf(), Arc::new(entry));
    Ok(())
}

fn ca(path: &Path) -> Option<Arc<CaConfigs>> {
    let cas = CAS.read().unwrap_or_else(|e| e.into_inner());
    cas.get(path).cloned()
}

/// The client config for requests to an HTTPS upstream (ALPN `http/1.1` when `alpn_h1`). A
/// `tls_ca` that was not loaded (cannot happen after a successful load) falls back to the
/// system's trust store, which refuses a private CA's certificates: never to no verification.
pub fn upstream_config(t: &UpstreamTls, alpn_h1: bool) -> Arc<ClientConfig> {
    match t.ca.as_deref().and_then(ca) {
        Some(c) if !t.skip_verify => {
            if alpn_h1 {
                c.h1.clone()
            } else {
                c.plain.clone()
            }
        }
        _ => config(!t.skip_verify, alpn_h1),
    }
}

/// The client config for an HTTPS health check: the upstream's trust, unless the check skips
/// verification.
pub fn check_config(check: &Check) -> Arc<ClientConfig> {
    match check.tls_ca.as_deref().and_then(ca) {
        Some(c) if !check.tls_skip_verify => c.plain.clone(),
        _ => config(!check.tls_skip_verify, false),
    }
}

/// The upstream's CA certificates for pingora's per-peer CA (HTTP/2 clients' path).
pub fn pingora_ca(t: &UpstreamTls) -> Option<Arc<[WrappedX509]>> {
    t.ca.as_deref().and_then(ca).map(|c| c.certs.clone())
}

/// A server name for SNI and verification: a DNS name, or an IP address.
pub fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_string())
        .map_err(|e| format!("invalid TLS server name {name:?}: {e}"))
}

//! TLS client settings for connections to backends (requests and health checks): the
//! system's trust store, or no verification for `tls_skip_verify`, each with and without ALPN
//! `http/1.1`. Built once and shared.

use std::sync::{Arc, LazyLock};

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

/// A server name for SNI and verification: a DNS name, or an IP address.
pub fn server_name(name: &str) -> Result<ServerName<'static>, String> {
    ServerName::try_from(name.to_string())
        .map_err(|e| format!("invalid TLS server name {name:?}: {e}"))
}

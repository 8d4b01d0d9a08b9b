//! Certificates the ACME task makes or reads: self-signed placeholders served while the CA
//! has not answered, TLS-ALPN-01 challenge certificates (RFC 8737), and stored PEM (private
//! key and chain in one file) read back with its validity period.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;

/// A certificate ready to serve, with its validity.
#[derive(Debug, Clone)]
pub struct Held {
    /// Chain and signing key.
    pub key: Arc<CertifiedKey>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
}

impl Held {
    /// When to renew: a third of the lifetime before expiry (Let's Encrypt's 90 days: 30 days
    /// before, as certbot does).
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        self.not_after
            .checked_sub(lifetime / 3)
            .unwrap_or(self.not_after)
    }

    /// Whether it is time to renew (or past expiry).
    pub fn due(&self, now: SystemTime) -> bool {
        now >= self.renew_at()
    }
}

fn certified(cert_der: Vec<u8>, key_der: Vec<u8>) -> Result<Arc<CertifiedKey>, String> {
    let provider = rustls::crypto::ring::default_provider();
    let key = provider
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_der)))
        .map_err(|e| format!("unusable generated key: {e}"))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![CertificateDer::from(cert_der)],
        key,
    )))
}

/// A self-signed certificate for `hosts`, served until the CA's arrives (browsers warn; the
/// log says why).
pub fn placeholder(hosts: &[String]) -> Result<Arc<CertifiedKey>, String> {
    let mut params =
        rcgen::CertificateParams::new(hosts.to_vec()).map_err(|e| format!("placeholder: {e}"))?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "Portico placeholder: waiting for the ACME CA",
    );
    let key = rcgen::KeyPair::generate().map_err(|e| format!("placeholder key: {e}"))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("placeholder: {e}"))?;
    certified(cert.der().to_vec(), key.serialize_der())
}

/// The TLS-ALPN-01 answer for `host`: a self-signed certificate for it carrying the
/// `acmeIdentifier` extension with the SHA-256 of the key authorization.
pub fn alpn_challenge(host: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let mut params = rcgen::CertificateParams::new(vec![host.to_string()])
        .map_err(|e| format!("challenge certificate: {e}"))?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| format!("challenge key: {e}"))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("challenge certificate: {e}"))?;
    certified(cert.der().to_vec(), key.serialize_der())
}

fn time(t: x509_parser::time::ASN1Time) -> Option<SystemTime> {
    let secs = u64::try_from(t.timestamp()).ok()?;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Reads a stored PEM (private key and certificate chain, leaf first) and checks that it
/// covers `host` and that the key belongs to the leaf.
pub fn parse_stored(pem: &[u8], host: &str) -> Result<Held, String> {
    let mut certs = Vec::new();
    let mut key = None;
    for item in rustls_pemfile::read_all(&mut &pem[..]) {
        match item.map_err(|e| format!("not a valid PEM file: {e}"))? {
            rustls_pemfile::Item::X509Certificate(c) => certs.push(c),
            rustls_pemfile::Item::Pkcs8Key(k) => key = Some(PrivateKeyDer::Pkcs8(k)),
            rustls_pemfile::Item::Sec1Key(k) => key = Some(PrivateKeyDer::Sec1(k)),
            rustls_pemfile::Item::Pkcs1Key(k) => key = Some(PrivateKeyDer::Pkcs1(k)),
            _ => {}
        }
    }
    let key = key.ok_or("no private key in the file")?;
    if certs.is_empty() {
        return Err("no certificate in the file".into());
    }
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("unusable private key: {e}"))?;
    let (_, leaf) = x509_parser::parse_x509_certificate(&certs[0])
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let not_before = time(leaf.validity().not_before).ok_or("unreadable notBefore")?;
    let not_after = time(leaf.validity().not_after).ok_or("unreadable notAfter")?;
    let ee = webpki::EndEntityCert::try_from(&certs[0])
        .map_err(|e| format!("unreadable certificate: {e:?}"))?;
    let covers = ee
        .valid_dns_names()
        .any(|n| n.trim_end_matches('.').eq_ignore_ascii_case(host));
    if !covers {
        return Err(format!("the certificate does not cover {host}"));
    }
    let certified = CertifiedKey::new(certs, signing);
    certified
        .keys_match()
        .map_err(|e| format!("the key does not belong to the certificate: {e}"))?;
    Ok(Held {
        key: Arc::new(certified),
        not_before,
        not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PEM valid from `before` days ago to `after` days from now.
    fn pem_valid(host: &str, before: i64, after: i64) -> Vec<u8> {
        let mut params = rcgen::CertificateParams::new(vec![host.to_string()]).unwrap();
        let now = ::time::OffsetDateTime::now_utc();
        params.not_before = now - ::time::Duration::days(before);
        params.not_after = now + ::time::Duration::days(after);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        format!("{}{}", key.serialize_pem(), cert.pem()).into_bytes()
    }

    fn pem_for(host: &str, days: i64) -> Vec<u8> {
        pem_valid(host, 1, days)
    }

    #[test]
    fn stored_pem_reads_back_with_its_renewal_time() {
        let held = parse_stored(&pem_for("a.example", 89), "a.example").unwrap();
        let life = held.not_after.duration_since(held.not_before).unwrap();
        assert_eq!(life.as_secs() / 86_400, 90);
        let renew = held.not_after.duration_since(held.renew_at()).unwrap();
        assert_eq!(renew.as_secs() / 86_400, 30);
        assert!(!held.due(SystemTime::now()));
        // 85 days of life, 5 left: inside the last third.
        let soon = parse_stored(&pem_valid("a.example", 80, 5), "a.example").unwrap();
        assert!(soon.due(SystemTime::now()));
    }

    #[test]
    fn a_stored_pem_for_another_host_or_without_a_key_is_refused() {
        let e = parse_stored(&pem_for("a.example", 30), "b.example").unwrap_err();
        assert!(e.contains("does not cover b.example"), "{e}");
        let pem = String::from_utf8(pem_for("a.example", 30)).unwrap();
        let cert_only = &pem[pem.find("-----BEGIN CERTIFICATE").unwrap()..];
        let e = parse_stored(cert_only.as_bytes(), "a.example").unwrap_err();
        assert!(e.contains("no private key"), "{e}");
        assert!(parse_stored(b"garbage", "a.example").is_err());
    }

    #[test]
    fn challenge_certificates_carry_the_acme_identifier() {
        let digest = [7u8; 32];
        let c = alpn_challenge("a.example", &digest).unwrap();
        let (_, x) = x509_parser::parse_x509_certificate(&c.cert[0]).unwrap();
        let ext = x
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        assert!(ext.value.ends_with(&digest));
        assert!(placeholder(&["a.example".into(), "b.example".into()]).is_ok());
    }
}

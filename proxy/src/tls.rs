//! TLS for client-facing listeners: certificate loading and validation, and an SNI resolver
//! whose certificate set can be swapped at runtime, with the certificates an ACME task keeps
//! (and its TLS-ALPN-01 challenge answers) in front of the files.
//!
//! pingora's `TlsSettings::build()` panics on a bad file, so Portico never hands it paths:
//! every PEM is parsed and the key checked against the certificate here, with errors that
//! name the config key, and the resulting `rustls::ServerConfig` is given to pingora ready-made.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use portico_config::{CertPaths, KeyPath, ListenerTls, TlsVersion};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// A problem with a certificate or key file, tied to the config key that names it.
#[derive(Debug, Clone)]
pub struct TlsError {
    /// The config key (`listeners[1].tls`).
    pub key: KeyPath,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// One loaded certificate with the names it is valid for.
#[derive(Debug, Clone)]
pub struct LoadedCert {
    /// Chain and signing key.
    pub key: Arc<CertifiedKey>,
    /// DNS names from the certificate's subject alternative names (lower case; may hold
    /// `*.wildcards`).
    pub names: Vec<String>,
    /// When the leaf certificate expires (`notAfter`), if its validity could be read.
    pub not_after: Option<std::time::SystemTime>,
}

/// The `notAfter` time of a DER certificate. x509-parser reads it (webpki checks validity
/// but does not expose the dates).
pub fn not_after(der: &[u8]) -> Option<std::time::SystemTime> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let secs = cert.validity().not_after.timestamp();
    let secs = u64::try_from(secs).ok()?;
    std::time::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs))
}

fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Loads and checks one certificate/key pair.
pub fn load_pair(paths: &CertPaths) -> Result<LoadedCert, TlsError> {
    let err = |message: String| TlsError {
        key: paths.key_path.clone(),
        message,
    };
    let cert_pem = read_pem(&paths.cert).map_err(err)?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| {
            err(format!(
                "{}: not a valid PEM file: {e}",
                paths.cert.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(err(format!(
            "{}: no certificate found (expected a PEM \"BEGIN CERTIFICATE\" block)",
            paths.cert.display()
        )));
    }
    let key_pem = read_pem(&paths.key).map_err(err)?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| {
            err(format!(
                "{}: not a valid PEM file: {e}",
                paths.key.display()
            ))
        })?
        .ok_or_else(|| {
            err(format!(
                "{}: no private key found (expected a PEM \"PRIVATE KEY\" block)",
                paths.key.display()
            ))
        })?;
    let provider = rustls::crypto::ring::default_provider();
    let signing_key = provider.key_provider.load_private_key(key).map_err(|e| {
        err(format!(
            "{}: unusable private key: {e}",
            paths.key.display()
        ))
    })?;
    let certified = CertifiedKey::new(certs, signing_key);
    certified.keys_match().map_err(|e| {
        err(format!(
            "{} and {} do not belong together: {e}",
            paths.cert.display(),
            paths.key.display()
        ))
    })?;
    let names = {
        let leaf = &certified.cert[0];
        let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| {
            err(format!(
                "{}: unreadable certificate: {e:?}",
                paths.cert.display()
            ))
        })?;
        ee.valid_dns_names()
            .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
            .collect()
    };
    let not_after = not_after(&certified.cert[0]);
    Ok(LoadedCert {
        key: Arc::new(certified),
        names,
        not_after,
    })
}

/// Loads every certificate of a listener; all problems are returned, not just the first.
pub fn load_listener_certs(tls: &ListenerTls) -> Result<Vec<LoadedCert>, Vec<TlsError>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for paths in &tls.certificates {
        match load_pair(paths) {
            Ok(c) => out.push(c),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Certificates indexed by name for SNI.
#[derive(Debug, Default)]
pub struct CertStore {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `(".example.com", cert)` for `*.example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertStore {
    /// Indexes `certs`; the first one is served to clients without SNI or with an unknown name.
    /// When two certificates claim a name, the first one configured wins.
    pub fn new(certs: &[LoadedCert]) -> Self {
        let mut store = CertStore {
            default: certs.first().map(|c| c.key.clone()),
            ..Default::default()
        };
        for c in certs {
            for n in &c.names {
                match n.strip_prefix('*') {
                    Some(suffix) => {
                        store
                            .wildcard
                            .entry(suffix.to_string())
                            .or_insert_with(|| c.key.clone());
                    }
                    None => {
                        store
                            .exact
                            .entry(n.clone())
                            .or_insert_with(|| c.key.clone());
                    }
                }
            }
        }
        store
    }

    /// The certificate for a server name.
    pub fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if let Some(c) = self.exact.get(&name) {
                return Some(c.clone());
            }
            // A wildcard covers exactly one label.
            if let Some(dot) = name.find('.') {
                if let Some(c) = self.wildcard.get(&name[dot..]) {
                    return Some(c.clone());
                }
            }
        }
        self.default.clone()
    }
}

/// The ALPN protocol of TLS-ALPN-01 validation (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

type ByHost = HashMap<String, Arc<CertifiedKey>>;

/// A listener's certificates from an ACME CA (or their self-signed placeholders), and the
/// TLS-ALPN-01 challenge certificates being validated. Written by the ACME task, read by
/// every handshake: each map is swapped whole, so a handshake never takes a lock.
#[derive(Debug, Default)]
pub struct AcmeCerts {
    served: ArcSwap<ByHost>,
    challenges: ArcSwap<ByHost>,
    /// Served for a name no certificate covers (the first configured host).
    default_host: String,
}

impl AcmeCerts {
    /// Certificates for `hosts`; none yet.
    pub fn new(hosts: &[String]) -> Self {
        Self {
            default_host: hosts.first().cloned().unwrap_or_default(),
            ..Default::default()
        }
    }

    fn put(map: &ArcSwap<ByHost>, host: &str, key: Option<Arc<CertifiedKey>>) {
        map.rcu(|m| {
            let mut m = (**m).clone();
            match &key {
                Some(k) => m.insert(host.to_string(), k.clone()),
                None => m.remove(host),
            };
            m
        });
    }

    /// Serves `key` for `host` from the next handshake on.
    pub fn set(&self, host: &str, key: Arc<CertifiedKey>) {
        Self::put(&self.served, host, Some(key));
    }

    /// Answers TLS-ALPN-01 validation of `host` with `key` (`None`: stop answering).
    pub fn set_challenge(&self, host: &str, key: Option<Arc<CertifiedKey>>) {
        Self::put(&self.challenges, host, key);
    }

    fn lookup(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let name = sni?.trim_end_matches('.').to_ascii_lowercase();
        self.served.load().get(&name).cloned()
    }

    fn challenge(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let name = sni?.trim_end_matches('.').to_ascii_lowercase();
        self.challenges.load().get(&name).cloned()
    }

    fn fallback(&self) -> Option<Arc<CertifiedKey>> {
        self.served.load().get(&self.default_host).cloned()
    }
}

/// SNI certificate resolver over a swappable [`CertStore`], with the listener's ACME
/// certificates (if it has any) consulted first for their hosts.
#[derive(Debug)]
pub struct SniResolver {
    store: ArcSwap<CertStore>,
    acme: Option<Arc<AcmeCerts>>,
}

impl SniResolver {
    /// A resolver serving `store`.
    pub fn new(store: CertStore) -> Self {
        Self {
            store: ArcSwap::from_pointee(store),
            acme: None,
        }
    }

    /// A resolver serving `acme`'s certificates for their hosts and `store` for the rest.
    pub fn with_acme(store: CertStore, acme: Arc<AcmeCerts>) -> Self {
        Self {
            store: ArcSwap::from_pointee(store),
            acme: Some(acme),
        }
    }

    /// The ACME certificates this resolver serves, if any.
    pub fn acme(&self) -> Option<&Arc<AcmeCerts>> {
        self.acme.as_ref()
    }

    /// Takes over the certificates of another resolver (a reload's freshly loaded ones).
    pub fn replace_from(&self, other: &SniResolver) {
        self.store.store(other.store.load_full());
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let sni = hello.server_name();
        let Some(acme) = &self.acme else {
            return self.store.load().lookup(sni);
        };
        // Only a CA's validator offers acme-tls/1; it gets the challenge certificate or no
        // handshake at all, never a served one.
        if hello
            .alpn()
            .is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN))
        {
            return acme.challenge(sni);
        }
        acme.lookup(sni)
            .or_else(|| self.store.load().lookup(sni))
            .or_else(|| acme.fallback())
    }
}

/// Builds the rustls server configuration of a TLS listener.
pub fn server_config(tls: &ListenerTls, resolver: Arc<SniResolver>) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let builder = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap_or_else(|e| unreachable!("ring supports TLS 1.2 and 1.3: {e}"));
    let mut config = builder.with_no_client_auth().with_cert_resolver(resolver);
    config.alpn_protocols = if tls.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    if tls
        .acme
        .as_ref()
        .is_some_and(|a| a.challenge == portico_config::AcmeChallenge::TlsAlpn01)
    {
        config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    Arc::new(config)
}

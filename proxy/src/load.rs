//! Loading a configuration for a start or a reload: the file (or the embedded default) read
//! and validated, and the TLS material its listeners name loaded and checked, every problem
//! located in the file. Shared by `portico run`, `portico check` and reloads.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use pingora_core::listeners::tls::Acceptor;
use portico_config::{ConfigErrors, Loaded, Problems};

use crate::tls::{self, CertStore, SniResolver};

/// The config file used when neither `-c` nor `$PORTICO_CONFIG` names one.
pub const SYSTEM_CONFIG: &str = "/etc/portico/portico.toml";

/// Where the config came from, for the user.
#[derive(Debug, Clone)]
pub struct ConfigChoice {
    /// The file, or `None` for the embedded default.
    pub path: Option<PathBuf>,
    /// How it was chosen: "--config", "$PORTICO_CONFIG", "/etc/portico/portico.toml" or
    /// "embedded default".
    pub from: &'static str,
}

/// Resolves the config file: `-c`, then `$PORTICO_CONFIG`, then `system` if it exists, else
/// the embedded default.
pub fn choose_config(explicit: Option<PathBuf>, system: &Path) -> ConfigChoice {
    if let Some(p) = explicit {
        return ConfigChoice {
            path: Some(p),
            from: "--config",
        };
    }
    if let Some(p) = std::env::var_os("PORTICO_CONFIG").filter(|v| !v.is_empty()) {
        return ConfigChoice {
            path: Some(PathBuf::from(p)),
            from: "$PORTICO_CONFIG",
        };
    }
    if system.exists() {
        return ConfigChoice {
            path: Some(system.to_path_buf()),
            from: SYSTEM_CONFIG,
        };
    }
    ConfigChoice {
        path: None,
        from: "embedded default",
    }
}

/// Loads the configuration: the file if given, else the embedded default.
pub fn load_config(path: Option<&std::path::Path>) -> Result<Loaded, ConfigErrors> {
    match path {
        Some(p) => portico_config::load(p),
        None => portico_config::embedded(&portico_config::ProcessEnv),
    }
}

/// TLS material of one listener, checked and ready for handshakes.
pub struct ListenerTls {
    /// Swappable certificate store.
    pub resolver: Arc<SniResolver>,
    /// pingora acceptor over the rustls config.
    pub acceptor: Arc<Acceptor>,
    /// When each certificate file's names expire (for the expiry metric).
    pub expiries: Vec<(String, std::time::SystemTime)>,
}

impl ListenerTls {
    /// Sets `portico_tls_certificate_expiry_seconds` for the files' names on `listener`.
    pub fn publish_expiry(&self, listener: &str, gauge: &prometheus::IntGaugeVec) {
        for (name, at) in &self.expiries {
            let secs = at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            gauge.with_label_values(&[listener, name]).set(secs);
        }
    }
}

/// Loads every listener's certificates; all problems are reported together, located in the
/// config file.
pub fn prepare_tls(loaded: &Loaded) -> Result<Vec<Option<ListenerTls>>, ConfigErrors> {
    let mut problems = Problems::default();
    let mut out = Vec::new();
    for l in &loaded.config.listeners {
        let Some(t) = &l.tls else {
            out.push(None);
            continue;
        };
        match tls::load_listener_certs(t) {
            Ok(certs) => {
                let store = CertStore::new(&certs);
                let resolver = Arc::new(match &t.acme {
                    Some(a) => {
                        SniResolver::with_acme(store, Arc::new(tls::AcmeCerts::new(&a.hosts)))
                    }
                    None => SniResolver::new(store),
                });
                let config = tls::server_config(t, resolver.clone());
                let expiries = certs
                    .iter()
                    .filter_map(|c| c.not_after.map(|at| (c, at)))
                    .flat_map(|(c, at)| c.names.iter().map(move |n| (n.clone(), at)))
                    .collect();
                out.push(Some(ListenerTls {
                    resolver,
                    acceptor: Arc::new(Acceptor::from_server_config(config)),
                    expiries,
                }));
            }
            Err(errs) => {
                for e in errs {
                    problems.add(e.key, e.message);
                }
                out.push(None);
            }
        }
    }
    // Upstreams' CA files: read now, so a bad one is a located error and keeps the running
    // configuration on a reload.
    for u in &loaded.config.upstreams {
        if let Some(path) = u.tls.as_ref().and_then(|t| t.ca.as_deref()) {
            if let Err(e) = crate::tls_client::load_ca(path) {
                let key = portico_config::KeyPath::root()
                    .key("upstreams")
                    .key(&u.name)
                    .key("tls_ca");
                problems.add(key, e);
            }
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems.into_errors(&loaded.source))
    }
}

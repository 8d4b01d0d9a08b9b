//! Loading a configuration for a start or a reload: the file (or the embedded default) read
//! and validated, and the TLS material its listeners name loaded and checked, every problem
//! located in the file. Shared by `portico run`, `portico check` and reloads.

use std::sync::Arc;

use pingora_core::listeners::tls::Acceptor;
use portico_config::{ConfigErrors, Loaded, Problems};

use crate::tls::{self, CertStore, SniResolver};

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
                out.push(Some(ListenerTls {
                    resolver,
                    acceptor: Arc::new(Acceptor::from_server_config(config)),
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
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems.into_errors(&loaded.source))
    }
}

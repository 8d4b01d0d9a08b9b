//! Validation of a TLS listener's `acme` block: hosts, directory, challenge, storage.

use std::path::PathBuf;

use crate::defaults as d;
use crate::error::KeyPath;
use crate::file::*;
use crate::model::*;

use super::*;

impl Validator<'_> {
    /// `tls.acme`: host names checked as DNS names an ACME CA can validate, the directory URL
    /// (or `letsencrypt` / `letsencrypt-staging`), the challenge type, and the storage
    /// directory (default: `$STATE_DIRECTORY/acme` under systemd, else
    /// [`d::ACME_STORAGE`]).
    pub(super) fn acme(&mut self, a: AcmeFile, k: &KeyPath) -> Acme {
        let mut hosts: Vec<String> = Vec::new();
        match a.hosts {
            None => self.err(
                k.key("hosts"),
                "missing: the host names to get certificates for",
            ),
            Some(list) if list.is_empty() => {
                self.err(k.key("hosts"), "at least one host name is needed")
            }
            Some(list) => {
                for (i, h) in list.into_iter().enumerate() {
                    let h = h.trim_end_matches('.').to_ascii_lowercase();
                    if let Err(why) = acme_host(&h) {
                        self.err(k.key("hosts").index(i), format!("{h:?}: {why}"));
                    } else if hosts.contains(&h) {
                        self.err(k.key("hosts").index(i), format!("{h:?} is listed twice"));
                    } else {
                        hosts.push(h);
                    }
                }
            }
        }
        let directory = match a.directory.as_deref() {
            None | Some("letsencrypt") => d::ACME_DIRECTORY.to_string(),
            Some("letsencrypt-staging") => d::ACME_DIRECTORY_STAGING.to_string(),
            Some(u) if u.starts_with("https://") && u.len() > "https://".len() => u.to_string(),
            Some(u) => {
                self.err(
                    k.key("directory"),
                    format!(
                        "{u:?} is not an ACME directory: an https:// URL, \"letsencrypt\" or \"letsencrypt-staging\""
                    ),
                );
                String::new()
            }
        };
        let challenge = a.challenge.unwrap_or(AcmeChallenge::TlsAlpn01);
        if let Some(e) = &a.email {
            if !e.contains('@')
                || e.starts_with('@')
                || e.ends_with('@')
                || e.contains(char::is_whitespace)
            {
                self.err(k.key("email"), format!("{e:?} is not an email address"));
            }
        }
        let storage = match a.storage {
            Some(s) => self.resolve_path(&s),
            None => match std::env::var("STATE_DIRECTORY") {
                // systemd's StateDirectory= (a colon-separated list when there are several).
                Ok(v) if !v.is_empty() => {
                    PathBuf::from(v.split(':').next().unwrap_or(&v)).join("acme")
                }
                _ => PathBuf::from(d::ACME_STORAGE),
            },
        };
        let ca_roots = a.ca_roots.map(|p| self.resolve_path(&p));
        if let Some(p) = &ca_roots {
            if !p.is_file() {
                self.err(
                    k.key("ca_roots"),
                    format!("{} is not a readable file", p.display()),
                );
            }
        }
        Acme {
            hosts,
            email: a.email,
            directory,
            challenge,
            storage,
            ca_roots,
            retry_min: dur(a.retry_min, d::ACME_RETRY_MIN),
            key_path: k.clone(),
        }
    }
}

//! Certificate files and ACME-managed certificates: readable, valid, not expiring soon; the
//! ACME storage writable.

use std::time::{Duration, SystemTime};

use portico_config::Config;

use super::*;

/// Certificates that are expired or expire within `soon`.
pub fn certificates(cfg: &Config, now: SystemTime, soon: Duration) -> Vec<Finding> {
    let mut out = Vec::new();
    for l in &cfg.listeners {
        let Some(t) = &l.tls else { continue };
        for paths in &t.certificates {
            let check = format!("certificate {}", paths.cert.display());
            match crate::tls::load_pair(paths) {
                Err(e) => out.push(Finding::new(check, Status::Fix, e.message)),
                Ok(c) => match c.not_after {
                    None => out.push(Finding::new(check, Status::Info, "expiry unreadable")),
                    Some(end) => {
                        let names = c.names.join(", ");
                        match end.duration_since(now) {
                            Err(_) => out.push(
                                Finding::new(
                                    check,
                                    Status::Fix,
                                    format!("expired {} ({names})", httpdate::fmt_http_date(end)),
                                )
                                .fix("replace the certificate; `portico` reloads it on SIGHUP"),
                            ),
                            Ok(left) if left < soon => out.push(
                                Finding::new(
                                    check,
                                    Status::Fix,
                                    format!(
                                        "expires in {} day(s), {} ({names})",
                                        left.as_secs() / 86_400,
                                        httpdate::fmt_http_date(end)
                                    ),
                                )
                                .fix("renew the certificate; `portico` reloads it on SIGHUP"),
                            ),
                            Ok(left) => out.push(Finding::new(
                                check,
                                Status::Ok,
                                format!(
                                    "valid for {} more day(s) ({names})",
                                    left.as_secs() / 86_400
                                ),
                            )),
                        }
                    }
                },
            }
        }
    }
    out
}

/// ACME hosts: the stored certificate missing (obtained at start), unusable, expired or
/// a third of the way through its renewal window without a renewal (renewal is failing), and
/// a storage directory Portico cannot write.
pub fn acme_certificates(cfg: &Config, now: SystemTime) -> Vec<Finding> {
    let mut out = Vec::new();
    for l in &cfg.listeners {
        let Some(a) = l.tls.as_ref().and_then(|t| t.acme.as_ref()) else {
            continue;
        };
        if let Err(why) = writable(&a.storage) {
            out.push(
                Finding::new(
                    format!("acme storage {}", a.storage.display()),
                    Status::Fix,
                    why,
                )
                .fix("give the user Portico runs as write access to it (the systemd unit's StateDirectory does), or set tls.acme.storage"),
            );
        }
        for host in &a.hosts {
            let check = format!("acme certificate {host}");
            let f = match crate::acme::stored(a, host) {
                Ok(None) => Finding::new(
                    check,
                    Status::Info,
                    format!(
                        "none stored yet: obtained from {} at start ({})",
                        a.directory,
                        a.challenge.as_str()
                    ),
                ),
                Err(e) => Finding::new(check, Status::Fix, e)
                    .fix("remove the file; Portico orders a new certificate at start"),
                Ok(Some(h)) => {
                    let window = h.not_after.duration_since(h.renew_at()).unwrap_or_default();
                    let failing = now > h.renew_at() + window / 3;
                    match h.not_after.duration_since(now) {
                    Err(_) => Finding::new(
                        check,
                        Status::Fix,
                        format!("expired {}", httpdate::fmt_http_date(h.not_after)),
                    )
                    .fix("Portico orders a new one while running: see `acme` in the admin /status for the last error"),
                    Ok(left) if failing => Finding::new(
                        check,
                        Status::Fix,
                        format!(
                            "expires in {} day(s), {}: renewal is not succeeding",
                            left.as_secs() / 86_400,
                            httpdate::fmt_http_date(h.not_after)
                        ),
                    )
                    .fix("see `acme` in the admin /status for the last error (DNS of the host, port 80/443 reachable from the CA, CA rate limits)"),
                    Ok(left) => Finding::new(
                        check,
                        Status::Ok,
                        format!("valid for {} more day(s)", left.as_secs() / 86_400),
                    ),
                    }
                }
            };
            out.push(f);
        }
    }
    out
}

/// Whether `dir` can be written (or created) by this process.
fn writable(dir: &std::path::Path) -> Result<(), String> {
    let mut probe = dir;
    while !probe.exists() {
        match probe.parent() {
            Some(p) if !p.as_os_str().is_empty() => probe = p,
            _ => break,
        }
    }
    nix::unistd::access(
        probe,
        nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
    )
    .map_err(|e| {
        if probe == dir {
            format!("not writable by this user: {e}")
        } else {
            format!(
                "missing, and {} is not writable by this user: {e}",
                probe.display()
            )
        }
    })
}

//! Validation of an upstream's `check` (active health checks in fly.toml words), `passive`
//! ejection and `discovery` (DNS).

use std::time::Duration;

use crate::defaults as d;
use crate::error::KeyPath;
use crate::file::*;
use crate::model::*;

use super::*;

impl Validator<'_> {
    pub(super) fn check(&mut self, f: CheckFile, k: &KeyPath) -> Option<Check> {
        let kind = f.kind.unwrap_or(CheckKind::Http);
        let interval = dur(f.interval, d::CHECK_INTERVAL);
        let timeout = dur(f.timeout, d::CHECK_TIMEOUT);
        if interval < Duration::from_millis(100) {
            self.err(k.key("interval"), "must be at least 100ms");
        }
        if timeout.is_zero() {
            self.err(k.key("timeout"), "must be greater than zero");
        }
        let path = f.path.clone().unwrap_or_else(|| "/".to_string());
        if !path.starts_with('/') || path.contains(char::is_whitespace) {
            self.err(
                k.key("path"),
                format!("path {path:?} must start with '/' and hold no spaces"),
            );
        }
        let method = f
            .method
            .clone()
            .unwrap_or_else(|| "GET".to_string())
            .to_ascii_uppercase();
        if !is_token(&method) {
            self.err(k.key("method"), format!("invalid method {method:?}"));
        }
        let https = f.protocol == Some(crate::closed::Protocol::Https);
        if kind == CheckKind::Tcp {
            for (set, key) in [
                (f.path.is_some(), "path"),
                (f.method.is_some(), "method"),
                (f.protocol.is_some(), "protocol"),
                (f.headers.is_some(), "headers"),
                (f.expect_status.is_some(), "expect_status"),
                (f.tls_server_name.is_some(), "tls_server_name"),
                (f.tls_skip_verify.is_some(), "tls_skip_verify"),
            ] {
                if set {
                    self.err(k.key(key), "only applies to type = \"http\" checks");
                }
            }
        } else if !https {
            for (set, key) in [
                (f.tls_server_name.is_some(), "tls_server_name"),
                (f.tls_skip_verify.is_some(), "tls_skip_verify"),
            ] {
                if set {
                    self.err(k.key(key), "only applies with protocol = \"https\"");
                }
            }
        }
        let mut headers = Vec::new();
        for (name, value) in f.headers.unwrap_or_default() {
            if !is_token(&name) {
                self.err(
                    k.key("headers").key(&name),
                    format!("{name:?} is not a valid header name"),
                );
            } else if !is_header_value(&value) {
                self.err(
                    k.key("headers").key(&name),
                    "header values cannot contain control characters",
                );
            } else {
                headers.push((name, value));
            }
        }
        let rise = f.rise.map_or(d::CHECK_RISE, |v| v.0);
        let fall = f.fall.map_or(d::CHECK_FALL, |v| v.0);
        if !(1..=100).contains(&rise) {
            self.err(k.key("rise"), format!("{rise} is out of range (1 to 100)"));
        }
        if !(1..=100).contains(&fall) {
            self.err(k.key("fall"), format!("{fall} is out of range (1 to 100)"));
        }
        let mut expect_status = Vec::new();
        for (i, st) in f.expect_status.unwrap_or_default().into_iter().enumerate() {
            let parsed = match &st {
                StatusSpec::Code(c) if (100..=599).contains(c) => {
                    Some(StatusMatch::Code(*c as u16))
                }
                StatusSpec::Text(t) => {
                    let t = t.to_ascii_lowercase();
                    match t.as_bytes() {
                        [c @ b'1'..=b'5', b'x', b'x'] => {
                            Some(StatusMatch::Class(u16::from(c - b'0')))
                        }
                        _ => t
                            .parse::<u16>()
                            .ok()
                            .filter(|c| (100..=599).contains(c))
                            .map(StatusMatch::Code),
                    }
                }
                StatusSpec::Code(_) => None,
            };
            match parsed {
                Some(p) => expect_status.push(p),
                None => self.err(
                    k.key("expect_status").index(i),
                    "expected a status code (100 to 599) or a class like \"2xx\"",
                ),
            }
        }
        if expect_status.is_empty() {
            expect_status.push(StatusMatch::Class(2));
        }
        if let Some(p) = f.port {
            if p.0 == 0 {
                self.err(k.key("port"), "port 0 is not a port");
            }
        }
        Some(Check {
            kind,
            path,
            method,
            interval,
            timeout,
            grace_period: dur(f.grace_period, Duration::ZERO),
            https,
            tls_server_name: f.tls_server_name,
            tls_skip_verify: f.tls_skip_verify.is_some_and(|v| v.0),
            tls_ca: None,
            headers,
            port: f.port.map(|p| p.0),
            rise,
            fall,
            expect_status,
        })
    }

    pub(super) fn passive(&mut self, f: Option<PassiveFile>, k: &KeyPath) -> Passive {
        let f = f.unwrap_or_default();
        let eject_for = dur(f.eject_for, d::EJECT_FOR);
        let max_eject_for = dur(f.max_eject_for, d::MAX_EJECT_FOR);
        if eject_for.is_zero() {
            self.err(k.key("eject_for"), "must be greater than zero");
        }
        if max_eject_for < eject_for {
            self.err(k.key("max_eject_for"), "is shorter than eject_for");
        }
        Passive {
            connect_failures: f
                .connect_failures
                .map_or(d::PASSIVE_CONNECT_FAILURES, |v| v.0),
            http_5xx: f.http_5xx.map_or(0, |v| v.0),
            eject_for,
            max_eject_for,
        }
    }

    pub(super) fn discovery(&mut self, f: DiscoveryFile, k: &KeyPath) -> Option<Discovery> {
        let port = match f.port {
            Some(p) if p.0 > 0 => p.0,
            Some(_) => {
                self.err(k.key("port"), "port 0 is not a backend port");
                return None;
            }
            None => {
                self.err(
                    k.clone(),
                    "missing `port` (the port the discovered backends listen on)",
                );
                return None;
            }
        };
        let source = match (f.dns, f.fly_app) {
            (Some(name), None) => {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                if !is_dns_name(&name) {
                    self.err(k.key("dns"), format!("{name:?} is not a valid DNS name"));
                    return None;
                }
                if let Some(r) = &f.region {
                    if !is_name(r) {
                        self.err(k.key("region"), format!("invalid region {r:?}"));
                    }
                }
                DiscoverySource::Dns {
                    name,
                    region: f.region,
                }
            }
            (None, Some(app)) => {
                if !is_name(&app) || app.contains('.') {
                    self.err(k.key("fly_app"), format!("{app:?} is not a valid app name"));
                    return None;
                }
                if f.region.is_some() {
                    self.err(
                        k.key("region"),
                        "regions come from DNS in Fly mode; `region` only applies with `dns`",
                    );
                }
                DiscoverySource::Fly { app }
            }
            (Some(_), Some(_)) => {
                self.err(k.clone(), "use either `dns` or `fly_app`, not both");
                return None;
            }
            (None, None) => {
                self.err(
                    k.clone(),
                    "missing `dns` (a name to resolve) or `fly_app` (a Fly app on the private network)",
                );
                return None;
            }
        };
        Some(Discovery { source, port })
    }
}

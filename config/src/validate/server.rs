//! Validation of `[server]`, `[replay]` (with its write-routing rules) and `[dns]`.

use std::time::Duration;

use crate::defaults as d;
use crate::error::KeyPath;
use crate::file::*;
use crate::model::*;

use super::*;

impl Validator<'_> {
    pub(super) fn server(&mut self, f: ServerFile) -> Server {
        let k = KeyPath::root().key("server");
        let name = f.name.unwrap_or_else(|| d::SERVER_NAME.to_string());
        if !is_token(&name) {
            self.err(
                k.key("name"),
                format!("{name:?} must be a single token (letters, digits, '-', '.', '_')"),
            );
        }
        let region = f.region.unwrap_or_else(|| d::REGION.to_string());
        let region = if region.is_empty() {
            d::REGION.to_string()
        } else {
            region
        };
        if !is_name(&region) {
            self.err(
                k.key("region"),
                format!("invalid region {region:?} (letters, digits, '-', '_')"),
            );
        }
        let threads = match f.threads {
            Some(t) if t.0 == 0 || t.0 > 1024 => {
                self.err(
                    k.key("threads"),
                    format!("{} is out of range (1 to 1024)", t.0),
                );
                1
            }
            Some(t) => t.0,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let log_level = f.log_level.unwrap_or_else(|| d::LOG_LEVEL.to_string());
        if let Err(e) = parse_log_level(&log_level) {
            self.err(k.key("log_level"), e);
        }
        let log_format = f.log_format.unwrap_or(LogFormat::Text);
        let access_log_format = f.access_log_format.unwrap_or(match log_format {
            LogFormat::Text => AccessLogFormat::Text,
            LogFormat::Json => AccessLogFormat::Json,
        });
        let mut trusted_proxies = Vec::new();
        for (i, p) in f.trusted_proxies.unwrap_or_default().iter().enumerate() {
            match parse_cidr(p) {
                Ok(net) => trusted_proxies.push(net),
                Err(e) => self.err(k.key("trusted_proxies").index(i), e),
            }
        }
        let request_id_header = f
            .request_id_header
            .unwrap_or_else(|| d::REQUEST_ID_HEADER.to_string())
            .to_ascii_lowercase();
        if !is_token(&request_id_header) {
            self.err(
                k.key("request_id_header"),
                format!("{request_id_header:?} is not a valid header name"),
            );
        }
        let shutdown_timeout = dur(f.shutdown_timeout, d::SHUTDOWN_TIMEOUT);
        let drain_grace = dur(f.drain_grace, d::DRAIN_GRACE);
        if drain_grace > Duration::from_secs(60) {
            self.err(k.key("drain_grace"), "must be at most 60s");
        }
        let primary_region = f.primary_region.clone().filter(|r| !r.is_empty());
        if let Some(r) = &primary_region {
            if !is_name(r) {
                self.err(k.key("primary_region"), format!("invalid region {r:?}"));
            }
        }
        let mut region_order = Vec::new();
        for (i, r) in f
            .region_order
            .clone()
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            if is_name(&r) {
                region_order.push(r);
            } else {
                self.err(
                    k.key("region_order").index(i),
                    format!("invalid region {r:?}"),
                );
            }
        }
        if let Some(n) = f.max_open_files {
            if n.0 < 64 {
                self.err(
                    k.key("max_open_files"),
                    format!("{} is too low to run a proxy (at least 64)", n.0),
                );
            }
        }
        Server {
            name,
            region,
            threads,
            work_stealing: f.work_stealing.is_some_and(|f| f.0),
            shutdown_timeout,
            drain_grace,
            log_level,
            log_format,
            access_log: f.access_log.is_none_or(|f| f.0),
            access_log_format,
            trusted_proxies,
            fly_headers: f.fly_headers.is_some_and(|f| f.0),
            request_id_header,
            max_open_files: f.max_open_files.map(|n| n.0),
            region_order,
            routing_headers: f.routing_headers.is_none_or(|v| v.0),
            primary_region,
        }
    }

    pub(super) fn replay(&mut self, f: ReplayFile) -> Replay {
        let k = KeyPath::root().key("replay");
        let max_body = f.max_body.map_or(d::REPLAY_MAX_BODY, |v| v.0);
        if max_body > d::REPLAY_MAX_BODY_LIMIT {
            self.err(
                k.key("max_body"),
                format!("{max_body} bytes is above the limit of 64MiB"),
            );
        }
        let cache_size = f.cache_size.map_or(d::REPLAY_CACHE_SIZE, |v| v.0);
        if cache_size == 0 {
            self.err(k.key("cache_size"), "must be at least 1");
        }
        Replay {
            enabled: f.enabled.is_none_or(|v| v.0),
            max_body,
            cache_size,
        }
    }

    /// `writes = "primary" | "any"` with optional `write_methods`.
    pub(super) fn writes(
        &mut self,
        writes: Option<String>,
        methods: Option<Vec<String>>,
        k: &KeyPath,
        primary: bool,
    ) -> Option<Option<WriteRouting>> {
        let routing = match writes.as_deref() {
            None if methods.is_some() => {
                self.err(
                    k.key("write_methods"),
                    "only applies with writes = \"primary\"",
                );
                return None;
            }
            None => return None,
            Some("any") => None,
            Some("primary") => {
                if !primary {
                    self.err(k.key("writes"), "writes = \"primary\" needs [server] primary_region (for example \"${PRIMARY_REGION}\")");
                }
                let methods = match methods {
                    None => vec!["POST", "PUT", "PATCH", "DELETE", "CONNECT", "TRACE"]
                        .into_iter()
                        .map(str::to_string)
                        .collect(),
                    Some(list) => {
                        let mut out = Vec::new();
                        for (i, m) in list.into_iter().enumerate() {
                            let m = m.to_ascii_uppercase();
                            if is_token(&m) {
                                out.push(m);
                            } else {
                                self.err(
                                    k.key("write_methods").index(i),
                                    format!("invalid method {m:?}"),
                                );
                            }
                        }
                        out
                    }
                };
                Some(WriteRouting { methods })
            }
            Some(other) => {
                self.err(
                    k.key("writes"),
                    format!("unknown value {other:?}: expected \"primary\" or \"any\""),
                );
                return None;
            }
        };
        Some(routing)
    }

    pub(super) fn dns(&mut self, f: DnsFile) -> Dns {
        let k = KeyPath::root().key("dns");
        let mut servers = Vec::new();
        for (i, s) in f.servers.unwrap_or_default().iter().enumerate() {
            match parse_dns_server(s) {
                Ok(a) => servers.push(a),
                Err(e) => self.err(k.key("servers").index(i), e),
            }
        }
        let attempts = f.attempts.map_or(d::DNS_ATTEMPTS, |a| a.0);
        if !(1..=10).contains(&attempts) {
            self.err(
                k.key("attempts"),
                format!("{attempts} is out of range (1 to 10)"),
            );
        }
        let timeout = dur(f.timeout, d::DNS_TIMEOUT);
        if timeout.is_zero() {
            self.err(k.key("timeout"), "must be greater than zero");
        }
        let min_ttl = dur(f.min_ttl, d::DNS_MIN_TTL);
        let max_ttl = dur(f.max_ttl, d::DNS_MAX_TTL);
        if min_ttl < Duration::from_millis(100) {
            self.err(
                k.key("min_ttl"),
                "must be at least 100ms (a proxy should not hammer its resolver)",
            );
        }
        if max_ttl < min_ttl {
            self.err(
                k.key("max_ttl"),
                format!(
                    "max_ttl ({}) is below min_ttl ({})",
                    crate::units::format_duration(max_ttl),
                    crate::units::format_duration(min_ttl)
                ),
            );
        }
        Dns {
            servers,
            timeout,
            attempts,
            min_ttl,
            max_ttl,
            stale_for: dur(f.stale_for, d::DNS_STALE_FOR),
            startup_wait: dur(f.startup_wait, d::DNS_STARTUP_WAIT),
        }
    }
}

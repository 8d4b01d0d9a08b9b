//! Validation of `[[listeners]]`: addresses, TLS certificates, PROXY protocol, IP rules; and `[admin]`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;

use crate::defaults as d;
use crate::error::KeyPath;
use crate::file::*;
use crate::model::*;

use super::*;

impl Validator<'_> {
    pub(super) fn listeners(
        &mut self,
        files: Vec<(usize, ListenerFile)>,
        present: bool,
        trusted: &[IpNet],
    ) -> Vec<Listener> {
        let root = KeyPath::root().key("listeners");
        if files.is_empty() && !present {
            self.err(
                root.clone(),
                "no listeners: add a [[listeners]] table with an address",
            );
        }
        let mut out = Vec::new();
        let mut seen_addr: HashMap<SocketAddr, usize> = HashMap::new();
        let mut seen_name: HashMap<String, usize> = HashMap::new();
        for (i, f) in files {
            let k = root.index(i);
            let Some(addr_str) = f.address.clone() else {
                self.err(
                    k.clone(),
                    "missing `address` (for example \"0.0.0.0:8080\")",
                );
                continue;
            };
            let address = match parse_listen_address(&addr_str) {
                Ok(a) => a,
                Err(e) => {
                    self.err(k.key("address"), e);
                    continue;
                }
            };
            if address.port() != 0 {
                if let Some(prev) = seen_addr.insert(address, i) {
                    self.err(
                        k.key("address"),
                        format!("{address} is already used by listeners[{prev}]"),
                    );
                }
            }
            let name = f.name.clone().unwrap_or_else(|| addr_str.clone());
            // A default name repeats only when the address does, which is reported above.
            if let Some(prev) = seen_name
                .insert(name.clone(), i)
                .filter(|_| f.name.is_some())
            {
                self.err(
                    k.key("name"),
                    format!("listener name {name:?} is already used by listeners[{prev}]"),
                );
            }
            let tls = f.tls.map(|t| self.listener_tls(t, &k.key("tls")));
            let force_https = f.force_https.is_some_and(|v| v.0);
            if force_https && tls.is_some() {
                self.err(
                    k.key("force_https"),
                    "force_https redirects plain HTTP to https; it cannot be set on a TLS listener",
                );
            }
            let redirect_status = f.redirect_status.map(|v| v.0);
            if let Some(s) = redirect_status {
                if ![301, 302, 307, 308].contains(&s) {
                    self.err(
                        k.key("redirect_status"),
                        format!("{s} is not a redirect status (301, 302, 307 or 308)"),
                    );
                }
                if !force_https {
                    self.err(
                        k.key("redirect_status"),
                        "only applies with force_https = true",
                    );
                }
            }
            let h2c = f.h2c.is_some_and(|v| v.0);
            if h2c && tls.is_some() {
                self.err(
                    k.key("h2c"),
                    "h2c is HTTP/2 without TLS; on a TLS listener use tls.http2",
                );
            }
            let max_connections = f.max_connections.map_or(d::MAX_CONNECTIONS, |v| v.0);
            if max_connections == 0 {
                self.err(k.key("max_connections"), "must be at least 1");
            }
            let header_read_timeout = dur(f.header_read_timeout, d::HEADER_READ_TIMEOUT);
            if header_read_timeout.is_zero() {
                self.err(k.key("header_read_timeout"), "must be greater than zero");
            }
            let body_read_timeout = dur(f.body_read_timeout, d::BODY_READ_TIMEOUT);
            if body_read_timeout.is_zero() {
                self.err(k.key("body_read_timeout"), "must be greater than zero");
            }
            let min_body_rate = f.min_body_rate.map(|v| v.0);
            if min_body_rate == Some(0) {
                self.err(
                    k.key("min_body_rate"),
                    "must be greater than zero (leave it out for no minimum)",
                );
            }
            let max_header_size = f.max_header_size.map_or(d::MAX_HEADER_SIZE, |v| v.0);
            if !(1024..=d::MAX_HEADER_SIZE_LIMIT).contains(&max_header_size) {
                self.err(
                    k.key("max_header_size"),
                    format!("{max_header_size} bytes is out of range (1KiB to 512KiB)"),
                );
            }
            if let Some(n) = f.max_requests_per_connection {
                if n.0 == 0 {
                    self.err(k.key("max_requests_per_connection"), "must be at least 1");
                }
            }
            let socket = self.socket_options(
                &k,
                f.tcp_nodelay,
                f.tcp_keepalive,
                f.send_buffer,
                f.recv_buffer,
            );
            let tcp_defer_accept = f.tcp_defer_accept.map(|v| v.0).filter(|d| !d.is_zero());
            if let Some(t) = tcp_defer_accept {
                if t > Duration::from_secs(3600) || t < Duration::from_secs(1) {
                    self.err(
                        k.key("tcp_defer_accept"),
                        "out of range (1s to 1h, or \"0s\" for off)",
                    );
                }
            }
            let ipv6_only = f.ipv6_only.is_some_and(|v| v.0);
            if ipv6_only && address.is_ipv4() {
                self.err(k.key("ipv6_only"), "only applies to an IPv6 address");
            }
            out.push(Listener {
                name,
                address,
                tls,
                force_https,
                https_port: f.https_port.map(|p| p.0),
                redirect_status,
                h2c,
                max_connections,
                header_read_timeout,
                keepalive_timeout: dur(f.keepalive_timeout, d::KEEPALIVE_TIMEOUT),
                body_read_timeout,
                min_body_rate,
                max_header_size: usize::try_from(max_header_size).unwrap_or(usize::MAX),
                max_requests_per_connection: f.max_requests_per_connection.map(|n| n.0),
                reuse_port: f.reuse_port.is_some_and(|v| v.0),
                backlog: f.backlog.map_or(d::BACKLOG, |v| v.0),
                tcp_fastopen: f.tcp_fastopen.map(|v| v.0),
                socket,
                tcp_defer_accept,
                ipv6_only,
                freebind: f.freebind.is_some_and(|v| v.0),
                proxy_protocol_from: self.proxy_protocol_from(
                    f.proxy_protocol.is_some_and(|v| v.0),
                    f.proxy_protocol_from,
                    trusted,
                    &k,
                ),
                ip_rules: ip_rules(self, f.allow, f.deny, &k),
                max_connections_per_ip: match f.max_connections_per_ip.map(|n| n.0) {
                    Some(0) => {
                        self.err(
                            k.key("max_connections_per_ip"),
                            "must be at least 1 (leave it out for no limit)",
                        );
                        None
                    }
                    n => n.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
                },
            });
        }
        let plain = out.iter().any(|l| l.tls.is_none());
        for l in &out {
            if let Some(a) = l.tls.as_ref().and_then(|t| t.acme.as_ref()) {
                if a.challenge == AcmeChallenge::Http01 && !plain {
                    self.err(
                        a.key_path.key("challenge"),
                        "http-01 is answered on a plain-HTTP listener (port 80 as the CA sees \
                         it) and this config has none: add one, or use \"tls-alpn-01\"",
                    );
                }
            }
        }
        out
    }

    pub(super) fn cert_pair(
        &mut self,
        cert: Option<String>,
        key: Option<String>,
        k: &KeyPath,
    ) -> Option<CertPaths> {
        match (cert, key) {
            (Some(c), Some(kf)) => Some(CertPaths {
                cert: self.resolve_path(&c),
                key: self.resolve_path(&kf),
                key_path: k.clone(),
            }),
            (Some(_), None) => {
                self.err(k.clone(), "`cert` is set but `key` is missing");
                None
            }
            (None, Some(_)) => {
                self.err(k.clone(), "`key` is set but `cert` is missing");
                None
            }
            (None, None) => {
                self.err(k.clone(), "missing `cert` and `key`");
                None
            }
        }
    }

    pub(super) fn listener_tls(&mut self, t: TlsFile, k: &KeyPath) -> ListenerTls {
        let mut certificates = Vec::new();
        let acme = t.acme.map(|a| self.acme(a, &k.key("acme")));
        match (t.cert.is_some() || t.key.is_some(), t.certificates) {
            (true, Some(_)) => self.err(
                k.clone(),
                "use either `cert`/`key` or `certificates = [...]`, not both",
            ),
            (true, None) => certificates.extend(self.cert_pair(t.cert, t.key, k)),
            (false, Some(list)) => {
                if list.is_empty() {
                    self.err(k.key("certificates"), "at least one certificate is needed");
                }
                for (i, c) in list.into_iter().enumerate() {
                    certificates.extend(self.cert_pair(
                        c.cert,
                        c.key,
                        &k.key("certificates").index(i),
                    ));
                }
            }
            (false, None) if acme.is_some() => {}
            (false, None) => self.err(
                k.clone(),
                "missing `cert` and `key` (or `certificates`, or `acme`)",
            ),
        }
        let min_version = t.min_version.unwrap_or(TlsVersion::Tls12);
        ListenerTls {
            certificates,
            acme,
            http2: t.http2.is_none_or(|v| v.0),
            min_version,
        }
    }

    /// The sources allowed to send PROXY protocol headers: `proxy_protocol_from`, else
    /// `[server] trusted_proxies`; `proxy_protocol = true` with neither is an error (anyone
    /// could claim any address).
    pub(super) fn proxy_protocol_from(
        &mut self,
        on: bool,
        from: Option<Vec<String>>,
        trusted: &[IpNet],
        k: &KeyPath,
    ) -> Vec<IpNet> {
        let mut nets = Vec::new();
        for (i, p) in from.iter().flatten().enumerate() {
            match parse_cidr(p) {
                Ok(n) => nets.push(n),
                Err(e) => self.err(k.key("proxy_protocol_from").index(i), e),
            }
        }
        if !on {
            if from.is_some() {
                self.err(
                    k.key("proxy_protocol_from"),
                    "set proxy_protocol = true too (or remove this)",
                );
            }
            return Vec::new();
        }
        if nets.is_empty() && from.is_none() {
            nets = trusted.to_vec();
        }
        if nets.is_empty() {
            self.err(
                k.key("proxy_protocol"),
                "PROXY protocol needs the addresses of the load balancers that send it: set \
                 proxy_protocol_from = [\"10.0.0.0/8\"] (or [server] trusted_proxies)",
            );
        }
        nets
    }

    /// The admin token from `token` or the first line of `token_file`: at least
    /// [`d::ADMIN_TOKEN_MIN`] characters, no whitespace.
    pub(super) fn admin_token(
        &mut self,
        token: Option<String>,
        file: Option<String>,
        k: &KeyPath,
    ) -> Option<String> {
        let (value, key) = match (token, file) {
            (Some(_), Some(_)) => {
                self.err(k.key("token_file"), "set token or token_file, not both");
                return None;
            }
            (Some(t), None) => (t, "token"),
            (None, Some(f)) => {
                let path = self.resolve_path(&f);
                match std::fs::read_to_string(&path) {
                    Ok(s) => (
                        s.lines().next().unwrap_or("").trim().to_string(),
                        "token_file",
                    ),
                    Err(e) => {
                        self.err(
                            k.key("token_file"),
                            format!("cannot read {}: {e}", path.display()),
                        );
                        return None;
                    }
                }
            }
            (None, None) => return None,
        };
        if value.len() < d::ADMIN_TOKEN_MIN || value.chars().any(char::is_whitespace) {
            self.err(
                k.key(key),
                format!(
                    "the admin token must be at least {} characters without spaces (e.g. the \
                     output of `openssl rand -hex 32`)",
                    d::ADMIN_TOKEN_MIN
                ),
            );
            return None;
        }
        Some(value)
    }

    pub(super) fn admin(&mut self, f: AdminFile, listeners: &[Listener]) -> Option<Admin> {
        if f.enabled.is_some_and(|e| !e.0) {
            return None;
        }
        let k = KeyPath::root().key("admin");
        let raw = f.address.unwrap_or_else(|| d::ADMIN_ADDRESS.to_string());
        match parse_listen_address(&raw) {
            Ok(address) => {
                if address.port() != 0 {
                    if let Some(l) = listeners.iter().find(|l| l.address == address) {
                        self.err(
                            k.key("address"),
                            format!("{address} is already used by listener {:?}", l.name),
                        );
                    }
                }
                let token = self.admin_token(f.token, f.token_file, &k);
                if token.is_none() && !address.ip().is_loopback() {
                    self.err(
                        k.key("address"),
                        format!(
                            "{address} is not a loopback address: set admin.token (or \
                             admin.token_file) so /metrics, /status and /reload are not open \
                             to the network"
                        ),
                    );
                }
                Some(Admin { address, token })
            }
            Err(e) => {
                self.err(k.key("address"), e);
                None
            }
        }
    }
}

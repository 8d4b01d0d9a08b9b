//! Validation of `[upstreams.NAME]`: backends, balancing, regions, timeouts, socket options,
//! concurrency limits.

use std::collections::HashMap;
use std::time::Duration;

use crate::defaults as d;
use crate::error::KeyPath;
use crate::file::*;
use crate::model::*;

use super::*;

impl Validator<'_> {
    pub(super) fn upstreams(
        &mut self,
        files: Vec<(String, UpstreamFile)>,
        present: bool,
    ) -> (Vec<Upstream>, HashMap<String, usize>) {
        let root = KeyPath::root().key("upstreams");
        // No upstreams is fine when every route serves files only (checked with the routes).
        let _ = present;
        let mut out = Vec::new();
        let mut index = HashMap::new();
        for (name, f) in files {
            let k = root.key(&name);
            if !is_name(&name) {
                self.err(
                    k.clone(),
                    format!("upstream name {name:?} may only hold letters, digits, '-', '_', '.'"),
                );
            }
            if let Some(u) = self.upstream(name.clone(), f, &k) {
                index.insert(name, out.len());
                out.push(u);
            }
        }
        (out, index)
    }

    pub(super) fn upstream(
        &mut self,
        name: String,
        f: UpstreamFile,
        k: &KeyPath,
    ) -> Option<Upstream> {
        let mut backends = Vec::new();
        let mut seen_addr = HashMap::new();
        let mut seen_id = HashMap::new();
        let mut discovery = Vec::new();
        let many = matches!(&f.discovery, Some(d) if d.0.len() > 1);
        for (i, d) in f
            .discovery
            .map(|d| d.0)
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let dk = if many {
                k.key("discovery").index(i)
            } else {
                k.key("discovery")
            };
            if let Some(disc) = self.discovery(d, &dk) {
                if discovery.contains(&disc) {
                    self.err(dk, format!("{disc} is listed twice"));
                } else {
                    discovery.push(disc);
                }
            }
        }
        match f.backends {
            None if discovery.is_empty() => self.err(
                k.clone(),
                "missing `backends` or `discovery` (for example backends = [\"127.0.0.1:3000\"] or discovery = { dns = \"app.internal\", port = 8080 })",
            ),
            None => {}
            Some(list) if list.is_empty() && discovery.is_empty() => {
                self.err(k.key("backends"), "at least one backend is needed")
            }
            Some(list) => {
                for (i, b) in list.into_iter().enumerate() {
                    let bk = k.key("backends").index(i);
                    let Some(raw) = b.address else {
                        self.err(bk, "missing `address`");
                        continue;
                    };
                    let address = match parse_backend_address(&raw) {
                        Ok(a) => a,
                        Err(e) => {
                            self.err(
                                if b.id.is_some() || b.region.is_some() || b.weight.is_some() {
                                    bk.key("address")
                                } else {
                                    bk
                                },
                                e,
                            );
                            continue;
                        }
                    };
                    if let Some(prev) = seen_addr.insert(address.clone(), i) {
                        self.err(
                            bk.clone(),
                            format!("{address} is listed twice (also backends[{prev}])"),
                        );
                    }
                    if let Some(id) = &b.id {
                        if !is_name(id) {
                            self.err(
                                bk.key("id"),
                                format!("invalid id {id:?} (letters, digits, '-', '_', '.')"),
                            );
                        }
                        if let Some(prev) = seen_id.insert(id.clone(), i) {
                            self.err(
                                bk.key("id"),
                                format!("id {id:?} is used twice (also backends[{prev}])"),
                            );
                        }
                    }
                    if let Some(r) = &b.region {
                        if !is_name(r) {
                            self.err(bk.key("region"), format!("invalid region {r:?}"));
                        }
                    }
                    let weight = b.weight.map_or(1, |w| w.0);
                    if !(1..=1000).contains(&weight) {
                        self.err(
                            bk.key("weight"),
                            format!("{weight} is out of range (1 to 1000)"),
                        );
                    }
                    backends.push(Backend {
                        address,
                        id: b.id,
                        region: b.region,
                        weight,
                    });
                }
            }
        }
        let balance = f.balance.unwrap_or(Balance::LeastRequests);
        let hash_on = match f.hash_on.as_deref() {
            None => None,
            Some(spec) => match parse_hash_key(spec) {
                Ok(h) => Some(h),
                Err(e) => {
                    self.err(k.key("hash_on"), e);
                    None
                }
            },
        };
        let hash_on = match (balance, hash_on) {
            (Balance::ConsistentHash, None) => Some(HashKey::ClientIp),
            (Balance::ConsistentHash, h) => h,
            (_, Some(_)) => {
                self.err(
                    k.key("hash_on"),
                    "hash_on only applies with balance = \"consistent_hash\"",
                );
                None
            }
            (_, None) => None,
        };
        let concurrency = self.concurrency(f.concurrency, &k.key("concurrency"));
        let tls = match f.protocol.unwrap_or(crate::closed::Protocol::Http) {
            crate::closed::Protocol::Http => {
                // `http2` on plain HTTP is h2c (prior knowledge), for gRPC apps.
                for (set, key) in [
                    (f.tls_server_name.is_some(), "tls_server_name"),
                    (f.tls_skip_verify.is_some(), "tls_skip_verify"),
                    (f.tls_ca.is_some(), "tls_ca"),
                ] {
                    if set {
                        self.err(k.key(key), "only applies with protocol = \"https\"");
                    }
                }
                None
            }
            crate::closed::Protocol::Https => {
                let server_name = f.tls_server_name.clone().or_else(|| {
                    backends.first().map(|b| match &b.address {
                        BackendAddr::Name { host, .. } => host.clone(),
                        BackendAddr::Ip(a) => a.ip().to_string(),
                    })
                });
                let skip_verify = f.tls_skip_verify.is_some_and(|v| v.0);
                let ca = match f.tls_ca.as_deref() {
                    Some("") => {
                        self.err(k.key("tls_ca"), "must name a PEM file of CA certificates");
                        None
                    }
                    Some(_) if skip_verify => {
                        self.err(
                            k.key("tls_ca"),
                            "tls_ca and tls_skip_verify = true contradict each other: keep one",
                        );
                        None
                    }
                    Some(p) => Some(self.resolve_path(p)),
                    None => None,
                };
                Some(UpstreamTls {
                    server_name: server_name.unwrap_or_default(),
                    skip_verify,
                    ca,
                })
            }
        };
        let mut timeout = |v: Option<crate::units::Dur>, default: Duration, key: &str| {
            let t = dur(v, default);
            if t.is_zero() {
                self.problems.add(k.key(key), "must be greater than zero");
            }
            t
        };
        let connect_timeout = timeout(f.connect_timeout, d::CONNECT_TIMEOUT, "connect_timeout");
        let read_timeout = timeout(f.read_timeout, d::READ_TIMEOUT, "read_timeout");
        let write_timeout = timeout(f.write_timeout, d::WRITE_TIMEOUT, "write_timeout");
        let idle_timeout = timeout(f.idle_timeout, d::IDLE_TIMEOUT, "idle_timeout");
        let retries = f.retries.map_or(d::RETRIES, |r| r.0);
        if retries > 16 {
            self.err(
                k.key("retries"),
                format!("{retries} is out of range (0 to 16)"),
            );
        }
        if let Some(h) = &f.host_header {
            if h.is_empty() || !is_header_value(h) {
                self.err(
                    k.key("host_header"),
                    format!("invalid host header value {h:?}"),
                );
            }
        }
        let mut checks = Vec::new();
        for (i, c) in f.checks.unwrap_or_default().into_iter().enumerate() {
            if let Some(mut c) = self.check(c, &k.key("checks").index(i)) {
                // Checks trust and name what traffic does, unless they say otherwise.
                c.tls_ca = tls.as_ref().and_then(|t| t.ca.clone());
                if c.tls_server_name.is_none() && tls.is_some() {
                    c.tls_server_name = f.tls_server_name.clone();
                }
                checks.push(c);
            }
        }
        let all_unhealthy = f.all_unhealthy.unwrap_or(AllUnhealthy::FailOpen);
        let passive = self.passive(f.passive, &k.key("passive"));
        let socket = self.socket_options(
            k,
            f.tcp_nodelay,
            f.tcp_keepalive,
            f.send_buffer,
            f.recv_buffer,
        );
        let writes = self
            .writes(f.writes, f.write_methods, k, self.has_primary)
            .flatten();
        Some(Upstream {
            name,
            backends,
            discovery,
            balance,
            hash_on,
            concurrency,
            queue_timeout: dur(f.queue_timeout, d::QUEUE_TIMEOUT),
            max_queue: f.max_queue.map_or(d::MAX_QUEUE, |q| q.0),
            connect_timeout,
            read_timeout,
            write_timeout,
            idle_timeout,
            retries,
            tls,
            http2: f.http2.is_some_and(|v| v.0),
            host_header: f.host_header,
            send_proxy_protocol: f.send_proxy_protocol,
            checks,
            start_healthy: f.start_healthy.is_some_and(|v| v.0),
            all_unhealthy,
            passive,
            writes,
            socket,
        })
    }

    /// `tcp_nodelay`, `tcp_keepalive`, `send_buffer`, `recv_buffer` of a listener or upstream.
    pub(super) fn socket_options(
        &mut self,
        k: &KeyPath,
        nodelay: Option<crate::units::Flag>,
        keepalive: Option<crate::file::KeepaliveFile>,
        send: Option<crate::units::Size>,
        recv: Option<crate::units::Size>,
    ) -> crate::SocketOptions {
        use crate::file::KeepaliveFile;
        let keepalive = match keepalive {
            None | Some(KeepaliveFile::Switch(crate::units::Flag(true))) => Some(d::TCP_KEEPALIVE),
            Some(KeepaliveFile::Switch(_)) => None,
            Some(KeepaliveFile::Tuned(t)) => {
                let ka = crate::TcpKeepalive {
                    idle: dur(t.idle, d::TCP_KEEPALIVE.idle),
                    interval: dur(t.interval, d::TCP_KEEPALIVE.interval),
                    count: t.count.map_or(d::TCP_KEEPALIVE.count, |c| c.0),
                };
                // The kernel's ranges (TCP_KEEPIDLE/TCP_KEEPINTVL up to 32767 s, TCP_KEEPCNT
                // up to 127), in whole seconds.
                let kk = k.key("tcp_keepalive");
                for (name, v) in [("idle", ka.idle), ("interval", ka.interval)] {
                    if v < Duration::from_secs(1) || v > Duration::from_secs(32_767) {
                        self.err(kk.key(name), "out of range (1s to 32767s)");
                    }
                }
                if !(1..=127).contains(&ka.count) {
                    self.err(kk.key("count"), "out of range (1 to 127)");
                }
                Some(ka)
            }
        };
        let mut buffer = |v: Option<crate::units::Size>, key: &str| {
            let n = v.map(|s| s.0)?;
            if !(4096..=(64 << 20)).contains(&n) {
                self.err(
                    k.key(key),
                    format!("{n} bytes is out of range (4KiB to 64MiB)"),
                );
            }
            usize::try_from(n).ok()
        };
        let send_buffer = buffer(send, "send_buffer");
        let recv_buffer = buffer(recv, "recv_buffer");
        crate::SocketOptions {
            nodelay: nodelay.is_none_or(|v| v.0),
            keepalive,
            send_buffer,
            recv_buffer,
        }
    }

    pub(super) fn concurrency(&mut self, f: Option<ConcurrencyFile>, k: &KeyPath) -> Concurrency {
        let Some(f) = f else {
            return Concurrency {
                kind: ConcurrencyKind::Requests,
                soft_limit: u32::MAX,
                hard_limit: u32::MAX,
            };
        };
        let kind = f.kind.unwrap_or(ConcurrencyKind::Requests);
        let hard = f.hard_limit.map(|v| v.0);
        let soft = f.soft_limit.map(|v| v.0);
        let (soft_limit, hard_limit) = match (soft, hard) {
            (Some(s), Some(h)) => (s, h),
            (Some(s), None) => (s, u32::MAX),
            (None, Some(h)) => (h, h),
            (None, None) => (u32::MAX, u32::MAX),
        };
        if soft_limit == 0 {
            self.err(k.key("soft_limit"), "must be at least 1");
        }
        if hard_limit == 0 {
            self.err(k.key("hard_limit"), "must be at least 1");
        }
        if soft_limit > hard_limit {
            self.err(
                k.key("soft_limit"),
                format!("soft_limit ({soft_limit}) is above hard_limit ({hard_limit})"),
            );
        }
        Concurrency {
            kind,
            soft_limit,
            hard_limit,
        }
    }
}

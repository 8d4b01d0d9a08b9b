//! Listeners (addresses, TLS, ACME, PROXY protocol, IP rules) and the admin endpoint.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;

use crate::error::KeyPath;

use super::*;

/// TLS protocol versions a listener accepts at minimum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

/// One certificate chain and its private key, as files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPaths {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// Where this pair is configured, for error messages.
    pub key_path: KeyPath,
}

/// How the ACME CA checks that Portico answers for a host name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcmeChallenge {
    /// TLS-ALPN-01 (RFC 8737): answered on the TLS listener itself (`acme-tls/1`).
    TlsAlpn01,
    /// HTTP-01: answered on plain-HTTP listeners at `/.well-known/acme-challenge/`.
    Http01,
}

impl AcmeChallenge {
    /// The name in the config and in ACME (`tls-alpn-01`, `http-01`).
    pub fn as_str(self) -> &'static str {
        match self {
            AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
            AcmeChallenge::Http01 => "http-01",
        }
    }
}

/// Certificates obtained and renewed from an ACME CA for a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acme {
    /// Host names to obtain certificates for (one certificate each).
    pub hosts: Vec<String>,
    /// Contact address given to the CA (`mailto:`), if any.
    pub email: Option<String>,
    /// The CA's ACME directory URL.
    pub directory: String,
    /// The challenge type answered.
    pub challenge: AcmeChallenge,
    /// Directory holding the account key and certificates.
    pub storage: PathBuf,
    /// PEM root certificate to trust for the CA's own HTTPS (a private or test CA), instead of
    /// the system's roots.
    pub ca_roots: Option<PathBuf>,
    /// First wait after a failed attempt; doubles up to an hour.
    pub retry_min: Duration,
    /// Where this block is configured, for messages.
    pub key_path: KeyPath,
}

/// TLS settings of a listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerTls {
    /// Certificates, chosen by SNI; the first one is the default. May be empty when `acme`
    /// provides them.
    pub certificates: Vec<CertPaths>,
    /// Certificates from an ACME CA, served before the files for their hosts.
    pub acme: Option<Acme>,
    /// Whether HTTP/2 is offered through ALPN.
    pub http2: bool,
    /// Lowest TLS version accepted.
    pub min_version: TlsVersion,
}

/// One client-facing listener.
#[derive(Debug, Clone)]
pub struct Listener {
    /// Name used in metrics and logs.
    pub name: String,
    /// Address to bind.
    pub address: SocketAddr,
    /// TLS, when this listener terminates it.
    pub tls: Option<ListenerTls>,
    /// Answer every request with a 301 to the https URL.
    pub force_https: bool,
    /// Port used in `force_https` redirects (443 is left out of the URL). `None`: the port of
    /// the first TLS listener as bound, else 443.
    pub https_port: Option<u16>,
    /// Status of `force_https` redirects; `None`: 301 for GET and HEAD, 308 for other methods
    /// (a 301 turns a POST into a GET in browsers; a 308 keeps the method and body).
    pub redirect_status: Option<u16>,
    /// Accept HTTP/2 without TLS (prior knowledge).
    pub h2c: bool,
    /// Connections open at once; past it, new ones wait in the kernel's backlog.
    pub max_connections: usize,
    /// Time allowed to receive a complete request header (408 after it).
    pub header_read_timeout: Duration,
    /// How long an idle client connection is kept open between requests.
    pub keepalive_timeout: Duration,
    /// Longest wait for the next piece of a request body (408 after it).
    pub body_read_timeout: Duration,
    /// Slowest average request body rate accepted, bytes per second: the whole body must
    /// arrive within `body_read_timeout` plus one second per `min_body_rate` bytes from its
    /// start (Apache's `RequestReadTimeout body=...,MinRate=...`); 408 after it.
    pub min_body_rate: Option<u64>,
    /// Largest request header accepted (431 above it).
    pub max_header_size: usize,
    /// Requests served on one connection before it is closed.
    pub max_requests_per_connection: Option<u32>,
    /// Bind with `SO_REUSEPORT`.
    pub reuse_port: bool,
    /// Listen backlog.
    pub backlog: u32,
    /// TCP Fast Open queue length, when enabled.
    pub tcp_fastopen: Option<usize>,
    /// Options of every accepted connection (set on the listening socket, which accepted
    /// sockets inherit).
    pub socket: SocketOptions,
    /// `TCP_DEFER_ACCEPT`: wake the accept loop only once a client has sent data (or this
    /// long passed).
    pub tcp_defer_accept: Option<Duration>,
    /// `IPV6_V6ONLY` on an IPv6 address (`false`: `[::]` takes IPv4 too).
    pub ipv6_only: bool,
    /// `IP_FREEBIND`: bind an address the host does not have (yet).
    pub freebind: bool,
    /// Client addresses allowed and denied on this listener (403).
    pub ip_rules: IpRules,
    /// Connections one client address may hold open at once; `None`: no limit.
    pub max_connections_per_ip: Option<usize>,
    /// Sources whose connections start with a PROXY protocol header (v1 or v2) giving the
    /// real client address; empty: PROXY protocol is off.
    pub proxy_protocol_from: Vec<IpNet>,
}

/// A PROXY protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyProtocolVersion {
    /// The text form.
    V1,
    /// The binary form.
    V2,
}

/// Client addresses allowed and denied, on the real client address (after trusted proxies).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IpRules {
    /// When not empty, only these networks pass.
    pub allow: Vec<IpNet>,
    /// These networks never pass (deny wins over allow).
    pub deny: Vec<IpNet>,
}

impl IpRules {
    /// Whether there is any rule.
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty()
    }

    /// Whether `ip` passes: in no `deny` network, and in an `allow` network when any is set.
    pub fn admits(&self, ip: std::net::IpAddr) -> bool {
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }
}

/// The admin listener.
#[derive(Debug, Clone)]
pub struct Admin {
    /// Address to bind (loopback unless configured otherwise).
    pub address: SocketAddr,
    /// Bearer token required for `/metrics`, `/status` details and `POST /reload`
    /// (mandatory when `address` is not loopback).
    pub token: Option<String>,
}

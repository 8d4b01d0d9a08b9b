//! One backend at runtime: identity, address, the pingora peer template and live counters.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use pingora_core::protocols::ALPN;
use pingora_core::upstreams::peer::HttpPeer;
use portico_config::Upstream;

/// A backend of an upstream, shared by every request that uses it.
#[derive(Debug)]
pub struct BackendRt {
    /// Stable identity: the instance id when known, else the address.
    pub key: Arc<str>,
    /// Instance id, when configured or discovered.
    pub id: Option<Arc<str>>,
    /// Where it listens.
    pub addr: SocketAddr,
    /// `addr` as text (`10.0.0.1:8080`, `[::1]:8080`), for the access log of every request.
    pub addr_text: Box<str>,
    /// Region it runs in, when known.
    pub region: Option<Arc<str>>,
    /// Relative weight.
    pub weight: u32,
    /// Where the backend came from (`static`, `dns:app.internal`), for `/status`.
    pub origin: Arc<str>,
    /// Ready-made peer; cloned per request (pingora wants a fresh `Box<HttpPeer>`).
    pub peer: HttpPeer,
    /// Requests in flight (WebSockets count until they close).
    pub inflight: AtomicU32,
    /// Requests sent to it since it was added.
    pub requests: AtomicU64,
    /// Failed connection attempts since it was added.
    pub connect_failures: AtomicU64,
    /// Moving average of new-connection (and health check) round trips, in µs; 0 = unknown.
    pub latency_ewma_us: AtomicU64,
    /// Active-check verdict and passive ejection.
    pub health: super::health::Health,
}

/// Description of a backend to create.
#[derive(Debug, Clone)]
pub struct BackendSpec {
    /// Address.
    pub addr: SocketAddr,
    /// Instance id.
    pub id: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Weight (at least 1).
    pub weight: u32,
    /// Where it came from.
    pub origin: String,
}

impl BackendSpec {
    /// The stable identity used for affinity and for carrying state across updates.
    pub fn key(&self) -> String {
        self.id.clone().unwrap_or_else(|| self.addr.to_string())
    }
}

/// Builds the pingora peer for a backend of `up`.
pub fn build_peer(addr: SocketAddr, up: &Upstream) -> HttpPeer {
    let (tls, sni) = match &up.tls {
        Some(t) => (true, t.server_name.clone()),
        None => (false, String::new()),
    };
    let mut peer = HttpPeer::new(addr, tls, sni);
    let o = &mut peer.options;
    o.connection_timeout = Some(up.connect_timeout);
    // The TLS handshake happens inside the total budget: give it room beyond the TCP connect.
    o.total_connection_timeout = Some(if tls {
        up.connect_timeout * 2
    } else {
        up.connect_timeout
    });
    o.read_timeout = Some(up.read_timeout);
    o.write_timeout = Some(up.write_timeout);
    o.idle_timeout = Some(up.idle_timeout);
    crate::sockopt::for_peer(&up.socket, o);
    if let Some(t) = &up.tls {
        o.verify_cert = !t.skip_verify;
        o.verify_hostname = !t.skip_verify;
        o.ca = crate::tls_client::pingora_ca(t);
        o.alpn = if up.http2 { ALPN::H2H1 } else { ALPN::H1 };
    } else if up.http2 {
        // Plain HTTP has no negotiation: h2c with prior knowledge (gRPC servers speak it;
        // pingora's connector sends the preface on a plain peer whose ALPN is H2).
        o.alpn = ALPN::H2;
    }
    peer
}

impl BackendRt {
    /// Creates a backend with zeroed counters.
    pub fn new(spec: &BackendSpec, up: &Upstream) -> Self {
        Self {
            key: spec.key().into(),
            id: spec.id.as_deref().map(Arc::from),
            addr: spec.addr,
            // As the access log always wrote it: no IPv6 scope id.
            addr_text: match spec.addr {
                SocketAddr::V4(a) => a.to_string(),
                SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
            }
            .into(),
            region: spec.region.as_deref().map(Arc::from),
            weight: spec.weight.max(1),
            origin: spec.origin.as_str().into(),
            peer: build_peer(spec.addr, up),
            inflight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            connect_failures: AtomicU64::new(0),
            latency_ewma_us: AtomicU64::new(0),
            health: super::health::Health::new(up.checks.len(), up.start_healthy),
        }
    }

    /// The spec this backend was created from.
    pub fn spec(&self) -> BackendSpec {
        BackendSpec {
            addr: self.addr,
            id: self.id.as_deref().map(str::to_string),
            region: self.region.as_deref().map(str::to_string),
            weight: self.weight,
            origin: self.origin.to_string(),
        }
    }

    /// Measured latency (µs), 0 when unknown.
    pub fn latency_us(&self) -> u64 {
        self.latency_ewma_us.load(Ordering::Relaxed)
    }

    /// Folds a round-trip sample into the moving average (weight 1/5 for the new sample).
    pub fn record_latency(&self, sample: std::time::Duration) {
        let us = u64::try_from(sample.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = self
            .latency_ewma_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 { us } else { (old * 4 + us) / 5 })
            });
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Takes a slot if fewer than `hard_limit` are in flight.
    pub fn try_acquire(&self, hard_limit: u32) -> bool {
        if hard_limit == u32::MAX {
            self.inflight.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        self.inflight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| {
                (v < hard_limit).then_some(v + 1)
            })
            .is_ok()
    }

    /// Gives a slot back.
    pub fn release(&self) {
        self.inflight.fetch_sub(1, Ordering::AcqRel);
    }
}

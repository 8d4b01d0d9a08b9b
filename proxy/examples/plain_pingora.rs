//! The baseline for benchmarks: the smallest pingora proxy (one origin, upstream keep-alive,
//! pingora's own Server and Service). `loadtest/compare` runs it next to Portico to show
//! what Portico adds on top of a bare pingora hop.
//!
//! Usage: `plain_pingora LISTEN_ADDR ORIGIN_ADDR THREADS [TLS_LISTEN_ADDR CERT KEY]` (the TLS
//! listener offers HTTP/2 and HTTP/1.1 through ALPN).

use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Plain {
    origin: String,
}

#[async_trait]
impl ProxyHttp for Plain {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(
        &self,
        _s: &mut Session,
        _c: &mut (),
    ) -> pingora_error::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.origin.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (listen, origin, threads, tls) = match args.as_slice() {
        [_, l, o, t] => (l.clone(), o.clone(), t.parse().unwrap_or(1), None),
        [_, l, o, t, tl, c, k] => (
            l.clone(),
            o.clone(),
            t.parse().unwrap_or(1),
            Some((tl.clone(), c.clone(), k.clone())),
        ),
        _ => {
            eprintln!("usage: plain_pingora LISTEN ORIGIN THREADS [TLS_LISTEN CERT KEY]");
            std::process::exit(2);
        }
    };
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut svc = pingora_proxy::http_proxy_service(&server.configuration, Plain { origin });
    svc.add_tcp(&listen);
    if let Some((addr, cert, key)) = tls {
        let mut settings =
            match pingora_core::listeners::tls::TlsSettings::intermediate(&cert, &key) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("plain_pingora: TLS: {e}");
                    std::process::exit(2);
                }
            };
        settings.enable_h2();
        svc.add_tls_with_settings(&addr, None, settings);
    }
    server.add_service(svc);
    server.run_forever();
}

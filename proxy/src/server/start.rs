//! Starting the service once the sockets are bound: the control tasks (DNS discovery with its
//! first answers, health checks, the access log flusher, ACME, the reloader) and the listeners'
//! accept loops on every worker runtime.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use pingora_core::server::configuration::ServerConf;
use pingora_proxy::http_proxy;
use portico_config::Config;
use tokio::runtime::Runtime;
use tokio::sync::watch;

use super::conn::{ListenerCtx, Tracker};
use super::listener;
use crate::load::ListenerTls;
use crate::proxy::{ListenerInfo, Portico};
use crate::reload::Reloader;
use crate::state::Shared;

/// Starts the control runtime's tasks and returns the reloader. Discovered upstreams get
/// their first answers (or `startup_wait` passes) before this returns, so traffic is accepted
/// with backends known; the listeners are bound already, so early clients wait in the backlog.
pub(super) fn control_tasks(
    control: &Runtime,
    shared: &Arc<Shared>,
    config: &Config,
    tls: &[Option<ListenerTls>],
    shutdown_rx: &watch::Receiver<bool>,
) -> anyhow::Result<Arc<Reloader>> {
    let first = shared.current.load_full();
    // Discovery tasks belong to a config generation: a reload stops them and starts new ones.
    let (discovery_stop, discovery_rx) = watch::channel(false);
    let discovered = control
        .block_on(crate::discovery::start(
            &first,
            shared.clone(),
            discovery_rx,
            true,
        ))
        .map_err(|e| anyhow::anyhow!("dns: {e}"))?;
    if discovered > 0 {
        tracing::info!(upstreams = discovered, "discovery running");
    }
    control.spawn(crate::health::run(shared.clone(), shutdown_rx.clone()));
    control.spawn(crate::accesslog::flusher());

    for (l, t) in config.listeners.iter().zip(tls) {
        let Some(t) = t else { continue };
        t.publish_expiry(&l.name, &shared.metrics.tls.tls_certificate_expiry);
        // ACME tasks run on the control runtime for the life of the process.
        let acme = l.tls.as_ref().and_then(|c| c.acme.as_ref());
        if let (Some(acme), Some(certs)) = (acme, t.resolver.acme().cloned()) {
            let _runtime = control.enter();
            crate::acme::task::spawn_listener(
                &l.name,
                acme,
                certs,
                shared.acme.clone(),
                &shared.metrics,
                shutdown_rx,
            );
        }
    }
    let resolvers = config
        .listeners
        .iter()
        .zip(tls)
        .map(|(l, t)| (l.name.to_string(), t.as_ref().map(|t| t.resolver.clone())))
        .collect();
    Ok(Arc::new(Reloader::new(
        shared.clone(),
        resolvers,
        discovery_stop,
    )))
}

/// Starts each listener's accept loop on every worker runtime (one per thread without work
/// stealing, so a connection stays on the thread that accepted it).
pub(super) fn spawn_listeners(
    workers: &pingora_runtime::Runtime,
    shared: &Arc<Shared>,
    config: &Config,
    bound: Vec<(TcpListener, SocketAddr)>,
    tls: Vec<Option<ListenerTls>>,
    tracker: &Arc<Tracker>,
    shutdown_rx: &watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let server_conf = Arc::new(ServerConf {
        threads: config.server.threads,
        // Portico decides retries itself (per upstream); this is only pingora's outer bound.
        max_retries: 64,
        ..ServerConf::default()
    });
    let default_https_port = config
        .listeners
        .iter()
        .zip(&bound)
        .find(|(l, _)| l.tls.is_some())
        .map_or(portico_config::defaults::HTTPS_PORT, |(_, (_, local))| {
            local.port()
        });
    let runtimes: Vec<tokio::runtime::Handle> = match workers {
        pingora_runtime::Runtime::NoSteal(r) => (0..r.threads())
            .map(|i| r.get_runtime_at(i).clone())
            .collect(),
        steal => vec![steal.get_handle().clone()],
    };
    for ((l, (sock, local)), tls) in config.listeners.iter().zip(bound).zip(tls) {
        let app = || Portico {
            shared: shared.clone(),
            listener: ListenerInfo {
                name: l.name.as_str().into(),
                tls: l.tls.is_some(),
                port_value: http::HeaderValue::from(local.port()),
                default_https_port,
            },
            constant_fields: Default::default(),
        };
        // pingora's HTTP/2 server (and the subrequests) run Portico through `ProxyHttp`.
        let mut proxy = http_proxy(&server_conf, app());
        let mut options = pingora_core::apps::HttpServerOptions::default();
        options.h2c = l.h2c;
        options.keepalive_request_limit = l.max_requests_per_connection;
        options.h2_idle_timeout = Some(l.keepalive_timeout.max(Duration::from_secs(1)));
        proxy.server_options = Some(options);
        let mut h2 = pingora_core::protocols::http::v2::server::default_h2_options();
        h2.max_header_list_size(u32::try_from(l.max_header_size).unwrap_or(u32::MAX));
        proxy.h2_options = Some(h2);
        let lctx = Arc::new(ListenerCtx {
            name: l.name.as_str().into(),
            proxy: Arc::new(proxy),
            app: Arc::new(app()),
            tls: tls.map(|t| t.acceptor),
            shared: shared.clone(),
            tracker: tracker.clone(),
            per_ip: Default::default(),
        });
        let limit = Arc::new(tokio::sync::Semaphore::new(l.max_connections));
        for rt in &runtimes {
            rt.spawn(listener::accept_loop(
                sock.try_clone()?,
                local,
                lctx.clone(),
                limit.clone(),
                shutdown_rx.clone(),
            ));
        }
    }
    Ok(())
}

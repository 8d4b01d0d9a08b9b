//! Logging: `tracing` for Portico's own events, pingora's `log` records bridged in, and the
//! access log (one line per request) on its own stream.
//!
//! Diagnostics go to stderr, access lines to stdout, both through non-blocking writers so a
//! slow terminal or pipe never stalls a worker thread. `PORTICO_LOG` overrides the configured
//! filter (`PORTICO_LOG=portico=debug`).

use portico_config::{LogFormat, Server};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::filter::{EnvFilter, FilterFn, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Target of access-log events.
pub const ACCESS_TARGET: &str = "portico::access";

/// Keeps the background log writers alive; logs written after it is dropped may be lost.
pub struct LogGuards {
    _guards: Vec<WorkerGuard>,
}

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(server: &Server) -> anyhow::Result<LogGuards> {
    let filter_spec = std::env::var("PORTICO_LOG").unwrap_or_else(|_| server.log_level.clone());
    let mut filter = EnvFilter::try_new(&filter_spec)
        .map_err(|e| anyhow::anyhow!("invalid log filter {filter_spec:?}: {e}"))?;
    // The access log follows `access_log`, not the diagnostic level.
    if server.access_log {
        let directive = format!("{ACCESS_TARGET}=info")
            .parse()
            .map_err(|e| anyhow::anyhow!("access log directive: {e}"))?;
        filter = filter.add_directive(directive);
    }
    let (err_writer, err_guard) = tracing_appender::non_blocking(std::io::stderr());
    let (out_writer, out_guard) = tracing_appender::non_blocking(std::io::stdout());
    // Per-layer filters need a level hint, or the subscriber advertises TRACE and every
    // disabled `debug!` (pingora's `log` calls included) is dispatched only to be dropped.
    let max = filter.max_level_hint().unwrap_or(LevelFilter::TRACE);
    let not_access = FilterFn::new(|m| m.target() != ACCESS_TARGET).with_max_level_hint(max);
    let only_access =
        FilterFn::new(|m| m.target() == ACCESS_TARGET).with_max_level_hint(LevelFilter::INFO);
    let registry = tracing_subscriber::registry().with(filter);
    match server.log_format {
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(err_writer)
                    .with_filter(not_access),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_target(false)
                    .with_writer(out_writer)
                    .with_filter(only_access),
            )
            .try_init(),
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(err_writer)
                    .with_filter(not_access),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_target(false)
                    .with_level(false)
                    .with_writer(out_writer)
                    .with_filter(only_access),
            )
            .try_init(),
    }
    .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
    Ok(LogGuards {
        _guards: vec![err_guard, out_guard],
    })
}

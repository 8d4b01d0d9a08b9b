//! Logging: `tracing` for Portico's own events, pingora's `log` records bridged in, and the
//! access log (one line per request) on its own stream.
//!
//! Diagnostics go to stderr, access lines to stdout, both through non-blocking writers so a
//! slow terminal or pipe never stalls a worker thread. `PORTICO_LOG` overrides the configured
//! filter (`PORTICO_LOG=portico=debug`).

use portico_config::{LogFormat, Server};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::layer::SubscriberExt;

/// pingora log records that are expected events, not faults, with the level they deserve.
/// `failed to acquire reusable stream`: pingora's pool hands out an idle connection only
/// after the connection's idle-watch task has let go of it; when the task still holds it for
/// a moment, the pool opens a new connection instead and logs an error. Nothing failed.
const BENIGN: &[(&str, &str, log::Level)] = &[(
    "pingora_core::connectors",
    "failed to acquire reusable stream",
    log::Level::Debug,
)];

/// The level a bridged pingora record is logged at.
fn bridged_level(record: &log::Record<'_>) -> log::Level {
    let level = record.level();
    if level > log::Level::Warn {
        return level;
    }
    for (target, message, to) in BENIGN {
        if record.target() == *target && record.args().as_str().is_some_and(|m| m == *message) {
            return *to;
        }
    }
    level
}

/// Bridges pingora's `log` records into `tracing`, at the level [`bridged_level`] says.
struct Bridge(tracing_log::LogTracer);

impl log::Log for Bridge {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        let level = bridged_level(record);
        if level == record.level() {
            return self.0.log(record);
        }
        let meta = log::Metadata::builder()
            .level(level)
            .target(record.target())
            .build();
        if !self.0.enabled(&meta) {
            return;
        }
        self.0.log(
            &log::Record::builder()
                .metadata(meta)
                .args(*record.args())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
    }

    fn flush(&self) {}
}

/// Keeps the background log writers alive; logs written after it is dropped may be lost.
pub struct LogGuards {
    _guards: Vec<WorkerGuard>,
}

/// Installs the global subscriber and the access log's writer. Call once, before anything
/// logs.
pub fn init(server: &Server) -> anyhow::Result<LogGuards> {
    let filter_spec = std::env::var("PORTICO_LOG").unwrap_or_else(|_| server.log_level.clone());
    let filter = EnvFilter::try_new(&filter_spec)
        .map_err(|e| anyhow::anyhow!("invalid log filter {filter_spec:?}: {e}"))?;
    let (err_writer, err_guard) = tracing_appender::non_blocking(std::io::stderr());
    let (out_writer, out_guard) = tracing_appender::non_blocking(std::io::stdout());
    // The access log has its own writer (see `accesslog`): it follows `access_log`, not the
    // diagnostic level.
    crate::accesslog::install(out_writer, server.access_log_format);
    let max = filter.max_level_hint().unwrap_or(LevelFilter::TRACE);
    let log_max = match max.into_level() {
        None => log::LevelFilter::Off,
        Some(tracing::Level::ERROR) => log::LevelFilter::Error,
        Some(tracing::Level::WARN) => log::LevelFilter::Warn,
        Some(tracing::Level::INFO) => log::LevelFilter::Info,
        Some(tracing::Level::DEBUG) => log::LevelFilter::Debug,
        Some(tracing::Level::TRACE) => log::LevelFilter::Trace,
    };
    log::set_boxed_logger(Box::new(Bridge(tracing_log::LogTracer::new())))
        .map_err(|e| anyhow::anyhow!("cannot install the log bridge: {e}"))?;
    log::set_max_level(log_max);
    let registry = tracing_subscriber::registry().with(filter);
    // `set_global_default`, not `try_init`: the latter would install its own `log` bridge.
    match server.log_format {
        LogFormat::Json => tracing::subscriber::set_global_default(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(false)
                    .with_writer(err_writer),
            ),
        ),
        LogFormat::Text => tracing::subscriber::set_global_default(
            registry.with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(err_writer),
            ),
        ),
    }
    .map_err(|e| anyhow::anyhow!("cannot install the logger: {e}"))?;
    Ok(LogGuards {
        _guards: vec![err_guard, out_guard],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn level(target: &str, level: log::Level, message: std::fmt::Arguments<'_>) -> log::Level {
        bridged_level(
            &log::Record::builder()
                .target(target)
                .level(level)
                .args(message)
                .build(),
        )
    }

    #[test]
    fn pool_race_is_not_an_error() {
        assert_eq!(
            level(
                "pingora_core::connectors",
                log::Level::Error,
                format_args!("failed to acquire reusable stream")
            ),
            log::Level::Debug
        );
        // Anything else keeps its level.
        assert_eq!(
            level(
                "pingora_core::connectors",
                log::Level::Error,
                format_args!("something else")
            ),
            log::Level::Error
        );
        assert_eq!(
            level(
                "pingora_proxy",
                log::Level::Error,
                format_args!("failed to acquire reusable stream")
            ),
            log::Level::Error
        );
    }
}

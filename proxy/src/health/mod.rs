//! Active health checks and passive ejection.
//!
//! A supervisor on the control runtime walks the current snapshot a few times a second and
//! keeps one task per (upstream, backend, check): new backends (from start-up, DNS or a
//! reload) are checked right away, removed ones stop being checked. Each task checks on its
//! interval with jitter, under a global bound on concurrent checks, and records results in the
//! backend's [`crate::upstream::health::Health`], which selection reads with two atomic loads. Transitions are
//! logged once each. Successful check round trips feed the backend's latency estimate, which
//! orders remote regions.

pub mod probe;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use portico_config::Check;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;

use crate::state::Shared;
use crate::upstream::health as state;
use crate::upstream::BackendRt;
use state::{Transition, Verdict};

/// Checks running at once, over every upstream.
const MAX_CONCURRENT_CHECKS: usize = 64;

/// How often the supervisor looks for new or removed backends.
const SUPERVISE_EVERY: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TaskKey {
    upstream: String,
    backend: usize,
    check: usize,
    config: Check,
}

fn jitter(d: Duration, spread: f64) -> Duration {
    d.mul_f64(1.0 + (fastrand::f64() * 2.0 - 1.0) * spread)
}

/// Logs and counts a verdict change once.
pub fn report(shared: &Shared, upstream: &str, backend: &BackendRt, t: &Transition) {
    match t.to {
        Verdict::Up => {
            tracing::info!(upstream, backend = %backend.addr, id = backend.id.as_deref().unwrap_or("-"), reason = %t.reason, "backend is healthy")
        }
        Verdict::Down => {
            tracing::warn!(upstream, backend = %backend.addr, id = backend.id.as_deref().unwrap_or("-"), reason = %t.reason, "backend is unhealthy")
        }
        Verdict::Pending => {}
    }
    if t.reason.starts_with("ejected") {
        shared
            .metrics
            .upstreams
            .backend_ejections
            .with_label_values(&[upstream])
            .inc();
    }
}

async fn check_loop(
    upstream: String,
    backend: Arc<BackendRt>,
    index: usize,
    check: Check,
    shared: Arc<Shared>,
    limit: Arc<Semaphore>,
) {
    let passed = shared
        .metrics
        .health
        .health_checks
        .with_label_values(&[&upstream, "pass"]);
    let failed = shared
        .metrics
        .health
        .health_checks
        .with_label_values(&[&upstream, "fail"]);
    let duration = shared
        .metrics
        .health
        .health_check_duration
        .with_label_values(&[&upstream]);
    // Spread first checks a little so that a hundred new backends are not hit at once.
    tokio::time::sleep(jitter(check.interval.min(Duration::from_millis(200)), 1.0) / 2).await;
    loop {
        let result = {
            let Ok(_permit) = limit.acquire().await else {
                return;
            };
            probe::probe(backend.addr, &check).await
        };
        let (outcome, latency) = result;
        duration.observe(latency.as_secs_f64());
        if outcome.is_ok() {
            passed.inc();
            backend.record_latency(latency);
        } else {
            failed.inc();
        }
        if let Some(t) = backend.health.record_check(index, &check, outcome, latency) {
            report(&shared, &upstream, &backend, &t);
        }
        tokio::time::sleep(jitter(check.interval, 0.1)).await;
    }
}

/// Supervises every check until `stop` turns true.
pub async fn run(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let limit = Arc::new(Semaphore::new(MAX_CONCURRENT_CHECKS));
    let mut tasks: HashMap<TaskKey, JoinHandle<()>> = HashMap::new();
    loop {
        let snap = shared.current.load_full();
        let mut wanted = std::collections::HashSet::new();
        for up in &snap.upstreams {
            if up.cfg.checks.is_empty() {
                continue;
            }
            let set = up.set.load();
            for b in &set.backends {
                for (i, check) in up.cfg.checks.iter().enumerate() {
                    let key = TaskKey {
                        upstream: up.name().to_string(),
                        backend: Arc::as_ptr(b) as usize,
                        check: i,
                        config: check.clone(),
                    };
                    if !tasks.contains_key(&key) {
                        let task = tokio::spawn(check_loop(
                            up.name().to_string(),
                            b.clone(),
                            i,
                            check.clone(),
                            shared.clone(),
                            limit.clone(),
                        ));
                        tasks.insert(key.clone(), task);
                    }
                    wanted.insert(key);
                }
            }
        }
        tasks.retain(|k, t| {
            let keep = wanted.contains(k);
            if !keep {
                t.abort();
            }
            keep
        });
        tokio::select! {
            _ = tokio::time::sleep(SUPERVISE_EVERY) => {}
            _ = stop.changed() => break,
        }
    }
    for (_, t) in tasks {
        t.abort();
    }
}

//! Reading Prometheus metrics from the admin listener.

use std::io::BufRead;
use std::time::{Duration, Instant};

use super::*;

/// The admin's `/metrics` exposition text.
pub async fn metrics_text(p: &Portico) -> String {
    client()
        .get(p.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// Fetches a Prometheus metric value (sum over series matching every `labels` pair).
pub async fn metric(p: &Portico, name: &str, labels: &[(&str, &str)]) -> f64 {
    let body = metrics_text(p).await;
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.starts_with(name)
                && (l.len() == name.len() || matches!(l.as_bytes()[name.len()], b'{' | b' '))
        })
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `portico_http_rejected_total{reason}`: requests Portico answered itself for `reason`.
#[allow(dead_code)]
pub async fn rejected(p: &Portico, reason: &str) -> f64 {
    metric(p, "portico_http_rejected_total", &[("reason", reason)]).await
}

/// Waits until a metric reaches `want` (metrics are updated after the client may already have
/// seen the connection close), failing after five seconds.
pub async fn wait_metric(p: &Portico, name: &str, labels: &[(&str, &str)], want: f64) {
    let start = Instant::now();
    loop {
        let v = metric(p, name, labels).await;
        if v == want {
            return;
        }
        if start.elapsed() > Duration::from_secs(5) {
            panic!("{name}{labels:?} is {v}, expected {want}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

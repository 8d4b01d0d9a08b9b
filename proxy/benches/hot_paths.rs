//! Micro-benchmarks of the decisions every request makes (`cargo bench -p portico`): route
//! lookup over 1, 100 and 10,000 routes, backend selection per balancing mode,
//! consistent-hash lookup, and fly-replay header parsing. The end-to-end comparison with
//! nginx and HAProxy is `loadtest/compare`.
#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use portico::internals::hash_key;
use portico::internals::parse_header;
use portico::internals::Metrics;
use portico::internals::{UpstreamRt, Want};

fn config(text: &str) -> portico_config::Config {
    let env: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    portico_config::parse(text, "bench.toml", None, &env)
        .unwrap_or_else(|e| panic!("{e}"))
        .config
}

fn routes(c: &mut Criterion) {
    let mut g = c.benchmark_group("route lookup");
    for n in [1usize, 100, 10_000] {
        let mut text = String::from(
            "[[listeners]]\naddress = \"127.0.0.1:1\"\n[upstreams.app]\nbackends = [\"127.0.0.1:2\"]\n",
        );
        for i in 0..n {
            // Hosts with a few paths each, as a multi-tenant front door would have.
            text.push_str(&format!(
                "[[routes]]\nhost = \"site{}.example.com\"\npath = \"/p{}\"\nupstream = \"app\"\n",
                i / 4,
                i % 4
            ));
        }
        let cfg = config(&text);
        let host = format!("site{}.example.com", (n - 1) / 4);
        let path = format!("/p{}/deeper/page", (n - 1) % 4);
        g.bench_function(format!("{n} routes"), |b| {
            b.iter(|| black_box(cfg.routes.find(Some(black_box(&host)), black_box(&path))))
        });
    }
    g.finish();
}

fn upstream(balance: &str, backends: usize) -> Arc<UpstreamRt> {
    let list: Vec<String> = (0..backends)
        .map(|i| format!("\"127.0.0.{}:80\"", i + 1))
        .collect();
    let cfg = config(&format!(
        "[[listeners]]\naddress = \"127.0.0.1:1\"\n[upstreams.app]\nbackends = [{}]\nbalance = \"{balance}\"\n{}",
        list.join(", "),
        if balance == "consistent_hash" {
            "hash_on = \"header:x-user\"\n"
        } else {
            ""
        }
    ));
    let metrics = Metrics::new();
    Arc::new(UpstreamRt::new(
        Arc::new(cfg.upstreams[0].clone()),
        &cfg.server,
        &metrics,
        None,
    ))
}

fn selection(c: &mut Criterion) {
    let mut g = c.benchmark_group("backend selection (10 backends)");
    for balance in ["least_requests", "round_robin", "random", "consistent_hash"] {
        let up = upstream(balance, 10);
        let want = Want::default();
        let mut key = 0u64;
        g.bench_function(balance, |b| {
            b.iter(|| {
                key = key.wrapping_add(1);
                let hash = (balance == "consistent_hash").then(|| hash_key(&key.to_le_bytes()));
                // Acquire and give back a slot, as a request does.
                let got = up.try_acquire(hash, &[], &want);
                black_box(got.is_ok())
            })
        });
    }
    g.finish();
}

fn hashing(c: &mut Criterion) {
    let up = upstream("consistent_hash", 100);
    let set = up.set.load();
    let ring = set.ring.as_ref().unwrap();
    let mut g = c.benchmark_group("consistent hash");
    g.bench_function("key hash + ring lookup (100 backends)", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i = i.wrapping_add(1);
            let h = hash_key(format!("user-{i}").as_bytes());
            black_box(ring.walk(h).next())
        })
    });
    g.finish();
}

fn replay(c: &mut Criterion) {
    let mut g = c.benchmark_group("fly-replay header");
    for (name, value) in [
        ("region", "region=iad"),
        (
            "all fields",
            "region=\"sjc,ord,any\";instance=e286;state=write-42;elsewhere=true;timeout=5s;fallback=prefer_self",
        ),
    ] {
        g.bench_function(name, |b| b.iter(|| black_box(parse_header(black_box(value)))));
    }
    g.finish();
}

/// CPU per MB of proxied-response compression at the default levels, on HTML-like text fed in
/// 32 KiB reads as the engine does: `cargo bench --bench hot_paths -- compress`.
fn compression(c: &mut Criterion) {
    use portico::internals::{Coding, Encoder};
    let cfg = portico_config::Compress::default();
    let mut text = Vec::with_capacity(1 << 20);
    let mut i = 0u64;
    while text.len() < 1 << 20 {
        text.extend_from_slice(
            format!(
                "<tr><td class=\"n\">{i}</td><td>{}</td><td>portico row</td></tr>\n",
                i * 7919 % 1000
            )
            .as_bytes(),
        );
        i += 1;
    }
    text.truncate(1 << 20);
    let mut g = c.benchmark_group("compress");
    g.throughput(criterion::Throughput::Bytes(text.len() as u64));
    for coding in [Coding::Gzip, Coding::Brotli, Coding::Zstd] {
        g.bench_function(format!("{}_1MiB", coding.token()), |b| {
            b.iter(|| {
                let mut e = Encoder::new(coding, &cfg).unwrap();
                let mut out = 0;
                for piece in text.chunks(32 * 1024) {
                    out += e.encode(piece, false).unwrap().len();
                }
                out += e.encode(&[], true).unwrap().len();
                out
            })
        });
    }
    g.finish();
}

criterion_group!(benches, routes, selection, hashing, replay, compression);
criterion_main!(benches);

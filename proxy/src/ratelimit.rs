//! Per-client request rate limits (a route's `rate_limit`): requests per key (client address,
//! a header's or a cookie's value) in a sliding window, with bounded memory.
//!
//! The count is the sliding-window estimate nginx Plus and Cloudflare use: the current fixed
//! window's count plus the previous window's, weighted by how much of it still overlaps the
//! sliding window. It needs two counters per key, is exact at window edges to within that
//! weighting, and gives a precise `Retry-After`. Rejected requests are not counted (as
//! nginx's `limit_req`), so a client that backs off for `Retry-After` gets through.
//!
//! Memory: at most `max_clients` keys per route, spread over 16 mutex-guarded shards (keys
//! are 64-bit seeded hashes, so an entry is 24 bytes plus the map's overhead, about 40 bytes).
//! When a shard is full, entries whose windows have both ended are dropped (a sweep at most
//! once per window per shard), and if it is still full the entry with the lowest count among
//! eight sampled is evicted: under a flood of distinct addresses the clients that are really
//! sending stay tracked, and a newcomer is never refused for lack of room. Hand-written
//! because governor's keyed limiter grows without bound between cleanups and pingora-limits'
//! count-min sketch overcounts (refuses innocent clients) once distinct clients outnumber its
//! slots; both trade away what a front door needs under attack.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use portico_config::RateLimit;

/// The `reason` of a 429 from a rate limit (metrics, access log).
pub const REASON: &str = "rate_limited";

const SHARDS: usize = 16;
/// Entries examined to pick an eviction victim.
const SAMPLE: usize = 8;

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Index of the fixed window `current` counts.
    window: u64,
    current: u32,
    previous: u32,
}

#[derive(Debug, Default)]
struct Shard {
    map: HashMap<u64, Entry>,
    /// The window of the last stale sweep.
    swept: u64,
}

/// What the limiter decided for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The limit (requests per window).
    pub limit: u32,
    /// Requests left in the sliding window after this one.
    pub remaining: u32,
    /// Seconds until the current fixed window ends.
    pub reset: u64,
    /// When refused: seconds until a request would be allowed.
    pub retry_after: u64,
    /// The window in seconds.
    pub window: u64,
}

/// One route's limiter.
#[derive(Debug)]
pub struct Limiter {
    cfg: RateLimit,
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    seed: u64,
    epoch: Instant,
}

impl Limiter {
    /// A limiter for `cfg`, empty.
    pub fn new(cfg: &RateLimit) -> Self {
        Self {
            cfg: cfg.clone(),
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: cfg.max_clients.div_ceil(SHARDS).max(1),
            seed: fastrand::u64(..),
            epoch: Instant::now(),
        }
    }

    /// The configuration it enforces (a reload keeps a limiter whose configuration is the
    /// same).
    pub fn config(&self) -> &RateLimit {
        &self.cfg
    }

    /// Keys tracked now (the memory bound's tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |s| s.map.len()))
            .sum()
    }

    /// Counts a request for `key` at `now` if it is within the limit.
    pub fn check(&self, key: &[u8], now: Instant) -> Decision {
        let per = self.cfg.per.as_nanos().max(1);
        let since = now.saturating_duration_since(self.epoch).as_nanos();
        let window = u64::try_from(since / per).unwrap_or(u64::MAX);
        // How far into the current window we are, 0.0..1.0.
        let frac = (since % per) as f64 / per as f64;
        let window_left = self.cfg.per.as_secs_f64() * (1.0 - frac);
        let hash = xxhash_rust::xxh3::xxh3_64_with_seed(key, self.seed);
        let shard = &self.shards[(hash as usize) % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        if !shard.map.contains_key(&hash) && shard.map.len() >= self.per_shard {
            make_room(&mut shard, window);
        }
        let e = shard.map.entry(hash).or_insert(Entry {
            window,
            current: 0,
            previous: 0,
        });
        // Roll the windows forward.
        if e.window != window {
            e.previous = if e.window + 1 == window { e.current } else { 0 };
            e.current = 0;
            e.window = window;
        }
        let limit = self.cfg.requests;
        let estimate = f64::from(e.previous) * (1.0 - frac) + f64::from(e.current);
        let reset = window_left.ceil() as u64;
        let window_secs = self.cfg.per.as_secs();
        if estimate + 1.0 <= f64::from(limit) {
            e.current = e.current.saturating_add(1);
            let remaining = (f64::from(limit) - estimate - 1.0).floor().max(0.0) as u32;
            return Decision {
                allowed: true,
                limit,
                remaining,
                reset,
                retry_after: 0,
                window: window_secs,
            };
        }
        // When would one more fit? Within this window, as the previous window's weight
        // fades; else after it ends, as this window's count fades in turn.
        let per_s = self.cfg.per.as_secs_f64();
        let room = f64::from(limit) - 1.0 - f64::from(e.current);
        let wait = if room >= 0.0 && e.previous > 0 {
            // previous * (1 - f') <= room  =>  f' >= 1 - room / previous
            let f = 1.0 - room / f64::from(e.previous);
            (f - frac).max(0.0) * per_s
        } else {
            let c = f64::from(e.current).max(1.0);
            let f = (1.0 - (f64::from(limit) - 1.0) / c).max(0.0);
            window_left + f * per_s
        };
        Decision {
            allowed: false,
            limit,
            remaining: 0,
            reset,
            retry_after: (wait.ceil() as u64).max(1),
            window: window_secs,
        }
    }
}

/// Frees one slot in a full shard: stale entries first (at most one sweep per window), else
/// the least active of a sample.
fn make_room(shard: &mut Shard, window: u64) {
    if shard.swept != window {
        shard.swept = window;
        let before = shard.map.len();
        // Both windows of an entry ended: its estimate is zero.
        shard.map.retain(|_, e| e.window + 1 >= window);
        if shard.map.len() < before {
            return;
        }
    }
    let victim = shard
        .map
        .iter()
        .take(SAMPLE)
        .min_by_key(|(_, e)| {
            let current = if e.window == window { e.current } else { 0 };
            u64::from(current) + u64::from(e.previous)
        })
        .map(|(k, _)| *k);
    if let Some(k) = victim {
        shard.map.remove(&k);
    }
}

/// The `Retry-After` and `RateLimit-*` fields of a 429 (draft-ietf-httpapi-ratelimit-headers,
/// in the widely implemented `RateLimit-Limit` / `-Remaining` / `-Reset` form, plus
/// `RateLimit-Policy`).
pub fn headers(d: &Decision) -> [(&'static str, String); 5] {
    [
        ("retry-after", d.retry_after.to_string()),
        ("ratelimit-limit", d.limit.to_string()),
        ("ratelimit-remaining", d.remaining.to_string()),
        ("ratelimit-reset", d.reset.to_string()),
        ("ratelimit-policy", format!("{};w={}", d.limit, d.window)),
    ]
}

/// How long a window is, for messages.
pub fn describe(cfg: &RateLimit) -> String {
    let per = cfg.per;
    let unit = if per == Duration::from_secs(60) {
        "minute".to_string()
    } else if per == Duration::from_secs(3600) {
        "hour".to_string()
    } else {
        format!("{} s", per.as_secs())
    };
    format!("{} requests per {unit}", cfg.requests)
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_config::RateKey;

    fn limiter(requests: u32, per_s: u64, max_clients: usize) -> Limiter {
        Limiter::new(&RateLimit {
            requests,
            per: Duration::from_secs(per_s),
            key: RateKey::Ip,
            max_clients,
        })
    }

    #[test]
    fn the_limit_holds_per_key_and_says_when_to_retry() {
        let l = limiter(10, 60, 1000);
        let t0 = l.epoch;
        for i in 0..10 {
            let d = l.check(b"a", t0);
            assert!(d.allowed, "request {i}");
            assert_eq!(d.remaining, 9 - i);
        }
        let d = l.check(b"a", t0);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        // Ten at the start of a 60 s window: the next fits once the sliding window's weight
        // of them drops to nine, a tenth of the way into the next window.
        assert_eq!(d.retry_after, 66, "{d:?}");
        // Another key is not affected.
        assert!(l.check(b"b", t0).allowed);
        // Rejections are not counted: at 66 s the previous window weighs 10 * 0.9 = 9.
        let later = t0 + Duration::from_secs(66);
        assert!(l.check(b"a", later).allowed);
        assert!(!l.check(b"a", later).allowed);
        // Two windows later everything has faded.
        let much_later = t0 + Duration::from_secs(181);
        for _ in 0..10 {
            assert!(l.check(b"a", much_later).allowed);
        }
    }

    #[test]
    fn retry_after_is_when_a_request_really_fits() {
        let l = limiter(5, 10, 100);
        let t0 = l.epoch;
        for _ in 0..5 {
            l.check(b"k", t0 + Duration::from_secs(9));
        }
        let d = l.check(b"k", t0 + Duration::from_millis(9_500));
        assert!(!d.allowed);
        let at = t0 + Duration::from_millis(9_500) + Duration::from_secs(d.retry_after);
        assert!(l.check(b"k", at).allowed, "{d:?}");
    }

    #[test]
    fn memory_stays_bounded_and_active_clients_stay_tracked() {
        let l = limiter(3, 60, 160);
        let t0 = l.epoch;
        for _ in 0..3 {
            assert!(l.check(b"heavy", t0).allowed);
        }
        for i in 0u32..10_000 {
            let d = l.check(&i.to_be_bytes(), t0);
            assert!(d.allowed, "a newcomer is never refused for lack of room");
        }
        assert!(l.len() <= 160, "{}", l.len());
        // The heavy client's count survived the flood (it is the least likely victim).
        assert!(!l.check(b"heavy", t0).allowed);
    }

    #[test]
    fn headers_follow_the_draft() {
        let d = Decision {
            allowed: false,
            limit: 100,
            remaining: 0,
            reset: 17,
            retry_after: 17,
            window: 60,
        };
        let h = headers(&d);
        assert_eq!(h[0], ("retry-after", "17".to_string()));
        assert_eq!(h[4], ("ratelimit-policy", "100;w=60".to_string()));
    }
}

//! The replay cache: where earlier replays went, so that later requests can skip the origin.
//!
//! Two kinds of entries (Fly's):
//! - path: created by `fly-replay-cache: <host>/<path>/*` and `fly-replay-cache-ttl-secs: N`
//!   next to a `fly-replay`; requests for that host and path prefix go straight to the target.
//! - session: configured per route (`replay_cache = [{ path, cookie|header, ttl }]`); a replay
//!   of a request carrying the session value makes later requests with that value go straight
//!   to the same target.
//!
//! Bounded: at most `capacity` entries; expired ones go first, then the oldest. Lookups are a
//! read lock and a short scan of one host's entries; an empty cache costs one atomic load.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant};

/// Shortest TTL an origin may ask for (Fly's rule).
pub const MIN_TTL: Duration = Duration::from_secs(10);
/// Longest TTL accepted.
pub const MAX_TTL: Duration = Duration::from_secs(86_400);

/// Where a cached replay goes (upstream by name: indices change with reloads).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedTarget {
    /// Target upstream.
    pub upstream: String,
    /// Regions in order.
    pub regions: Vec<String>,
    /// Only those regions.
    pub regions_forced: bool,
    /// Instance to aim for.
    pub instance: Option<String>,
    /// Only that instance.
    pub instance_forced: bool,
}

/// Identity of a cache entry.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CacheKey {
    /// Host and path pattern (prefix when `prefix`).
    Path {
        /// Lower-case host without port.
        host: String,
        /// Path or path prefix.
        path: String,
        /// Whether `path` is a prefix.
        prefix: bool,
    },
    /// Route, rule within it, and the session value.
    Session {
        /// Route name.
        route: String,
        /// Rule index.
        rule: usize,
        /// Cookie or header value.
        value: String,
    },
}

#[derive(Debug, Clone)]
struct Entry {
    target: CachedTarget,
    expires: Instant,
    allow_bypass: bool,
    seq: u64,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<CacheKey, Entry>,
    /// Insertion order, for eviction (stale sequence numbers are skipped).
    order: VecDeque<(CacheKey, u64)>,
    seq: u64,
}

/// A hit: where to go, and the key (to invalidate it).
#[derive(Debug, Clone)]
pub struct Hit {
    /// The entry's key.
    pub key: CacheKey,
    /// Where to send the request.
    pub target: CachedTarget,
    /// Whether clients may skip this entry (`fly-replay-cache-control: skip`).
    pub allow_bypass: bool,
}

/// The cache.
pub struct ReplayCache {
    inner: RwLock<Inner>,
    len: AtomicUsize,
    capacity: usize,
}

/// Parses `example.com/app/*` into a path key (host lower case, port dropped).
pub fn parse_pattern(pattern: &str) -> Option<CacheKey> {
    let pattern = pattern.trim();
    let slash = pattern.find('/')?;
    let host = portico_config::routing::strip_port(&pattern[..slash]).to_ascii_lowercase();
    if host.is_empty() || host.contains(char::is_whitespace) {
        return None;
    }
    let path = &pattern[slash..];
    let (path, prefix) = match path.strip_suffix('*') {
        Some(p) => (p.to_string(), true),
        None => (path.to_string(), false),
    };
    if path.contains(char::is_whitespace) || path.contains('*') {
        return None;
    }
    Some(CacheKey::Path { host, path, prefix })
}

impl ReplayCache {
    /// An empty cache holding at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: RwLock::new(Inner::default()),
            len: AtomicUsize::new(0),
            capacity: capacity.max(1),
        }
    }

    /// Entries held now.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds or replaces an entry.
    pub fn insert(&self, key: CacheKey, target: CachedTarget, ttl: Duration, allow_bypass: bool) {
        let Ok(mut inner) = self.inner.write() else {
            return;
        };
        let now = Instant::now();
        inner.seq += 1;
        let seq = inner.seq;
        inner.entries.insert(
            key.clone(),
            Entry {
                target,
                expires: now + ttl.clamp(MIN_TTL, MAX_TTL),
                allow_bypass,
                seq,
            },
        );
        inner.order.push_back((key, seq));
        // Evict: stale order records, then expired entries, then the oldest.
        while inner.entries.len() > self.capacity {
            let Some((k, s)) = inner.order.pop_front() else {
                break;
            };
            if inner.entries.get(&k).is_some_and(|e| e.seq == s) {
                inner.entries.remove(&k);
            }
        }
        if inner.order.len() > self.capacity * 2 {
            let Inner { entries, order, .. } = &mut *inner;
            order.retain(|(k, s)| {
                entries
                    .get(k)
                    .is_some_and(|e| e.seq == *s && e.expires > now)
            });
            entries.retain(|_, e| e.expires > now);
        }
        self.len.store(inner.entries.len(), Ordering::Relaxed);
    }

    /// Removes an entry.
    pub fn remove(&self, key: &CacheKey) {
        if let Ok(mut inner) = self.inner.write() {
            inner.entries.remove(key);
            self.len.store(inner.entries.len(), Ordering::Relaxed);
        }
    }

    /// The path entry for a request, the longest matching prefix winning.
    pub fn lookup_path(&self, host: &str, path: &str) -> Option<Hit> {
        if self.is_empty() {
            return None;
        }
        let host = portico_config::routing::strip_port(host).to_ascii_lowercase();
        let inner = self.inner.read().ok()?;
        let now = Instant::now();
        inner
            .entries
            .iter()
            .filter(|(_, e)| e.expires > now)
            .filter_map(|(k, e)| match k {
                CacheKey::Path {
                    host: h,
                    path: p,
                    prefix,
                } if *h == host
                    && (if *prefix {
                        path.starts_with(p.as_str())
                    } else {
                        path == p
                    }) =>
                {
                    Some((p.len(), k, e))
                }
                _ => None,
            })
            .max_by_key(|(len, _, _)| *len)
            .map(|(_, k, e)| Hit {
                key: k.clone(),
                target: e.target.clone(),
                allow_bypass: e.allow_bypass,
            })
    }

    /// The session entry for `key`.
    pub fn lookup(&self, key: &CacheKey) -> Option<Hit> {
        if self.is_empty() {
            return None;
        }
        let inner = self.inner.read().ok()?;
        let e = inner
            .entries
            .get(key)
            .filter(|e| e.expires > Instant::now())?;
        Some(Hit {
            key: key.clone(),
            target: e.target.clone(),
            allow_bypass: e.allow_bypass,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(up: &str) -> CachedTarget {
        CachedTarget {
            upstream: up.into(),
            regions: vec!["iad".into()],
            regions_forced: true,
            instance: None,
            instance_forced: false,
        }
    }

    #[test]
    fn patterns() {
        assert_eq!(
            parse_pattern("Example.com:443/app/*"),
            Some(CacheKey::Path {
                host: "example.com".into(),
                path: "/app/".into(),
                prefix: true
            })
        );
        assert_eq!(
            parse_pattern("example.com/exact"),
            Some(CacheKey::Path {
                host: "example.com".into(),
                path: "/exact".into(),
                prefix: false
            })
        );
        assert_eq!(parse_pattern("nohost"), None);
        assert_eq!(parse_pattern("/path/*"), None);
        assert_eq!(parse_pattern("a.com/x*y/*"), None);
    }

    #[test]
    fn longest_prefix_and_exact() {
        let c = ReplayCache::new(10);
        c.insert(
            parse_pattern("a.com/*").unwrap(),
            target("one"),
            MIN_TTL,
            false,
        );
        c.insert(
            parse_pattern("a.com/app/*").unwrap(),
            target("two"),
            MIN_TTL,
            true,
        );
        c.insert(
            parse_pattern("a.com/exact").unwrap(),
            target("three"),
            MIN_TTL,
            false,
        );
        assert_eq!(c.lookup_path("a.com", "/x").unwrap().target.upstream, "one");
        assert_eq!(
            c.lookup_path("A.com:8080", "/app/y")
                .unwrap()
                .target
                .upstream,
            "two"
        );
        assert!(c.lookup_path("a.com", "/app/y").unwrap().allow_bypass);
        assert_eq!(
            c.lookup_path("a.com", "/exact").unwrap().target.upstream,
            "three"
        );
        assert_eq!(
            c.lookup_path("a.com", "/exactly").unwrap().target.upstream,
            "one"
        );
        assert!(c.lookup_path("b.com", "/x").is_none());
        c.remove(&parse_pattern("a.com/app/*").unwrap());
        assert_eq!(
            c.lookup_path("a.com", "/app/y").unwrap().target.upstream,
            "one"
        );
    }

    #[test]
    fn bounded_oldest_evicted() {
        let c = ReplayCache::new(3);
        for i in 0..5 {
            c.insert(
                CacheKey::Session {
                    route: "r".into(),
                    rule: 0,
                    value: format!("v{i}"),
                },
                target("t"),
                MIN_TTL,
                false,
            );
        }
        assert_eq!(c.len(), 3);
        let key = |v: &str| CacheKey::Session {
            route: "r".into(),
            rule: 0,
            value: v.into(),
        };
        assert!(c.lookup(&key("v0")).is_none());
        assert!(c.lookup(&key("v1")).is_none());
        assert!(c.lookup(&key("v4")).is_some());
    }

    #[test]
    fn ttl_is_clamped_and_expires() {
        let c = ReplayCache::new(3);
        let k = CacheKey::Session {
            route: "r".into(),
            rule: 0,
            value: "x".into(),
        };
        c.insert(k.clone(), target("t"), Duration::from_secs(1), false);
        // One second is below Fly's minimum of ten: it still lives for ten.
        assert!(c.lookup(&k).is_some());
    }
}

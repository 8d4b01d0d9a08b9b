//! Backend selection: the balancing algorithms and Fly's soft/hard concurrency limits.
//!
//! Eligibility first, algorithm second:
//! 1. A backend is a candidate when it was not already tried for this request and has fewer
//!    requests in flight than its hard limit.
//! 2. Candidates under their soft limit are preferred; the others are used only when every
//!    candidate is at or over its soft limit.
//! 3. The algorithm picks among the preferred candidates. Consistent hashing instead walks the
//!    ring from the key's point to the first candidate, so a key keeps its backend while that
//!    backend can take work, whatever the soft limits say.
//!
//! Region tiers are applied one level up ([`super::UpstreamRt`]): a selection may be limited to
//! one tier's members, and the next tier is tried only when this one has no candidate.
//!
//! Nothing here allocates for up to 64 backends.
//!
//! The hash ring is Portico's own rather than pingora-ketama's: it is keyed by each backend's
//! stable key (its instance id when discovery or the config gives one, else its address), so a
//! Fly machine that comes back on a new address keeps its keys, and it walks each backend once
//! for failover; pingora-ketama keys points by socket address.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use portico_config::Balance;
use smallvec::SmallVec;
use xxhash_rust::xxh3::xxh3_64;

use super::backend::BackendRt;

/// Points per unit of weight on the hash ring (Ketama uses 160 per server).
const RING_POINTS_PER_WEIGHT: u32 = 160;

/// A Ketama-style consistent hash ring over backend keys.
#[derive(Debug, Default)]
pub struct Ring {
    /// `(point, backend index)`, sorted by point.
    points: Vec<(u64, u32)>,
    /// Backends on the ring.
    backends: usize,
}

impl Ring {
    /// Builds the ring. Points depend only on each backend's key and weight, so adding or
    /// removing one backend moves only the keys that land on its points.
    pub fn new(backends: &[Arc<BackendRt>]) -> Self {
        let mut points = Vec::new();
        for (i, b) in backends.iter().enumerate() {
            let n = RING_POINTS_PER_WEIGHT * b.weight.max(1);
            for v in 0..n {
                let label = format!("{}-{v}", b.key);
                points.push((xxh3_64(label.as_bytes()), i as u32));
            }
        }
        points.sort_unstable();
        Self {
            points,
            backends: backends.len(),
        }
    }

    /// Backend indices in ring order starting at `hash`'s point, each backend once: a walk
    /// past busy or tried backends ends after the last distinct one instead of visiting all
    /// of their 160-per-weight points.
    pub fn walk(&self, hash: u64) -> Walk<'_> {
        Walk {
            ring: self,
            at: self.points.partition_point(|&(p, _)| p < hash),
            steps: 0,
            seen: SmallVec::from_elem(0, self.backends.div_ceil(64)),
            left: self.backends,
        }
    }
}

/// An iterator over a ring's backends from a point (see [`Ring::walk`]).
pub struct Walk<'a> {
    ring: &'a Ring,
    at: usize,
    steps: usize,
    /// Backends already yielded, one bit each.
    seen: SmallVec<[u64; 2]>,
    /// Backends not yet yielded.
    left: usize,
}

impl Iterator for Walk<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let points = &self.ring.points;
        while self.left > 0 && self.steps < points.len() {
            let b = points[(self.at + self.steps) % points.len()].1 as usize;
            self.steps += 1;
            let (word, bit) = (b / 64, 1u64 << (b % 64));
            if let Some(w) = self.seen.get_mut(word) {
                if *w & bit == 0 {
                    *w |= bit;
                    self.left -= 1;
                    return Some(b);
                }
            }
        }
        None
    }
}

/// Hash of an affinity key, stable across processes and releases.
pub fn hash_key(key: &[u8]) -> u64 {
    xxh3_64(key)
}

/// Why no backend was picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoBackend {
    /// The upstream has no backends at all.
    Empty,
    /// Every untried backend is at its hard limit.
    AllBusy,
    /// Every backend was tried for this request already.
    AllTried,
}

/// Inputs of one selection.
pub struct Selection<'a> {
    /// Backends of the upstream.
    pub backends: &'a [Arc<BackendRt>],
    /// When set, only backends whose entry is `true` are considered (one region's tier).
    pub members: Option<&'a [bool]>,
    /// Skip backends that fail their checks or are ejected.
    pub check_health: bool,
    /// Ring, for consistent hashing.
    pub ring: Option<&'a Ring>,
    /// Algorithm.
    pub balance: Balance,
    /// Soft limit per backend.
    pub soft_limit: u32,
    /// Hard limit per backend.
    pub hard_limit: u32,
    /// Backends already tried for this request (by pointer).
    pub tried: &'a [usize],
    /// Affinity hash, for consistent hashing.
    pub hash: Option<u64>,
    /// Round-robin cursor of the upstream.
    pub cursor: &'a AtomicUsize,
}

/// The identity of a backend within a request's `tried` list.
pub fn backend_ptr(b: &Arc<BackendRt>) -> usize {
    Arc::as_ptr(b) as usize
}

impl Selection<'_> {
    /// Picks a backend index. The caller still has to take a slot on it (which can fail if
    /// another request took the last one meanwhile).
    pub fn pick(&self) -> Result<usize, NoBackend> {
        if self.backends.is_empty() {
            return Err(NoBackend::Empty);
        }
        // A hash (from `consistent_hash` or a route's sticky key) walks the ring whatever the
        // balance, so a key keeps its backend.
        if let (Some(ring), Some(hash)) = (self.ring, self.hash) {
            let mut any_untried = false;
            for i in ring.walk(hash) {
                let b = &self.backends[i];
                if !self.member(i) || self.tried.contains(&backend_ptr(b)) {
                    continue;
                }
                any_untried = true;
                if b.in_flight() < self.hard_limit {
                    return Ok(i);
                }
            }
            return Err(if any_untried {
                NoBackend::AllBusy
            } else {
                NoBackend::AllTried
            });
        }
        let mut under_soft: SmallVec<[u16; 64]> = SmallVec::new();
        let mut under_hard: SmallVec<[u16; 64]> = SmallVec::new();
        let mut any_untried = false;
        for (i, b) in self.backends.iter().enumerate() {
            if !self.member(i) || self.tried.contains(&backend_ptr(b)) {
                continue;
            }
            any_untried = true;
            let n = b.in_flight();
            if n < self.soft_limit {
                under_soft.push(i as u16);
            } else if n < self.hard_limit {
                under_hard.push(i as u16);
            }
        }
        let pool = if !under_soft.is_empty() {
            &under_soft
        } else if !under_hard.is_empty() {
            &under_hard
        } else if any_untried {
            return Err(NoBackend::AllBusy);
        } else {
            return Err(NoBackend::AllTried);
        };
        let idx = match self.balance {
            Balance::RoundRobin | Balance::ConsistentHash => {
                let total: u64 = pool
                    .iter()
                    .map(|&i| u64::from(self.backends[i as usize].weight))
                    .sum();
                let tick = self.cursor.fetch_add(1, Ordering::Relaxed) as u64 % total.max(1);
                weighted_at(self.backends, pool, tick)
            }
            Balance::Random => {
                let total: u64 = pool
                    .iter()
                    .map(|&i| u64::from(self.backends[i as usize].weight))
                    .sum();
                weighted_at(self.backends, pool, fastrand::u64(0..total.max(1)))
            }
            Balance::LeastRequests => self.two_choices(pool),
        };
        Ok(idx)
    }

    fn member(&self, i: usize) -> bool {
        self.members.is_none_or(|m| m[i])
            && (!self.check_health || self.backends[i].health.usable())
    }

    /// Power of two choices on in-flight requests relative to weight; ties go to the first
    /// random draw, so equal loads spread at random.
    fn two_choices(&self, pool: &[u16]) -> usize {
        if pool.len() == 1 {
            return pool[0] as usize;
        }
        let a = pool[fastrand::usize(0..pool.len())] as usize;
        let mut b = pool[fastrand::usize(0..pool.len() - 1)] as usize;
        if b == a {
            b = pool[pool.len() - 1] as usize;
        }
        let load = |i: usize| {
            let be = &self.backends[i];
            u64::from(be.in_flight()) * 1000 / u64::from(be.weight.max(1))
        };
        if load(b) < load(a) {
            b
        } else {
            a
        }
    }
}

/// The backend at position `tick` of the pool laid out by weight.
fn weighted_at(backends: &[Arc<BackendRt>], pool: &[u16], mut tick: u64) -> usize {
    for &i in pool {
        let w = u64::from(backends[i as usize].weight.max(1));
        if tick < w {
            return i as usize;
        }
        tick -= w;
    }
    pool[pool.len() - 1] as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::backend::BackendSpec;
    use portico_config::Upstream;

    fn upstream() -> Upstream {
        let text =
            "[[listeners]]\naddress=\"127.0.0.1:1\"\n[upstreams.a]\nbackends=[\"127.0.0.1:2\"]\n";
        portico_config::parse(
            text,
            "t",
            None,
            &std::collections::HashMap::<&str, &str>::new(),
        )
        .map(|l| l.config.upstreams[0].clone())
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn backends(n: usize, weights: &[u32]) -> Vec<Arc<BackendRt>> {
        let up = upstream();
        (0..n)
            .map(|i| {
                Arc::new(BackendRt::new(
                    &BackendSpec {
                        addr: format!("127.0.0.1:{}", 3000 + i).parse().unwrap(),
                        id: Some(format!("b{i}")),
                        region: None,
                        weight: weights.get(i).copied().unwrap_or(1),
                        origin: "static".into(),
                    },
                    &up,
                ))
            })
            .collect()
    }

    fn sel<'a>(
        b: &'a [Arc<BackendRt>],
        balance: Balance,
        soft: u32,
        hard: u32,
        tried: &'a [usize],
        cursor: &'a AtomicUsize,
    ) -> Selection<'a> {
        Selection {
            backends: b,
            members: None,
            check_health: true,
            ring: None,
            balance,
            soft_limit: soft,
            hard_limit: hard,
            tried,
            hash: None,
            cursor,
        }
    }

    #[test]
    fn round_robin_visits_in_turn_and_respects_weight() {
        let b = backends(3, &[1, 2, 1]);
        let c = AtomicUsize::new(0);
        let picks: Vec<usize> = (0..8)
            .map(|_| {
                sel(&b, Balance::RoundRobin, u32::MAX, u32::MAX, &[], &c)
                    .pick()
                    .unwrap()
            })
            .collect();
        assert_eq!(picks, vec![0, 1, 1, 2, 0, 1, 1, 2]);
    }

    #[test]
    fn soft_limit_prefers_others_and_hard_limit_excludes() {
        let b = backends(3, &[]);
        let c = AtomicUsize::new(0);
        b[0].inflight.store(5, Ordering::Relaxed);
        for _ in 0..50 {
            let i = sel(&b, Balance::Random, 5, 10, &[], &c).pick().unwrap();
            assert_ne!(i, 0, "over its soft limit while others are under");
        }
        b[1].inflight.store(5, Ordering::Relaxed);
        b[2].inflight.store(10, Ordering::Relaxed);
        // 0 and 1 are over soft, 2 at hard: only 0 and 1 may be used.
        for _ in 0..50 {
            let i = sel(&b, Balance::Random, 5, 10, &[], &c).pick().unwrap();
            assert!(i == 0 || i == 1);
        }
        b[0].inflight.store(10, Ordering::Relaxed);
        b[1].inflight.store(10, Ordering::Relaxed);
        assert_eq!(
            sel(&b, Balance::Random, 5, 10, &[], &c).pick(),
            Err(NoBackend::AllBusy)
        );
    }

    #[test]
    fn least_requests_goes_to_the_least_loaded_of_two() {
        let b = backends(2, &[]);
        let c = AtomicUsize::new(0);
        b[0].inflight.store(7, Ordering::Relaxed);
        for _ in 0..20 {
            assert_eq!(
                sel(&b, Balance::LeastRequests, u32::MAX, u32::MAX, &[], &c).pick(),
                Ok(1)
            );
        }
    }

    #[test]
    fn tried_backends_are_skipped_then_exhausted() {
        let b = backends(2, &[]);
        let c = AtomicUsize::new(0);
        let tried = [backend_ptr(&b[0])];
        for _ in 0..10 {
            assert_eq!(
                sel(&b, Balance::Random, u32::MAX, u32::MAX, &tried, &c).pick(),
                Ok(1)
            );
        }
        let tried = [backend_ptr(&b[0]), backend_ptr(&b[1])];
        assert_eq!(
            sel(&b, Balance::Random, u32::MAX, u32::MAX, &tried, &c).pick(),
            Err(NoBackend::AllTried)
        );
        assert_eq!(
            sel(&[], Balance::Random, 1, 1, &[], &c).pick(),
            Err(NoBackend::Empty)
        );
    }

    #[test]
    fn consistent_hash_is_stable_and_moves_few_keys() {
        let all = backends(10, &[]);
        let ring = Ring::new(&all);
        let fewer: Vec<Arc<BackendRt>> = all.iter().filter(|b| &*b.key != "b3").cloned().collect();
        let ring2 = Ring::new(&fewer);
        let c = AtomicUsize::new(0);
        let mut moved = 0;
        for k in 0..10_000u32 {
            let h = hash_key(format!("user-{k}").as_bytes());
            let mut s = sel(&all, Balance::ConsistentHash, u32::MAX, u32::MAX, &[], &c);
            s.ring = Some(&ring);
            s.hash = Some(h);
            let before = &all[s.pick().unwrap()].key;
            let mut s2 = sel(&fewer, Balance::ConsistentHash, u32::MAX, u32::MAX, &[], &c);
            s2.ring = Some(&ring2);
            s2.hash = Some(h);
            let after = &fewer[s2.pick().unwrap()].key;
            if before != after {
                moved += 1;
                assert_eq!(&**before, "b3", "only keys of the removed backend move");
            }
        }
        assert!(moved > 500 && moved < 1500, "moved {moved} of 10000");
    }

    proptest::proptest! {
        /// Removing a backend moves only the keys it held, and every other key's whole
        /// failover order stays the same (the walk over the smaller ring is the walk over the
        /// full one without the departed backend). Each walk names every backend once.
        #[test]
        fn ring_moves_only_the_departing_backends_keys(
            n in 2usize..40,
            weights in proptest::collection::vec(1u32..4, 40),
            gone in proptest::prelude::any::<proptest::sample::Index>(),
            hashes in proptest::collection::vec(proptest::prelude::any::<u64>(), 64),
        ) {
            let all = backends(n, &weights);
            let g = gone.index(n);
            let fewer: Vec<Arc<BackendRt>> = all
                .iter()
                .enumerate()
                .filter(|&(i, _)| i != g)
                .map(|(_, b)| b.clone())
                .collect();
            let (full, less) = (Ring::new(&all), Ring::new(&fewer));
            for h in hashes {
                let before: Vec<&str> = full.walk(h).map(|i| &*all[i].key).collect();
                let after: Vec<&str> = less.walk(h).map(|i| &*fewer[i].key).collect();
                proptest::prop_assert_eq!(before.len(), n);
                let mut distinct = before.clone();
                distinct.sort_unstable();
                distinct.dedup();
                proptest::prop_assert_eq!(distinct.len(), n);
                let without: Vec<&str> =
                    before.iter().copied().filter(|k| *k != &*all[g].key).collect();
                proptest::prop_assert_eq!(&without, &after);
                if before[0] != &*all[g].key {
                    proptest::prop_assert_eq!(before[0], after[0]);
                }
            }
        }
    }

    #[test]
    fn consistent_hash_skips_busy_backend_to_the_next_on_the_ring() {
        let b = backends(3, &[]);
        let ring = Ring::new(&b);
        let c = AtomicUsize::new(0);
        let h = hash_key(b"k");
        let mut s = sel(&b, Balance::ConsistentHash, 1, 2, &[], &c);
        s.ring = Some(&ring);
        s.hash = Some(h);
        let first = s.pick().unwrap();
        // Over the soft limit but under hard: affinity holds.
        b[first].inflight.store(1, Ordering::Relaxed);
        assert_eq!(s.pick(), Ok(first));
        b[first].inflight.store(2, Ordering::Relaxed);
        let second = s.pick().unwrap();
        assert_ne!(second, first);
    }

    #[test]
    fn members_limit_the_choice() {
        let b = backends(4, &[]);
        let c = AtomicUsize::new(0);
        let mask = [false, true, false, true];
        for _ in 0..20 {
            let mut s = sel(&b, Balance::Random, u32::MAX, u32::MAX, &[], &c);
            s.members = Some(&mask);
            let i = s.pick().unwrap();
            assert!(i == 1 || i == 3);
        }
        let none = [false; 4];
        let mut s = sel(&b, Balance::Random, u32::MAX, u32::MAX, &[], &c);
        s.members = Some(&none);
        assert_eq!(s.pick(), Err(NoBackend::AllTried));
    }
}

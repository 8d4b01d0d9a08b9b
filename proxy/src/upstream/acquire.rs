//! Taking a slot on a backend: the local tier first, then remote tiers by measured latency
//! (live, so ordered per fallback), forced instances and regions, the hash ring or the
//! balancer within a tier, fail-open when every backend fails its checks, and the wait queue
//! when every backend is at its hard limit.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use portico_config::AllUnhealthy;
use smallvec::SmallVec;

pub use backend::BackendRt;
pub use select::NoBackend;
use select::{backend_ptr, Selection};

use super::*;

/// A slot taken on a backend; dropping it gives the slot back and wakes a queued request.
pub struct Lease {
    /// The backend.
    pub backend: Arc<BackendRt>,
    upstream: Arc<UpstreamRt>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.backend.release();
        if self.upstream.waiting.load(Ordering::Acquire) > 0 {
            self.upstream.queue.notify_one();
        }
    }
}

/// Why a request could not get a backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AcquireError {
    /// No backend exists.
    Empty,
    /// Every backend was tried and failed.
    AllTried,
    /// Every backend stayed at its hard limit for the whole queue timeout.
    QueueTimeout,
    /// The wait queue is full.
    QueueFull,
    /// A forced instance is not among the backends.
    InstanceMissing(String),
    /// None of the forced regions has a backend.
    RegionMissing(String),
    /// Every backend fails its checks and the upstream refuses to use them.
    AllUnhealthy(String),
}

/// Outcome of one acquisition attempt.
pub struct Acquired {
    /// The slot.
    pub lease: Lease,
    /// A preferred (not forced) instance was wanted but could not be used.
    pub preferred_unavailable: bool,
}

impl UpstreamRt {
    /// Remote tiers in order: lowest measured connect latency first, then `region_order`,
    /// then name.
    pub(super) fn remote_order(&self, set: &BackendSet) -> SmallVec<[usize; 8]> {
        let latency = |t: usize| {
            set.tiers[t]
                .members
                .iter()
                .map(|&i| set.backends[i as usize].latency_us())
                .filter(|&l| l > 0)
                .min()
                .unwrap_or(u64::MAX)
        };
        let name = |t: usize| set.tiers[t].region.as_deref().unwrap_or("");
        let rank = |t: usize| {
            self.region_order
                .iter()
                .position(|r| r == name(t))
                .unwrap_or(usize::MAX)
        };
        // Keys computed once per tier, borrowed names: no allocation for up to 8 regions.
        // Latency is measured live, so the order cannot be kept from one call to the next.
        let mut keyed: SmallVec<[(u64, usize, &str, usize); 8]> = (1..set.tiers.len())
            .map(|t| (latency(t), rank(t), name(t), t))
            .collect();
        keyed.sort_unstable();
        keyed.into_iter().map(|(.., t)| t).collect()
    }

    /// Tries once to take a slot on a backend satisfying `want`.
    pub fn try_acquire(
        self: &Arc<Self>,
        hash: Option<u64>,
        tried: &[usize],
        want: &Want<'_>,
    ) -> Result<Acquired, Attempt> {
        let set = self.set.load();
        if set.backends.is_empty() {
            return Err(Attempt::Failed(AcquireError::Empty));
        }
        let c = &self.cfg.concurrency;
        let mut preferred_unavailable = false;
        if let Some(id) = want.instance {
            match set.by_id.get(id) {
                Some(&i) => {
                    let b = &set.backends[i];
                    // A forced instance is used whatever its health: the caller asked for it.
                    let usable = want.instance_forced || b.health.usable();
                    if tried.contains(&backend_ptr(b)) || !usable {
                        if want.instance_forced {
                            return Err(Attempt::Failed(AcquireError::AllTried));
                        }
                        preferred_unavailable = true;
                    } else if b.try_acquire(c.hard_limit) {
                        return Ok(self.lease(b, false));
                    } else if want.instance_forced {
                        return Err(Attempt::Busy);
                    } else {
                        preferred_unavailable = true;
                    }
                }
                None if want.instance_forced => {
                    return Err(Attempt::Failed(AcquireError::InstanceMissing(
                        id.to_string(),
                    )))
                }
                None => preferred_unavailable = true,
            }
        }
        if let Some(&i) = want
            .sticky
            .filter(|_| want.instance.is_none())
            .and_then(|k| set.by_key.get(k))
        {
            let b = &set.backends[i];
            let in_regions = want.regions.is_empty()
                || b.region
                    .as_deref()
                    .is_some_and(|r| want.regions.contains(&r));
            if in_regions
                && b.health.usable()
                && !tried.contains(&backend_ptr(b))
                && b.try_acquire(c.hard_limit)
            {
                return Ok(self.lease(b, false));
            }
        }
        // Tiers to try, in order.
        let mut order: SmallVec<[usize; 8]> = SmallVec::new();
        for r in &want.regions {
            if let Some(t) = set.tier_of(r, &self.local_region) {
                if !order.contains(&t) {
                    order.push(t);
                }
            }
        }
        if want.regions_forced {
            if order.is_empty() {
                return Err(Attempt::Failed(AcquireError::RegionMissing(
                    want.regions.join(","),
                )));
            }
        } else {
            if !order.contains(&0) {
                order.push(0);
            }
            if !set.single_tier() {
                for t in self.remote_order(&set) {
                    if !order.contains(&t) {
                        order.push(t);
                    }
                }
            }
        }
        let first = self.pick_in_tiers(&set, &order, hash, tried, true);
        let outcome = match first {
            Err(_) if !set.backends.iter().any(|b| b.health.usable()) => {
                match self.cfg.all_unhealthy {
                    // Every backend failing its checks is more likely a broken check than a
                    // dead service: use them all, as a last resort.
                    AllUnhealthy::FailOpen => self.pick_in_tiers(&set, &order, hash, tried, false),
                    AllUnhealthy::Refuse => {
                        return Err(Attempt::Failed(AcquireError::AllUnhealthy(
                            self.unhealthy_summary(&set),
                        )))
                    }
                }
            }
            other => other,
        };
        outcome.map(|i| self.lease(&set.backends[i], preferred_unavailable))
    }

    /// Picks and takes a slot on a backend, tier by tier.
    pub(super) fn pick_in_tiers(
        &self,
        set: &BackendSet,
        order: &[usize],
        hash: Option<u64>,
        tried: &[usize],
        check_health: bool,
    ) -> Result<usize, Attempt> {
        let c = &self.cfg.concurrency;
        let mut any_busy = false;
        for &t in order {
            let members = if set.single_tier() {
                None
            } else {
                Some(set.tiers[t].mask.as_slice())
            };
            let sel = Selection {
                backends: &set.backends,
                members,
                check_health,
                ring: set.ring.as_ref(),
                balance: self.cfg.balance,
                soft_limit: c.soft_limit,
                hard_limit: c.hard_limit,
                tried,
                hash,
                cursor: &self.cursor,
            };
            // Another request can take the last slot between the pick and the acquire.
            for _ in 0..8 {
                match sel.pick() {
                    Ok(i) => {
                        if set.backends[i].try_acquire(c.hard_limit) {
                            return Ok(i);
                        }
                        any_busy = true;
                    }
                    Err(NoBackend::AllBusy) => {
                        any_busy = true;
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        Err(if any_busy {
            Attempt::Busy
        } else {
            Attempt::Failed(AcquireError::AllTried)
        })
    }

    pub(super) fn lease(
        self: &Arc<Self>,
        b: &Arc<BackendRt>,
        preferred_unavailable: bool,
    ) -> Acquired {
        b.requests.fetch_add(1, Ordering::Relaxed);
        Acquired {
            lease: Lease {
                backend: b.clone(),
                upstream: self.clone(),
            },
            preferred_unavailable,
        }
    }

    /// Takes a slot, waiting in the upstream's queue while every candidate is at its hard
    /// limit.
    pub async fn acquire(
        self: &Arc<Self>,
        hash: Option<u64>,
        tried: &[usize],
        want: &Want<'_>,
    ) -> Result<Acquired, AcquireError> {
        match self.try_acquire(hash, tried, want) {
            Ok(a) => return Ok(a),
            Err(Attempt::Failed(e)) => return Err(e),
            Err(Attempt::Busy) => {}
        }
        if self.waiting.load(Ordering::Acquire) >= self.cfg.max_queue {
            return Err(AcquireError::QueueFull);
        }
        let _waiting = WaitGuard::new(self);
        let deadline = tokio::time::Instant::now() + self.cfg.queue_timeout;
        loop {
            // Register interest before checking, so a slot freed in between is not missed.
            let notified = self.queue.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.try_acquire(hash, tried, want) {
                Ok(a) => return Ok(a),
                Err(Attempt::Failed(e)) => return Err(e),
                Err(Attempt::Busy) => {}
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                self.metrics.queue_timeouts.inc();
                return Err(AcquireError::QueueTimeout);
            }
        }
    }
}

/// Result of one selection attempt that took no slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Every candidate is at its hard limit: waiting may help.
    Busy,
    /// Waiting will not help.
    Failed(AcquireError),
}

/// Counts a request as waiting for as long as it lives.
struct WaitGuard<'a>(&'a UpstreamRt);

impl<'a> WaitGuard<'a> {
    fn new(up: &'a UpstreamRt) -> Self {
        up.waiting.fetch_add(1, Ordering::AcqRel);
        up.metrics.queue_waiting.inc();
        Self(up)
    }
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
        self.0.metrics.queue_waiting.dec();
    }
}

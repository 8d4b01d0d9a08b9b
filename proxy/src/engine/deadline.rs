//! A connection's timer, moved forward lazily.
//!
//! A keep-alive connection sets a new deadline for every request head and every read from
//! its backend, each a few microseconds to milliseconds after the last: re-registering
//! tokio's timer entry for each (`Sleep::reset`) was about 135 instructions a time, two
//! per request by callgrind. nginx keeps a timer when the new deadline is within 300 ms of
//! the old one (`NGX_TIMER_LAZY_DELAY`); this does the same with the timer allowed to fire
//! *early* only: it stays registered while it is no later than the deadline and at most
//! [`SLACK`] before it, and when it fires before the deadline, [`Deadline::passed`] moves it
//! there and waits on. A deadline never fires late.

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// How far before the deadline the registered timer may stay.
pub const SLACK: Duration = Duration::from_millis(500);

/// One timer and the deadline it stands for.
pub struct Deadline {
    sleep: Pin<Box<Sleep>>,
    at: Instant,
}

impl Default for Deadline {
    fn default() -> Self {
        Self::new()
    }
}

impl Deadline {
    /// A timer with no deadline yet (it is set before each wait).
    pub fn new() -> Self {
        let sleep = Box::pin(tokio::time::sleep(Duration::ZERO));
        let at = sleep.deadline();
        Deadline { sleep, at }
    }

    /// Sets the deadline to `at`.
    pub fn set(&mut self, at: Instant) {
        self.at = at;
        let registered = self.sleep.deadline();
        if registered > at || at.duration_since(registered) > SLACK {
            self.sleep.as_mut().reset(at);
        }
    }

    /// Sets the deadline to `wait` from now.
    pub fn set_after(&mut self, wait: Duration) {
        self.set(super::deadline_after(wait));
    }

    /// Resolves once the deadline passed. Cancel-safe (it only waits on the timer).
    pub async fn passed(&mut self) {
        loop {
            self.sleep.as_mut().await;
            if Instant::now() >= self.at {
                return;
            }
            // Fired early (it was kept within `SLACK` of a later deadline): move it.
            self.sleep.as_mut().reset(self.at);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fires_at_the_deadline_never_before_and_never_after() {
        let mut d = Deadline::new();
        let start = Instant::now();
        d.set(start + Duration::from_secs(10));
        // Moved forward by less than the slack: the registered timer stays at 10 s, and
        // fires early; `passed` waits on to the real deadline.
        d.set(start + Duration::from_millis(10_300));
        d.passed().await;
        assert_eq!(Instant::now(), start + Duration::from_millis(10_300));

        // Moved back: re-registered (a shorter timeout must not fire late).
        let now = Instant::now();
        d.set(now + Duration::from_secs(60));
        d.set(now + Duration::from_secs(1));
        d.passed().await;
        assert_eq!(Instant::now(), now + Duration::from_secs(1));

        // Moved forward by more than the slack: re-registered.
        let now = Instant::now();
        d.set(now + Duration::from_secs(1));
        d.set(now + Duration::from_secs(5));
        d.passed().await;
        assert_eq!(Instant::now(), now + Duration::from_secs(5));
        assert_eq!(d.at, now + Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn many_small_moves_fire_once_at_the_last_deadline() {
        let mut d = Deadline::new();
        let start = Instant::now();
        for i in 0..1_000u64 {
            tokio::time::advance(Duration::from_millis(1)).await;
            d.set(Instant::now() + Duration::from_secs(2));
            // Never passed while a later deadline is set.
            assert!(
                tokio::time::timeout(Duration::ZERO, d.passed())
                    .await
                    .is_err(),
                "step {i}"
            );
        }
        let last = d.at;
        assert_eq!(
            last,
            start + Duration::from_millis(1_000) + Duration::from_secs(2)
        );
        d.passed().await;
        assert_eq!(Instant::now(), last);
    }
}

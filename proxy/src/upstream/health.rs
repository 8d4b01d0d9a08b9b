//! A backend's health: the verdict of its active checks and its passive ejection, readable
//! on the request path with two atomic loads.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime};

use portico_config::{Check, Passive};

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

/// Milliseconds since the first use, never 0 (0 means "never" in the atomics).
fn now_ms() -> u64 {
    u64::try_from(EPOCH.elapsed().as_millis())
        .unwrap_or(u64::MAX / 2)
        .saturating_add(1)
}

/// Active-check verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Checked before taking traffic and not yet passed.
    Pending,
    /// Taking traffic.
    Up,
    /// Failing its checks.
    Down,
}

impl Verdict {
    fn from_u8(v: u8) -> Self {
        match v {
            0 => Verdict::Pending,
            1 => Verdict::Up,
            _ => Verdict::Down,
        }
    }

    /// Lower-case name for `/status` and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pending => "pending",
            Verdict::Up => "up",
            Verdict::Down => "down",
        }
    }
}

/// One check's running tally for one backend.
#[derive(Debug, Clone, Default)]
pub struct CheckTally {
    /// `None` until the first counted result decides.
    pub passing: Option<bool>,
    /// Consecutive passes.
    pub ok_streak: u32,
    /// Consecutive failures.
    pub fail_streak: u32,
}

/// What `/status` shows about a backend's health.
#[derive(Debug, Clone, Default)]
pub struct HealthDetail {
    /// Per check.
    pub checks: Vec<CheckTally>,
    /// The last check result in words (`HTTP 200`, `connection refused`).
    pub last_result: Option<String>,
    /// Round trip of the last check.
    pub last_latency: Option<Duration>,
    /// When the last check finished.
    pub last_check_at: Option<SystemTime>,
    /// Why the backend is not taking traffic, when it is not.
    pub reason: Option<String>,
    /// When the verdict last changed.
    pub since: Option<SystemTime>,
}

/// A change of verdict, to be logged and counted once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// New verdict.
    pub to: Verdict,
    /// Why.
    pub reason: String,
}

/// Health of one backend.
#[derive(Debug)]
pub struct Health {
    verdict: AtomicU8,
    ejected_until_ms: AtomicU64,
    connect_failures: AtomicU32,
    http_5xx: AtomicU32,
    ejections: AtomicU32,
    last_ejected_ms: AtomicU64,
    /// What caused the current ejection: [`CAUSE_CONNECT`] or [`CAUSE_5XX`].
    eject_cause: AtomicU8,
    born: Instant,
    /// Details for `/status`; only touched by checks and ejections, never by selection.
    pub detail: Mutex<HealthDetail>,
}

/// The ejection came from failed connections: passing active checks end it.
const CAUSE_CONNECT: u8 = 1;
/// The ejection came from 5xx responses: it lasts its whole back-off.
const CAUSE_5XX: u8 = 2;

/// The outcome of one check.
pub type CheckResult = Result<String, String>;

impl Health {
    /// A new backend's health: `Pending` when it has checks and must pass them first.
    pub fn new(checks: usize, start_healthy: bool) -> Self {
        let pending = checks > 0 && !start_healthy;
        let tally = CheckTally {
            passing: (!pending).then_some(true),
            ..Default::default()
        };
        Self {
            verdict: AtomicU8::new(if pending { 0 } else { 1 }),
            ejected_until_ms: AtomicU64::new(0),
            connect_failures: AtomicU32::new(0),
            http_5xx: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            last_ejected_ms: AtomicU64::new(0),
            eject_cause: AtomicU8::new(0),
            born: Instant::now(),
            detail: Mutex::new(HealthDetail {
                checks: vec![tally; checks],
                reason: pending.then(|| "waiting for its first passing check".to_string()),
                since: Some(SystemTime::now()),
                ..Default::default()
            }),
        }
    }

    /// The active-check verdict.
    pub fn verdict(&self) -> Verdict {
        Verdict::from_u8(self.verdict.load(Ordering::Relaxed))
    }

    /// Whether the backend may take new work: checks pass and it is not ejected.
    pub fn usable(&self) -> bool {
        if self.verdict.load(Ordering::Relaxed) != 1 {
            return false;
        }
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        until == 0 || now_ms() >= until
    }

    /// Remaining ejection, if any.
    pub fn ejected_for(&self) -> Option<Duration> {
        let until = self.ejected_until_ms.load(Ordering::Relaxed);
        let now = now_ms();
        (until > now).then(|| Duration::from_millis(until - now))
    }

    /// State name for `/status`: `up`, `down`, `pending` or `ejected`.
    pub fn state_name(&self) -> &'static str {
        match self.verdict() {
            Verdict::Up if self.ejected_for().is_some() => "ejected",
            v => v.as_str(),
        }
    }

    fn set_verdict(
        &self,
        to: Verdict,
        reason: String,
        detail: &mut HealthDetail,
    ) -> Option<Transition> {
        let from = self.verdict();
        detail.reason = (to != Verdict::Up).then(|| reason.clone());
        if from == to {
            return None;
        }
        self.verdict.store(
            match to {
                Verdict::Pending => 0,
                Verdict::Up => 1,
                Verdict::Down => 2,
            },
            Ordering::Relaxed,
        );
        detail.since = Some(SystemTime::now());
        Some(Transition { to, reason })
    }

    /// Records the result of check `index`. Returns the verdict change, if any.
    pub fn record_check(
        &self,
        index: usize,
        check: &Check,
        result: CheckResult,
        latency: Duration,
    ) -> Option<Transition> {
        let Ok(mut d) = self.detail.lock() else {
            return None;
        };
        if d.checks.len() <= index {
            d.checks.resize(index + 1, CheckTally::default());
        }
        d.last_check_at = Some(SystemTime::now());
        d.last_latency = Some(latency);
        let in_grace = self.born.elapsed() < check.grace_period;
        let reason = match &result {
            Ok(r) => r.clone(),
            Err(r) => r.clone(),
        };
        d.last_result = Some(reason.clone());
        let t = &mut d.checks[index];
        match result {
            Ok(_) => {
                t.ok_streak = t.ok_streak.saturating_add(1);
                t.fail_streak = 0;
                if t.ok_streak >= check.rise {
                    t.passing = Some(true);
                }
            }
            // Failures right after a backend appears do not count against it.
            Err(_) if in_grace => {}
            Err(_) => {
                t.fail_streak = t.fail_streak.saturating_add(1);
                t.ok_streak = 0;
                if t.fail_streak >= check.fall {
                    t.passing = Some(false);
                }
            }
        }
        let all_pass = d.checks.iter().all(|c| c.passing == Some(true));
        let any_fail = d.checks.iter().any(|c| c.passing == Some(false));
        if all_pass {
            let until = self.ejected_until_ms.load(Ordering::Relaxed);
            if until > now_ms() {
                // Refused connections mean the process was gone (a restart, a crash): once
                // its checks pass `rise` times it is back, whatever the back-off said. 5xx
                // responses say the app misbehaves while its checks may pass: the ejection
                // runs its course.
                if self.eject_cause.load(Ordering::Relaxed) != CAUSE_CONNECT {
                    return None;
                }
                self.ejected_until_ms.store(0, Ordering::Relaxed);
            }
            let why = format!("checks pass ({reason})");
            self.set_verdict(Verdict::Up, why, &mut d)
        } else if any_fail {
            let failing = d.checks.iter().filter(|c| c.passing == Some(false)).count();
            let why = format!("{failing} check(s) failing: {reason}");
            self.set_verdict(Verdict::Down, why, &mut d)
        } else {
            None
        }
    }

    /// Records a failed connection from a real request. Returns a transition when it ejects.
    pub fn record_connect_failure(&self, p: &Passive, has_checks: bool) -> Option<Transition> {
        if p.connect_failures == 0 {
            return None;
        }
        let n = self.connect_failures.fetch_add(1, Ordering::Relaxed) + 1;
        (n >= p.connect_failures).then(|| {
            self.connect_failures.store(0, Ordering::Relaxed);
            self.eject(
                p,
                has_checks,
                CAUSE_CONNECT,
                format!("{n} consecutive connection failures"),
            )
        })?
    }

    /// Records a response status from a real request. Returns a transition when it ejects.
    pub fn record_response(
        &self,
        status: u16,
        p: &Passive,
        has_checks: bool,
    ) -> Option<Transition> {
        self.connect_failures.store(0, Ordering::Relaxed);
        if status < 500 || p.http_5xx == 0 {
            self.http_5xx.store(0, Ordering::Relaxed);
            return None;
        }
        let n = self.http_5xx.fetch_add(1, Ordering::Relaxed) + 1;
        (n >= p.http_5xx).then(|| {
            self.http_5xx.store(0, Ordering::Relaxed);
            self.eject(
                p,
                has_checks,
                CAUSE_5XX,
                format!("{n} consecutive 5xx responses"),
            )
        })?
    }

    /// Ejects the backend for a back-off that doubles on each ejection close to the last one.
    fn eject(&self, p: &Passive, has_checks: bool, cause: u8, why: String) -> Option<Transition> {
        let now = now_ms();
        self.eject_cause.store(cause, Ordering::Relaxed);
        let last = self.last_ejected_ms.swap(now, Ordering::Relaxed);
        let quiet = Duration::from_millis(now.saturating_sub(last));
        // A backend that behaved for twice the longest ejection starts over.
        let repeat = if last == 0 || quiet > p.max_eject_for * 2 {
            self.ejections.store(1, Ordering::Relaxed);
            0
        } else {
            self.ejections.fetch_add(1, Ordering::Relaxed)
        };
        let length = p
            .eject_for
            .saturating_mul(1u32 << repeat.min(16))
            .min(p.max_eject_for);
        self.ejected_until_ms.store(
            now + u64::try_from(length.as_millis()).unwrap_or(u64::MAX / 2),
            Ordering::Relaxed,
        );
        let reason = format!(
            "ejected for {}: {why}",
            portico_config::units::format_duration(length)
        );
        let Ok(mut d) = self.detail.lock() else {
            return None;
        };
        if has_checks {
            // Active checks decide when it comes back.
            for t in d.checks.iter_mut() {
                t.passing = Some(false);
                t.ok_streak = 0;
            }
            self.set_verdict(Verdict::Down, reason.clone(), &mut d);
        }
        d.reason = Some(reason.clone());
        Some(Transition {
            to: Verdict::Down,
            reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use portico_config::{CheckKind, StatusMatch};

    fn check(rise: u32, fall: u32, grace: Duration) -> Check {
        Check {
            kind: CheckKind::Tcp,
            path: "/".into(),
            method: "GET".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            grace_period: grace,
            https: false,
            tls_server_name: None,
            tls_skip_verify: false,
            tls_ca: None,
            headers: vec![],
            port: None,
            rise,
            fall,
            expect_status: vec![StatusMatch::Class(2)],
        }
    }

    fn passive() -> Passive {
        Passive {
            connect_failures: 2,
            http_5xx: 3,
            eject_for: Duration::from_millis(200),
            max_eject_for: Duration::from_secs(10),
        }
    }

    #[test]
    fn pending_until_rise_then_down_after_fall() {
        let c = check(2, 3, Duration::ZERO);
        let h = Health::new(1, false);
        assert_eq!(h.verdict(), Verdict::Pending);
        assert!(!h.usable());
        assert_eq!(
            h.record_check(0, &c, Ok("HTTP 200".into()), Duration::ZERO),
            None
        );
        let t = h
            .record_check(0, &c, Ok("HTTP 200".into()), Duration::ZERO)
            .unwrap();
        assert_eq!(t.to, Verdict::Up);
        assert!(h.usable());
        for _ in 0..2 {
            assert_eq!(
                h.record_check(0, &c, Err("HTTP 500".into()), Duration::ZERO),
                None
            );
        }
        let t = h
            .record_check(0, &c, Err("HTTP 500".into()), Duration::ZERO)
            .unwrap();
        assert_eq!(t.to, Verdict::Down);
        assert!(t.reason.contains("HTTP 500"));
        assert!(!h.usable());
        // Each transition is reported once.
        assert_eq!(
            h.record_check(0, &c, Err("HTTP 500".into()), Duration::ZERO),
            None
        );
    }

    #[test]
    fn start_healthy_and_grace() {
        let c = check(1, 1, Duration::from_secs(60));
        let h = Health::new(1, true);
        assert!(h.usable());
        // Within the grace period failures do not count.
        assert_eq!(
            h.record_check(0, &c, Err("refused".into()), Duration::ZERO),
            None
        );
        assert!(h.usable());
        let c = check(1, 1, Duration::ZERO);
        assert!(h
            .record_check(0, &c, Err("refused".into()), Duration::ZERO)
            .is_some());
        assert!(!h.usable());
    }

    #[test]
    fn every_check_must_pass() {
        let c = check(1, 1, Duration::ZERO);
        let h = Health::new(2, false);
        assert_eq!(h.record_check(0, &c, Ok("ok".into()), Duration::ZERO), None);
        assert_eq!(
            h.record_check(1, &c, Ok("ok".into()), Duration::ZERO)
                .unwrap()
                .to,
            Verdict::Up
        );
        assert_eq!(
            h.record_check(1, &c, Err("no".into()), Duration::ZERO)
                .unwrap()
                .to,
            Verdict::Down
        );
    }

    #[test]
    fn passive_ejection_grows_and_ends() {
        let p = passive();
        let h = Health::new(0, false);
        assert!(h.record_connect_failure(&p, false).is_none());
        let t = h.record_connect_failure(&p, false).unwrap();
        assert!(t.reason.contains("ejected for 200ms"), "{}", t.reason);
        assert!(!h.usable());
        assert_eq!(h.state_name(), "ejected");
        std::thread::sleep(Duration::from_millis(250));
        assert!(
            h.usable(),
            "the ejection ends by itself without active checks"
        );
        h.record_connect_failure(&p, false);
        let t = h.record_connect_failure(&p, false).unwrap();
        assert!(t.reason.contains("ejected for 400ms"), "{}", t.reason);
        // A success resets the count.
        std::thread::sleep(Duration::from_millis(450));
        h.record_connect_failure(&p, false);
        h.record_response(200, &p, false);
        assert!(h.record_connect_failure(&p, false).is_none());
    }

    #[test]
    fn passive_5xx_and_active_recovery() {
        let p = passive();
        let c = check(1, 1, Duration::ZERO);
        let h = Health::new(1, true);
        h.record_response(500, &p, true);
        h.record_response(502, &p, true);
        let t = h.record_response(503, &p, true).unwrap();
        assert!(t.reason.contains("3 consecutive 5xx"));
        assert_eq!(h.verdict(), Verdict::Down);
        // A passing check does not cut the ejection short...
        assert_eq!(h.record_check(0, &c, Ok("ok".into()), Duration::ZERO), None);
        std::thread::sleep(Duration::from_millis(250));
        // ...but brings the backend back once it is over.
        assert_eq!(
            h.record_check(0, &c, Ok("ok".into()), Duration::ZERO)
                .unwrap()
                .to,
            Verdict::Up
        );
        assert!(h.usable());
    }

    #[test]
    fn passing_checks_end_an_ejection_for_connect_failures() {
        let p = Passive {
            eject_for: Duration::from_secs(10),
            ..passive()
        };
        let c = check(2, 1, Duration::ZERO);
        let h = Health::new(1, true);
        h.record_connect_failure(&p, true);
        h.record_connect_failure(&p, true);
        h.record_connect_failure(&p, true);
        assert_eq!(h.state_name(), "down");
        assert!(!h.usable());
        // A restarted replica passes `rise` checks: back at once, not after 10 s.
        assert_eq!(h.record_check(0, &c, Ok("ok".into()), Duration::ZERO), None);
        let t = h.record_check(0, &c, Ok("ok".into()), Duration::ZERO);
        assert_eq!(t.unwrap().to, Verdict::Up);
        assert!(h.usable());
        assert_eq!(h.ejected_for(), None);
    }
}

//! Idle upstream connections, one pool per worker thread.
//!
//! Each worker thread runs its own single-threaded runtime (unless `work_stealing` is on), so
//! a thread-local list needs no lock, and a connection is only ever used by the runtime that
//! registered its socket. Taking a connection checks it is still usable (see
//! [`super::upstream::alive`]: no system call unless the runtime saw the socket become
//! readable) and not idle for longer than the upstream's `idle_timeout`; returning one is a
//! push. No task watches an idle connection: a sweep every [`SWEEP_EVERY`] closes the
//! expired and the dead, and the most recently used connection is taken first (LIFO), so the
//! rest age out when traffic drops.
//!
//! pingora's pool is not used: it tests each connection with a read when it is returned and
//! again when it is taken, keeps it behind an `Arc<Mutex>` and spawns a task per returned
//! connection (measured in `loadtest/compare`, `benches/README.md` of earlier revisions).

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::upstream::{alive, PoolKey, UpConn};

/// Most idle connections kept per backend and thread (like nginx's `keepalive` per worker).
pub const MAX_IDLE_PER_BACKEND: usize = 256;
/// How often each thread closes expired and dead idle connections.
pub const SWEEP_EVERY: Duration = Duration::from_secs(2);

struct Idle {
    conn: UpConn,
    since: Instant,
    timeout: Duration,
}

#[derive(Default)]
struct Pool {
    /// FxHash, not SipHash: the keys are backend addresses from the config and DNS, never a
    /// client's, so flooding is not a concern, and the lookup runs twice per request.
    idle: HashMap<PoolKey, Vec<Idle>, rustc_hash::FxBuildHasher>,
    sweeper: bool,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// A usable idle connection for `key`, if this thread has one. `now` is the caller's
/// clock reading (the attempt's start): idle times are seconds, and a clock read costs
/// about 60 instructions.
pub fn take(key: &PoolKey, now: Instant) -> Option<UpConn> {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let list = p.idle.get_mut(key)?;
        while let Some(mut idle) = list.pop() {
            if now.saturating_duration_since(idle.since) < idle.timeout && alive(&mut idle.conn) {
                return Some(idle.conn);
            }
        }
        None
    })
}

/// Keeps `conn` for reuse for up to `timeout` from `since` (when its answer arrived: a
/// reading no later than the real idle start, so a connection never outlives `timeout`).
pub fn give(conn: UpConn, timeout: Duration, since: Instant) {
    if timeout.is_zero() || conn.private {
        return;
    }
    let start_sweeper = POOL.with(|p| {
        let mut p = p.borrow_mut();
        // The key is cloned only the first time a backend gets an idle connection.
        let list = match p.idle.get_mut(&conn.key) {
            Some(list) => list,
            None => p.idle.entry(conn.key.clone()).or_default(),
        };
        if list.len() >= MAX_IDLE_PER_BACKEND {
            // Over the cap: the oldest goes.
            list.remove(0);
        }
        list.push(Idle {
            conn,
            since,
            timeout,
        });
        !std::mem::replace(&mut p.sweeper, true)
    });
    if start_sweeper {
        // One sweeper per thread, on this thread's runtime.
        tokio::spawn(sweep());
    }
}

async fn sweep() {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let empty = POOL.with(|p| {
            let mut p = p.borrow_mut();
            for list in p.idle.values_mut() {
                list.retain_mut(|i| i.since.elapsed() < i.timeout && alive(&mut i.conn));
            }
            p.idle.retain(|_, l| !l.is_empty());
            if p.idle.is_empty() {
                p.sweeper = false;
                true
            } else {
                false
            }
        });
        if empty {
            return;
        }
    }
}

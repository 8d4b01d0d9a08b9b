//! Upgraded connections (WebSockets): the per-route admission cap, idle timeouts, and the
//! open/bytes metrics.
//!
//! An upgrade request takes a slot of its route's `max_websockets` before it is proxied and
//! keeps it until the request ends: at once when the upstream refuses the upgrade, when the
//! socket closes otherwise. Slots are counted per route name in [`Shared`], so a reload does
//! not forget the sockets already open.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use prometheus::{IntCounter, IntGauge};

use super::ctx::{LocalFailure, RequestCtx};
use crate::state::Shared;

/// The state of an upgrade request.
pub struct WsState {
    slot: Arc<AtomicUsize>,
    open: Option<IntGauge>,
    /// Client-to-upstream bytes counter.
    bytes_in: IntCounter,
    /// Upstream-to-client bytes counter.
    bytes_out: IntCounter,
}

impl WsState {
    /// Counts tunnel bytes from the client.
    pub fn count_in(&self, len: usize) {
        self.bytes_in.inc_by(len as u64);
    }

    /// Counts tunnel bytes to the client.
    pub fn count_out(&self, len: usize) {
        self.bytes_out.inc_by(len as u64);
    }
}

impl Drop for WsState {
    fn drop(&mut self) {
        self.slot.fetch_sub(1, Ordering::AcqRel);
        if let Some(g) = &self.open {
            g.dec();
        }
    }
}

/// Admits an upgrade request under its route's cap. Returns the failure to answer when the
/// route is full.
pub fn admit(shared: &Shared, upgrade: bool, ctx: &mut RequestCtx) -> Option<LocalFailure> {
    if !upgrade || ctx.is_subrequest {
        return None;
    }
    let route_idx = ctx.route?;
    let route = &ctx.snap.config.routes.routes()[route_idx];
    let slot = shared.ws_counts.counter(&route.name);
    let now = slot.fetch_add(1, Ordering::AcqRel);
    let metrics = &ctx.snap.route_metrics[route_idx];
    let state = WsState {
        slot,
        open: None,
        bytes_in: metrics.ws_bytes_in.clone(),
        bytes_out: metrics.ws_bytes_out.clone(),
    };
    if let Some(max) = route.max_websockets {
        if now >= max {
            drop(state);
            return Some(LocalFailure {
                status: 503,
                reason: "websocket_limit",
                message: format!(
                    "route \"{}\" has {max} WebSocket connections open, its max_websockets",
                    route.name
                ),
                retry_after: Some(1),
            });
        }
    }
    ctx.ws = Some(state);
    None
}

/// The upstream answered an upgrade request: counts the socket as open on a 101.
pub fn on_response(ctx: &mut RequestCtx, status: u16) {
    let Some(route_idx) = ctx.route else { return };
    let Some(ws) = ctx.ws.as_mut() else { return };
    if status == 101 && ws.open.is_none() {
        let m = &ctx.snap.route_metrics[route_idx];
        m.ws_total.inc();
        m.ws_open.inc();
        ws.open = Some(m.ws_open.clone());
    }
}

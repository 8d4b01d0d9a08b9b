//! Cookie affinity of `sticky = { mode = "cookie" }` routes: reading the client's pin before
//! a backend is chosen, and pinning the client to the backend that answered.

use pingora_http::RequestHeader;
use portico_config::Sticky;

use super::ctx::RequestCtx;
use super::edits::Edits;
use super::{cookie, Portico};

impl Portico {
    /// Reads and verifies the affinity cookie; a bad one counts as none.
    pub(crate) fn read_pin(&self, req: &RequestHeader, ctx: &mut RequestCtx) {
        let Some(route_idx) = ctx.route else { return };
        let snap = &ctx.snap;
        let route = &snap.config.routes.routes()[route_idx];
        let (Some(Sticky::Cookie(c)), Some(Some(signer))) =
            (&route.sticky, snap.sticky_signers.get(route_idx))
        else {
            return;
        };
        let Some(value) = cookie(req, &c.name) else {
            return;
        };
        let upstream = snap.upstreams[route.upstream].name();
        ctx.sticky_pin = signer.verify(upstream, value);
        if ctx.sticky_pin.is_none() {
            self.shared
                .metrics
                .http
                .sticky
                .with_label_values(&[&route.name, "invalid"])
                .inc();
            tracing::debug!(route = %route.name, "affinity cookie did not verify; ignored");
        }
    }

    /// Sets the affinity cookie when the backend that answered is not the one pinned.
    pub(crate) fn pin_edits(&self, ctx: &RequestCtx, e: &mut Edits) -> pingora_error::Result<()> {
        let (Some(route_idx), Some(lease)) = (ctx.route, &ctx.lease) else {
            return Ok(());
        };
        let snap = &ctx.snap;
        let route = &snap.config.routes.routes()[route_idx];
        let (Some(Sticky::Cookie(c)), Some(Some(signer))) =
            (&route.sticky, snap.sticky_signers.get(route_idx))
        else {
            return Ok(());
        };
        // Only the route's own upstream pins (a replay target elsewhere does not).
        if ctx.upstream != route.upstream {
            return Ok(());
        }
        let key = &*lease.backend.key;
        let outcome = match ctx.sticky_pin.as_deref() {
            Some(p) if p == key => "hit",
            Some(_) => "moved",
            None => "new",
        };
        self.shared
            .metrics
            .http
            .sticky
            .with_label_values(&[&route.name, outcome])
            .inc();
        if outcome == "hit" {
            return Ok(());
        }
        let tls = ctx.conn.tls.is_some();
        let value = signer.value(snap.upstreams[route.upstream].name(), key);
        e.add(
            http::header::SET_COOKIE,
            super::edits::value(&crate::sticky::set_cookie(c, &value, tls))?,
        );
        Ok(())
    }
}

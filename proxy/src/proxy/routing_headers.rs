//! Fly's client routing headers: `fly-prefer-region`, `fly-force-region`,
//! `fly-prefer-instance-id`, `fly-force-instance-id` (honoured unless
//! `[server] routing_headers = false`).
//!
//! Forced targets never fall back: a forced instance or region that does not exist is a 503
//! that names it. Preferences fall back to normal selection.

use pingora_http::RequestHeader;
use smallvec::SmallVec;

use crate::upstream::Want;

/// The four routing headers (removed before the upstream when `routing_headers = false`).
pub const NAMES: [&str; 4] = [
    "fly-prefer-region",
    "fly-force-region",
    "fly-prefer-instance-id",
    "fly-force-instance-id",
];

fn header<'a>(req: &'a RequestHeader, name: &str) -> Option<&'a str> {
    super::header_value(&req.headers, name)
}

fn regions(list: &str) -> SmallVec<[&str; 4]> {
    list.split(',')
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .take(16)
        .collect()
}

/// The routing wish a request expresses through its headers (`Want::default()` if none).
pub fn want_from_headers(req: &RequestHeader) -> Want<'_> {
    let mut want = Want::default();
    // Most requests carry no `fly-` header: one pass over the names settles it.
    if !req.headers.keys().any(|k| k.as_str().starts_with("fly-")) {
        return want;
    }
    if let Some(id) = header(req, "fly-force-instance-id") {
        want.instance = Some(id);
        want.instance_forced = true;
    } else if let Some(id) = header(req, "fly-prefer-instance-id") {
        want.instance = Some(id);
    }
    if let Some(list) = header(req, "fly-force-region") {
        want.regions = regions(list);
        want.regions_forced = !want.regions.is_empty();
    } else if let Some(list) = header(req, "fly-prefer-region") {
        want.regions = regions(list);
    }
    want
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(headers: &[(&str, &str)]) -> RequestHeader {
        let mut r = RequestHeader::build("GET", b"/", None).unwrap();
        for (k, v) in headers {
            r.insert_header(k.to_string(), *v).unwrap();
        }
        r
    }

    #[test]
    fn parses_each_header() {
        let r = req(&[]);
        assert!(want_from_headers(&r).is_any());
        let r = req(&[("fly-prefer-region", "iad, ord")]);
        let w = want_from_headers(&r);
        assert_eq!(w.regions.as_slice(), &["iad", "ord"]);
        assert!(!w.regions_forced);
        let r = req(&[("fly-force-region", "lhr")]);
        let w = want_from_headers(&r);
        assert_eq!(w.regions.as_slice(), &["lhr"]);
        assert!(w.regions_forced);
        let r = req(&[("fly-prefer-instance-id", "abc")]);
        let w = want_from_headers(&r);
        assert_eq!(w.instance, Some("abc"));
        assert!(!w.instance_forced);
        let r = req(&[
            ("fly-force-instance-id", "abc"),
            ("fly-prefer-instance-id", "x"),
        ]);
        let w = want_from_headers(&r);
        assert_eq!(w.instance, Some("abc"));
        assert!(w.instance_forced);
        let r = req(&[("fly-force-region", " , ")]);
        assert!(!want_from_headers(&r).regions_forced);
    }
}

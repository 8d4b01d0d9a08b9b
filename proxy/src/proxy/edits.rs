//! Header edits as data: which fields to drop and which to add, decided once per message by
//! the request path (forwarding headers, route rules, replay headers, the request id, the
//! affinity cookie) and then applied by each engine its own way: pingora's path edits its
//! header map, Portico's own engine filters the fields while it writes the head, without
//! building a second map.
//!
//! `set` is drop-then-add, `remove` is drop, `add` keeps what is there. A later `set` or
//! `remove` of a name also cancels earlier additions of it, so the order of decisions
//! (forwarding headers, then the route's rules, then replay headers) is the order of
//! precedence.

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use pingora_error::{Error, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use smallvec::SmallVec;

/// Edits to one message head.
#[derive(Debug, Default, Clone)]
pub struct Edits {
    /// Fields removed from what came in (every value).
    pub drop: SmallVec<[HeaderName; 8]>,
    /// Fields added, in order.
    pub add: SmallVec<[(HeaderName, HeaderValue); 12]>,
    /// A new request target (path and query), for requests.
    pub target: Option<Bytes>,
}

impl Edits {
    /// Replaces every value of `name` with `value`.
    pub fn set(&mut self, name: HeaderName, value: HeaderValue) {
        self.add.retain(|(n, _)| *n != name);
        if !self.drop.contains(&name) {
            self.drop.push(name.clone());
        }
        self.add.push((name, value));
    }

    /// [`Self::set`] for a name these edits do not hold yet (the forwarding headers, set once
    /// each on empty edits): no search of what is there.
    pub fn set_new(&mut self, name: HeaderName, value: HeaderValue) {
        debug_assert!(!self.add.iter().any(|(n, _)| *n == name));
        self.drop.push(name.clone());
        self.add.push((name, value));
    }

    /// Adds a value of `name`, keeping the others.
    pub fn add(&mut self, name: HeaderName, value: HeaderValue) {
        self.add.push((name, value));
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: HeaderName) {
        self.add.retain(|(n, _)| *n != name);
        if !self.drop.contains(&name) {
            self.drop.push(name);
        }
    }

    /// Whether an incoming field called `name` (any case) is dropped.
    pub fn drops(&self, name: &[u8]) -> bool {
        self.drop.iter().any(|d| {
            d.as_str().len() == name.len() && d.as_str().as_bytes().eq_ignore_ascii_case(name)
        })
    }

    /// Applies the edits to a request head (pingora's path).
    pub fn apply_request(self, req: &mut RequestHeader) -> Result<()> {
        for name in &self.drop {
            req.remove_header(name);
        }
        for (name, value) in self.add {
            req.append_header(name, value)?;
        }
        if let Some(target) = self.target {
            let uri = http::Uri::from_maybe_shared(target)
                .map_err(|e| Error::because(ErrorType::InternalError, "rewriting the target", e))?;
            req.set_uri(uri);
        }
        Ok(())
    }

    /// Applies the edits to a response head.
    pub fn apply_response(self, resp: &mut ResponseHeader) -> Result<()> {
        for name in &self.drop {
            resp.remove_header(name);
        }
        for (name, value) in self.add {
            resp.append_header(name, value)?;
        }
        Ok(())
    }
}

/// A field value from text the config or Portico made (validated already); an error for
/// anything else, rather than a panic.
pub fn value(s: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(s)
        .map_err(|e| Error::because(ErrorType::InternalError, "building a header value", e))
}

/// A field name from text the config validated.
pub fn name(s: &str) -> Result<HeaderName> {
    HeaderName::from_bytes(s.as_bytes())
        .map_err(|e| Error::because(ErrorType::InternalError, "building a header name", e))
}

// The rules live in the snapshot (built once per generation); applying them is the request
// path's business, so the method lives beside `Edits`.
impl crate::state::CompiledRules {
    /// Adds these rules to `e`.
    pub fn apply(&self, e: &mut Edits) {
        for n in &self.remove {
            e.remove(n.clone());
        }
        for (n, v) in &self.set {
            e.set(n.clone(), v.clone());
        }
        for (n, v) in &self.add {
            e.add(n.clone(), v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_decisions_win() {
        let mut e = Edits::default();
        let xfp = HeaderName::from_static("x-forwarded-proto");
        e.set(xfp.clone(), HeaderValue::from_static("http"));
        e.set(xfp.clone(), HeaderValue::from_static("https"));
        assert_eq!(e.add.len(), 1);
        assert_eq!(e.add[0].1, "https");
        e.add(
            HeaderName::from_static("via"),
            HeaderValue::from_static("1.1 a"),
        );
        e.remove(HeaderName::from_static("via"));
        assert!(e.add.iter().all(|(n, _)| n != "via"));
        assert!(e.drops(b"X-Forwarded-Proto") && e.drops(b"VIA") && !e.drops(b"host"));
        let mut req = RequestHeader::build("GET", b"/a", None).unwrap();
        req.append_header("x-forwarded-proto", "ftp").unwrap();
        req.append_header("via", "1.0 old").unwrap();
        e.target = Some(Bytes::from_static(b"/b?c"));
        e.apply_request(&mut req).unwrap();
        assert_eq!(req.headers["x-forwarded-proto"], "https");
        assert!(req.headers.get("via").is_none());
        assert_eq!(req.uri, "/b?c");
    }
}

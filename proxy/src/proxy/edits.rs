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
    /// Fields removed from what came in (every value). Private: [`Self::drops`] relies on
    /// `drop_lens` covering every name here.
    drop: SmallVec<[HeaderName; 8]>,
    /// One bit per length of a dropped name (lengths of 63 and more share the last bit):
    /// most incoming fields are not dropped, and their length alone says so.
    drop_lens: u64,
    /// Fields added, in order. Private, as `drop`: `name_lens` covers every name here.
    add: SmallVec<[(HeaderName, HeaderValue); 12]>,
    /// The same bits for every name dropped or added: a `set` or `remove` of a name no
    /// other edit has touched (the usual case) skips the searches that cancel earlier ones.
    name_lens: u64,
    /// Fields rendered ahead as `name: value\r\n` lines, sent after the added ones. Their
    /// names are neither dropped nor added by these edits (the request path sets this only
    /// when nothing else touches them and the message does not carry them).
    pub block: Option<Bytes>,
    /// A new request target (path and query), for requests.
    pub target: Option<Bytes>,
}

impl Edits {
    /// Replaces every value of `name` with `value`.
    pub fn set(&mut self, name: HeaderName, value: HeaderValue) {
        self.remove(name.clone());
        self.push_add(name, value);
    }

    /// Drops every incoming value of `name`, keeping what these edits add.
    pub fn drop_name(&mut self, name: HeaderName) {
        let bit = len_bit(name.as_str().len());
        self.drop_lens |= bit;
        self.name_lens |= bit;
        self.drop.push(name);
    }

    /// The fields added, in order.
    pub fn added(&self) -> &[(HeaderName, HeaderValue)] {
        &self.add
    }

    /// Adds these fields after the others, keeping what is there (as [`Self::add`]).
    pub fn extend_add(&mut self, fields: impl IntoIterator<Item = (HeaderName, HeaderValue)>) {
        for (n, v) in fields {
            self.push_add(n, v);
        }
    }

    fn push_add(&mut self, name: HeaderName, value: HeaderValue) {
        self.name_lens |= len_bit(name.as_str().len());
        self.add.push((name, value));
    }

    /// [`Self::set`] for a name these edits do not hold yet (the forwarding headers, set once
    /// each on empty edits): no search of what is there.
    pub fn set_new(&mut self, name: HeaderName, value: HeaderValue) {
        debug_assert!(!self.add.iter().any(|(n, _)| *n == name));
        self.drop_name(name.clone());
        self.push_add(name, value);
    }

    /// Adds a value of `name`, keeping the others.
    pub fn add(&mut self, name: HeaderName, value: HeaderValue) {
        self.push_add(name, value);
    }

    /// Removes every value of `name`.
    pub fn remove(&mut self, name: HeaderName) {
        if self.name_lens & len_bit(name.as_str().len()) != 0 {
            self.add.retain(|(n, _)| *n != name);
            if self.drop.contains(&name) {
                return;
            }
        }
        self.drop_name(name);
    }

    /// Whether an incoming field called `name` (any case) is dropped.
    pub fn drops(&self, name: &[u8]) -> bool {
        if self.drop_lens & len_bit(name.len()) == 0 {
            return false;
        }
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
        if let Some(block) = &self.block {
            for (name, value) in block_fields(block) {
                req.append_header(name, value)?;
            }
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

/// The fields of an [`Edits::block`] (lines Portico rendered; anything unreadable is
/// skipped rather than sent).
fn block_fields(block: &Bytes) -> impl Iterator<Item = (HeaderName, HeaderValue)> + '_ {
    block.split(|&b| b == b'\n').filter_map(|line| {
        let line = line.strip_suffix(b"\r")?;
        let colon = line.iter().position(|&b| b == b':')?;
        let name = HeaderName::from_bytes(&line[..colon]).ok()?;
        let value = HeaderValue::from_bytes(line[colon + 1..].trim_ascii()).ok()?;
        Some((name, value))
    })
}

/// The bit of [`Edits::drop_lens`] for a name of `len` bytes.
fn len_bit(len: usize) -> u64 {
    1 << len.min(63)
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
    /// Whether any rule names one of `names`.
    pub fn touches_any(&self, names: &[HeaderName]) -> bool {
        self.remove
            .iter()
            .chain(self.set.iter().map(|(n, _)| n))
            .chain(self.add.iter().map(|(n, _)| n))
            .any(|n| names.contains(n))
    }

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
    fn a_block_reaches_a_header_map_field_by_field() {
        let mut e = Edits {
            block: Some(Bytes::from_static(
                b"x-a: 1\r\nvia: 1.1 p (t)\r\nbroken\r\n",
            )),
            ..Edits::default()
        };
        e.add(
            HeaderName::from_static("x-b"),
            HeaderValue::from_static("2"),
        );
        let mut req = RequestHeader::build("GET", b"/", None).unwrap();
        e.apply_request(&mut req).unwrap();
        assert_eq!(req.headers["x-a"], "1");
        assert_eq!(req.headers["via"], "1.1 p (t)");
        assert_eq!(req.headers["x-b"], "2");
        assert_eq!(req.headers.len(), 3);
    }

    #[test]
    fn rules_touching_names() {
        let rules = crate::state::CompiledRules {
            remove: vec![HeaderName::from_static("via")],
            set: vec![],
            add: vec![(
                HeaderName::from_static("x-a"),
                HeaderValue::from_static("1"),
            )],
        };
        let via = [http::header::VIA];
        assert!(rules.touches_any(&via));
        assert!(rules.touches_any(&[HeaderName::from_static("x-a")]));
        assert!(!rules.touches_any(&[HeaderName::from_static("x-b")]));
        assert!(!crate::state::CompiledRules::default().touches_any(&via));
    }

    #[test]
    fn drops_names_of_every_length() {
        let mut e = Edits::default();
        let long = "x".repeat(70);
        e.drop_name(HeaderName::from_bytes(long.as_bytes()).unwrap());
        e.remove(HeaderName::from_static("te"));
        assert!(e.drops(long.to_uppercase().as_bytes()));
        assert!(e.drops(b"TE"));
        // Same length bit, different names.
        assert!(!e.drops("y".repeat(70).as_bytes()));
        assert!(!e.drops("x".repeat(90).as_bytes()));
        assert!(!e.drops(b"ab"));
        assert!(!e.drops(b""));
    }

    #[test]
    fn later_decisions_win() {
        let mut e = Edits::default();
        let xfp = HeaderName::from_static("x-forwarded-proto");
        e.set(xfp.clone(), HeaderValue::from_static("http"));
        e.set(xfp.clone(), HeaderValue::from_static("https"));
        assert_eq!(e.added().len(), 1);
        assert_eq!(e.added()[0].1, "https");
        e.add(
            HeaderName::from_static("via"),
            HeaderValue::from_static("1.1 a"),
        );
        e.remove(HeaderName::from_static("via"));
        assert!(e.added().iter().all(|(n, _)| n != "via"));
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

    proptest::proptest! {
        /// Any sequence of edits gives the fields and drops of the plain definition (every
        /// `set` and `remove` searching what is there), whatever names share a length.
        #[test]
        fn edits_match_their_definition(
            ops in proptest::collection::vec((0usize..4, 0usize..6, 0u8..3), 0..40),
        ) {
            const NAMES: [&str; 6] = ["x-a", "x-b", "via", "x-forwarded-for", "x-request-id", "te"];
            let mut e = Edits::default();
            let mut drop: Vec<&str> = Vec::new();
            let mut add: Vec<(&str, u8)> = Vec::new();
            for (op, n, v) in ops {
                let name = HeaderName::from_static(NAMES[n]);
                let value = HeaderValue::from(v as u16);
                match op {
                    0 => {
                        e.set(name, value);
                        add.retain(|(a, _)| *a != NAMES[n]);
                        if !drop.contains(&NAMES[n]) {
                            drop.push(NAMES[n]);
                        }
                        add.push((NAMES[n], v));
                    }
                    1 => {
                        e.add(name, value);
                        add.push((NAMES[n], v));
                    }
                    2 => {
                        e.remove(name);
                        add.retain(|(a, _)| *a != NAMES[n]);
                        if !drop.contains(&NAMES[n]) {
                            drop.push(NAMES[n]);
                        }
                    }
                    _ => {
                        e.extend_add([(name, value)]);
                        add.push((NAMES[n], v));
                    }
                }
            }
            let got: Vec<(&str, u8)> = e
                .added()
                .iter()
                .map(|(n, v)| (n.as_str(), v.to_str().unwrap().parse().unwrap()))
                .map(|(n, v)| (NAMES.iter().copied().find(|x| *x == n).unwrap(), v))
                .collect();
            proptest::prop_assert_eq!(got, add);
            for name in NAMES {
                proptest::prop_assert_eq!(e.drops(name.as_bytes()), drop.contains(&name), "{}", name);
            }
        }
    }
}

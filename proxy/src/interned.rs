//! Header names and values from the configuration, kept for the life of the process so that
//! a request's copy of them is free.
//!
//! A custom `HeaderName` (`x-request-id`) or a `HeaderValue` built at run time holds a
//! shared `Bytes`: every clone and drop is an atomic operation on one reference count,
//! and the request path clones the configured request id name two to four times per
//! request on every worker thread at once, so that count's cache line moves between cores
//! (perf: about a fifth of Portico's own samples land just after an atomic instruction).
//! Built from a `&'static str` instead, the same name or value clones as a plain copy.
//!
//! The text is leaked once per distinct string, deduplicated across reloads, and at most
//! [`LIMIT`] bytes in all: beyond that a value is returned as it was (shared, as before),
//! so a configuration reloaded with ever new values cannot grow the process without bound.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use http::{HeaderName, HeaderValue};

/// Most bytes of text kept for the process's life.
pub const LIMIT: usize = 64 * 1024;

struct Table {
    strings: HashSet<&'static str>,
    bytes: usize,
}

/// `s` as a `&'static str`: the kept copy, or a new one while the table has room.
fn keep(s: &str) -> Option<&'static str> {
    static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();
    let table = TABLE.get_or_init(|| {
        Mutex::new(Table {
            strings: HashSet::new(),
            bytes: 0,
        })
    });
    let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(kept) = t.strings.get(s) {
        return Some(kept);
    }
    if t.bytes + s.len() > LIMIT {
        return None;
    }
    let kept: &'static str = Box::leak(s.to_owned().into_boxed_str());
    t.bytes += s.len();
    t.strings.insert(kept);
    Some(kept)
}

/// `name`, cloned without an atomic operation from now on.
pub fn name(name: &HeaderName) -> HeaderName {
    match keep(name.as_str()) {
        // `as_str` of any `HeaderName` is lower-case token characters, exactly what
        // `from_static` accepts (it panics on anything else): it cannot panic here.
        Some(s) => HeaderName::from_static(s),
        None => name.clone(),
    }
}

/// `value`, cloned without an atomic operation from now on; a value with bytes outside
/// visible ASCII (which `from_static` refuses) is returned as it was.
pub fn value(value: &HeaderValue) -> HeaderValue {
    let Ok(text) = value.to_str() else {
        return value.clone();
    };
    // `to_str` succeeds exactly for the bytes `from_static` accepts (visible ASCII, space
    // and tab); sensitivity is not carried by `from_static`, so keep it.
    match keep(text) {
        Some(s) => {
            let mut v = HeaderValue::from_static(s);
            v.set_sensitive(value.is_sensitive());
            v
        }
        None => value.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_names_and_values_equal_their_originals() {
        for n in ["x-request-id", "host", "fly-request-id", "x-custom_name!"] {
            let original = HeaderName::from_bytes(n.as_bytes()).unwrap();
            assert_eq!(name(&original), original);
        }
        for v in ["1.1 portico (abc)", "", "a\tb c", "ams"] {
            let original = HeaderValue::from_str(v).unwrap();
            assert_eq!(value(&original), original);
        }
        // Not visible ASCII: returned as it was.
        let raw = HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap();
        assert_eq!(value(&raw), raw);
        let mut secret = HeaderValue::from_static("token");
        secret.set_sensitive(true);
        assert!(value(&secret).is_sensitive());
    }

    #[test]
    fn the_same_text_is_kept_once_and_the_table_is_bounded() {
        let a = keep("portico-interned-test-a").unwrap();
        let b = keep("portico-interned-test-a").unwrap();
        assert!(std::ptr::eq(a, b));
        let big = "x".repeat(LIMIT + 1);
        assert!(keep(&big).is_none());
        let original = HeaderValue::from_str(&big).unwrap();
        assert_eq!(value(&original), original);
    }
}

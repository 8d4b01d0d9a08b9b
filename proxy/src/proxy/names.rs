//! The field names most requests carry, and a record of which of them a request holds.
//!
//! The HTTP/1.1 parser notes each name against this short list as it reads a head. When
//! every name was on it, the request path knows without a header-map lookup (hashing the
//! name: 100 to 230 instructions each by callgrind, about six per request) that the request
//! carries no `X-Request-Id`, `X-Forwarded-For`, `Via`, `Fly-*` or other uncommon field.
//! A request from another parser (pingora's HTTP/2) has [`NameSet::UNKNOWN`]: every lookup
//! is made.

use http::header::*;
use http::HeaderName;

/// Whether field name `raw` (a token: the parser checked it) is `name`, given in lower-case
/// letters and '-' only. For token bytes, `b | 0x20` equals such a byte exactly when `b`
/// does ignoring ASCII case (no other token byte maps onto a letter or '-'): a third of the
/// cost of `eq_ignore_ascii_case`, in the loops that look at every field of every head.
///
/// Compared a word at a time (8 or 4 bytes, the last word overlapping the one before):
/// these loops run for every field of every head, a few names each.
#[inline(always)]
pub(crate) fn is_name(raw: &[u8], name: &[u8]) -> bool {
    debug_assert!(name.iter().all(|&b| b.is_ascii_lowercase() || b == b'-'));
    let n = raw.len();
    if n != name.len() {
        return false;
    }
    if n >= 8 {
        let word = |s: &[u8], at: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&s[at..at + 8]);
            u64::from_le_bytes(w)
        };
        let mut at = 0;
        while at + 8 < n {
            if word(raw, at) | 0x2020_2020_2020_2020 != word(name, at) {
                return false;
            }
            at += 8;
        }
        word(raw, n - 8) | 0x2020_2020_2020_2020 == word(name, n - 8)
    } else if n >= 4 {
        let word = |s: &[u8], at: usize| {
            let mut w = [0u8; 4];
            w.copy_from_slice(&s[at..at + 4]);
            u32::from_le_bytes(w)
        };
        word(raw, 0) | 0x2020_2020 == word(name, 0)
            && word(raw, n - 4) | 0x2020_2020 == word(name, n - 4)
    } else {
        raw.iter().zip(name).all(|(&r, &n)| r | 0x20 == n)
    }
}

/// The common names by length, each with its bit in a [`NameSet`].
static BY_LEN: [&[(&[u8], HeaderName, u32)]; 16] = [
    &[],
    &[],
    &[],
    &[],
    &[(b"host", HOST, 1 << 0)],
    &[],
    &[
        (b"accept", ACCEPT, 1 << 1),
        (b"cookie", COOKIE, 1 << 2),
        (b"origin", ORIGIN, 1 << 3),
    ],
    &[(b"referer", REFERER, 1 << 4), (b"upgrade", UPGRADE, 1 << 5)],
    &[],
    &[],
    &[
        (b"user-agent", USER_AGENT, 1 << 6),
        (b"connection", CONNECTION, 1 << 7),
    ],
    &[],
    &[(b"content-type", CONTENT_TYPE, 1 << 8)],
    &[
        (b"authorization", AUTHORIZATION, 1 << 9),
        (b"cache-control", CACHE_CONTROL, 1 << 10),
    ],
    &[(b"content-length", CONTENT_LENGTH, 1 << 11)],
    &[
        (b"accept-encoding", ACCEPT_ENCODING, 1 << 12),
        (b"accept-language", ACCEPT_LANGUAGE, 1 << 13),
    ],
];

/// The common name `raw` is (compared ignoring ASCII case), and its bit: found with one or
/// two comparisons, where `HeaderName::from_bytes` lower-cases the name into a scratch
/// buffer and searches every standard name (about 150 instructions per field).
#[inline]
pub(crate) fn common(raw: &[u8]) -> Option<(&'static HeaderName, u32)> {
    BY_LEN
        .get(raw.len())?
        .iter()
        .find(|(n, _, _)| is_name(raw, n))
        .map(|(_, name, bit)| (name, *bit))
}

/// Which field names a request's head holds, as far as its parser noted them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NameSet {
    /// Bits of the common names seen.
    bits: u32,
    /// Every name seen was a common one (so `bits` says it all).
    complete: bool,
}

impl NameSet {
    /// Nothing known: every name may be there.
    pub const UNKNOWN: NameSet = NameSet {
        bits: 0,
        complete: false,
    };

    /// No field yet (a parser starts here and notes each name).
    pub fn empty() -> Self {
        NameSet {
            bits: 0,
            complete: true,
        }
    }

    /// Notes a field: its common name's bit, or `None` for any other name.
    pub fn note(&mut self, bit: Option<u32>) {
        match bit {
            Some(b) => self.bits |= b,
            None => self.complete = false,
        }
    }

    /// Whether every name was a common one: the request has no `Fly-*`, `X-*`, `Via`....
    pub fn only_common(&self) -> bool {
        self.complete
    }

    /// Whether the request may hold a field named `name` (false only when it is known not to).
    pub fn may_have(&self, name: &HeaderName) -> bool {
        if !self.complete {
            return true;
        }
        common(name.as_str().as_bytes()).is_some_and(|(_, bit)| self.bits & bit != 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_distinct_and_names_sorted_by_length() {
        let mut all = 0u32;
        for (len, names) in BY_LEN.iter().enumerate() {
            for (raw, name, bit) in names.iter() {
                assert_eq!(raw.len(), len);
                assert_eq!(name.as_str().as_bytes(), *raw);
                assert_eq!(bit.count_ones(), 1);
                assert_eq!(all & bit, 0, "{name} shares a bit");
                all |= bit;
            }
        }
    }

    /// The word-at-a-time comparison answers as the byte-at-a-time definition, for every
    /// length up to 40 and a change of any byte to any other.
    #[test]
    fn is_name_matches_its_definition() {
        let slow = |raw: &[u8], name: &[u8]| {
            raw.len() == name.len() && raw.iter().zip(name).all(|(&r, &n)| r | 0x20 == n)
        };
        let letters = b"abcdefghijklmnopqrstuvwxyz-";
        for len in 0..40 {
            let name: Vec<u8> = (0..len)
                .map(|i| letters[(i * 7 + len) % letters.len()])
                .collect();
            assert!(is_name(&name, &name));
            assert!(is_name(&name.to_ascii_uppercase(), &name));
            assert!(!is_name(&name[..len.saturating_sub(1)], &name) || len == 0);
            for i in 0..len {
                for b in 0..=255u8 {
                    let mut raw = name.clone();
                    raw[i] = b;
                    assert_eq!(is_name(&raw, &name), slow(&raw, &name), "{len} {i} {b}");
                }
            }
        }
    }

    #[test]
    fn a_set_answers_only_what_it_knows() {
        let mut s = NameSet::empty();
        s.note(common(b"Host").map(|(_, b)| b));
        s.note(common(b"ACCEPT").map(|(_, b)| b));
        assert!(s.only_common());
        assert!(s.may_have(&HOST));
        assert!(s.may_have(&ACCEPT));
        assert!(!s.may_have(&CONNECTION));
        assert!(!s.may_have(&VIA));
        assert!(!s.may_have(&HeaderName::from_static("x-request-id")));
        s.note(None);
        assert!(!s.only_common());
        assert!(s.may_have(&VIA));
        assert!(s.may_have(&CONNECTION));
        assert!(NameSet::UNKNOWN.may_have(&HOST));
        assert!(!NameSet::UNKNOWN.only_common());
    }
}

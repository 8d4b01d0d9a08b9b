//! Request headers that shape a file response: `Accept-Encoding`, `Range`, `If-Range`,
//! `If-None-Match`, `If-Modified-Since`.

use std::time::SystemTime;

/// A content coding Portico can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    /// Brotli (`.br` sibling).
    Br,
    /// Gzip (`.gz` sibling or on the fly).
    Gzip,
}

impl Coding {
    /// The `Content-Encoding` token.
    pub fn token(self) -> &'static str {
        match self {
            Coding::Br => "br",
            Coding::Gzip => "gzip",
        }
    }
}

/// The q-value the client gives `coding` (`*` counts; absent means 0).
pub fn accepts(accept_encoding: Option<&str>, coding: &str) -> f32 {
    let Some(h) = accept_encoding else { return 0.0 };
    let mut star = None;
    for part in h.split(',') {
        let mut it = part.split(';');
        let name = it.next().unwrap_or("").trim();
        let q = it
            .find_map(|p| {
                p.trim()
                    .strip_prefix("q=")
                    .or_else(|| p.trim().strip_prefix("Q="))
            })
            .map_or(1.0, |v| v.trim().parse::<f32>().unwrap_or(0.0));
        if name.eq_ignore_ascii_case(coding) {
            return q;
        }
        if name == "*" {
            star = Some(q);
        }
    }
    star.unwrap_or(0.0)
}

/// The coding to serve among those available, best q first (br wins ties).
pub fn choose(accept_encoding: Option<&str>, available: &[Coding]) -> Option<Coding> {
    let mut best: Option<(Coding, f32)> = None;
    for &c in available {
        let q = accepts(accept_encoding, c.token());
        if q > 0.0 && best.is_none_or(|(_, bq)| q > bq) {
            best = Some((c, q));
        }
    }
    best.map(|(c, _)| c)
}

/// What a `Range` header asks of a representation of `len` bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum RangeAsk {
    /// No usable range: send everything (absent, malformed, or several ranges).
    Full,
    /// One satisfiable range, inclusive.
    Part(u64, u64),
    /// Nothing of it exists: 416.
    Unsatisfiable,
}

/// Parses a single `bytes=` range.
pub fn range(header: Option<&str>, len: u64) -> RangeAsk {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeAsk::Full;
    };
    if spec.contains(',') {
        // Several ranges: answered in full (allowed by RFC 9110), never as multipart.
        return RangeAsk::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeAsk::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let parse = |s: &str| s.parse::<u64>().ok();
    let (start, end) = if a.is_empty() {
        // Suffix: the last N bytes.
        match parse(b) {
            Some(0) => return RangeAsk::Unsatisfiable,
            Some(n) => (len.saturating_sub(n), len.saturating_sub(1)),
            None => return RangeAsk::Full,
        }
    } else {
        let Some(start) = parse(a) else {
            return RangeAsk::Full;
        };
        let end = if b.is_empty() {
            len.saturating_sub(1)
        } else {
            match parse(b) {
                Some(e) if e >= start => e.min(len.saturating_sub(1)),
                _ => return RangeAsk::Full,
            }
        };
        (start, end)
    };
    if len == 0 || start >= len {
        return RangeAsk::Unsatisfiable;
    }
    RangeAsk::Part(start, end)
}

/// Whether `If-Range` lets a range through: a strong ETag match, or the exact date.
pub fn if_range_ok(if_range: Option<&str>, etag: &str, modified: SystemTime) -> bool {
    match if_range.map(str::trim) {
        None => true,
        Some(v) if v.starts_with('"') => v == etag,
        Some(v) if v.starts_with("W/") => false,
        Some(v) => httpdate::parse_http_date(v)
            .is_ok_and(|d| httpdate::fmt_http_date(d) == httpdate::fmt_http_date(modified)),
    }
}

/// Whether `If-None-Match` matches (weak comparison, `*` matches anything).
pub fn none_match(if_none_match: &str, etag: &str) -> bool {
    let bare = |t: &str| t.trim().trim_start_matches("W/").to_string();
    let want = bare(etag);
    if_none_match
        .split(',')
        .any(|t| t.trim() == "*" || bare(t) == want)
}

/// Whether the file is unmodified since `If-Modified-Since` (second precision).
pub fn not_modified_since(ims: &str, modified: SystemTime) -> bool {
    let Ok(since) = httpdate::parse_http_date(ims.trim()) else {
        return false;
    };
    let secs = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    };
    secs(modified) <= secs(since)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(range(None, 10), RangeAsk::Full);
        assert_eq!(range(Some("bytes=0-3"), 10), RangeAsk::Part(0, 3));
        assert_eq!(range(Some("bytes=4-"), 10), RangeAsk::Part(4, 9));
        assert_eq!(range(Some("bytes=-3"), 10), RangeAsk::Part(7, 9));
        assert_eq!(range(Some("bytes=-30"), 10), RangeAsk::Part(0, 9));
        assert_eq!(range(Some("bytes=5-100"), 10), RangeAsk::Part(5, 9));
        assert_eq!(range(Some("bytes=10-"), 10), RangeAsk::Unsatisfiable);
        assert_eq!(range(Some("bytes=-0"), 10), RangeAsk::Unsatisfiable);
        assert_eq!(range(Some("bytes=0-1,3-4"), 10), RangeAsk::Full);
        assert_eq!(range(Some("bytes=5-2"), 10), RangeAsk::Full);
        assert_eq!(range(Some("items=0-1"), 10), RangeAsk::Full);
        assert_eq!(range(Some("bytes=x-1"), 10), RangeAsk::Full);
    }

    #[test]
    fn encodings() {
        let both = [Coding::Br, Coding::Gzip];
        assert_eq!(choose(Some("gzip, deflate, br"), &both), Some(Coding::Br));
        assert_eq!(
            choose(Some("gzip;q=1, br;q=0.5"), &both),
            Some(Coding::Gzip)
        );
        assert_eq!(choose(Some("br;q=0, gzip"), &both), Some(Coding::Gzip));
        assert_eq!(choose(Some("identity"), &both), None);
        assert_eq!(choose(Some("*"), &[Coding::Gzip]), Some(Coding::Gzip));
        assert_eq!(choose(None, &both), None);
    }

    #[test]
    fn validators() {
        assert!(none_match("\"a\", \"b\"", "\"b\""));
        assert!(none_match("W/\"b\"", "\"b\""));
        assert!(none_match("*", "\"b\""));
        assert!(!none_match("\"c\"", "\"b\""));
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        let d = httpdate::fmt_http_date(t);
        assert!(not_modified_since(&d, t));
        assert!(if_range_ok(Some(&d), "\"x\"", t));
        assert!(if_range_ok(Some("\"x\""), "\"x\"", t));
        assert!(!if_range_ok(Some("\"y\""), "\"x\"", t));
        assert!(!if_range_ok(Some("W/\"x\""), "\"x\"", t));
    }
}

//! The compiled routing table: host (exact, `*.wildcard`, any) then longest path prefix.
//!
//! Matching rules:
//! - Hosts compare case-insensitively, without port and trailing dot. `*.example.com` matches
//!   any name ending in `.example.com` (not `example.com` itself); the longest wildcard wins.
//! - Candidate host groups are tried from most to least specific (exact, wildcards by length,
//!   routes without a host); the first group with a matching path prefix wins. So a catch-all
//!   route still serves paths a host-specific group does not cover.
//! - Path prefixes match whole segments: `/api` matches `/api`, `/api/` and `/api/x`, not
//!   `/apix`; a prefix ending in `/` matches everything below it. The longest prefix wins.
//! - Paths are matched after [`normalize_path`], so `/api/../admin` is routed as `/admin`.
//!
//! Lookups do not allocate: hosts are lower-cased into a stack buffer.

use std::borrow::Cow;
use std::collections::HashMap;

use crate::model::Route;

/// Longest host name accepted for matching (DNS names are at most 253 characters).
const MAX_HOST_LEN: usize = 255;

/// Routes compiled for lookup.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    exact: HashMap<String, Vec<usize>>,
    /// `(".example.com", routes)`, longest suffix first.
    wildcard: Vec<(String, Vec<usize>)>,
    any: Vec<usize>,
}

impl RouteTable {
    /// Compiles `routes`. Host patterns must already be validated and lower case.
    pub fn new(routes: Vec<Route>) -> Self {
        let mut exact: HashMap<String, Vec<usize>> = HashMap::new();
        let mut wildcard: HashMap<String, Vec<usize>> = HashMap::new();
        let mut any = Vec::new();
        for (i, r) in routes.iter().enumerate() {
            if r.hosts.is_empty() {
                any.push(i);
            }
            for h in &r.hosts {
                match h.strip_prefix('*') {
                    Some(suffix) => wildcard.entry(suffix.to_string()).or_default().push(i),
                    None => exact.entry(h.clone()).or_default().push(i),
                }
            }
        }
        let by_path_len = |v: &mut Vec<usize>| {
            v.sort_by_key(|&i| std::cmp::Reverse(routes[i].path.len()));
        };
        exact.values_mut().for_each(by_path_len);
        by_path_len(&mut any);
        let mut wildcard: Vec<(String, Vec<usize>)> = wildcard.into_iter().collect();
        wildcard.iter_mut().for_each(|(_, v)| by_path_len(v));
        wildcard.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.0.cmp(&b.0)));
        Self {
            routes,
            exact,
            wildcard,
            any,
        }
    }

    /// All routes, in file order.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// True when there are no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// The route for a request. `host` is the raw Host header or authority (any case, with or
    /// without port); `path` must already be normalized (see [`normalize_path`]).
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<(usize, &Route)> {
        // No route names a host (a single-app front door): the host is not looked at, so
        // it is not lower-cased either.
        if self.exact.is_empty() && self.wildcard.is_empty() {
            return self.first_path_match(&self.any, path);
        }
        let mut buf = [0u8; MAX_HOST_LEN];
        let host = host.and_then(|h| lower_host(h, &mut buf));
        if let Some(host) = host {
            if let Some(group) = self.exact.get(host) {
                if let Some(hit) = self.first_path_match(group, path) {
                    return Some(hit);
                }
            }
            for (suffix, group) in &self.wildcard {
                if host.len() > suffix.len() && host.ends_with(suffix.as_str()) {
                    if let Some(hit) = self.first_path_match(group, path) {
                        return Some(hit);
                    }
                }
            }
        }
        self.first_path_match(&self.any, path)
    }

    fn first_path_match(&self, group: &[usize], path: &str) -> Option<(usize, &Route)> {
        group
            .iter()
            .map(|&i| (i, &self.routes[i]))
            .find(|(_, r)| path_matches(&r.path, path))
    }
}

/// Lower-cases `host` into `buf`, dropping a port and a trailing dot. `None` if too long or
/// not valid host characters.
fn lower_host<'b>(host: &str, buf: &'b mut [u8; MAX_HOST_LEN]) -> Option<&'b str> {
    let host = strip_port(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > MAX_HOST_LEN {
        return None;
    }
    for (dst, &b) in buf.iter_mut().zip(host.as_bytes()) {
        if !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':' | b'[' | b']')) {
            return None;
        }
        *dst = b.to_ascii_lowercase();
    }
    std::str::from_utf8(&buf[..host.len()]).ok()
}

/// The host part of a `host[:port]` authority (IPv6 literals keep their brackets).
pub fn strip_port(authority: &str) -> &str {
    if authority.starts_with('[') {
        return match authority.find(']') {
            Some(end) => &authority[..=end],
            None => authority,
        };
    }
    match authority.rfind(':') {
        Some(i) if authority[i + 1..].bytes().all(|b| b.is_ascii_digit()) => &authority[..i],
        _ => authority,
    }
}

/// Whether a route's path prefix covers `path` (whole segments only).
pub fn path_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    if !path.starts_with(prefix) {
        return false;
    }
    prefix.ends_with('/') || path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Normalizes a request path for matching: percent-encoded unreserved characters are decoded,
/// repeated slashes merged, `.` and `..` segments resolved (never above the root).
///
/// Returns the input borrowed when it is already normal, which is the common case.
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    if !path.starts_with('/') {
        return Cow::Borrowed(path);
    }
    let needs_work = path.contains('%') || path.contains("//") || path.contains("/.");
    if !needs_work {
        return Cow::Borrowed(path);
    }
    // Decode unreserved escapes only: `%2F` stays encoded so it never becomes a separator.
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                let c = h * 16 + l;
                if is_unreserved(c) {
                    decoded.push(c);
                    i += 3;
                    continue;
                }
            }
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    let mut segments: Vec<&[u8]> = Vec::new();
    let trailing_slash =
        decoded.ends_with(b"/") || decoded.ends_with(b"/.") || decoded.ends_with(b"/..");
    for seg in decoded.split(|&b| b == b'/') {
        match seg {
            b"" | b"." => {}
            b".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = Vec::with_capacity(decoded.len());
    for s in &segments {
        out.push(b'/');
        out.extend_from_slice(s);
    }
    if out.is_empty() || (trailing_slash && !segments.is_empty()) {
        out.push(b'/');
    }
    // Only ASCII escapes were decoded, so the result is valid UTF-8 whenever the input was.
    match String::from_utf8(out) {
        Ok(s) => Cow::Owned(s),
        Err(_) => Cow::Borrowed(path),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn route(name: &str, hosts: &[&str], path: &str) -> Route {
        Route::new(name, hosts.iter().map(|h| h.to_string()).collect(), path, 0)
    }

    fn name<'a>(t: &'a RouteTable, host: Option<&str>, path: &str) -> Option<&'a str> {
        t.find(host, path).map(|(_, r)| r.name.as_str())
    }

    #[test]
    fn exact_wildcard_any_and_longest_prefix() {
        let t = RouteTable::new(vec![
            route("site", &["example.com"], "/"),
            route("api", &["example.com"], "/api"),
            route("apiv2", &["example.com"], "/api/v2/"),
            route("wild", &["*.example.com"], "/"),
            route("deepwild", &["*.eu.example.com"], "/"),
            route("fallback", &[], "/"),
            route("static", &[], "/static"),
        ]);
        assert_eq!(name(&t, Some("example.com"), "/"), Some("site"));
        assert_eq!(name(&t, Some("EXAMPLE.com:8080"), "/api"), Some("api"));
        assert_eq!(name(&t, Some("example.com"), "/api/x"), Some("api"));
        assert_eq!(name(&t, Some("example.com"), "/apix"), Some("site"));
        assert_eq!(
            name(&t, Some("example.com"), "/api/v2/users"),
            Some("apiv2")
        );
        assert_eq!(name(&t, Some("example.com"), "/api/v2"), Some("api"));
        assert_eq!(name(&t, Some("a.example.com"), "/"), Some("wild"));
        assert_eq!(name(&t, Some("a.b.example.com"), "/"), Some("wild"));
        assert_eq!(name(&t, Some("x.eu.example.com"), "/"), Some("deepwild"));
        assert_eq!(name(&t, Some("example.com."), "/"), Some("site"));
        assert_eq!(name(&t, Some("other.org"), "/"), Some("fallback"));
        assert_eq!(name(&t, Some("other.org"), "/static/a.js"), Some("static"));
        assert_eq!(name(&t, None, "/x"), Some("fallback"));
    }

    #[test]
    fn host_group_without_path_match_falls_through() {
        let t = RouteTable::new(vec![
            route("api", &["example.com"], "/api"),
            route("catchall", &[], "/"),
        ]);
        assert_eq!(name(&t, Some("example.com"), "/other"), Some("catchall"));
        let strict = RouteTable::new(vec![route("api", &["example.com"], "/api")]);
        assert_eq!(name(&strict, Some("example.com"), "/other"), None);
        assert_eq!(name(&strict, Some("nope.com"), "/api"), None);
    }

    #[test]
    fn wildcard_does_not_match_apex_and_bad_hosts_do_not_match() {
        let t = RouteTable::new(vec![route("wild", &["*.example.com"], "/")]);
        assert_eq!(name(&t, Some("example.com"), "/"), None);
        assert_eq!(name(&t, Some("evil.com/.example.com"), "/"), None);
        assert_eq!(name(&t, Some(&"a".repeat(300)), "/"), None);
    }

    #[test]
    fn ipv6_hosts() {
        let t = RouteTable::new(vec![route("v6", &["[::1]"], "/")]);
        assert_eq!(name(&t, Some("[::1]:8080"), "/"), Some("v6"));
        assert_eq!(name(&t, Some("[::1]"), "/"), Some("v6"));
    }

    #[test]
    fn strip_port_cases() {
        assert_eq!(strip_port("a.com:80"), "a.com");
        assert_eq!(strip_port("a.com"), "a.com");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
        assert_eq!(strip_port("a.com:x"), "a.com:x");
    }

    #[test]
    fn normalize_cases() {
        let cases = [
            ("/", "/"),
            ("/a/b", "/a/b"),
            ("/a//b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/../../etc/passwd", "/etc/passwd"),
            ("/api/../admin", "/admin"),
            ("/%61pi", "/api"),
            ("/api/%2e%2e/admin", "/admin"),
            ("/api/%2E%2E/admin", "/admin"),
            ("/a%2Fb", "/a%2Fb"),
            ("/a/b/", "/a/b/"),
            ("/a/b/.", "/a/b/"),
            ("/a/b/..", "/a/"),
            ("/..", "/"),
            ("/%", "/%"),
            ("/%4", "/%4"),
            ("/%zz", "/%zz"),
            ("*", "*"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize_path(input), want, "normalize({input:?})");
        }
        assert!(matches!(normalize_path("/a/b.c/d"), Cow::Borrowed(_)));
    }

    /// Reference matcher: brute force over every route, in the documented precedence.
    fn reference(routes: &[Route], host: Option<&str>, path: &str) -> Option<usize> {
        let host = host.map(|h| strip_port(h).trim_end_matches('.').to_ascii_lowercase());
        let best_in = |pred: &dyn Fn(&Route) -> bool| {
            routes
                .iter()
                .enumerate()
                .filter(|(_, r)| pred(r) && path_matches(&r.path, path))
                .max_by(|a, b| a.1.path.len().cmp(&b.1.path.len()).then(b.0.cmp(&a.0)))
                .map(|(i, _)| i)
        };
        if let Some(h) = &host {
            if let Some(i) = best_in(&|r: &Route| r.hosts.iter().any(|x| x == h)) {
                return Some(i);
            }
            let mut suffixes: Vec<&str> = routes
                .iter()
                .flat_map(|r| r.hosts.iter())
                .filter_map(|x| x.strip_prefix('*'))
                .filter(|s| h.len() > s.len() && h.ends_with(s))
                .collect();
            suffixes.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
            suffixes.dedup();
            for s in suffixes {
                let pat = format!("*{s}");
                if let Some(i) = best_in(&|r: &Route| r.hosts.contains(&pat)) {
                    return Some(i);
                }
            }
        }
        best_in(&|r: &Route| r.hosts.is_empty())
    }

    fn host_strategy() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a.com".to_string()),
            Just("b.a.com".to_string()),
            Just("c.b.a.com".to_string()),
            Just("x.org".to_string()),
            Just("*.a.com".to_string()),
            Just("*.b.a.com".to_string()),
        ]
    }

    fn path_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![Just("a"), Just("b"), Just("ab"), Just("")],
            0..4,
        )
        .prop_map(|segs| format!("/{}", segs.join("/")))
    }

    proptest! {
        #[test]
        fn matcher_agrees_with_reference(
            specs in prop::collection::vec(
                (prop::collection::vec(host_strategy(), 0..2), path_strategy()), 1..8),
            req_host in prop_oneof![host_strategy().prop_filter("concrete", |h| !h.starts_with('*')).prop_map(Some), Just(None)],
            req_path in path_strategy(),
        ) {
            // Same host+path twice is rejected by validation; keep the first of each.
            let mut seen = std::collections::HashSet::new();
            let routes: Vec<Route> = specs
                .into_iter()
                .enumerate()
                .filter(|(_, (hosts, path))| hosts.iter().all(|h| seen.insert((h.clone(), path.clone())))
                    && (!hosts.is_empty() || seen.insert((String::new(), path.clone()))))
                .map(|(i, (hosts, path))| {
                    let hs: Vec<&str> = hosts.iter().map(|s| s.as_str()).collect();
                    route(&format!("r{i}"), &hs, &path)
                })
                .collect();
            let table = RouteTable::new(routes.clone());
            let got = table.find(req_host.as_deref(), &req_path).map(|(_, r)| r.name.clone());
            let want = reference(&routes, req_host.as_deref(), &req_path).map(|i| routes[i].name.clone());
            prop_assert_eq!(got, want);
        }

        #[test]
        fn normalized_paths_have_no_dot_segments(path in "(/[a-z.%2eE]{0,4}){1,6}") {
            let n = normalize_path(&path);
            prop_assert!(n.starts_with('/'));
            for seg in n.split('/') {
                prop_assert!(seg != "." && seg != "..", "{} -> {}", path, n);
            }
            prop_assert!(!n.contains("//"));
            // Normalizing twice changes nothing.
            let again = normalize_path(&n).into_owned();
            prop_assert_eq!(again.as_str(), n.as_ref());
        }
    }
}

//! Turning a request path into a file path that cannot leave the root.
//!
//! The path is percent-decoded exactly once and then refused when anything suspicious is left:
//! `.`/`..` segments, backslashes, NUL and control bytes, invalid (overlong) UTF-8, a `%` that
//! would decode again, or a dot-segment that is hidden (unless dotfiles are allowed). Symlinks
//! are checked after resolution, against the canonical root.

use std::path::{Path, PathBuf};

/// The relative path a request names, as path segments; `None` when it must be refused.
pub fn segments(raw_path: &str, dotfiles: bool) -> Option<Vec<String>> {
    let decoded = percent_encoding::percent_decode_str(raw_path)
        .decode_utf8()
        .ok()?;
    if decoded.contains(['\\', '\0', '%']) || decoded.chars().any(char::is_control) {
        return None;
    }
    let mut out = Vec::new();
    for seg in decoded.split('/') {
        match seg {
            "" => continue,
            "." | ".." => return None,
            s if s.starts_with('.') && !(dotfiles || s == ".well-known") => return None,
            s => out.push(s.to_string()),
        }
    }
    Some(out)
}

/// Joins `segments` onto `root`.
pub fn join(root: &Path, segments: &[String]) -> PathBuf {
    let mut p = root.to_path_buf();
    for s in segments {
        p.push(s);
    }
    p
}

/// Whether `path` (which exists) resolves inside `canonical_root`, symlinks followed.
pub fn inside(canonical_root: &Path, path: &Path) -> bool {
    std::fs::canonicalize(path).is_ok_and(|real| real.starts_with(canonical_root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_is_refused() {
        for bad in [
            "/../etc/passwd",
            "/a/../../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/%2E%2E/etc/passwd",
            "/..%2fetc/passwd",
            "/%252e%252e/etc/passwd",
            "/..%5cetc",
            "/a\\..\\b",
            "/%00",
            "/a%00.html",
            "/%c0%ae%c0%ae/etc/passwd",
            "/%e0%80%ae",
            "/.env",
            "/.git/config",
            "/a/./b",
            "/%2e/x",
        ] {
            assert_eq!(segments(bad, false), None, "{bad}");
        }
        assert_eq!(
            segments("/assets/app-1a2b3c4d.js", false),
            Some(vec!["assets".into(), "app-1a2b3c4d.js".into()])
        );
        assert_eq!(
            segments("//a//b/", false),
            Some(vec!["a".into(), "b".into()])
        );
        assert_eq!(
            segments("/caf%C3%A9.txt", false),
            Some(vec!["café.txt".into()])
        );
        assert_eq!(segments("/.env", true), Some(vec![".env".into()]));
        assert_eq!(
            segments("/.well-known/security.txt", false),
            Some(vec![".well-known".into(), "security.txt".into()])
        );
    }
}

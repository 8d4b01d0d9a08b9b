//! Validation of a route's `static` file serving and `sticky` affinity.

use crate::defaults as d;
use crate::error::KeyPath;
use crate::file::*;
use crate::model::*;

use super::*;

impl Validator<'_> {
    /// `static = { root = "...", ... }`.
    pub(super) fn static_files(
        &mut self,
        f: StaticFile,
        k: &KeyPath,
        upstream_given: bool,
    ) -> Option<StaticFiles> {
        let Some(root) = f.root.filter(|r| !r.is_empty()) else {
            self.err(k.key("root"), "missing: the directory to serve files from");
            return None;
        };
        let root_path = std::path::PathBuf::from(&root);
        if !root_path.is_absolute() {
            self.err(k.key("root"), format!("{root:?} must be an absolute path"));
        }
        let try_files = f.try_files.is_some_and(|v| v.0);
        if try_files && !upstream_given {
            self.err(
                k.key("try_files"),
                "try_files proxies to the route's upstream when no file matches: set `upstream`",
            );
        }
        let name_ok =
            |n: &str| !n.is_empty() && !n.contains(['/', '\\', '\0']) && n != "." && n != "..";
        for (key, v) in [("index", &f.index), ("fallback", &f.fallback)] {
            if let Some(n) = v {
                if !name_ok(n.trim_start_matches('/')) {
                    self.err(k.key(key), format!("{n:?} must be a file name inside root"));
                }
            }
        }
        let fallback_all = match f.fallback_for.as_deref() {
            None | Some("extensionless") => false,
            Some("all") => true,
            Some(other) => {
                self.err(
                    k.key("fallback_for"),
                    format!("{other:?} is not one of \"extensionless\", \"all\""),
                );
                false
            }
        };
        if f.fallback_for.is_some() && f.fallback.is_none() {
            self.err(
                k.key("fallback_for"),
                "only applies with `fallback` (the file to serve)",
            );
        }
        let header_ok =
            |v: &str| !v.is_empty() && v.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b));
        let cache_control = f.cache_control.unwrap_or_else(|| "no-cache".to_string());
        if !header_ok(&cache_control) {
            self.err(k.key("cache_control"), "not a valid header value");
        }
        let immutable_cache_control = f
            .immutable_cache_control
            .unwrap_or_else(|| "public, max-age=31536000, immutable".to_string());
        if !header_ok(&immutable_cache_control) {
            self.err(k.key("immutable_cache_control"), "not a valid header value");
        }
        let immutable_paths = f.immutable_paths.unwrap_or_default();
        for (i, p) in immutable_paths.iter().enumerate() {
            if !p.starts_with('/') {
                self.err(
                    k.key("immutable_paths").index(i),
                    format!("{p:?} must start with '/'"),
                );
            }
        }
        Some(StaticFiles {
            root: root_path,
            index: Some(f.index.unwrap_or_else(|| "index.html".to_string()))
                .filter(|s| !s.is_empty())
                .map(|s| s.trim_start_matches('/').to_string()),
            fallback: f
                .fallback
                .filter(|s| !s.is_empty())
                .map(|s| s.trim_start_matches('/').to_string()),
            fallback_all,
            try_files,
            cache_control,
            immutable_cache_control,
            hashed_names: f.hashed_names.is_none_or(|v| v.0),
            immutable_paths,
            precompressed: f.precompressed.is_none_or(|v| v.0),
            compress: f.compress.is_some_and(|v| v.0),
            compress_min_size: f.compress_min_size.map_or(1024, |s| s.0),
            dotfiles: f.dotfiles.is_some_and(|v| v.0),
        })
    }

    /// `sticky = { mode = "cookie" | "header" | "query" | "client_ip", ... }`.
    pub(super) fn sticky(
        &mut self,
        f: StickyFile,
        k: &KeyPath,
        upstream: Option<&str>,
    ) -> Option<Sticky> {
        let mode = f.mode.as_deref().unwrap_or("cookie");
        let name_ok = |n: &str| is_token(n);
        let cookie_only = [
            ("path", f.path.is_some()),
            ("max_age", f.max_age.is_some()),
            ("secure", f.secure.is_some()),
            ("http_only", f.http_only.is_some()),
            ("same_site", f.same_site.is_some()),
            ("key", f.key.is_some()),
        ];
        if mode != "cookie" {
            for (key, set) in cookie_only {
                if set {
                    self.err(k.key(key), "only applies with mode = \"cookie\"");
                }
            }
        }
        match mode {
            "cookie" => {
                // One cookie per upstream by default, so routes to different upstreams on one
                // host keep their pins apart.
                let name = f.name.unwrap_or_else(|| match upstream {
                    Some(u) => format!("{}_{u}", d::STICKY_COOKIE),
                    None => d::STICKY_COOKIE.to_string(),
                });
                if !name_ok(&name) {
                    self.err(k.key("name"), format!("invalid cookie name {name:?}"));
                }
                let path = f.path.unwrap_or_else(|| "/".to_string());
                if !path.starts_with('/') || path.bytes().any(|b| b == b';' || b.is_ascii_control())
                {
                    self.err(k.key("path"), format!("invalid cookie path {path:?}"));
                }
                let same_site = match f
                    .same_site
                    .as_deref()
                    .map(str::to_ascii_lowercase)
                    .as_deref()
                {
                    None => Some("Lax".to_string()),
                    Some("lax") => Some("Lax".to_string()),
                    Some("strict") => Some("Strict".to_string()),
                    Some("none") => Some("None".to_string()),
                    Some("") | Some("off") => None,
                    Some(other) => {
                        self.err(
                            k.key("same_site"),
                            format!("unknown value {other:?}: expected \"lax\", \"strict\", \"none\" or \"off\""),
                        );
                        None
                    }
                };
                let key = f.key.filter(|k| !k.is_empty());
                if key.as_ref().is_some_and(|s| s.len() < 16) {
                    self.err(k.key("key"), "signing key too short: use at least 16 characters (e.g. `openssl rand -hex 32`)");
                }
                Some(Sticky::Cookie(StickyCookie {
                    name,
                    path,
                    max_age: f.max_age.map(|d| d.0),
                    secure: f.secure.map(|v| v.0),
                    http_only: f.http_only.is_none_or(|v| v.0),
                    same_site,
                    key,
                }))
            }
            "header" | "query" => {
                let Some(name) = f.name else {
                    self.err(
                        k.key("name"),
                        format!("mode = {mode:?} needs `name` (the {mode} to hash on)"),
                    );
                    return None;
                };
                if mode == "header" {
                    if !name_ok(&name) {
                        self.err(k.key("name"), format!("invalid header name {name:?}"));
                        return None;
                    }
                    Some(Sticky::Hash(HashKey::Header(name.to_ascii_lowercase())))
                } else {
                    if name.is_empty() || name.contains(['&', '=', '#']) {
                        self.err(k.key("name"), format!("invalid query parameter {name:?}"));
                        return None;
                    }
                    Some(Sticky::Hash(HashKey::Query(name)))
                }
            }
            "client_ip" => {
                if f.name.is_some() {
                    self.err(k.key("name"), "mode = \"client_ip\" takes no name");
                }
                Some(Sticky::Hash(HashKey::ClientIp))
            }
            other => {
                self.err(
                    k.key("mode"),
                    format!("unknown mode {other:?}: expected \"cookie\", \"header\", \"query\" or \"client_ip\""),
                );
                None
            }
        }
    }
}

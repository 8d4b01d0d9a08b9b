//! Static files served by routes with `static = { root = ... }`: content types, validators
//! (ETag, Last-Modified, 304), single ranges, precompressed siblings and on-the-fly gzip,
//! long-cache headers for content-hashed names, index files, SPA fallback and `try_files`.
//!
//! This module decides (paths, cache, negotiation, hashed names, types); `proxy::files` turns
//! its answers into responses.
//!
//! File system work (resolution, `stat`, reads) runs on tokio's blocking pool. Small files are
//! kept in a bounded in-memory cache whose entries are re-checked against the disk (size and
//! mtime) at most once per [`cache::REVALIDATE`], so hot assets cost no system call.

pub mod cache;
pub mod hashed;
pub mod mime;
pub mod negotiate;
pub mod path;

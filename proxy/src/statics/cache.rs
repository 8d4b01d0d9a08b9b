//! Resolved static files and the bounded in-memory cache of small ones.
//!
//! An entry records what a request path resolved to (index files included), its validators,
//! its precompressed siblings and, for files up to [`MAX_CACHED_FILE`], the bytes themselves.
//! Entries are re-checked against the disk at most once per [`REVALIDATE`]: a changed size or
//! mtime reloads them. The cache holds at most [`MAX_ENTRIES`] entries and [`MAX_BYTES`] of
//! file data; beyond that, entries are dropped until a quarter of the room is free.

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::HeaderValue;
use portico_config::StaticFiles;

use super::mime;
use super::negotiate::Coding;
use super::path;

/// How long a cached entry is trusted without looking at the disk.
pub const REVALIDATE: Duration = Duration::from_secs(1);
/// Largest file kept in memory (larger ones are streamed from disk).
pub const MAX_CACHED_FILE: u64 = 256 * 1024;
/// Most file bytes kept in memory.
pub const MAX_BYTES: usize = 64 << 20;
/// Most entries.
pub const MAX_ENTRIES: usize = 10_000;

/// One representation of a file: as is, or content-coded.
#[derive(Debug)]
pub struct Repr {
    /// File holding it (unused when `body` is set by on-the-fly compression).
    pub path: PathBuf,
    /// Length in bytes.
    pub len: u64,
    /// Modification time.
    pub modified: SystemTime,
    /// Strong ETag, quoted.
    pub etag: String,
    /// Content coding, `None` for the file as is.
    pub coding: Option<Coding>,
    /// The bytes, when small enough to keep.
    pub body: Option<Bytes>,
    /// Its validator and length as header values, made once: a cache hit clones them (a
    /// reference count) instead of formatting and allocating them per request.
    pub fields: Fields,
}

/// Header values of one representation, formatted when it is loaded.
#[derive(Debug)]
pub struct Fields {
    /// `ETag`.
    pub etag: HeaderValue,
    /// `Last-Modified`.
    pub last_modified: HeaderValue,
    /// `Content-Length` of the whole representation.
    pub length: HeaderValue,
}

impl Repr {
    fn new(
        path: PathBuf,
        len: u64,
        modified: SystemTime,
        etag: String,
        coding: Option<Coding>,
        body: Option<Bytes>,
    ) -> Repr {
        let value = |s: &str| HeaderValue::from_str(s).unwrap_or(HeaderValue::from_static(""));
        let fields = Fields {
            etag: value(&etag),
            last_modified: value(&httpdate::fmt_http_date(modified)),
            length: HeaderValue::from(len),
        };
        Repr {
            path,
            len,
            modified,
            etag,
            coding,
            body,
            fields,
        }
    }
}

/// What a request path resolved to.
#[derive(Debug)]
pub struct Entry {
    /// `Content-Type`.
    pub content_type: http::HeaderValue,
    /// The file as is.
    pub identity: Repr,
    /// Encoded variants available.
    pub variants: Vec<Repr>,
    /// Served as a single-page-app fallback.
    pub is_fallback: bool,
    /// The name looks content-hashed ([`super::hashed::is_hashed`], decided once per entry
    /// rather than per hit).
    pub hashed_name: bool,
    checked_ms: AtomicU64,
}

impl Entry {
    fn bytes(&self) -> usize {
        let len = |r: &Repr| r.body.as_ref().map_or(0, Bytes::len);
        len(&self.identity) + self.variants.iter().map(len).sum::<usize>()
    }
}

/// The cache, shared by every static route (keys include the root).
pub struct FileCache {
    entries: RwLock<HashMap<String, Arc<Entry>>>,
    bytes: AtomicUsize,
    epoch: Instant,
}

impl Default for FileCache {
    fn default() -> Self {
        Self {
            entries: RwLock::new(HashMap::new()),
            bytes: AtomicUsize::new(0),
            epoch: Instant::now(),
        }
    }
}

fn stamp(m: &std::fs::Metadata) -> (u64, SystemTime) {
    (m.len(), m.modified().unwrap_or(SystemTime::UNIX_EPOCH))
}

fn etag(len: u64, modified: SystemTime, suffix: &str) -> String {
    let nanos = modified
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("\"{nanos:x}-{len:x}{suffix}\"")
}

impl FileCache {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The entry for `segments` under `cfg.root` (`dir_request`: the path ended in `/`), or
    /// `None` when no file may be served for it.
    pub async fn get(
        &self,
        cfg: &StaticFiles,
        segments: &[String],
        dir_request: bool,
    ) -> Option<Arc<Entry>> {
        // Routes sharing a root may differ in what an entry holds (index, encodings).
        let mut key = format!(
            "{}\0{}\0{}{}{}\0",
            cfg.root.to_string_lossy(),
            cfg.index.as_deref().unwrap_or(""),
            u8::from(cfg.precompressed),
            u8::from(cfg.compress),
            cfg.compress_min_size
        );
        key.push_str(&segments.join("/"));
        if dir_request {
            key.push('/');
        }
        let cached = self
            .entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
            .cloned();
        if let Some(e) = cached {
            let now = self.now_ms();
            if now.saturating_sub(e.checked_ms.load(Ordering::Relaxed))
                < REVALIDATE.as_millis() as u64
            {
                return Some(e);
            }
            let e2 = e.clone();
            let unchanged = tokio::task::spawn_blocking(move || still_valid(&e2))
                .await
                .unwrap_or(false);
            if unchanged {
                e.checked_ms.store(now, Ordering::Relaxed);
                return Some(e);
            }
            self.remove(&key);
        }
        let (cfg2, segs) = (cfg.clone(), segments.to_vec());
        let now = self.now_ms();
        let entry = tokio::task::spawn_blocking(move || resolve(&cfg2, &segs, dir_request, now))
            .await
            .ok()
            .flatten()?;
        let entry = Arc::new(entry);
        self.insert(key, entry.clone());
        Some(entry)
    }

    fn remove(&self, key: &str) {
        let mut map = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = map.remove(key) {
            self.bytes.fetch_sub(old.bytes(), Ordering::Relaxed);
        }
    }

    fn insert(&self, key: String, entry: Arc<Entry>) {
        let size = entry.bytes();
        if size > MAX_BYTES / 4 {
            return;
        }
        let mut map = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ENTRIES || self.bytes.load(Ordering::Relaxed) + size > MAX_BYTES {
            // Make room for a quarter of the budget at once, so this is rare.
            let keys: Vec<String> = map.keys().cloned().collect();
            for k in keys {
                if map.len() < MAX_ENTRIES * 3 / 4
                    && self.bytes.load(Ordering::Relaxed) + size <= MAX_BYTES * 3 / 4
                {
                    break;
                }
                if let Some(old) = map.remove(&k) {
                    self.bytes.fetch_sub(old.bytes(), Ordering::Relaxed);
                }
            }
        }
        if let Some(old) = map.insert(key, entry) {
            self.bytes.fetch_sub(old.bytes(), Ordering::Relaxed);
        }
        self.bytes.fetch_add(size, Ordering::Relaxed);
    }
}

fn still_valid(e: &Entry) -> bool {
    let same =
        |r: &Repr| std::fs::metadata(&r.path).is_ok_and(|m| stamp(&m) == (r.len, r.modified));
    let variants_same = e
        .variants
        .iter()
        .filter(|v| v.path != e.identity.path)
        .all(same);
    same(&e.identity) && variants_same
}

fn read_small(p: &Path, len: u64) -> Option<Bytes> {
    (len <= MAX_CACHED_FILE)
        .then(|| std::fs::read(p).ok().map(Bytes::from))
        .flatten()
}

/// Resolves a request on the file system (blocking).
fn resolve(
    cfg: &StaticFiles,
    segments: &[String],
    dir_request: bool,
    now_ms: u64,
) -> Option<Entry> {
    let root = std::fs::canonicalize(&cfg.root).ok()?;
    let mut p = path::join(&root, segments);
    let mut meta = std::fs::metadata(&p).ok()?;
    if meta.is_dir() {
        let index = cfg.index.as_ref()?;
        p.push(index);
        meta = std::fs::metadata(&p).ok()?;
    } else if dir_request {
        return None;
    }
    if !meta.is_file() || !path::inside(&root, &p) {
        return None;
    }
    let name = p.file_name()?.to_string_lossy().into_owned();
    let content_type = mime::content_type(&name);
    let compressible = mime::compressible(&content_type);
    let content_type = http::HeaderValue::from_str(&content_type)
        .unwrap_or_else(|_| http::HeaderValue::from_static("application/octet-stream"));
    let (len, modified) = stamp(&meta);
    let body = read_small(&p, len);
    // What was read is what gets served: a file changing between stat and read must not
    // leave a length that disagrees with the bytes.
    let len = body.as_ref().map_or(len, |b| b.len() as u64);
    let identity = Repr::new(
        p.clone(),
        len,
        modified,
        etag(len, modified, ""),
        None,
        body,
    );
    let mut variants = Vec::new();
    if cfg.precompressed {
        for (coding, ext) in [(Coding::Br, "br"), (Coding::Gzip, "gz")] {
            let mut sp = p.clone().into_os_string();
            sp.push(".");
            sp.push(ext);
            let sp = PathBuf::from(sp);
            let Ok(m) = std::fs::metadata(&sp) else {
                continue;
            };
            if !m.is_file() || !path::inside(&root, &sp) {
                continue;
            }
            let (vlen, vmod) = stamp(&m);
            let body = read_small(&sp, vlen);
            let vlen = body.as_ref().map_or(vlen, |b| b.len() as u64);
            let tag = etag(vlen, vmod, &format!("-{ext}"));
            variants.push(Repr::new(sp, vlen, vmod, tag, Some(coding), body));
        }
    }
    let has_gzip = variants.iter().any(|v| v.coding == Some(Coding::Gzip));
    if cfg.compress && !has_gzip && compressible && len >= cfg.compress_min_size {
        if let Some(body) = &identity.body {
            let mut enc = flate2::write::GzEncoder::new(
                Vec::with_capacity(body.len() / 3),
                flate2::Compression::default(),
            );
            if enc.write_all(body).is_ok() {
                if let Ok(gz) = enc.finish() {
                    variants.push(Repr::new(
                        p.clone(),
                        gz.len() as u64,
                        modified,
                        etag(len, modified, "-gzip"),
                        Some(Coding::Gzip),
                        Some(Bytes::from(gz)),
                    ));
                }
            }
        }
    }
    let is_fallback = cfg
        .fallback
        .as_deref()
        .is_some_and(|f| segments.len() == 1 && segments[0] == f);
    Some(Entry {
        hashed_name: super::hashed::is_hashed(&name),
        content_type,
        identity,
        variants,
        is_fallback,
        checked_ms: AtomicU64::new(now_ms),
    })
}

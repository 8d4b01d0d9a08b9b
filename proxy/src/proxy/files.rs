//! Static answers in the request path: a static route's request turned into a response head
//! and a body source from what `statics` decides (the file, its representation, validators,
//! ranges, long-cache headers), with Portico's common headers. Both engines write the result.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;
use pingora_error::Result;
use pingora_http::{RequestHeader, ResponseHeader};
use portico_config::{Route, StaticFiles};

use super::ctx::RequestCtx;
use super::respond;
use crate::statics::cache::{Entry, FileCache, Repr};
use crate::statics::negotiate::{self, Coding, RangeAsk};
use crate::statics::path;

/// What a static route did with a request.
pub enum Outcome {
    /// The answer to write.
    Reply(Box<Reply>),
    /// No file matches and the route proxies instead (`try_files`).
    Proxy,
}

/// A static answer: its head, and where its body comes from.
pub struct Reply {
    /// Status and headers (with the common headers).
    pub head: ResponseHeader,
    /// The body.
    pub body: Body,
}

/// Where a static answer's body comes from.
pub enum Body {
    /// No body (HEAD, 304, 416).
    Empty,
    /// Bytes in memory (cached files, error texts).
    Bytes(Bytes),
    /// `count` bytes of a file from `start` (files too large for the cache).
    File {
        /// The file.
        path: PathBuf,
        /// First byte.
        start: u64,
        /// Bytes to send.
        count: u64,
    },
}

/// Serves the request from `cfg.root`, or says it should be proxied.
pub async fn serve(
    files: &FileCache,
    req: &RequestHeader,
    ctx: &RequestCtx,
    route: &Route,
    cfg: &StaticFiles,
) -> Result<Outcome> {
    let method = &req.method;
    let head_only = *method == http::Method::HEAD;
    if *method != http::Method::GET && !head_only {
        if cfg.try_files {
            return Ok(Outcome::Proxy);
        }
        return text(
            ctx,
            405,
            respond::error_body(405, "static files answer GET and HEAD only", ctx),
            &[("allow", "GET, HEAD".to_string())],
            false,
        );
    }
    let full_path = req.uri.path();
    let mut url_path = full_path;
    if route.strip_prefix {
        url_path = url_path
            .strip_prefix(route.path.trim_end_matches('/'))
            .unwrap_or(url_path);
    }
    let Some(segments) = path::segments(url_path, cfg.dotfiles) else {
        return not_found(ctx, head_only);
    };
    let dir_request = url_path.ends_with('/') || segments.is_empty();
    let entry = match files.get(cfg, &segments, dir_request).await {
        Some(e) => e,
        None if cfg.try_files => return Ok(Outcome::Proxy),
        None => {
            // Single-page apps: unknown paths without an extension (or every unknown path with
            // `fallback_for = "all"`) get the app's shell.
            let last = segments.last().map_or("", String::as_str);
            match &cfg.fallback {
                Some(fb) if cfg.fallback_all || !last.contains('.') => {
                    match files.get(cfg, std::slice::from_ref(fb), false).await {
                        Some(e) => e,
                        None => return not_found(ctx, head_only),
                    }
                }
                _ => return not_found(ctx, head_only),
            }
        }
    };
    reply(req, ctx, cfg, full_path, &entry).map(|r| Outcome::Reply(Box::new(r)))
}

/// A plain-text answer (404, 405).
fn text(
    ctx: &RequestCtx,
    status: u16,
    body: String,
    extra: &[(&'static str, String)],
    head_only: bool,
) -> Result<Outcome> {
    let head = respond::local_head(ctx, status, body.len(), extra)?;
    let body = if head_only {
        Body::Empty
    } else {
        Body::Bytes(Bytes::from(body))
    };
    Ok(Outcome::Reply(Box::new(Reply { head, body })))
}

fn not_found(ctx: &RequestCtx, head_only: bool) -> Result<Outcome> {
    text(
        ctx,
        404,
        respond::error_body(404, "no such file", ctx),
        &[],
        head_only,
    )
}

fn reply(
    req: &RequestHeader,
    ctx: &RequestCtx,
    cfg: &StaticFiles,
    url_path: &str,
    entry: &Arc<Entry>,
) -> Result<Reply> {
    let header = |n: &str| super::header_value(&req.headers, n);
    let head_only = req.method == http::Method::HEAD;
    let accept = header("accept-encoding");
    let available: Vec<Coding> = entry.variants.iter().filter_map(|v| v.coding).collect();
    let repr: &Repr = negotiate::choose(accept, &available)
        .and_then(|c| entry.variants.iter().find(|v| v.coding == Some(c)))
        .unwrap_or(&entry.identity);
    let immutable = (cfg.hashed_names && !entry.is_fallback && entry.hashed_name)
        || cfg
            .immutable_paths
            .iter()
            .any(|p| url_path.starts_with(p.as_str()));
    let cache_control = if immutable {
        cfg.immutable_cache_control.as_str()
    } else {
        cfg.cache_control.as_str()
    };

    let not_modified = match (header("if-none-match"), header("if-modified-since")) {
        (Some(inm), _) => negotiate::none_match(inm, &repr.etag),
        (None, Some(ims)) => negotiate::not_modified_since(ims, repr.modified),
        _ => false,
    };
    let len = repr.len;
    let ask =
        if not_modified || !negotiate::if_range_ok(header("if-range"), &repr.etag, repr.modified) {
            RangeAsk::Full
        } else {
            negotiate::range(header("range"), len)
        };
    let (status, start, count) = match (not_modified, &ask) {
        (true, _) => (304, 0, 0),
        (false, RangeAsk::Full) => (200, 0, len),
        (false, RangeAsk::Part(a, b)) => (206, *a, b - a + 1),
        (false, RangeAsk::Unsatisfiable) => (416, 0, 0),
    };

    // Static values and the representation's pre-made fields: on a cache hit the only
    // allocations left are the header map's.
    let mut resp = ResponseHeader::build(status, Some(12))?;
    resp.insert_header("etag", repr.fields.etag.clone())?;
    resp.insert_header("last-modified", repr.fields.last_modified.clone())?;
    resp.insert_header("cache-control", cache_control)?;
    if !entry.variants.is_empty() {
        resp.insert_header("vary", HeaderValue::from_static("Accept-Encoding"))?;
    }
    if status != 304 {
        resp.insert_header("content-type", entry.content_type.clone())?;
        resp.insert_header(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        )?;
        resp.insert_header("accept-ranges", HeaderValue::from_static("bytes"))?;
        let length = if count == len {
            repr.fields.length.clone()
        } else {
            HeaderValue::from(count)
        };
        resp.insert_header("content-length", length)?;
        if let Some(c) = repr.coding {
            resp.insert_header("content-encoding", HeaderValue::from_static(c.token()))?;
        }
    }
    match status {
        206 => resp.insert_header(
            "content-range",
            format!("bytes {start}-{}/{len}", start + count - 1),
        )?,
        416 => resp.insert_header("content-range", format!("bytes */{len}"))?,
        _ => {}
    }
    respond::common_headers(&mut resp, ctx)?;
    let body = if head_only || count == 0 {
        Body::Empty
    } else if let Some(bytes) = &repr.body {
        let (s, e) = (start as usize, (start + count) as usize);
        Body::Bytes(bytes.slice(s..e))
    } else {
        Body::File {
            path: repr.path.clone(),
            start,
            count,
        }
    };
    Ok(Reply { head: resp, body })
}

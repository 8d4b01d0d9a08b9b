//! Static files served by routes with `static = { root = ... }`: content types, validators
//! (ETag, Last-Modified, 304), single ranges, precompressed siblings and on-the-fly gzip,
//! long-cache headers for content-hashed names, index files, SPA fallback and `try_files`.
//!
//! File system work (resolution, `stat`, reads) runs on tokio's blocking pool. Small files are
//! kept in a bounded in-memory cache whose entries are re-checked against the disk (size and
//! mtime) at most once per [`cache::REVALIDATE`], so hot assets cost no system call.

pub mod cache;
pub mod hashed;
pub mod mime;
pub mod negotiate;
pub mod path;

use std::io::SeekFrom;
use std::sync::Arc;

use bytes::Bytes;
use pingora_error::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use portico_config::{Route, StaticFiles};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use crate::proxy::ctx::RequestCtx;
use crate::proxy::respond;
use cache::{Entry, FileCache, Repr};
use negotiate::{Coding, RangeAsk};

/// What a static route did with a request.
pub enum Outcome {
    /// A response was written.
    Served,
    /// No file matches and the route proxies instead (`try_files`).
    Proxy,
}

/// Serves the request from `cfg.root`, or says it should be proxied.
pub async fn serve(
    files: &FileCache,
    session: &mut Session,
    ctx: &RequestCtx,
    route: &Route,
    cfg: &StaticFiles,
) -> Result<Outcome> {
    let req = session.req_header();
    let method = req.method.clone();
    if method != http::Method::GET && method != http::Method::HEAD {
        if cfg.try_files {
            return Ok(Outcome::Proxy);
        }
        respond::send(
            session,
            ctx,
            405,
            respond::error_body(405, "static files answer GET and HEAD only", ctx),
            &[("allow", "GET, HEAD".to_string())],
        )
        .await?;
        return Ok(Outcome::Served);
    }
    let full_path = req.uri.path().to_string();
    let mut url_path = full_path.as_str();
    if route.strip_prefix {
        url_path = url_path
            .strip_prefix(route.path.trim_end_matches('/'))
            .unwrap_or(url_path);
    }
    let Some(segments) = path::segments(url_path, cfg.dotfiles) else {
        return not_found(session, ctx).await;
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
                        None => return not_found(session, ctx).await,
                    }
                }
                _ => return not_found(session, ctx).await,
            }
        }
    };
    write(session, ctx, cfg, &full_path, &entry).await?;
    Ok(Outcome::Served)
}

async fn not_found(session: &mut Session, ctx: &RequestCtx) -> Result<Outcome> {
    respond::send(
        session,
        ctx,
        404,
        respond::error_body(404, "no such file", ctx),
        &[],
    )
    .await?;
    Ok(Outcome::Served)
}

async fn write(
    session: &mut Session,
    ctx: &RequestCtx,
    cfg: &StaticFiles,
    url_path: &str,
    entry: &Arc<Entry>,
) -> Result<()> {
    let req = session.req_header();
    let header = |n: &str| crate::proxy::header_value(&req.headers, n);
    let head_only = req.method == http::Method::HEAD;
    let accept = header("accept-encoding");
    let available: Vec<Coding> = entry.variants.iter().filter_map(|v| v.coding).collect();
    let repr: &Repr = negotiate::choose(accept, &available)
        .and_then(|c| entry.variants.iter().find(|v| v.coding == Some(c)))
        .unwrap_or(&entry.identity);
    let immutable = (cfg.hashed_names && !entry.is_fallback && hashed::is_hashed(&entry.name))
        || cfg
            .immutable_paths
            .iter()
            .any(|p| url_path.starts_with(p.as_str()));
    let cache_control = if immutable {
        cfg.immutable_cache_control.as_str()
    } else {
        cfg.cache_control.as_str()
    };
    let last_modified = httpdate::fmt_http_date(repr.modified);

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

    let mut resp = ResponseHeader::build(status, Some(12))?;
    resp.insert_header("etag", repr.etag.as_str())?;
    resp.insert_header("last-modified", last_modified)?;
    resp.insert_header("cache-control", cache_control)?;
    if !entry.variants.is_empty() {
        resp.insert_header("vary", "Accept-Encoding")?;
    }
    if status != 304 {
        resp.insert_header("content-type", entry.content_type)?;
        resp.insert_header("x-content-type-options", "nosniff")?;
        resp.insert_header("accept-ranges", "bytes")?;
        resp.insert_header("content-length", count.to_string())?;
        if let Some(c) = repr.coding {
            resp.insert_header("content-encoding", c.token())?;
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
    let no_body = head_only || count == 0;
    session
        .write_response_header(Box::new(resp), no_body)
        .await?;
    if no_body {
        return Ok(());
    }
    if let Some(body) = &repr.body {
        let (s, e) = (start as usize, (start + count) as usize);
        return session
            .write_response_body(Some(body.slice(s..e)), true)
            .await;
    }
    stream_file(session, repr, start, count).await
}

/// Streams `count` bytes of a file from `start`, 64 KiB at a time.
async fn stream_file(session: &mut Session, repr: &Repr, start: u64, count: u64) -> Result<()> {
    let io = |e: std::io::Error| {
        pingora_error::Error::because(
            pingora_error::ErrorType::InternalError,
            "reading a static file",
            e,
        )
    };
    let mut file = tokio::fs::File::open(&repr.path).await.map_err(io)?;
    if start > 0 {
        file.seek(SeekFrom::Start(start)).await.map_err(io)?;
    }
    let mut left = count;
    while left > 0 {
        let want = left.min(64 * 1024) as usize;
        let mut buf = vec![0u8; want];
        let n = file.read(&mut buf).await.map_err(io)?;
        if n == 0 {
            // The file shrank under us: the response cannot be completed honestly.
            return Err(pingora_error::Error::explain(
                pingora_error::ErrorType::InternalError,
                "static file shrank while being sent",
            ));
        }
        buf.truncate(n);
        left -= n as u64;
        session
            .write_response_body(Some(Bytes::from(buf)), left == 0)
            .await?;
    }
    Ok(())
}

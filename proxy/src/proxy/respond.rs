//! Responses Portico writes itself (no route, errors, redirects), with the same common
//! headers as proxied responses. pingora does not run `response_filter` on them, so the
//! request id and the route's response headers are added here.

use bytes::Bytes;
use http::StatusCode;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;

use super::ctx::{LocalFailure, RequestCtx};
use super::edits::Edits;

/// The edits every response gets: the request id and the route's response rules.
pub fn common_edits(ctx: &RequestCtx) -> Edits {
    let mut e = Edits::default();
    add_common_edits(ctx, &mut e);
    e
}

/// [`common_edits`] into edits the caller holds (the proxied answer's hot path: `Edits` is
/// over a kilobyte, and returning it by value copied it twice per request).
pub fn add_common_edits(ctx: &RequestCtx, e: &mut Edits) {
    if let Some(id) = &ctx.request_id {
        e.set(ctx.snap.request_id_name.clone(), id.clone());
        if ctx.snap.config.server.fly_headers {
            e.set(http::HeaderName::from_static("fly-request-id"), id.clone());
        }
    }
    if let Some(i) = ctx.route {
        ctx.snap.route_headers[i].response.apply(e);
    }
}

/// Adds the headers every response gets: the request id and the route's edits.
pub fn common_headers(resp: &mut ResponseHeader, ctx: &RequestCtx) -> Result<()> {
    common_edits(ctx).apply_response(resp)
}

/// The head of a complete plain-text response Portico answers itself, with the common
/// headers; `body_len` is its `Content-Length` (also for HEAD, which sends no body).
pub fn local_head(
    ctx: &RequestCtx,
    status: u16,
    body_len: usize,
    extra: &[(&'static str, String)],
) -> Result<ResponseHeader> {
    let mut resp = ResponseHeader::build(status, Some(6 + extra.len()))?;
    resp.insert_header("content-type", "text/plain; charset=utf-8")?;
    resp.insert_header("content-length", body_len.to_string())?;
    if status >= 400 {
        resp.insert_header("cache-control", "no-store")?;
    }
    for (name, value) in extra {
        resp.insert_header(*name, value.as_str())?;
    }
    common_headers(&mut resp, ctx)?;
    Ok(resp)
}

/// Writes a complete plain-text response through pingora. The body is not sent for HEAD
/// requests.
pub async fn send(
    session: &mut Session,
    ctx: &RequestCtx,
    status: u16,
    body: String,
    extra: &[(&'static str, String)],
) -> Result<()> {
    let resp = local_head(ctx, status, body.len(), extra)?;
    let head_only = session.req_header().method == http::Method::HEAD;
    session
        .write_response_header(Box::new(resp), head_only)
        .await?;
    if !head_only {
        session
            .write_response_body(Some(Bytes::from(body)), true)
            .await?;
    }
    Ok(())
}

/// The text of an error body: status line, what happened, and the request id to quote.
pub fn error_body(status: u16, message: &str, ctx: &RequestCtx) -> String {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let id = ctx
        .request_id
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    format!("{status} {reason}\nportico: {message}\nrequest id: {id}\n")
}

/// The body and extra headers of a [`LocalFailure`]'s response.
pub fn failure_parts(ctx: &RequestCtx, f: &LocalFailure) -> (String, Vec<(&'static str, String)>) {
    let body = error_body(f.status, &f.message, ctx);
    let extra = match (&ctx.rate_limit, f.retry_after) {
        (Some(d), _) if f.reason == crate::ratelimit::REASON => {
            crate::ratelimit::headers(d).to_vec()
        }
        (_, Some(s)) => vec![("retry-after", s.to_string())],
        _ => Vec::new(),
    };
    (body, extra)
}

/// Writes a [`LocalFailure`] as a response through pingora.
pub async fn send_failure(session: &mut Session, ctx: &RequestCtx, f: &LocalFailure) -> Result<()> {
    if is_grpc(session.req_header()) {
        return send_grpc_failure(session, ctx, f).await;
    }
    let (body, extra) = failure_parts(ctx, f);
    send(session, ctx, f.status, body, &extra).await
}

/// Whether a request is gRPC (`content-type: application/grpc...`).
fn is_grpc(req: &pingora_http::RequestHeader) -> bool {
    req.headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC status for an HTTP status, as gRPC's HTTP-to-gRPC mapping gives it (what a gRPC
/// client would conclude from the HTTP status alone).
pub fn grpc_status(http: u16) -> u8 {
    match http {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        413 | 431 => 8,        // RESOURCE_EXHAUSTED
        408 => 4,              // DEADLINE_EXCEEDED
        _ => 2,                // UNKNOWN
    }
}

/// Portico's own answer to a gRPC request: a trailers-only response (HTTP 200,
/// `content-type: application/grpc`, `grpc-status` and a percent-encoded `grpc-message`), so a
/// gRPC client reports Portico's reason instead of a framing error on a text body.
async fn send_grpc_failure(
    session: &mut Session,
    ctx: &RequestCtx,
    f: &LocalFailure,
) -> Result<()> {
    let mut resp = ResponseHeader::build(200, Some(6))?;
    resp.insert_header("content-type", "application/grpc")?;
    resp.insert_header("grpc-status", grpc_status(f.status).to_string())?;
    let message = format!("portico: {} ({})", f.message, f.reason);
    resp.insert_header("grpc-message", grpc_message(&message))?;
    if let Some(s) = f.retry_after {
        resp.insert_header("retry-after", s.to_string())?;
    }
    common_headers(&mut resp, ctx)?;
    session.write_response_header(Box::new(resp), true).await
}

/// `grpc-message` percent-encoding: every byte outside printable ASCII, and `%` itself.
fn grpc_message(m: &str) -> String {
    let mut out = String::with_capacity(m.len());
    for b in m.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// How a pingora error ends a request: the status to send (0 when the client is gone) and
/// the explanation for the body.
pub fn classify(e: &Error, ctx: &RequestCtx) -> (u16, &'static str, String) {
    let upstream = ctx.upstream_label();
    let detail = || ctx.last_error.clone().unwrap_or_else(|| e.to_string());
    match e.etype() {
        ErrorType::HTTPStatus(code) => (*code, "status", e.reason_str().to_string()),
        _ => match e.esource() {
            ErrorSource::Upstream => match e.etype() {
                ErrorType::ReadTimedout => (
                    504,
                    "upstream_timeout",
                    format!(
                        "upstream \"{upstream}\" did not answer in time: {}",
                        detail()
                    ),
                ),
                ErrorType::ConnectTimedout
                | ErrorType::ConnectRefused
                | ErrorType::ConnectNoRoute
                | ErrorType::ConnectError
                | ErrorType::TLSHandshakeFailure
                | ErrorType::TLSHandshakeTimedout
                | ErrorType::InvalidCert
                | ErrorType::HandshakeError
                | ErrorType::SocketError => (
                    502,
                    "upstream_unreachable",
                    format!("upstream \"{upstream}\" unreachable: {}", detail()),
                ),
                _ => (
                    502,
                    "upstream_error",
                    format!("upstream \"{upstream}\" failed: {}", detail()),
                ),
            },
            ErrorSource::Downstream => match e.etype() {
                ErrorType::ReadError
                | ErrorType::WriteError
                | ErrorType::ConnectionClosed
                | ErrorType::ReadTimedout
                | ErrorType::WriteTimedout => (0, "client_gone", e.to_string()),
                _ => (400, "bad_request", format!("bad request: {e}")),
            },
            ErrorSource::Internal | ErrorSource::Unset => {
                (500, "internal", format!("internal error: {e}"))
            }
        },
    }
}

/// Records a local failure and returns the error that makes pingora end the request.
pub fn fail(ctx: &mut RequestCtx, failure: LocalFailure) -> Box<Error> {
    let e = Error::explain(
        ErrorType::HTTPStatus(failure.status),
        failure.message.clone(),
    );
    ctx.failure = Some(failure);
    e
}

/// A connect failure in words (`connection refused`, `timed out after 5s`).
pub fn describe_connect_error(e: &Error, timeout: std::time::Duration) -> String {
    match e.etype() {
        ErrorType::ConnectRefused => "connection refused".to_string(),
        ErrorType::ConnectTimedout => format!(
            "no answer within the connect timeout ({})",
            portico_config::units::format_duration(timeout)
        ),
        ErrorType::ConnectNoRoute => "no route to host".to_string(),
        ErrorType::TLSHandshakeFailure | ErrorType::InvalidCert | ErrorType::HandshakeError => {
            format!("TLS handshake failed: {}", e.root_cause())
        }
        ErrorType::TLSHandshakeTimedout => "TLS handshake timed out".to_string(),
        _ => e.root_cause().to_string(),
    }
}

/// Longest time spent discarding a request body after answering early.
pub const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(5);
/// Longest wait for the next piece of that body.
pub const LINGER_READ: std::time::Duration = std::time::Duration::from_secs(1);

#[cfg(test)]
mod grpc_tests {
    use super::*;

    #[test]
    fn grpc_statuses_and_messages() {
        assert_eq!(grpc_status(503), 14);
        assert_eq!(grpc_status(404), 12);
        assert_eq!(grpc_status(429), 14);
        assert_eq!(grpc_status(500), 2);
        assert_eq!(grpc_message("a 100% ok\né"), "a 100%25 ok%0A%C3%A9");
    }
}

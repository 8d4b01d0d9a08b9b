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
    if let Some(id) = &ctx.request_id {
        e.set(ctx.snap.request_id_name.clone(), id.clone());
        if ctx.snap.config.server.fly_headers {
            e.set(http::HeaderName::from_static("fly-request-id"), id.clone());
        }
    }
    if let Some(i) = ctx.route {
        ctx.snap.route_headers[i].response.apply(&mut e);
    }
    e
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
    let (body, extra) = failure_parts(ctx, f);
    send(session, ctx, f.status, body, &extra).await
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

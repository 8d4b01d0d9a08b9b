//! One health check against one backend: a TCP connect, or an HTTP(S) request whose status
//! must be in the expected set. Redirects are not followed; the whole check has one timeout.
//!
//! A small client of its own rather than pingora's connector: traffic does not use pingora's
//! connector either (Portico's HTTP/1.1 engine connects and pools itself), and a check is one
//! request per interval on a fresh connection, which needs neither a pool nor a session type.
//! What matters is that a check sees what traffic sees: it uses the same TLS client settings
//! (`tls_client`: the system's store or the upstream's `tls_ca`) and, unless it names its own,
//! the upstream's `tls_server_name`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use portico_config::{Check, CheckKind};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::upstream::health::CheckResult;

/// Largest response head read from a check.
const MAX_HEAD: usize = 8192;

/// Runs `check` against `addr` (the backend's address; `check.port` overrides its port).
/// Returns the result in words and the round trip.
pub async fn probe(addr: SocketAddr, check: &Check) -> (CheckResult, Duration) {
    let target = SocketAddr::new(addr.ip(), check.port.unwrap_or(addr.port()));
    let start = Instant::now();
    let result = match tokio::time::timeout(check.timeout, run(target, check)).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "no answer within {}",
            portico_config::units::format_duration(check.timeout)
        )),
    };
    (result, start.elapsed())
}

async fn run(target: SocketAddr, check: &Check) -> CheckResult {
    let tcp = TcpStream::connect(target)
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
            _ => format!("connect failed: {e}"),
        })?;
    if check.kind == CheckKind::Tcp {
        return Ok("TCP connect ok".to_string());
    }
    let _ = tcp.set_nodelay(true);
    if check.https {
        let name = check
            .tls_server_name
            .clone()
            .unwrap_or_else(|| target.ip().to_string());
        let server_name = ServerName::try_from(name.clone())
            .map_err(|e| format!("invalid TLS server name {name:?}: {e}"))?;
        let config = crate::tls_client::check_config(check);
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(server_name, tcp)
            .await
            .map_err(|e| format!("TLS handshake failed: {e}"))?;
        http_exchange(tls, target, check).await
    } else {
        http_exchange(tcp, target, check).await
    }
}

async fn http_exchange<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    target: SocketAddr,
    check: &Check,
) -> CheckResult {
    let host = check
        .tls_server_name
        .clone()
        .unwrap_or_else(|| target.to_string());
    let mut req = format!(
        "{} {} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: portico-health-check\r\nAccept: */*\r\nConnection: close\r\n",
        check.method, check.path
    );
    for (k, v) in &check.headers {
        req.push_str(k);
        req.push_str(": ");
        req.push_str(v);
        req.push_str("\r\n");
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("sending the check failed: {e}"))?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    let status = loop {
        let n = s
            .read(&mut chunk)
            .await
            .map_err(|e| format!("reading the answer failed: {e}"))?;
        if n == 0 {
            return Err("connection closed before a status line".to_string());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            break parse_status(&buf[..end])?;
        }
        if buf.len() > MAX_HEAD {
            return Err("no status line in the first 8 KiB".to_string());
        }
    };
    if check.expect_status.iter().any(|m| m.matches(status)) {
        Ok(format!("HTTP {status}"))
    } else {
        Err(format!("HTTP {status}"))
    }
}

/// The status code of an HTTP/1.x status line.
fn parse_status(line: &[u8]) -> Result<u16, String> {
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => code
            .parse::<u16>()
            .ok()
            .filter(|c| (100..=599).contains(c))
            .ok_or_else(|| format!("bad status line {:?}", line.trim())),
        _ => Err(format!("not an HTTP response: {:?}", line.trim())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r"), Ok(200));
        assert_eq!(parse_status(b"HTTP/1.0 503 Service Unavailable"), Ok(503));
        assert!(parse_status(b"SSH-2.0-OpenSSH").is_err());
        assert!(parse_status(b"HTTP/1.1 abc").is_err());
        assert!(parse_status(b"HTTP/1.1 999 x").is_err());
    }
}

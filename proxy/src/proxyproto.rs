//! PROXY protocol (v1 text and v2 binary): read on listeners with `proxy_protocol = true`, so
//! the client address behind a TCP load balancer is the real one in logs, forwarding headers,
//! stickiness, IP rules and rate limits; and sent to upstreams with `send_proxy_protocol`.
//!
//! A connection from a configured source must start with a header (within the listener's
//! `header_read_timeout`), which is consumed before TLS or HTTP; a v2 `LOCAL` command or a v1
//! `UNKNOWN` (the balancer's own health checks) keeps the balancer's address. A connection
//! from anywhere else is served as a direct client, and refused if it starts with a PROXY
//! header: an untrusted source cannot claim another address. Parsing is the `ppp` crate's
//! (both versions, partial-input aware); reading only peeks until the header is complete,
//! then consumes exactly its bytes, so nothing of what follows is lost.

use std::net::SocketAddr;
use std::time::Duration;

use ppp::{HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// Longest header accepted (v1 is at most 107 bytes; v2 with TLVs may be longer).
const MAX_HEADER: usize = 1024;
const V2_SIGNATURE: &[u8] = b"\r\n\r\n\0\r\nQUIT\n";
const V1_PREFIX: &[u8] = b"PROXY ";

/// Why a connection was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The source must send a header and did not (in time, or a valid one).
    Missing(String),
    /// A source not allowed to send one did.
    Untrusted,
}

fn source(h: &HeaderResult<'_>) -> Option<Option<SocketAddr>> {
    match h {
        HeaderResult::V1(Ok(h)) => Some(match h.addresses {
            ppp::v1::Addresses::Tcp4(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Tcp6(a) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            ppp::v1::Addresses::Unknown => None,
        }),
        HeaderResult::V2(Ok(h)) => Some(match (h.command, h.addresses) {
            (ppp::v2::Command::Local, _) => None,
            (_, ppp::v2::Addresses::IPv4(a)) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            (_, ppp::v2::Addresses::IPv6(a)) => {
                Some(SocketAddr::from((a.source_address, a.source_port)))
            }
            _ => None,
        }),
        _ => None,
    }
}

fn header_len(h: &HeaderResult<'_>) -> usize {
    match h {
        HeaderResult::V1(Ok(h)) => h.header.len(),
        HeaderResult::V2(Ok(h)) => h.len(),
        _ => 0,
    }
}

/// Reads the header a trusted source must send; returns the client address it gives (`None`:
/// keep the connection's own).
pub async fn read(tcp: &mut TcpStream, timeout: Duration) -> Result<Option<SocketAddr>, Refused> {
    let mut buf = vec![0u8; MAX_HEADER];
    let work = async {
        loop {
            let n = match tcp.peek(&mut buf).await {
                Ok(0) => return Err(Refused::Missing("closed before a PROXY header".into())),
                Ok(n) => n,
                Err(e) => return Err(Refused::Missing(e.to_string())),
            };
            let parsed = HeaderResult::parse(&buf[..n]);
            if parsed.is_incomplete() {
                if n == MAX_HEADER {
                    return Err(Refused::Missing("PROXY header too long".into()));
                }
                // More is on its way; peek again shortly.
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            let Some(addr) = source(&parsed) else {
                return Err(Refused::Missing(format!("not a PROXY header: {parsed:?}")));
            };
            let len = header_len(&parsed);
            return Ok((addr, len));
        }
    };
    let (addr, len) = match tokio::time::timeout(timeout, work).await {
        Ok(r) => r?,
        Err(_) => return Err(Refused::Missing("no PROXY header in time".into())),
    };
    let mut consumed = vec![0u8; len];
    tcp.read_exact(&mut consumed)
        .await
        .map_err(|e| Refused::Missing(e.to_string()))?;
    Ok(addr)
}

/// For a source not allowed to send a header: `Err` when the connection starts with one.
pub async fn refuse_spoofed(tcp: &TcpStream, timeout: Duration) -> Result<(), Refused> {
    let mut buf = [0u8; 12];
    let work = async {
        loop {
            let n = match tcp.peek(&mut buf).await {
                Ok(0) | Err(_) => return Ok(()),
                Ok(n) => n,
            };
            let v1 = n.min(V1_PREFIX.len());
            let v2 = n.min(V2_SIGNATURE.len());
            let maybe_v1 = buf[..v1] == V1_PREFIX[..v1];
            let maybe_v2 = buf[..v2] == V2_SIGNATURE[..v2];
            if (maybe_v1 && n >= V1_PREFIX.len()) || (maybe_v2 && n >= V2_SIGNATURE.len()) {
                return Err(Refused::Untrusted);
            }
            if !maybe_v1 && !maybe_v2 {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    };
    // A client that sends nothing is the header timeout's business downstream.
    tokio::time::timeout(timeout, work).await.unwrap_or(Ok(()))
}

/// The header announcing that `client` connected to `local` (a v1 header with mixed address
/// families gives both as IPv6, IPv4-mapped, as v1 allows one family per line).
pub fn header(
    version: portico_config::ProxyProtocolVersion,
    client: SocketAddr,
    local: SocketAddr,
) -> Vec<u8> {
    let v6 = |a: SocketAddr| match a {
        SocketAddr::V4(v4) => SocketAddr::from((v4.ip().to_ipv6_mapped(), v4.port())),
        v6 => v6,
    };
    let (src, dst) = if client.is_ipv4() == local.is_ipv4() {
        (client, local)
    } else {
        (v6(client), v6(local))
    };
    match version {
        portico_config::ProxyProtocolVersion::V1 => {
            let family = if src.is_ipv4() { "TCP4" } else { "TCP6" };
            format!(
                "PROXY {family} {} {} {} {}\r\n",
                src.ip(),
                dst.ip(),
                src.port(),
                dst.port()
            )
            .into_bytes()
        }
        portico_config::ProxyProtocolVersion::V2 => {
            let mut h = V2_SIGNATURE.to_vec();
            h.push(0x21); // version 2, PROXY
            match (src, dst) {
                (SocketAddr::V4(s), SocketAddr::V4(d)) => {
                    h.push(0x11); // TCP over IPv4
                    h.extend_from_slice(&12u16.to_be_bytes());
                    h.extend_from_slice(&s.ip().octets());
                    h.extend_from_slice(&d.ip().octets());
                    h.extend_from_slice(&s.port().to_be_bytes());
                    h.extend_from_slice(&d.port().to_be_bytes());
                }
                (s, d) => {
                    let ip6 = |a: SocketAddr| match a.ip() {
                        std::net::IpAddr::V6(ip) => ip.octets(),
                        std::net::IpAddr::V4(ip) => ip.to_ipv6_mapped().octets(),
                    };
                    h.push(0x21); // TCP over IPv6
                    h.extend_from_slice(&36u16.to_be_bytes());
                    h.extend_from_slice(&ip6(s));
                    h.extend_from_slice(&ip6(d));
                    h.extend_from_slice(&s.port().to_be_bytes());
                    h.extend_from_slice(&d.port().to_be_bytes());
                }
            }
            h
        }
    }
}

/// pingora's connector hook for upstreams with `send_proxy_protocol`: connects and writes the
/// request's header before anything else (TLS included) goes on the connection.
#[derive(Debug)]
pub struct SendHeader {
    /// The header bytes.
    pub header: Vec<u8>,
}

#[async_trait::async_trait]
impl pingora_core::connectors::L4Connect for SendHeader {
    async fn connect(
        &self,
        addr: &pingora_core::protocols::l4::socket::SocketAddr,
    ) -> pingora_error::Result<pingora_core::protocols::l4::stream::Stream> {
        use pingora_error::{ErrorType, OrErr};
        use tokio::io::AsyncWriteExt;
        let Some(inet) = addr.as_inet() else {
            return pingora_error::Error::e_explain(
                ErrorType::ConnectError,
                "PROXY protocol needs a TCP backend",
            );
        };
        let mut tcp = TcpStream::connect(inet)
            .await
            .or_err(ErrorType::ConnectRefused, "connecting to the backend")?;
        let _ = tcp.set_nodelay(true);
        tcp.write_all(&self.header)
            .await
            .or_err(ErrorType::WriteError, "sending the PROXY header")?;
        Ok(tcp.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn v1_and_v2_headers_give_the_client_and_leave_the_rest() {
        let (mut c, mut s) = pair().await;
        c.write_all(b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\nGET / HTTP/1.1\r\n")
            .await
            .unwrap();
        let a = read(&mut s, Duration::from_secs(1)).await.unwrap();
        assert_eq!(a, Some("203.0.113.7:51000".parse().unwrap()));
        let mut rest = [0u8; 16];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"GET / HTTP/1.1\r\n");

        let (mut c, mut s) = pair().await;
        let h = ppp::v2::Builder::with_addresses(
            ppp::v2::Version::Two | ppp::v2::Command::Proxy,
            ppp::v2::Protocol::Stream,
            (
                "[2001:db8::9]:4000".parse::<SocketAddr>().unwrap(),
                "[2001:db8::1]:443".parse::<SocketAddr>().unwrap(),
            ),
        )
        .build()
        .unwrap();
        // In two pieces.
        c.write_all(&h[..10]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        c.write_all(&h[10..]).await.unwrap();
        c.write_all(b"\x16\x03\x01").await.unwrap();
        let a = read(&mut s, Duration::from_secs(1)).await.unwrap();
        assert_eq!(a, Some("[2001:db8::9]:4000".parse().unwrap()));
        let mut rest = [0u8; 3];
        s.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"\x16\x03\x01");
    }

    #[test]
    fn outbound_headers_parse_back() {
        use portico_config::ProxyProtocolVersion::{V1, V2};
        let c: SocketAddr = "203.0.113.7:51000".parse().unwrap();
        let l: SocketAddr = "10.0.0.1:443".parse().unwrap();
        assert_eq!(
            header(V1, c, l),
            b"PROXY TCP4 203.0.113.7 10.0.0.1 51000 443\r\n"
        );
        let l6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let mixed = String::from_utf8(header(V1, c, l6)).unwrap();
        assert_eq!(
            mixed,
            "PROXY TCP6 ::ffff:203.0.113.7 2001:db8::1 51000 443\r\n"
        );
        for (client, local) in [(c, l), (c, l6)] {
            let h = header(V2, client, local);
            let parsed = HeaderResult::parse(&h);
            let got = source(&parsed).unwrap().unwrap();
            assert_eq!(got.port(), 51000);
            assert_eq!(header_len(&parsed), h.len());
        }
    }

    #[tokio::test]
    async fn missing_or_garbage_headers_are_refused_and_spoofing_is_caught() {
        let (mut c, mut s) = pair().await;
        c.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        assert!(matches!(
            read(&mut s, Duration::from_secs(1)).await,
            Err(Refused::Missing(_))
        ));
        let (_c, mut s) = pair().await;
        assert!(matches!(
            read(&mut s, Duration::from_millis(100)).await,
            Err(Refused::Missing(_))
        ));
        let (mut c, s) = pair().await;
        c.write_all(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n")
            .await
            .unwrap();
        assert_eq!(
            refuse_spoofed(&s, Duration::from_secs(1)).await,
            Err(Refused::Untrusted)
        );
        let (mut c, s) = pair().await;
        c.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(refuse_spoofed(&s, Duration::from_secs(1)).await, Ok(()));
    }
}

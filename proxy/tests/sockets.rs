//! Socket options as configured, read back from real sockets: on the listening socket and the
//! connections it accepts (getsockopt), on upstream connections, and in a running Portico's own
//! sockets (the kernel's keepalive timers, as `ss` shows them).

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::*;
use socket2::SockRef;

fn listener(extra: &str) -> portico_config::Listener {
    let text = format!(
        "[[listeners]]\nname = \"web\"\n{extra}\n[upstreams.app]\nbackends = [\"127.0.0.1:1\"]\n[[routes]]\nupstream = \"app\"\n"
    );
    portico_config::parse(&text, "t.toml", None, &portico_config::ProcessEnv)
        .unwrap_or_else(|e| panic!("{e}"))
        .config
        .listeners
        .remove(0)
}

#[test]
fn listener_options_are_set_and_accepted_connections_inherit_them() {
    let l = listener(
        "address = \"127.0.0.1:0\"\nreuse_port = true\nbacklog = 77\n\
         tcp_keepalive = { idle = \"45s\", interval = \"7s\", count = 3 }\n\
         send_buffer = \"64KiB\"\nrecv_buffer = \"128KiB\"\nfreebind = true",
    );
    let ls = portico::internals::bind(&l).unwrap();
    let s = SockRef::from(&ls);
    assert!(s.reuse_port().unwrap());
    assert!(s.freebind_v4().unwrap());
    let addr = ls.local_addr().unwrap();
    let _client = TcpStream::connect(addr).unwrap();
    ls.set_nonblocking(false).unwrap();
    let (accepted, _) = ls.accept().unwrap();
    for (what, sock) in [
        ("listening", SockRef::from(&ls)),
        ("accepted", SockRef::from(&accepted)),
    ] {
        assert!(sock.tcp_nodelay().unwrap(), "{what}: nodelay");
        assert!(sock.keepalive().unwrap(), "{what}: keepalive");
        assert_eq!(
            sock.tcp_keepalive_time().unwrap(),
            Duration::from_secs(45),
            "{what}"
        );
        assert_eq!(
            sock.tcp_keepalive_interval().unwrap(),
            Duration::from_secs(7),
            "{what}"
        );
        assert_eq!(sock.tcp_keepalive_retries().unwrap(), 3, "{what}");
        // The kernel doubles the size asked for (bookkeeping overhead), as socket(7) says.
        assert_eq!(sock.send_buffer_size().unwrap(), 2 * 64 * 1024, "{what}");
        assert_eq!(sock.recv_buffer_size().unwrap(), 2 * 128 * 1024, "{what}");
    }
}

#[test]
fn defaults_keepalive_on_nodelay_on_buffers_autotuned() {
    let l = listener("address = \"127.0.0.1:0\"");
    let ls = portico::internals::bind(&l).unwrap();
    let s = SockRef::from(&ls);
    assert!(s.tcp_nodelay().unwrap());
    assert!(s.keepalive().unwrap());
    assert_eq!(s.tcp_keepalive_time().unwrap(), Duration::from_secs(60));
    assert_eq!(s.tcp_keepalive_interval().unwrap(), Duration::from_secs(15));
    assert_eq!(s.tcp_keepalive_retries().unwrap(), 4);
    assert!(!s.reuse_port().unwrap());
    let off = listener("address = \"127.0.0.1:0\"\ntcp_keepalive = false\ntcp_nodelay = false");
    let ls = portico::internals::bind(&off).unwrap();
    let s = SockRef::from(&ls);
    assert!(!s.keepalive().unwrap());
    assert!(!s.tcp_nodelay().unwrap());
}

#[test]
fn ipv6_only_binds_as_asked() {
    // (Binding a specific IPv6 address such as ::1 makes the socket IPv6-only in Linux
    // whatever was asked, so the dual-stack default of `[::]` is not observable on loopback.)
    let only = listener("address = \"[::1]:0\"\nipv6_only = true");
    let ls = portico::internals::bind(&only).unwrap();
    assert!(SockRef::from(&ls).only_v6().unwrap());
    let only6 = listener("address = \"[::1]:0\"\nipv6_only = true\nfreebind = true");
    let ls = portico::internals::bind(&only6).unwrap();
    assert!(SockRef::from(&ls).freebind_v6().unwrap());
}

#[test]
fn defer_accept_waits_for_the_first_bytes() {
    let l = listener("address = \"127.0.0.1:0\"\ntcp_defer_accept = \"5s\"");
    let ls = portico::internals::bind(&l).unwrap();
    let addr = ls.local_addr().unwrap();
    let mut client = TcpStream::connect(addr).unwrap();
    // Connected, but nothing sent: the kernel holds the connection back from accept().
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        ls.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock
    );
    client.write_all(b"GET / HTTP/1.1\r\n").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    loop {
        match ls.accept() {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "not accepted after data"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("{e}"),
        }
    }
}

#[test]
fn bad_socket_options_are_config_errors() {
    let text = "[[listeners]]\nname = \"web\"\naddress = \"127.0.0.1:0\"\n\
        tcp_keepalive = { idle = \"0s\", count = 500 }\nsend_buffer = 10\nipv6_only = true\n\
        tcp_defer_accept = \"2h\"\n\
        [upstreams.app]\nbackends = [\"127.0.0.1:1\"]\nrecv_buffer = \"1GiB\"\ntcp_keepalive = \"sometimes\"\n\
        [[routes]]\nupstream = \"app\"\n";
    let e = portico_config::parse(text, "t.toml", None, &portico_config::ProcessEnv)
        .err()
        .unwrap()
        .to_string();
    for want in [
        "listeners[0].tcp_keepalive.idle: out of range",
        "listeners[0].tcp_keepalive.count: out of range",
        "listeners[0].send_buffer: 10 bytes is out of range",
        "listeners[0].ipv6_only: only applies to an IPv6 address",
        "listeners[0].tcp_defer_accept: out of range",
        "upstreams.app.recv_buffer",
        "upstreams.app.tcp_keepalive",
    ] {
        assert!(e.contains(want), "missing {want:?} in:\n{e}");
    }
}

/// `ss -tno` lines for established TCP connections with `port` on `side` ("sport"/"dport").
fn ss(side: &str, port: u16) -> String {
    let out = std::process::Command::new("ss")
        .args([
            "-tnoH",
            "state",
            "established",
            &format!("( {side} = :{port} )"),
        ])
        .output()
        .expect("ss (iproute2) is needed for this test");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_portico_keeps_alive_client_and_upstream_connections() {
    let origin = Origin::named("app").await;
    let p = Portico::start(&format!(
        "[[listeners]]\nname = \"http\"\naddress = \"127.0.0.1:0\"\n\
         tcp_keepalive = {{ idle = \"41s\" }}\n\
         [upstreams.app]\nbackends = [\"{}\"]\ntcp_keepalive = {{ idle = \"23s\", interval = \"5s\", count = 2 }}\n",
        origin.addr
    ));
    let addr: SocketAddr = p.addr("http");
    // One keep-alive client connection, which leaves one pooled upstream connection.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut s, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut s).await;
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    // The kernel's keepalive timer on each side counts down from the configured idle time.
    let timer = |line: &str| -> f64 {
        let t = line
            .split("timer:(keepalive,")
            .nth(1)
            .unwrap_or_else(|| panic!("no keepalive timer: {line}"));
        let secs = t.split(['s', ',']).next().unwrap();
        let (n, unit) = if let Some(m) = secs.strip_suffix("m") {
            (m, 60.0)
        } else {
            (secs, 1.0)
        };
        n.trim_end_matches("sec").parse::<f64>().unwrap() * unit
    };
    let client_side = ss("sport", addr.port());
    let line = client_side
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no accepted connection: {client_side:?}"));
    let t = timer(line);
    assert!(t > 35.0 && t <= 41.0, "client side: {line}");
    let upstream_side = ss("dport", origin.addr.port());
    let line = upstream_side
        .lines()
        .find(|l| l.contains("keepalive"))
        .unwrap_or_else(|| panic!("no upstream connection with keepalive: {upstream_side:?}"));
    let t = timer(line);
    assert!(t > 17.0 && t <= 23.0, "upstream side: {line}");
}

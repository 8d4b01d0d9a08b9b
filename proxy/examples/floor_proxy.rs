//! The floor for benchmarks: the least an HTTP/1.1 keep-alive proxy on tokio can do (one
//! current-thread runtime per thread with its own `SO_REUSEPORT` listener, a per-thread list
//! of idle upstream connections, one read and one write per direction, Content-Length
//! framing only, no header rewriting). Not a proxy anyone should run: it shows what the
//! kernel and tokio cost per request, so Portico's own cost can be told apart.
//!
//! Usage: `floor_proxy LISTEN_ADDR ORIGIN_ADDR THREADS`

use std::cell::RefCell;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

thread_local! {
    static IDLE: RefCell<Vec<TcpStream>> = const { RefCell::new(Vec::new()) };
}

/// Bytes up to the end of the head, and the Content-Length, once a head is complete.
fn head_end(buf: &[u8], response: bool) -> Option<(usize, usize)> {
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let (n, headers) = if response {
        let mut r = httparse::Response::new(&mut fields);
        match r.parse(buf) {
            Ok(httparse::Status::Complete(n)) => (n, r.headers.to_vec()),
            _ => return None,
        }
    } else {
        let mut r = httparse::Request::new(&mut fields);
        match r.parse(buf) {
            Ok(httparse::Status::Complete(n)) => (n, r.headers.to_vec()),
            _ => return None,
        }
    };
    let len = headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
        .unwrap_or(0);
    Some((n, len))
}

async fn read_message(s: &mut TcpStream, buf: &mut Vec<u8>, response: bool) -> Option<usize> {
    buf.clear();
    loop {
        if let Some((n, len)) = head_end(buf, response) {
            while buf.len() < n + len {
                fill(s, buf).await?;
            }
            return Some(n + len);
        }
        fill(s, buf).await?;
    }
}

/// One read straight into the buffer's spare room (no zeroed chunk, no copy).
async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16384);
    }
    match s.read_buf(buf).await {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(()),
    }
}

async fn serve(mut client: TcpStream, origin: SocketAddr) {
    let _ = client.set_nodelay(true);
    let mut req = Vec::with_capacity(4096);
    let mut resp = Vec::with_capacity(4096);
    while let Some(n) = read_message(&mut client, &mut req, false).await {
        let mut up = match IDLE.with(|i| i.borrow_mut().pop()) {
            Some(u) => u,
            None => match TcpStream::connect(origin).await {
                Ok(u) => {
                    let _ = u.set_nodelay(true);
                    u
                }
                Err(_) => return,
            },
        };
        if up.write_all(&req[..n]).await.is_err() {
            return;
        }
        let Some(m) = read_message(&mut up, &mut resp, true).await else {
            return;
        };
        if client.write_all(&resp[..m]).await.is_err() {
            return;
        }
        IDLE.with(|i| i.borrow_mut().push(up));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (Some(listen), Some(origin), Some(threads)) = (args.get(1), args.get(2), args.get(3))
    else {
        eprintln!("usage: floor_proxy LISTEN ORIGIN THREADS");
        std::process::exit(2);
    };
    let listen: SocketAddr = listen.parse().unwrap_or_else(|e| panic!("listen: {e}"));
    let origin: SocketAddr = origin.parse().unwrap_or_else(|e| panic!("origin: {e}"));
    let threads: usize = threads.parse().unwrap_or(1);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap_or_else(|e| panic!("runtime: {e}"));
                rt.block_on(async move {
                    let sock = socket2::Socket::new(
                        socket2::Domain::for_address(listen),
                        socket2::Type::STREAM,
                        None,
                    )
                    .unwrap_or_else(|e| panic!("socket: {e}"));
                    let _ = sock.set_reuse_address(true);
                    let _ = sock.set_reuse_port(true);
                    sock.set_nonblocking(true)
                        .unwrap_or_else(|e| panic!("nonblocking: {e}"));
                    sock.bind(&listen.into())
                        .unwrap_or_else(|e| panic!("bind: {e}"));
                    sock.listen(4096).unwrap_or_else(|e| panic!("listen: {e}"));
                    let l = TcpListener::from_std(sock.into())
                        .unwrap_or_else(|e| panic!("register: {e}"));
                    while let Ok((c, _)) = l.accept().await {
                        tokio::spawn(serve(c, origin));
                    }
                });
            })
        })
        .collect();
    for h in handles {
        let _ = h.join();
    }
}

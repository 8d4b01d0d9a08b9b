//! Load generator for the idle-WebSocket case of `loadtest/compare`: a WebSocket echo server, and N clients that
//! connect through a proxy, exchange one message each, then stay idle.
//!
//! `ws_idle server ADDR` serves until killed. `ws_idle clients PROXY_ADDR N HOLD_SECS` opens N
//! connections (64 handshakes at a time), prints `ready N`, holds them HOLD_SECS, then exits.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

fn raise_nofile() {
    if let Ok((_, hard)) = rlimit::Resource::NOFILE.get() {
        let _ = rlimit::Resource::NOFILE.set(hard, hard);
    }
}

async fn server(addr: &str) {
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                return;
            };
            while let Some(Ok(m)) = ws.next().await {
                if (m.is_text() || m.is_binary()) && ws.send(m).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn clients(proxy: &str, n: usize, hold: u64) {
    let url = format!("ws://{proxy}/");
    let conns: Vec<_> = futures::stream::iter(0..n)
        .map(|i| {
            let url = url.clone();
            async move {
                let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
                    .await
                    .unwrap_or_else(|e| panic!("connection {i}: {e}"));
                ws.send(Message::text("hello")).await.expect("send");
                let _ = ws.next().await;
                ws
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    println!("ready {}", conns.len());
    tokio::time::sleep(Duration::from_secs(hold)).await;
    drop(conns);
}

#[tokio::main]
async fn main() {
    raise_nofile();
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("server") => server(&args[2]).await,
        Some("clients") => {
            let n = args[3].parse().expect("N");
            let hold = args[4].parse().expect("HOLD_SECS");
            clients(&args[2], n, hold).await
        }
        _ => eprintln!("usage: ws_idle server ADDR | ws_idle clients PROXY_ADDR N HOLD_SECS"),
    }
}

//! gRPC through Portico: a real gRPC server (tonic's server-side protocol, with prost messages,
//! on an h2c-only hyper server) behind an upstream with `http2 = true` on plain HTTP, and
//! tonic clients over h2c and over TLS (h2 by ALPN). Unary and server-streaming calls, with
//! statuses and custom trailers carried intact.
#![allow(clippy::unwrap_used)]

mod common;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use common::*;
use http::uri::PathAndQuery;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Response, Status};
use tonic_prost::ProstCodec;

#[derive(Clone, PartialEq, prost::Message)]
struct Msg {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(uint32, tag = "2")]
    n: u32,
}

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// `/test.Echo/Say`: echoes the text with the server's name; "fail" gets NOT_FOUND.
#[derive(Clone)]
struct Say;

impl tower_service::Service<Request<Msg>> for Say {
    type Response = Response<Msg>;
    type Error = Status;
    type Future = BoxFut<Result<Response<Msg>, Status>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        Box::pin(async move {
            let m = req.into_inner();
            if m.text == "fail" {
                return Err(Status::not_found("no such thing"));
            }
            let mut r = Response::new(Msg {
                text: format!("echo: {}", m.text),
                n: m.n + 1,
            });
            r.metadata_mut()
                .insert("x-served-by", "grpc-origin".parse().unwrap());
            Ok(r)
        })
    }
}

type MsgStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<Msg, Status>> + Send>>;

/// `/test.Echo/Count`: streams `n` messages, then ends with the status the text names.
#[derive(Clone)]
struct Count;

impl tower_service::Service<Request<Msg>> for Count {
    type Response = Response<MsgStream>;
    type Error = Status;
    type Future = BoxFut<Result<Response<MsgStream>, Status>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Status>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, req: Request<Msg>) -> Self::Future {
        Box::pin(async move {
            let m = req.into_inner();
            let mut items: Vec<Result<Msg, Status>> = (0..m.n)
                .map(|i| {
                    Ok(Msg {
                        text: format!("item {i}"),
                        n: i,
                    })
                })
                .collect();
            if m.text == "then-abort" {
                items.push(Err(Status::aborted("stopped after the items")));
            }
            let s: MsgStream = Box::pin(tokio_stream::iter(items));
            Ok(Response::new(s))
        })
    }
}

/// A gRPC server speaking only HTTP/2 with prior knowledge (as tonic's own server does).
async fn grpc_origin() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let codec = ProstCodec::<Msg, Msg>::default();
                        let resp = match req.uri().path() {
                            "/test.Echo/Say" => {
                                tonic::server::Grpc::new(codec).unary(Say, req).await
                            }
                            "/test.Echo/Count" => {
                                tonic::server::Grpc::new(codec)
                                    .server_streaming(Count, req)
                                    .await
                            }
                            _ => Status::unimplemented("no such method").into_http(),
                        };
                        Ok::<_, Infallible>(resp)
                    },
                );
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

async fn calls(channel: tonic::transport::Channel) {
    let mut grpc = tonic::client::Grpc::new(channel);
    // Unary, with response metadata.
    grpc.ready().await.unwrap();
    let r = grpc
        .unary(
            Request::new(Msg {
                text: "hello".into(),
                n: 41,
            }),
            PathAndQuery::from_static("/test.Echo/Say"),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .unwrap();
    assert_eq!(r.metadata().get("x-served-by").unwrap(), "grpc-origin");
    let m = r.into_inner();
    assert_eq!((m.text.as_str(), m.n), ("echo: hello", 42));
    // A status from the server arrives as sent.
    grpc.ready().await.unwrap();
    let e = grpc
        .unary(
            Request::new(Msg {
                text: "fail".into(),
                n: 0,
            }),
            PathAndQuery::from_static("/test.Echo/Say"),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert_eq!(e.message(), "no such thing");
    // Server streaming: every message, then OK in the trailers.
    grpc.ready().await.unwrap();
    let mut s = grpc
        .server_streaming(
            Request::new(Msg {
                text: String::new(),
                n: 50,
            }),
            PathAndQuery::from_static("/test.Echo/Count"),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    let mut got = 0;
    while let Some(m) = s.message().await.unwrap() {
        assert_eq!(m.n, got);
        got += 1;
    }
    assert_eq!(got, 50);
    // A stream that ends in an error status: the messages, then the status from the trailers.
    grpc.ready().await.unwrap();
    let mut s = grpc
        .server_streaming(
            Request::new(Msg {
                text: "then-abort".into(),
                n: 3,
            }),
            PathAndQuery::from_static("/test.Echo/Count"),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .unwrap()
        .into_inner();
    for i in 0..3 {
        assert_eq!(s.message().await.unwrap().unwrap().n, i);
    }
    let e = s.message().await.unwrap_err();
    assert_eq!(e.code(), Code::Aborted);
    assert_eq!(e.message(), "stopped after the items");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_streaming_over_h2c_and_tls_to_an_h2c_upstream() {
    let origin = grpc_origin().await;
    let pki = Pki::new();
    let config = Config::bare()
        .admin_set("address", "127.0.0.1:0")
        .listener(Listener::http("h2c").set("h2c", true))
        .listener(Listener::http("https").set(
            "tls",
            serde_json::json!({ "cert": "a.pem", "key": "a.key" }),
        ))
        .upstream(Upstream::new("grpc", [origin]).set("http2", true))
        .upstream(
            Upstream::new("gone", [dead_addr()])
                .set("http2", true)
                .set("retries", 0),
        )
        .route(Route::to("gone").path("/dead.Svc/"))
        .route(Route::to("grpc"))
        .render();
    let p = Portico::start_with(&config, &[], |dir| {
        pki.leaf(dir, "a", &["a.test"]);
    });

    // h2c client -> Portico -> h2c upstream.
    let channel = Endpoint::from_shared(format!("http://{}", p.addr("h2c")))
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    calls(channel.clone()).await;

    // Portico's own failure (no backend reachable) reaches a gRPC client as a gRPC status.
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let e = grpc
        .unary(
            Request::new(Msg::default()),
            PathAndQuery::from_static("/dead.Svc/Call"),
            ProstCodec::<Msg, Msg>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().starts_with("portico: "), "{e:?}");

    // h2 over TLS -> Portico -> h2c upstream.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(pki.ca_pem.as_bytes()))
        .domain_name("a.test");
    let channel = Endpoint::from_shared(format!("https://{}", p.addr("https")))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    calls(channel).await;
}

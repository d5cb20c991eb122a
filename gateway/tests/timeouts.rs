//! Every wait on a peer ends: a service that accepts a request and never answers gets the caller
//! a 504 (plain requests and WebSocket openings), and so does a peer gateway that never
//! answers; a stream that stalls mid-body fails after the idle timeout even on an HTTP/2
//! connection that other requests keep busy; an upload that stalls gets a 408; and a slow but
//! steady stream outlives the response, idle and header timeouts alike. Real TLS on 127.0.0.1,
//! SVIDs from the real CA server. No assertion on time: each test only checks what the answer is, under an overall
//! guard that turns a hang into a failure.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)] // test code

mod kit;
mod mesh;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use kit::{CHECKOUT, Kit};
use mesh::call;
use meshgate_gateway::config::{Limits, Target};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Turns a hang into a failure; never reached when the gateway behaves.
const LIMIT: Duration = Duration::from_secs(60);

/// An HTTP/1.1 service that answers by path: `/ok` at once; `/hang` and `/ws-hang` (a
/// WebSocket opening) never; `/stall` sends its head and one chunk, then nothing; `/trickle`
/// sends ten chunks 300 ms apart, then ends.
async fn service() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(serve(tcp));
        }
    });
    addr
}

async fn serve(mut tcp: TcpStream) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tcp.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head.split_whitespace().nth(1).unwrap_or("").to_owned();
    const CHUNKED: &[u8] =
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n";
    match path.as_str() {
        "/ok" => {
            let _ = tcp
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                .await;
        }
        "/stall" => {
            let _ = tcp.write_all(CHUNKED).await;
            let _ = tcp.write_all(b"5\r\nfirst\r\n").await;
            hold(tcp).await;
        }
        "/trickle" => {
            let _ = tcp.write_all(CHUNKED).await;
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if tcp.write_all(b"4\r\ntick\r\n").await.is_err() {
                    return;
                }
            }
            let _ = tcp.write_all(b"0\r\n\r\n").await;
        }
        _ => hold(tcp).await,
    }
}

/// Keeps a connection open, reading and ignoring, until the gateway closes it.
async fn hold(mut tcp: TcpStream) {
    let mut buf = [0u8; 1024];
    while let Ok(n) = tcp.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

fn quick_answer() -> Limits {
    Limits {
        response_timeout: Duration::from_secs(1),
        ..Limits::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_never_answers_gets_a_504_and_the_gateway_serves_others() {
    tokio::time::timeout(LIMIT, async {
        let kit = Kit::start().await;
        let upstream = Target::parse(&service().await.to_string()).unwrap();
        let payments = kit.payments(upstream, quick_answer(), None).await;
        let checkout = kit.client(CHECKOUT, &payments).await;
        let to = checkout.to_payments();

        let hanging: Vec<_> = (0..4)
            .map(|_| tokio::spawn(async move { call(to, "GET", "/hang", &[]).await }))
            .collect();
        // Without a body at all, the clock starts as soon as the head has gone.
        let empty = tokio::spawn(async move { get(to, "/hang").await.status() });
        // Served while the others wait.
        assert_eq!(call(to, "GET", "/ok", &[]).await.status, StatusCode::OK);
        for h in hanging {
            let answer = h.await.unwrap();
            assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
            let json = answer.json();
            assert_eq!(json["error"], "gateway_timeout");
            assert!(
                json["message"]
                    .as_str()
                    .unwrap()
                    .contains("limits.response_timeout"),
                "{json}"
            );
        }
        assert_eq!(empty.await.unwrap(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(call(to, "GET", "/ok", &[]).await.status, StatusCode::OK);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_opening_the_service_never_answers_gets_a_504() {
    tokio::time::timeout(LIMIT, async {
        let kit = Kit::start().await;
        let upstream = Target::parse(&service().await.to_string()).unwrap();
        let payments = kit.payments(upstream, quick_answer(), None).await;
        let checkout = kit.client(CHECKOUT, &payments).await;
        let mut app = TcpStream::connect(checkout.to_payments()).await.unwrap();
        app.write_all(
            b"GET /ws-hang HTTP/1.1\r\nhost: payments.bank.example\r\nconnection: Upgrade\r\nupgrade: websocket\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
        )
        .await
        .unwrap();
        let status = status_line(&mut app).await;
        assert!(status.starts_with("HTTP/1.1 504"), "{status}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_route_answers_504_when_the_peer_gateway_never_answers() {
    tokio::time::timeout(LIMIT, async {
        let kit = Kit::start().await;
        let upstream = Target::parse(&service().await.to_string()).unwrap();
        // Payments itself would wait for an hour: only the client's own bound can end the wait.
        let patient = Limits {
            response_timeout: Duration::from_secs(3600),
            ..Limits::default()
        };
        let payments = kit.payments(upstream, patient, None).await;
        let checkout = kit.client_with(CHECKOUT, &payments, quick_answer()).await;
        let answer = call(checkout.to_payments(), "GET", "/hang", &[]).await;
        assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
        let json = answer.json();
        assert!(
            json["message"].as_str().unwrap().contains("peer gateway"),
            "{json}"
        );
        let empty = get(checkout.to_payments(), "/hang").await;
        assert_eq!(empty.status(), StatusCode::GATEWAY_TIMEOUT);
        // The pooled connection to payments still carries requests.
        let ok = call(checkout.to_payments(), "GET", "/ok", &[]).await;
        assert_eq!(ok.status, StatusCode::OK);
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_fails_after_the_idle_timeout_on_a_busy_connection() {
    tokio::time::timeout(LIMIT, async {
        let kit = Kit::start().await;
        let upstream = Target::parse(&service().await.to_string()).unwrap();
        let limits = Limits {
            idle_timeout: Duration::from_secs(2),
            ..Limits::default()
        };
        let payments = kit.payments(upstream, limits, None).await;
        let checkout = kit.client(CHECKOUT, &payments).await;
        let to = checkout.to_payments();
        // Other requests keep the HTTP/2 connection between the gateways from going idle.
        let stop = Arc::new(AtomicBool::new(false));
        let busy = {
            let stop = stop.clone();
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(call(to, "GET", "/ok", &[]).await.status, StatusCode::OK);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };
        let body = get_stream(to, "/stall").await;
        let end = body.collect().await;
        assert!(end.is_err(), "a stalled stream ended as if whole: {end:?}");
        stop.store(true, Ordering::Relaxed);
        busy.await.unwrap();
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_stalls_gets_a_408_after_the_idle_timeout() {
    tokio::time::timeout(LIMIT, async {
        let kit = Kit::start().await;
        let upstream = Target::parse(&service().await.to_string()).unwrap();
        let limits = Limits {
            idle_timeout: Duration::from_secs(2),
            ..Limits::default()
        };
        let payments = kit.payments(upstream, limits, None).await;
        let checkout = kit.client(CHECKOUT, &payments).await;
        let mut app = TcpStream::connect(checkout.to_payments()).await.unwrap();
        // One chunk of an unsized body, then nothing; the service waits for the rest.
        app.write_all(
            b"POST /upload HTTP/1.1\r\nhost: payments.bank.example\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n",
        )
        .await
        .unwrap();
        let status = status_line(&mut app).await;
        assert!(status.starts_with("HTTP/1.1 408"), "{status}");
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_steady_stream_outlives_the_response_idle_and_header_timeouts() {
    tokio::time::timeout(LIMIT, async {
        let kit = Kit::start().await;
        let upstream = Target::parse(&service().await.to_string()).unwrap();
        // The stream lasts about 3 s; every bound here is shorter, but none is a total limit.
        let short = Limits {
            response_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            header_read_timeout: Duration::from_secs(1),
            ..Limits::default()
        };
        let payments = kit.payments(upstream, short.clone(), None).await;
        let checkout = kit.client_with(CHECKOUT, &payments, short).await;
        let body = get_stream(checkout.to_payments(), "/trickle").await;
        let whole = body.collect().await.unwrap().to_bytes();
        assert_eq!(whole, Bytes::from("tick".repeat(10)));
    })
    .await
    .unwrap();
}

/// The first line of the answer on a raw connection.
async fn status_line(tcp: &mut TcpStream) -> String {
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    while !answer.ends_with(b"\r\n") && tcp.read(&mut byte).await.unwrap() == 1 {
        answer.push(byte[0]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

/// A GET whose answer must start with 200; its body, still streaming.
async fn get_stream(addr: SocketAddr, path: &str) -> hyper::body::Incoming {
    let response = get(addr, path).await;
    assert_eq!(response.status(), StatusCode::OK);
    response.into_body()
}

/// A GET without a body (no `content-length`): the answer, its body still streaming.
async fn get(addr: SocketAddr, path: &str) -> hyper::Response<hyper::body::Incoming> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(path)
        .header("host", "payments.bank.example")
        .body(Empty::<Bytes>::new())
        .unwrap();
    sender.send_request(req).await.unwrap()
}

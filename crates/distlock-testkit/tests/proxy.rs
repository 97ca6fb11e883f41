//! The fault-injecting proxy: forwards bytes, holds them in a black hole
//! without losing any, and resets connections.

use std::time::Duration;

use distlock_testkit::proxy::FaultProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const MS: Duration = Duration::from_millis(1);

/// An upstream that echoes every byte back.
async fn echo_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                loop {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if conn.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

/// Asserts that nothing arrives on `conn` for `within`.
async fn assert_held(conn: &mut TcpStream, within: Duration, what: &str) {
    let mut buf = [0u8; 1];
    let read = timeout(within, conn.read(&mut buf)).await;
    assert!(read.is_err(), "{what}: {read:?}");
}

/// Reads `want` from `conn` within 5 s.
async fn expect_bytes(conn: &mut TcpStream, want: &[u8], what: &str) {
    let mut got = vec![0u8; want.len()];
    timeout(Duration::from_secs(5), conn.read_exact(&mut got))
        .await
        .expect(what)
        .unwrap();
    assert_eq!(got, want, "{what}");
}

async fn round_trip(conn: &mut TcpStream, msg: &[u8]) -> Vec<u8> {
    conn.write_all(msg).await.unwrap();
    let mut got = vec![0u8; msg.len()];
    conn.read_exact(&mut got).await.unwrap();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_then_black_holes_without_losing_bytes() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut conn, b"hello").await, b"hello");

    proxy.set_blackhole(true);
    assert!(proxy.is_blackholed());
    conn.write_all(b"held").await.unwrap();
    assert_held(
        &mut conn,
        300 * MS,
        "nothing may come back through a black hole",
    )
    .await;
    // A connection opened during the black hole is held too.
    let mut late = TcpStream::connect(proxy.addr()).await.unwrap();
    late.write_all(b"late").await.unwrap();
    assert_held(&mut late, 200 * MS, "a new connection is held").await;

    proxy.set_blackhole(false);
    expect_bytes(&mut conn, b"held", "held bytes flow after healing").await;
    let what = "the held connection reaches the upstream after healing";
    expect_bytes(&mut late, b"late", what).await;
    assert_eq!(proxy.stats().accepted, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_all_tears_down_live_connections_only() {
    let proxy = FaultProxy::start(echo_server().await).await.unwrap();
    let mut conn = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut conn, b"x").await, b"x");
    assert_eq!(proxy.reset_all(), 1);
    let mut buf = [0u8; 1];
    let read = timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("the reset reaches the client");
    match read {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset),
        Ok(n) => panic!("expected a connection reset, read {n} bytes"),
    }
    // The proxy keeps serving new connections.
    let mut again = TcpStream::connect(proxy.addr()).await.unwrap();
    assert_eq!(round_trip(&mut again, b"y").await, b"y");
    assert_eq!(proxy.stats().resets, 1);
}

/// The head of an HTTP request from `from`, as an etcd peer sends it.
fn request_from(from: &str) -> Vec<u8> {
    format!("GET /raft/stream/message/1 HTTP/1.1\r\nHost: x\r\nX-Server-From: {from}\r\n\r\n")
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tagged_black_hole_holds_only_that_senders_connections() {
    let proxy = FaultProxy::start_tagging(echo_server().await, "X-Server-From")
        .await
        .unwrap();
    let mut cut = TcpStream::connect(proxy.addr()).await.unwrap();
    let mut other = TcpStream::connect(proxy.addr()).await.unwrap();
    let (cut_head, other_head) = (request_from("a1"), request_from("b2"));
    // The head is forwarded whole, and the tag read from it.
    assert_eq!(round_trip(&mut cut, &cut_head).await, cut_head);
    assert_eq!(round_trip(&mut other, &other_head).await, other_head);

    proxy.set_blackhole_tag("a1", true);
    assert!(!proxy.is_blackholed(), "only one tag is cut off");
    cut.write_all(b"held").await.unwrap();
    assert_held(
        &mut cut,
        300 * MS,
        "nothing may come back to the cut-off sender",
    )
    .await;
    assert_eq!(round_trip(&mut other, b"free").await, b"free");
    // A new connection from the cut-off sender is held after its head.
    let mut late = TcpStream::connect(proxy.addr()).await.unwrap();
    let late_head = request_from("a1");
    late.write_all(&late_head).await.unwrap();
    assert_held(&mut late, 200 * MS, "a new connection of the tag is held").await;

    proxy.heal();
    expect_bytes(&mut cut, b"held", "held bytes flow after healing").await;
    let what = "the held connection reaches the upstream after healing";
    expect_bytes(&mut late, &late_head, what).await;
}

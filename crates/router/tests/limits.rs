//! Connection limits over raw TCP: slow and idle clients are cut off, oversized request heads
//! refused, and connections past `max_connections` wait until one closes.

mod common;

use std::time::Duration;

use common::*;
use mvllm_router::config::Settings;
use mvllm_sim::SimConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn limited(max_connections: usize) -> Settings {
    Settings {
        header_read_timeout: Duration::from_millis(300),
        max_header_bytes: 8192,
        max_connections,
        ..fast_settings()
    }
}

#[tokio::test]
async fn slow_and_idle_clients_are_cut_off_after_header_read_timeout() {
    let s = sim(SimConfig::instant()).await;
    let r = router(vec![server_of(&s)], limited(100)).await;
    // Half a request head, then nothing (slowloris).
    let mut slow = TcpStream::connect(r.addr).await.unwrap();
    slow.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // Connected and silent.
    let mut idle = TcpStream::connect(r.addr).await.unwrap();
    for tcp in [&mut slow, &mut idle] {
        let answer = read_until_closed(tcp, Duration::from_secs(5)).await;
        assert!(answer.is_some(), "the router closed the connection");
    }
    // A request after an answer on a kept-alive connection still works (the timeout restarts).
    let mut kept = TcpStream::connect(r.addr).await.unwrap();
    kept.write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn an_oversized_request_head_is_refused() {
    let s = sim(SimConfig::instant()).await;
    let r = router(vec![server_of(&s)], limited(100)).await;
    let mut tcp = TcpStream::connect(r.addr).await.unwrap();
    let big = "a".repeat(20_000);
    tcp.write_all(format!("GET /livez HTTP/1.1\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let answer = read_until_closed(&mut tcp, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:.80}");
    // Within the limit, fine.
    let ok = client()
        .get(format!("{}/livez", r.url()))
        .header("x-medium", "b".repeat(4000))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn connections_past_the_limit_wait_for_a_free_slot() {
    let s = sim(SimConfig::instant()).await;
    let mut settings = limited(2);
    settings.header_read_timeout = Duration::from_secs(30);
    let r = router(vec![server_of(&s)], settings).await;
    let held_a = TcpStream::connect(r.addr).await.unwrap();
    let _held_b = TcpStream::connect(r.addr).await.unwrap();
    // Accepted by the kernel, but the router does not take it while both slots are used.
    let mut third = TcpStream::connect(r.addr).await.unwrap();
    third
        .write_all(b"GET /livez HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 256];
    let waited = tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf)).await;
    assert!(waited.is_err(), "no answer while two connections are open");
    drop(held_a);
    let answer = read_until_closed(&mut third, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:.80}");
}

//! Both ends over real ZMQ sockets on loopback: the publisher (`zeromq` crate) and our ZMTP
//! reader, the live stream, a replay, and what a hostile publisher can and cannot do.

use std::time::Duration;

use mvllm_kv_events::{
    Event, Limits, Message, Publisher, PublisherConfig, Removed, Subscription, decode, replay,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{Instant, timeout};

fn removed(h: u64) -> Vec<Event> {
    vec![Event::Removed(Removed {
        block_hashes: vec![h],
        medium: Some("GPU".into()),
        group_idx: None,
    })]
}

/// Connects and waits until a published batch arrives (PUB drops what it sends before the
/// subscription reaches it), returning the subscription and the first sequence number seen.
async fn subscribed(p: &Publisher) -> (Subscription, u64) {
    let mut sub = Subscription::connect(&p.endpoint, "kv-events", Limits::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        p.publish(removed(0));
        if let Ok(m) = timeout(Duration::from_millis(50), sub.next()).await {
            match m.unwrap() {
                Message::Batch { seq, .. } => return (sub, seq),
                m => panic!("{m:?}"),
            }
        }
        assert!(Instant::now() < deadline, "no batch reached the subscriber");
    }
}

#[tokio::test]
async fn batches_arrive_in_order_and_a_replay_returns_what_was_missed() {
    let mut cfg = PublisherConfig::new("tcp://127.0.0.1:0");
    cfg.replay_endpoint = Some("tcp://127.0.0.1:0".into());
    let p = Publisher::bind(cfg).await.unwrap();
    let (mut sub, first) = subscribed(&p).await;
    for h in 1..=5 {
        p.publish(removed(h));
    }
    let mut last = first;
    let mut hashes = Vec::new();
    while hashes.len() < 5 {
        match timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap()
        {
            Message::Batch { seq, payload } => {
                assert!(seq > last, "in order");
                last = seq;
                if let Event::Removed(r) = &decode(&payload).unwrap().events[0]
                    && r.block_hashes[0] != 0
                {
                    hashes.push(r.block_hashes[0]);
                }
            }
            m => panic!("{m:?}"),
        }
    }
    assert_eq!(hashes, [1, 2, 3, 4, 5]);
    // Replay from two before the last: those two and the last, then the end marker.
    let got = replay(
        p.replay_endpoint.as_deref().unwrap(),
        last - 2,
        Limits::default(),
        Duration::from_secs(10),
        100,
    )
    .await
    .unwrap();
    let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, [last - 2, last - 1, last]);
    let batch = decode(&got[2].1).unwrap();
    assert_eq!(batch.data_parallel_rank, Some(0));
    assert!(matches!(&batch.events[0], Event::Removed(r) if r.block_hashes == [5]));
}

#[tokio::test]
async fn a_dead_publisher_ends_the_stream_and_a_missing_one_refuses() {
    let p = Publisher::bind(PublisherConfig::new("tcp://127.0.0.1:0"))
        .await
        .unwrap();
    let endpoint = p.endpoint.clone();
    let (mut sub, _) = subscribed(&p).await;
    drop(p);
    // The publisher's task closes its sockets: the stream ends with an error.
    let end = timeout(Duration::from_secs(10), async {
        loop {
            if sub.next().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the subscription saw the publisher go");
    assert!(
        Subscription::connect(&endpoint, "", Limits::default())
            .await
            .is_err()
    );
    // A wildcard is where a server binds, not where to connect.
    assert!(
        Subscription::connect("tcp://*:5557", "", Limits::default())
            .await
            .is_err()
    );
}

/// A "publisher" that completes the handshake, then claims a frame of a terabyte.
#[tokio::test]
async fn a_hostile_frame_length_is_refused_without_allocating_it() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut greeting = [0u8; 64];
        s.read_exact(&mut greeting).await.unwrap();
        let mut ours = [0u8; 64];
        ours[0] = 0xff;
        ours[9] = 0x7f;
        ours[10] = 3;
        ours[12..16].copy_from_slice(b"NULL");
        s.write_all(&ours).await.unwrap();
        // READY, Socket-Type PUB.
        let mut ready = vec![0x04, 0];
        let body = [
            &[5u8][..],
            b"READY",
            &[11],
            b"Socket-Type",
            &[0, 0, 0, 3],
            b"PUB",
        ]
        .concat();
        ready[1] = body.len() as u8;
        ready.extend_from_slice(&body);
        s.write_all(&ready).await.unwrap();
        // A long frame of 2^40 bytes.
        s.write_all(&[0x02]).await.unwrap();
        s.write_all(&(1u64 << 40).to_be_bytes()).await.unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest).await;
    });
    let mut sub = Subscription::connect(&format!("tcp://{addr}"), "", Limits::default())
        .await
        .unwrap();
    let err = timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("over the"), "{err}");
}

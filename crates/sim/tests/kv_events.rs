//! The simulator's KV events over real ZMQ sockets: what a subscriber counts from them equals
//! what the simulated prefix cache holds, block for block, through storing, evicting and a reset.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use mvllm_kv_events::{Event, Limits, Message, Subscription, decode, replay};
use mvllm_sim::SimConfig;
use mvllm_sim::config::KvEvents;
use serde_json::json;
use tokio::time::timeout;

/// A subscriber's view: the hashes stored and not removed, and the last sequence number.
#[derive(Default)]
struct View {
    held: HashSet<u64>,
    last: Option<u64>,
    tokens_of_first_block: Option<Vec<u32>>,
}

impl View {
    fn apply(&mut self, seq: u64, payload: &[u8]) {
        if self.last.is_some_and(|l| seq <= l) {
            return; // seen (a replayed batch that also came live)
        }
        assert!(
            self.last.is_none_or(|l| seq == l + 1),
            "no gap: {seq} after {:?}",
            self.last
        );
        self.last = Some(seq);
        for e in decode(payload).unwrap().events {
            match e {
                Event::Stored(s) => {
                    assert_eq!(s.block_size, 16);
                    assert_eq!(s.token_ids.len(), 16 * s.block_hashes.len());
                    if s.parent_block_hash.is_none() {
                        self.tokens_of_first_block
                            .get_or_insert_with(|| s.token_ids[..16].to_vec());
                    }
                    self.held.extend(s.block_hashes);
                }
                Event::Removed(r) => r.block_hashes.iter().for_each(|h| {
                    assert!(self.held.remove(h), "removed a block never stored");
                }),
                Event::AllCleared => self.held.clear(),
            }
        }
    }
}

async fn completion(url: &str, first: u32, len: u32) {
    let ids: Vec<u32> = (first..first + len).collect();
    let r = post_json(
        &format!("{url}/v1/completions"),
        json!({"prompt": ids, "max_tokens": 20, "ignore_eos": true}),
    )
    .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_subscriber_counts_exactly_the_blocks_the_cache_holds() {
    let sim = start(SimConfig {
        kv_events: Some(KvEvents {
            endpoint: "tcp://127.0.0.1:0".into(),
            replay_endpoint: Some("tcp://127.0.0.1:0".into()),
            topic: "kv-events".into(),
        }),
        // 40 blocks: the third prompt evicts.
        kv_cache_tokens: 640,
        max_model_len: 600,
        ..SimConfig::instant()
    })
    .await;
    let (pub_at, replay_at) = sim.kv_event_endpoints()[0].clone();
    let replay_at = replay_at.unwrap();
    let mut sub = Subscription::connect(&pub_at, "kv-events", Limits::default())
        .await
        .unwrap();
    completion(&sim.url(), 100, 300).await;
    completion(&sim.url(), 100, 200).await; // a prefix of the first: hits, stores nothing new
    completion(&sim.url(), 5000, 400).await; // evicts
    // What the subscription missed before it took effect comes from the replay.
    let mut view = View::default();
    for (seq, p) in replay(
        &replay_at,
        0,
        Limits::default(),
        Duration::from_secs(10),
        10_000,
    )
    .await
    .unwrap()
    {
        view.apply(seq, &p);
    }
    let mut drain = async |view: &mut View, want: usize| {
        while view.held.len() != want {
            match timeout(Duration::from_secs(10), sub.next()).await {
                Ok(Ok(Message::Batch { seq, payload })) => view.apply(seq, &payload),
                other => panic!("{:?}", other.map(|r| r.map(|_| ()))),
            }
        }
    };
    drain(&mut view, sim.cached_blocks()).await;
    assert_eq!(view.held.len(), sim.cached_blocks());
    assert!(sim.cached_blocks() > 0 && sim.cached_blocks() <= 40);
    assert_eq!(
        view.tokens_of_first_block.as_deref(),
        Some(&(100..116).collect::<Vec<u32>>()[..]),
        "a block's tokens are the prompt's"
    );
    // A reset clears everything, and says so.
    let r = client()
        .post(format!("{}/reset_prefix_cache", sim.url()))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    drain(&mut view, 0).await;
    assert_eq!(sim.cached_blocks(), 0);
}

#[test]
fn each_rank_and_instance_binds_its_own_port() {
    assert_eq!(
        KvEvents::for_rank("tcp://127.0.0.1:5557", 2),
        "tcp://127.0.0.1:5559"
    );
    assert_eq!(
        KvEvents::for_rank("tcp://127.0.0.1:0", 2),
        "tcp://127.0.0.1:0"
    );
}

/// vLLM's CPU build caches in blocks of 128 tokens: a repeated 555-token prompt is served 512
/// tokens from cache (what vLLM 0.32 answered, `../shared/real-vllm/capture`), and the blocks
/// it stored are published as one `BlockStored` of four 128-token blocks.
#[tokio::test]
async fn with_block_size_128_a_repeated_prompt_hits_whole_128_token_blocks() {
    let sim = start(SimConfig {
        block_size: 128,
        kv_events: Some(KvEvents {
            endpoint: "tcp://127.0.0.1:0".into(),
            replay_endpoint: Some("tcp://127.0.0.1:0".into()),
            topic: "kv-events".into(),
        }),
        kv_cache_tokens: 128 * 64,
        max_model_len: 1024,
        ..SimConfig::instant()
    })
    .await;
    let mut cached = Vec::new();
    for _ in 0..2 {
        let ids: Vec<u32> = (7..7 + 555).collect();
        let r = post_json(
            &format!("{}/v1/completions", sim.url()),
            json!({"prompt": ids, "max_tokens": 4, "ignore_eos": true}),
        )
        .await;
        assert_eq!(r.status(), 200);
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["usage"]["prompt_tokens"], 555);
        cached.push(body["usage"]["prompt_tokens_details"]["cached_tokens"].clone());
    }
    assert_eq!(cached, [json!(0), json!(512)]);
    let (_, replay_at) = sim.kv_event_endpoints()[0].clone();
    let batches = replay(
        &replay_at.unwrap(),
        0,
        Limits::default(),
        Duration::from_secs(10),
        10_000,
    )
    .await
    .unwrap();
    let stored: Vec<_> = batches
        .iter()
        .flat_map(|(_, p)| decode(p).unwrap().events)
        .filter_map(|e| match e {
            Event::Stored(s) => Some(s),
            _ => None,
        })
        .collect();
    assert_eq!(
        stored.len(),
        1,
        "one event for the prompt's four full blocks"
    );
    assert_eq!(stored[0].block_size, 128);
    assert_eq!(stored[0].block_hashes.len(), 4);
    assert_eq!(stored[0].token_ids, (7..7 + 512).collect::<Vec<u32>>());
    assert_eq!(sim.cached_blocks(), 4);
}

#[test]
fn a_block_size_vllm_refuses_is_refused() {
    let cfg = SimConfig {
        block_size: 20,
        ..SimConfig::instant()
    };
    let err = cfg.validate().unwrap_err();
    assert!(err.contains("block size 20"), "{err}");
}

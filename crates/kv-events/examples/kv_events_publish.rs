//! Publishes N batches (one `BlockStored` of one 16-token block each) at a PUB endpoint, with a
//! replay socket, then waits: `cargo run -p mvllm-kv-events --example kv_events_publish --
//! tcp://127.0.0.1:PORT tcp://127.0.0.1:REPLAY N`. Used by `scripts/kv-events-interop.sh`.

use std::time::Duration;

use mvllm_kv_events::{Event, Publisher, PublisherConfig, Stored};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let mut cfg = PublisherConfig::new(args.get(1).ok_or("usage: kv_events_publish PUB REPLAY N")?);
    cfg.replay_endpoint = args.get(2).cloned();
    let n: u64 = args.get(3).map_or(Ok(5), |s| s.parse())?;
    let p = Publisher::bind(cfg).await?;
    // Give a subscriber time to connect (PUB drops what no one subscribed to yet).
    tokio::time::sleep(Duration::from_secs(2)).await;
    for i in 0..n {
        p.publish(vec![Event::Stored(Stored {
            block_hashes: vec![1000 + i],
            parent_block_hash: i.checked_sub(1).map(|p| 1000 + p),
            token_ids: (0..16).map(|t| t + 16 * i as u32).collect(),
            block_size: 16,
            medium: Some("GPU".into()),
            extra_keys: Some(vec![None]),
            group_idx: Some(0),
            kv_cache_spec_kind: Some("full_attention".into()),
            ..Stored::default()
        })]);
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    Ok(())
}

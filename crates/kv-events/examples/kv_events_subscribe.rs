//! Prints the batches a KV-event publisher sends, decoded, and optionally asks for a replay:
//! `cargo run -p mvllm-kv-events --example kv_events_subscribe -- tcp://HOST:PORT [N] [tcp://REPLAY]`
//! (stops after N batches; default 10). Used by `scripts/kv-events-interop.sh` against pyzmq.

use std::time::Duration;

use mvllm_kv_events::{Limits, Message, Subscription, decode, replay};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let endpoint = args
        .get(1)
        .ok_or("usage: kv_events_subscribe tcp://HOST:PORT [N] [tcp://REPLAY]")?;
    let n: usize = args.get(2).map_or(Ok(10), |s| s.parse())?;
    // The publisher may still be starting: try for ten seconds.
    let mut tries = 0;
    let mut sub = loop {
        match Subscription::connect(endpoint, "", Limits::default()).await {
            Ok(s) => break s,
            Err(e) if tries == 100 => return Err(e.into()),
            Err(_) => tries += 1,
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut first = None;
    for _ in 0..n {
        match sub.next().await? {
            Message::Batch { seq, payload } => {
                first.get_or_insert(seq);
                let b = decode(&payload)?;
                println!(
                    "seq {seq} rank {:?} events {:?}",
                    b.data_parallel_rank, b.events
                );
            }
            Message::Malformed(m) => println!("malformed: {m}"),
        }
    }
    if let (Some(r), Some(first)) = (args.get(3), first) {
        let got = replay(r, first, Limits::default(), Duration::from_secs(10), 1000).await?;
        println!(
            "replayed {} batches from {first}: {:?}",
            got.len(),
            got.iter().map(|(s, _)| s).collect::<Vec<_>>()
        );
    }
    Ok(())
}

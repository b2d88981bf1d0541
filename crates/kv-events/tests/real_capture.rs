//! The batches a real vLLM 0.32 (CPU build) published, captured off its ZMQ socket
//! (`tests/data/real-vllm-0.32-batches.json`: each batch decoded by msgspec, its payload's length
//! and first 200 bytes): our encoder writes the same bytes, and our decoder reads exactly the
//! blocks they hold.

use mvllm_kv_events::{Batch, Event, Removed, Stored, decode, encode};
use serde_json::Value;

fn captured() -> Vec<Value> {
    let text = include_str!("data/real-vllm-0.32-batches.json");
    serde_json::from_str::<Value>(text)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn opt_str(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

/// The batch as msgspec decoded it, in our types.
fn expected(decoded: &Value) -> Batch {
    let events = decoded[1]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| match e["type"].as_str().unwrap() {
            "BlockStored" => Event::Stored(Stored {
                block_hashes: hashes(&e["block_hashes"]),
                parent_block_hash: e["parent_block_hash"].as_u64(),
                token_ids: e["token_ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_u64().unwrap() as u32)
                    .collect(),
                block_size: e["block_size"].as_u64().unwrap() as u32,
                lora_id: e["lora_id"].as_i64(),
                medium: opt_str(&e["medium"]),
                lora_name: opt_str(&e["lora_name"]),
                extra_keys: e["extra_keys"].as_array().map(|ks| {
                    ks.iter()
                        .map(|k| {
                            k.as_array()
                                .map(|parts| parts.iter().filter_map(opt_str).collect::<Vec<_>>())
                        })
                        .collect()
                }),
                group_idx: e["group_idx"].as_i64(),
                kv_cache_spec_kind: opt_str(&e["kv_cache_spec_kind"]),
                kv_cache_spec_sliding_window: e["kv_cache_spec_sliding_window"].as_i64(),
            }),
            "BlockRemoved" => Event::Removed(Removed {
                block_hashes: hashes(&e["block_hashes"]),
                medium: opt_str(&e["medium"]),
                group_idx: e["group_idx"].as_i64(),
            }),
            "AllBlocksCleared" => Event::AllCleared,
            t => panic!("unknown event {t}"),
        })
        .collect();
    Batch {
        ts: decoded[0].as_f64().unwrap(),
        events,
        data_parallel_rank: decoded[2].as_i64(),
    }
}

fn hashes(v: &Value) -> Vec<u64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_u64().unwrap())
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn our_encoder_writes_what_vllm_wrote() {
    let batches = captured();
    assert_eq!(batches.len(), 32);
    for b in &batches {
        let ours = encode(&expected(&b["decoded"]));
        let head = b["payload_hex_head"].as_str().unwrap();
        assert_eq!(
            ours.len() as u64,
            b["payload_len"].as_u64().unwrap(),
            "seq {}",
            b["seq"]
        );
        assert_eq!(&hex(&ours)[..head.len()], head, "seq {}", b["seq"]);
    }
}

#[test]
fn the_captured_batches_decode_to_exactly_their_blocks() {
    let (mut stored, mut removed, mut cleared) = (0, 0, 0);
    for b in &captured() {
        let want = expected(&b["decoded"]);
        let got = decode(&encode(&want)).unwrap();
        assert_eq!(got, want, "seq {}", b["seq"]);
        for e in &got.events {
            match e {
                Event::Stored(s) => {
                    assert_eq!(s.block_size, 128, "the CPU build's block size");
                    assert_eq!(s.token_ids.len(), 128 * s.block_hashes.len());
                    stored += s.block_hashes.len();
                }
                Event::Removed(r) => removed += r.block_hashes.len(),
                Event::AllCleared => cleared += 1,
            }
        }
    }
    // What the capture holds, counted by Python off the same file.
    assert_eq!((stored, removed, cleared), (STORED, 4, 1));
}

const STORED: usize = 72;

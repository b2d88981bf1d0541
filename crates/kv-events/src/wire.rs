//! vLLM's KV-event batch on the wire: msgpack, as vLLM's `msgspec` encoder writes it.
//!
//! Why by hand and not by derive: the publisher must be byte-compatible with vLLM's (a consumer
//! written against vLLM must read ours unchanged), and the reader must take what every vLLM
//! release wrote. So [`encode`] writes exactly msgspec's layout (checked against batches a real
//! vLLM 0.32 published, `tests/real_capture.rs`): the batch as an array `[ts, events,
//! data_parallel_rank]`, each event as a map whose first key is `type`, fields in declaration
//! order, defaults omitted, integers in their smallest form, floats as float64. And [`decode`]
//! reads events by field name, ignoring fields it does not know (the set grew across releases),
//! and also the older array form (`["BlockStored", hashes, parent, ...]`); block hashes may be
//! integers or bytes (vLLM's `ExternalBlockHash = bytes | int`).
//!
//! Hostile input costs nothing but an error: lengths are never trusted for allocation (serde's
//! cautious size hints), nesting is bounded by `rmp_serde`'s depth limit, and every number is
//! range-checked.

use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// One batch: what one engine step stored and removed.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// Seconds since the epoch when the batch was made.
    pub ts: f64,
    pub events: Vec<Event>,
    /// The engine (data-parallel rank) that published it.
    pub data_parallel_rank: Option<i64>,
}

/// One KV-cache event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    Stored(Stored),
    Removed(Removed),
    /// The engine dropped every cached block (prefix-cache reset, restart).
    AllCleared,
}

/// `BlockStored`: consecutive full blocks of one sequence entered the cache.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Stored {
    /// One per block, in order; the engine's own hashes (opaque to a consumer).
    pub block_hashes: Vec<u64>,
    /// The block before the first one (`None`: the first block of a sequence).
    pub parent_block_hash: Option<u64>,
    /// `block_size` tokens per block, all blocks concatenated.
    pub token_ids: Vec<u32>,
    pub block_size: u32,
    pub lora_id: Option<i64>,
    pub medium: Option<String>,
    pub lora_name: Option<String>,
    /// Per block, the strings mixed into its hash besides its tokens (cache salt, multimodal
    /// hashes, LoRA name); `None` for a block with none. Absent in older releases.
    pub extra_keys: Option<Vec<Option<Vec<String>>>>,
    pub group_idx: Option<i64>,
    pub kv_cache_spec_kind: Option<String>,
    pub kv_cache_spec_sliding_window: Option<i64>,
}

/// `BlockRemoved`: blocks left the cache (evicted).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Removed {
    pub block_hashes: Vec<u64>,
    pub medium: Option<String>,
    pub group_idx: Option<i64>,
}

/// Why a payload was refused.
#[derive(Debug, thiserror::Error)]
#[error("malformed KV-event batch: {0}")]
pub struct DecodeError(String);

/// Reads one batch from its msgpack payload.
pub fn decode(payload: &[u8]) -> Result<Batch, DecodeError> {
    rmp_serde::from_slice(payload).map_err(|e| DecodeError(e.to_string()))
}

/// Writes one batch as vLLM does.
pub fn encode(batch: &Batch) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + batch.events.len() * 64);
    let w = &mut out;
    // Writing to a Vec cannot fail.
    let _ = rmp::encode::write_array_len(w, 3);
    let _ = rmp::encode::write_f64(w, batch.ts);
    let _ = rmp::encode::write_array_len(w, batch.events.len() as u32);
    for e in &batch.events {
        match e {
            Event::Stored(s) => encode_stored(w, s),
            Event::Removed(r) => encode_removed(w, r),
            Event::AllCleared => {
                let _ = rmp::encode::write_map_len(w, 1);
                str(w, "type");
                str(w, "AllBlocksCleared");
            }
        }
    }
    match batch.data_parallel_rank {
        Some(r) => int(w, r),
        None => nil(w),
    }
    out
}

fn encode_stored(w: &mut Vec<u8>, s: &Stored) {
    let optional = [
        s.extra_keys.is_some(),
        s.group_idx.is_some(),
        s.kv_cache_spec_kind.is_some(),
        s.kv_cache_spec_sliding_window.is_some(),
    ];
    let fields = 8 + optional.iter().filter(|&&x| x).count() as u32;
    let _ = rmp::encode::write_map_len(w, fields);
    str(w, "type");
    str(w, "BlockStored");
    str(w, "block_hashes");
    hashes(w, &s.block_hashes);
    str(w, "parent_block_hash");
    match s.parent_block_hash {
        Some(h) => uint(w, h),
        None => nil(w),
    }
    str(w, "token_ids");
    let _ = rmp::encode::write_array_len(w, s.token_ids.len() as u32);
    for &t in &s.token_ids {
        uint(w, t.into());
    }
    str(w, "block_size");
    uint(w, s.block_size.into());
    str(w, "lora_id");
    opt_int(w, s.lora_id);
    str(w, "medium");
    opt_str(w, s.medium.as_deref());
    str(w, "lora_name");
    opt_str(w, s.lora_name.as_deref());
    if let Some(keys) = &s.extra_keys {
        str(w, "extra_keys");
        let _ = rmp::encode::write_array_len(w, keys.len() as u32);
        for k in keys {
            match k {
                None => nil(w),
                Some(parts) => {
                    let _ = rmp::encode::write_array_len(w, parts.len() as u32);
                    parts.iter().for_each(|p| str(w, p));
                }
            }
        }
    }
    if let Some(g) = s.group_idx {
        str(w, "group_idx");
        int(w, g);
    }
    if let Some(k) = &s.kv_cache_spec_kind {
        str(w, "kv_cache_spec_kind");
        str(w, k);
    }
    if let Some(sw) = s.kv_cache_spec_sliding_window {
        str(w, "kv_cache_spec_sliding_window");
        int(w, sw);
    }
}

fn encode_removed(w: &mut Vec<u8>, r: &Removed) {
    let _ = rmp::encode::write_map_len(w, 3 + u32::from(r.group_idx.is_some()));
    str(w, "type");
    str(w, "BlockRemoved");
    str(w, "block_hashes");
    hashes(w, &r.block_hashes);
    str(w, "medium");
    opt_str(w, r.medium.as_deref());
    if let Some(g) = r.group_idx {
        str(w, "group_idx");
        int(w, g);
    }
}

fn hashes(w: &mut Vec<u8>, hs: &[u64]) {
    let _ = rmp::encode::write_array_len(w, hs.len() as u32);
    hs.iter().for_each(|&h| uint(w, h));
}

fn str(w: &mut Vec<u8>, s: &str) {
    let _ = rmp::encode::write_str(w, s);
}

fn nil(w: &mut Vec<u8>) {
    let _ = rmp::encode::write_nil(w);
}

fn uint(w: &mut Vec<u8>, v: u64) {
    let _ = rmp::encode::write_uint(w, v);
}

/// msgspec writes non-negative integers in unsigned forms, negative ones in signed forms.
fn int(w: &mut Vec<u8>, v: i64) {
    if v >= 0 {
        uint(w, v as u64);
    } else {
        let _ = rmp::encode::write_sint(w, v);
    }
}

fn opt_int(w: &mut Vec<u8>, v: Option<i64>) {
    match v {
        Some(v) => int(w, v),
        None => nil(w),
    }
}

fn opt_str(w: &mut Vec<u8>, v: Option<&str>) {
    match v {
        Some(s) => str(w, s),
        None => nil(w),
    }
}

// ---- reading ----

impl<'de> de::Deserialize<'de> for Batch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Batch;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an event batch [ts, events, data_parallel_rank]")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Batch, A::Error> {
                let ts = seq
                    .next_element::<f64>()?
                    .ok_or_else(|| de::Error::invalid_length(0, &self))?;
                let events = seq
                    .next_element::<Vec<Event>>()?
                    .ok_or_else(|| de::Error::invalid_length(1, &self))?;
                let data_parallel_rank = seq.next_element::<Option<i64>>()?.flatten();
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Batch {
                    ts,
                    events,
                    data_parallel_rank,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Batch, A::Error> {
                let (mut ts, mut events, mut rank) = (None, None, None);
                while let Some(k) = map.next_key::<Key>()? {
                    match k.0.as_str() {
                        "ts" => ts = Some(map.next_value::<f64>()?),
                        "events" => events = Some(map.next_value::<Vec<Event>>()?),
                        "data_parallel_rank" => rank = map.next_value::<Option<i64>>()?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Batch {
                    ts: ts.ok_or_else(|| de::Error::missing_field("ts"))?,
                    events: events.ok_or_else(|| de::Error::missing_field("events"))?,
                    data_parallel_rank: rank,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// A map key: a string (msgpack lets keys be anything; a non-string key is ignored).
struct Key(String);

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key(v.to_string()))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Key, E> {
                Ok(Key(String::from_utf8_lossy(v).into_owned()))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Key, E> {
                Ok(Key(String::new()))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Key, E> {
                Ok(Key(String::new()))
            }
        }
        d.deserialize_any(V)
    }
}

/// A block hash: an integer (vLLM folds its hashes to 64 bits) or bytes (the full digest,
/// folded here to 64 bits the same way every time, so stored and removed blocks agree).
struct Hash(u64);

impl<'de> de::Deserialize<'de> for Hash {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Hash;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a block hash (integer or bytes)")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Hash, E> {
                Ok(Hash(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Hash, E> {
                Ok(Hash(v as u64))
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Hash, E> {
                // FNV-1a: a stable fold of a digest of any length.
                let h = v.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                    (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
                });
                Ok(Hash(h))
            }
        }
        d.deserialize_any(V)
    }
}

fn hash_list<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Vec<u64>, A::Error> {
    Ok(map
        .next_value::<Vec<Hash>>()?
        .into_iter()
        .map(|h| h.0)
        .collect())
}

/// One entry of `extra_keys`: `None`, or the strings in its tuple (other values are skipped).
struct ExtraKey(Option<Vec<String>>);

impl<'de> de::Deserialize<'de> for ExtraKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ExtraKey;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("nil or a tuple of keys")
            }
            fn visit_unit<E: de::Error>(self) -> Result<ExtraKey, E> {
                Ok(ExtraKey(None))
            }
            fn visit_none<E: de::Error>(self) -> Result<ExtraKey, E> {
                Ok(ExtraKey(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ExtraKey, A::Error> {
                let mut out = Vec::new();
                while let Some(k) = seq.next_element::<Scalar>()? {
                    if let Some(s) = k.0 {
                        out.push(s);
                    }
                }
                Ok(ExtraKey(Some(out)))
            }
        }
        d.deserialize_any(V)
    }
}

/// Any msgpack value, keeping only a string's text.
struct Scalar(Option<String>);

impl<'de> de::Deserialize<'de> for Scalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Scalar;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Scalar, E> {
                Ok(Scalar(Some(v.to_string())))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Scalar, E> {
                Ok(Scalar(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Scalar, E> {
                Ok(Scalar(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Scalar, E> {
                Ok(Scalar(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Scalar, E> {
                Ok(Scalar(None))
            }
            fn visit_bytes<E>(self, _: &[u8]) -> Result<Scalar, E> {
                Ok(Scalar(None))
            }
            fn visit_unit<E>(self) -> Result<Scalar, E> {
                Ok(Scalar(None))
            }
            fn visit_none<E>(self) -> Result<Scalar, E> {
                Ok(Scalar(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Scalar, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Scalar(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Scalar, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Scalar(None))
            }
        }
        d.deserialize_any(V)
    }
}

fn token_list<'de, A: MapAccess<'de>>(map: &mut A) -> Result<Vec<u32>, A::Error> {
    map.next_value::<Vec<u32>>()
}

impl<'de> de::Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(EventVisitor)
    }
}

struct EventVisitor;

impl<'de> Visitor<'de> for EventVisitor {
    type Value = Event;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a KV event (BlockStored, BlockRemoved or AllBlocksCleared)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Event, A::Error> {
        let mut kind: Option<String> = None;
        let mut s = Stored::default();
        let mut seen_hashes = false;
        while let Some(k) = map.next_key::<Key>()? {
            match k.0.as_str() {
                "type" => kind = Some(map.next_value::<String>()?),
                "block_hashes" => {
                    s.block_hashes = hash_list(&mut map)?;
                    seen_hashes = true;
                }
                "parent_block_hash" => {
                    s.parent_block_hash = map.next_value::<Option<Hash>>()?.map(|h| h.0)
                }
                "token_ids" => s.token_ids = token_list(&mut map)?,
                "block_size" => s.block_size = map.next_value()?,
                "lora_id" => s.lora_id = map.next_value()?,
                "medium" => s.medium = map.next_value()?,
                "lora_name" => s.lora_name = map.next_value()?,
                "extra_keys" => {
                    s.extra_keys = map
                        .next_value::<Option<Vec<ExtraKey>>>()?
                        .map(|v| v.into_iter().map(|k| k.0).collect())
                }
                "group_idx" => s.group_idx = map.next_value()?,
                "kv_cache_spec_kind" => s.kv_cache_spec_kind = map.next_value()?,
                "kv_cache_spec_sliding_window" => {
                    s.kv_cache_spec_sliding_window = map.next_value()?
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let kind = kind.ok_or_else(|| de::Error::missing_field("type"))?;
        finish(&kind, s, seen_hashes)
    }

    /// The older array form: the tag, then the fields in declaration order.
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Event, A::Error> {
        let kind: String = seq
            .next_element()?
            .ok_or_else(|| de::Error::invalid_length(0, &self))?;
        let mut s = Stored::default();
        fn need<T, E: de::Error>(v: Option<T>, i: usize) -> Result<T, E> {
            v.ok_or_else(|| E::invalid_length(i, &"the fields of a KV event"))
        }
        match kind.as_str() {
            "BlockStored" => {
                let hs: Vec<Hash> = need(seq.next_element()?, 1)?;
                s.block_hashes = hs.into_iter().map(|h| h.0).collect();
                let parent: Option<Hash> = need(seq.next_element()?, 2)?;
                s.parent_block_hash = parent.map(|h| h.0);
                s.token_ids = need(seq.next_element()?, 3)?;
                s.block_size = need(seq.next_element()?, 4)?;
                s.lora_id = seq.next_element()?.flatten();
                s.medium = seq.next_element()?.flatten();
                s.lora_name = seq.next_element()?.flatten();
            }
            "BlockRemoved" => {
                let hs: Vec<Hash> = need(seq.next_element()?, 1)?;
                s.block_hashes = hs.into_iter().map(|h| h.0).collect();
                s.medium = seq.next_element()?.flatten();
            }
            _ => {}
        }
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        finish(&kind, s, true)
    }
}

fn finish<E: de::Error>(kind: &str, s: Stored, seen_hashes: bool) -> Result<Event, E> {
    match kind {
        "BlockStored" => {
            if !seen_hashes {
                return Err(E::missing_field("block_hashes"));
            }
            let n = s.block_hashes.len();
            if s.block_size == 0 || s.token_ids.len() != n * s.block_size as usize {
                return Err(E::custom(format_args!(
                    "BlockStored with {n} blocks of {} tokens carries {} token ids",
                    s.block_size,
                    s.token_ids.len()
                )));
            }
            Ok(Event::Stored(s))
        }
        "BlockRemoved" => {
            if !seen_hashes {
                return Err(E::missing_field("block_hashes"));
            }
            Ok(Event::Removed(Removed {
                block_hashes: s.block_hashes,
                medium: s.medium,
                group_idx: s.group_idx,
            }))
        }
        "AllBlocksCleared" => Ok(Event::AllCleared),
        other => Err(E::custom(format_args!("unknown event type `{other}`"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(hashes: Vec<u64>, parent: Option<u64>, block: u32) -> Stored {
        Stored {
            token_ids: (0..hashes.len() as u32 * block).collect(),
            block_hashes: hashes,
            parent_block_hash: parent,
            block_size: block,
            medium: Some("GPU".into()),
            extra_keys: Some(vec![None]),
            group_idx: Some(0),
            kv_cache_spec_kind: Some("full_attention".into()),
            ..Stored::default()
        }
    }

    #[test]
    fn a_batch_reads_back_as_written() {
        let b = Batch {
            ts: 1.5,
            events: vec![
                Event::Stored(stored(vec![u64::MAX], Some(7), 4)),
                Event::Removed(Removed {
                    block_hashes: vec![1, 2],
                    medium: Some("GPU".into()),
                    group_idx: Some(0),
                }),
                Event::AllCleared,
            ],
            data_parallel_rank: Some(1),
        };
        assert_eq!(decode(&encode(&b)).unwrap(), b);
    }

    #[test]
    fn unknown_fields_are_ignored_and_the_array_form_reads() {
        // A map with a field from a future release.
        let mut w = Vec::new();
        rmp::encode::write_array_len(&mut w, 2).unwrap();
        rmp::encode::write_f64(&mut w, 0.0).unwrap();
        rmp::encode::write_array_len(&mut w, 2).unwrap();
        rmp::encode::write_map_len(&mut w, 3).unwrap();
        for (k, v) in [("type", "BlockRemoved"), ("future", "x")] {
            rmp::encode::write_str(&mut w, k).unwrap();
            rmp::encode::write_str(&mut w, v).unwrap();
        }
        rmp::encode::write_str(&mut w, "block_hashes").unwrap();
        rmp::encode::write_array_len(&mut w, 1).unwrap();
        rmp::encode::write_bin(&mut w, &[1; 32]).unwrap();
        // The older array form.
        rmp::encode::write_array_len(&mut w, 7).unwrap();
        rmp::encode::write_str(&mut w, "BlockStored").unwrap();
        rmp::encode::write_array_len(&mut w, 1).unwrap();
        rmp::encode::write_uint(&mut w, 9).unwrap();
        rmp::encode::write_nil(&mut w).unwrap();
        rmp::encode::write_array_len(&mut w, 2).unwrap();
        rmp::encode::write_uint(&mut w, 5).unwrap();
        rmp::encode::write_uint(&mut w, 6).unwrap();
        rmp::encode::write_uint(&mut w, 2).unwrap();
        rmp::encode::write_nil(&mut w).unwrap();
        rmp::encode::write_str(&mut w, "GPU").unwrap();
        rmp::encode::write_nil(&mut w).unwrap();
        let b = decode(&w).unwrap();
        assert_eq!(b.data_parallel_rank, None);
        assert!(matches!(&b.events[0], Event::Removed(r) if r.block_hashes.len() == 1));
        match &b.events[1] {
            Event::Stored(s) => {
                assert_eq!(
                    (s.block_hashes.clone(), s.token_ids.clone()),
                    (vec![9], vec![5, 6])
                )
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn malformed_payloads_are_errors_not_panics() {
        let good = encode(&Batch {
            ts: 1.0,
            events: vec![Event::Stored(stored(vec![1, 2, 3], None, 16))],
            data_parallel_rank: Some(0),
        });
        // Every truncation, and every single-byte corruption, is an error or a batch; never a
        // panic or a huge allocation.
        for n in 0..good.len() {
            assert!(decode(&good[..n]).is_err(), "truncated at {n}");
        }
        for i in 0..good.len() {
            for b in [0x00, 0xff, 0xdd, 0xc1, 0xdf] {
                let mut bad = good.clone();
                bad[i] = b;
                let _ = decode(&bad);
            }
        }
        // A claimed 4-billion-element array in five bytes.
        assert!(
            decode(&[
                0x93, 0xcb, 0, 0, 0, 0, 0, 0, 0, 0, 0xdd, 0xff, 0xff, 0xff, 0xff
            ])
            .is_err()
        );
        // Deep nesting.
        let mut deep = vec![0x93, 0xcb, 0, 0, 0, 0, 0, 0, 0, 0];
        deep.extend(std::iter::repeat_n(0x91, 100_000));
        assert!(decode(&deep).is_err());
        // Tokens that do not fill the blocks.
        let mut s = stored(vec![1], None, 16);
        s.token_ids.pop();
        let b = Batch {
            ts: 0.0,
            events: vec![Event::Stored(s)],
            data_parallel_rank: None,
        };
        assert!(decode(&encode(&b)).is_err());
    }
}

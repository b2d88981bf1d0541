//! A KV-event batch, as a server's publisher (or anyone who can reach the router's subscriber)
//! sends it: decoded and applied to an exact index, whatever its bytes. Must never panic, and
//! the index must stay within its budget.
#![no_main]
use libfuzzer_sys::fuzz_target;
use mvllm_router::routing::exact_index::ExactIndex;

fuzz_target!(|data: &[u8]| {
    if let Ok(batch) = mvllm_kv_events::decode(data) {
        let mut index = ExactIndex::new(64);
        index.apply(&batch);
        assert!(index.len() <= 64);
        let _ = mvllm_kv_events::encode(&batch);
    }
});

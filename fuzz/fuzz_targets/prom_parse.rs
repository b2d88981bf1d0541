//! The Prometheus-text reader the router runs on every server's `/metrics` every second.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(m) = mvllm_router::fleet::prom::parse(&text) {
        assert!(m.kv_usage >= 0.0 && m.kv_usage <= 1.0);
    }
});

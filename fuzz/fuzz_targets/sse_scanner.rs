//! The SSE scanner of the load generator, fed in arbitrary pieces.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let mut scanner = mvllm_bench::client::SseScanner::default();
    let mut events = 0usize;
    for piece in rest.chunks(usize::from(cut).max(1)) {
        scanner.feed_raw(piece, |_, raw| {
            assert!(raw.len() <= rest.len());
            events += 1;
        });
    }
    assert!(events <= rest.len() / 2 + 1);
});

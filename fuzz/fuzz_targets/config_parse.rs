//! The config loader: any text gives a config or a located error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // A key file is read from disk: keep the fuzzer off the filesystem.
    if text.contains("keys_file") {
        return;
    }
    if let Err(e) = mvllm_router::Config::parse(text, "fuzz.toml") {
        assert!(e.line <= text.lines().count() + 1, "{e}");
    }
});

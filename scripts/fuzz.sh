#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer) of every reader that takes outside input:
# the Prometheus-text parser, the config loader, the request-body reader, the SSE scanner and
# the KV-event batch decoder.
# Usage: scripts/fuzz.sh [seconds per target, default 60]. Exits non-zero if any target finds a
# crash; crashing inputs are left in fuzz/artifacts/<target>/.
#
# The toolchain is stable: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its flags, and `-s none` skips
# AddressSanitizer (all the code is safe Rust: what we look for is panics, not memory errors).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds="${1:-60}"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1
cargo fuzz build -s none
for target in prom_parse config_parse request_meta sse_scanner kv_event_batch; do
  mkdir -p "corpus/$target"
  echo "== fuzz $target for ${seconds}s"
  cargo fuzz run -s none "$target" -- -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 2>&1 \
    | grep -E "^(#[0-9]+.*DONE|stat::number_of_executed_units|==[0-9]+== ERROR|panicked|SUMMARY)" || true
  if [ -n "$(ls -A "artifacts/$target" 2>/dev/null)" ]; then
    echo "fuzz: $target found a crash, see fuzz/artifacts/$target/" >&2
    exit 1
  fi
done
echo "== fuzz: no crash in ${seconds}s per target"

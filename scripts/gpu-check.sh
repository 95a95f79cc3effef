#!/usr/bin/env bash
# The GPU check: one command on a GPU machine, one JSON object on stdout, under 8 minutes.
#   device facts; bench-step on proxy-s and proxy-m (tf32 and bf16: tokens/s, MFU against
#   the GPU's dense bf16 and tf32 peaks); a 4-site sim run of each method on `tiny` on cuda
#   and on this machine's CPU (payload bytes equal, per-step losses within a stated
#   tolerance); proxy-s training at fp32 and bf16 (loss and speed). See scripts/cuda/gpu_check.py.
#
# The binary is the CUDA flavour built by scripts/build-cuda (build/cuda/fomoe, linked
# against torch 2.11.0+cu130, the PyTorch of the GPU machine this project is lent); it runs
# against that machine's torch/lib. Override with FOMOE_BIN and FOMOE_TORCH_LIB.
# On a device call, carry the git-ignored binary: carry = ["build/cuda"].
# Exit status: 0 all checks passed; 1 no usable GPU (says why); 2 a check failed or ran out
# of the time budget (GPU_CHECK_BUDGET_S, default 450).
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${FOMOE_BIN:-build/cuda/fomoe}
PY=
for p in ${PYTHON:-} /opt/torch/.venv/bin/python python3; do
  if command -v "$p" >/dev/null 2>&1; then PY=$p; break; fi
done
fail() { # one JSON line when the check cannot even start
  printf '{"check": "fomoe scripts/gpu-check.sh", "gpu": false, "ok": false, "reason": "%s"}\n' "$1"
  exit 1
}
[ -n "$PY" ] || fail "no python3 to run the check with"
[ -x "$BIN" ] || fail "$BIN missing: run scripts/build-cuda on a machine with network and carry build/cuda"

# The torch/lib the binary runs against: FOMOE_TORCH_LIB, else the python's torch package.
LIB=${FOMOE_TORCH_LIB:-}
if [ -z "$LIB" ]; then
  LIB=$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))' 2>/dev/null || true)
fi
[ -n "$LIB" ] && [ -f "$LIB/libtorch_cpu.so" ] || fail "no torch/lib with libtorch_cpu.so found (set FOMOE_TORCH_LIB)"
if ! LD_LIBRARY_PATH="$LIB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$BIN" --version >/dev/null 2>/tmp/fomoe-gpu-check-start.$$; then
  msg=$(tail -1 /tmp/fomoe-gpu-check-start.$$ | tr -d '"\\'); rm -f /tmp/fomoe-gpu-check-start.$$
  fail "$BIN does not start against $LIB: $msg"
fi
rm -f /tmp/fomoe-gpu-check-start.$$
exec "$PY" scripts/cuda/gpu_check.py "$BIN" "$LIB"

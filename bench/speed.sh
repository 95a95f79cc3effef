#!/usr/bin/env bash
# The speed figures of the closing notes, in one run on this machine (2 CPU threads):
#   1. bench-step proxy-s (tokens/s, GFLOP/s, MFU vs the fp32 matmul rate measured in the
#      same run), and the PyTorch eager reference on the same libtorch when the full torch
#      environment exists (FOMOE_TORCH_FLAVOR=full scripts/setup);
#   2. skip-token: bench-step at resident fractions 1, 1/2, 1/4 (FoMoE site, drop policy);
#   3. DDP step overhead on the sim backend against single-site training with the same
#      per-site batch (host time per step: data + compute + optimiser [+ comm host]).
# Usage: bench/speed.sh [OUT_DIR]   (default results/bench); needs a release build.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-results/bench}
mkdir -p "$out"
bin=${FOMOE_BIN:-target/release/fomoe}
steps=${BENCH_STEPS:-8}
full_py=${FOMOE_TORCH_FULL:-${XDG_CACHE_HOME:-$HOME/.cache}/fomoe/torch-2.13.0-full}/bin/python

for i in 1 2; do
  "$bin" bench-step --preset proxy-s --threads 2 --steps "$steps" --json > "$out/step-fomoe-$i.json"
  if [ -x "$full_py" ]; then
    "$full_py" bench/eager_reference.py --preset proxy-s --threads 2 --steps "$steps" --json 2>/dev/null > "$out/step-eager-$i.json"
  fi
done
for f in 1 0.5 0.25; do
  "$bin" bench-step --preset proxy-s --threads 2 --steps "$steps" --resident-fraction "$f" --json > "$out/skip-$f.json"
done

# DDP vs single on sim, same per-site batch, 2 threads per site (sites compute one at a time).
# Overhead = host time per step (data + compute + optimiser + the CPU time of the site's
# thread inside the gradient all-reduce, excluding waiting for peers) over single's.
cat > "$out/ddp.toml" <<TOML
method = "ddp"
preset = "small"
sites = 4
steps = 24
inner_steps = 8
threads_per_site = 2
[network]
backend = "sim"
scenario = "same-region"
TOML
sed -e 's/method = "ddp"/method = "single"/' -e 's/sites = 4/sites = 1/' "$out/ddp.toml" > "$out/single.toml"
"$bin" run-one "$out/ddp.toml" --out "$out/ddp-run" > /dev/null
"$bin" run-one "$out/single.toml" --out "$out/single-run" > /dev/null

python3 - "$out" <<'PY'
import csv, json, statistics, sys, glob, os
out = sys.argv[1]
def load(p): return json.load(open(p))
f = [load(p) for p in sorted(glob.glob(f"{out}/step-fomoe-*.json"))]
e = [load(p) for p in sorted(glob.glob(f"{out}/step-eager-*.json")) if os.path.getsize(p) > 0]
best = max(f, key=lambda r: r["tokens_per_s"])
print(f"proxy-s, 2 threads: fomoe {best['tokens_per_s']:.0f} tokens/s, {best['gflops']:.1f} GFLOP/s, "
      f"fp32 matmul {best['matmul_gflops']:.1f} GFLOP/s, MFU {100*best['mfu']:.1f}%")
if e:
    eb = max(e, key=lambda r: r["tokens_per_s"])
    print(f"  pytorch eager reference {eb['tokens_per_s']:.0f} tokens/s -> ratio {best['tokens_per_s']/eb['tokens_per_s']:.2f}x "
          f"(eager MFU {100*eb['gflops']/best['matmul_gflops']:.1f}%)")
    # Work per step in CPU seconds of the process: the figure that holds still on a shared
    # machine (run with OMP_WAIT_POLICY=passive so waiting threads do not spin).
    fc = min(r["cpu_s_per_step_median"] for r in f)
    ec = min(r["cpu_s_per_step_median"] for r in e)
    print(f"  CPU-s per step: fomoe {fc:.3f}, eager {ec:.3f} -> eager/fomoe {ec/fc:.2f}x")
full = load(f"{out}/skip-1.json")
for fr in ["0.5", "0.25"]:
    r = load(f"{out}/skip-{fr}.json")
    print(f"skip-token rho/M={fr}: {r['tokens_per_s']:.0f} tokens/s vs full {full['tokens_per_s']:.0f} -> "
          f"{r['tokens_per_s']/full['tokens_per_s']:.2f}x (skip rate {100*r['skip_rate']:.1f}% of slots; "
          f"expert share of model FLOPs {100*full['expert_flop_share']:.1f}%)")
def med(run, key):
    rows = [r for r in csv.DictReader(open(f"{out}/{run}/steps.csv")) if int(r["step"]) > 2]
    return statistics.median(float(r[key]) for r in rows)
work = lambda run: med(run, "data_ms") + med(run, "compute_ms") + med(run, "opt_ms")
d, s, c = work("ddp-run"), work("single-run"), med("ddp-run", "comm_cpu_ms")
print(f"DDP on sim (small, 4 sites, same per-site batch): all-reduce CPU {c:.1f} ms per step = {100*c/d:.1f}% over the "
      f"site's own step work ({d:.1f} ms; single-site {s:.1f} ms, step total ratio {(d+c)/s:.3f})")
PY

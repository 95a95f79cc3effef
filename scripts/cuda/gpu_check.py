#!/usr/bin/env python3
"""The GPU check behind scripts/gpu-check.sh: one JSON object on stdout.

1. device facts (nvidia-smi, and what fomoe's manifest records: name, driver, CUDA driver
   and runtime, libtorch at run time), and whether a Rust toolchain exists on the machine;
2. bench-step on proxy-s and proxy-m at tf32 (fp32 with TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1)
   and bf16: tokens/s, step time, the measured matmul rate and MFU against the GPU's dense
   bf16 and tf32 peaks;
3. a 4-site sim run of each method (ddp, diloco, photon, fomoe) on `tiny`, on cuda and on
   the CPU of the same machine: payload bytes per site must be equal, and the per-step
   losses within LOSS_TOL_NATS (GPU and CPU kernels round differently; the bound and the
   largest difference seen are both reported);
4. mixed precision: `fomoe train` of proxy-s on cuda at fp32 and at bf16, final eval loss
   and tokens/s of each.
Exit status: 0 all checks passed, 1 no usable GPU (nothing else is run), 2 a check failed
or did not fit the time budget (GPU_CHECK_BUDGET_S, default 450 s: the whole call stays
under 8 minutes).

A dry run of the plumbing on a machine without a GPU: GPU_CHECK_DEVICE=cpu runs every step
on the CPU (the "cuda" side of each comparison is then the CPU too, and the report says
"dry_run": true), with GPU_CHECK_PRESETS and GPU_CHECK_TRAIN_PRESET naming smaller presets.
"""
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

# GPU and CPU kernels sum in other orders (and sdpa picks other algorithms): losses differ
# by rounding that training carries forward. On the CPU alone a change of thread count moves
# the per-step losses of these runs by at most 4.8e-7 nats; 2e-3 leaves room for the GPU's
# kernels and an occasional flipped top-k choice. The host/device copies themselves are
# pinned bit for bit on the CPU (tests/device.rs); this bound checks the GPU kernels.
LOSS_TOL_NATS = 2e-3
METHODS = ["ddp", "diloco", "photon", "fomoe"]
DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")
PRESETS = os.environ.get("GPU_CHECK_PRESETS", "proxy-s proxy-m").split()
TRAIN_PRESET = os.environ.get("GPU_CHECK_TRAIN_PRESET", "proxy-s")


class Budget:
    def __init__(self, seconds):
        self.deadline = time.monotonic() + seconds

    def left(self):
        return self.deadline - time.monotonic()


def run(cmd, env, timeout, budget):
    """(returncode, stdout, stderr); returncode None when it did not fit the budget."""
    limit = min(timeout, budget.left())
    if limit < 5:
        return None, "", "skipped: time budget spent"
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit)
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired:
        return None, "", f"timed out after {limit:.0f} s"


def last_line(text):
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return lines[-1] if lines else ""


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    return json.loads(text)


def nvidia_smi():
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    q = "name,driver_version,memory.total,compute_cap"
    p = subprocess.run([exe, f"--query-gpu={q}", "--format=csv,noheader"],
                       capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        return {"error": last_line(p.stderr or p.stdout)}
    rows = [[c.strip() for c in l.split(",")] for l in p.stdout.strip().splitlines()]
    return [dict(zip(q.split(","), r)) for r in rows]


def bench(fomoe, env, budget, preset, precision):
    e = dict(env)
    args = [fomoe, "bench-step", "--preset", preset, "--steps", "20", "--threads", "4",
            "--device", DEVICE, "--json"]
    if precision == "tf32":
        e["TORCH_ALLOW_TF32_CUBLAS_OVERRIDE"] = "1"
        args += ["--precision", "fp32"]
    else:
        args += ["--precision", precision]
    rc, out, err = run(args, e, 120, budget)
    if rc != 0:
        return {"preset": preset, "precision": precision, "ok": False,
                "error": last_line(err) or f"exit {rc}"}
    r = last_json(out)
    return {
        "preset": preset, "precision": precision, "ok": True,
        "tokens_per_s": round(r["tokens_per_s"]),
        "step_ms_median": round(r["step_ms_median"], 2),
        "achieved_tflops": round(r["gflops"] / 1e3, 2),
        "matmul_tflops_measured": round(r["matmul_gflops"] / 1e3, 1),
        "mfu_vs_measured_matmul": round(r["mfu"], 4),
        "mfu_vs_bf16_dense_peak": r["mfu_vs_bf16_peak"],
        "mfu_vs_tf32_dense_peak": r["mfu_vs_tf32_peak"],
    }


def sim_config(method):
    return "\n".join([
        f'method = "{method}"', 'preset = "tiny"', "sites = 4", "steps = 16",
        "inner_steps = 4", "threads_per_site = 2", "eval_sequences = 8",
        "[network]", 'backend = "sim"', 'scenario = "cross-region"', ""])


def step_losses(run_dir):
    with open(os.path.join(run_dir, "steps.csv"), newline="") as f:
        return {(int(r["step"]), int(r["site"])): float(r["loss"]) for r in csv.DictReader(f)}


def sim_pair(fomoe, env, budget, work, method):
    cfg = os.path.join(work, f"{method}.toml")
    with open(cfg, "w") as f:
        f.write(sim_config(method))
    res = {"method": method}
    outcomes = {}
    for device in [DEVICE, "cpu"]:
        d = os.path.join(work, f"{method}-{device}-{len(outcomes)}")
        rc, out, err = run([fomoe, "run-one", cfg, "--out", d, "--device", device], env, 90, budget)
        if rc != 0:
            res.update(ok=False, error=f"{device}: " + (last_line(err) or f"exit {rc}"))
            return res
        outcomes[device] = (json.loads(out), step_losses(d))
    (gpu, gl), (cpu, cl) = outcomes[DEVICE], outcomes["cpu"]
    gb = [s["payload_sent"] for s in gpu["sites"]]
    cb = [s["payload_sent"] for s in cpu["sites"]]
    diff = max(abs(gl[k] - cl[k]) for k in cl) if gl.keys() == cl.keys() else None
    res.update(
        payload_bytes_cuda=gb, payload_bytes_cpu=cb, bytes_equal=gb == cb,
        max_step_loss_diff_nats=diff, loss_tolerance_nats=LOSS_TOL_NATS,
        final_loss_cuda=[round(s["final_loss"], 5) for s in gpu["sites"]],
        final_loss_cpu=[round(s["final_loss"], 5) for s in cpu["sites"]],
    )
    res["ok"] = gb == cb and diff is not None and diff <= LOSS_TOL_NATS
    return res


def train(fomoe, env, budget, work, precision):
    d = os.path.join(work, f"train-{precision}")
    rc, out, err = run([fomoe, "train", "--preset", TRAIN_PRESET, "--steps", "150",
                        "--eval-every", "150", "--threads", "4", "--out", d, "--json",
                        "--device", DEVICE, "--precision", precision], env, 150, budget)
    if rc != 0:
        return {"precision": precision, "ok": False, "error": last_line(err) or f"exit {rc}"}
    r = last_json(out)
    return {"precision": precision, "ok": True, "tokens_per_s": round(r["tokens_per_s"]),
            "final_train_ce": round(r["final_train_ce"], 4),
            "eval_loss": {e["domain"]: round(e["eval_loss"], 4) for e in r["eval"]}}


def main():
    fomoe, torch_lib = sys.argv[1], sys.argv[2]
    budget = Budget(float(os.environ.get("GPU_CHECK_BUDGET_S", "450")))
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = torch_lib + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    env.setdefault("RUST_LOG", "error")
    report = {
        "check": "fomoe scripts/gpu-check.sh",
        "binary": fomoe,
        "torch_lib": torch_lib,
        "rust_toolchain": shutil.which("cargo"),
        "nvidia_smi": nvidia_smi(),
    }
    if DEVICE != "cuda":
        report["dry_run"] = True
    rc, out, err = run([fomoe, "bench-step", "--preset", "tiny", "--steps", "2",
                        "--device", DEVICE, "--json"], env, 180, budget)
    if rc != 0:
        report.update(gpu=False, ok=False,
                      reason=last_line(err) or last_line(out) or f"exit {rc}")
        print(json.dumps(report, indent=1))
        return 1
    report["gpu"] = True
    report["device"] = last_json(out)["device"]
    with tempfile.TemporaryDirectory(prefix="fomoe-gpu-check-") as work:
        report["bench_step"] = [bench(fomoe, env, budget, p, q)
                                for p in PRESETS for q in ["tf32", "bf16"]]
        report["sim_cuda_vs_cpu"] = [sim_pair(fomoe, env, budget, work, m) for m in METHODS]
        mixed = [train(fomoe, env, budget, work, q) for q in ["fp32", "bf16"]]
        if all(m["ok"] for m in mixed):
            mixed.append({
                "bf16_over_fp32_tokens_per_s": round(mixed[1]["tokens_per_s"] / mixed[0]["tokens_per_s"], 3),
                "bf16_minus_fp32_eval_loss": {d: round(mixed[1]["eval_loss"][d] - v, 4)
                                              for d, v in mixed[0]["eval_loss"].items()},
            })
        report["mixed_precision_" + TRAIN_PRESET.replace("-", "_")] = mixed
    checks = report["bench_step"] + report["sim_cuda_vs_cpu"] + [m for m in mixed if "ok" in m]
    report["ok"] = all(c["ok"] for c in checks)
    report["budget_left_s"] = round(budget.left())
    print(json.dumps(report, indent=1))
    return 0 if report["ok"] else 2


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# A real Slurm in CI (issue 12): a throw-away single-node cluster (munged, slurmctld,
# slurmd), then `srun -n 4 --overcommit fomoe site CONFIG` for a 4-site DiLoCo and a 4-site
# FoMoE run on `tiny`, each compared with the single-host run of the same config
# (`fomoe run-one`): every non-timing column of steps.csv and rounds.csv must be identical
# (losses bit for bit as written, payload and framing bytes).
#
# Installs slurmctld, slurmd, slurm-client and munge with apt when missing. Everything it
# writes lives in one temporary directory; every daemon it starts is stopped by its pid on
# every exit path (success, failure, SIGINT/SIGTERM), jobs still queued are cancelled first.
# Without root it skips, saying so.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "ci-slurm: $*"; }

if [ "$(id -u)" != 0 ]; then
    say "skipped: needs root (to run munged, slurmctld and slurmd)"
    exit 0
fi
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v srun >/dev/null || ! command -v munged >/dev/null; then
    say "installing slurmctld slurmd slurm-client munge"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/fomoe/target}"
cargo build --release --quiet
fomoe="$CARGO_TARGET_DIR/release/fomoe"

work=$(mktemp -d /tmp/fomoe-slurm.XXXXXX)
daemons=()   # pids, in start order
srun_pid=""
cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [ -n "$srun_pid" ] && kill -0 "$srun_pid" 2>/dev/null; then
        kill "$srun_pid" 2>/dev/null || true
    fi
    if [ -n "${SLURM_CONF:-}" ] && [ "${#daemons[@]}" -ge 2 ]; then
        scancel --quiet --user=root 2>/dev/null || true
        for _ in $(seq 50); do
            [ -z "$(squeue -h 2>/dev/null)" ] && break
            sleep 0.2
        done
    fi
    local i pid
    for ((i = ${#daemons[@]} - 1; i >= 0; i--)); do
        pid=${daemons[$i]}
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.2
        done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

node=$(hostname -s)
if ! getent hosts "$node" >/dev/null; then
    say "the host name $node does not resolve; the rendezvous host comes from SLURM_STEP_NODELIST"
    exit 1
fi
read -r ctld_port slurmd_port < <(python3 -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')

mkdir -p "$work/munge-key" "$work/munge-run" "$work/state" "$work/spool"
chmod 700 "$work/munge-key"
chmod 755 "$work/munge-run"
dd if=/dev/urandom of="$work/munge-key/munge.key" bs=1024 count=1 status=none
chmod 400 "$work/munge-key/munge.key"
munged --foreground --force \
    --key-file="$work/munge-key/munge.key" --socket="$work/munge-run/munge.socket" \
    --pid-file="$work/munge-run/munged.pid" --seed-file="$work/munge-key/seed" \
    --log-file="$work/munged.log" >"$work/munged.out" 2>&1 &
daemons+=($!)

cat >"$work/slurm.conf" <<EOF
ClusterName=fomoeci
SlurmctldHost=$node
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$work/munge-run/munge.socket
CredType=cred/munge
StateSaveLocation=$work/state
SlurmdSpoolDir=$work/spool
SlurmctldPidFile=$work/slurmctld.pid
SlurmdPidFile=$work/slurmd.pid
SlurmctldLogFile=$work/slurmctld.log
SlurmdLogFile=$work/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
NodeName=$node NodeAddr=127.0.0.1 CPUs=$(nproc) State=UNKNOWN
PartitionName=ci Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:8
EOF
export SLURM_CONF="$work/slurm.conf"
for _ in $(seq 50); do
    [ -S "$work/munge-run/munge.socket" ] && break
    sleep 0.1
done
slurmctld -D -f "$SLURM_CONF" >"$work/slurmctld.out" 2>&1 &
daemons+=($!)
slurmd -D -f "$SLURM_CONF" >"$work/slurmd.out" 2>&1 &
daemons+=($!)
state=""
for _ in $(seq 150); do
    state=$(sinfo -h -N -o %T 2>/dev/null | head -1 || true)
    [ "$state" = idle ] && break
    sleep 0.2
done
if [ "$state" != idle ]; then
    say "the node did not come up (state '${state:-none}'); slurmctld log:"
    tail -n 20 "$work/slurmctld.log" "$work/slurmd.log" 2>/dev/null || true
    exit 1
fi
say "cluster up: node $node, munged/slurmctld/slurmd pids ${daemons[*]}"

# The run token reaches every task through srun's environment, never its command line.
FOMOE_TOKEN=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
export FOMOE_TOKEN

compare() { # single-host dir, slurm dir, label
    python3 - "$1" "$2" "$3" <<'EOF'
import csv, json, sys
single, slurm, label = sys.argv[1:]
status = json.load(open(f"{slurm}/manifest.json"))["status"]
if status != "complete":
    sys.exit(f"ci-slurm: {label}: the Slurm run is {status}")
def table(path, cols):
    with open(path) as f:
        return [tuple(r[c] for c in cols) for r in csv.DictReader(f)]
files = {
    "steps.csv": ["site", "step", "round", "loss", "ce", "balance", "lr", "grad_norm",
                  "tokens", "payload_sent", "payload_recv", "framing_sent", "framing_recv",
                  "skip_rate"],
    "rounds.csv": ["round", "step", "domain", "eval_loss", "floor", "local_eval_loss",
                   "payload_bytes_total", "framing_bytes_total", "eval_bytes_total"],
}
counts = []
for name, cols in files.items():
    a, b = table(f"{single}/{name}", cols), table(f"{slurm}/{name}", cols)
    if not a or a != b:
        diff = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        sys.exit(f"ci-slurm: {label}: {name} differs from the single-host run at row {diff} "
                 f"({len(a)} vs {len(b)} rows)")
    counts.append(f"{len(a)} {name} rows")
payload = table(f"{single}/rounds.csv", ["payload_bytes_total"])[-1][0]
print(f"ci-slurm: {label}: identical to the single-host run ({', '.join(counts)}; "
      f"final loss and every byte count equal, payload {payload} B)")
EOF
}

for method in diloco fomoe; do
    cfg="$work/$method.toml"
    cat >"$cfg" <<EOF
method = "$method"
preset = "tiny"
sites = 4
steps = 8
inner_steps = 4
eval_sequences = 4
[network]
backend = "tcp"
EOF
    "$fomoe" run-one "$cfg" --out "$work/single/$method" >/dev/null
    timeout 300 srun -n 4 --overcommit --kill-on-bad-exit=1 --time=10 --job-name="fomoe-$method" \
        "$fomoe" site "$cfg" --out "$work/slurm/$method" --timeout 60s &
    srun_pid=$!
    wait "$srun_pid"
    srun_pid=""
    compare "$work/single/$method" "$work/slurm/$method" "$method (srun -n 4 --overcommit)"
done
say "passed: stopping the cluster"

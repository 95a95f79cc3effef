#!/usr/bin/env bash
# CI: regenerate paper/REPORT.md, paper/STUDY-fomoe-stability.md and every committed figure from the committed reference
# results (paper/report.toml) into a temporary directory and fail when the committed files
# differ, are missing, or are stale. Writes nothing in the checkout; the temporary directory
# is removed by the command itself on every exit path it controls.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release --quiet -- paper-report paper/report.toml --check
# The FoMoE defaults must be the configuration the committed study selects, and the
# committed study report must be what the committed results give.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cargo run --release --quiet -- study results/reference/fomoe-stability --check --out "$tmp"
if ! cmp -s "$tmp/STUDY-fomoe-stability.md" paper/STUDY-fomoe-stability.md; then
  echo "paper/STUDY-fomoe-stability.md differs from what results/reference/fomoe-stability gives: cargo run --release -- study results/reference/fomoe-stability" >&2
  exit 1
fi
# The main job's and the fault scenarios' reports and figures (paper/REPORT-<suite>.md,
# paper/figures/<suite>/) must be what their committed results give, too.
for suite in quick faults; do
  cargo run --release --quiet -- figures "results/reference/$suite" --out "$tmp/$suite" > /dev/null
  if ! cmp -s "$tmp/$suite/REPORT-$suite.md" "paper/REPORT-$suite.md" ||
     ! diff -rq "$tmp/$suite/figures/$suite" "paper/figures/$suite" > /dev/null; then
    echo "paper/REPORT-$suite.md or paper/figures/$suite/ differ from what results/reference/$suite gives: cargo run --release -- figures results/reference/$suite" >&2
    exit 1
  fi
done
echo "paper: STUDY-fomoe-stability, REPORT-quick, REPORT-faults and their figures match their regeneration"

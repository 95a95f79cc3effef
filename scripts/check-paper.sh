#!/usr/bin/env bash
# CI: regenerate paper/REPORT.md and every committed figure from the committed reference
# results (paper/report.toml) into a temporary directory and fail when the committed files
# differ, are missing, or are stale. Writes nothing in the checkout; the temporary directory
# is removed by the command itself on every exit path it controls.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run --release --quiet -- paper-report paper/report.toml --check

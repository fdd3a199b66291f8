#!/usr/bin/env bash
# Runs Tessera's chaos suite: every scenario of `tessera-chaos` at full
# length, each on a fresh throwaway cluster (6 nodes in 3 regions, a router
# per region, a fault proxy on every link), and prints a markdown table.
#
#   scripts/chaos.sh                     all scenarios, 60 s each, mixed 120 s
#   scripts/chaos.sh --duration 90       longer runs
#   scripts/chaos.sh --seed 7            another fault schedule
#   scripts/chaos.sh --only pause,mixed  some scenarios
#   scripts/chaos.sh --brief             12 s each (what `cargo test` runs)
#   scripts/chaos.sh --long              one 500 s `mixed` run: 1000+ faults
#                                        and 8 resizes/moves; fails under 1000
#   scripts/chaos.sh --no-build          skip `cargo build --release --bins`
#
# Each scenario's full JSON report is appended to target-dir/chaos/
# results-<UTC time>.jsonl (printed at the end); a failed scenario keeps
# its cluster directory (logs, data) and names it in its summary.
# One scenario: tessera-chaos run --scenario NAME --duration S --seed N [--json]
#
# Exit status: 0 when every scenario passed, 1 when one found a violation,
# 3 when the harness could not run.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=60
mixed=120
seed=1
only=""
build=1
min_faults=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --duration) duration=$2; shift 2 ;;
        --mixed-duration) mixed=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        --only) only=$2; shift 2 ;;
        --brief) duration=12; mixed=15; shift ;;
        --long) only=mixed; mixed=500; min_faults=1000; shift ;;
        --no-build) build=0; shift ;;
        -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "chaos.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tessera-target}"
export CARGO_TERM_COLOR=never
if [[ $build -eq 1 ]]; then
    scripts/setup.sh
    cargo build --release --workspace --bins
fi

out_dir="$CARGO_TARGET_DIR/chaos"
mkdir -p "$out_dir"
out="$out_dir/results-$(date -u +%Y%m%dT%H%M%SZ).jsonl"
args=(suite --duration "$duration" --mixed-duration "$mixed" --seed "$seed" --out "$out"
      --min-faults "$min_faults")
if [[ -n "$only" ]]; then
    args+=(--scenarios "$only")
fi

status=0
"$CARGO_TARGET_DIR/release/tessera-chaos" "${args[@]}" || status=$?
echo
echo "JSON reports: $out"
exit "$status"

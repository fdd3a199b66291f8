#!/usr/bin/env bash
# Benchmarks with side-by-side baselines. Each section writes a Markdown
# report under docs/bench/ and prints it.
#
#   scripts/bench.sh [router ...]     # default: every section
#
# Sections:
#   write    documents/s acknowledged by a 3-node shard group (Raft over QUIC,
#            fsynced, applied, indexed on all replicas) vs raw in-process
#            tantivy indexing of the same Wikipedia articles, same run
#            (docs/bench/write.md). Knobs: BENCH_WRITE_DOCS (20000), BENCH_ROUNDS (3).
#   router   search p50/p90/p99 through a tessera-router with adaptive replica
#            selection vs round-robin, in the same run, on a healthy cluster and
#            with one replica slowed by +50 ms (docs/bench/router.md).
#            Knobs: BENCH_REQUESTS (2000), BENCH_CONCURRENCY (8), BENCH_DOCS (5000),
#            BENCH_SLOW_MS (50), BENCH_OUT (docs/bench/router.md).
#   acl      permission-filtered search latency (term-set filter over compiled
#            conjunct tokens) vs a naive post-filter (unfiltered search, oracle
#            per hit, first k allowed) on one in-process tantivy index, as the
#            documents hidden from the user grow 10k -> 100k -> 1M with 1k
#            visible; also the largest DNF of the demo data set
#            (docs/bench/acl.md). Knobs: BENCH_ACL_HIDDEN (10000,100000,1000000),
#            BENCH_ACL_VISIBLE (1000), BENCH_ACL_QUERIES (300). About 3 minutes
#            on 2 cores, most of it indexing the 1M documents.
#
# Builds in release mode with the shared target directory
# (CARGO_TARGET_DIR, default ~/.cache/tessera-target), so the node's C++
# dependencies compile once for tests, the cluster script and benchmarks.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tessera-target}"

sections=("$@")
if [ ${#sections[@]} -eq 0 ]; then
  sections=(write router acl)
fi

log() { printf '==> %s\n' "$*" >&2; }

bench_router() {
  log "building release binaries"
  cargo build --release --bins
  export BENCH_COMMIT="${BENCH_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+dirty')}"
  export BENCH_DATE="${BENCH_DATE:-$(date -u +%Y-%m-%dT%H:%MZ)}"
  export BENCH_OUT="${BENCH_OUT:-$root/docs/bench/router.md}"
  log "router benchmark (report: $BENCH_OUT)"
  "$CARGO_TARGET_DIR/release/router_bench"
}

bench_write() {
  log "building release binaries"
  cargo build --release --bins
  mkdir -p "$root/docs/bench"
  "$CARGO_TARGET_DIR/release/write_throughput" --docs "${BENCH_WRITE_DOCS:-20000}" \
    --rounds "${BENCH_ROUNDS:-3}" --out "$root/docs/bench/write.md"
}

bench_acl() {
  log "building the acl_filter benchmark"
  cargo build --release -p tessera-bench --bin acl_filter
  mkdir -p "$root/docs/bench"
  export BENCH_COMMIT="${BENCH_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo '+dirty')}"
  export BENCH_DATE="${BENCH_DATE:-$(date -u +%Y-%m-%dT%H:%MZ)}"
  "$CARGO_TARGET_DIR/release/acl_filter" --hidden "${BENCH_ACL_HIDDEN:-10000,100000,1000000}" \
    --visible "${BENCH_ACL_VISIBLE:-1000}" --queries "${BENCH_ACL_QUERIES:-300}" \
    --out "$root/docs/bench/acl.md"
}

for s in "${sections[@]}"; do
  case "$s" in
    write) bench_write ;;
    router) bench_router ;;
    acl) bench_acl ;;
    -h|--help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench.sh: unknown section '$s' (known: write, router, acl)" >&2; exit 2 ;;
  esac
done

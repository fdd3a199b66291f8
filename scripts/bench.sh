#!/usr/bin/env bash
# Benchmarks with same-run baselines. See docs/bench/README.md for how to
# read and reproduce every figure.
#
#   scripts/bench.sh [--quick]            # every section, then docs/bench/RESULTS.md + plots
#   scripts/bench.sh [--quick] SECTION... # only these sections (no RESULTS.md unless `report` is listed)
#
# Sections (each writes docs/bench/data/<name>.json or a Markdown report):
#   core        indexing docs/s through the router (3 replicas) vs raw tantivy;
#               search p50/p99 vs raw tantivy; queries/s at 1, 8, 64 clients
#   docs        latency and node RSS vs documents in one tenant
#   tenants     probe-tenant latency vs tenants sharing its shard
#   partitions  latency vs a tenant's partition count
#   write       a 3-node group's write throughput vs raw tantivy (docs/bench/write.md).
#               Knobs: BENCH_WRITE_DOCS (20000), BENCH_ROUNDS (3).
#   router      adaptive replica selection vs round-robin (docs/bench/router.md).
#               Knobs: BENCH_REQUESTS (2000), BENCH_CONCURRENCY (8), BENCH_DOCS (5000),
#               BENCH_SLOW_MS (50), BENCH_OUT (docs/bench/router.md).
#   acl         permission-filtered search latency (term-set filter over compiled
#               conjunct tokens) vs a naive post-filter (unfiltered search, oracle
#               per hit, first k allowed) on one in-process tantivy index, as the
#               documents hidden from the user grow 10k -> 100k -> 1M with 1k
#               visible; also the largest DNF of the demo data set
#               (docs/bench/acl.md). Knobs: BENCH_ACL_HIDDEN (10000,100000,1000000),
#               BENCH_ACL_VISIBLE (1000), BENCH_ACL_QUERIES (1000). About 3 minutes.
#   rerank      a node's search with a rank profile (100 candidates, 5 features,
#               one hop) vs plain BM25 and vs the two-hop design (node top 100,
#               then the same features from a Redis server on loopback); installs
#               Debian's redis-server if missing, starts it on 127.0.0.1 and stops
#               it by pid (docs/bench/rerank.md). Knobs: BENCH_RERANK_QUERIES
#               (1000; quick 400), BENCH_REDIS_PORT (6391).
#   security    search p50/p99 and queries/s at 1, 8, 64 clients through a secured
#               cluster (TLS client port, API key per request, mutual TLS router ->
#               node) vs an --unsecured twin running beside it (plaintext, no checks),
#               sides alternating query by query (docs/bench/security.md). Knobs:
#               BENCH_SECURITY_DOCS (20000; quick 5000), BENCH_SECURITY_QUERIES
#               (1000; quick 400), BENCH_SECURITY_REQUESTS (2000; quick 600).
#   report      renders docs/bench/RESULTS.md and docs/bench/plots/*.svg from
#               whatever results exist (and includes write/router/acl/rerank/security.md)
#
# BENCH_NO_BUILD=1 skips the build (the release binaries are already fresh);
# BENCH_BIN=DIR runs the binaries in DIR instead (no build).
#
# --quick shrinks every section (about 10 minutes on 2 cores once built);
# the full run is sized for about 60 minutes.
#
# Builds in release mode with the shared target directory
# (CARGO_TARGET_DIR, default ~/.cache/tessera-target), so the node's C++
# dependencies compile once for tests, the cluster script and benchmarks.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tessera-target}"
bin="$CARGO_TARGET_DIR/release"

quick=0
sections=()
for a in "$@"; do
  case "$a" in
    --quick) quick=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) sections+=("$a") ;;
  esac
done
if [ ${#sections[@]} -eq 0 ]; then
  sections=(core docs tenants partitions write router acl rerank security report)
fi

log() { printf '==> %s\n' "$*" >&2; }

export BENCH_COMMIT="${BENCH_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo '+dirty')}"
export BENCH_DATE="${BENCH_DATE:-$(date -u +%Y-%m-%dT%H:%MZ)}"
data="$root/docs/bench/data"
mkdir -p "$data"

# BENCH_NO_BUILD=1 uses the binaries already in $CARGO_TARGET_DIR/release;
# BENCH_BIN=DIR uses (and keeps) the binaries in DIR.
built="${BENCH_NO_BUILD:-0}"
if [ -n "${BENCH_BIN:-}" ]; then
  bin="$BENCH_BIN"
  built=1
fi
build() {
  if [ "$built" = 0 ]; then
    log "building release binaries (node, router, CLI, benchmarks)"
    cargo build --release -p tessera-node -p tessera-router -p tessera-client -p tessera-bench --bins
    built=1
    private_bins
  fi
}

# The shared target directory is also built into from other worktrees, so
# right after building, the binaries this run uses are copied (without debug
# info) to a private directory: node, router and benchmarks then all come
# from this tree for the whole run. Benchmarks find tessera-node and
# tessera-router beside themselves.
private_bins() {
  local dir
  dir="$(mktemp -d "${TMPDIR:-/tmp}/tessera-bench-bin.XXXXXX")"
  for b in tessera-node tessera-router tessera bench_suite router_bench write_throughput acl_filter rerank_bench; do
    if [ -x "$bin/$b" ]; then
      objcopy --strip-debug "$bin/$b" "$dir/$b" 2>/dev/null || cp "$bin/$b" "$dir/$b"
    fi
  done
  bin="$dir"
  trap 'rm -rf "$bin"' EXIT
}

suite() { "$bin/bench_suite" --data "$data" "$@"; }

# Sizes: quick | full.
pick() { if [ "$quick" = 1 ]; then echo "$1"; else echo "$2"; fi; }

bench_core() {
  build
  log "core: indexing, search latency, throughput"
  suite core --docs "$(pick 20000 50000)" --rounds 3 --queries "$(pick 1000 2000)" \
    --clients 1,8,64 --requests "$(pick 1500 5000)"
}

bench_docs() {
  build
  log "docs: latency and memory vs documents"
  suite docs --sizes "$(pick 10000,30000,80000 10000,30000,100000,300000,1000000)" \
    --queries "$(pick 200 500)"
}

bench_tenants() {
  build
  log "tenants: probe latency vs tenants on one shard"
  suite tenants --counts "$(pick 1,10,100,1000,5000 1,10,100,1000,10000)" \
    --probe-docs "$(pick 2000 5000)" --filler-docs 5 --queries "$(pick 150 300)"
}

bench_partitions() {
  build
  log "partitions: latency vs partition count"
  suite partitions --counts "$(pick 1,2,4,8 1,2,4,8,16)" --docs "$(pick 16000 20000)" \
    --queries "$(pick 200 500)"
}

bench_router() {
  build
  export BENCH_OUT="${BENCH_OUT:-$root/docs/bench/router.md}"
  if [ "$quick" = 1 ]; then
    export BENCH_REQUESTS="${BENCH_REQUESTS:-400}" BENCH_DOCS="${BENCH_DOCS:-2000}"
  fi
  log "router benchmark (report: $BENCH_OUT)"
  "$bin/router_bench"
}

bench_write() {
  build
  mkdir -p "$root/docs/bench"
  "$bin/write_throughput" --docs "${BENCH_WRITE_DOCS:-$(pick 5000 20000)}" \
    --rounds "${BENCH_ROUNDS:-3}" --out "$root/docs/bench/write.md"
}

# Hooks for benchmarks other engineers add to the bench crate: a binary
# named <section>_bench that writes docs/bench/<section>.md.
bench_hook() {
  local name="$1"
  build
  if [ -x "$bin/${name}_bench" ]; then
    log "$name benchmark"
    BENCH_QUICK="$quick" "$bin/${name}_bench" --out "$root/docs/bench/$name.md"
  else
    log "$name: no ${name}_bench binary in the bench crate yet; skipped"
  fi
}

bench_report() {
  build
  log "report: docs/bench/RESULTS.md and docs/bench/plots/"
  suite report --out "$root/docs/bench/RESULTS.md" --plots "$root/docs/bench/plots" \
    --label "$(pick quick full)" \
    --include "$root/docs/bench/write.md" --include "$root/docs/bench/router.md" \
    --include "$root/docs/bench/acl.md" --include "$root/docs/bench/rerank.md" \
    --include "$root/docs/bench/security.md"
}

bench_security() {
  build
  log "security: TLS + keys vs an --unsecured twin (docs/bench/security.md)"
  suite security --docs "${BENCH_SECURITY_DOCS:-$(pick 5000 20000)}" \
    --queries "${BENCH_SECURITY_QUERIES:-$(pick 400 1000)}" --clients 1,8,64 \
    --requests "${BENCH_SECURITY_REQUESTS:-$(pick 600 2000)}" --rounds 3 \
    --out "$root/docs/bench/security.md"
}

bench_rerank() {
  build
  if ! command -v redis-server >/dev/null 2>&1; then
    log "rerank: installing redis-server"
    if [ "$(id -u)" = 0 ]; then
      apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
    else
      sudo apt-get update -qq && sudo apt-get install -y -qq redis-server >/dev/null
    fi
  fi
  local port="${BENCH_REDIS_PORT:-6391}" rdir
  rdir="$(mktemp -d "${TMPDIR:-/tmp}/tessera-redis.XXXXXX")"
  redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
    --dir "$rdir" >"$rdir/redis.log" 2>&1 &
  local rpid=$!
  local i
  for i in $(seq 1 100); do
    if redis-cli -h 127.0.0.1 -p "$port" ping >/dev/null 2>&1; then break; fi
    if ! kill -0 "$rpid" 2>/dev/null; then
      echo "bench.sh: redis-server exited; see $rdir/redis.log" >&2
      cat "$rdir/redis.log" >&2
      return 1
    fi
    sleep 0.1
  done
  log "rerank: one hop vs BM25 vs two hops through redis (pid $rpid, port $port)"
  local status=0
  BENCH_COMMIT="${BENCH_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}" \
  BENCH_DATE="${BENCH_DATE:-$(date -u +%Y-%m-%dT%H:%MZ)}" \
    "$bin/rerank_bench" --redis "redis://127.0.0.1:$port/" \
    --queries "${BENCH_RERANK_QUERIES:-$(pick 400 1000)}" \
    --out "$root/docs/bench/rerank.md" || status=$?
  kill "$rpid" 2>/dev/null || true
  wait "$rpid" 2>/dev/null || true
  rm -rf "$rdir"
  return "$status"
}

bench_acl() {
  build
  log "acl: permission filter vs naive post-filter (docs/bench/acl.md)"
  BENCH_COMMIT="${BENCH_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}" \
  BENCH_DATE="${BENCH_DATE:-$(date -u +%Y-%m-%dT%H:%MZ)}" \
    "$bin/acl_filter" --hidden "${BENCH_ACL_HIDDEN:-10000,100000,1000000}" \
    --visible "${BENCH_ACL_VISIBLE:-1000}" --queries "${BENCH_ACL_QUERIES:-1000}" \
    --out "$root/docs/bench/acl.md"
}

start=$(date +%s)
for s in "${sections[@]}"; do
  t0=$(date +%s)
  case "$s" in
    core) bench_core ;;
    docs) bench_docs ;;
    tenants) bench_tenants ;;
    partitions) bench_partitions ;;
    write) bench_write ;;
    router) bench_router ;;
    acl) bench_acl ;;
    rerank) bench_rerank ;;
    security) bench_security ;;
    report) bench_report ;;
    *) echo "bench.sh: unknown section '$s' (known: core docs tenants partitions write router acl rerank security report)" >&2; exit 2 ;;
  esac
  log "$s took $(( $(date +%s) - t0 )) s"
done
log "total $(( $(date +%s) - start )) s"

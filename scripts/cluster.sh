#!/usr/bin/env bash
# A local multi-region Tessera cluster on this machine.
#
# Usage: scripts/cluster.sh COMMAND [OPTIONS]
#
#   up [--regions N] [--nodes-per-region N] [--no-demo]
#      [--tenants N] [--docs N] [--seed S] [--latency fast|wan|MS] [--no-build]
#        Build the release binaries (installing missing system packages with
#        scripts/setup.sh), generate certificates, and start N regions
#        (default 3: us-east, eu-west, ap-south) of nodes (default 2 per
#        region, zones a, b, ...), one router per region, and one chaos
#        proxy that adds region-to-region latency (20-80 ms one way) on every
#        inter-region link: UDP for Raft between nodes, TCP for router->node
#        gRPC. --latency picks the matrix: wan (default; us-east<->eu-west
#        40, eu-west<->ap-south 60, us-east<->ap-south 80 ms), fast (20, 30,
#        40 ms), or one number of ms for every pair. Waits until every router answers, writes .cluster/cluster.json,
#        then (unless --no-demo) loads the synthetic demo set (--tenants,
#        default 20; --docs in total, default 10000; --seed, default 42) and
#        prints the endpoints and commands to try.
#        If the cluster is already up, says so and exits 0; processes of it
#        that died are restarted on their data. A stopped cluster is
#        replaced by a fresh one.
#   down
#        Stop the processes this script started (SIGTERM, then SIGKILL for
#        any still running after 15 s). Data and logs stay under .cluster/.
#   status
#        Show each process (alive or dead) and `tessera status`.
#        Exit status 0 when everything runs, 1 otherwise.
#   kill NODE_ID
#        kill -9 that node (a crash).
#   start NODE_ID
#        Restart that node on its data and wait until it serves.
#   help, -h, --help
#        This text.
#
# Addresses: node ID of region r (1-based), k-th in its region, listens on
# 127.0.0.<10r+k>: Raft (QUIC) on UDP 7100, gRPC on 7200, metrics on 7400.
# Routers listen on 127.0.0.1:7300+r-1 (metrics 7310+r-1); the chaos proxy's
# control port is 127.0.0.1:7390 (`tessera-chaos ctl --addr 127.0.0.1:7390 list`).
# Everything lives in .cluster/ (logs in .cluster/logs/). Only processes
# whose pids this script recorded there are ever signalled.
#
# Environment: CARGO_TARGET_DIR (default ~/.cache/tessera-target),
# TESSERA_WIKI (the Wikipedia dump; default ../shared/data/...; made-up
# text is used when it is missing), TESSERA_UP_TIMEOUT (seconds to wait
# for the cluster, default 180), TESSERA_LOAD_JOBS (tenants loaded at once,
# default 3), TESSERA_LOAD_BATCH (documents per write, default 200).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CDIR="$ROOT/.cluster"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tessera-target}
BIN="$CARGO_TARGET_DIR/release"
LOGS="$CDIR/logs"
PIDS="$CDIR/pids"
WIKI=${TESSERA_WIKI:-$ROOT/../shared/data/enwiki2014_chunk_262k.jsonl.zst}
UP_TIMEOUT=${TESSERA_UP_TIMEOUT:-180}

REGION_NAMES=(us-east eu-west ap-south us-west eu-central ap-northeast sa-east ca-central af-south)
ZONES=(a b c d e f g h i)
RAFT_PORT=7100
GRPC_PORT=7200
NODE_METRICS_PORT=7400
ROUTER_PORT=7300
ROUTER_METRICS_PORT=7310
CHAOS_CONTROL="127.0.0.1:7390"
UDP_PROXY_IP=127.0.0.2
TCP_PROXY_IP=127.0.0.3

# Layout, set by `up` or read back from .cluster/layout.env.
NREGIONS=3
NPR=2

say() { printf '%s\n' "$*"; }
warn() { printf 'cluster.sh: %s\n' "$*" >&2; }
die() {
    warn "$*"
    exit 1
}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

# ---------------------------------------------------------------- layout

region_name() { say "${REGION_NAMES[$(($1 - 1))]}"; }            # 1-based
node_region() { say $(((($1 - 1) / NPR) + 1)); }                  # id -> r
node_rank() { say $(((($1 - 1) % NPR) + 1)); }                    # id -> k
node_ip() { say "127.0.0.$((10 * $(node_region "$1") + $(node_rank "$1")))"; }
node_zone() { say "${ZONES[$(($(node_rank "$1") - 1))]}"; }
router_addr() { say "127.0.0.1:$((ROUTER_PORT + $1 - 1))"; }      # r -> addr
nnodes() { say $((NREGIONS * NPR)); }

# One-way latency in ms between regions a and b (1-based), all within
# 20-80 ms. `--latency` picks a matrix:
#   wan (default)   us-east<->eu-west 40, eu-west<->ap-south 60, us-east<->ap-south 80
#   fast            us-east<->eu-west 20, eu-west<->ap-south 30, us-east<->ap-south 40
#   MS              the same number for every pair
# Regions past the third get a fixed value from the pair.
latency() {
    local a=$1 b=$2 t
    if ((a > b)); then t=$a; a=$b; b=$t; fi
    case "$LATENCY" in
    fast)
        case "$a-$b" in
        1-2) say 20 ;; 1-3) say 40 ;; 2-3) say 30 ;;
        *) say $((20 + ((5 * a + 3 * b) % 3) * 10)) ;;
        esac
        ;;
    wan)
        case "$a-$b" in
        1-2) say 40 ;; 1-3) say 80 ;; 2-3) say 60 ;;
        *) say $((20 + ((5 * a + 3 * b) % 7) * 10)) ;;
        esac
        ;;
    *) say "$LATENCY" ;;
    esac
}

udp_proxy_addr() { say "$UDP_PROXY_IP:$((10000 + 100 * $1 + $2))"; } # from to
tcp_proxy_addr() { say "$TCP_PROXY_IP:$((10000 + 100 * $1 + $2))"; } # router-region node

load_layout() {
    [[ -f "$CDIR/layout.env" ]] || return 1
    # shellcheck source=/dev/null
    . "$CDIR/layout.env"
}

# ---------------------------------------------------------------- processes

# What a recorded process's command line must contain to be ours.
proc_match() {
    case "$1" in
    node-*) say "--data $CDIR/data/n${1#node-}" ;;
    router-*) say "--listen $(router_addr "${1#router-}")" ;;
    chaos) say "--config $CDIR/links.json" ;;
    esac
}

# Prints the pid of process NAME (node-ID, router-R, chaos) if it is alive
# and still the process this script started; fails otherwise.
live_pid() {
    local name=$1 pid cmd
    [[ -f "$PIDS/$name.pid" ]] || return 1
    pid=$(<"$PIDS/$name.pid")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ "$cmd" == *"$(proc_match "$name") "* || "$cmd" == *"$(proc_match "$name")" ]] || return 1
    say "$pid"
}

recorded_pid() { if [[ -f "$PIDS/$1.pid" ]]; then cat "$PIDS/$1.pid"; else say null; fi; }

all_names() {
    local r id
    [[ -f "$CDIR/links.json" ]] && say chaos
    for ((id = 1; id <= $(nnodes); id++)); do say "node-$id"; done
    for ((r = 1; r <= NREGIONS; r++)); do say "router-$r"; done
}

# Runs a command detached (own session, stdin closed, output appended to a
# log) and records its pid.
spawn() {
    local name=$1 log=$2
    shift 2
    printf '=== %s starting: %s\n' "$(date -u +%FT%TZ)" "$*" >>"$log"
    setsid "$@" >>"$log" 2>&1 </dev/null &
    say $! >"$PIDS/$name.pid"
}

tcp_open() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }

start_chaos() {
    [[ -f "$CDIR/links.json" ]] || return 0
    : >"$LOGS/chaos.log"
    spawn chaos "$LOGS/chaos.log" "$BIN/tessera-chaos" proxy --config "$CDIR/links.json" --control "$CHAOS_CONTROL"
}

start_node_proc() {
    local id=$1
    mkdir -p "$CDIR/data/n$id"
    spawn "node-$id" "$LOGS/node-$id.log" "$BIN/tessera-node" run --config "$CDIR/cluster.toml" \
        --id "$id" --data "$CDIR/data/n$id" --certs "$CDIR/certs"
}

start_router_proc() {
    local r=$1 id nr seeds=() routes=() remote=()
    for ((id = 1; id <= $(nnodes); id++)); do
        nr=$(node_region "$id")
        if ((nr == r)); then
            seeds+=("$(node_ip "$id"):$GRPC_PORT")
        elif [[ $NODE_ROUTE == yes ]]; then
            remote+=("$(tcp_proxy_addr "$r" "$id")")
            routes+=(--node-route "$id=$(tcp_proxy_addr "$r" "$id")")
        else
            remote+=("$(node_ip "$id"):$GRPC_PORT")
        fi
    done
    seeds+=("${remote[@]}")
    local IFS=,
    spawn "router-$r" "$LOGS/router-$(region_name "$r").log" "$BIN/tessera-router" \
        --listen "$(router_addr "$r")" --region "$(region_name "$r")" \
        --metrics "127.0.0.1:$((ROUTER_METRICS_PORT + r - 1))" --seeds "${seeds[*]}" "${routes[@]}" \
        --certs "$CDIR/certs" --audit-log "$LOGS/audit-$(region_name "$r").jsonl"
}

# Waits until CHECK (a command) succeeds, polling; fails after SECS seconds
# or as soon as process NAME (if given) dies.
wait_for() {
    local what=$1 secs=$2 name=$3
    shift 3
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if [[ -n "$name" ]] && ! live_pid "$name" >/dev/null; then
            warn "$what: $name exited; the end of its log:"
            tail -n 20 "$(log_of "$name")" >&2 || true
            return 1
        fi
        if ((SECONDS >= deadline)); then
            warn "$what: not ready after ${secs}s"
            return 1
        fi
        sleep 0.2
    done
}

log_of() {
    case "$1" in
    node-*) say "$LOGS/$1.log" ;;
    router-*) say "$LOGS/router-$(region_name "${1#router-}").log" ;;
    chaos) say "$LOGS/chaos.log" ;;
    esac
}

chaos_ready() { grep -q '"ready":true' "$LOGS/chaos.log"; }
router_ready() { "$BIN/tessera" --router "$(router_addr "$1")" --timeout-ms 2000 status; }
nodes_all_up() {
    local out
    out=$("$BIN/tessera" --router "$(router_addr 1)" --timeout-ms 2000 status --json) || return 1
    [[ $(grep -o '"state":"up"' <<<"$out" | wc -l) -eq $(nnodes) ]]
}

# Stops the named processes: SIGTERM, then SIGKILL after a bounded wait.
stop_procs() {
    local name pid alive=() deadline
    for name in "$@"; do
        if pid=$(live_pid "$name"); then
            kill -TERM "$pid" 2>/dev/null || true
            alive+=("$name")
        fi
    done
    deadline=$((SECONDS + 15))
    while ((${#alive[@]} > 0)) && ((SECONDS < deadline)); do
        local still=()
        for name in "${alive[@]}"; do
            live_pid "$name" >/dev/null && still+=("$name")
        done
        alive=("${still[@]+"${still[@]}"}")
        ((${#alive[@]} > 0)) && sleep 0.2
    done
    for name in "${alive[@]+"${alive[@]}"}"; do
        if pid=$(live_pid "$name"); then
            warn "$name (pid $pid) ignored SIGTERM for 15s; killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}

# ---------------------------------------------------------------- files

write_cluster_toml() {
    local id a b
    {
        say "# Written by scripts/cluster.sh: $NREGIONS regions x $NPR nodes."
        for ((id = 1; id <= $(nnodes); id++)); do
            say ""
            say "[[node]]"
            say "id = $id"
            say "region = \"$(region_name "$(node_region "$id")")\""
            say "zone = \"$(node_zone "$id")\""
            say "raft = \"$(node_ip "$id"):$RAFT_PORT\""
            say "grpc = \"$(node_ip "$id"):$GRPC_PORT\""
            say "metrics = \"$(node_ip "$id"):$NODE_METRICS_PORT\""
        done
        say ""
        say "# Raft between regions goes through the chaos proxy (latency per region pair)."
        for ((a = 1; a <= $(nnodes); a++)); do
            for ((b = 1; b <= $(nnodes); b++)); do
                [[ $(node_region "$a") == "$(node_region "$b")" ]] && continue
                say ""
                say "[[route]]"
                say "from = $a"
                say "to = $b"
                say "raft = \"$(udp_proxy_addr "$a" "$b")\""
            done
        done
    } >"$CDIR/cluster.toml"
}

write_links_json() {
    local a b r lat links=()
    for ((a = 1; a <= $(nnodes); a++)); do
        for ((b = 1; b <= $(nnodes); b++)); do
            [[ $(node_region "$a") == "$(node_region "$b")" ]] && continue
            lat=$(latency "$(node_region "$a")" "$(node_region "$b")")
            links+=("{\"name\":\"n$a->n$b\",\"proto\":\"udp\",\"listen\":\"$(udp_proxy_addr "$a" "$b")\",\"target\":\"$(node_ip "$b"):$RAFT_PORT\",\"faults\":{\"latency_ms\":$lat}}")
        done
    done
    if [[ $NODE_ROUTE == yes ]]; then
        for ((r = 1; r <= NREGIONS; r++)); do
            for ((b = 1; b <= $(nnodes); b++)); do
                [[ $(node_region "$b") == "$r" ]] && continue
                lat=$(latency "$r" "$(node_region "$b")")
                links+=("{\"name\":\"$(region_name "$r")-router->n$b\",\"proto\":\"tcp\",\"listen\":\"$(tcp_proxy_addr "$r" "$b")\",\"target\":\"$(node_ip "$b"):$GRPC_PORT\",\"faults\":{\"latency_ms\":$lat}}")
            done
        done
    fi
    rm -f "$CDIR/links.json"
    ((${#links[@]} > 0)) || return 0
    local IFS=,
    printf '[\n%s\n]\n' "${links[*]}" | sed 's/},{"name"/},\n{"name"/g' >"$CDIR/links.json"
}

write_cluster_json() {
    local r id sep="" tmp="$CDIR/cluster.json.tmp"
    {
        printf '{"routers":['
        for ((r = 1; r <= NREGIONS; r++)); do
            printf '%s\n  {"region":"%s","addr":"%s","pid":%s,"metrics":"127.0.0.1:%s"}' "$sep" \
                "$(region_name "$r")" "$(router_addr "$r")" "$(recorded_pid "router-$r")" $((ROUTER_METRICS_PORT + r - 1))
            sep=","
        done
        printf '],\n"nodes":['
        sep=""
        for ((id = 1; id <= $(nnodes); id++)); do
            printf '%s\n  {"id":%s,"region":"%s","zone":"%s","grpc":"%s:%s","pid":%s,"raft":"%s:%s","metrics":"%s:%s"}' "$sep" \
                "$id" "$(region_name "$(node_region "$id")")" "$(node_zone "$id")" "$(node_ip "$id")" "$GRPC_PORT" \
                "$(recorded_pid "node-$id")" "$(node_ip "$id")" "$RAFT_PORT" "$(node_ip "$id")" "$NODE_METRICS_PORT"
            sep=","
        done
        printf '],\n'
        if [[ -f "$CDIR/links.json" ]]; then
            printf '"chaos_control":"%s","chaos_pid":%s,\n' "$CHAOS_CONTROL" "$(recorded_pid chaos)"
        else
            printf '"chaos_control":null,"chaos_pid":null,\n'
        fi
        printf '"ca":"%s","admin_key_file":"%s",\n"tenant_keys":{' "$CDIR/certs/ca.pem" "$CDIR/certs/admin.key"
        sep=""
        local key
        for key in "$CDIR"/keys/*.key; do
            [[ -f "$key" ]] || continue
            printf '%s"%s":"%s"' "$sep" "$(basename "$key" .key)" "$key"
            sep=","
        done
        printf '},\n'
        if [[ $NODE_ROUTE == yes ]]; then printf '"node_routes":true}\n'; else printf '"node_routes":false}\n'; fi
    } >"$tmp"
    mv "$tmp" "$CDIR/cluster.json"
}

# ---------------------------------------------------------------- commands

build() {
    "$ROOT/scripts/setup.sh"
    say "building release binaries (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)..."
    (cd "$ROOT" && cargo build --release -p tessera-node -p tessera-router -p tessera-client -p tessera-chaos --bins) ||
        die "build failed"
}

check_binaries() {
    local b
    for b in tessera-node tessera-router tessera tessera-chaos tessera-demo; do
        [[ -x "$BIN/$b" ]] || die "$BIN/$b is missing: run without --no-build"
    done
    if "$BIN/tessera-router" --help 2>/dev/null | grep -q -- '--node-route'; then
        ROUTER_HAS_NODE_ROUTE=yes
    else
        ROUTER_HAS_NODE_ROUTE=no
    fi
}

any_alive() {
    local name
    for name in $(all_names); do live_pid "$name" >/dev/null && return 0; done
    return 1
}

cmd_up() {
    local demo=yes do_build=yes tenants=20 docs=10000 seed=42 regions="" npr="" latency=wan
    while (($# > 0)); do
        case "$1" in
        --regions) regions=${2:?--regions needs a number}; shift 2 ;;
        --nodes-per-region) npr=${2:?--nodes-per-region needs a number}; shift 2 ;;
        --no-demo) demo=no; shift ;;
        --no-build) do_build=no; shift ;;
        --tenants) tenants=${2:?--tenants needs a number}; shift 2 ;;
        --docs) docs=${2:?--docs needs a number}; shift 2 ;;
        --seed) seed=${2:?--seed needs a number}; shift 2 ;;
        --latency) latency=${2:?--latency needs wan, fast or a number of ms}; shift 2 ;;
        *) die "up: unknown option $1 (see scripts/cluster.sh --help)" ;;
        esac
    done
    for v in "${regions:-3}" "${npr:-2}"; do
        [[ "$v" =~ ^[1-9]$ ]] || die "--regions and --nodes-per-region must be 1 to 9, got $v"
    done
    [[ "$latency" =~ ^(fast|wan|[0-9]+)$ ]] || die "--latency takes fast, wan or a number of ms, got $latency"
    for v in "$tenants" "$docs" "$seed"; do
        [[ "$v" =~ ^[0-9]+$ ]] || die "--tenants, --docs and --seed take numbers, got $v"
    done

    local started=$SECONDS
    if [[ $do_build == yes ]]; then build; fi
    check_binaries

    # Already up? Then make sure every process runs and stop there.
    if load_layout && any_alive; then
        if [[ -n "$regions$npr" && "${regions:-$NREGIONS}x${npr:-$NPR}" != "${NREGIONS}x$NPR" ]]; then
            die "a ${NREGIONS}x$NPR cluster is already up; run scripts/cluster.sh down first to change the layout"
        fi
        local name restarted=0
        mkdir -p "$LOGS" "$PIDS"
        for name in $(all_names); do
            live_pid "$name" >/dev/null && continue
            say "restarting $name (it was not running)"
            case "$name" in
            chaos) start_chaos ;;
            node-*) start_node_proc "${name#node-}" ;;
            router-*) start_router_proc "${name#router-}" ;;
            esac
            restarted=$((restarted + 1))
        done
        for ((r = 1; r <= NREGIONS; r++)); do
            wait_for "router $(region_name "$r")" "$UP_TIMEOUT" "router-$r" router_ready "$r" || die "the cluster is not healthy; see $LOGS"
        done
        write_cluster_json
        if ((restarted == 0)); then
            say "the cluster is already up ($NREGIONS regions x $NPR nodes); nothing to do"
        else
            say "the cluster is up again: restarted $restarted process(es)"
        fi
        print_endpoints
        return 0
    fi

    NREGIONS=${regions:-3}
    NPR=${npr:-2}
    NODE_ROUTE=$ROUTER_HAS_NODE_ROUTE
    LATENCY=$latency
    ((NREGIONS <= ${#REGION_NAMES[@]})) || die "at most ${#REGION_NAMES[@]} regions"
    local r id
    for ((r = 1; r <= NREGIONS; r++)); do
        tcp_open "$(router_addr "$r")" && die "$(router_addr "$r") is already in use (another cluster from a different checkout?)"
    done
    for ((id = 1; id <= NREGIONS * NPR; id++)); do
        tcp_open "$(node_ip "$id"):$GRPC_PORT" && die "$(node_ip "$id"):$GRPC_PORT is already in use (another cluster from a different checkout?)"
    done

    # A fresh cluster: forget the state of a stopped one.
    rm -rf "$CDIR/data" "$CDIR/certs" "$CDIR/keys" "$CDIR/demo" "$PIDS" "$LOGS" "$CDIR/cluster.json" "$CDIR/links.json"
    mkdir -p "$CDIR" "$LOGS" "$PIDS" "$CDIR/data" "$CDIR/keys"
    chmod 700 "$CDIR/keys"
    printf 'NREGIONS=%s\nNPR=%s\nNODE_ROUTE=%s\nLATENCY=%s\n' "$NREGIONS" "$NPR" "$NODE_ROUTE" "$LATENCY" >"$CDIR/layout.env"
    write_cluster_toml
    write_links_json
    "$BIN/tessera-node" certs --config "$CDIR/cluster.toml" --out "$CDIR/certs" >>"$LOGS/certs.log" 2>&1 ||
        die "generating certificates failed; see $LOGS/certs.log"
    use_admin_credentials

    say "starting $NREGIONS regions x $NPR nodes, $NREGIONS routers$([[ -f $CDIR/links.json ]] && say ", and the latency proxy")..."
    if [[ $NODE_ROUTE == no && $NREGIONS -gt 1 ]]; then
        warn "tessera-router has no --node-route flag yet: routers reach other regions' nodes directly (no injected router->node latency)"
    fi
    start_chaos
    if [[ -f "$CDIR/links.json" ]]; then
        wait_for "chaos proxy" 30 chaos chaos_ready || die "the latency proxy did not start; see $LOGS/chaos.log"
    fi
    for ((id = 1; id <= $(nnodes); id++)); do start_node_proc "$id"; done
    for ((id = 1; id <= $(nnodes); id++)); do
        wait_for "node $id" "$UP_TIMEOUT" "node-$id" tcp_open "$(node_ip "$id"):$GRPC_PORT" ||
            die "node $id did not start; see $LOGS/node-$id.log (stop the rest with scripts/cluster.sh down)"
    done
    for ((r = 1; r <= NREGIONS; r++)); do start_router_proc "$r"; done
    for ((r = 1; r <= NREGIONS; r++)); do
        wait_for "router $(region_name "$r")" "$UP_TIMEOUT" "router-$r" router_ready "$r" ||
            die "router $(region_name "$r") is not answering; see $(log_of "router-$r") (stop the rest with scripts/cluster.sh down)"
    done
    write_cluster_json
    wait_for "every node up in the cluster map" "$UP_TIMEOUT" "" nodes_all_up ||
        warn "not every node is reported up yet; continuing"
    say "cluster up in $((SECONDS - started))s"

    if [[ $demo == yes ]]; then
        load_demo "$tenants" "$docs" "$seed" || die "loading the demo set failed (the cluster stays up; scripts/cluster.sh down stops it)"
    fi
    print_endpoints
    say "up took $((SECONDS - started))s"
}

# Runs the CLI, appending its output to LOG, retrying while it says
# "retryable" (exit 3 or 5) for up to two minutes. Writes are idempotent,
# so retrying a put or groups load is safe.
cli_retry() {
    local log=$1 deadline=$((SECONDS + 120)) rc
    shift
    while :; do
        rc=0
        "$BIN/tessera" "$@" >>"$log" 2>&1 || rc=$?
        if [[ $rc -eq 0 ]]; then return 0; fi
        # Right after `tenant create` a node may not have opened a new shard
        # yet and answers NOT_FOUND ("shard N has no replica on node M"):
        # that is transient too.
        if [[ $rc -eq 2 ]] && tail -n 1 "$log" | grep -q "has no replica on node"; then rc=3; fi
        if [[ $rc -ne 3 && $rc -ne 5 ]] || ((SECONDS >= deadline)); then return "$rc"; fi
        printf 'retrying (exit %s)\n' "$rc" >>"$log"
        sleep 1
    done
}

# Creates one tenant and loads its groups and documents through its home
# region's router. Logs to .cluster/logs/load-ID.log; on success prints a
# summary line and leaves ID.ok next to the data.
load_tenant() {
    local id=$1 regs=$2 home=$3 survival=$4 parts=$5 ndocs=$6 dir=$7 t0=$SECONDS
    local log="$LOGS/load-$id.log" out acked
    : >"$log"
    if ! cli_retry "$log" --region "$home" tenant create "$id" --regions "$regs" --home "$home" \
        --survival "$survival" --partitions "$parts"; then
        # A retried create whose first attempt went through is fine.
        tail -n 1 "$log" | grep -q "already exists" || { warn "creating tenant $id failed; see $log"; return 1; }
    fi
    cli_retry "$log" --region "$home" groups "$id" "$dir/groups.jsonl" ||
        { warn "loading the groups of $id failed; see $log"; return 1; }
    cli_retry "$log" --region "$home" put "$id" "$dir/docs.jsonl" --batch "$LOAD_BATCH" --json ||
        { warn "loading the documents of $id failed; see $log"; return 1; }
    out=$(grep '"acked"' "$log" | tail -n 1)
    acked=$(grep -o '"acked":[0-9]*' <<<"$out" | cut -d: -f2)
    [[ "$acked" == "$ndocs" ]] || { warn "tenant $id: ${acked:-no} of $ndocs documents acknowledged; see $log"; return 1; }
    # Features, rank profiles and the demo experiment, then the simulated activity.
    cli_retry "$log" --region "$home" features apply "$id" "$ROOT/scripts/demo-features.toml" ||
        { warn "registering the features of $id failed; see $log"; return 1; }
    if [[ -s "$dir/events.jsonl" ]]; then
        cli_retry "$log" --region "$home" events "$id" "$dir/events.jsonl" ||
            { warn "loading the events of $id failed; see $log"; return 1; }
    fi
    # A search/write/features key of the tenant's own, so the tour does not
    # use the admin key for tenant work (cluster.json lists it).
    if [[ ! -s "$CDIR/keys/$id.key" ]]; then
        cli_retry "$log" --region "$home" keys create --tenant "$id" --scopes search,write,features \
            --name demo --out "$CDIR/keys/$id.key" ||
            { warn "creating the key of $id failed; see $log"; return 1; }
    fi
    : >"$dir.ok"
    printf '  %-10s %5s docs  p=%s  %-34s %2ss\n' "$id" "$ndocs" "$parts" "$regs ($survival)" $((SECONDS - t0))
}

load_demo() {
    local tenants=$1 docs=$2 seed=$3 t0=$SECONDS regions_csv r text=()
    regions_csv=$(for ((r = 1; r <= NREGIONS; r++)); do region_name "$r"; done | paste -sd, -)
    if [[ -f "$WIKI" ]]; then
        text=(--wiki "$WIKI")
    else
        warn "$WIKI is missing; the demo uses made-up text"
        text=(--synthetic-text)
    fi
    say "generating the demo set ($tenants tenants, $docs docs, seed $seed)..."
    "$BIN/tessera-demo" generate "${text[@]}" --out "$CDIR/demo" --tenants "$tenants" --docs "$docs" \
        --seed "$seed" --regions "$regions_csv" >>"$LOGS/demo.log" 2>&1 || return 1
    say "loading it, $LOAD_JOBS tenants at a time (logs in .cluster/logs/load-*.log)..."
    local id regs home survival parts ndocs dir running=0 failed=0 all=()
    while IFS=$'\t' read -r id regs home survival parts ndocs dir _; do
        all+=("$dir")
        if ((running >= LOAD_JOBS)); then
            wait -n || failed=1
            running=$((running - 1))
        fi
        load_tenant "$id" "$regs" "$home" "$survival" "$parts" "$ndocs" "$dir" &
        running=$((running + 1))
    done < <("$BIN/tessera-demo" tenants "$CDIR/demo")
    while ((running > 0)); do
        wait -n || failed=1
        running=$((running - 1))
    done
    for dir in "${all[@]}"; do [[ -f "$dir.ok" ]] || failed=1; done
    ((failed == 0)) || return 1
    write_cluster_json
    say "demo set loaded in $((SECONDS - t0))s"
}

print_endpoints() {
    local r id example=""
    say ""
    say "Tessera is up: $NREGIONS region(s) x $NPR node(s)."
    say "  routers:"
    for ((r = 1; r <= NREGIONS; r++)); do
        say "    $(printf '%-9s' "$(region_name "$r")") $(router_addr "$r")"
    done
    say "  nodes (gRPC):"
    for ((id = 1; id <= $(nnodes); id++)); do
        say "    $(printf '%2s  %-9s zone %s' "$id" "$(region_name "$(node_region "$id")")" "$(node_zone "$id")")  $(node_ip "$id"):$GRPC_PORT"
    done
    if [[ -f "$CDIR/links.json" ]]; then
        say "  latency proxy control: $CHAOS_CONTROL  (tessera-chaos ctl --addr $CHAOS_CONTROL list)"
    fi
    say "  cluster file: .cluster/cluster.json   logs: .cluster/logs/"
    if [[ -f "$CDIR/demo/tenants.json" ]]; then
        # sed reads all of its input: `head` could exit first and fail the pipe (SIGPIPE).
        example=$("$BIN/tessera-demo" tenants "$CDIR/demo" 2>/dev/null | sed -n 1p)
    fi
    say ""
    say "Try (from $ROOT):"
    say "  export PATH=\"$BIN:\$PATH\""
    say "  tessera status"
    if [[ -n "$example" ]]; then
        local t user query other
        t=$(cut -f1 <<<"$example")
        user=$(cut -f8 <<<"$example")
        query=$(cut -f9 <<<"$example")
        other=$(cut -f11 <<<"$example")
        say "  tessera tenant show $t"
        say "  tessera search $t --user $user $query"
        say "  tessera search $t --user $other $query        # a contractor sees less"
        say "  tessera search $t --user $user $query --limit 3 --json"
        say "  tessera search $t --user $user $query --profile affinity_contributor --explain"
        say "  tessera search $t --user $user $query --experiment affinity_test"
        if ((NREGIONS > 1)); then
            say "  tessera --region $(region_name 2) search $t --user $user $query --space ENG"
        fi
    fi
    say "  scripts/cluster.sh status | kill 2 | start 2 | down"
}

cmd_down() {
    load_layout || { say "no cluster here (nothing in $CDIR)"; return 0; }
    if ! any_alive; then
        say "the cluster is not running"
        return 0
    fi
    local names=() r id
    for ((r = 1; r <= NREGIONS; r++)); do names+=("router-$r"); done
    stop_procs "${names[@]}"
    names=()
    for ((id = 1; id <= $(nnodes); id++)); do names+=("node-$id"); done
    stop_procs "${names[@]}"
    stop_procs chaos
    say "stopped; data and logs are in $CDIR"
}

cmd_status() {
    load_layout || { say "no cluster here (run scripts/cluster.sh up)"; return 1; }
    local name pid dead=0 what
    for name in $(all_names); do
        case "$name" in
        node-*) what="node ${name#node-} $(region_name "$(node_region "${name#node-}")")/$(node_zone "${name#node-}") $(node_ip "${name#node-}"):$GRPC_PORT" ;;
        router-*) what="router $(region_name "${name#router-}") $(router_addr "${name#router-}")" ;;
        chaos) what="latency proxy, control $CHAOS_CONTROL" ;;
        esac
        if pid=$(live_pid "$name"); then
            printf '  alive  pid %-7s %s\n' "$pid" "$what"
        else
            printf '  DEAD   pid %-7s %s\n' "$(recorded_pid "$name")" "$what"
            dead=$((dead + 1))
        fi
    done
    local r answered=no
    for ((r = 1; r <= NREGIONS; r++)); do
        live_pid "router-$r" >/dev/null || continue
        say ""
        say "tessera status (via router $(region_name "$r")):"
        if "$BIN/tessera" --router "$(router_addr "$r")" --timeout-ms 5000 status; then answered=yes; fi
        break
    done
    [[ $dead -eq 0 && $answered == yes ]]
}

node_arg() {
    load_layout || die "no cluster here (run scripts/cluster.sh up)"
    if ! [[ "${1:-}" =~ ^[0-9]+$ ]] || (($1 < 1 || $1 > $(nnodes))); then
        die "expected a node id from 1 to $(nnodes), got '${1:-}'"
    fi
}

cmd_kill() {
    node_arg "${1:-}"
    local pid
    if pid=$(live_pid "node-$1"); then
        kill -KILL "$pid"
        say "killed node $1 (pid $pid) with SIGKILL"
    else
        say "node $1 is not running"
    fi
}

cmd_start() {
    node_arg "${1:-}"
    local pid
    if pid=$(live_pid "node-$1"); then
        say "node $1 is already running (pid $pid)"
        return 0
    fi
    check_binaries
    start_node_proc "$1"
    wait_for "node $1" "$UP_TIMEOUT" "node-$1" tcp_open "$(node_ip "$1"):$GRPC_PORT" ||
        die "node $1 did not start; see $LOGS/node-$1.log"
    write_cluster_json
    say "node $1 is serving again on $(node_ip "$1"):$GRPC_PORT (pid $(recorded_pid "node-$1"))"
}

# The script's own CLI calls (readiness checks, demo loading) use the
# bootstrap admin key and trust the cluster CA; users get them through
# cluster.json.
use_admin_credentials() {
    if [[ -f "$CDIR/certs/admin.key" ]]; then
        TESSERA_CA="$CDIR/certs/ca.pem"
        TESSERA_API_KEY=$(<"$CDIR/certs/admin.key")
        export TESSERA_CA TESSERA_API_KEY
    fi
}
use_admin_credentials

NODE_ROUTE=no
ROUTER_HAS_NODE_ROUTE=no
LATENCY=wan
LOAD_JOBS=${TESSERA_LOAD_JOBS:-3}
LOAD_BATCH=${TESSERA_LOAD_BATCH:-200}
cmd=${1:-help}
shift || true
case "$cmd" in
up) cmd_up "$@" ;;
down) cmd_down ;;
status) cmd_status ;;
kill) cmd_kill "$@" ;;
start) cmd_start "$@" ;;
help | -h | --help) usage ;;
*)
    usage >&2
    exit 2
    ;;
esac

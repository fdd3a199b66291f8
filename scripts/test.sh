#!/usr/bin/env bash
# Runs Tessera's whole test suite from a fresh checkout: installs what is
# missing, builds the binaries the integration tests spawn, checks
# formatting and lints, then runs every unit, property and integration test
# (real RocksDB, tantivy, QUIC, gRPC and processes on 127.x.y.z addresses).
#
#   scripts/test.sh            everything
#   scripts/test.sh --quick    skip clippy (for a fast local loop)
#
# CARGO_TARGET_DIR defaults to ~/.cache/tessera-target so the RocksDB C++
# build (15-20 minutes cold on 2 cores) is paid once per machine.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
for arg in "$@"; do
    case "$arg" in
        --quick) quick=1 ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "test.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
    esac
done

scripts/setup.sh
# Python clients are tested too (tests/python): grpcio and its code generator.
if ! python3 -c 'import grpc, grpc_tools' 2>/dev/null; then
    echo "test.sh: installing grpcio and grpcio-tools for the Python client tests" >&2
    python3 -m pip install --quiet --disable-pip-version-check grpcio grpcio-tools
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/tessera-target}"
export CARGO_TERM_COLOR=never

step() { printf '\n== %s ==\n' "$*"; }

step "format"
cargo fmt --all -- --check

step "build (release; the tests spawn these binaries)"
cargo build --release --workspace --bins

if [[ $quick -eq 0 ]]; then
    step "clippy"
    cargo clippy --release --workspace --all-targets -- -D warnings
fi

step "tests"
cargo test --release --workspace --no-fail-fast

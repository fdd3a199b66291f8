#!/usr/bin/env bash
# Installs what a fresh Debian/Ubuntu machine needs to build and run Tessera,
# and only what is missing, so it is cheap to call again.
#
#   scripts/setup.sh              clang, libclang-dev (RocksDB's bindings), zstd
#   scripts/setup.sh PKG...       the same plus extra apt packages (e.g. shellcheck)
#
# It runs `apt-get update` at most once per call and only when something is
# missing, and checks that cargo is on PATH. Exit status: 0 ready, 1 not.
set -euo pipefail

log() { printf 'setup: %s\n' "$*" >&2; }

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi

installed() {
    # dpkg knows best; without dpkg (not Debian) fall back to the command.
    if command -v dpkg-query >/dev/null 2>&1; then
        dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
    else
        command -v "$1" >/dev/null 2>&1
    fi
}

missing=()
for pkg in clang libclang-dev zstd "$@"; do
    installed "$pkg" || missing+=("$pkg")
done

if ((${#missing[@]} > 0)); then
    if ! command -v apt-get >/dev/null 2>&1; then
        log "missing ${missing[*]}, and there is no apt-get here: install them with your package manager"
        exit 1
    fi
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1; then
            sudo=(sudo)
        else
            log "missing ${missing[*]}: run as root (or install sudo) so apt-get can install them"
            exit 1
        fi
    fi
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq
    "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    log "cargo is in ~/.cargo/bin but not on PATH; add it: export PATH=\"\$HOME/.cargo/bin:\$PATH\""
    exit 1
fi
if ! command -v cargo >/dev/null 2>&1; then
    log "cargo not found: install Rust (https://rustup.rs: curl https://sh.rustup.rs -sSf | sh), then re-run"
    exit 1
fi

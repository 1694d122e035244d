#!/usr/bin/env bash
# Installs what the platform needs to run and test locally, and only what is missing:
#   redis-server and PostgreSQL (Debian packages), FerretDB v1.24.2 (built with Go), a Rust
#   toolchain check, and for the tests schemathesis and standardwebhooks (PyPI, in their
#   own virtualenv), faketime and promtool (Debian packages `faketime`, `prometheus`).
# Source it (it exports REDIS_SERVER_BIN and FERRETDB_BIN) or run it.
set -euo pipefail

FERRETDB_VERSION="v1.24.2"
SCHEMATHESIS_VERSION="4.32.5"
STANDARDWEBHOOKS_VERSION="1.1.0"

log() { printf '\033[1m[deps]\033[0m %s\n' "$*" >&2; }

# `cmd | grep -q x` under `set -o pipefail` fails when grep exits at its first match while
# `cmd` is still writing (SIGPIPE): a working binary reads as broken. Every check captures
# the whole output first, then matches it.
# Usage: output_contains NEEDLE CMD [ARGS...]
output_contains() {
  local needle="$1" out
  shift
  out="$("$@" 2>/dev/null)" || return 1
  [[ "$out" == *"$needle"* ]]
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root to run: $*"; return 1; fi
}

ensure_redis() {
  if ! command -v redis-server >/dev/null 2>&1; then
    log "installing redis-server (Debian package)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  fi
  REDIS_SERVER_BIN="$(command -v redis-server)"
  export REDIS_SERVER_BIN
}

# FerretDB's PostgreSQL backend pushes equality filters down to SQL; its SQLite backend
# filters every document in Go, which is 5-50x slower on the same data
# (docs/decisions/0030-ferretdb-on-postgresql.md).
ensure_postgres() {
  local initdb
  initdb="$(ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1 || true)"
  if [ -z "$initdb" ]; then
    log "installing postgresql (Debian package) for FerretDB's storage"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    initdb="$(ls /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)"
  fi
  PG_BIN_DIR="$(dirname "$initdb")"
  export PG_BIN_DIR
}

ferretdb_works() {
  [ -x "$1" ] && output_contains "version: ${FERRETDB_VERSION}" "$1" --version
}

# `go install github.com/FerretDB/FerretDB/cmd/ferretdb@v1.24.2` builds, but the binary
# panics at start: the module zip lacks build/version/version.txt, which FerretDB's own
# build generates. So: download the module, add the file, build from that copy.
ensure_ferretdb() {
  local gobin
  if ! command -v go >/dev/null 2>&1; then
    log "Go is required to build FerretDB (the local MongoDB-compatible server); install Go >= 1.24"
    return 1
  fi
  gobin="$(go env GOBIN)"; [ -n "$gobin" ] || gobin="$(go env GOPATH)/bin"
  FERRETDB_BIN="${FERRETDB_BIN:-$gobin/ferretdb}"
  if ! ferretdb_works "$FERRETDB_BIN"; then
    log "building FerretDB ${FERRETDB_VERSION} into $FERRETDB_BIN (about a minute, once)"
    local module_dir work
    module_dir="$(go mod download -json "github.com/FerretDB/FerretDB@${FERRETDB_VERSION}" |
      sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    work="$(mktemp -d)"
    cp -r "$module_dir" "$work/src"
    chmod -R u+w "$work/src"
    echo "${FERRETDB_VERSION}" > "$work/src/build/version/version.txt"
    mkdir -p "$(dirname "$FERRETDB_BIN")"
    (cd "$work/src" && go build -o "$FERRETDB_BIN" ./cmd/ferretdb)
    rm -rf "$work"
    ferretdb_works "$FERRETDB_BIN" || { log "FerretDB build did not produce a working binary"; return 1; }
  fi
  export FERRETDB_BIN
}

ensure_rust() {
  if ! command -v cargo >/dev/null 2>&1; then
    log "cargo not found: install Rust with rustup (https://rustup.rs) and re-run"
    return 1
  fi
}

# schemathesis (PyPI) fuzzes the api from its OpenAPI document in the test suite; it lives
# in a virtualenv of its own so the system Python is left alone.
ensure_schemathesis() {
  local venv="${XDG_CACHE_HOME:-$HOME/.cache}/crm-bulk-tools/venv"
  if ! output_contains "$SCHEMATHESIS_VERSION" "$venv/bin/st" --version; then
    log "installing schemathesis $SCHEMATHESIS_VERSION (PyPI) into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
  fi
  SCHEMATHESIS_BIN="$venv/bin/st"
  export SCHEMATHESIS_BIN
}

# The official Standard Webhooks library (PyPI `standardwebhooks`, no dependencies of its
# own) verifies every delivery in tests/tests/webhooks.rs; beside schemathesis in its
# virtualenv. The tests run its Python as STANDARDWEBHOOKS_PYTHON.
ensure_standardwebhooks() {
  local venv="${XDG_CACHE_HOME:-$HOME/.cache}/crm-bulk-tools/venv"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  if ! output_contains "$STANDARDWEBHOOKS_VERSION" "$venv/bin/pip" show standardwebhooks; then
    log "installing standardwebhooks $STANDARDWEBHOOKS_VERSION (PyPI) into $venv"
    "$venv/bin/pip" install -q "standardwebhooks==$STANDARDWEBHOOKS_VERSION"
  fi
  STANDARDWEBHOOKS_PYTHON="$venv/bin/python"
  export STANDARDWEBHOOKS_PYTHON
}

# libfaketime (Debian package `faketime`): the tests run a consumer whose clock is off.
ensure_faketime() {
  if ! command -v faketime >/dev/null 2>&1; then
    log "installing faketime (Debian package)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq faketime >/dev/null
  fi
}

# promtool (Debian package `prometheus`) checks every scrape of tests/tests/metrics.rs, and
# is what an operator runs on a scrape by hand (docs/operations.md, "Metrics"). The tests
# run it as PROMTOOL.
ensure_promtool() {
  if ! command -v promtool >/dev/null 2>&1; then
    log "installing promtool (Debian package prometheus)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  fi
  PROMTOOL="$(command -v promtool)"
  export PROMTOOL
}

# The dashboard's browser test drives Debian's Chromium through ChromeDriver (WebDriver).
ensure_chromium() {
  if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then
    log "installing chromium and chromium-driver (Debian packages)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  fi
}

# The load generator of the benchmark suite (scripts/bench.sh), not of the tests.
ensure_wrk() {
  if ! command -v wrk >/dev/null 2>&1; then
    log "installing wrk (Debian package)"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
  fi
}

ensure_all() {
  ensure_rust
  ensure_redis
  ensure_postgres
  ensure_ferretdb
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  ensure_all
  log "redis-server: $REDIS_SERVER_BIN"
  log "ferretdb:     $FERRETDB_BIN"
  log "postgresql:   $PG_BIN_DIR"
  ensure_schemathesis
  log "schemathesis: $SCHEMATHESIS_BIN"
  ensure_standardwebhooks
  log "standardwebhooks: $STANDARDWEBHOOKS_PYTHON"
  ensure_faketime
  ensure_promtool
  log "promtool: $PROMTOOL"
fi

#!/usr/bin/env bash
# The benchmark suite, from a fresh clone: installs what is missing (redis-server,
# PostgreSQL, FerretDB, wrk), builds release binaries, and runs `bench` (tests/src/bin/bench),
# which starts its own services and processes. Arguments go to `bench`, e.g.
#   scripts/bench.sh --records 100000            # one size
#   scripts/bench.sh --records 100000,1000000    # the figures in docs/benchmarks.md
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
ensure_all
ensure_wrk

cargo build --release --bins -p api -p consumer -p projector -p bulk-tests
TARGET="${CARGO_TARGET_DIR:-target}"
BULK_BINARIES_DIR="$(cd "$TARGET/release" && pwd)"
export BULK_BINARIES_DIR
echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr)"
exec "$BULK_BINARIES_DIR"/bench "$@"

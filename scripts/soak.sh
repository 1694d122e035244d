#!/usr/bin/env bash
# The chaos soak, from a fresh clone: installs what is missing (redis-server, PostgreSQL,
# FerretDB), builds release binaries, and runs `soak` (tests/src/bin/soak): five accounts
# and a hostile one submit mixed actions while api, consumers, projector, redis-server and
# FerretDB are SIGKILLed at random; then every action, log line and contact is checked.
# Arguments go to `soak`, e.g.
#   scripts/soak.sh                 # 10 minutes of traffic and chaos, then the checks
#   scripts/soak.sh --minutes 2     # the short variant
# Exit status: 0 no violation, 1 violations (listed in the table), 2 the soak could not run.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
ensure_all

cargo build --release --bins -p api -p consumer -p projector -p bulk-tests
TARGET="${CARGO_TARGET_DIR:-target}"
BULK_BINARIES_DIR="$(cd "$TARGET/release" && pwd)"
export BULK_BINARIES_DIR
echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr)"
exec "$BULK_BINARIES_DIR"/soak "$@"

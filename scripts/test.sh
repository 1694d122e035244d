#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: installs what is missing (redis-server,
# PostgreSQL, FerretDB, schemathesis, standardwebhooks, faketime, promtool), checks formatting and lints, then
# runs every test. The tests start
# their own services on free ports; nothing needs to be running beforehand.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
ensure_all
ensure_schemathesis
ensure_standardwebhooks
ensure_faketime
ensure_promtool
ensure_chromium

locked=()
if [ "${CI:-}" = "true" ]; then
  locked=(--locked)
  # A clean clone builds once: incremental state would only double the disk it needs.
  export CARGO_INCREMENTAL=0
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy "${locked[@]}" --workspace --all-targets -q -- -D warnings
echo "== cargo build (the binaries the fault and CLI tests run as processes)"
cargo build "${locked[@]}" --bins -p api -p consumer -p projector -p cli
echo "== cargo test"
cargo test "${locked[@]}" --workspace --no-fail-fast
# The processing, flow and live progress tests again, each on a Redis Cluster of its own
# (three masters, three replicas), the ones that start the binaries as processes included. Not there: the
# benchmarks, the restart of a single redis-server, the twin tests (they run Lua on one
# node, whatever the deployment) and repartition (refused on a cluster).
echo "== cargo test on a Redis Cluster"
BULK_TEST_REDIS=cluster cargo test "${locked[@]}" -p bulk-tests --test processing --test flow --test live --test webhooks \
  --no-fail-fast -- --skip a_schedule_survives --skip five_minute \
  --skip consumers_scale_out --skip redis_bytes --skip the_scripts_rules --skip the_key_guard \
  --skip a_drained_deployment_moves_to_another_partition_count

#!/usr/bin/env bash
# Stops what scripts/up.sh started (SIGTERM, then SIGKILL after 10 s). Data stays in .dev/.
set -euo pipefail
cd "$(dirname "$0")/.."
for pidfile in .dev/pids/api .dev/pids/consumer-* .dev/pids/projector .dev/pids/ferretdb .dev/pids/redis .dev/pids/redis-*; do
  [ -f "$pidfile" ] || continue
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    echo "stopped $(basename "$pidfile")"
  fi
  rm -f "$pidfile"
done
if [ -f .dev/postgres/PG_VERSION ]; then
  pg_ctl="$(ls /usr/lib/postgresql/*/bin/pg_ctl 2>/dev/null | sort -V | tail -n 1)"
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$pg_ctl" -D "$PWD/.dev/postgres" stop -m fast >/dev/null 2>&1 || true
  else "$pg_ctl" -D "$PWD/.dev/postgres" stop -m fast >/dev/null 2>&1 || true; fi
  echo "stopped postgres"
fi

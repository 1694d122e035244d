#!/usr/bin/env bash
# Brings up the whole platform locally: Redis, FerretDB (MongoDB wire protocol), api,
# consumer and projector, each in the background with its log under .dev/logs.
# Installs what is missing first. Stop everything with scripts/down.sh.
#
# Settings (environment): PORT (api, 3000), DEV_REDIS_PORT (6379), DEV_MONGO_PORT (27017),
# DEV_METRICS_PORT (9464: the api's METRICS_PORT; the projector's is the next, then one
# per consumer), CONSUMERS (number of consumer processes, 1), PROFILE (debug|release, debug),
# REDIS_TOPOLOGY (single|cluster, single: cluster runs 3 masters and 3 replicas on
# DEV_CLUSTER_PORT..+5, 7000 by default, and 6 partitions).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
ensure_all
ensure_promtool

PORT="${PORT:-3000}"
DEV_REDIS_PORT="${DEV_REDIS_PORT:-6379}"
DEV_MONGO_PORT="${DEV_MONGO_PORT:-27017}"
DEV_PG_PORT="${DEV_PG_PORT:-5433}"
CONSUMERS="${CONSUMERS:-1}"
DEV_METRICS_PORT="${DEV_METRICS_PORT:-9464}"
PROFILE="${PROFILE:-debug}"
DEV=".dev"
mkdir -p "$DEV/logs" "$DEV/pids" "$DEV/redis"

log() { printf '\033[1m[up]\033[0m %s\n' "$*" >&2; }

running() { [ -f "$DEV/pids/$1" ] && kill -0 "$(cat "$DEV/pids/$1")" 2>/dev/null; }

start() { # name, command...
  local name="$1"; shift
  if running "$name"; then log "$name already running (pid $(cat "$DEV/pids/$name"))"; return; fi
  # Appended, not truncated: what the last run logged (e.g. at its shutdown) stays readable.
  nohup "$@" >>"$DEV/logs/$name.log" 2>&1 &
  echo $! >"$DEV/pids/$name"
  log "started $name (pid $!, log $DEV/logs/$name.log)"
}

wait_port() { # name, port
  for _ in $(seq 1 100); do
    (echo >"/dev/tcp/127.0.0.1/$2") 2>/dev/null && return 0
    sleep 0.1
  done
  log "$1 did not open port $2; see $DEV/logs/$1.log"; exit 1
}

log "building ($PROFILE)"
# Binaries are where cargo puts them, `CARGO_TARGET_DIR` included.
TARGET="${CARGO_TARGET_DIR:-target}"
if [ "$PROFILE" = release ]; then cargo build --release --bins -q; BIN="$TARGET/release"; else cargo build --bins -q; BIN="$TARGET/debug"; fi

REDIS_TOPOLOGY="${REDIS_TOPOLOGY:-single}"
DEV_CLUSTER_PORT="${DEV_CLUSTER_PORT:-7000}"
if [ "$REDIS_TOPOLOGY" = cluster ]; then
  nodes=()
  for port in $(seq "$DEV_CLUSTER_PORT" $((DEV_CLUSTER_PORT + 5))); do
    mkdir -p "$DEV/redis-cluster/$port"
    start "redis-$port" "$REDIS_SERVER_BIN" --port "$port" --bind 127.0.0.1 \
      --dir "$PWD/$DEV/redis-cluster/$port" --cluster-enabled yes \
      --cluster-config-file nodes.conf --cluster-node-timeout 5000 \
      --appendonly yes --appendfsync everysec --save ""
    wait_port "redis-$port" "$port"
    nodes+=("127.0.0.1:$port")
  done
  # Formed once; later starts find their nodes.conf and rejoin by themselves.
  if ! output_contains 'cluster_slots_assigned:16384' redis-cli -p "$DEV_CLUSTER_PORT" cluster info; then
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes >"$DEV/logs/redis-cluster-create.log"
  fi
  for _ in $(seq 1 100); do
    output_contains 'cluster_state:ok' redis-cli -p "$DEV_CLUSTER_PORT" cluster info && break
    sleep 0.2
  done
  REDIS_URL="redis+cluster://$(IFS=,; echo "${nodes[*]}")"
  export STREAM_PARTITIONS="${STREAM_PARTITIONS:-6}"
else
  start redis "$REDIS_SERVER_BIN" --port "$DEV_REDIS_PORT" --bind 127.0.0.1 --dir "$PWD/$DEV/redis" \
    --appendonly yes --appendfsync everysec --save ""
  wait_port redis "$DEV_REDIS_PORT"
  REDIS_URL="redis://127.0.0.1:$DEV_REDIS_PORT"
fi
# FerretDB holds one PostgreSQL connection per statement of a command until the command
# ends, and hangs when its pool runs dry: hence the large pool and max_connections.
# PostgreSQL refuses to run as root: as root, its files belong to the postgres user.
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
if [ ! -f "$DEV/postgres/PG_VERSION" ]; then
  mkdir -p "$DEV/postgres"
  [ "$(id -u)" -eq 0 ] && chown postgres "$DEV/postgres"
  as_pg "$PG_BIN_DIR/initdb" -D "$PWD/$DEV/postgres" -A trust -U postgres >"$DEV/logs/initdb.log"
fi
if ! as_pg "$PG_BIN_DIR/pg_ctl" -D "$PWD/$DEV/postgres" status >/dev/null 2>&1; then
  as_pg "$PG_BIN_DIR/pg_ctl" -D "$PWD/$DEV/postgres" -l "$PWD/$DEV/postgres/server.log" -w \
    -o "-p $DEV_PG_PORT -k /tmp -c listen_addresses=127.0.0.1 -c max_connections=500" start >/dev/null
  log "started postgres (port $DEV_PG_PORT, log $DEV/postgres/server.log)"
fi
output_contains 1 as_pg "$PG_BIN_DIR/psql" -h 127.0.0.1 -p "$DEV_PG_PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='ferretdb'" ||
  as_pg "$PG_BIN_DIR/createdb" -h 127.0.0.1 -p "$DEV_PG_PORT" -U postgres ferretdb
start ferretdb "$FERRETDB_BIN" --listen-addr="127.0.0.1:$DEV_MONGO_PORT" --handler=postgresql \
  --postgresql-url="postgres://postgres@127.0.0.1:$DEV_PG_PORT/ferretdb?pool_max_conns=400" --debug-addr=- --telemetry=disable --log-level=warn
wait_port ferretdb "$DEV_MONGO_PORT"

# The admin api (per-account limits) needs a token; one is made once and kept in .dev.
# An ADMIN_TOKEN from the environment is kept in the file too, so the file always holds the
# token the running api takes (the demo tools read it).
if [ -n "${ADMIN_TOKEN:-}" ]; then
  printf '%s' "$ADMIN_TOKEN" > "$DEV/admin-token"
elif [ ! -s "$DEV/admin-token" ]; then
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$DEV/admin-token"
fi
export ADMIN_TOKEN="$(cat "$DEV/admin-token")"
export REDIS_URL
# A database per topology: a cluster starts with an empty Redis (and 6 partitions), so the
# views of the single node's actions must not show up beside it.
DATABASE=crm-bulk-actions
[ "$REDIS_TOPOLOGY" = cluster ] && DATABASE=crm-bulk-actions-cluster
export MONGODB_URI="mongodb://127.0.0.1:$DEV_MONGO_PORT/$DATABASE"
export PORT
METRICS_PORT="$((DEV_METRICS_PORT + 1))" start projector "$BIN/projector"
for n in $(seq 1 "$CONSUMERS"); do
  CONSUMER_NAME="local-consumer-$n" METRICS_PORT="$((DEV_METRICS_PORT + 1 + n))" start "consumer-$n" "$BIN/consumer"
done
METRICS_PORT="$DEV_METRICS_PORT" start api "$BIN/api"

for _ in $(seq 1 100); do
  curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$PORT/readyz" >/dev/null || { log "api is not ready; see $DEV/logs/api.log"; exit 1; }

# A demo account with an API key, kept in .dev and made again if Redis lost it.
DEMO_KEY_FILE="$DEV/demo-api-key"
if ! [ -s "$DEMO_KEY_FILE" ] ||
  ! curl -fs -o /dev/null -H "authorization: Bearer $(cat "$DEMO_KEY_FILE")" "http://127.0.0.1:$PORT/bulk-actions?limit=1"; then
  log "making the demo account's API key (this Redis has none)"
  curl -fsS -X POST -H "authorization: Bearer $ADMIN_TOKEN" "http://127.0.0.1:$PORT/admin/accounts/demo/api-keys" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["apiKey"])' > "$DEMO_KEY_FILE"
fi
DEMO_KEY="$(cat "$DEMO_KEY_FILE")"

cat <<MSG

  CRM bulk action platform is up.
    Dashboard: http://127.0.0.1:$PORT/      (sign in with the demo API key below)
    API:       http://127.0.0.1:$PORT        (OpenAPI: http://127.0.0.1:$PORT/openapi.json)
    Redis:     $REDIS_URL   (STREAM_PARTITIONS=${STREAM_PARTITIONS:-4})
    MongoDB:   $MONGODB_URI   (FerretDB on PostgreSQL :$DEV_PG_PORT)
    Logs:      $DEV/logs/        Stop: scripts/down.sh
    Metrics:   http://127.0.0.1:$DEV_METRICS_PORT/metrics (api), :$((DEV_METRICS_PORT + 1)) (projector), :$((DEV_METRICS_PORT + 2))… (consumers)
               (Prometheus text; check one with: curl -s http://127.0.0.1:$DEV_METRICS_PORT/metrics | promtool check metrics)

  Demo account "demo", API key in $DEMO_KEY_FILE. Try:
    curl -si -X POST http://127.0.0.1:$PORT/bulk-actions -H 'content-type: application/json' \\
      -H 'authorization: Bearer $DEMO_KEY' \\
      -d '{"entityType":"contact","actionType":"upsert","data":[{"email":"ann@example.com","name":"Ann","age":31}]}'
    curl -s http://127.0.0.1:$PORT/bulk-actions -H 'authorization: Bearer $DEMO_KEY'

  Or with the CLI (README, "CLI"):
    export BULK_API_URL=http://127.0.0.1:$PORT BULK_API_KEY=$DEMO_KEY
    $BIN/bulk submit docs/examples/contacts.csv --action upsert --wait

  Admin token (API keys, limits) in $DEV/admin-token.

  Each account may apply 10,000 records a minute (RATE_LIMIT_RECORDS_PER_MINUTE). Raise one:
    curl -s -X PUT http://127.0.0.1:$PORT/admin/accounts/demo/limits -H "authorization: Bearer \$(cat $DEV/admin-token)" \\
      -H 'content-type: application/json' -d '{"recordsPerMinute": 1000000}'

MSG

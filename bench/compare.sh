#!/usr/bin/env bash
# One-command comparison of roomcast with the seed Node server and the floor.
#
#   bash bench/compare.sh            # full run: cases A-D (and A/B small-window), 3 repeats, idle-max
#   QUICK=1 bash bench/compare.sh    # smaller counts, 1 repeat, no idle-max
#   bash bench/compare.sh idle-max   # only the idle-max measurement
#
# Builds the release binaries, installs the seed's npm dependencies into a
# temporary directory, starts its own redis-server on a free port (never
# 6379), and for every case and system starts two fresh nodes on that Redis
# (the floor: one process, no Redis), runs roomcast-load against them and
# stops them. roomcast-load reads the nodes' and Redis's CPU time around
# each run. Prints a markdown table (medians, ratios to the seed and to the
# floor) and writes it to bench/results/latest.md, the raw JSON lines to
# bench/results/latest.jsonl (QUICK=1: latest-quick.md and .jsonl).
#
# Systems: seed, tokio, smol, floor, and tokio-cf / smol-cf: the same two
# roomcast nodes driven with roomcast-load --protocol centrifugo (Centrifugo's
# client protocol at /connection/websocket), in cases A and A-small only; the
# table compares them with tokio / smol of the same run. tokio-plain /
# smol-plain: the same nodes with rooms that keep no history (a config file
# with open mode's permissions only), to measure what history costs: the
# defaults (open mode) keep history in every room and track presence;
# tokio-hist / smol-hist keep history without presence.
#
# Environment: QUICK=1, REPEATS=N, SYSTEMS="seed tokio tokio-cf smol smol-cf floor",
# IDLE_MAX=0|1, KEEP=1 (keep the temporary directory with the node logs).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
MODE=${1:-all}
QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then REPEATS=${REPEATS:-1}; else REPEATS=${REPEATS:-3}; fi
if [ "$QUICK" = 1 ]; then IDLE_MAX=${IDLE_MAX:-0}; else IDLE_MAX=${IDLE_MAX:-1}; fi
SYSTEMS=${SYSTEMS:-"seed tokio tokio-cf smol smol-cf floor"}
START_TS=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/roomcast-bench.XXXXXX")
PIDS=()

log() { printf '[compare %s] %s\n' "$(date +%T)" "$*" >&2; }

cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  if [ "${KEEP:-0}" = 1 ]; then
    log "kept $WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Forgets PIDs that were stopped on purpose.
forget() {
  local keep=() pid gone
  for pid in "${PIDS[@]}"; do
    for gone in "$@"; do [ "$pid" = "$gone" ] && continue 2; done
    keep+=("$pid")
  done
  PIDS=("${keep[@]}")
}

stop() {
  local pid
  for pid in "$@"; do kill "$pid" 2>/dev/null || true; done
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
  forget "$@"
}

free_port() {
  python3 - <<'EOF'
import socket
while True:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    if port != 6379:
        print(port)
        break
EOF
}

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# ---------------------------------------------------------------- build
command -v redis-server >/dev/null || { log "redis-server not found (apt-get install redis-server)"; exit 1; }
command -v node >/dev/null && command -v npm >/dev/null || { log "node and npm are needed for the seed"; exit 1; }
command -v python3 >/dev/null || { log "python3 is needed for the table"; exit 1; }

log "building release binaries"
cargo build --release -q -p roomcast-bench -p roomcast-tokio
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
BIN="$TARGET_DIR/release"
LOAD="$BIN/roomcast-load"

HAVE_SMOL=0
case " $SYSTEMS " in
  *" smol "*|*" smol-cf "*|*" smol-plain "*|*" smol-hist "*)
    if cargo build --release -q -p roomcast-smol 2>"$WORK/smol-build.log" && [ -x "$BIN/roomcast-smol" ]; then
      HAVE_SMOL=1
    else
      log "roomcast-smol does not build (yet); comparing without it (see the last lines below)"
      tail -n 5 "$WORK/smol-build.log" >&2 || true
    fi ;;
esac
RUN_SYSTEMS=()
for s in $SYSTEMS; do
  case $s in
    smol|smol-cf|smol-plain|smol-hist) [ "$HAVE_SMOL" = 1 ] && RUN_SYSTEMS+=("$s") ;;
    seed|tokio|tokio-cf|tokio-plain|tokio-hist|floor) RUN_SYSTEMS+=("$s") ;;
    *) log "unknown system $s"; exit 2 ;;
  esac
done

if [[ " ${RUN_SYSTEMS[*]} " == *" seed "* ]] && [ "$MODE" != idle-max ]; then
  log "installing the seed's npm dependencies into $WORK/seed"
  mkdir -p "$WORK/seed"
  cp tests/seed-node/server.js tests/seed-node/package.json "$WORK/seed/"
  npm install --prefix "$WORK/seed" --no-audit --no-fund --loglevel=error >"$WORK/npm.log" 2>&1 \
    || { cat "$WORK/npm.log" >&2; exit 1; }
fi

# ---------------------------------------------------------------- redis
REDIS_PORT=$(free_port)
redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
  --maxclients 1000 >"$WORK/redis.log" 2>&1 &
REDIS_PID=$!
PIDS+=("$REDIS_PID")
REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
for _ in $(seq 100); do
  redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
  sleep 0.1
done
redis-cli -p "$REDIS_PORT" ping >/dev/null || { log "redis-server did not start"; cat "$WORK/redis.log" >&2; exit 1; }
log "redis-server on port $REDIS_PORT"

# ---------------------------------------------------------------- nodes
NODE_PIDS=()
NODE_URLS=""

# start_nodes SYSTEM [N] [PRLIMIT]: N fresh nodes of SYSTEM on our Redis
# (the floor: N processes of its own, no Redis).
start_nodes() {
  local sys=$1 n=${2:-2} nofile=${3:-} i port pid logf wrap=()
  [ -n "$nofile" ] && wrap=(prlimit "--nofile=$nofile:$nofile")
  NODE_PIDS=()
  NODE_URLS=""
  for i in $(seq "$n"); do
    port=$(free_port)
    logf="$WORK/$sys-$port.log"
    case $sys in
      seed)
        PORT=$port REDIS_URL=$REDIS_URL "${wrap[@]}" node "$WORK/seed/server.js" >"$logf" 2>&1 &
        ;;
      tokio|smol|tokio-cf|smol-cf)
        RUST_LOG=warn "${wrap[@]}" "$BIN/roomcast-${sys%-cf}" --listen "127.0.0.1:$port" \
          --redis "$REDIS_URL" --no-chat-page >"$logf" 2>&1 &
        ;;
      tokio-plain|smol-plain)
        RUST_LOG=warn "${wrap[@]}" "$BIN/roomcast-${sys%-plain}" --listen "127.0.0.1:$port" \
          --redis "$REDIS_URL" --no-chat-page --config "$WORK/plain.toml" >"$logf" 2>&1 &
        ;;
      tokio-hist|smol-hist)
        RUST_LOG=warn "${wrap[@]}" "$BIN/roomcast-${sys%-hist}" --listen "127.0.0.1:$port" \
          --redis "$REDIS_URL" --no-chat-page --config "$WORK/hist.toml" >"$logf" 2>&1 &
        ;;
      floor)
        "${wrap[@]}" "$BIN/roomcast-floor" --listen "127.0.0.1:$port" >"$logf" 2>&1 &
        ;;
    esac
    pid=$!
    PIDS+=("$pid")
    NODE_PIDS+=("$pid")
    NODE_URLS="${NODE_URLS:+$NODE_URLS,}ws://127.0.0.1:$port"
    # Ready: the seed and the floor print a line once listening (the floor
    # serves no HTTP); roomcast answers /healthz 200 once Redis is up.
    local ok=0
    for _ in $(seq 300); do
      if [ "$sys" = seed ] || [ "$sys" = floor ]; then
        grep -q "$sys listening" "$logf" && { ok=1; break; }
      else
        curl -sf -o /dev/null "http://127.0.0.1:$port/healthz" && { ok=1; break; }
      fi
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if [ "$ok" != 1 ]; then
      log "$sys node on port $port did not become ready:"
      tail -n 20 "$logf" >&2
      exit 1
    fi
  done
  sleep 0.5 # let start-up allocations settle before the 'before' RSS reading
}

stop_nodes() { stop "${NODE_PIDS[@]}"; NODE_PIDS=(); }

# ---------------------------------------------------------------- cases
# A-small and B-small: A and B with at most 10,000 deliveries in flight
# (A: 100 messages of 100 members; B: 10,000 / room size messages), so no
# server can count on deep queues to batch its writes.
SMALL="--window-deliveries 10000"
if [ "$QUICK" = 1 ]; then
  CASE_A="--scenario fanout -c 1000 -r 10 -p 4 -m 4000 --size 64"
  CASE_B="--scenario one-room -c 1000 -r 1 -p 4 -m 500 --size 64"
  CASE_C="--scenario idle -c 2000 -r 20 -p 1 --hold 1s"
  CASE_D="--scenario fanout -c 1000 -r 10 -p 4 -m 2000 --size 64 --rate 500"
  TIMEOUT=90s
else
  CASE_A="--scenario fanout -c 1000 -r 10 -p 4 -m 20000 --size 64"
  CASE_B="--scenario one-room -c 2000 -r 1 -p 4 -m 2000 --size 64"
  CASE_C="--scenario idle -c 10000 -r 100 -p 1 --hold 5s"
  CASE_D="--scenario fanout -c 1000 -r 10 -p 4 -m 20000 --size 64 --rate 500"
  TIMEOUT=300s
fi
CASE_AS="$CASE_A $SMALL"
CASE_BS="$CASE_B $SMALL"
CASES=${CASES:-"A A-small B B-small C D"}
# Rooms without history, everything allowed (the -plain systems).
cat >"$WORK/plain.toml" <<'TOML'
allow_anonymous_connect_without_token = true
[default_namespace]
allow_subscribe_for_client = true
allow_subscribe_for_anonymous = true
allow_publish_for_client = true
allow_publish_for_subscriber = true
allow_publish_for_anonymous = true
TOML
# Open mode's history without its presence (the -hist systems).
{ cat "$WORK/plain.toml"; printf 'history_size = 100\nhistory_ttl = "5m"\nforce_recovery = true\n'; } >"$WORK/hist.toml"
# The cases the Centrifugo-protocol variants (SYSTEM-cf) run.
CF_CASES="A A-small"
RESULTS="$WORK/results.jsonl"
: >"$RESULTS"

# runs SYSTEM CASE: whether SYSTEM takes part in CASE.
runs() {
  case $1 in
    *-cf) [[ " $CF_CASES " == *" $2 "* ]] ;;
    *) true ;;
  esac
}

run_case() {
  local sys=$1 case=$2 rep=$3 args n=2 redis=(--redis-pid "$REDIS_PID") proto=()
  case $case in
    A) args=$CASE_A ;; A-small) args=$CASE_AS ;; B) args=$CASE_B ;; B-small) args=$CASE_BS ;;
    C) args=$CASE_C ;; D) args=$CASE_D ;;
  esac
  [ "$sys" = floor ] && { n=1; redis=(); }
  case $sys in *-cf) proto=(--protocol centrifugo) ;; esac
  start_nodes "$sys" "$n"
  log "$sys case $case run $rep: roomcast-load $args ${proto[*]}"
  # shellcheck disable=SC2086
  "$LOAD" $args "${proto[@]}" --nodes "$NODE_URLS" --pids "$(IFS=,; echo "${NODE_PIDS[*]}")" "${redis[@]}" \
    --timeout "$TIMEOUT" --label "$sys/$case/$rep" >>"$RESULTS" 2>"$WORK/load.err" \
    || { log "roomcast-load failed:"; cat "$WORK/load.err" >&2; }
  sed 's/^/    /' "$WORK/load.err" >&2
  stop_nodes
}

# Idle-max: as many idle connections on ONE roomcast-tokio node as the hard
# file limit allows, from two load processes (each under the same limit).
idle_max() {
  local hard total per a_c b_c before after a_ready b_ready pa pb i
  hard=$(ulimit -Hn)
  [ "$hard" = unlimited ] && hard=1048576
  total=$((hard - 40)) # the node's own descriptors: listener, epoll, Redis, stdio
  per=$(((total + 1) / 2))
  a_c=$((per - 1))          # each load process: per-1 subscribers + 1 prober
  b_c=$((total - per - 1))
  start_nodes tokio 1 "$hard"
  before=$(rss_kib "${NODE_PIDS[0]}")
  log "idle-max: $total connections (2 processes) on one roomcast-tokio node, nofile $hard"
  a_ready="$WORK/idle-a.ready"; b_ready="$WORK/idle-b.ready"
  rm -f "$a_ready" "$b_ready"
  # 2 x 48 connects under way at once: below the node's listen backlog (128).
  "$LOAD" --scenario idle -c "$a_c" -r 100 -p 1 --hold 20s --timeout 120s --room-prefix a \
    --connect-concurrency 48 \
    --nodes "$NODE_URLS" --pids "${NODE_PIDS[0]}" --ready-file "$a_ready" \
    --label idle-max/a >"$WORK/idle-a.json" 2>"$WORK/idle-a.err" &
  pa=$!; PIDS+=("$pa")
  "$LOAD" --scenario idle -c "$b_c" -r 100 -p 1 --hold 20s --timeout 120s --room-prefix b \
    --connect-concurrency 48 \
    --nodes "$NODE_URLS" --pids "${NODE_PIDS[0]}" --ready-file "$b_ready" \
    --label idle-max/b >"$WORK/idle-b.json" 2>"$WORK/idle-b.err" &
  pb=$!; PIDS+=("$pb")
  for i in $(seq 1100); do
    [ -e "$a_ready" ] && [ -e "$b_ready" ] && break
    kill -0 "$pa" 2>/dev/null || kill -0 "$pb" 2>/dev/null || break
    sleep 0.1
  done
  sleep 1
  after=$(rss_kib "${NODE_PIDS[0]}")
  local hwm
  hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/${NODE_PIDS[0]}/status")
  wait "$pa" || true; wait "$pb" || true
  forget "$pa" "$pb"
  cat "$WORK/idle-a.err" "$WORK/idle-b.err" | sed 's/^/    /' >&2
  python3 - "$WORK/idle-a.json" "$WORK/idle-b.json" "$before" "$after" "$hwm" "$hard" >"$WORK/idle-max.json" <<'EOF'
import json, sys
a, b = (json.loads(open(p).read().strip().splitlines()[-1]) for p in sys.argv[1:3])
before, after, hwm, hard = map(int, sys.argv[3:7])
conns = sum(r["connected_subscribers"] + r["connected_publishers"] for r in (a, b))
print(json.dumps({
    "label": "idle-max", "nofile": hard, "attempted": sum(r["subscribers"] + r["publishers"] for r in (a, b)),
    "connections": conns, "subscribed": a["subscribed"] + b["subscribed"],
    "failures": a["connect_failures"] + b["connect_failures"],
    "connect_rate": round(min(a["connect_rate"], b["connect_rate"]) * 2),
    "rss_before_kib": before, "rss_after_kib": after, "peak_kib": hwm,
    "mem_per_conn_bytes": round((after - before) * 1024 / max(conns, 1)),
}))
EOF
  log "idle-max: $(cat "$WORK/idle-max.json")"
  stop_nodes
}

machine() {
  local cpu mem
  cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
  mem=$(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)
  echo "$(nproc) cores ($cpu), $mem RAM, $(uname -sr)"
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
if [ "$MODE" != idle-max ]; then
  for rep in $(seq "$REPEATS"); do
    for case in $CASES; do
      for sys in "${RUN_SYSTEMS[@]}"; do
        runs "$sys" "$case" && run_case "$sys" "$case" "$rep"
      done
    done
  done
fi
if [ "$MODE" = idle-max ] || [ "$IDLE_MAX" = 1 ]; then
  idle_max
fi
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
ELAPSED=$(($(date +%s) - START_TS))

mkdir -p bench/results
python3 bench/table.py "$RESULTS" \
  --idle-max "$WORK/idle-max.json" \
  --date "$(date -u '+%Y-%m-%d %H:%M UTC')" \
  --machine "$(machine)" \
  --repeats "$REPEATS" --quick "$QUICK" \
  --loadavg "$LOAD_BEFORE → $LOAD_AFTER" \
  --elapsed "$ELAPSED" \
  --systems "${RUN_SYSTEMS[*]}" >"$WORK/table.md"
cat "$WORK/table.md"
if [ "$MODE" != idle-max ]; then
  # A QUICK run keeps the last full run's files.
  OUT=bench/results/latest
  [ "$QUICK" = 1 ] && OUT=bench/results/latest-quick
  cp "$WORK/table.md" "$OUT.md"
  { cat "$RESULTS"; [ -s "$WORK/idle-max.json" ] && cat "$WORK/idle-max.json"; } >"$OUT.jsonl"
  log "written $OUT.md and $OUT.jsonl in ${ELAPSED}s"
fi

#!/usr/bin/env bash
# Runs one benchmark scenario of switchboard-bench against a fresh broker (and against the
# floor server where the scenario has a floor counterpart), with the method of issue 3:
# broker on core 0, tool on core 1, a fresh server with a fresh data dir per run, rate limits
# raised, runs interleaved broker/floor, RUNS runs each with median and min–max.
#
#   bench/run.sh SCENARIO [tool options...]
#   bench/run.sh smoke            # every scenario, tiny sizes; non-zero exit on any failure
#
# SCENARIO: fanout | conns | pairs | durable | storm | smoke
# Environment: RUNS (default 1), CARGO_TARGET_DIR (default /tmp/bench-target),
#   PROFILE=release|debug (default release; debug reuses a test build, fine for smoke only),
#   SERVER_CPU / TOOL_CPU (default 0 / 1), NO_FLOOR=1 (skip the floor runs),
#   NO_BUILD=1 (use the binaries already built), TIMEOUT (tool --timeout, default 120 s),
#   SEED_DIR (a broker data directory copied into each fresh broker's: runs against a
#   database that already holds many messages; docs/BENCHMARKS.md, "At scale"),
#   DATABASE_URL (a postgres:// URL: each fresh broker runs on a new database created
#   beside the one the URL names, and dropped after the run; unset = SQLite in the data dir),
#   NODES (2 or more: each run starts that many broker processes as one cluster on a fresh
#   PostgreSQL database and REDIS_URL, default redis://127.0.0.1:6379, under a key prefix of
#   the run's own; DATABASE_URL is then required; fanout spreads its subscribers over them
#   with --nodes, other scenarios use the first node; unset or 1 = one broker).
#   NO_CLUSTER=1 leaves the cluster fan-out out of smoke.
# Everything runs on 127.0.0.1 and stops by itself (tool --timeout, plus `timeout` around it).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/tmp/bench-target}
PROFILE=${PROFILE:-release}
case "$PROFILE" in
release) BUILD_FLAGS=(--release) ;;
debug) BUILD_FLAGS=() ;;
*) echo "PROFILE must be release or debug" >&2 && exit 2 ;;
esac
BIN=$CARGO_TARGET_DIR/$PROFILE
RUNS=${RUNS:-1}
SERVER_CPU=${SERVER_CPU:-0}
TOOL_CPU=${TOOL_CPU:-1}
TIMEOUT=${TIMEOUT:-120}
SECRET="bench-secret-$$-$RANDOM"

usage() {
    sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}
[ $# -ge 1 ] || usage
SCENARIO=$1
shift
case "$SCENARIO" in
fanout | conns | pairs | durable | storm | smoke) ;;
-h | --help | help) usage ;;
*) echo "unknown scenario: $SCENARIO" >&2 && usage ;;
esac

# The open-files limit bounds the number of connections (about 20,000 here).
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
echo "open files limit: $(ulimit -n)" >&2

if [ -z "${NO_BUILD:-}" ]; then
    (cd "$ROOT" && cargo build "${BUILD_FLAGS[@]}" -q -p switchboard -p switchboard-bench)
fi
for b in switchboard switchboard-bench floor; do
    [ -x "$BIN/$b" ] || { echo "missing $BIN/$b (build first)" >&2; exit 2; }
done

# Pin to a core when there are at least two (taskset execs the command: $! is its pid).
PIN_SERVER=()
PIN_TOOL=()
if command -v taskset >/dev/null && [ "$(nproc)" -ge 2 ]; then
    PIN_SERVER=(taskset -c "$SERVER_CPU")
    PIN_TOOL=(taskset -c "$TOOL_CPU")
fi

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
    local p
    for _ in $(seq 1 50); do
        p=$((10000 + RANDOM % 10000))
        if port_free "$p"; then echo "$p" && return 0; fi
    done
    echo "no free port found" >&2
    return 1
}
wait_port() {
    local port=$1 pid=$2
    for _ in $(seq 1 300); do
        if ! kill -0 "$pid" 2>/dev/null; then return 1; fi
        if ! port_free "$port"; then return 0; fi
        sleep 0.1
    done
    return 1
}

SERVER_PID=""
SERVER_PIDS=()
SERVER_URLS=()
SERVER_DIR=""
SERVER_URL=""
SERVER_DB=""
RUN_NO=0
NODES=${NODES:-1}
REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
# The tests' PostgreSQL and Redis (CI runs both): smoke's cluster fan-out uses them.
DEFAULT_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test
check_database() {
    case "${DATABASE_URL:-}" in
    "" | sqlite://* | /*) ;;
    postgres://* | postgresql://*)
        command -v psql >/dev/null || { echo "DATABASE_URL is PostgreSQL but psql is missing" >&2; return 2; }
        psql "$DATABASE_URL" -qtAc 'SELECT 1' >/dev/null || { echo "cannot reach $DATABASE_URL" >&2; return 2; }
        ;;
    *) echo "DATABASE_URL must be a postgres:// URL or unset" >&2 && return 2 ;;
    esac
}
# check_cluster: what NODES > 1 needs: a PostgreSQL DATABASE_URL and a Redis answering PING.
check_cluster() {
    case "${DATABASE_URL:-}" in
    postgres://* | postgresql://*) ;;
    *) echo "NODES=$NODES needs DATABASE_URL=postgres://… (the nodes share one database)" >&2 && return 2 ;;
    esac
    local hostport=${REDIS_URL#redis://}
    hostport=${hostport%%/*}
    hostport=${hostport##*@}
    local host=${hostport%:*} port=${hostport##*:}
    [ "$port" != "$hostport" ] || port=6379
    local pong=""
    if { exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null; then
        printf 'PING\r\n' >&3
        read -r -t 3 pong <&3 || true
        exec 3<&- 3>&-
    fi
    case "$pong" in
    +PONG*) ;;
    *) echo "no Redis answering at $REDIS_URL (NODES=$NODES needs one)" >&2 && return 2 ;;
    esac
}
check_database || exit 2
if [ "$NODES" -gt 1 ]; then check_cluster || exit 2; fi
# pg_url NAME: DATABASE_URL with its database name replaced by NAME (query string kept).
pg_url() {
    local base=${DATABASE_URL%%\?*} query=""
    [ "$base" = "$DATABASE_URL" ] || query="?${DATABASE_URL#*\?}"
    echo "${base%/*}/$1$query"
}
stop_server() {
    local pid
    # Every node is told at once, so their drain windows run side by side.
    for pid in "${SERVER_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${SERVER_PIDS[@]}"; do
        for _ in $(seq 1 150); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    SERVER_PID=""
    SERVER_PIDS=()
    SERVER_URLS=()
    if [ -n "$SERVER_DB" ]; then
        psql "$DATABASE_URL" -qtAc "DROP DATABASE IF EXISTS $SERVER_DB WITH (FORCE)" >/dev/null || true
    fi
    SERVER_DB=""
    if [ -n "$SERVER_DIR" ]; then rm -rf "$SERVER_DIR"; fi
    SERVER_DIR=""
}
trap stop_server EXIT

start_broker() {
    SERVER_DIR=$(mktemp -d /tmp/switchboard-bench.XXXXXX)
    if [ -n "${SEED_DIR:-}" ]; then
        cp "$SEED_DIR"/switchboard.db* "$SERVER_DIR"/
        # Written back before the run: a copy still in dirty pages makes every fsync of
        # the run wait behind it (ack p99 in the hundreds of ms).
        sync
    fi
    local db_url=""
    case "${DATABASE_URL:-}" in
    postgres://* | postgresql://*)
        RUN_NO=$((RUN_NO + 1))
        SERVER_DB="switchboard_bench_$$_$RUN_NO"
        psql "$DATABASE_URL" -qtAc "CREATE DATABASE $SERVER_DB" >/dev/null
        db_url=$(pg_url "$SERVER_DB")
        ;;
    esac
    if [ "$NODES" -le 1 ]; then
        start_node "$db_url" "$SERVER_DIR" || return 1
        return 0
    fi
    # A cluster: NODES processes on the one fresh database and REDIS_URL, with a key
    # prefix of this run's own, started one after the other (they migrate in turn, under a lock).
    local prefix="sbbench-$$-$RUN_NO-$RANDOM" i
    for i in $(seq 0 $((NODES - 1))); do
        mkdir -p "$SERVER_DIR/node-$i"
        SWITCHBOARD__REDIS__URL=$REDIS_URL \
            SWITCHBOARD__CLUSTER__KEY_PREFIX=$prefix \
            SWITCHBOARD__CLUSTER__NODE_ID=node-$i \
            start_node "$db_url" "$SERVER_DIR/node-$i" || return 1
    done
    wait_cluster || return 1
}

# start_node DB_URL DIR: one broker process on a free port, data and log in DIR; appends
# its pid and URL to SERVER_PIDS and SERVER_URLS (the first is SERVER_PID, SERVER_URL).
start_node() {
    local db_url=$1 dir=$2 port pid
    port=$(pick_port)
    SWITCHBOARD__DATABASE__URL=$db_url \
        SWITCHBOARD__SERVER__HOST=127.0.0.1 \
        SWITCHBOARD__SERVER__PORT=$port \
        SWITCHBOARD__SERVER__DATA_DIR=$dir \
        SWITCHBOARD__SERVER__WORKERS=1 \
        SWITCHBOARD__AUTH__JWT_SECRET=$SECRET \
        SWITCHBOARD__LIMITS__FRAMES_PER_SECOND=1000000000 \
        SWITCHBOARD__LIMITS__FRAMES_BURST=1000000000 \
        SWITCHBOARD__LIMITS__MAX_CONNECTIONS=100000 \
        SWITCHBOARD__LIMITS__MAX_CONNECTIONS_PER_USER=100000 \
        SWITCHBOARD__LIMITS__UPGRADES_PER_IP_PER_SECOND=0 \
        SWITCHBOARD__LIMITS__REQUESTS_PER_IP_PER_SECOND=0 \
        SWITCHBOARD__LIMITS__CONNECTS_PER_USER_PER_SECOND=0 \
        SWITCHBOARD__LIMITS__REQUESTS_PER_USER_PER_SECOND=0 \
        SWITCHBOARD__LIMITS__MAX_PENDING_PER_IP=0 \
        SWITCHBOARD__LOG__FILTER=warn \
        "${PIN_SERVER[@]}" "$BIN/switchboard" serve >"$dir/server.log" 2>&1 &
    pid=$!
    SERVER_PIDS+=("$pid")
    SERVER_URLS+=("ws://127.0.0.1:$port")
    SERVER_PID=${SERVER_PIDS[0]}
    SERVER_URL=${SERVER_URLS[0]}
    if ! wait_port "$port" "$pid"; then
        echo "broker did not start; its log:" >&2
        cat "$dir/server.log" >&2
        return 1
    fi
}

# http_get URL PATH: the body of a GET (HTTP/1.0 over bash's /dev/tcp; no curl needed).
http_get() {
    local hostport=${1#ws://} reply
    { exec 4<>"/dev/tcp/${hostport%:*}/${hostport##*:}"; } 2>/dev/null || return 1
    printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$2" "$hostport" >&4
    reply=$(timeout 5 cat <&4) || true
    exec 4<&- 4>&-
    echo "${reply#*$'\r\n\r\n'}"
}

# wait_cluster: until every node hears the bus and lists all NODES nodes (30 s at most).
wait_cluster() {
    local url status ready
    for _ in $(seq 1 300); do
        ready=0
        for url in "${SERVER_URLS[@]}"; do
            status=$(http_get "$url" /status) || status=""
            if [[ $status == *'"bus_up":true'* ]] &&
                [ "$(grep -o '"seen_at"' <<<"$status" | wc -l)" -eq "$NODES" ]; then
                ready=$((ready + 1))
            fi
        done
        [ "$ready" -eq "$NODES" ] && return 0
        sleep 0.1
    done
    echo "the $NODES nodes did not form a cluster within 30 s; last /status: $status" >&2
    return 1
}

start_floor() {
    local port
    port=$(pick_port)
    SERVER_DIR=$(mktemp -d /tmp/switchboard-floor.XXXXXX)
    "${PIN_SERVER[@]}" "$BIN/floor" --port "$port" --workers 1 >"$SERVER_DIR/server.log" 2>&1 &
    SERVER_PID=$!
    SERVER_URL="ws://127.0.0.1:$port"
    if ! wait_port "$port" "$SERVER_PID"; then
        echo "floor did not start; its log:" >&2
        cat "$SERVER_DIR/server.log" >&2
        return 1
    fi
}

# tool SCENARIO MODE [args...]: runs the tool against the current server, prints its output.
tool() {
    local scenario=$1 mode=$2
    shift 2
    local extra=()
    case "$scenario" in
    fanout | conns | pairs) extra+=(--mode "$mode") ;;
    esac
    if [ "$scenario" = conns ]; then extra+=(--server-pid "$SERVER_PID"); fi
    if [ "$scenario" = fanout ] && [ "$mode" = contract ] && [ "${#SERVER_URLS[@]}" -gt 1 ]; then
        extra+=(--nodes "$(IFS=,; echo "${SERVER_URLS[*]}")")
    fi
    timeout --kill-after=10 $((TIMEOUT + 60)) \
        "${PIN_TOOL[@]}" "$BIN/switchboard-bench" "$scenario" --url "$SERVER_URL" \
        --secret "$SECRET" --timeout "$TIMEOUT" "${extra[@]}" "$@"
}

# The figure a scenario is judged by (a row of the tool's table).
headline() {
    case "$1" in
    fanout) echo deliveries_per_s ;;
    conns) echo server_rss_per_conn_kib ;;
    pairs) echo messages_per_s ;;
    durable) echo acked_per_s ;;
    storm) echo resume.all_resumed_s ;;
    esac
}

# one_run SCENARIO MODE [args...]: fresh server, one tool run; prints the output, records
# the headline figure in $RESULTS/MODE and returns the tool's status.
RESULTS=$(mktemp -d /tmp/switchboard-bench-results.XXXXXX)
one_run() {
    local scenario=$1 mode=$2 out status=0
    shift 2
    if [ "$mode" = floor ]; then start_floor; else start_broker; fi || {
        echo "--- $scenario not run: the $mode server did not start"
        stop_server
        return 1
    }
    if [ "$mode" = contract ] && [ "$NODES" -gt 1 ]; then
        echo "--- $scenario against a cluster of $NODES brokers (${SERVER_URLS[*]}, pids ${SERVER_PIDS[*]})"
    else
        echo "--- $scenario against the $mode server ($SERVER_URL, pid $SERVER_PID)"
    fi
    out=$(tool "$scenario" "$mode" "$@") || status=$?
    echo "$out"
    if [ "$status" -ne 0 ]; then
        echo "--- the tool exited with $status; last lines of the server log(s):"
        tail -n 20 "$SERVER_DIR"/server.log "$SERVER_DIR"/node-*/server.log 2>/dev/null || true
    fi
    echo "$out" | awk -v k="$(headline "$scenario")" '$1 == k { gsub(",", "", $2); print $2 }' \
        >>"$RESULTS/$mode"
    stop_server
    return "$status"
}

summary() {
    local scenario=$1 mode
    for mode in contract floor; do
        [ -s "$RESULTS/$mode" ] || continue
        sort -g "$RESULTS/$mode" | awk -v m="$mode" -v k="$(headline "$scenario")" '
            { v[NR] = $1 }
            END {
                med = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
                printf "%-8s %s: median %s (min %s, max %s) over %d run(s)\n", m, k, med, v[1], v[NR], NR
            }'
    done
}

has_floor() { case "$1" in fanout | conns | pairs) [ -z "${NO_FLOOR:-}" ] ;; *) false ;; esac; }

if [ "$SCENARIO" = smoke ]; then
    # Tiny sizes; one fresh broker per scenario; any failure makes the exit non-zero.
    TIMEOUT=${TIMEOUT_SMOKE:-60}
    fails=0
    run_smoke() { one_run "$@" || fails=$((fails + 1)); }
    run_smoke fanout contract --subscribers 5 --messages 50
    run_smoke fanout floor --subscribers 5 --messages 50
    run_smoke conns contract --conns 20 --hold 2 --heartbeat 1
    run_smoke conns floor --conns 20 --hold 2 --heartbeat 1
    run_smoke pairs contract --pairs 3 --messages 50 --random-ids
    run_smoke pairs floor --pairs 3 --messages 50
    run_smoke durable contract --publishers 2 --messages 200
    run_smoke storm contract --clients 10 --messages 3 --away 2
    if [ -z "${NO_CLUSTER:-}" ]; then
        # Three nodes on the default PostgreSQL and Redis (unless DATABASE_URL, REDIS_URL
        # name others); subscribers on all three, the publisher on the first.
        smoke_cluster() {
            local DATABASE_URL=${DATABASE_URL:-$DEFAULT_DATABASE_URL} NODES=3
            if check_database && check_cluster; then
                run_smoke fanout contract --subscribers 6 --messages 50
            else
                echo "smoke: the cluster fan-out needs PostgreSQL and Redis (NO_CLUSTER=1 skips it)"
                fails=$((fails + 1))
            fi
        }
        smoke_cluster
    fi
    rm -rf "$RESULTS"
    if [ "$fails" -ne 0 ]; then
        echo "smoke: $fails scenario run(s) failed"
        exit 1
    fi
    echo "smoke: all scenarios passed"
    exit 0
fi

fails=0
for i in $(seq 1 "$RUNS"); do
    echo "=== run $i of $RUNS"
    one_run "$SCENARIO" contract "$@" || fails=$((fails + 1))
    if has_floor "$SCENARIO"; then
        one_run "$SCENARIO" floor "$@" || fails=$((fails + 1))
    fi
done
echo "=== summary"
summary "$SCENARIO"
rm -rf "$RESULTS"
[ "$fails" -eq 0 ]

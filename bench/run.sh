#!/usr/bin/env bash
# Load benchmark for customer360 on its embedded SQLite store, over loopback with wrk.
#
#   bench/run.sh [--count N] [--duration S] [--connections C] [--binary PATH] [--smoke]
#                [--data-dir DIR] [--keep-data] [--only a,b,...] [--perf]
#
# Builds the release binary (unless --binary), seeds N customers into a fresh DATA_DIR, starts
# the server, measures cold start, gets a token with the dev client, runs each scenario for
# S seconds with 2 wrk threads and C connections, and prints/writes the table to
# bench/results/latest.md. --smoke: N=2000, 1 s per scenario; exits non-zero when a scenario
# had errors or no requests, or the server died. --perf: also `perf record` the server during each
# scenario into bench/results/perf-<scenario>.data (+ a .txt with the top symbols).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$ROOT/bench"
COUNT=100000
DURATION=10
CONNECTIONS=32
THREADS=2
BINARY=""
SMOKE=0
DATA_DIR_ARG=""
KEEP=0
ONLY=""
PERF=0
ALL="get_by_id list_page1 list_deep_page list_deep_cursor search create patch insights token mixed"

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --count|--duration|--connections|--binary|--data-dir|--only)
      [ $# -ge 2 ] || { echo "run.sh: $1 needs a value" >&2; exit 2; } ;;&
    --count) COUNT="$2"; COUNT_SET=1; shift 2 ;;
    --duration) DURATION="$2"; DURATION_SET=1; shift 2 ;;
    --connections) CONNECTIONS="$2"; shift 2 ;;
    --binary) BINARY="$2"; shift 2 ;;
    --smoke) SMOKE=1; shift ;;
    --data-dir) DATA_DIR_ARG="$2"; shift 2 ;;
    --keep-data) KEEP=1; shift ;;
    --only) ONLY="$2"; shift 2 ;;
    --perf) PERF=1; shift ;;
    -h|--help) usage 0 ;;
    *) echo "run.sh: unknown argument $1" >&2; usage 2 ;;
  esac
done
if [ "$SMOKE" = 1 ]; then
  [ -n "${COUNT_SET:-}" ] || COUNT=2000
  [ -n "${DURATION_SET:-}" ] || DURATION=1
fi
SCENARIOS="${ONLY//,/ }"
SCENARIOS="${SCENARIOS:-$ALL}"
for v in COUNT DURATION CONNECTIONS; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || { echo "run.sh: $v must be a positive integer" >&2; exit 2; }
done
[ "$CONNECTIONS" -ge "$THREADS" ] || { echo "run.sh: --connections must be at least $THREADS" >&2; exit 2; }

say() { printf '%s\n' "$*" >&2; }
ms_now() { echo $(( $(date +%s%N) / 1000000 )); }

# --- tools -------------------------------------------------------------------------------
command -v python3 >/dev/null || { say "run.sh: python3 is required"; exit 2; }
if [ "$PERF" = 1 ] && ! command -v perf >/dev/null; then say "run.sh: --perf needs perf (apt-get install linux-perf)"; exit 2; fi
if ! command -v wrk >/dev/null; then
  say "installing wrk (apt-get)"
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  if ! $SUDO apt-get install -y -qq wrk >/dev/null 2>&1; then
    $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq wrk >/dev/null
  fi
fi

# --- binary ------------------------------------------------------------------------------
if [ -z "$BINARY" ]; then
  say "building the release binary (cargo build --release)"
  (cd "$ROOT" && cargo build --release --quiet)
  BINARY="${CARGO_TARGET_DIR:-$ROOT/target}/release/customer360"
fi
[ -x "$BINARY" ] || { say "run.sh: no executable at $BINARY"; exit 2; }
BINARY="$(cd "$(dirname "$BINARY")" && pwd)/$(basename "$BINARY")"

# --- data dir, results -------------------------------------------------------------------
RESULTS="$BENCH/results"
mkdir -p "$RESULTS"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/c360-bench.XXXXXX")"
if [ -n "$DATA_DIR_ARG" ]; then
  mkdir -p "$DATA_DIR_ARG"
  DATA_DIR="$(cd "$DATA_DIR_ARG" && pwd)"
else
  DATA_DIR="$WORK/data"
  mkdir -p "$DATA_DIR"
fi
RAW="$WORK/raw.txt"
: > "$RAW"
SERVER_PID=""
SAMPLER_PID=""

cleanup() {
  [ -n "$SAMPLER_PID" ] && kill "$SAMPLER_PID" 2>/dev/null || true
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  if [ "$KEEP" = 1 ] || [ -n "$DATA_DIR_ARG" ]; then
    say "kept data in $DATA_DIR (work files in $WORK)"
    [ -n "$DATA_DIR_ARG" ] && rm -rf "$WORK"
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

export DATA_DIR
# Only the embedded store and local secrets; nothing from the caller's Azure settings.
unset FUNCTIONS_CUSTOMHANDLER_PORT STORE KEYVAULT_URL SERVICEBUS_NAMESPACE COSMOS_ENDPOINT COSMOS_KEY \
  APPLICATIONINSIGHTS_CONNECTION_STRING CONNECTOR_BASE_URL || true
# The limiter must not refuse the benchmark: raise both limits far above what one client sends.
export RATE_LIMIT_PER_MINUTE=1000000000
export TOKEN_RATE_LIMIT_PER_MINUTE=1000000000
export TOKEN_TTL_SECONDS=86400

# --- seed --------------------------------------------------------------------------------
SEED_S="reused"
if [ -n "$DATA_DIR_ARG" ] && [ -f "$DATA_DIR/.bench-seeded-$COUNT" ]; then
  say "reusing the $COUNT customers already seeded in $DATA_DIR"
else
  say "seeding $COUNT customers into $DATA_DIR"
  t0=$(ms_now)
  "$BINARY" seed --count "$COUNT" --seed 42 >"$WORK/seed.log" 2>&1 || { cat "$WORK/seed.log" >&2; exit 1; }
  SEED_S=$(awk -v ms=$(( $(ms_now) - t0 )) 'BEGIN { printf "%.1f", ms / 1000 }')
  say "  seeded in ${SEED_S} s"
  [ -n "$DATA_DIR_ARG" ] && touch "$DATA_DIR/.bench-seeded-$COUNT"
fi

# --- start: first start (creates the dev client), then the measured restart ---------------
# The first start prints the dev client's secret on stderr: its log is never shown.
start_server() { # name of the log files
  PORT="$(python3 "$BENCH/helper.py" free-port)"
  export PORT
  local out
  out="$(python3 "$BENCH/helper.py" start "$DATA_DIR/$1.log" "$DATA_DIR/$1.err" "$BINARY" serve)" || {
    [ "$1" = server ] && tail -20 "$DATA_DIR/$1.err" >&2; exit 1; }
  SERVER_PID="${out%% *}"
  START_MS="${out##* }"
}
stop_server() {
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$SERVER_PID" 2>/dev/null; then say "server did not stop on SIGTERM within 10 s"; kill -KILL "$SERVER_PID"; fi
  SERVER_PID=""
}
start_server first-start
FIRST_START_MS="$START_MS"
read -r CLIENT_ID CLIENT_SECRET < <(python3 "$BENCH/helper.py" creds "$DATA_DIR")
stop_server
start_server server
COLD_MS="$START_MS"
say "cold start: ${COLD_MS} ms (first start, which also creates the dev client: ${FIRST_START_MS} ms); pid $SERVER_PID, port $PORT"
say "rate limits raised to RATE_LIMIT_PER_MINUTE=$RATE_LIMIT_PER_MINUTE and TOKEN_RATE_LIMIT_PER_MINUTE=$TOKEN_RATE_LIMIT_PER_MINUTE so the limiter does not refuse the benchmark"

python3 "$BENCH/helper.py" rss "$SERVER_PID" "$WORK/rss-peak" &
SAMPLER_PID=$!
TOKEN="$(python3 "$BENCH/helper.py" token "$PORT" "$CLIENT_ID" "$CLIENT_SECRET")"
say "collecting ids and cursors"
read -r TOTAL DEPTH NIDS NCURSORS < <(python3 "$BENCH/helper.py" prep "$PORT" "$TOKEN" "$WORK")
say "  total $TOTAL customers; $NIDS ids; $NCURSORS cursors at depth $DEPTH (pageSize 50)"

export BENCH_TOKEN="$TOKEN" BENCH_IDS="$WORK/ids.txt" BENCH_CURSORS="$WORK/cursors.txt" BENCH_DEEP_PAGE="$DEPTH" \
  BENCH_CLIENT_ID="$CLIENT_ID" BENCH_CLIENT_SECRET="$CLIENT_SECRET" BENCH_RUN="$(date +%s%N)" BENCH_OUT="$RAW"

# --- scenarios ---------------------------------------------------------------------------
declare -A TARGET_RPS=( [get_by_id]=20000 [list_page1]=8000 [list_deep_cursor]=8000 [list_deep_page]=1000 [search]=3000
  [create]=5000 [patch]=5000 [insights]=1000 [token]=5000 [mixed]=8000 )
declare -A TARGET_P95=( [get_by_id]=3 [list_page1]=8 [list_deep_cursor]=8 [list_deep_page]=40 [search]=20
  [create]=15 [patch]=15 [insights]=50 [token]=10 [mixed]=10 )
declare -A SRV_CPU=()
declare -A ANON_SO_FAR=()
FAILED=0
DIED=0
LOADAVG_START="$(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-17s %9s %8s %8s %8s %7s %9s %10s %9s %9s\n' scenario "req/s" "p50 ms" "p95 ms" "p99 ms" errors "srv cores" "srv µs/req" "srv wait" "wrk µs/req"
for s in $SCENARIOS; do
  if [ -z "${TARGET_RPS[$s]:-}" ]; then say "run.sh: unknown scenario $s"; exit 2; fi
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then say "the server died before $s"; DIED=1; break; fi
  read -r cpu0 wait0 < <(python3 "$BENCH/helper.py" cpu "$SERVER_PID")
  PERF_PID=""
  if [ "$PERF" = 1 ] && [ "$DURATION" -ge 3 ]; then
    (sleep 1; exec perf record -q -F 199 --call-graph dwarf,16384 -p "$SERVER_PID" -o "$RESULTS/perf-$s.data" \
      -- sleep $((DURATION - 2))) >/dev/null 2>&1 &
    PERF_PID=$!
  fi
  # wrk's own CPU time (user+sys) comes from bash's `time`: the load generator shares the cores.
  TIMEFORMAT='%U %S'
  { time BENCH_SCENARIO="$s" wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --timeout 10s -s "$BENCH/wrk.lua" \
      "http://127.0.0.1:$PORT" >"$WORK/wrk-$s.txt" 2>&1 ; } 2>"$WORK/wrk-$s.time" \
    || { say "wrk failed for $s:"; cat "$WORK/wrk-$s.txt" >&2; FAILED=1; }
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    say "the server died during $s"; DIED=1; break
  fi
  read -r cpu1 wait1 < <(python3 "$BENCH/helper.py" cpu "$SERVER_PID")
  read -r wu ws < <(tail -1 "$WORK/wrk-$s.time")
  if [ -n "$PERF_PID" ]; then
    wait "$PERF_PID" || true
    perf report -i "$RESULTS/perf-$s.data" --no-children --sort symbol --stdio -g none 2>/dev/null \
      | grep '%' | cut -c1-140 | head -40 > "$RESULTS/perf-$s.txt" || true
  fi
  line="$(grep "^$s " "$RAW" | tail -1 || true)"
  if [ -z "$line" ]; then say "no result for $s"; cat "$WORK/wrk-$s.txt" >&2; FAILED=1; continue; fi
  read -r _ reqs secs rps p50 p95 p99 errs sock noop <<<"$line"
  # server cores busy, server CPU µs/request, server threads waiting for a core (average), wrk CPU µs/request
  SRV_CPU[$s]="$(awk -v a="$cpu0" -v b="$cpu1" -v w0="$wait0" -v w1="$wait1" -v t="$secs" -v n="$reqs" -v wu="$wu" -v ws="$ws" \
    'BEGIN { w = w1 - w0; if (w < 0) w = 0; if (n < 1) n = 1;
             printf "%.2f %.0f %.2f %.0f", (b-a)/t, (b-a)*1e6/n, w/t, (wu+ws)*1e6/n }')"
  read -r cores uspr waitc wrkus <<<"${SRV_CPU[$s]}"
  sleep 0.25
  ANON_SO_FAR[$s]="$(awk '{ printf "%.0f", $1 / 1024 }' "$WORK/rss-peak" 2>/dev/null || echo -)"
  printf '%-17s %9.0f %8.2f %8.2f %8.2f %7d %9s %10s %9s %9s\n' "$s" "$rps" "$(awk -v u="$p50" 'BEGIN{print u/1000}')" \
    "$(awk -v u="$p95" 'BEGIN{print u/1000}')" "$(awk -v u="$p99" 'BEGIN{print u/1000}')" "$errs" "$cores" "$uspr" "$waitc" "$wrkus"
  if grep -q '^FIRST_ERROR' "$WORK/wrk-$s.txt"; then say "  $(grep -m1 '^FIRST_ERROR' "$WORK/wrk-$s.txt")"; fi
  [ "$noop" -gt 0 ] && say "  ($noop of the patches set the stage it already had: answered updated:false, no write)"
  if [ "$errs" -gt 0 ] || [ "$reqs" -eq 0 ]; then FAILED=1; fi
done

HWM_KB="$(awk '/^VmHWM/ { print $2 }' "/proc/$SERVER_PID/status" 2>/dev/null || echo 0)"
RSS_KB="$(awk '/^VmRSS/ { print $2 }' "/proc/$SERVER_PID/status" 2>/dev/null || echo 0)"
RSS_ANON_KB="$(awk '/^RssAnon/ { print $2 }' "/proc/$SERVER_PID/status" 2>/dev/null || echo 0)"
RSS_FILE_KB="$(awk '/^RssFile/ { print $2 }' "/proc/$SERVER_PID/status" 2>/dev/null || echo 0)"
kill -0 "$SERVER_PID" 2>/dev/null || DIED=1
sleep 0.3
read -r PEAK_ANON_KB PEAK_FILE_KB < "$WORK/rss-peak" 2>/dev/null || { PEAK_ANON_KB=0; PEAK_FILE_KB=0; }
kill "$SAMPLER_PID" 2>/dev/null || true
SAMPLER_PID=""
DB_MB="$(du -sm "$DATA_DIR" | cut -f1)"
echo "server peak RSS (VmHWM): $((HWM_KB / 1024)) MiB; sampled peaks: anonymous $((PEAK_ANON_KB / 1024)) MiB, file-backed $((PEAK_FILE_KB / 1024)) MiB (VmRSS now $((RSS_KB / 1024)) MiB: anonymous $((RSS_ANON_KB / 1024)) MiB, file-backed incl. SQLite mmap $((RSS_FILE_KB / 1024)) MiB); data dir ${DB_MB} MB"
echo "cold start: ${COLD_MS} ms"

# --- report ------------------------------------------------------------------------------
verdict() { # scenario rps p95_ms
  awk -v r="$2" -v p="$3" -v tr="${TARGET_RPS[$1]}" -v tp="${TARGET_P95[$1]}" \
    'BEGIN { if (r >= tr && p <= tp) print "ok"; else print "MISS" }'
}
{
  echo "# customer360 load benchmark — $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo
  echo "- commit: \`$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)\`, binary: \`${BINARY#"$ROOT"/}\`"
  if [ "$SEED_S" = reused ]; then seeded="seeded by an earlier run, reused with --data-dir"; else seeded="seeding took ${SEED_S} s"; fi
  echo "- data: $TOTAL customers (seed 42; $seeded), data dir ${DB_MB} MB on disk"
  echo "- load: wrk, $THREADS threads, $CONNECTIONS connections, ${DURATION} s per scenario, over loopback$([ "$SMOKE" = 1 ] && echo ' (smoke run)')"
  echo "- rate limits raised (RATE_LIMIT_PER_MINUTE=$RATE_LIMIT_PER_MINUTE, TOKEN_RATE_LIMIT_PER_MINUTE=$TOKEN_RATE_LIMIT_PER_MINUTE) so the limiter does not refuse the benchmark"
  echo "- machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.1f GiB", $2/1048576 }' /proc/meminfo) RAM, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'); load average at start $LOADAVG_START"
  echo "- the load generator (wrk) runs on the same machine and competes with the server for the cores"
  echo "- cold start (process start until \`GET /\` answers): **${COLD_MS} ms** (first start, which also creates the dev client: ${FIRST_START_MS} ms)"
  echo "- server peak RSS (VmHWM at the end): **$((HWM_KB / 1024)) MiB**; sampled every 0.2 s: peak anonymous (the server's own memory) **$((PEAK_ANON_KB / 1024)) MiB**, peak file-backed (the SQLite file mapped with mmap, counted once per connection that maps it) $((PEAK_FILE_KB / 1024)) MiB; VmRSS at the end $((RSS_KB / 1024)) MiB = anonymous $((RSS_ANON_KB / 1024)) MiB + file-backed (the SQLite file mapped with mmap) $((RSS_FILE_KB / 1024)) MiB"
  if [ "$SMOKE" = 1 ] || [ "$TOTAL" -lt 1000000 ]; then
    echo "- the targets are for 1,000,000 customers on the release build: this run is not directly comparable"
  fi
  echo "- list_deep: page $DEPTH with pageSize 50 by offset (\`list_deep_page\`) and by cursor (\`list_deep_cursor\`)"
  echo
  echo "| scenario | req/s | p50 ms | p95 ms | p99 ms | errors | requests | server cores | server CPU µs/req | server threads waiting for a core | wrk CPU µs/req | peak anonymous RSS so far, MiB | target (1M, 32 conn) | |"
  echo "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|---|"
  while read -r s reqs secs rps p50 p95 p99 errs sock noop; do
    read -r cores uspr waitc wrkus <<<"${SRV_CPU[$s]:-- - - -}"
    p95ms="$(awk -v u="$p95" 'BEGIN{printf "%.2f", u/1000}')"
    printf '| %s | %.0f | %.2f | %s | %.2f | %d | %d | %s | %s | %s | %s | %s | ≥ %s/s, p95 ≤ %s ms | %s |\n' "$s" "$rps" \
      "$(awk -v u="$p50" 'BEGIN{print u/1000}')" "$p95ms" "$(awk -v u="$p99" 'BEGIN{print u/1000}')" "$errs" "$reqs" \
      "$cores" "$uspr" "$waitc" "$wrkus" "${ANON_SO_FAR[$s]:--}" "${TARGET_RPS[$s]}" "${TARGET_P95[$s]}" "$(verdict "$s" "$rps" "$p95ms")"
  done < "$RAW"
  echo
  echo "Cold start target ≤ 100 ms: $(awk -v m="$COLD_MS" 'BEGIN { print (m <= 100 ? "ok" : "MISS") }'); peak RSS target ≤ 256 MiB: $([ "$HWM_KB" -le $((256 * 1024)) ] && echo ok || echo MISS)."
  echo "Server cores = server CPU time / wall time during the scenario (of $(nproc)); server CPU µs/req = server CPU time per request;"
  echo "threads waiting for a core = run-queue time of the server's threads / wall time (above 0: the server was ready to run but"
  echo "the cores were busy with wrk or other work); wrk CPU µs/req = the load generator's CPU time per request."
} > "$RESULTS/latest.md"
say "wrote $RESULTS/latest.md"

if [ "$DIED" = 1 ]; then say "FAIL: the server died"; tail -20 "$DATA_DIR/server.err" >&2 || true; exit 1; fi
if [ "$FAILED" = 1 ]; then say "FAIL: a scenario had errors or no requests"; exit 1; fi
if [ "$SMOKE" = 1 ]; then say "smoke: ok"; fi

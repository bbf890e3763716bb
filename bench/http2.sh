#!/usr/bin/env bash
# HTTP/2 ingress overhead of `doppel record`: h2load against an h2c service (examples/http2/server.js, node's
# http2 module) directly vs through doppel record (sandbox; every stream parsed and written as a test case),
# in the same run, alternating, several repetitions; medians. Writes bench/results/http2.md.
# Needs node and h2load (Debian: nghttp2-client). Usage: bench/http2.sh [repetitions]   (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

reps=${1:-5}
direct_port=${DOPPEL_BENCH_PORT:-28080}
proxied_port=$((direct_port + 1))
out=bench/results/http2.md
work=$(mktemp -d)
direct_pid=
doppel_pid=
trap 'kill "$direct_pid" 2>/dev/null || true; kill -INT "$doppel_pid" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release --quiet
doppel=target/release/doppel

# Each workload: a name and h2load arguments (without the URL's host and port).
echo '{"sku":"A-1","qty":3,"note":"a small JSON body of about one hundred bytes, posted and echoed"}' >"$work/body.json"
workloads=(
  "GET, 1 connection, 10 streams in flight, 3000 requests|-n 3000 -c 1 -m 10|/hello"
  "GET, 4 connections, 10 streams each, 3000 requests|-n 3000 -c 4 -m 10|/hello"
  "POST JSON with trailers, 2 connections, 4 streams each, 2000 requests|-n 2000 -c 2 -m 4 -d $work/body.json -H content-type:application/json|/echo"
)

# Requests per second and mean time per request (ms) that h2load reports for one run.
load() {
  local port=$1 args=$2 path=$3
  # shellcheck disable=SC2086
  h2load $args "http://127.0.0.1:$port$path" 2>&1 | awk '
    /^finished in/ { for (i = 1; i <= NF; i++) if ($i ~ /req\/s/) rps = $(i - 1) }
    /^requests:/ { ok = $8 }
    /^time for request:/ { mean = $6; unit = mean; sub(/[0-9.]+/, "", unit); sub(/[a-z]+$/, "", mean);
                           if (unit == "us") mean /= 1000; if (unit == "s") mean *= 1000 }
    END { printf "%s %.3f %s\n", rps, mean, ok }'
}

wait_port() { for _ in $(seq 1 200); do h2load -n 1 "http://127.0.0.1:$1/hello" 2>/dev/null | grep -q '1 succeeded' && return 0; sleep 0.1; done; return 1; }

echo "bench/http2.sh: the service directly on :$direct_port, and under doppel record on :$proxied_port"
APP_PORT=$direct_port node examples/http2/server.js >"$work/direct.out" 2>&1 &
direct_pid=$!
APP_PORT=$proxied_port "$doppel" record --path "$work/rec" --port "$proxied_port" -- node examples/http2/server.js \
  >"$work/doppel.out" 2>"$work/doppel.err" &
doppel_pid=$!
wait_port "$direct_port"
wait_port "$proxied_port" || { cat "$work/doppel.err" >&2; exit 1; }

rows=()
for w in "${workloads[@]}"; do
  IFS='|' read -r name args path <<<"$w"
  d_rps=(); p_rps=(); d_ms=(); p_ms=()
  for r in $(seq 1 "$reps"); do
    read -r rps ms ok < <(load "$direct_port" "$args" "$path"); d_rps+=("$rps"); d_ms+=("$ms")
    read -r rps ms pok < <(load "$proxied_port" "$args" "$path"); p_rps+=("$rps"); p_ms+=("$ms")
    echo "  $name, run $r: direct ${d_rps[-1]} req/s (${d_ms[-1]} ms, $ok ok), through doppel ${p_rps[-1]} req/s (${p_ms[-1]} ms, $pok ok)"
  done
  dr=$(printf '%s\n' "${d_rps[@]}" | median); pr=$(printf '%s\n' "${p_rps[@]}" | median)
  dm=$(printf '%s\n' "${d_ms[@]}" | median); pm=$(printf '%s\n' "${p_ms[@]}" | median)
  ratio=$(awk -v d="$dr" -v p="$pr" 'BEGIN {printf "%.2f", d / p}')
  rows+=("| $name | $dr | $pr | $ratio | $dm | $pm |")
done

stop_doppel_measuring_cpu
tests=$(find "$work/rec/test-set-0/tests" -name '*.yaml' | wc -l)
opaque=$(grep -c '^kind: tcp' "$work/rec/test-set-0/mocks.yaml" 2>/dev/null || true)

{
  echo "# HTTP/2: ingress overhead of \`doppel record\`"
  echo
  echo "h2load against an h2c service (examples/http2/server.js, node's http2 module) on the same machine,"
  echo "directly and through \`doppel record\` (sandbox capture; every stream parsed by the HTTP/2 observer and"
  echo "written as a test case file), alternating within one run; median of $reps repetitions of each. Produced"
  echo "by \`bench/http2.sh $reps\` on $(date -u +%Y-%m-%d)."
  echo
  echo "| workload | direct (req/s) | through doppel (req/s) | slowdown | direct mean (ms) | through doppel mean (ms) |"
  echo "| --- | --- | --- | --- | --- | --- |"
  printf '%s\n' "${rows[@]}"
  echo
  echo "Recorded: $tests test cases (one YAML file each) and ${opaque:-0} opaque connections (0: every connection"
  echo "was parsed). doppel's CPU over the whole run: ${cpu_proxy}s in the proxy and HTTP/2 parsing (the app's"
  echo "path), ${cpu_store}s in the store's writer thread (YAML and one file per test, off the app's path but"
  echo "competing for the same cores)."
  echo
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/ {print $2}') GiB;"
  echo "node $(node --version), $(h2load --version 2>&1 | head -1), doppel release build. h2load, node and doppel"
  echo "share the $(nproc) cores, so the slowdown includes doppel's CPU use competing with the service's. Other"
  echo "work may share the machine: medians move between runs (load average when the run ended: $(cut -d' ' -f1-3 /proc/loadavg))."
} >"$out"
cat "$out"

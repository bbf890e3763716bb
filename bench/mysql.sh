#!/usr/bin/env bash
# MySQL overhead of `doppel record`: mysqlslap straight to the server vs through doppel's recording proxy
# (explicit mode, --dep db=127.0.0.1:3306@PORT), in the same run, alternating, several repetitions; medians.
# Writes bench/results/mysql.md. Needs a MariaDB/MySQL server on 127.0.0.1:3306 (user root, no password)
# and mysqlslap. Usage: bench/mysql.sh [repetitions]   (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
source bench/lib.sh

reps=${1:-5}
host=127.0.0.1
port=3306
proxy_port=${DOPPEL_BENCH_PORT:-23306}
out=bench/results/mysql.md
work=$(mktemp -d)
trap 'kill "$doppel_pid" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT
doppel_pid=

cargo build --release --quiet
doppel=target/release/doppel

# Each workload: a name and mysqlslap arguments (without host and port).
workloads=(
  "point SELECTs, 1 connection, 4000 queries|--concurrency=1 --number-of-queries=4000 --query=SELECT\ 1"
  "mixed read/write, 8 connections, 4000 queries|--concurrency=8 --number-of-queries=4000 --auto-generate-sql --auto-generate-sql-load-type=mixed --auto-generate-sql-add-autoincrement"
  "reads of 10-column rows, 4 connections, 2000 queries|--concurrency=4 --number-of-queries=2000 --auto-generate-sql --auto-generate-sql-load-type=read --number-int-cols=5 --number-char-cols=5"
)

# Seconds mysqlslap reports for one run ("Average number of seconds to run all queries").
slap() {
  local p=$1; shift
  eval "mysqlslap -h $host -P $p -u root --iterations=1 --create-schema=doppel_bench $*" 2>&1 \
    | awk '/Average number of seconds/ {print $(NF-1)}'
}

echo "bench/mysql.sh: starting doppel record (explicit mode) on :$proxy_port"
"$doppel" record --path "$work/rec" --no-sandbox --dep "db=$host:$port@$proxy_port" --port "$((proxy_port + 1)):$((proxy_port + 2))" -- sleep 100000 \
  >"$work/doppel.out" 2>"$work/doppel.err" &
doppel_pid=$!
for _ in $(seq 1 100); do mysqladmin -h $host -P "$proxy_port" -u root ping >/dev/null 2>&1 && break; sleep 0.1; done

rows=()
for w in "${workloads[@]}"; do
  name=${w%%|*}
  args=${w#*|}
  direct=()
  proxied=()
  for r in $(seq 1 "$reps"); do
    direct+=("$(slap $port "$args")")
    proxied+=("$(slap "$proxy_port" "$args")")
    echo "  $name, run $r: direct ${direct[-1]}s, through doppel ${proxied[-1]}s"
  done
  d=$(printf '%s\n' "${direct[@]}" | median)
  p=$(printf '%s\n' "${proxied[@]}" | median)
  ratio=$(awk -v d="$d" -v p="$p" 'BEGIN {printf "%.2f", p / d}')
  rows+=("| $name | $d | $p | $ratio |")
done

stop_doppel_measuring_cpu
mocks=$(grep -c '^kind: mysql' "$work/rec/test-set-0/mocks.yaml" || true)
opaque=$(grep -c '^kind: tcp' "$work/rec/test-set-0/mocks.yaml" || true)

{
  echo "# MySQL: overhead of \`doppel record\`"
  echo
  echo "mysqlslap against MariaDB on the same machine, directly and through \`doppel record\` (explicit mode,"
  echo "\`--dep db=127.0.0.1:3306@$proxy_port\`; every exchange parsed and written to mocks.yaml), alternating"
  echo "within one run; median of $reps repetitions of each, in seconds for the whole workload. Produced by"
  echo "\`bench/mysql.sh $reps\` on $(date -u +%Y-%m-%d)."
  echo
  echo "| workload | direct (s) | through doppel (s) | ratio |"
  echo "| --- | --- | --- | --- |"
  printf '%s\n' "${rows[@]}"
  echo
  echo "Recorded: $mocks MySQL mocks ($(du -m "$work/rec/test-set-0/mocks.yaml" | cut -f1) MiB of YAML) and $opaque opaque"
  echo "connections (0: every connection was parsed). doppel's CPU over the whole run: ${cpu_proxy}s in the proxy and"
  echo "protocol parsing (the app's path), ${cpu_store}s in the store's writer thread (YAML and disk, off the app's"
  echo "path but competing for the same 2 cores: the read workload returns whole tables, so its mocks are large)."
  echo
  echo "Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(free -g | awk '/Mem:/ {print $2}') GiB;"
  echo "server $(mysql -h $host -P $port -u root -N -e 'SELECT VERSION()' 2>/dev/null), $(mysqlslap --version | head -1),"
  echo "doppel release build. mysqlslap, MariaDB and doppel share the $(nproc) cores, so the ratios include"
  echo "doppel's CPU use competing with the server's. Other work may share the machine: medians move between runs"
  echo "(the read workload's ratio was 1.28 and 1.68 in two runs on the same day)."
} >"$out"
cat "$out"

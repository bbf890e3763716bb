# Helpers the bench/*.sh scripts share (sourced after `cd` to the repository root).

# The median of the numbers on stdin, one a line.
median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

# A TCP port free on 127.0.0.1 right now.
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# Where doppel's CPU went over the whole run: the proxy and parsers (tokio workers) vs the store's writer
# thread (YAML serialization and disk writes), in seconds from /proc's clock ticks, into cpu_proxy and
# cpu_store; then stops the doppel whose pid is in doppel_pid (Ctrl-C, so it finishes writing) and clears it.
stop_doppel_measuring_cpu() {
  local hz
  hz=$(getconf CLK_TCK)
  cpu_proxy=$(awk -v t="$(doppel_ticks tokio-rt-worker)" -v hz="$hz" 'BEGIN {printf "%.2f", t / hz}')
  cpu_store=$(awk -v t="$(doppel_ticks doppel-store)" -v hz="$hz" 'BEGIN {printf "%.2f", t / hz}')
  kill -INT "$doppel_pid"
  wait "$doppel_pid" || true
  doppel_pid=
}

# User and system clock ticks of doppel's threads named $1.
doppel_ticks() { for t in /proc/"$doppel_pid"/task/*; do [ "$(cat "$t/comm")" = "$1" ] && awk '{print $14 + $15}' "$t/stat"; done | awk '{s += $1} END {print s + 0}'; }

#!/usr/bin/env bash
# `qsync serve` against nginx serving the same store from the same disk, in
# one run: 32 concurrent loopback clients (wrk) fetching random chunk objects
# for a bounded time each. Prints requests/s, MiB/s, the ratio, and qsync
# serve's peak RSS. Usage: BENCH_SIZE_MIB=1024 BENCH_SECONDS=10 scripts/bench-serve.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MIB=${BENCH_SIZE_MIB:-1024}
SECONDS_EACH=${BENCH_SECONDS:-10}
WORK=${BENCH_DIR:-$PWD/.tmp/bench-serve}
command -v nginx >/dev/null && command -v wrk >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light wrk >/dev/null
}
cargo build --release --locked -q
Q=$PWD/target/release/qsync
rm -rf "$WORK"
mkdir -p "$WORK/nginx"
cd "$WORK"
"$Q" sample generate --dir src --size-mib "$SIZE_MIB" >/dev/null
"$Q" keygen --secret-key k.sec --public-key k.pub >/dev/null
"$Q" snapshot --source src --store store --secret-key k.sec --chain bench --json >/dev/null
(cd store && find chunks -type f) >keys.txt

cat >nginx/nginx.conf <<CONF
worker_processes auto;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  server { listen 127.0.0.1:18181; root $WORK/store; }
}
CONF
nginx -c "$WORK/nginx/nginx.conf"
"$Q" serve --store store --listen 127.0.0.1:18182 >serve.log 2>&1 &
QPID=$!
trap 'kill $QPID 2>/dev/null; nginx -c "$WORK/nginx/nginx.conf" -s stop 2>/dev/null || true' EXIT
sleep 0.5

cat >random.lua <<'LUA'
local keys = {}
for line in io.lines("keys.txt") do keys[#keys + 1] = "/" .. line end
math.randomseed(42)
request = function() return wrk.format("GET", keys[math.random(#keys)]) end
LUA

run() { wrk -t2 -c32 -d"${SECONDS_EACH}s" -s random.lua "$1" | tee "$2.txt" >/dev/null; }
rps() { awk '/Requests\/sec/ { print $2 }' "$1.txt"; }
mibs() { awk '/Transfer\/sec/ { v = $2; if (v ~ /GB/) { sub("GB", "", v); v *= 1024 } else if (v ~ /MB/) { sub("MB", "", v) } else if (v ~ /KB/) { sub("KB", "", v); v /= 1024 } printf "%.0f", v }' "$1.txt"; }
sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
run http://127.0.0.1:18181 nginx
sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
run http://127.0.0.1:18182 qsync
rss=$(awk '/VmHWM/ { printf "%.0f", $2 / 1024 }' /proc/$QPID/status)
ratio=$(awk -v a="$(rps qsync)" -v b="$(rps nginx)" 'BEGIN { printf "%.2f", a / b }')
cat <<REPORT | tee results.md
| server | requests/s | MiB/s | peak RSS, MiB |
|---|---|---|---|
| nginx (sendfile) | $(rps nginx) | $(mibs nginx) | |
| qsync serve | $(rps qsync) | $(mibs qsync) | $rss |

throughput ratio qsync / nginx: $ratio ($(wc -l <keys.txt) chunk objects, $SIZE_MIB MiB, 32 connections, ${SECONDS_EACH}s each, $(nproc) cores)
REPORT

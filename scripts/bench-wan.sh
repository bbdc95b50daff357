#!/usr/bin/env bash
# Restore over an emulated WAN (issue 16): a mirror in its own network
# namespace behind a veth pair with `tc netem` latency (and optionally a
# rate), serving with nginx. Compares, in one run, the default (paced)
# restore with fixed --concurrency values and with aria2c -x16 + extraction.
#
# Needs root (ip netns, tc). Cleans up its namespace on exit.
# Usage: scripts/bench-wan.sh   (BENCH_MIB=1024 BENCH_DELAY=50ms
#        BENCH_RATE=200mbit BENCH_FIXED="8 32" BENCH_DIR=... to change)
set -euo pipefail
cd "$(dirname "$0")/.."

MIB=${BENCH_MIB:-1024}
DELAY=${BENCH_DELAY:-50ms}
RATE=${BENCH_RATE:-}
FIXED=${BENCH_FIXED:-8 32}
WORK=${BENCH_DIR:-$PWD/.tmp/bench-wan}
NS=qsync-wan-$$
missing=()
for tool in nginx aria2c zstd tc ip; do command -v "$tool" >/dev/null || missing+=("$tool"); done
[ -x /usr/bin/time ] || missing+=(time)
if [ ${#missing[@]} -gt 0 ]; then
  pkgs=$(printf '%s\n' "${missing[@]}" | sed -e 's/^aria2c$/aria2/' -e 's/^tc$/iproute2/' -e 's/^ip$/iproute2/' | sort -u)
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >/dev/null
fi
cargo build --release --locked -q
Q=$PWD/target/release/qsync

rm -rf "$WORK"
mkdir -p "$WORK/pub" "$WORK/nginx/tmp"
cd "$WORK"
cleanup() {
  ip netns exec "$NS" nginx -c "$WORK/nginx/nginx.conf" -s stop 2>/dev/null || true
  ip link del "veth-$$" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT
timed() { local name=$1; shift; /usr/bin/time -f "%e %M" -o "$name.time" "$@"; }
secs() { cut -d' ' -f1 "$1.time"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }

"$Q" keygen --secret-key k.sec --public-key k.pub >/dev/null
"$Q" sample generate --dir src --size-mib "$MIB" >gen.json
"$Q" snapshot --source src --store pub/store --secret-key k.sec --chain wan --json >snap.json
tar -C src -cf - . | zstd -T0 -3 -q -o pub/data.tar.zst

# The mirror's namespace: 10.77.0.2, reached from here through 10.77.0.1,
# with the delay (and rate) on both directions of the link.
ip netns add "$NS"
ip link add "veth-$$" type veth peer name eth0 netns "$NS"
ip addr add 10.77.0.1/24 dev "veth-$$"
ip link set "veth-$$" up
ip netns exec "$NS" ip addr add 10.77.0.2/24 dev eth0
ip netns exec "$NS" ip link set eth0 up
ip netns exec "$NS" ip link set lo up
shape="delay $DELAY${RATE:+ rate $RATE}"
tc qdisc add dev "veth-$$" root netem $shape
ip netns exec "$NS" tc qdisc add dev eth0 root netem $shape
cat >nginx/nginx.conf <<CONF
worker_processes 2;
pid $WORK/nginx/nginx.pid;
error_log $WORK/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  client_body_temp_path $WORK/nginx/tmp;
  proxy_temp_path $WORK/nginx/tmp;
  fastcgi_temp_path $WORK/nginx/tmp;
  uwsgi_temp_path $WORK/nginx/tmp;
  scgi_temp_path $WORK/nginx/tmp;
  server { listen 10.77.0.2:8080; location / { root $WORK/pub; } }
}
CONF
ip netns exec "$NS" nginx -c "$WORK/nginx/nginx.conf"
URL=http://10.77.0.2:8080
for _ in $(seq 50); do curl -sf -o /dev/null "$URL/store/catalog.json" && break; sleep 0.1; done

drop_caches
timed aria sh -c "aria2c -q -x16 -s16 -k1M -d aria -o data.tar.zst $URL/data.tar.zst && mkdir -p aria/x && zstd -dc aria/data.tar.zst | tar -x -C aria/x && sync"
rm -rf aria
drop_caches
timed paced sh -c "RUST_LOG=info '$Q' restore --from $URL/store --public-key k.pub --chain wan --dest d-paced --state-dir st-paced --json >paced.json 2>paced.log && sync"
grep -o 'chunks in flight: .*' paced.log | tail -1 >paced.limits || true
rm -rf d-paced
for c in $FIXED; do
  drop_caches
  timed "fixed$c" sh -c "'$Q' restore --from $URL/store --public-key k.pub --chain wan --dest d-$c --state-dir st-$c --concurrency $c --json >/dev/null && sync"
  rm -rf "d-$c"
done

{
  echo "| restore over $DELAY${RATE:+, $RATE} of $MIB MiB | s | ratio to aria2c -x16 + extraction |"
  echo "|---|---|---|"
  echo "| aria2c -x16 -s16, then zstd -dc \\| tar -x | $(secs aria) | 1.00 |"
  echo "| qsync restore, paced (default; $(sed 's/chunks in flight: //' paced.limits)) | $(secs paced) | $(ratio "$(secs paced)" "$(secs aria)") |"
  for c in $FIXED; do
    echo "| qsync restore --concurrency $c | $(secs "fixed$c") | $(ratio "$(secs "fixed$c")" "$(secs aria)") |"
  done
} | tee results.md

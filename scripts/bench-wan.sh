#!/usr/bin/env bash
# Restore over an emulated WAN (issue 16): a mirror in its own network
# namespace behind a veth pair, serving with nginx, with latency added on
# both directions of every connection and optionally a rate on the link.
# Compares, in one run, the default (paced) restore with fixed
# --concurrency values and with aria2c -x16 + extraction.
#
# Latency comes from `tc netem` where the kernel has it; the VMs this was
# written on do not (no sch_netem, no modules), so then a small relay in
# the namespace holds every piece of data for the one-way delay before
# passing it on (pipelined: it delays, it does not throttle). The rate, if
# any, is `tc tbf`. Needs root (ip netns, tc). Cleans up on exit.
# Usage: scripts/bench-wan.sh   (BENCH_MIB=1024 BENCH_DELAY=25ms (each way)
#        BENCH_RATE=200mbit BENCH_FIXED="8 32" BENCH_DIR=... to change)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh

MIB=${BENCH_MIB:-1024}
DELAY=${BENCH_DELAY:-25ms}
RATE=${BENCH_RATE:-}
FIXED=${BENCH_FIXED:-8 32}
WORK=${BENCH_DIR:-$PWD/.tmp/bench-wan}
NS=qsync-wan-$$
bench_tools nginx aria2c zstd tc ip
cargo build --release --locked -q
Q=$PWD/target/release/qsync

rm -rf "$WORK"
mkdir -p "$WORK/pub"
cd "$WORK"
cleanup() {
  ip netns exec "$NS" nginx -c "$WORK/nginx/nginx.conf" -s stop 2>/dev/null || true
  ip netns pids "$NS" 2>/dev/null | xargs -r kill 2>/dev/null || true
  ip link del "veth-$$" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
}
trap cleanup EXIT

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
PORT=8080
if tc qdisc add dev "veth-$$" root netem delay "$DELAY" ${RATE:+rate $RATE} 2>/dev/null; then
  ip netns exec "$NS" tc qdisc add dev eth0 root netem delay "$DELAY" ${RATE:+rate $RATE}
  how="tc netem"
else
  if [ -n "$RATE" ]; then
    tc qdisc add dev "veth-$$" root tbf rate "$RATE" burst 256kb latency 400ms
    ip netns exec "$NS" tc qdisc add dev eth0 root tbf rate "$RATE" burst 256kb latency 400ms
  fi
  # The relay: 10.77.0.2:8080 -> nginx on 10.77.0.2:8081, each piece of
  # data held for the one-way delay in each direction.
  PORT=8081
  cat >relay.py <<'PY'
import asyncio, sys
delay = float(sys.argv[1]) / 1000
async def pipe(reader, writer):
    loop = asyncio.get_running_loop()
    try:
        while data := await reader.read(1 << 16):
            await asyncio.sleep(0)
            loop.call_later(delay, writer.write, data)
    finally:
        loop.call_later(delay + 0.01, writer.close)
async def handle(r, w):
    ur, uw = await asyncio.open_connection("10.77.0.2", 8081)
    await asyncio.gather(pipe(r, uw), pipe(ur, w), return_exceptions=True)
async def main():
    server = await asyncio.start_server(handle, "10.77.0.2", 8080, backlog=256)
    async with server:
        await server.serve_forever()
asyncio.run(main())
PY
  ms=$(echo "$DELAY" | sed 's/ms$//')
  ip netns exec "$NS" timeout 1800 python3 relay.py "$ms" &
  how="a relay holding data ${DELAY} each way"
fi
nginx_conf "$WORK" "server { listen 10.77.0.2:$PORT; location / { root $WORK/pub; } }"
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
  echo "| restore of $MIB MiB, $DELAY each way ($how)${RATE:+, $RATE} | s | ratio to aria2c -x16 + extraction |"
  echo "|---|---|---|"
  echo "| aria2c -x16 -s16, then zstd -dc \\| tar -x | $(secs aria) | 1.00 |"
  echo "| qsync restore, paced (default; $(sed 's/chunks in flight: //' paced.limits)) | $(secs paced) | $(ratio "$(secs paced)" "$(secs aria)") |"
  for c in $FIXED; do
    echo "| qsync restore --concurrency $c | $(secs "fixed$c") | $(ratio "$(secs "fixed$c")" "$(secs aria)") |"
  done
} | tee results.md

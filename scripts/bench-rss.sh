#!/usr/bin/env bash
# Peak RSS of qsync snapshot and restore at several data sizes, to show that
# memory does not grow with the data (restore target: at most 256 MiB for
# 20 GiB). Restore reads over loopback HTTP from `qsync serve`.
# Usage: scripts/bench-rss.sh 2 20   (sizes in GiB; needs ~3x the largest free)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh
bench_tools
cargo build --release --locked -q
Q=$PWD/target/release/qsync
WORK=${BENCH_DIR:-$PWD/.tmp/bench-rss}
echo "| data | snapshot peak RSS, MiB | restore peak RSS, MiB | restore s |"
echo "|---|---|---|---|"
for gib in "${@:-2 20}"; do
  rm -rf "$WORK"
  mkdir -p "$WORK"
  cd "$WORK"
  "$Q" sample generate --dir src --size-mib $((gib * 1024)) >/dev/null
  "$Q" keygen --secret-key k.sec --public-key k.pub >/dev/null
  /usr/bin/time -f "%M" -o snap.rss "$Q" snapshot --source src --store store --secret-key k.sec --chain rss --json >/dev/null
  rm -rf src
  "$Q" serve --store store --listen 127.0.0.1:0 >serve.log 2>&1 &
  server=$!
  for _ in $(seq 100); do grep -q http serve.log && break; sleep 0.1; done
  url=$(grep -o 'http://[0-9.:]*' serve.log)
  /usr/bin/time -f "%M %e" -o rest.rss "$Q" restore --from "$url" --public-key k.pub --chain rss --dest dst --state-dir state --json >/dev/null
  kill $server
  echo "| $gib GiB | $(( $(cat snap.rss) / 1024 )) | $(( $(cut -d' ' -f1 rest.rss) / 1024 )) | $(cut -d' ' -f2 rest.rss) |"
  cd - >/dev/null
done
rm -rf "$WORK"

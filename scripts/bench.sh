#!/usr/bin/env bash
# qsync against the tools operators use today, in one run, on the same
# generated chain-like data served by the same loopback HTTP server.
#
#   snapshot:  qsync snapshot            vs  tar -c | zstd -T0 -3
#   restore:   qsync restore + sync      vs  curl URL | zstd -dc | tar -x + sync
#   disk:      restore throughput        vs  dd conv=fdatasync of the same size
#   top-up:    restore onto the previous snapshot after 5 % changed, vs full restore
#
# Prints ratios (qsync / baseline; below 1 is faster) and peak RSS. Absolute
# times are not comparable between machines or runs; the ratios are the result.
# Usage: BENCH_SIZE_MIB=2048 scripts/bench.sh   (BENCH_DIR to choose the scratch dir)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh

SIZE_MIB=${BENCH_SIZE_MIB:-2048}
WORK=${BENCH_DIR:-$PWD/.tmp/bench}
bench_tools zstd curl
cargo build --release --locked -q
Q=$PWD/target/release/qsync

rm -rf "$WORK"
mkdir -p "$WORK/pub"
cd "$WORK"

echo "generating ${SIZE_MIB} MiB of chain-like data"
"$Q" sample generate --dir src --size-mib "$SIZE_MIB" >gen.json
"$Q" keygen --secret-key k.sec --public-key k.pub >/dev/null
BYTES=$(json gen.json bytes_total)

drop_caches
timed snap_qsync "$Q" snapshot --source src --store pub/store --secret-key k.sec --chain bench --json >snap1.json
drop_caches
timed snap_tar sh -c 'tar -C src -cf - . | zstd -T0 -3 -q -o pub/baseline.tar.zst'

"$Q" serve --store pub --listen 127.0.0.1:0 >serve.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do grep -q http serve.log && break; sleep 0.1; done
URL=$(grep -o 'http://[0-9.:]*' serve.log)

drop_caches
timed rest_curl sh -c "mkdir -p dst-curl && curl -sf $URL/baseline.tar.zst | zstd -dc | tar -x -C dst-curl && sync"
drop_caches
timed rest_qsync sh -c "'$Q' restore --from $URL/store --public-key k.pub --chain bench --dest dst-q --state-dir state --json >rest1.json && sync"
drop_caches
timed dd dd if=/dev/zero of=dd.bin bs=4M count=$((BYTES / 4194304)) conv=fdatasync status=none
rm -f dd.bin
# qsync writes the bulk of each chunk with O_DIRECT, so dd through the same path is the fairer reference.
timed dd_direct dd if=/dev/zero of=dd.bin bs=4M count=$((BYTES / 4194304)) oflag=direct conv=fdatasync status=none
rm -f dd.bin

"$Q" sample mutate --dir src --percent 5 >mut.json
CHANGED=$(json mut.json bytes_changed)
timed snap2 "$Q" snapshot --source src --store pub/store --secret-key k.sec --chain bench --json >snap2.json
drop_caches
timed rest_topup sh -c "'$Q' restore --from $URL/store --public-key k.pub --chain bench --dest dst-q --state-dir state --json >rest2.json && sync"
diff -r -x '.qsync-restore*' src dst-q >/dev/null || { echo "restored tree differs from source" >&2; exit 1; }

MIBS() { awk -v b="$BYTES" -v s="$1" 'BEGIN { printf "%.0f", b / 1048576 / s }'; }
cat <<REPORT | tee results.md
| measure | qsync | baseline | ratio |
|---|---|---|---|
| snapshot, s (baseline: tar -c \| zstd -T0 -3) | $(secs snap_qsync) | $(secs snap_tar) | $(ratio "$(secs snap_qsync)" "$(secs snap_tar)") |
| stored size, bytes | $(du -sb pub/store | cut -f1) | $(stat -c %s pub/baseline.tar.zst) | $(ratio "$(du -sb pub/store | cut -f1)" "$(stat -c %s pub/baseline.tar.zst)") |
| full restore + sync, s (baseline: curl \| zstd -dc \| tar -x) | $(secs rest_qsync) | $(secs rest_curl) | $(ratio "$(secs rest_qsync)" "$(secs rest_curl)") |
| restore throughput, MiB/s (baseline: dd conv=fdatasync) | $(MIBS "$(secs rest_qsync)") | $(MIBS "$(secs dd)") | $(ratio "$(MIBS "$(secs rest_qsync)")" "$(MIBS "$(secs dd)")") |
| restore throughput, MiB/s (reference: dd oflag=direct conv=fdatasync) | $(MIBS "$(secs rest_qsync)") | $(MIBS "$(secs dd_direct)") | $(ratio "$(MIBS "$(secs rest_qsync)")" "$(MIBS "$(secs dd_direct)")") |
| top-up after 5 % change, s (baseline: full qsync restore) | $(secs rest_topup) | $(secs rest_qsync) | $(ratio "$(secs rest_topup)" "$(secs rest_qsync)") |
| top-up bytes fetched (baseline: bytes changed) | $(json rest2.json bytes_fetched) | $CHANGED | $(ratio "$(json rest2.json bytes_fetched)" "$CHANGED") |
| second snapshot bytes uploaded (baseline: bytes changed) | $(json snap2.json bytes_uploaded) | $CHANGED | $(ratio "$(json snap2.json bytes_uploaded)" "$CHANGED") |
| peak RSS snapshot, MiB (baseline: tar \| zstd) | $(rss_mib snap_qsync) | $(rss_mib snap_tar) | |
| peak RSS restore, MiB (baseline: curl \| zstd \| tar) | $(rss_mib rest_qsync) | $(rss_mib rest_curl) | |

data: $BYTES bytes in $(json gen.json files) files; $(nproc) cores; qsync $("$Q" --version | cut -d' ' -f2)
REPORT

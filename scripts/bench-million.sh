#!/usr/bin/env bash
# A million small files (issue 16's memory target): peak RSS and time of
# qsync snapshot, restore, and restore into the complete directory, beside
# tar -c | zstd -T0 -3 and curl | zstd -dc | tar -x of the same files, in one
# run. The restores go onto a fresh ext4 with inodes for them; everything is
# served by qsync serve on loopback.
# Usage: scripts/bench-million.sh   (BENCH_FILES=1000000 BENCH_MAX_KIB=4 BENCH_DIR=...)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh

FILES=${BENCH_FILES:-1000000}
MAX_KIB=${BENCH_MAX_KIB:-4}
WORK=${BENCH_DIR:-$PWD/.tmp/bench-million}
bench_tools zstd curl
cargo build --release --locked -q
Q=$PWD/target/release/qsync

rm -rf "$WORK"
mkdir -p "$WORK/mnt"
cd "$WORK"
server=
trap '[ -z "$server" ] || kill "$server" 2>/dev/null || true; umount "$WORK/mnt" 2>/dev/null || true' EXIT
truncate -s 12G dest.img
mkfs.ext4 -q -F -N $((FILES + FILES / 4 + 10000)) dest.img
mount -o loop dest.img mnt
"$Q" keygen --secret-key k.sec --public-key k.pub >/dev/null
"$Q" sample generate --dir src --small-files "$FILES" --small-max-kib "$MAX_KIB" >gen.json

drop_caches
timed tar_c sh -c 'tar -C src -c . | zstd -q -T0 -3 >src.tar.zst'
drop_caches
timed snap "$Q" snapshot --source src --store store --secret-key k.sec --chain m --json >snap.json
"$Q" serve --store store --listen 127.0.0.1:0 >serve.log 2>&1 &
server=$!
for _ in $(seq 100); do grep -q http serve.log && break; sleep 0.1; done
url=$(grep -o 'http://[0-9.:]*' serve.log)
cp src.tar.zst store/
drop_caches
mkdir mnt/tar
timed tar_x sh -c "curl -s $url/src.tar.zst | zstd -dc | tar -C mnt/tar -x && sync"
rm -rf mnt/tar
drop_caches
timed rest sh -c "'$Q' restore --from $url --public-key k.pub --chain m --dest mnt/q --state-dir mnt/state --json >rest.json && sync"
timed again "$Q" restore --from "$url" --public-key k.pub --chain m --dest mnt/q --state-dir mnt/state --json >again.json

echo "data: $(json gen.json bytes_total) bytes in $FILES files of up to $MAX_KIB KiB; $(nproc) cores; qsync $("$Q" --version | cut -d' ' -f2)"
echo "objects stored: $(find store/chunks -type f | wc -l) chunks; manifest $(du -b store/chains/m/manifests/* | cut -f1 | head -1) bytes"
echo
echo "| step | qsync s | qsync peak RSS MiB | baseline | baseline s | baseline peak RSS MiB |"
echo "|---|---|---|---|---|---|"
echo "| snapshot | $(secs snap) | $(rss_mib snap) | tar -c \| zstd -T0 -3 | $(secs tar_c) | $(rss_mib tar_c) |"
echo "| restore + sync | $(secs rest) | $(rss_mib rest) | curl \| zstd -dc \| tar -x + sync | $(secs tar_x) | $(rss_mib tar_x) |"
echo "| restore into the complete directory | $(secs again) | $(rss_mib again) | | | |"

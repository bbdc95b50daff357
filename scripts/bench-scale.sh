#!/usr/bin/env bash
# Scale (issue 16): qsync against what an operator would use instead, in one
# run, every transfer served by one loopback nginx.
#
#   small files: snapshot  vs tar -c | zstd -T0 -3; objects stored vs bytes / 1 MiB
#                restore   vs curl | zstd -dc | tar -x, each + sync
#                restore into a directory that is already complete
#   large files: restore   vs rclone copy --transfers 16 of the raw files (no verification)
#   limited:     restore   vs aria2c -x16 then zstd -dc | tar -x, nginx limit_rate per connection
#
# Prints ratios (qsync / baseline; below 1 is faster). Absolute times are not
# comparable between runs on these VMs; the ratios are the result. Every
# restore, qsync's and the baseline's, goes into a freshly made ext4 (a
# loop device, when this runs as root): creating files right after tens of
# thousands were deleted costs ext4 seconds of inode-table scanning
# (`recently_deleted`), which would make whichever tool runs second look slow.
# Usage: scripts/bench-scale.sh   (BENCH_FILES=50000 BENCH_LARGE_MIB=2048
#        BENCH_LIMITED_MIB=1024 BENCH_RATE=20m BENCH_DIR=... to change)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh

FILES=${BENCH_FILES:-50000}
LARGE_MIB=${BENCH_LARGE_MIB:-2048}
LIMITED_MIB=${BENCH_LIMITED_MIB:-1024}
RATE=${BENCH_RATE:-20m}
WORK=${BENCH_DIR:-$PWD/.tmp/bench-scale}
bench_tools zstd curl nginx aria2c rclone
cargo build --release --locked -q
Q=$PWD/target/release/qsync

rm -rf "$WORK"
mkdir -p "$WORK/pub"
cd "$WORK"
# fresh NAME: an empty directory NAME on a new ext4 (or just a new directory).
IMG=$WORK/dest.img
mkdir -p "$WORK/mnt"
fresh() {
  umount "$WORK/mnt" 2>/dev/null || true
  rm -f "$IMG"
  if truncate -s 12G "$IMG" && mkfs.ext4 -q -F "$IMG" 2>/dev/null && mount -o loop "$IMG" "$WORK/mnt" 2>/dev/null; then
    mkdir -p "$WORK/mnt/$1" && ln -sfn "$WORK/mnt/$1" "$WORK/$1"
  else
    rm -rf "${WORK:?}/$1" && mkdir -p "$WORK/$1"
  fi
}
"$Q" keygen --secret-key k.sec --public-key k.pub >/dev/null

# One nginx for every transfer: /pub/ at full speed (autoindex for rclone),
# /slow/ the same files at $RATE per connection (CDN edges and S3 prefixes
# limit each connection, not the client).
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
nginx_conf "$WORK" "server {
    listen 127.0.0.1:$PORT;
    location /pub/ { alias $WORK/pub/; autoindex on; }
    location /slow/ { alias $WORK/pub/; limit_rate $RATE; }
  }"
nginx -c "$WORK/nginx/nginx.conf"
trap 'nginx -c "$WORK/nginx/nginx.conf" -s stop 2>/dev/null || true; umount "$WORK/mnt" 2>/dev/null || true' EXIT
URL=http://127.0.0.1:$PORT

# --- small files ---------------------------------------------------------
echo "generating $FILES small files"
"$Q" sample generate --dir small --small-files "$FILES" >small.json
SMALL_BYTES=$(json small.json bytes_total)
drop_caches
timed s_snap "$Q" snapshot --source small --store pub/small --secret-key k.sec --chain small --json >s_snap.json
drop_caches
timed s_tar sh -c 'tar -C small -cf - . | zstd -T0 -3 -q -o pub/small.tar.zst'
OBJECTS=$(find pub/small/chunks -type f | wc -l)
fresh s-curl
drop_caches
timed s_curl sh -c "curl -sf $URL/pub/small.tar.zst | zstd -dc | tar -x -C s-curl/ && sync"
fresh s-q
drop_caches
timed s_rest sh -c "'$Q' restore --from $URL/pub/small --public-key k.pub --chain small --dest s-q/d --state-dir state --json >s_rest.json && sync"
diff -r -x '.qsync-restore*' small s-q/d >/dev/null || { echo "small: restored tree differs" >&2; exit 1; }
timed s_again "$Q" restore --from "$URL/pub/small" --public-key k.pub --chain small --dest s-q/d --state-dir state --json >s_again.json

# --- large files ---------------------------------------------------------
echo "generating $LARGE_MIB MiB of large files"
"$Q" sample generate --dir pub/large-src --size-mib "$LARGE_MIB" >large.json
"$Q" snapshot --source pub/large-src --store pub/large --secret-key k.sec --chain large --json >l_snap.json
fresh l-rclone
drop_caches
timed l_rclone sh -c "rclone copy --transfers 16 --http-url $URL/pub/large-src/ :http: l-rclone/ && sync"
fresh l-q
drop_caches
timed l_rest sh -c "'$Q' restore --from $URL/pub/large --public-key k.pub --chain large --dest l-q/d --state-dir state --json >l_rest.json && sync"
rm -rf pub/large-src

# --- a mirror limited per connection ----------------------------------------
echo "generating $LIMITED_MIB MiB behind $RATE per connection"
"$Q" sample generate --dir lim-src --size-mib "$LIMITED_MIB" --seed 7 >lim.json
"$Q" snapshot --source lim-src --store pub/lim --secret-key k.sec --chain lim --json >m_snap.json
tar -C lim-src -cf - . | zstd -T0 -3 -q -o pub/lim.tar.zst
fresh m-aria
drop_caches
timed m_aria sh -c "aria2c -q -x16 -s16 -k1M -d m-aria -o lim.tar.zst $URL/slow/lim.tar.zst && mkdir -p m-aria/x && zstd -dc m-aria/lim.tar.zst | tar -x -C m-aria/x && sync"
fresh m-q
drop_caches
timed m_rest sh -c "RUST_LOG=info '$Q' restore --from $URL/slow/lim --public-key k.pub --chain lim --dest m-q/d --state-dir state --json >m_rest.json 2>m_rest.log && sync"
fresh m-q16
drop_caches
timed m_rest16 sh -c "'$Q' restore --from $URL/slow/lim --public-key k.pub --chain lim --dest m-q16/d --state-dir state16 --concurrency 16 --json >m_rest16.json && sync"
diff -r -x '.qsync-restore*' lim-src m-q16/d >/dev/null || { echo "limited: restored tree differs" >&2; exit 1; }
# The same restore from nginx at full speed: the pace must not cost there.
fresh u-q
drop_caches
timed u_rest sh -c "RUST_LOG=info '$Q' restore --from $URL/pub/lim --public-key k.pub --chain lim --dest u-q/d --state-dir state-u --json >u_rest.json 2>u_rest.log && sync"
fresh u-q8
drop_caches
timed u_rest8 sh -c "'$Q' restore --from $URL/pub/lim --public-key k.pub --chain lim --dest u-q8/d --state-dir state-u8 --concurrency 8 --json >u_rest8.json && sync"

cat <<REPORT | tee results.md
| case | qsync | baseline | ratio |
|---|---|---|---|
| $FILES small files: snapshot, s (tar -c \| zstd -T0 -3) | $(secs s_snap) | $(secs s_tar) | $(ratio "$(secs s_snap)" "$(secs s_tar)") |
| same: objects stored (bytes / 1 MiB + 100) | $OBJECTS | $((SMALL_BYTES / 1048576 + 100)) | $(ratio "$OBJECTS" "$((SMALL_BYTES / 1048576 + 100))") |
| same: restore + sync, s (curl \| zstd -dc \| tar -x + sync) | $(secs s_rest) | $(secs s_curl) | $(ratio "$(secs s_rest)" "$(secs s_curl)") |
| same: restore into the complete directory, s | $(secs s_again) | | |
| $LARGE_MIB MiB of large files: restore + sync, s (rclone copy --transfers 16 + sync, unverified) | $(secs l_rest) | $(secs l_rclone) | $(ratio "$(secs l_rest)" "$(secs l_rclone)") |
| $LIMITED_MIB MiB at $RATE per connection: restore, s (aria2c -x16, zstd -dc \| tar -x) | $(secs m_rest) | $(secs m_aria) | $(ratio "$(secs m_rest)" "$(secs m_aria)") |
| same, --concurrency 16, s | $(secs m_rest16) | $(secs m_aria) | $(ratio "$(secs m_rest16)" "$(secs m_aria)") |
| paced: $(grep -o 'up to [0-9]* ' m_rest.log | head -1)in flight at $RATE per connection; $(grep -o 'up to [0-9]* ' u_rest.log | head -1)unlimited | | | |
| same data, unlimited: restore paced, s (the fixed default before, --concurrency 8) | $(secs u_rest) | $(secs u_rest8) | $(ratio "$(secs u_rest)" "$(secs u_rest8)") |
| peak RSS: small snapshot / small restore / large restore, MiB | $(rss_mib s_snap) / $(rss_mib s_rest) / $(rss_mib l_rest) | tar\|zstd $(rss_mib s_tar) | |

data: $SMALL_BYTES bytes in $FILES small files; $(json large.json bytes_total) bytes in $(json large.json files) files; $(nproc) cores; qsync $("$Q" --version | cut -d' ' -f2)
REPORT

#!/usr/bin/env bash
# Scale (issue 16): qsync against what an operator would use instead,
# every transfer served by one loopback nginx.
#
#   small files: snapshot  vs tar -c | zstd -T0 -3; objects stored vs bytes / 1 MiB
#                restore   vs curl | zstd -dc | tar -x, each + sync
#                restore into a directory that is already complete
#   large files: restore   vs rclone copy --transfers 16 of the raw files (no verification)
#   limited:     restore   vs aria2c -x16 then zstd -dc | tar -x, nginx limit_rate per connection
#   unlimited:   the paced default vs the old fixed --concurrency 8
#
# Each pair runs $ROUNDS times, alternating which goes first, and the
# report gives median times and the median (and range) of the rounds'
# ratios (qsync / baseline; below 1 is faster): absolute times drift by a
# quarter within minutes on these VMs, so one pair of runs proves little.
# Every restore, qsync's and the baseline's, goes into a freshly made ext4
# (a loop device, when this runs as root): creating files right after tens
# of thousands were deleted costs ext4 seconds of inode-table scanning
# (`recently_deleted`), which would make whichever tool runs second look
# slow. The loop device does direct I/O on its image, so it writes to the
# disk as a disk would; a buffered one caches every byte twice and turns
# each flush into an fsync through a second filesystem.
# Caches are dropped before every timed run. The files a restore reads
# are then read into memory again (BENCH_MIRROR=warm, the default): the
# mirror is another machine, and a cold mirror on this one reads from the
# very disk the restore writes to, so both tools would measure that disk
# (BENCH_MIRROR=cold keeps it cold; docs/benchmarks.md reports both).
# Usage: scripts/bench-scale.sh   (BENCH_ROUNDS=3 BENCH_FILES=50000
#        BENCH_LARGE_MIB=2048 BENCH_LIMITED_MIB=1024 BENCH_RATE=20m
#        BENCH_MIRROR=warm BENCH_DIR=... to change)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh

ROUNDS=${BENCH_ROUNDS:-3}
[ "$ROUNDS" -ge 1 ] || { echo "BENCH_ROUNDS must be at least 1" >&2; exit 2; }
FILES=${BENCH_FILES:-50000}
LARGE_MIB=${BENCH_LARGE_MIB:-2048}
LIMITED_MIB=${BENCH_LIMITED_MIB:-1024}
RATE=${BENCH_RATE:-20m}
MIRROR=${BENCH_MIRROR:-warm}
case $MIRROR in warm | cold) ;; *) echo "BENCH_MIRROR must be warm or cold" >&2; exit 2 ;; esac
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
release() {
  umount "$WORK/mnt" 2>/dev/null || true
  local dev
  for dev in $(losetup -j "$IMG" -n -O NAME 2>/dev/null); do losetup -d "$dev"; done
}
fresh() {
  release
  rm -f "$IMG"
  rm -rf "${WORK:?}/$1"
  local dev
  if truncate -s 12G "$IMG" && mkfs.ext4 -q -F "$IMG" 2>/dev/null &&
    dev=$(losetup -f --show --direct-io=on "$IMG" 2>/dev/null) && mount "$dev" "$WORK/mnt" 2>/dev/null; then
    mkdir -p "$WORK/mnt/$1" && ln -sfn "$WORK/mnt/$1" "$WORK/$1"
  else
    release
    mkdir -p "$WORK/$1"
  fi
}
# mirror PATH...: drops the caches, then reads what the mirror serves
# from PATH back into memory (BENCH_MIRROR=warm).
mirror() {
  drop_caches
  [ "$MIRROR" = cold ] || find "$@" -type f -exec cat {} + >/dev/null
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
trap 'nginx -c "$WORK/nginx/nginx.conf" -s stop 2>/dev/null || true; release' EXIT
URL=http://127.0.0.1:$PORT
# same_tree NAME SOURCE RESTORED: after the first round's restore (NAME.1),
# checks that it restored SOURCE exactly.
same_tree() {
  [ "${1##*.}" = 1 ] || return 0
  diff -r -x '.qsync-restore*' "$2" "$3" >/dev/null || { echo "$1: the restored tree differs from $2" >&2; exit 1; }
}

# Each bench function times one run into the timing name it is given; the
# store a restore reads was published once, before its rounds.
# q_restore NAME.ROUND DIR STORE CHAIN [ARG...]: times a qsync restore from
# $URL/STORE into DIR/d, and sync, its summary and log in NAME.json and NAME.log.
q_restore() {
  local name=${1%.*} timing=$1 dir=$2 store=$3 chain=$4
  shift 4
  timed "$timing" sh -c "RUST_LOG=info '$Q' restore --from $URL/$store --public-key k.pub --chain $chain --dest $dir/d --state-dir $dir/state --json $* >$name.json 2>$name.log && sync"
}
# --- small files ---------------------------------------------------------
echo "generating $FILES small files"
"$Q" sample generate --dir small --small-files "$FILES" >small.json
SMALL_BYTES=$(json small.json bytes_total)
# Each snapshot starts from an empty store (no dedup against the last
# round); the last one is what the restores read.
s_snap() {
  rm -rf pub/small && drop_caches
  timed "$1" "$Q" snapshot --source small --store pub/small --secret-key k.sec --chain small --json >s_snap.json
}
s_tar() {
  rm -f pub/small.tar.zst && drop_caches
  timed "$1" sh -c 'tar -C small -cf - . | zstd -T0 -3 -q -o pub/small.tar.zst'
}
rounds s_snap s_tar
OBJECTS=$(find pub/small/chunks -type f | wc -l)
s_curl() {
  fresh s-curl && mirror pub/small.tar.zst
  timed "$1" sh -c "curl -sf $URL/pub/small.tar.zst | zstd -dc | tar -x -C s-curl/ && sync"
}
# ... and, right after each, the same restore into the complete directory.
s_rest() {
  fresh s-q && mirror pub/small
  q_restore "$1" s-q pub/small small
  same_tree "$1" small s-q/d
  timed "s_again.${1#*.}" "$Q" restore --from "$URL/pub/small" --public-key k.pub --chain small --dest s-q/d --state-dir s-q/state --json >s_again.json
}
rounds s_rest s_curl

# --- large files ---------------------------------------------------------
echo "generating $LARGE_MIB MiB of large files"
"$Q" sample generate --dir pub/large-src --size-mib "$LARGE_MIB" >large.json
"$Q" snapshot --source pub/large-src --store pub/large --secret-key k.sec --chain large --json >l_snap.json
l_rclone() {
  fresh l-rclone && mirror pub/large-src
  timed "$1" sh -c "rclone copy --transfers 16 --http-url $URL/pub/large-src/ :http: l-rclone/ && sync"
}
l_rest() {
  fresh l-q && mirror pub/large
  q_restore "$1" l-q pub/large large
  same_tree "$1" pub/large-src l-q/d
}
rounds l_rest l_rclone
rm -rf pub/large-src

# --- a mirror limited per connection ----------------------------------------
echo "generating $LIMITED_MIB MiB behind $RATE per connection"
"$Q" sample generate --dir lim-src --size-mib "$LIMITED_MIB" --seed 7 >lim.json
"$Q" snapshot --source lim-src --store pub/lim --secret-key k.sec --chain lim --json >m_snap.json
tar -C lim-src -cf - . | zstd -T0 -3 -q -o pub/lim.tar.zst
m_aria() {
  fresh m-aria && mirror pub/lim.tar.zst
  timed "$1" sh -c "aria2c -q -x16 -s16 -k1M -d m-aria -o lim.tar.zst $URL/slow/lim.tar.zst && mkdir -p m-aria/x && zstd -dc m-aria/lim.tar.zst | tar -x -C m-aria/x && sync"
}
m_rest() {
  fresh m-q && mirror pub/lim
  q_restore "$1" m-q slow/lim lim
  same_tree "$1" lim-src m-q/d
}
m_rest16() {
  fresh m-q16 && mirror pub/lim
  q_restore "$1" m-q16 slow/lim lim --concurrency 16
  same_tree "$1.1" lim-src m-q16/d
}
rounds m_rest m_aria
m_rest16 m_rest16
# The same restore from nginx at full speed: the pace must not cost there.
u_rest() {
  fresh u-q && mirror pub/lim
  q_restore "$1" u-q pub/lim lim
  same_tree "$1" lim-src u-q/d
}
u_rest8() {
  fresh u-q8 && mirror pub/lim
  q_restore "$1" u-q8 pub/lim lim --concurrency 8
}
# Each run takes about a second from a warm mirror, which these VMs vary
# by a tenth from run to run: three times the rounds.
U_ROUNDS=$((ROUNDS * 3))
ROUNDS=$U_ROUNDS rounds u_rest u_rest8

cat <<REPORT | tee results.md
$ROUNDS rounds per pair, alternating which runs first; times are medians, ratios the median of the rounds' ratios (range).

| case | qsync | baseline | ratio |
|---|---|---|---|
| $FILES small files: snapshot, s (tar -c \| zstd -T0 -3) | $(msecs s_snap) | $(msecs s_tar) | $(mratio s_snap s_tar) |
| same: objects stored (bytes / 1 MiB + 100) | $OBJECTS | $((SMALL_BYTES / 1048576 + 100)) | $(ratio "$OBJECTS" "$((SMALL_BYTES / 1048576 + 100))") |
| same: restore + sync, s (curl \| zstd -dc \| tar -x + sync) | $(msecs s_rest) | $(msecs s_curl) | $(mratio s_rest s_curl) |
| same: restore into the complete directory, s | $(msecs s_again) | | |
| $LARGE_MIB MiB of large files: restore + sync, s (rclone copy --transfers 16 + sync, unverified) | $(msecs l_rest) | $(msecs l_rclone) | $(mratio l_rest l_rclone) |
| $LIMITED_MIB MiB at $RATE per connection: restore, s (aria2c -x16, zstd -dc \| tar -x) | $(msecs m_rest) | $(msecs m_aria) | $(mratio m_rest m_aria) |
| same, --concurrency 16, one run, s | $(secs m_rest16) | | |
| paced: $(grep -o 'up to [0-9]* ' m_rest.log | head -1)in flight at $RATE per connection; $(grep -o 'up to [0-9]* ' u_rest.log | head -1)unlimited | | | |
| same data, unlimited ($U_ROUNDS rounds): restore paced, s (the fixed default before, --concurrency 8) | $(ROUNDS=$U_ROUNDS msecs u_rest) | $(ROUNDS=$U_ROUNDS msecs u_rest8) | $(ROUNDS=$U_ROUNDS mratio u_rest u_rest8) |
| peak RSS (largest of the rounds): small snapshot / small restore / large restore, MiB | $(mrss s_snap) / $(mrss s_rest) / $(mrss l_rest) | tar\|zstd $(mrss s_tar) | |

mirror: $MIRROR; data: $SMALL_BYTES bytes in $FILES small files; $(json large.json bytes_total) bytes in $(json large.json files) files; $(nproc) cores; qsync $("$Q" --version | cut -d' ' -f2)
REPORT

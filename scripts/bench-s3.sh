#!/usr/bin/env bash
# Publishing to S3: qsync snapshot against `aws s3 cp --recursive` (the AWS
# CLI's defaults: 10 concurrent requests, multipart above 8 MB) of the same
# files to the same local S3 server (s3s-fs, checking SigV4), in one run;
# then bytes uploaded after 5 % of the data changed, against what
# `aws s3 sync` uploads (every changed file, whole).
#
# Prints ratios (qsync / baseline; below 1 is better). Absolute times are not
# comparable between machines or runs; the ratios are the result.
# Usage: BENCH_SIZE_MIB=1024 scripts/bench-s3.sh   (BENCH_DIR to choose the scratch dir)
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE_MIB=${BENCH_SIZE_MIB:-1024}
WORK=${BENCH_DIR:-$PWD/.tmp/bench-s3}
command -v s3s-fs >/dev/null || cargo install --quiet --locked s3s-fs@0.14.1 --features binary
command -v aws >/dev/null || python3 -m pip install --quiet awscli
cargo build --release --locked -q
Q=$PWD/target/release/qsync

rm -rf "$WORK"
mkdir -p "$WORK/s3/bench"
cd "$WORK"
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
s3s-fs --host 127.0.0.1 --port "$PORT" --access-key bench --secret-key bench-secret s3 >s3.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null && break; sleep 0.1; done
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench-secret AWS_REGION=us-east-1 AWS_EC2_METADATA_DISABLED=true
ENDPOINT=http://127.0.0.1:$PORT

secs() { python3 -c 'import sys,time,subprocess; t=time.monotonic(); subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); print(f"{time.monotonic()-t:.2f}")' "$@"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
json() { sed -E "s/.*\"$2\":([0-9]+).*/\1/" "$1"; }

echo "generating ${SIZE_MIB} MiB of chain-like data"
"$Q" sample generate --dir src --size-mib "$SIZE_MIB" >gen.json
"$Q" keygen --secret-key k.sec --public-key k.pub >/dev/null
FILES=$(find src -type f | wc -l)

T_AWS=$(secs aws s3 cp --recursive --quiet --endpoint-url "$ENDPOINT" src s3://bench/awscli)
T_Q=$(secs "$Q" snapshot --source src --store s3://bench/qsync --secret-key k.sec --chain bench \
  --s3-endpoint "$ENDPOINT" --s3-path-style --json)
sync

# 5 % of the data changes the way a syncing node changes it.
"$Q" sample mutate --dir src --percent 5 >/dev/null
CHANGED=$(aws s3 sync --dryrun --endpoint-url "$ENDPOINT" src s3://bench/awscli | grep -c upload || true)
SYNC_BYTES=$(aws s3 sync --dryrun --endpoint-url "$ENDPOINT" src s3://bench/awscli |
  sed -nE 's#.*upload: src/([^ ]+) to .*#src/\1#p' | xargs -r stat -c %s | awk '{ s += $1 } END { print s + 0 }')
"$Q" snapshot --source src --store s3://bench/qsync --secret-key k.sec --chain bench \
  --s3-endpoint "$ENDPOINT" --s3-path-style --json >snap2.json
Q_BYTES=$(json snap2.json bytes_uploaded)

echo
echo "publish ${SIZE_MIB} MiB (${FILES} files) to a local S3 server, one run:"
echo "  qsync snapshot ${T_Q} s, aws s3 cp --recursive ${T_AWS} s: ratio $(ratio "$T_Q" "$T_AWS")"
echo "after 5 % changed (${CHANGED} files touched):"
echo "  qsync uploaded ${Q_BYTES} bytes, aws s3 sync would upload ${SYNC_BYTES}: ratio $(ratio "$Q_BYTES" "$SYNC_BYTES")"

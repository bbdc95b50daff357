#!/usr/bin/env bash
# The agent's freeze and incremental cycles, in one run per size, on
# generated chain-like data (mostly incompressible SST files):
#
#   freeze:       hardlink strategy's freeze   vs  hooks (node stopped for the whole read and upload)
#   incremental:  a cycle after 5 % changed    vs  the first cycle (time, and bytes uploaded vs bytes changed)
#
# Both strategies run the same hooks (`true`), so the freeze time is qsync's
# own work while frozen. Prints ratios; absolute times are not comparable
# between machines or runs.
# Usage: BENCH_SIZES="1024 4096" scripts/bench-agent.sh   (BENCH_DIR for the scratch dir)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/bench-lib.sh

SIZES=${BENCH_SIZES:-"1024 4096"}
WORK=${BENCH_DIR:-$PWD/.tmp/bench-agent}
cargo build --release --locked -q
Q=$PWD/target/release/qsync
field() { python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d$2)" "$1"; }
# Three decimals: the agent's ratios are often near zero.
ratio3() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }

config() { # NAME STRATEGY
  cat >"$1.toml" <<EOF
[agent]
state-dir = "$WORK/state-$1"
[[chain]]
name = "bench"
source = "$WORK/src"
schedule = "0 0 0 * * *"
secret-key = "$WORK/k.sec"
stores = ["$WORK/store-$1"]
[chain.freeze]
strategy = "$2"
pre = ["true"]
post = ["true"]
# The sample's ancient/*.cdat segments are written once, like rolled-over
# freezer segments (src/sample.rs); SSTs are never modified in place.
immutable = ["*.sst", "*.cdat"]
[chain.retention]
gc = false
EOF
}
cycle() { "$Q" snapshot --once --json --chain bench --config "$1.toml" >"$2.json"; }

printf "%-8s %-12s %-12s %-14s %-14s %-10s %-10s %-12s\n" size_mib hooks_frz_s hardlink_frz_s frz_ratio s_per_100GB immut_GiB incr_ratio bytes_ratio
for SIZE in $SIZES; do
  rm -rf "$WORK"
  mkdir -p "$WORK"
  cd "$WORK"
  "$Q" sample generate --dir src --size-mib "$SIZE" >gen.json
  "$Q" keygen --secret-key k.sec --public-key k.pub >/dev/null
  IMMUTABLE=$(find src \( -name '*.sst' -o -name '*.cdat' \) -printf '%s\n' | awk '{ s += $1 } END { print s }')
  config hooks hooks
  config hardlink hardlink
  drop_caches
  cycle hooks hooks1
  drop_caches
  cycle hardlink first
  # 5 % changed, as a syncing node changes it between cycles.
  "$Q" sample mutate --dir src --percent 5 >mutate.json
  drop_caches
  cycle hardlink second
  HF=$(field hooks1.json "['freeze_seconds']")
  LF=$(field first.json "['freeze_seconds']")
  T1=$(field first.json "['duration_seconds']")
  T2=$(field second.json "['duration_seconds']")
  CHANGED=$(field mutate.json "['bytes_changed']")
  NEW=$(field second.json "['bytes_new']")
  PER100=$(awk -v f="$LF" -v b="$IMMUTABLE" 'BEGIN { printf "%.2f", f / (b / 1e9) * 100 }')
  printf "%-8s %-12.3f %-12.3f %-14s %-14s %-10.2f %-10s %-12s\n" "$SIZE" "$HF" "$LF" "$(ratio3 "$LF" "$HF")" "$PER100" \
    "$(awk -v b="$IMMUTABLE" 'BEGIN { print b / 2^30 }')" "$(ratio3 "$T2" "$T1")" "$(ratio3 "$NEW" "$CHANGED")"
  echo "  first cycle ${T1}s, incremental ${T2}s ($(field second.json "['files_unchanged']") files unchanged, not read); uploaded ${NEW} new bytes for ${CHANGED} changed" >&2
  cd - >/dev/null
done
rm -rf "$WORK"

#!/usr/bin/env bash
# Builds every cargo-fuzz target in fuzz/ (one build, shared deps) and runs
# each for FUZZ_SECONDS (default 3) from its seed corpus, printing how many
# inputs each ran. Exits non-zero if any target crashes, hangs or runs out
# of memory, after printing the reproducer libFuzzer saved and the command
# that replays it. Needs the nightly toolchain and cargo-fuzz
# (`cargo install --locked cargo-fuzz`); scripts/test.sh installs it.
#
#   scripts/fuzz.sh                      all targets, 3 s each
#   FUZZ_SECONDS=60 scripts/fuzz.sh chunk manifest
#
# Inputs libFuzzer finds are kept in fuzz/target/corpus/<target> (ignored by
# git, so later local runs start from them); fuzz/corpus/<target> holds only
# the committed seeds, and is never written to.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds=${FUZZ_SECONDS:-3}
mapfile -t all < <(sed -n 's/^name = "\(.*\)"$/\1/p' Cargo.toml | grep -v '^qsync-fuzz$')
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${all[@]}")

# The range target checks the Range parsing `qsync serve` runs; it is only
# worth anything while it fuzzes the version the server is built with.
lock_version() { grep -A1 '^name = "http-range-header"$' "$1" | sed -n 's/^version = "\(.*\)"$/\1/p'; }
served=$(lock_version ../Cargo.lock)
fuzzed=$(lock_version Cargo.lock)
if [ "$served" != "$fuzzed" ]; then
  echo "fuzz: http-range-header is $served in Cargo.lock but $fuzzed in fuzz/Cargo.lock;" \
    "update the pin in fuzz/Cargo.toml and run 'cargo update -p http-range-header' in fuzz/" >&2
  exit 1
fi

# No sanitizer: the code under test is safe Rust (the workspace forbids
# unsafe) plus zstd's C, which cargo-fuzz does not instrument anyway; ASan
# would only slow the build and each run. Debug assertions and overflow
# checks stay on (cargo-fuzz's default), so arithmetic overflow is a crash.
started=$SECONDS
cargo +nightly fuzz build --sanitizer none
echo "fuzz: built ${#all[@]} targets in $((SECONDS - started)) s"

bin=target/x86_64-unknown-linux-gnu/release
failed=()
for t in "${targets[@]}"; do
  [ -x "$bin/$t" ] || { echo "fuzz: no target $t (have: ${all[*]})" >&2; exit 2; }
  mkdir -p "target/corpus/$t" "artifacts/$t"
  log="target/fuzz-$t.log"
  status=0
  # -timeout: an input running 10 s is a hang (the default is 20 minutes).
  # -rss_limit_mb: bounded decoders must stay far below this.
  "$bin/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 \
    -print_final_stats=1 -artifact_prefix="artifacts/$t/" \
    "target/corpus/$t" "corpus/$t" >"$log" 2>&1 || status=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  if [ "$status" = 0 ]; then
    echo "fuzz $t: ${execs:-?} executions in $seconds s, no crash"
  else
    tail -n 60 "$log" >&2
    repro=$(sed -n "s/.*Test unit written to \(.*\)$/\1/p" "$log" | tail -1)
    echo "fuzz $t: FAILED (exit $status) after ${execs:-?} executions; reproducer: fuzz/${repro:-?}" >&2
    echo "  replay: cd fuzz && cargo +nightly fuzz run --sanitizer none $t ${repro:-<input>}" >&2
    failed+=("$t")
  fi
done
echo "fuzz: ${#targets[@]} targets in $((SECONDS - started)) s including the build"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: ${#failed[@]} target(s) failed: ${failed[*]}" >&2
  exit 1
fi

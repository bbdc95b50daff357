#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the external tools the
# tests check qsync against (minisign, b3sum, zstd, curl from Debian), then
# runs format and lint checks and every unit and end-to-end test.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for tool in minisign b3sum zstd curl; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  echo "installing ${missing[*]} (apt-get)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# The machine image ships both; rustup's own server is not reachable from CI.
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked 2>&1 | tee "$log" || status=$?
# cargo's last "test result" line belongs to whichever crate ran last (often
# doc-tests with nothing in them), so close with the totals of every target.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"

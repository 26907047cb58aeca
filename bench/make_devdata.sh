#!/usr/bin/env bash
# Fill .devdata/ (git-ignored) with what bench/gpu_check.sh needs on the GPU machine: the real MobileNetV2
# ImageNet weight file and ants vs bees, copied from ../shared/data (copies: links out of the repo do not travel).
# Run on the development machine: `bash bench/make_devdata.sh`. Checks that the travelling tree stays under 64 MiB.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SHARED="${SHARED_DATA:-$ROOT/../shared/data}"
DEST="$ROOT/.devdata"
WEIGHT=mobilenet_v2_qnnpack_dequantized-93d7100e.pth
LIMIT=$((64 * 1024 * 1024))

for need in "$SHARED/weights/$WEIGHT" "$SHARED/datasets/hymenoptera_data/train" "$SHARED/datasets/hymenoptera_data/val"; do
  [ -e "$need" ] || { echo "error: $need not found (set SHARED_DATA to the shared data folder)" >&2; exit 1; }
done
mkdir -p "$DEST/weights"
cp -f "$SHARED/weights/$WEIGHT" "$DEST/weights/$WEIGHT"
rm -rf "$DEST/hymenoptera_data"
cp -r "$SHARED/datasets/hymenoptera_data" "$DEST/hymenoptera_data"
chmod -R u+w "$DEST"  # the shared copies are read-only; ours must be removable
echo "93d7100e9fc8dd152eb826ab7dfe35dda6988e35808d49cb39f69c615a01b3db  $DEST/weights/$WEIGHT" | sha256sum -c --quiet
git -C "$ROOT" check-ignore -q "$DEST" || { echo "error: .devdata/ is not git-ignored" >&2; exit 1; }

# What travels: tracked and untracked-but-not-ignored files, plus .devdata (carried explicitly).
cd "$ROOT"
tree_bytes=$(git ls-files -z -co --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null | awk '{s += $1} END {print s + 0}')
data_bytes=$(find .devdata -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
total=$((tree_bytes + data_bytes))
awk -v d="$data_bytes" -v t="$tree_bytes" -v n="$(find .devdata -type f | wc -l)" 'BEGIN {
  printf ".devdata: %d files, %.1f MiB; working tree: %.1f MiB; total %.1f MiB (limit 64 MiB)\n", n, d / 2^20, t / 2^20, (d + t) / 2^20 }'
[ "$total" -lt "$LIMIT" ] || { echo "error: over 64 MiB; it would not travel" >&2; exit 1; }

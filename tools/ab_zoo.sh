#!/usr/bin/env bash
# A/B of nbnet's speed between a commit and the working tree, alternating, on
# tools/bench_zoo.py's architectures: training ms a step at batch 32 and 128, predict
# images/s at batch 1000, one image us. Whole-table benchmark runs move 10-20 % with a
# shared VM's state; alternating the two sides, round after round, keeps both in the
# same state.
#
#   bash tools/ab_zoo.sh BASE NETS [ROUNDS]
#   bash tools/ab_zoo.sh HEAD~3 kaggle_bn,cifar_bn 2
#
# BASE is checked out as a git worktree in a temporary folder (removed after); the
# working tree is side B. Run from the repository root with the project's virtualenv in
# .venv. Each side compiles into its own Numba cache (the first round includes no
# compile: bench_zoo warms up first).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: bash tools/ab_zoo.sh BASE NETS [ROUNDS]" >&2
  exit 2
fi
base=$1
nets=$2
rounds=${3:-2}
root=$(git rev-parse --show-toplevel)
python=${PYTHON:-$root/.venv/bin/python}
side_a=$(mktemp -d)
trap 'git -C "$root" worktree remove --force "$side_a" >/dev/null 2>&1 || rm -rf "$side_a"' EXIT
git -C "$root" worktree add -f --detach "$side_a" "$base" -q
for round in $(seq "$rounds"); do
  for side in A B; do
    if [ "$side" = A ]; then folder=$side_a; else folder=$root; fi
    (cd "$folder" && PYTHONPATH=$folder "$python" tools/bench_zoo.py --nbnet-worker --only "$nets" --steps 20 \
      2>/dev/null | "$python" -c "
import json, sys
results = json.loads(sys.stdin.read().strip().splitlines()[-1])
print('round $round $side', ' | '.join(
    f\"{name}: b32 {r['train_ms_b32']:.2f} b128 {r['train_ms_b128']:.2f} ms, predict {r['infer_images_per_s_b1000']:.0f}/s, \"
    f\"one {r['infer_ms_b1'] * 1000:.0f} us\" for name, r in results.items()))")
  done
done

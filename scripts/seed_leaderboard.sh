#!/usr/bin/env bash
# Remake the leaderboard's seed entries: every method's quick profile on each
# current published split, CPU latency, one submission each, then the
# generated files. Needs data/<split> for each split in SPLITS (impeller-bench
# download + build-split, see README). About an hour for impeller-v2-native on
# a 2-core CPU without AMX (EfficientAD's quick profile takes most of it).
# SKIP_RUNS=1 reuses runs/ as it is; METHODS="ours efficientad" remakes only those.
# Latency times each method's quick-profile model, the one its run trained.
# The deprecated impeller-v1 entries are kept as they were made (see git log).
set -euo pipefail
cd "$(dirname "$0")/.."
METHODS=${METHODS:-"ours efficientad patchcore padim spade patchsvdd ast"}
SPLITS=${SPLITS:-"impeller-v2-native"}
HARDWARE=${HARDWARE:-"2-core x86-64 CPU (AMD EPYC, avx512_bf16, no AMX), 23 GB RAM, no GPU"}
CODE="impeller-bench repository, commit $(git rev-parse --short HEAD)"

notes_for() {
  case "$1" in
    ours|efficientad) echo "quick CPU profile: frozen EfficientNet-Lite0 feature teacher (ImageNet, offline; the paper distils a PDN from WideResNet-101 on ImageNet), 500 steps of 4 at 128 px, half-width student, 8 cached views per image; not the paper's recipe (70,000 steps)" ;;
    patchcore) echo "quick profile: EfficientNet-Lite0 stage3+stage5, 3x3 aggregation, 10% greedy coreset" ;;
    padim) echo "EfficientNet-Lite0 stage2+3+5, 100 random channels" ;;
    spade) echo "EfficientNet-Lite0 features, k = 50 nearest training images" ;;
    patchsvdd) echo "quick CPU profile: 500 steps of 16, stride-8 grid; far from the paper's training" ;;
    ast) echo "quick CPU profile: EfficientNet-Lite2 at 512 px standing in for EfficientNet-B5, 300 steps per network, 128-channel student" ;;
  esac
}

if [ -z "${SKIP_RUNS:-}" ]; then
  for split in $SPLITS; do
    for method in $METHODS; do
      impeller-bench run "$method" --dataset "data/$split" --out "runs/$split/$method" --overwrite
    done
  done
  impeller-bench latency $METHODS --runs 10 --warmup 2 --device cpu --profile quick --json runs/latency.json --plot runs/latency.png
fi
for split in $SPLITS; do
  for method in $METHODS; do
    impeller-bench leaderboard submit "runs/$split/$method" --name "$method-quick-${split#impeller-}" --overwrite \
      --dataset "data/$split" --command "impeller-bench run $method --dataset data/$split" \
      --author "impeller-bench maintainers" --code "$CODE" \
      --hardware "$HARDWARE" --latency runs/latency.json --notes "$(notes_for "$method")"
  done
done
impeller-bench leaderboard validate
impeller-bench leaderboard build

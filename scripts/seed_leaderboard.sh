#!/usr/bin/env bash
# Remake the leaderboard's seed entries: every method's quick profile on each
# current published split (ours and efficientad with SEEDS, the others seed 0),
# CPU latency, one submission per run, then the generated files. Needs
# data/<split> for each split in SPLITS (impeller-bench download + build-split,
# see README). A run whose predictions exist is kept (delete runs/<split>/<run>
# to redo it), so a stopped script resumes where it stopped.
# Measured on a 2-core AMD EPYC (no AMX): impeller-v2-native about an hour,
# impeller-v2-localization and mtd: see the README's tracks section.
# SKIP_RUNS=1 reuses runs/ as it is; METHODS="ours efficientad" remakes only those.
# Latency times each method's quick-profile model, the one its run trained.
# The deprecated impeller-v1 entries, and the ablation entries of ours and efficientad with the
# student-teacher map alone ("-quick-local-", made before the combined map became the default; each
# entry's command reruns it), are kept as they were made (see git log).
set -euo pipefail
cd "$(dirname "$0")/.."
METHODS=${METHODS:-"ours efficientad patchcore padim spade patchsvdd ast"}
SPLITS=${SPLITS:-"impeller-v2-native impeller-v2-localization mtd"}
SEEDS=${SEEDS:-"0 1 2"}  # for ours and efficientad; the other methods run seed 0
HARDWARE=${HARDWARE:-"2-core x86-64 CPU (AMD EPYC, avx512_bf16, no AMX), 23 GB RAM, no GPU"}
CODE="impeller-bench repository, commit $(git rev-parse --short HEAD)"

notes_for() {
  case "$1" in
    ours|efficientad) echo "quick CPU profile: frozen EfficientNet-Lite2 feature teacher (ImageNet, offline; the paper distils a PDN from WideResNet-101 on ImageNet), 128 px, half-width student, 8 cached views per image (at most 2,048 in all), early stopping on held-out normals (at most 2,000 steps of 4), the published combined map (student-teacher and autoencoder); not the paper's recipe (70,000 steps)" ;;
    patchcore) echo "quick profile: EfficientNet-Lite0 stage3+stage5, 3x3 aggregation, 10% greedy coreset, at most 16,384 patches" ;;
    padim) echo "EfficientNet-Lite0 stage2+3+5, 100 random channels" ;;
    spade) echo "EfficientNet-Lite0 features, k = 50 nearest training images" ;;
    patchsvdd) echo "quick CPU profile: 500 steps of 16, stride-8 grid; far from the paper's training" ;;
    ast) echo "quick CPU profile: EfficientNet-Lite2 at 512 px standing in for EfficientNet-B5, 300 steps per network, 128-channel student" ;;
  esac
}

seeds_for() {
  case "$1" in ours|efficientad) echo "$SEEDS" ;; *) echo 0 ;; esac
}

run_name() {  # method seed -> the run's folder: seed 0 keeps the plain name
  if [ "$2" = 0 ]; then echo "$1"; else echo "$1-seed$2"; fi
}

entry_name() {  # method split seed -> e.g. ours-quick-mtd, ours-quick-mtd-seed1
  if [ "$3" = 0 ]; then echo "$1-quick-${2#impeller-}"; else echo "$1-quick-${2#impeller-}-seed$3"; fi
}

if [ -z "${SKIP_RUNS:-}" ]; then
  for split in $SPLITS; do
    for method in $METHODS; do
      for seed in $(seeds_for "$method"); do
        out="runs/$split/$(run_name "$method" "$seed")"
        if [ -f "$out/meta.json" ]; then echo "kept $out"; continue; fi
        /usr/bin/time -f "$out: %e s wall" impeller-bench run "$method" --dataset "data/$split" --seed "$seed" \
          --out "$out" --overwrite
      done
    done
  done
  impeller-bench latency $METHODS --runs 10 --warmup 2 --device cpu --profile quick --json runs/latency.json --plot runs/latency.png
fi
for split in $SPLITS; do
  for method in $METHODS; do
    for seed in $(seeds_for "$method"); do
      seed_option=$([ "$seed" = 0 ] && echo "" || echo " --seed $seed")
      impeller-bench leaderboard submit "runs/$split/$(run_name "$method" "$seed")" \
        --name "$(entry_name "$method" "$split" "$seed")" --overwrite \
        --dataset "data/$split" --command "impeller-bench run $method --dataset data/$split$seed_option" \
        --author "impeller-bench maintainers" --code "$CODE" \
        --hardware "$HARDWARE" --latency runs/latency.json --notes "$(notes_for "$method")"
    done
  done
done
impeller-bench leaderboard validate
impeller-bench leaderboard build

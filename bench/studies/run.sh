#!/usr/bin/env bash
# The studies of docs/studies/, as they were run: SmolLM2-135M on E2E, one study per `prefixtune sweep`.
# Usage (with the venv active): bench/studies/run.sh [OUT] [STUDY...]
# OUT defaults to docs/studies; the studies are length, kind, reparam and init (default: all). Every sweep is resumable: rerun the same line after an interruption. A sweep keeps its
# per-run checkpoints under OUT/<study>/runs/ (about 100 MB a run); only the tables and plots are committed.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-docs/studies}
shift || true
studies=${*:-length kind reparam init}
data=../shared/data/e2e
command -v prefixtune >/dev/null || { echo "prefixtune is not on PATH: run . .venv/bin/activate first" >&2; exit 2; }
[ -f "$data/trainset.csv" ] || { echo "no $data/trainset.csv: the studies need ../shared beside the checkout" >&2; exit 2; }
common=(--train "$data/trainset.csv" --dev "$data/devset.csv" --eval-sources 40 --max-new-tokens 60 --quiet)

for study in $studies; do
  case $study in
    length)  # 1. prefix length
      prefixtune sweep "${common[@]}" --output "$out/length" --steps 150 --eval-every 75 \
        --grid length=1,5,10,20,40 ;;
    kind)  # 2. prefix in every layer vs embedding-only (prompt tuning) vs infix, at two lengths
      prefixtune sweep "${common[@]}" --output "$out/kind" --steps 150 --eval-every 75 \
        --grid kind=prefix,embedding,infix --grid length=10,20 ;;
    reparam)  # 3. MLP reparametrisation vs the flat prefix, three seeds
      prefixtune sweep "${common[@]}" --output "$out/reparam" --steps 150 --eval-every 75 \
        --grid reparam=mlp,flat --grid seed=0,1,2
      # the flat prefix at its own learning rates (the MLP's 1e-3 is slow for it)
      prefixtune sweep "${common[@]}" --output "$out/reparam-flat-lr" --steps 150 --eval-every 75 \
        --reparam flat --grid lr=0.003,0.01,0.03 ;;
    init)  # 4. low data: a task phrase vs unrelated words vs random, three seeds (each draws its own subset)
      low=(--steps 100 --eval-every 100 --length 10 --grid max_train_examples=50,100,200,500 --grid seed=0,1,2)
      prefixtune sweep "${common[@]}" --output "$out/init-text" --init text \
        --grid "init_text=table-to-text:|elephant banana:" "${low[@]}"
      prefixtune sweep "${common[@]}" --output "$out/init-random" --init random "${low[@]}"
      python bench/studies/merge_init.py "$out/init-text" "$out/init-random" "$out/init" ;;
    *) echo "unknown study $study: choose from length kind reparam init" >&2; exit 2 ;;
  esac
done

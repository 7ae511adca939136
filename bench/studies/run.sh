#!/usr/bin/env bash
# The studies of docs/studies/, as they were run: SmolLM2-135M on E2E, one study per `prefixtune sweep`.
# Usage (with the venv active): bench/studies/run.sh [OUT] [STUDY...]
# OUT defaults to docs/studies. The paper's ablations: length, kind, reparam, init (the default: these
# four). Its headline against fine-tuning and LoRA (issue 20): full, lowdata, unseen, prompting, cost;
# and two more seeds for the length and kind studies: length-seeds, then kind-seeds (which reuses
# length-seeds' prefixes). Every sweep is resumable: rerun the same line after an interruption. A sweep keeps its per-run checkpoints under OUT/<study>/runs/ (about 100 MB a
# prefix run, 2 GB a fine-tuning run); only the tables and plots are committed.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-docs/studies}
shift || true
studies=${*:-length kind reparam init}
data=../shared/data/e2e
webnlg=../shared/data/webnlg2017
heldout=City,Monument,University  # WebNLG categories the unseen-topics study never trains on
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
    full)  # 6. full data: prefix vs fine-tuning vs LoRA at equal steps, each at its own default lr;
      # then the whole dev set (547 sources) with 5 beams and the five E2E metrics
      prefixtune sweep "${common[@]}" --output "$out/full" --steps 2000 --eval-every 500 \
        --checkpoint-every 100 --grid method=prefix,finetune,lora
      python bench/studies/score_runs.py "$out/full" --label dev-full --data "$data/devset.csv" --num-beams 5
      python bench/studies/plot_scores.py "$out/full" dev-full
      r=$out/full/runs  # the prefix against each baseline, resampling the 547 sources
      python bench/studies/paired.py "$r/method=prefix/dev-full.json" "$r/method=finetune/dev-full.json" \
        "$r/method=prefix/dev-full.json" "$r/method=lora/dev-full.json" --json "$out/full/paired.json" ;;
    lowdata)  # 7. low data: fine-tuning on the init study's subsets, beside its table-to-text: prefixes
      prefixtune sweep "${common[@]}" --output "$out/lowdata-finetune" --method finetune --lr 5e-5 \
        --checkpoint-every 100 --steps 100 --eval-every 100 --grid max_train_examples=50,100,200,500 --grid seed=0,1,2
      python bench/studies/merge_methods.py "$out/init-text" "$out/lowdata-finetune" "$out/lowdata" \
        --only "init_text=table-to-text:" --axes method,max_train_examples,seed ;;
    unseen)  # 8. unseen topics: WebNLG without three categories, scored on those and on the rest
      prefixtune sweep --train "$webnlg/train.json" --dev "$webnlg/dev.json" --exclude-categories "$heldout" \
        --eval-sources 40 --max-new-tokens 60 --quiet --output "$out/unseen" --steps 1000 --eval-every 500 \
        --checkpoint-every 100 --grid method=prefix,finetune
      for part in "--categories unseen" "--exclude-categories seen"; do
        set -- $part
        python bench/studies/score_runs.py "$out/unseen" --label "$2" --data "$webnlg/dev.json" "$1" "$heldout" \
          --metrics BLEU,METEOR,TER --num-beams 1 --max-new-tokens 60
      done
      python bench/studies/plot_scores.py "$out/unseen" seen unseen ;;
    prompting)  # 9. discrete prompting: the frozen model alone, with a written instruction, then with 3 examples too
      mkdir -p "$out/prompting"
      ask="Describe the restaurant in one sentence, using all of its attributes."
      prompt=(evaluate --no-prefix --data "$data/devset.csv" --max-sources 40 --num-beams 1 --max-new-tokens 60)
      [ -f "$out/prompting/bare.json" ] || prefixtune "${prompt[@]}" --output "$out/prompting/bare.json"
      [ -f "$out/prompting/instruction.json" ] || prefixtune "${prompt[@]}" --instruction "$ask" \
        --output "$out/prompting/instruction.json"
      [ -f "$out/prompting/few-shot.json" ] || prefixtune "${prompt[@]}" --instruction "$ask" --shots 3 \
        --shots-from "$data/trainset.csv" --output "$out/prompting/few-shot.json"
      p=$out/prompting  # how much of each step the choice of 40 sources could make
      python bench/studies/paired.py "$p/instruction.json" "$p/bare.json" "$p/few-shot.json" "$p/instruction.json" \
        "$p/few-shot.json" "$p/bare.json" --json "$p/paired.json"
      kind=$out/kind-3seeds  # the trained rungs: three seeds once kind-seeds has run
      [ -f "$kind/results.json" ] || kind=$out/kind
      python bench/studies/ladder.py "$p" "$kind" ;;
    cost)  # 10. inference time against prefix length, batch 1 and 16
      python bench/studies/inference_cost.py "$out/inference-cost" ;;
    length-seeds)  # the length study again with seeds 1 and 2, merged with its seed 0
      prefixtune sweep "${common[@]}" --output "$out/length-seeds" --steps 150 --eval-every 75 --lr 0.001 \
        --grid length=1,5,10,20,40 --grid seed=1,2
      python bench/studies/merge_methods.py "$out/length" "$out/length-seeds" "$out/length-3seeds" \
        --axes length,seed ;;
    kind-seeds)  # the kind study again with seeds 1 and 2 (its prefix rows are length-seeds' runs), merged
      prefixtune sweep "${common[@]}" --output "$out/kind-seeds" --steps 150 --eval-every 75 --lr 0.001 \
        --grid kind=embedding,infix --grid length=10,20 --grid seed=1,2
      python bench/studies/merge_methods.py "$out/kind" "$out/kind-seeds" "$out/length-seeds" "$out/kind-3seeds" \
        --only length=10,20 --axes kind,length,seed ;;
    *) echo "unknown study $study: choose from length kind reparam init full lowdata unseen prompting cost" \
         "length-seeds kind-seeds" >&2
       exit 2 ;;
  esac
done

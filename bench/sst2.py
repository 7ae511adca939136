"""SST-2 dev accuracy on all-MiniLM-L6-v2: prefixtune (P-Tuning v2) vs PEFT prefix tuning vs full fine-tuning.

Three peers, each on its own copy of MiniLM-L6 loaded as `BertForSequenceClassification` (2 labels,
sdpa, fp32, CPU), trained for the same steps on the same batches in the same order (seed fixed):

- `prefixtune`: `add_prefix(model, PrefixConfig(length=16, reparam="flat", init="random"))` plus
  `train_head(model, pooling="mean")`: a flat prefix in all 6 layers and the linear head trained, the
  encoder frozen, the head reading the mean of the tokens (`prefixtune train --task classify`'s
  defaults).
- `prefixtune_dropout_off`: the same with the frozen model's dropout off while training
  (`--dropout off`).
- `prefixtune_first`: the head on the first token (`pooling="first"`), as PEFT's and P-Tuning v2's
  heads read it, and dropout on, as they train: equal settings with `peft`.
- `peft`: `get_peft_model(model, PrefixTuningConfig(task_type=SEQ_CLS, num_virtual_tokens=16))`: the
  same number of prefix vectors, no projection, the head trained (PEFT's `modules_to_save`).
- `full`: every weight trained (the usual fine-tuning recipe, lr 5e-5).

The prefix peers use AdamW at `--prefix-lr` (default 3e-2); all peers use
6 % linear warmup then linear decay, gradient clipping at 1.0, train mode, batch 32,
texts truncated at 64 tokens. Peers take their steps in turn (the first peer rotates every step), so
machine noise hits them alike. Dev accuracy (all 872 GLUE dev sentences) is measured every
`--eval-every` steps and at the end (not before training, to save CPU). Reported: accuracy at
the end (equal steps) and the best seen,
trainable parameters, median step time and step-time ratios (median of per-step paired ratios).

    python bench/sst2.py --steps 1000 --out bench/results/sst2.json
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"
PEERS = ("prefixtune", "prefixtune_dropout_off", "prefixtune_first", "peft", "full")
_START = time.perf_counter()


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _START:7.1f}s] {message}", file=sys.stderr, flush=True)


def read_tsv(path: Path) -> tuple[list[str], list[int]]:
    with open(path, encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence"].strip() for r in rows], [int(r["label"]) for r in rows]


def build_peers(
    names: list[str], length: int, seed: int, prefix_lr: float
) -> dict[str, tuple[torch.nn.Module, list[torch.nn.Parameter], float]]:
    """Each peer: (model to call, trainable parameters, learning rate)."""
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    from prefixtune import PrefixConfig, add_prefix, load_base
    from prefixtune.train.heads import train_head

    torch.manual_seed(seed)
    # every peer is a copy of this one model: the same freshly initialised head for all three
    base, _ = load_base("minilm-l6", task="sequence-classification", num_labels=2)
    peers = {}
    for name, pooling in (
        ("prefixtune", "mean"),
        ("prefixtune_dropout_off", "mean"),
        ("prefixtune_first", "first"),
    ):
        if name in names:
            model = add_prefix(copy.deepcopy(base), PrefixConfig(length=length, reparam="flat", seed=seed))
            train_head(model, reset=False, pooling=pooling)
            params = model.prefix_parameters()  # the prefix, then the head (trainable since add_prefix)
            peers[name] = (model, params, prefix_lr)
    if "peft" in names:
        peft_model = get_peft_model(
            copy.deepcopy(base), PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=length)
        )
        peers["peft"] = (peft_model, [p for p in peft_model.parameters() if p.requires_grad], prefix_lr)
    if "full" in names:
        full = copy.deepcopy(base)
        full.requires_grad_(True)
        peers["full"] = (full, list(full.parameters()), 5e-5)
    return peers


@torch.no_grad()
def accuracy(model, batches: list[dict[str, torch.Tensor]], labels: torch.Tensor) -> float:
    model.eval()
    predicted = torch.cat([model(**b).logits.argmax(-1) for b in batches])
    model.train()
    return (predicted == labels).float().mean().item()


def schedule(step: int, total: int, warmup: int) -> float:
    return (step + 1) / warmup if step < warmup else max(0.0, (total - step) / max(1, total - warmup))


def run(args: argparse.Namespace) -> dict:
    from prefixtune.loading import load_base
    from prefixtune.train.dropout import dropout_off

    torch.manual_seed(args.seed)
    _, tokenizer = load_base("minilm-l6", task="sequence-classification")
    texts, labels = read_tsv(DATA / "train.tsv")
    dev_texts, dev_labels = read_tsv(DATA / "dev.tsv")
    order = list(range(len(texts)))
    random.Random(args.seed).shuffle(order)

    def encode(chunk: list[str]) -> dict[str, torch.Tensor]:
        return dict(tokenizer(chunk, padding=True, truncation=True, max_length=64, return_tensors="pt"))

    batches = []
    for step in range(args.steps):
        rows = [order[(step * args.batch_size + i) % len(order)] for i in range(args.batch_size)]
        batches.append((encode([texts[i] for i in rows]), torch.tensor([labels[i] for i in rows])))
    dev = [encode(dev_texts[i : i + 128]) for i in range(0, len(dev_texts), 128)]
    dev_gold = torch.tensor(dev_labels)
    names = args.peers
    peers = build_peers(names, args.length, args.seed, args.prefix_lr)
    optimizers, schedulers, times, curves = {}, {}, {p: [] for p in names}, {p: [] for p in names}
    warmup = max(1, round(0.06 * args.steps))
    for name, (model, params, lr) in peers.items():
        model.train()
        optimizers[name] = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
        schedulers[name] = torch.optim.lr_scheduler.LambdaLR(
            optimizers[name], lambda s: schedule(s, args.steps, warmup)
        )
    log(f"training {', '.join(names)} for {args.steps} steps of {args.batch_size}")
    with contextlib.ExitStack() as quiet:
        if "prefixtune_dropout_off" in peers:
            quiet.enter_context(dropout_off(peers["prefixtune_dropout_off"][0]))
        train_in_turns(args, peers, batches, (dev, dev_gold), optimizers, schedulers, times, curves)
    return summarise(args, peers, times, curves)


def train_in_turns(args, peers, batches, dev_set, optimizers, schedulers, times, curves) -> None:
    """Every peer steps on each batch in turn; dev accuracy every `--eval-every` steps."""
    names = args.peers
    for step, (batch, gold) in enumerate(batches, start=1):
        turn = names[step % len(names) :] + names[: step % len(names)]
        for name in turn:
            model, params, _ = peers[name]
            start = time.perf_counter()
            loss = model(**batch, labels=gold).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizers[name].step()
            schedulers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            times[name].append(time.perf_counter() - start)
        if step % args.eval_every == 0 or step == args.steps:
            for name in names:
                curves[name].append((step, accuracy(peers[name][0], *dev_set)))
            log(f"step {step}: " + ", ".join(f"{p} {curves[p][-1][1]:.4f}" for p in names))
            partial = {**summarise(args, peers, times, curves), "completed_steps": step}
            # a run cut short keeps what it measured
            args.out.write_text(json.dumps(partial, indent=2) + "\n", encoding="utf-8")


def summarise(args, peers, times, curves) -> dict:
    skip = min(5, args.steps - 1)  # the first steps warm caches up
    result = {
        "command": "python bench/sst2.py " + " ".join(sys.argv[1:]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "peers": {},
        "ratios": {},
    }
    for name in args.peers:
        _, params, lr = peers[name]
        result["peers"][name] = {
            "lr": lr,
            "trainable_parameters": sum(p.numel() for p in params),
            "dev_accuracy_final": curves[name][-1][1],
            "dev_accuracy_best": max(a for _, a in curves[name]),
            "curve": curves[name],
            "median_step_s": statistics.median(times[name][skip:]),
        }
    pairs = (
        ("prefixtune", "peft"),
        ("prefixtune_first", "peft"),
        ("prefixtune", "prefixtune_first"),
        ("prefixtune_dropout_off", "prefixtune"),
        ("prefixtune_dropout_off", "peft"),
        ("prefixtune", "full"),
        ("peft", "full"),
    )
    for a, b in pairs:
        if a not in peers or b not in peers:
            continue
        paired = [x / y for x, y in zip(times[a][skip:], times[b][skip:], strict=True)]
        result["ratios"][f"{a}/{b}"] = statistics.median(paired)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=16, help="prefix vectors per layer (both prefix peers)")
    parser.add_argument("--prefix-lr", type=float, default=3e-2, help="AdamW peak lr of the prefix peers")
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated subset of {PEERS}")
    parser.add_argument("--eval-every", type=int, default=250)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/sst2.json"))
    args = parser.parse_args()
    args.peers = [p for p in args.peers.split(",") if p]
    unknown = sorted(set(args.peers) - set(PEERS))
    if unknown or not args.peers:
        parser.error(f"--peers takes names from {', '.join(PEERS)}; got {', '.join(unknown) or 'none'}")
    if not (DATA / "train.tsv").is_file():
        parser.error(f"no {DATA / 'train.tsv'}: this benchmark needs ../shared beside the checkout")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = run(args)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for name, peer in result["peers"].items():
        print(
            f"{name:10s} acc final {100 * peer['dev_accuracy_final']:.2f} "
            f"best {100 * peer['dev_accuracy_best']:.2f} trainable {peer['trainable_parameters']:,} "
            f"step {peer['median_step_s'] * 1000:.0f} ms"
        )
    print(json.dumps(result["ratios"], indent=2))


if __name__ == "__main__":
    main()

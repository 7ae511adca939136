"""Wall time of one prefix-tuning training step: prefixtune vs PEFT vs a floor, on the same batches.

One step is forward + backward + AdamW step + zero_grad on SmolLM2-135M (fp32, sdpa, CPU), batch 8,
prefix length 10, MLP reparametrisation with hidden width 512. Peers, each on its own copy of the model:

- `prefixtune`: `add_prefix(model, PrefixConfig(length=10, reparam="mlp", mlp_hidden=512))`, the
  prefix injected inside attention; the optimiser holds `model.prefix_parameters()`.
- `peft`: `peft.get_peft_model(model, PrefixTuningConfig(num_virtual_tokens=10, prefix_projection=True,
  encoder_hidden_size=512))`, the prefix passed as `past_key_values`.
- `floor`: the bare frozen model with only a zero (hidden,) delta added to `inputs_embeds` trainable:
  the least that any method training something at the input pays (a full forward and a full backward).

These three take the loss on every real token, from full logits. A second group takes a target-only
loss (only the E2E reference is predicted, as table-to-text training does):

- `prefixtune_target_logits`: prefixtune with the training recipe's `target_loss`, which passes the
  target positions as `logits_to_keep`, so vocabulary logits exist only where the loss is taken;
- `prefixtune_target_full`, `peft_target`, `floor_target`: the same loss from full logits.

Peers are warmed up, then run step by step in turn (the starting peer rotates every round) on the same
fixed batches: at step k every peer sees batch k. Reported: median and p90 step time, real tokens per
second, ratios of medians and medians of per-step paired ratios. `--memory` also runs each peer alone
in a subprocess and reports its peak resident memory during training above its resident memory after
setup (Linux: the high-water mark is reset through /proc/self/clear_refs; elsewhere `ru_maxrss`).

    python bench/step_cost.py --steps 20 --memory --out bench/results/step_cost.json
"""

from __future__ import annotations

import argparse
import copy
import csv
import gc
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional

IGNORE = -100
_START = time.perf_counter()
E2E_TRAIN = Path(__file__).resolve().parents[2] / "shared" / "data" / "e2e" / "trainset.csv"
ALL_TOKEN_PEERS = ("prefixtune", "peft", "floor")
TARGET_PEERS = ("prefixtune_target_logits", "prefixtune_target_full", "peft_target", "floor_target")
PEERS = ALL_TOKEN_PEERS + TARGET_PEERS
LABELS = {
    "prefixtune": "prefixtune",
    "peft": "PEFT",
    "floor": "floor (input delta)",
    "prefixtune_target_logits": "prefixtune (target logits only)",
    "prefixtune_target_full": "prefixtune (full logits)",
    "peft_target": "PEFT",
    "floor_target": "floor (input delta)",
}
RATIOS = (
    ("prefixtune", "peft"),
    ("prefixtune", "floor"),
    ("peft", "floor"),
    ("prefixtune_target_logits", "peft_target"),
    ("prefixtune_target_logits", "floor_target"),
    ("prefixtune_target_full", "peft_target"),
    ("prefixtune_target_full", "floor_target"),
    ("prefixtune_target_logits", "prefixtune_target_full"),
    ("peft_target", "floor_target"),
)


def log(message: str) -> None:
    print(f"[{time.perf_counter() - _START:7.1f}s] {message}", flush=True)


# -- data ---------------------------------------------------------------------------------------------
def make_batches(tokenizer, args: argparse.Namespace, count: int) -> tuple[list[dict], dict]:
    """`count` fixed batches: real E2E rows (unless `--seq-len` or no data), else random token ids.

    Each batch holds input_ids and attention_mask (B, L), right-padded to the batch's longest row;
    `all_labels` (every real token) and `labels` (target tokens only; IGNORE on prompt and padding).
    """
    generator = torch.Generator().manual_seed(args.seed)
    data = Path(args.data)
    if args.seq_len is None and data.is_file():
        with data.open(newline="", encoding="utf-8") as handle:
            rows = [(r["mr"], r["ref"]) for r in csv.DictReader(handle)]
        order = torch.randperm(len(rows), generator=generator)[: count * args.batch_size].tolist()
        encoded = [_encode(tokenizer, *rows[i], args.max_tokens) for i in order]
        source = f"E2E {data} ({len(rows)} rows, {len(order)} sampled with seed {args.seed})"
    else:
        length = args.seq_len or 64
        vocab = tokenizer.vocab_size if tokenizer is not None else 49152
        encoded = []
        for _ in range(count * args.batch_size):
            ids = torch.randint(0, vocab, (length,), generator=generator).tolist()
            encoded.append((ids, length // 2))  # the second half plays the target
        source = f"random token ids, {length} per row (seed {args.seed})"
    pad = tokenizer.pad_token_id if tokenizer is not None and tokenizer.pad_token_id is not None else 0
    batches = [
        _collate(encoded[i : i + args.batch_size], pad) for i in range(0, len(encoded), args.batch_size)
    ]
    info = {
        "source": source,
        "format": "mr + '\\n' + ref + eos, right-padded" if "E2E" in source else "random ids, no padding",
        "widths": [int(b["input_ids"].shape[1]) for b in batches],
        "real_tokens": [int(b["attention_mask"].sum()) for b in batches],
        "target_tokens": [int((b["labels"][:, 1:] != IGNORE).sum()) for b in batches],
    }
    return batches, info


def _encode(tokenizer, mr: str, ref: str, max_tokens: int) -> tuple[list[int], int]:
    prompt = tokenizer(mr + "\n")["input_ids"]
    target = tokenizer(ref, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    ids = (prompt + target)[:max_tokens]
    return ids, min(len(prompt), len(ids) - 1)


def _collate(items: list[tuple[list[int], int]], pad: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in items)
    input_ids = torch.full((len(items), width), pad, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE, dtype=torch.long)
    for row, (ids, prompt_len) in enumerate(items):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        mask[row, : len(ids)] = 1
        labels[row, prompt_len : len(ids)] = torch.tensor(ids[prompt_len:])
    all_labels = input_ids.masked_fill(mask == 0, IGNORE)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels, "all_labels": all_labels}


# -- losses -------------------------------------------------------------------------------------------
def next_token_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of logits (B, L, V) at t against labels (B, L) at t+1, IGNORE skipped."""
    return functional.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE
    )


def recipe_target_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The training recipe's loss: logits only at target positions (`logits_to_keep` as a tensor)."""
    from prefixtune.train.loss import target_loss

    loss, count = target_loss(model, {k: batch[k] for k in ("input_ids", "attention_mask", "labels")})
    return loss / count


# -- peers --------------------------------------------------------------------------------------------
@dataclass
class Peer:
    name: str
    model: nn.Module
    params: list[nn.Parameter]
    loss: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    """The training loss on a batch (with the trained thing applied)."""
    bare_loss: Callable[[dict[str, torch.Tensor]], torch.Tensor]
    """The same loss with the trained thing switched off: equal across peers (the base model)."""
    optimizer: torch.optim.Optimizer = field(init=False)
    times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.model.train()
        self.optimizer = torch.optim.AdamW(self.params, lr=0.0)  # the lr is set in build_peer

    def step(self, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
        """One training step; returns (seconds, loss)."""
        start = time.perf_counter()
        loss = self.loss(batch)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - start
        return seconds, loss.item()


def build_peer(name: str, base: nn.Module, tokenizer, args: argparse.Namespace) -> Peer:
    """`name`'s peer on a deep copy of `base` (never modified)."""
    torch.manual_seed(args.seed)
    model = copy.deepcopy(base)
    model.requires_grad_(False)
    target = name.endswith("_target") or name.startswith("prefixtune_target")
    label_key = "labels" if target else "all_labels"
    if name.startswith("prefixtune"):
        peer = _prefixtune_peer(name, model, tokenizer, args, label_key)
    elif name.startswith("peft"):
        peer = _peft_peer(name, model, args, label_key)
    elif name.startswith("floor"):
        peer = _floor_peer(name, model, label_key)
    else:
        raise ValueError(f"unknown peer {name!r}; choose from {PEERS}")
    for group in peer.optimizer.param_groups:
        group["lr"] = args.lr
    return peer


def _prefixtune_peer(name: str, model: nn.Module, tokenizer, args, label_key: str) -> Peer:
    import prefixtune

    config = prefixtune.PrefixConfig(
        length=args.prefix_length, reparam="mlp", mlp_hidden=args.mlp_hidden, seed=args.seed
    )
    pmodel = prefixtune.add_prefix(model, config, tokenizer=tokenizer)

    def full(batch, prefix=None):
        out = pmodel(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            prefix=prefix,
            use_cache=False,
        )
        return next_token_loss(out.logits, batch[label_key])

    def bare(batch):
        return full(batch, prefix=[None] * batch["input_ids"].shape[0])

    if name == "prefixtune_target_logits":
        return Peer(name, pmodel, pmodel.prefix_parameters(), lambda b: recipe_target_loss(pmodel, b), bare)
    return Peer(name, pmodel, pmodel.prefix_parameters(), full, bare)


def _peft_peer(name: str, model: nn.Module, args, label_key: str) -> Peer:
    from peft import PrefixTuningConfig, get_peft_model

    config = PrefixTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=args.prefix_length,
        prefix_projection=True,
        encoder_hidden_size=args.mlp_hidden,
    )
    pmodel = get_peft_model(model, config)
    params = [p for p in pmodel.parameters() if p.requires_grad]

    def full(batch):
        out = pmodel(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return next_token_loss(out.logits, batch[label_key])

    def bare(batch):
        with pmodel.disable_adapter():
            return full(batch)

    return Peer(name, pmodel, params, full, bare)


def _floor_peer(name: str, model: nn.Module, label_key: str) -> Peer:
    embed = model.get_input_embeddings()
    delta = nn.Parameter(torch.zeros(embed.embedding_dim))

    def loss(batch, shift=True):
        embeds = embed(batch["input_ids"])  # (B, L, d), frozen
        if shift:
            embeds = embeds + delta
        out = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], use_cache=False)
        return next_token_loss(out.logits, batch[label_key])

    return Peer(name, model, [delta], loss, lambda b: loss(b, shift=False))


# -- checks -------------------------------------------------------------------------------------------
@torch.no_grad()
def step0_losses(peers: list[Peer], batch: dict[str, torch.Tensor]) -> dict[str, dict[str, float]]:
    """Each peer's loss on the first batch before training, with and without what it trains."""
    return {p.name: {"loss": p.loss(batch).item(), "bare_loss": p.bare_loss(batch).item()} for p in peers}


def param_change(peer: Peer, before: list[torch.Tensor]) -> dict[str, float | int]:
    diffs = [(p.detach() - b).abs().max().item() for p, b in zip(peer.params, before, strict=True)]
    return {
        "tensors": len(diffs),
        "tensors_changed": sum(d > 0 for d in diffs),
        "max_abs_change": max(diffs),
        "trainable_params": sum(p.numel() for p in peer.params),
    }


# -- timing -------------------------------------------------------------------------------------------
def run_alternating(peers: list[Peer], batches: list[dict], warmup: int, steps: int) -> dict:
    """Warm up, then time `steps` rounds; in round k every peer takes one step on batch warmup + k."""
    changes = {}
    gc.collect()
    for k in range(warmup):
        for peer in peers:
            before = [p.detach().clone() for p in peer.params] if k == 0 else None
            _, loss = peer.step(batches[k])
            if before is not None:
                changes[peer.name] = param_change(peer, before)
            log(f"warmup {k} {peer.name:26s} loss {loss:.4f}")
    for k in range(steps):
        batch = batches[warmup + k]
        rotation = k % len(peers)
        for peer in peers[rotation:] + peers[:rotation]:
            gc.collect()
            gc.disable()
            try:
                seconds, loss = peer.step(batch)
            finally:
                gc.enable()
            peer.times.append(seconds)
            peer.losses.append(loss)
        line = " ".join(f"{p.name}={p.times[-1]:.3f}s" for p in peers)
        log(f"step {k:3d} width {batch['input_ids'].shape[1]:3d} {line}")
    return changes


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarise(peers: list[Peer], tokens: list[int], warmup: int) -> tuple[dict, dict]:
    timed_tokens = tokens[warmup : warmup + len(peers[0].times)]
    stats = {}
    for peer in peers:
        median = statistics.median(peer.times)
        stats[peer.name] = {
            "label": LABELS[peer.name],
            "median_s": median,
            "p90_s": percentile(peer.times, 0.9),
            "mean_s": statistics.fmean(peer.times),
            "min_s": min(peer.times),
            "tokens_per_s": statistics.median(t / s for t, s in zip(timed_tokens, peer.times, strict=True)),
            "tokens_per_s_at_median": statistics.fmean(timed_tokens) / median,
            "times_s": peer.times,
            "losses": peer.losses,
        }
    by_name = {p.name: p for p in peers}
    ratios = {}
    for a, b in RATIOS:
        if a in by_name and b in by_name:
            paired = [x / y for x, y in zip(by_name[a].times, by_name[b].times, strict=True)]
            ratios[f"{a}/{b}"] = {
                "ratio_of_medians": stats[a]["median_s"] / stats[b]["median_s"],
                "median_paired_ratio": statistics.median(paired),
                "paired_p10": percentile(paired, 0.1),
                "paired_p90": percentile(paired, 0.9),
            }
    return stats, ratios


# -- memory (one subprocess per peer) ------------------------------------------------------------------
def _proc_status(key: str) -> int | None:
    try:
        match = re.search(rf"{key}:\s+(\d+) kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: peak RSS := current RSS
    except OSError:
        return False
    return True


def memory_child(name: str, args: argparse.Namespace) -> dict:
    """Build one peer alone, then report its peak resident memory over a few steps.

    The peak is VmHWM after resetting it through /proc/self/clear_refs. `ru_maxrss` is recorded but
    not used when the reset works: on Linux a child inherits, through fork and exec, the resident
    size of the parent it was forked from (here the parent holding every peer's model).
    """
    base, tokenizer = load(args)
    batches, _ = make_batches(tokenizer, args, args.memory_steps)
    peer = build_peer(name, base, tokenizer, args)
    del base
    gc.collect()
    setup = _proc_status("VmRSS")
    reset = _reset_peak()
    for batch in batches:
        peer.step(batch)
    peak = _proc_status("VmHWM") if reset else None
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    peak = peak if peak is not None else maxrss
    return {
        "setup_rss_mb": setup / 2**20 if setup else None,
        "peak_rss_mb": peak / 2**20,
        "peak_delta_mb": (peak - setup) / 2**20 if setup else None,
        "ru_maxrss_mb": maxrss / 2**20,
        "peak_reset": reset,
        "steps": args.memory_steps,
    }


def measure_memory(names: list[str], argv: list[str]) -> dict:
    results = {}
    for name in names:
        command = [sys.executable, __file__, *argv, "--memory-child", name]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("MEMORY ")]
        if done.returncode or not lines:
            results[name] = {"error": (done.stderr or done.stdout)[-2000:]}
        else:
            results[name] = json.loads(lines[-1][len("MEMORY ") :])
        log(f"memory {name:26s} {results[name]}")
    return results


# -- main ---------------------------------------------------------------------------------------------
def load(args: argparse.Namespace):
    import prefixtune

    torch.manual_seed(args.seed)
    base, tokenizer = prefixtune.load_base(args.model, attn_implementation="sdpa", dtype=torch.float32)
    return base, tokenizer


def environment() -> dict:
    import peft
    import transformers

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=30, help="timed steps per peer (default 30)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per peer first (default 3)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--prefix-length", type=int, default=10)
    parser.add_argument("--mlp-hidden", type=int, default=512)
    parser.add_argument("--lr", type=float, default=5e-5, help="AdamW learning rate (default 5e-5)")
    parser.add_argument(
        "--seq-len", type=int, default=None, help="random token rows of this length instead of E2E rows"
    )
    parser.add_argument("--data", default=str(E2E_TRAIN), help="E2E trainset.csv (random ids if missing)")
    parser.add_argument("--max-tokens", type=int, default=256, help="cut E2E rows to this many tokens")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated subset of {PEERS}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory", action="store_true", help="also peak RSS per peer, one subprocess each")
    parser.add_argument("--memory-steps", type=int, default=4, help="steps per memory subprocess")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.memory_child:
        print("MEMORY " + json.dumps(memory_child(args.memory_child, args)), flush=True)
        return 0
    names = [n.strip() for n in args.peers.split(",") if n.strip()]
    unknown = sorted(set(names) - set(PEERS))
    if unknown:
        raise SystemExit(f"unknown peers {unknown}; choose from {PEERS}")
    started = time.perf_counter()
    base, tokenizer = load(args)
    batches, data = make_batches(tokenizer, args, args.warmup + args.steps)
    log(f"data: {data['source']}; widths {data['widths']}")
    peers = [build_peer(name, base, tokenizer, args) for name in names]
    del base
    gc.collect()
    log(f"built {len(peers)} peers")

    losses = step0_losses(peers, batches[0])
    for name, row in losses.items():
        log(f"step-0 {name:26s} loss {row['loss']:.5f}  bare model {row['bare_loss']:.5f}")
    changes = run_alternating(peers, batches, args.warmup, args.steps)
    for name, change in changes.items():
        log(f"first step changed {name}: {change}")
    stats, ratios = summarise(peers, data["real_tokens"], args.warmup)
    for name, row in stats.items():
        log(
            f"{name:26s} median {row['median_s']:.3f}s p90 {row['p90_s']:.3f}s "
            f"{row['tokens_per_s']:.0f} tok/s"
        )
    for key, row in ratios.items():
        log(f"{key:52s} {row['ratio_of_medians']:.3f} (paired {row['median_paired_ratio']:.3f})")
    result = {
        "command": "python bench/step_cost.py " + " ".join(argv),
        "args": {k: v for k, v in vars(args).items() if k != "memory_child"},
        "environment": environment(),
        "data": data,
        "step0": losses,
        "first_step_param_change": changes,
        "stats": stats,
        "ratios": ratios,
        "timing_seconds_total": time.perf_counter() - started,
    }
    del peers
    gc.collect()
    if args.memory:
        result["memory"] = measure_memory(names, [a for a in argv if a != "--memory"])
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""E2E table-to-text on SmolLM2-135M: prefixtune against PEFT's prefix tuning, trained side by side.

Every peer trains on the same batches (the training recipe's length-bucketed E2E batches), for the
same steps, with the same AdamW, learning-rate schedule (linear warmup, linear decay), clipping and
seed; the peers take turns, one step each per round, so that machine noise hits them alike.

- `prefixtune`: prefixtune with PEFT's settings (length 10, MLP hidden 512, random init), trained
  with the recipe's loss (`prefixtune.train.loss.target_loss`: logits only at target tokens).
- `prefixtune_text`: prefixtune's recommended defaults (`prefixtune train`): the same, but the
  prefix starts from the keys/values of "table-to-text:".
- `prefixtune_untrimmed` (not run by default): `prefixtune` with the loss's trimming of the last
  layer's feed-forward block switched off, to measure what that trimming saves in the same run.
- `peft`: `PrefixTuningConfig(num_virtual_tokens=10, prefix_projection=True, encoder_hidden_size=512)`,
  the same target-only loss computed from full logits, as a PEFT user passing masked labels gets.
- `floor` (timed on the first `--floor-rounds` rounds only): the bare frozen model with a zero
  vector added to the input embeddings, the one thing trained: a full forward and backward.

Then each trained peer generates for E2E dev inputs (batched, left-padded) and is scored with
the E2E metrics (multi-reference BLEU as the official scorer computes it), and, with `--memory`,
each peer runs alone in a subprocess for a few steps to measure its peak resident memory.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from step_cost import _proc_status, _reset_peak, environment, log, next_token_loss, percentile  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
E2E = ROOT.parent / "shared" / "data" / "e2e"
TRAINED = ("prefixtune", "prefixtune_text", "prefixtune_untrimmed", "peft")
PEERS = (*TRAINED, "floor")
DEFAULT_PEERS = ("prefixtune", "prefixtune_text", "peft", "floor")


@dataclass
class Peer:
    name: str
    model: nn.Module
    params: list[nn.Parameter]
    loss: object
    """batch -> mean loss over target tokens."""
    optimizer: torch.optim.Optimizer = field(init=False)
    scheduler: torch.optim.lr_scheduler.LambdaLR = field(init=False)
    times: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)

    def setup(self, args: argparse.Namespace) -> None:
        lr = args.peer_lr.get(self.name, args.lr)
        self.optimizer = torch.optim.AdamW(self.params, lr=lr, weight_decay=0.0)
        warmup, total = args.warmup_steps, args.steps

        def schedule(step: int) -> float:  # the recipe's: linear warmup, then linear decay to zero
            if step < warmup:
                return (step + 1) / warmup
            return max(0.0, (total - step) / max(1, total - warmup))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)

    def step(self, batch: dict[str, torch.Tensor], clip: float) -> tuple[float, float]:
        start = time.perf_counter()
        loss = self.loss(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start, loss.item()


# -- peers ---------------------------------------------------------------------------------------------
def build_peer(name: str, base: nn.Module, tokenizer, args: argparse.Namespace) -> Peer:
    torch.manual_seed(args.seed)
    model = copy.deepcopy(base)
    model.requires_grad_(False)
    if name.startswith("prefixtune"):
        peer = _prefixtune(name, model, tokenizer, args)
    elif name == "peft":
        peer = _peft(model, args)
    else:
        peer = _floor(model)
    peer.model.train()
    peer.setup(args)
    return peer


def _prefixtune(name: str, model: nn.Module, tokenizer, args) -> Peer:
    from prefixtune import PrefixConfig, add_prefix
    from prefixtune.train.loss import target_loss

    init = {"init": "text", "init_text": args.init_text} if name == "prefixtune_text" else {}
    length = args.peer_length.get(name, args.prefix_length)
    config = PrefixConfig(length=length, mlp_hidden=args.mlp_hidden, seed=args.seed, **init)
    pmodel = add_prefix(model, config, tokenizer=tokenizer)

    def loss(batch):
        if name == "prefixtune_untrimmed":
            with mock.patch("prefixtune.train.loss._last_feed_forward", return_value=None):
                total, count = target_loss(pmodel, batch)
        else:
            total, count = target_loss(pmodel, batch)
        return total / count

    return Peer(name, pmodel, pmodel.prefix_parameters(), loss)


def _peft(model: nn.Module, args) -> Peer:
    from peft import PrefixTuningConfig, get_peft_model

    config = PrefixTuningConfig(
        task_type="CAUSAL_LM",
        num_virtual_tokens=args.prefix_length,
        prefix_projection=True,
        encoder_hidden_size=args.mlp_hidden,
    )
    pmodel = get_peft_model(model, config)

    def loss(batch):
        out = pmodel(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return next_token_loss(out.logits, batch["labels"])

    return Peer("peft", pmodel, [p for p in pmodel.parameters() if p.requires_grad], loss)


def _floor(model: nn.Module) -> Peer:
    embed = model.get_input_embeddings()
    delta = nn.Parameter(torch.zeros(embed.embedding_dim))

    def loss(batch):
        embeds = embed(batch["input_ids"]) + delta  # (B, L, d): the frozen embeddings, shifted
        out = model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], use_cache=False)
        return next_token_loss(out.logits, batch["labels"])

    return Peer("floor", model, [delta], loss)


# -- data ----------------------------------------------------------------------------------------------
def make_batches(tokenizer, args: argparse.Namespace, count: int) -> list[dict[str, torch.Tensor]]:
    """The training recipe's batches: `[x; y]` rows, length-bucketed, shuffled with the seed."""
    from prefixtune.data import read_dataset
    from prefixtune.train.encode import bucketed_batches, collate, encode_examples

    examples = read_dataset(str(Path(args.data_dir) / "trainset.csv"))
    encoded = encode_examples(examples, tokenizer, 128, 96)
    generator = torch.Generator().manual_seed(args.seed)
    order = bucketed_batches([len(e.input_ids) for e in encoded], args.batch_size, generator)[:count]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return [collate([encoded[i] for i in rows], pad) for rows in order]


# -- training, timing, scoring ------------------------------------------------------------------------
def train_alternating(peers: list[Peer], batches: list[dict], args: argparse.Namespace) -> None:
    """Round k: every peer (the floor only in the first rounds) takes one step on batch k."""
    for k, batch in enumerate(batches):
        active = [p for p in peers if p.name != "floor" or k < args.floor_rounds]
        rotation = k % len(active)
        for peer in active[rotation:] + active[:rotation]:
            gc.collect()
            gc.disable()
            try:
                seconds, loss = peer.step(batch, args.clip)
            finally:
                gc.enable()
            peer.times.append(seconds)
            peer.losses.append(loss)
        if k % 10 == 0 or k == len(batches) - 1:
            line = " ".join(f"{p.name}={p.times[-1]:.2f}s/{p.losses[-1]:.3f}" for p in active)
            log(f"round {k:4d} width {batch['input_ids'].shape[1]:3d} {line}")


def timing(peers: list[Peer], batches: list[dict], args: argparse.Namespace) -> dict:
    """Per peer: median step and tokens/s after warmup; paired ratios on the same rounds."""
    tokens = [int(b["attention_mask"].sum()) for b in batches]
    skip = args.warmup_rounds
    stats = {}
    for peer in peers:
        times = peer.times[skip:]
        stats[peer.name] = {
            "median_s": statistics.median(times),
            "p90_s": percentile(times, 0.9),
            "tokens_per_s": statistics.median(t / s for t, s in zip(tokens[skip:], times, strict=False)),
            "rounds_timed": len(times),
        }
    by_name = {p.name: p for p in peers}
    ratios = {}
    ours = ("prefixtune", "prefixtune_text", "prefixtune_untrimmed")
    for a, b in [(x, y) for x in ours for y in ("peft", "floor")] + [
        ("peft", "floor"),
        ("prefixtune", "prefixtune_untrimmed"),
    ]:
        if a in by_name and b in by_name:
            n = min(len(by_name[a].times), len(by_name[b].times))
            paired = [x / y for x, y in zip(by_name[a].times[skip:n], by_name[b].times[skip:n], strict=True)]
            ratios[f"{a}/{b}"] = {
                "median_paired": statistics.median(paired),
                "p10": percentile(paired, 0.1),
                "p90": percentile(paired, 0.9),
                "rounds": len(paired),
            }
    return {"stats": stats, "ratios": ratios}


def score(peer: Peer, tokenizer, args: argparse.Namespace) -> dict:
    from prefixtune.data import read_dataset
    from prefixtune.train.evaluate import evaluate_prefix

    dev = read_dataset(str(Path(args.data_dir) / "devset.csv"))
    start = time.perf_counter()
    scores, rows = evaluate_prefix(
        peer.model,
        tokenizer,
        dev,
        metrics=tuple(args.metrics.split(",")),
        max_sources=args.eval_sources,
        max_new_tokens=args.max_new_tokens,
        num_beams=args.num_beams,
        batch_size=16,
    )
    log(f"{peer.name}: {scores} ({time.perf_counter() - start:.0f} s)")
    return {"scores": scores, "samples": [{"source": s, "output": h} for s, h, _ in rows[:5]]}


# -- memory (one subprocess per peer) ------------------------------------------------------------------
def memory_child(name: str, args: argparse.Namespace) -> dict:
    """Build one peer alone and report its peak resident memory above setup over a few steps."""
    base, tokenizer = load(args)
    batches = make_batches(tokenizer, args, args.memory_steps)
    peer = build_peer(name, base, tokenizer, args)
    del base
    gc.collect()
    setup = _proc_status("VmRSS")
    reset = _reset_peak()  # Linux: peak := current, so that the peak is this peer's steps alone
    for batch in batches:
        peer.step(batch, args.clip)
    peak = _proc_status("VmHWM")
    return {"setup_rss_mb": setup / 2**20, "peak_delta_mb": (peak - setup) / 2**20, "peak_reset": reset}


def measure_memory(names: list[str], argv: list[str]) -> dict:
    results = {}
    for name in names:
        command = [sys.executable, __file__, *argv, "--memory-child", name]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if line.startswith("MEMORY ")]
        ok = done.returncode == 0 and lines
        results[name] = json.loads(lines[-1][7:]) if ok else {"error": (done.stderr or done.stdout)[-2000:]}
        log(f"memory {name}: {results[name]}")
    return results


# -- main ----------------------------------------------------------------------------------------------
def load(args: argparse.Namespace):
    from prefixtune import load_base

    torch.manual_seed(args.seed)
    return load_base(args.model, attn_implementation="sdpa", dtype=torch.float32)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps of every peer")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-3, help="peak AdamW learning rate, for every peer")
    parser.add_argument(
        "--peer-lr",
        action="append",
        default=[],
        metavar="PEER=LR",
        help="one peer's own peak learning rate instead of --lr (repeatable), e.g. prefixtune_text=2e-3",
    )
    parser.add_argument("--warmup-steps", type=int, default=20)
    parser.add_argument("--clip", type=float, default=1.0, help="gradient clipping norm")
    parser.add_argument("--prefix-length", type=int, default=10)
    parser.add_argument(
        "--peer-length",
        action="append",
        default=[],
        metavar="PEER=N",
        help="one prefixtune peer's own prefix length instead of --prefix-length (repeatable), "
        "e.g. prefixtune_text=20; PEFT keeps --prefix-length",
    )
    parser.add_argument("--mlp-hidden", type=int, default=512)
    parser.add_argument("--init-text", default="table-to-text:", help="prefixtune_text's initial words")
    parser.add_argument("--floor-rounds", type=int, default=60, help="rounds in which the floor is timed")
    parser.add_argument("--warmup-rounds", type=int, default=3, help="rounds left out of the timing")
    parser.add_argument(
        "--eval-sources", type=int, default=100, help="distinct E2E dev inputs scored (0: timing only)"
    )
    parser.add_argument("--num-beams", type=int, default=1)
    parser.add_argument("--max-new-tokens", type=int, default=60)
    parser.add_argument("--metrics", default="BLEU,NIST,ROUGE_L,CIDEr")
    parser.add_argument("--peers", default=",".join(DEFAULT_PEERS), help=f"comma-separated subset of {PEERS}")
    parser.add_argument("--data-dir", default=str(E2E), help="folder with E2E trainset.csv and devset.csv")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--memory", action="store_true", help="peak memory per peer, one subprocess each")
    parser.add_argument("--memory-steps", type=int, default=4)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.peer_lr = _per_peer(parser, "--peer-lr", args.peer_lr, float, "prefixtune_text=2e-3", PEERS)
    prefix_peers = tuple(name for name in TRAINED if name.startswith("prefixtune"))
    args.peer_length = _per_peer(
        parser, "--peer-length", args.peer_length, int, "prefixtune_text=20", prefix_peers
    )
    return args


def _per_peer(parser, flag: str, items: list[str], cast, example: str, names: tuple[str, ...]) -> dict:
    """Parse repeated PEER=VALUE options into {peer: value}, or exit with argparse's error."""
    try:
        values = {name: cast(value) for name, value in (item.split("=", 1) for item in items)}
    except ValueError:
        parser.error(f"{flag} takes PEER=VALUE, for example {example}")
    if unknown := set(values) - set(names):
        parser.error(f"{flag} names peers it cannot apply to: {sorted(unknown)}; it takes {names}")
    return values


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.memory_child:
        print("MEMORY " + json.dumps(memory_child(args.memory_child, args)), flush=True)
        return 0
    names = [n for n in args.peers.split(",") if n]
    started = time.perf_counter()
    base, tokenizer = load(args)
    batches = make_batches(tokenizer, args, args.steps)
    peers = [build_peer(name, base, tokenizer, args) for name in names]
    del base
    log(
        f"{len(batches)} batches, widths {min(b['input_ids'].shape[1] for b in batches)}-"
        f"{max(b['input_ids'].shape[1] for b in batches)}; peers {names}"
    )
    train_alternating(peers, batches, args)
    result = {
        "command": "python bench/e2e_vs_peft.py " + " ".join(argv),
        "args": {k: v for k, v in vars(args).items() if k != "memory_child"},
        "environment": environment(),
        "trainable_params": {p.name: sum(x.numel() for x in p.params) for p in peers},
        "timing": timing(peers, batches, args),
        "train_loss": {p.name: p.losses for p in peers},
        "train_seconds": time.perf_counter() - started,
    }
    if args.eval_sources > 0:
        result["dev"] = {p.name: score(p, tokenizer, args) for p in peers if p.name in TRAINED}
    del peers
    gc.collect()
    if args.memory:
        result["memory"] = measure_memory(names, [a for a in argv if a != "--memory"])
    result["total_seconds"] = time.perf_counter() - started
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
        log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

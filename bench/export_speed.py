"""Issue 18: a trained prefix in prefixtune, plain transformers and llama.cpp: tokens/s and BLEU.

Every system continues the same 100 E2E dev prompts greedily (source + newline, as trained), stops at
a newline or end of sequence (at most --max-new-tokens) and is scored with BLEU against all references.
Speed is new tokens per second of wall time, prompt processing included (for llama.cpp, restoring the
prefix state too), at each batch size of --batches.

    python bench/export_speed.py --prefix runs/e2e/prefix --out bench/results/export_speed.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from prefixtune import load_base, load_prefix  # noqa: E402
from prefixtune.data import group_references, read_dataset  # noqa: E402
from prefixtune.engine.compat import cache_kwargs  # noqa: E402
from prefixtune.export import to_llamacpp, to_transformers  # noqa: E402
from prefixtune.export.gguf import cached_f32_copy  # noqa: E402
from prefixtune.export.llamacpp_runner import LlamaCppRunner  # noqa: E402
from prefixtune.loading import resolve_alias  # noqa: E402
from prefixtune.metrics import e2e_scores  # noqa: E402
from prefixtune.train.encode import prompt_text  # noqa: E402

E2E_DEV = ROOT.parent / "shared" / "data" / "e2e" / "devset.csv"


def hf_generate(model, prompts: list[list[int]], stops: list[int], new: int, batch: int, per_batch=None):
    """Greedy continuations (token lists) with a Hugging Face-style `generate`, left-padded batches.

    `per_batch(rows, mask)` gives a batch's keyword arguments (the exported cache and its mask).
    """
    outputs, count = [], 0
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        width = max(map(len, chunk))
        ids = torch.tensor([[0] * (width - len(p)) + p for p in chunk])  # (B, T) left-padded
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        kwargs = per_batch(len(chunk), mask) if per_batch else {"attention_mask": mask}
        out = model.generate(
            ids, max_new_tokens=new, do_sample=False, eos_token_id=stops, pad_token_id=0, **kwargs
        )
        for row in out[:, width:].tolist():
            row = row[: next((i for i, t in enumerate(row) if t in stops), len(row))]
            outputs.append(row)
            count += min(len(row) + 1, new)  # the stop token was generated too
    return outputs, count


def llamacpp_generate(runner, state, prompts, stops, new: int, batch: int):
    """Greedy continuations in llama.cpp, `batch` sequences at a time, each restored from `state`."""
    outputs, count = [], 0
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        runner.clear()
        cells = [runner.restore(state, seq) if state else [] for seq in range(len(chunk))]
        rows, _ = runner.greedy(chunk, [len(c) for c in cells], new, stops)
        outputs += rows
        count += sum(min(len(r) + 1, new) for r in rows)
    return outputs, count


def forced_decode(runner, state, prompts, streams) -> tuple[int, float]:
    """Decode each prompt then its given token stream one token per step (teacher forcing), with the
    state restored or bare: the same tokens either way. Returns (tokens, seconds)."""
    count, started = 0, time.perf_counter()
    for prompt, stream in zip(prompts, streams, strict=True):
        runner.clear()
        start = len(runner.restore(state)) if state else 0
        runner.decode([prompt], [start])
        for i, token in enumerate(stream):
            runner.decode([[token]], [start + len(prompt) + i])
        count += len(stream)
    return count, time.perf_counter() - started


def same_tokens(bench, gguf: Path, state: Path, rounds: int) -> dict:
    """llama.cpp bare against llama.cpp with the prefix on identical token streams (the prefix's own
    greedy outputs), alternating, batch 1: the prefix's cost is only its P extra cells per step."""
    streams = [
        bench.tokenizer(t, add_special_tokens=False)["input_ids"]
        for t in bench.texts["llama.cpp Q4_1 + prefix", 1]
    ]
    runner = LlamaCppRunner(gguf, threads=bench.args.threads)
    totals = {"bare": [0, 0.0], "prefix": [0, 0.0]}
    ratios = []  # one per round: the spread says how far a single round's ratio can be trusted
    try:
        for _ in range(rounds):
            seconds_of = {"bare": 0.0, "prefix": 0.0}
            for name, with_state in (("bare", None), ("prefix", state), ("prefix", state), ("bare", None)):
                count, seconds = forced_decode(runner, with_state, bench.prompts, streams)
                totals[name][0] += count
                totals[name][1] += seconds
                seconds_of[name] += seconds
            ratios.append(round(seconds_of["bare"] / seconds_of["prefix"], 3))
    finally:
        runner.close()
    speed: dict = {name: round(c / s, 1) for name, (c, s) in totals.items()}
    speed["prefix / bare"] = round(speed["prefix"] / speed["bare"], 3)
    speed["prefix / bare, each round"] = ratios
    print(f"same tokens, llama.cpp Q4_1, batch 1: {speed}", flush=True)
    return speed


class Bench:
    """The prompts, references and the results table shared by every system."""

    def __init__(self, tokenizer, groups, args) -> None:
        self.tokenizer, self.groups, self.args = tokenizer, groups, args
        self.prompts = [tokenizer(prompt_text(s))["input_ids"] for s, _ in groups]
        self.stops = [tokenizer.eos_token_id, tokenizer("\n", add_special_tokens=False)["input_ids"][0]]
        self.results: dict = {}
        self.texts: dict = {}

    def run(self, name: str, batch: int, fn, *head) -> None:
        started = time.perf_counter()
        rows, count = fn(*head, self.prompts, self.stops, self.args.max_new_tokens, batch)
        seconds = time.perf_counter() - started
        texts = [self.tokenizer.decode(r, skip_special_tokens=True).strip() for r in rows]
        bleu = e2e_scores(texts, [refs for _, refs in self.groups], metrics=("BLEU",))["BLEU"]
        self.results.setdefault(name, {})[f"batch{batch}"] = {
            "tokens": count,
            "seconds": round(seconds, 2),
            "tokens_per_s": round(count / seconds, 1),
            "BLEU": round(bleu, 2),
        }
        self.texts[name, batch] = texts
        print(f"{name:32s} batch {batch:2d}: {count / seconds:7.1f} tok/s  BLEU {bleu:6.2f}", flush=True)


def cache_builder(file: Path, config):
    """`per_batch` for `hf_generate`: a fresh DynamicCache of the exported file for each batch."""
    from safetensors.torch import load_file
    from transformers import DynamicCache

    kv = load_file(file)
    layers, length = len(kv) // 2, kv["0.key"].shape[2]

    def per_batch(rows: int, mask: torch.Tensor) -> dict:
        data = [
            (kv[f"{i}.key"].expand(rows, -1, -1, -1), kv[f"{i}.value"].expand(rows, -1, -1, -1))
            for i in range(layers)
        ]
        cache = DynamicCache(ddp_cache_data=data, config=config)
        return {
            "attention_mask": torch.cat([torch.ones(rows, length, dtype=mask.dtype), mask], 1),
            **cache_kwargs(cache),
        }

    return per_batch


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    groups = group_references(read_dataset(args.dev))[: args.sources]
    base, tokenizer = load_base(args.model)
    model = load_prefix(base, args.prefix)
    bench = Bench(tokenizer, groups, args)
    work = Path(tempfile.mkdtemp(prefix="export_speed."))
    ggufs = {"Q4_1": resolve_alias(args.model), "F32": cached_f32_copy(resolve_alias(args.model))}
    states = {label: to_llamacpp(model, gguf, work / f"{label}.ggsq") for label, gguf in ggufs.items()}
    plain, _ = load_base(args.model)  # a base prefixtune never touched: no prefixtune at inference
    per_batch = cache_builder(to_transformers(model, work / "cache.safetensors"), plain.config)
    for batch in args.batches:
        if not args.llamacpp_only:
            bench.run("prefixtune generate", batch, hf_generate, model)
            bench.run(
                "transformers + exported cache", batch, lambda *a: hf_generate(plain, *a, per_batch=per_batch)
            )
        for label, gguf in ggufs.items():
            runner = LlamaCppRunner(
                gguf, n_ctx=max(args.batches) * 256, threads=args.threads, sequences=max(args.batches)
            )
            try:
                bench.run(f"llama.cpp {label} bare", batch, llamacpp_generate, runner, None)
                bench.run(f"llama.cpp {label} + prefix", batch, llamacpp_generate, runner, states[label])
            finally:
                runner.close()
    bench.same_tokens = same_tokens(bench, ggufs["Q4_1"], states["Q4_1"], args.rounds)
    write_report(bench, args)


def write_report(bench: Bench, args) -> None:
    reference = {b: t for (n, b), t in bench.texts.items() if n == "prefixtune generate"}
    if not reference:  # --llamacpp-only: compare with llama.cpp F32 + prefix instead
        reference = {b: t for (n, b), t in bench.texts.items() if n == "llama.cpp F32 + prefix"}
    reference = {b: reference.get(b, reference.get(1)) for b in args.batches}
    identical = {
        f"{name}, batch {batch}": sum(a == b for a, b in zip(texts, reference[batch], strict=True))
        for (name, batch), texts in bench.texts.items()
    }
    report = {
        "command": "python " + " ".join(sys.argv),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "threads": args.threads,
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "sources": len(bench.groups),
        "max_new_tokens": args.max_new_tokens,
        "llama.cpp": "llama-cpp-python 0.3.36, F32 KV cache, flash attention off",
        "results": bench.results,
        "same_tokens_llamacpp_q4_1_batch1_tokens_per_s": bench.same_tokens,
        "texts_identical_to_prefixtune": identical,
        "samples": {n: t[:3] for (n, b), t in bench.texts.items() if b == 1},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(identical, indent=2))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prefix", required=True, help="a trained prefix folder on --model")
    parser.add_argument("--model", default="smollm2-135m", help="an alias whose GGUF llama.cpp runs")
    parser.add_argument("--dev", default=str(E2E_DEV), help="E2E devset.csv")
    parser.add_argument("--sources", type=int, default=100)
    parser.add_argument("--max-new-tokens", type=int, default=60)
    parser.add_argument("--batches", default="1,8", help="comma-separated batch sizes to measure")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--llamacpp-only", action="store_true", help="skip the PyTorch systems (slow on CPU)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the same-token timing")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "export_speed.json"))
    args = parser.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    return args


if __name__ == "__main__":
    main()

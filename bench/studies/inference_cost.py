"""Study 5: what a longer prefix costs at inference. Generation speed against prefix length.

Li & Liang note that a longer prefix costs little at inference. Every length here generates exactly the
same number of new tokens (`min_new_tokens` = `max_new_tokens`: no row stops early) for the same E2E dev
prompts, greedily, so the only difference is the P extra keys and values each attention layer reads.
The prefixes are random (their values do not change the cost). Lengths and batch sizes are timed in a
shuffled order, `--rounds` times, and the median kept: the machine is shared and noisy.

    python bench/studies/inference_cost.py docs/studies/inference-cost
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from prefixtune import PrefixConfig, add_prefix, load_base  # noqa: E402
from prefixtune.data import group_references, read_dataset  # noqa: E402
from prefixtune.train.encode import left_padded_prompts  # noqa: E402

E2E_DEV = ROOT.parent / "shared" / "data" / "e2e" / "devset.csv"
PLAIN = "plain model"
"""The base model as transformers runs it, a copy prefixtune never wrapped."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="folder for results.json, summary.md and the plot")
    parser.add_argument("--lengths", default="0,10,20,40,80,200")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--new-tokens", type=int, default=40)
    parser.add_argument("--prompts", type=int, default=16, help="prompts a timing decodes, in batches")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    batches = [int(x) for x in args.batches.split(",")]

    base, tokenizer = load_base("smollm2-135m")
    # a second copy that prefixtune never touches: wrapping switches a model's attention in place
    plain, _ = load_base("smollm2-135m")
    sources = [s for s, _ in group_references(read_dataset(E2E_DEV))][: args.prompts]
    model = base
    for length in lengths:
        if length:
            model = add_prefix(
                model, PrefixConfig(length=length, init="random", reparam="flat"), name=f"p{length}"
            )
    model.eval()
    systems = [PLAIN, *lengths]
    times: dict[tuple, list[float]] = {}
    plan = [(system, batch) for system in systems for batch in batches]
    for round_number in range(args.rounds):
        random.Random(round_number).shuffle(plan)
        for system, batch in plan:
            seconds = timed(model, plain, tokenizer, sources, system, batch, args.new_tokens)
            times.setdefault((system, batch), []).append(seconds)
            print(f"round {round_number}: {system!s:>11} batch {batch:2d}: {seconds:6.2f} s", flush=True)
    write(args, lengths, batches, sources, times)


@torch.no_grad()
def timed(model, plain, tokenizer, sources, system, batch: int, new_tokens: int) -> float:
    """Seconds to generate `new_tokens` for every source, `batch` at a time."""
    started = time.perf_counter()
    for start in range(0, len(sources), batch):
        inputs = left_padded_prompts(tokenizer, sources[start : start + batch], 128)
        rows = inputs["input_ids"].shape[0]
        options = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens, "do_sample": False}
        options["pad_token_id"] = tokenizer.eos_token_id
        if system == PLAIN:
            out = plain.generate(**inputs, **options)
        else:  # length 0: prefixtune's model with no prefix on any row
            out = model.generate(**inputs, **options, prefix=[f"p{system}" if system else None] * rows)
        assert out.shape[1] == inputs["input_ids"].shape[1] + new_tokens
    return time.perf_counter() - started


def write(args, lengths, batches, sources, times) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    tokens = len(sources) * args.new_tokens
    for batch in batches:
        plain = statistics.median(times[(PLAIN, batch)])
        empty = statistics.median(times[(0, batch)]) if 0 in lengths else plain  # prefixtune, no prefix
        for system in [PLAIN, *lengths]:
            runs = times[(system, batch)]
            median = statistics.median(runs)
            rows.append({
                "length": system, "batch": batch, "seconds": runs, "median_s": round(median, 3),
                "tokens_per_s": round(tokens / median, 1), "time_vs_plain": round(median / plain, 3),
                "time_vs_length_0": round(median / empty, 3),
                "spread": round((max(runs) - min(runs)) / median, 3),
            })  # fmt: skip
    setup = {
        "model": "smollm2-135m", "prompts": len(sources), "new_tokens": args.new_tokens,
        "rounds": args.rounds,
        "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "command": "python bench/studies/inference_cost.py " + " ".join(sys.argv[1:]),
    }  # fmt: skip
    (args.out / "results.json").write_text(json.dumps({"setup": setup, "rows": rows}, indent=1) + "\n")
    lines = [
        "| prefix length | batch | tokens/s | time vs length 0 | time vs plain model | spread of rounds |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['length']} | {row['batch']} | {row['tokens_per_s']:.1f} | "
            f"{row['time_vs_length_0']:.3f}× | {row['time_vs_plain']:.3f}× | "
            f"±{100 * row['spread'] / 2:.0f}% |"
        )
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    plot(args.out, lengths, batches, rows)
    print("\n".join(lines))


def plot(out: Path, lengths, batches, rows) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for batch in batches:
        points = [r for r in rows if r["batch"] == batch and r["length"] != PLAIN]
        axis.plot(
            [r["length"] for r in points], [r["tokens_per_s"] for r in points], "o-", label=f"batch {batch}"
        )
        plain = next(r for r in rows if r["batch"] == batch and r["length"] == PLAIN)
        axis.axhline(plain["tokens_per_s"], linestyle=":", color=axis.lines[-1].get_color())
    axis.set_xlabel("prefix length (vectors per layer)")
    axis.set_ylabel("new tokens per second")
    axis.set_title("Generation speed by prefix length (dotted: the plain model)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(out / "tokens_per_s_by_length.png", dpi=100)


if __name__ == "__main__":
    main()

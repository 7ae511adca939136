"""`prefixtune demo`: on a fresh machine, prefix-tune the bundled SmolLM2 on the bundled E2E sample
and show what the prefix changed: BLEU before and after, and a few generations side by side.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DEMO_STEPS = 300


def setup_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--steps", type=int, default=DEMO_STEPS, help="training steps (about 1-2 s each on 2 cores)"
    )
    parser.add_argument("--output", help="run folder (default: runs/demo-DATE-TIME)")
    parser.add_argument("--base", default="smollm2-135m", help="base model: folder, .gguf file or alias")
    parser.add_argument(
        "--eval-sources", type=int, default=30, help="distinct dev meaning representations scored"
    )
    parser.add_argument("--show", type=int, default=3, help="generations shown side by side")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_demo(args: argparse.Namespace) -> int:
    from prefixtune import load_prefix
    from prefixtune.data import bundled_e2e, read_dataset
    from prefixtune.engine.wrap import wrap
    from prefixtune.loading import load_base
    from prefixtune.train import TrainConfig, evaluate_prefix, train

    started = time.perf_counter()
    output = Path(args.output or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    config = TrainConfig(
        train=str(bundled_e2e("train")),
        dev=str(bundled_e2e("dev")),
        output=str(output),
        base=args.base,
        steps=args.steps,
        eval_every=max(args.steps // 3, 1),
        eval_sources=args.eval_sources,
        checkpoint_every=50,
        max_new_tokens=60,
    )
    print(f"loading {args.base} ...", flush=True)
    base, tokenizer = load_base(args.base)
    dev = read_dataset(config.dev)
    scoring = {"metrics": ("BLEU",), "max_sources": args.eval_sources, "max_new_tokens": 60, "num_beams": 1}
    print(
        f"scoring the frozen base model without a prefix on {args.eval_sources} E2E dev inputs ...",
        flush=True,
    )
    bare_model = wrap(base)
    bare, bare_rows = evaluate_prefix(bare_model, tokenizer, dev, bare=True, **scoring)
    bare_model.unload()
    print(
        f"training a prefix ({config.prefix.length} vectors per layer, "
        f"init from {config.prefix.init_text!r}) "
        f"for {config.steps} steps on {bundled_e2e('train').name} ...",
        flush=True,
    )
    result = train(config, model_and_tokenizer=(base, tokenizer), progress=not args.quiet)
    if result.interrupted:
        print(f"interrupted; continue with: prefixtune train --resume --output {output}")
        return 130
    model = load_prefix(result.model, result.prefix_path, name="best")
    tuned, tuned_rows = evaluate_prefix(model, tokenizer, dev, prefix="best", **scoring)
    _show(bare_rows, tuned_rows, args.show)
    minutes = (time.perf_counter() - started) / 60
    print(
        f"\nE2E dev BLEU ({args.eval_sources} inputs, greedy): base model {bare['BLEU']:.1f} -> "
        f"with prefix {tuned['BLEU']:.1f}   ({minutes:.1f} min in all)"
    )
    print(f"prefix saved to {result.prefix_path}  (prefixtune info {result.prefix_path})")
    print(f"loss curve: {output / 'curve.png'}, metrics: {output / 'metrics.jsonl'}")
    return 0


def _show(bare_rows, tuned_rows, count: int) -> None:
    for (source, before, refs), (_, after, _) in list(zip(bare_rows, tuned_rows, strict=True))[:count]:
        print(f"\ninput      : {source}")
        print(f"base model : {before or '(nothing)'}")
        print(f"with prefix: {after or '(nothing)'}")
        print(f"reference  : {refs[0]}")


COMMANDS = {"demo": (setup_demo, run_demo, "prefix-tune the bundled SmolLM2 on bundled E2E data, in minutes")}

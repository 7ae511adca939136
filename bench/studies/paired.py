"""Paired bootstrap of two `prefixtune evaluate --output` files: is A's BLEU above B's by more than chance?

Both files must hold the same sources in the same order (the same --data and selection options). Prints
one line per pair; --json writes the results to a file the write-ups quote.

    cd docs/studies/prompting && python ../../../bench/studies/paired.py few-shot.json instruction.json
    python bench/studies/paired.py A.json B.json C.json D.json   # pairs: A against B, C against D
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from prefixtune.errors import PrefixTuneError
from prefixtune.metrics import paired_bootstrap_bleu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", type=Path, nargs="+", help="evaluate outputs, two per comparison (A B)")
    parser.add_argument("--samples", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the comparisons here as JSON")
    args = parser.parse_args()
    if len(args.files) % 2:
        raise SystemExit("give the evaluate outputs in pairs: A B [A B ...]")
    results = [
        compare(a, b, args.samples, args.seed) for a, b in zip(args.files[::2], args.files[1::2], strict=True)
    ]
    for row in results:
        print(
            f"{row['a']} {row['bleu_a']:.2f} vs {row['b']} {row['bleu_b']:.2f}: "
            f"A-B {row['difference']:+.2f} [95%: {row['low']:+.2f}, {row['high']:+.2f}], "
            f"A ahead in {100 * row['a_wins']:.1f}% of {row['samples']} resamples of {row['inputs']} sources"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


def compare(path_a: Path, path_b: Path, samples: int, seed: int) -> dict:
    outputs_a, outputs_b = _outputs(path_a), _outputs(path_b)
    if [o["source"] for o in outputs_a] != [o["source"] for o in outputs_b]:
        raise SystemExit(f"{path_a} and {path_b} score different sources: evaluate both on the same data")
    try:
        result = paired_bootstrap_bleu(
            [o["output"] for o in outputs_a],
            [o["output"] for o in outputs_b],
            [o["references"] for o in outputs_a],
            samples=samples,
            seed=seed,
        )
    except PrefixTuneError as err:
        raise SystemExit(f"{path_a} against {path_b}: {err}") from None
    return {
        "a": str(path_a),
        "b": str(path_b),
        "bleu_a": result.bleu_a,
        "bleu_b": result.bleu_b,
        "difference": result.difference,
        "low": result.low,
        "high": result.high,
        "a_wins": result.a_wins,
        "samples": samples,
        "inputs": len(outputs_a),
    }


def _outputs(path: Path) -> list[dict]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise SystemExit(
            f"cannot read {path}: {err.strerror}. Give the file `evaluate --output` wrote."
        ) from None
    except json.JSONDecodeError as err:
        raise SystemExit(f"{path} is not JSON ({err.msg}, line {err.lineno}): was it cut short?") from None
    if not isinstance(data, dict) or "outputs" not in data:
        raise SystemExit(
            f"{path} holds no per-source outputs: it is not written by `prefixtune evaluate --output`"
        )
    return data["outputs"]


if __name__ == "__main__":
    main()

"""Serving throughput across 8 prefixes: the mixed-batch scheduler vs one prefix per batch.

One frozen SmolLM2-135M (fp32, CPU) holds 8 prefixes (length 10, random initialisation: their outputs
do not matter, their cost does). The server runs in this process on 127.0.0.1 (uvicorn in a thread);
`--clients` concurrent clients (closed loop: each sends its next request when the last one is
answered) send `--requests` completion requests per run over loopback with httpx. Request k names
prefix `k % 8` (shuffled with a fixed seed) and an E2E meaning representation from the bundled dev
sample as prompt; greedy decoding, `max_tokens` new tokens.

Peers, on the same model, the same requests and the same server code:

- `mixed`: `prefixtune serve`'s scheduler: every batch is filled with whatever requests wait, whatever
  prefix each names (rows carry their own prefix);
- `single`: the same scheduler with `--policy single`: a batch holds only requests naming the prefix of
  the oldest waiting request, the way serving must work when a batch can carry one prefix (PEFT:
  switch the active adapter, run the batch, switch again).

The peers alternate, `--rounds` times each (mixed, single, single, mixed, ...), so that the machine's
load drifts over both alike. Reported per peer: requests/s and completion tokens/s (over the summed
wall time of its runs), p50/p99 request latency, failed requests, mean batch size; and the ratio
mixed/single of the throughputs, overall and per round pair. Every request's text is compared
between the peers (greedy; a row's output should not depend on its batch).

    python bench/serve_throughput.py --out bench/results/serve_throughput.json

With `--open-loop`, requests arrive at fixed rates instead (Poisson), and the peers are the two
schedulers, continuous batching against whole batches (see `serve_open_loop.py`):

    python bench/serve_throughput.py --open-loop --requests 40 --rates 0.5 0.8 1.2 1.8 \
        --out bench/results/serve_open_loop.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

import httpx
import torch
import transformers

from prefixtune import PrefixConfig, add_prefix, load_base
from prefixtune.data import bundled_e2e, read_dataset
from prefixtune.serve import ServeConfig, create_app
from prefixtune.serve.background import BackgroundServer
from prefixtune.train.encode import prompt_text

BASE_NAME = "smollm2-135m"


def parse_args() -> argparse.Namespace:
    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=formatter)
    parser.add_argument("--prefixes", type=int, default=8)
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=32, help="requests per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs per peer")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--max-wait-ms", type=float, default=20.0)
    parser.add_argument("--prefix-length", type=int, default=10)
    parser.add_argument("--timeout", type=float, default=600.0, help="per request, seconds")
    parser.add_argument("--out", type=Path, default=Path("bench/results/serve_throughput.json"))
    parser.add_argument("--open-loop", action="store_true", help="Poisson arrivals, continuous vs batch")
    parser.add_argument("--rates", type=float, nargs="+", default=[0.5, 0.8, 1.2, 1.8], help="requests/s")
    parser.add_argument("--ttft-bound", type=float, default=2.0, help="p99 TTFT a sustained rate keeps, s")
    return parser.parse_args()


def build_requests(count: int, prefixes: int, max_tokens: int) -> list[dict]:
    sources = list(dict.fromkeys(e.source for e in read_dataset(bundled_e2e("dev"))))
    rng = random.Random(0)
    names = [f"p{k % prefixes}" for k in range(count)]
    rng.shuffle(names)
    return [
        {"model": name, "prompt": prompt_text(sources[k % len(sources)]), "max_tokens": max_tokens,
         "temperature": 0}
        for k, name in enumerate(names)
    ]  # fmt: skip


async def _client(client: httpx.AsyncClient, queue: list[tuple[int, dict]], results: dict) -> None:
    while queue:
        index, body = queue.pop(0)
        started = time.perf_counter()
        try:
            reply = await client.post("/v1/completions", json=body)
            ok = reply.status_code == 200
            data = reply.json() if ok else {"error": reply.text}
        except httpx.HTTPError as err:
            ok, data = False, {"error": repr(err)}
        latency = time.perf_counter() - started
        tokens = data["usage"]["completion_tokens"] if ok else 0
        text = data["choices"][0]["text"] if ok else None
        results[index] = {"ok": ok, "latency_s": latency, "tokens": tokens, "text": text,
                          "error": None if ok else data["error"]}  # fmt: skip


async def _load(url: str, requests: list[dict], clients: int, timeout: float) -> tuple[dict, float]:
    queue = list(enumerate(requests))
    results: dict[int, dict] = {}
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(_client(client, queue, results) for _ in range(clients)))
        wall = time.perf_counter() - started
    return results, wall


def run(model, tokenizer, policy: str, requests: list[dict], args: argparse.Namespace) -> dict:
    config = ServeConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, policy=policy)
    with BackgroundServer(create_app(model, tokenizer, config, BASE_NAME)) as server:
        results, wall = asyncio.run(_load(server.url, requests, args.clients, args.timeout))
        health = httpx.get(f"{server.url}/health", timeout=30).json()
    ok = [results[i] for i in sorted(results) if results[i]["ok"]]
    print(f"  {policy}: {len(ok)}/{len(requests)} ok in {wall:.1f} s, "
          f"mean batch {health['rows'] / max(health['batches'], 1):.1f}", flush=True)  # fmt: skip
    ordered = [results[i] for i in sorted(results)]
    return {"policy": policy, "wall_s": wall, "results": ordered, "health": health}


def summarise(runs: list[dict], policy: str) -> dict:
    mine = [r for r in runs if r["policy"] == policy]
    results = [x for r in mine for x in r["results"]]
    latencies = sorted(x["latency_s"] for x in results if x["ok"])
    wall = sum(r["wall_s"] for r in mine)
    ok = sum(x["ok"] for x in results)
    batches = sum(r["health"]["batches"] for r in mine)
    return {
        "requests": len(results),
        "failed": len(results) - ok,
        "wall_s": round(wall, 2),
        "requests_per_s": round(ok / wall, 4),
        "tokens_per_s": round(sum(x["tokens"] for x in results) / wall, 3),
        "latency_p50_s": round(statistics.median(latencies), 2) if latencies else None,
        "latency_p99_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 2)
        if latencies
        else None,
        "mean_batch_rows": round(sum(r["health"]["rows"] for r in mine) / max(batches, 1), 2),
        "batches": batches,
    }


def main() -> int:
    args = parse_args()
    torch.manual_seed(0)
    started = time.perf_counter()
    base, tokenizer = load_base(BASE_NAME)
    model = None
    for k in range(args.prefixes):
        config = PrefixConfig(length=args.prefix_length, reparam="flat", init="random", seed=k)
        model = add_prefix(model if model is not None else base, config, name=f"p{k}")
    if args.open_loop:
        return write_open_loop(model, tokenizer, args, started)
    requests = build_requests(args.requests, args.prefixes, args.max_tokens)
    order = ["mixed", "single"]
    runs = []
    for round_index in range(args.rounds):
        for policy in order if round_index % 2 == 0 else order[::-1]:
            print(f"round {round_index + 1}: {policy}", flush=True)
            runs.append({"round": round_index, **run(model, tokenizer, policy, requests, args)})
    summary = {policy: summarise(runs, policy) for policy in order}
    mixed, single = summary["mixed"], summary["single"]
    per_round = []
    for round_index in range(args.rounds):
        walls = {r["policy"]: r["wall_s"] for r in runs if r["round"] == round_index}
        per_round.append(round(walls["single"] / walls["mixed"], 3))
    texts = {p: [x["text"] for r in runs if r["policy"] == p and r["round"] == 0 for x in r["results"]]
             for p in order}  # fmt: skip
    same = sum(a == b and a is not None for a, b in zip(texts["mixed"], texts["single"], strict=True))
    report = {
        "command": " ".join(["python", *sys.argv]),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine(),
        "summary": summary,
        "throughput_ratio_mixed_over_single": round(mixed["requests_per_s"] / single["requests_per_s"], 3),
        "per_round_ratio": per_round,
        "identical_texts_round_1": f"{same}/{len(texts['mixed'])}",
        "total_minutes": round((time.perf_counter() - started) / 60, 1),
        "runs": [
            {k: v for k, v in r.items() if k != "results"}
            | {"latencies_s": [round(x["latency_s"], 2) for x in r["results"]]}
            for r in runs
        ],  # fmt: skip
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    shown = ("summary", "throughput_ratio_mixed_over_single", "per_round_ratio", "identical_texts_round_1")
    print(json.dumps({k: report[k] for k in shown}, indent=2))
    return 0


def machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def write_open_loop(model, tokenizer, args: argparse.Namespace, started: float) -> int:
    from serve_open_loop import open_loop_report  # a sibling script: bench/ is on sys.path

    report = {
        "command": " ".join(["python", *sys.argv]),
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "machine": machine(),
        **open_loop_report(model, tokenizer, BASE_NAME, args),
        "total_minutes": round((time.perf_counter() - started) / 60, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k not in ("runs", "settings", "machine")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

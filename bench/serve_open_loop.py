"""Open-loop serving load: continuous batching against whole batches (`serve_throughput.py --open-loop`).

Requests arrive at a fixed mean rate whatever the server does (Poisson: exponential gaps from a
fixed seed, one schedule scaled to each rate), so a slow server builds a queue instead of slowing
its clients down, as real traffic does. Each request names one of 8 prefixes, has a prompt of one
to three E2E meaning representations (about 30 to 150 tokens) and `max_tokens` drawn from 8 to 128,
greedy, streamed: time to first token (TTFT) is when the first text arrives, end-to-end when the
stream ends. The same requests, in the same order and at the same times, go to both schedulers; per
rate the schedulers alternate which goes first, so that the machine's load drifts over both alike.

Reported per scheduler and rate: completion tokens/s, TTFT and end-to-end p50/p99, failures; the
highest rate each sustains (every request answered and p99 TTFT within `--ttft-bound`); the ratios
continuous/batch; and whether every greedy text is identical across schedulers and rates.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time

import httpx

from prefixtune.data import bundled_e2e, read_dataset
from prefixtune.serve import ServeConfig, create_app
from prefixtune.serve.background import BackgroundServer
from prefixtune.train.encode import prompt_text

SCHEDULINGS = ("continuous", "batch")


def build_open_loop(count: int, prefixes: int, seed: int = 0) -> tuple[list[dict], list[float]]:
    """`count` request bodies and their arrival times at rate 1/s (divide by the rate to scale)."""
    sources = list(dict.fromkeys(e.source for e in read_dataset(bundled_e2e("dev"))))
    rng = random.Random(seed)
    bodies, arrivals, clock = [], [], 0.0
    for k in range(count):
        parts = rng.randint(1, 3)
        prompt = "\n".join(prompt_text(rng.choice(sources)) for _ in range(parts))
        bodies.append({"model": f"p{k % prefixes}", "prompt": prompt, "max_tokens": rng.randint(8, 128),
                       "temperature": 0, "stream": True})  # fmt: skip
        arrivals.append(clock)
        clock += rng.expovariate(1.0)
    return bodies, arrivals


async def _one(client: httpx.AsyncClient, body: dict, at: float, start: float) -> dict:
    await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
    sent = time.perf_counter()
    first, text, error = None, "", None
    try:
        async with client.stream("POST", "/v1/completions", json=body) as reply:
            if reply.status_code != 200:
                error = f"{reply.status_code}: {(await reply.aread()).decode()[:200]}"
            else:
                async for line in reply.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    data = json.loads(line[6:])
                    if "error" in data:
                        error = data["error"]["message"]
                        break
                    piece = data["choices"][0]["text"]
                    if first is None and piece:
                        first = time.perf_counter()
                    text += piece
    except httpx.HTTPError as err:
        error = repr(err)
    end = time.perf_counter()
    return {"ok": error is None, "ttft_s": (first or end) - sent, "e2e_s": end - sent, "text": text,
            "tokens": 0, "error": error}  # fmt: skip


async def _drive(
    url: str, bodies: list[dict], arrivals: list[float], timeout: float
) -> tuple[list[dict], float]:
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        start = time.perf_counter()
        results = await asyncio.gather(
            *(_one(client, b, at, start) for b, at in zip(bodies, arrivals, strict=True))
        )
        return list(results), time.perf_counter() - start


def run_open_loop(
    model, tokenizer, base_name: str, scheduling: str, rate: float, bodies, arrivals, args
) -> dict:
    """One run: a fresh server with `scheduling`, the requests sent at `rate` per second."""
    config = ServeConfig(max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, scheduling=scheduling)
    times = [t / rate for t in arrivals]
    with BackgroundServer(create_app(model, tokenizer, config, base_name)) as server:
        results, wall = asyncio.run(_drive(server.url, bodies, times, args.timeout))
        health = httpx.get(f"{server.url}/health", timeout=30).json()
    ok = [r for r in results if r["ok"]]
    ttft, e2e = _quantiles([r["ttft_s"] for r in ok]), _quantiles([r["e2e_s"] for r in ok])
    summary = {
        "scheduling": scheduling,
        "rate": rate,
        "failed": len(results) - len(ok),
        "wall_s": round(wall, 2),
        "tokens_per_s": round(health["tokens"] / wall, 2),
        "requests_per_s": round(len(ok) / wall, 3),
        "ttft_p50_s": ttft[0],
        "ttft_p99_s": ttft[1],
        "e2e_p50_s": e2e[0],
        "e2e_p99_s": e2e[1],
        "mean_rows_per_join_or_batch": round(health["rows"] / max(health["batches"], 1), 2),
        "largest_batch": health["largest_batch"],
    }
    print("  " + json.dumps(summary), flush=True)
    return {**summary, "texts": [r["text"] if r["ok"] else None for r in results],
            "errors": [r["error"] for r in results if not r["ok"]][:5]}  # fmt: skip


def _quantiles(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return round(statistics.median(ordered), 3), round(p99, 3)


def sustained(runs: list[dict], scheduling: str, bound: float) -> float | None:
    """The highest rate at which `scheduling` answered everyone with p99 TTFT within `bound` seconds."""
    good = [r["rate"] for r in runs if r["scheduling"] == scheduling and r["failed"] == 0
            and r["ttft_p99_s"] is not None and r["ttft_p99_s"] <= bound]  # fmt: skip
    return max(good, default=None)


def open_loop_report(model, tokenizer, base_name: str, args) -> dict:
    bodies, arrivals = build_open_loop(args.requests, args.prefixes)
    runs = []
    for index, rate in enumerate(args.rates):
        order = SCHEDULINGS if index % 2 == 0 else SCHEDULINGS[::-1]
        for scheduling in order:
            print(f"rate {rate}/s: {scheduling}", flush=True)
            runs.append(run_open_loop(model, tokenizer, base_name, scheduling, rate, bodies, arrivals, args))
    reference = next(r["texts"] for r in runs if r["failed"] == 0)
    differing = sum(a != b for r in runs for a, b in zip(r["texts"], reference, strict=True))
    rates = {s: sustained(runs, s, args.ttft_bound) for s in SCHEDULINGS}
    pairs = []
    for rate in args.rates:
        new, old = (next(r for r in runs if r["rate"] == rate and r["scheduling"] == s) for s in SCHEDULINGS)
        pairs.append({
            "rate": rate,
            "ttft_p99_continuous_over_batch": _ratio(new["ttft_p99_s"], old["ttft_p99_s"]),
            "e2e_p99_continuous_over_batch": _ratio(new["e2e_p99_s"], old["e2e_p99_s"]),
            "tokens_per_s_continuous_over_batch": _ratio(new["tokens_per_s"], old["tokens_per_s"]),
        })  # fmt: skip
    return {
        "mean_max_tokens": round(statistics.mean(b["max_tokens"] for b in bodies), 1),
        "ttft_bound_s": args.ttft_bound,
        "sustained_rate": rates,
        "sustained_ratio": _ratio(rates["continuous"], rates["batch"]),
        "per_rate": pairs,
        "greedy_texts_differing": f"{differing} of {len(runs) * len(bodies)} (each against the first run's)",
        "runs": [{k: v for k, v in r.items() if k != "texts"} for r in runs],
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None

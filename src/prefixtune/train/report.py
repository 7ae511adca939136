"""What a run reports: a JSONL metrics log, a loss/metric curve as PNG, and a progress line."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch

try:
    import resource
except ImportError:  # Windows: no getrusage; the CPU peak is then not reported
    resource = None  # type: ignore[assignment]

LOG = "metrics.jsonl"
CURVE = "curve.png"


def append_log(folder: Path, record: dict[str, Any]) -> None:
    with open(folder / LOG, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


def read_log(folder: Path) -> list[dict[str, Any]]:
    path = folder / LOG
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a kill: the run will write it again
            break
    return records


def truncate_log(folder: Path, last_step: int) -> None:
    """Keep only records up to `last_step` (a resumed run rewrites what came after its checkpoint)."""
    kept = [r for r in read_log(folder) if r.get("step", 0) <= last_step]
    text = "".join(json.dumps(r) + "\n" for r in kept)
    temporary = folder / f".{LOG}.tmp"
    temporary.write_text(text, encoding="utf-8")
    temporary.replace(folder / LOG)


# Linux keeps a process's resident high-water mark (VmHWM) and lets it be reset to the current size by
# writing 5 to clear_refs, so runs of one sweep, which share a process, each report their own peak.
CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")


def reset_peak_memory(device: torch.device) -> None:
    """Start counting a run's peak memory afresh: a GPU's allocator statistics, or on Linux the
    process's resident high-water mark (see `peak_memory_mb`)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        CLEAR_REFS.write_text("5")
    except OSError:  # not Linux, or a kernel that refuses: the peak then counts from the start
        pass


def peak_memory_mb(device: torch.device) -> float | None:
    """The run's peak memory in MiB: tensors allocated on a GPU since `reset_peak_memory`; on the CPU
    the process's peak resident size, since that reset where Linux allows it (VmHWM), otherwise since
    the process began (`ru_maxrss`: runs of one sweep then report at least an earlier run's peak)."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    high_water = _status_kib("VmHWM")
    if high_water is not None:
        return round(high_water / 2**10, 1)
    if resource is None:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return round(peak / (2**20 if sys.platform == "darwin" else 2**10), 1)


def _status_kib(field: str) -> int | None:
    """A `field:   N kB` line of /proc/self/status, in KiB; None where there is no such file."""
    try:
        lines = STATUS.read_text(encoding="ascii").splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return None


def plot_curve(folder: Path) -> Path | None:
    """Training loss, dev loss and dev BLEU against steps, as folder/curve.png."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    records = read_log(folder)
    train = [(r["step"], r["loss"]) for r in records if r.get("kind") == "train"]
    dev = [r for r in records if r.get("kind") == "eval"]
    fig, left = plt.subplots(figsize=(7, 4))
    if train:
        left.plot(*zip(*train, strict=True), label="train loss", color="tab:blue", alpha=0.7)
    if dev:
        left.plot(
            [r["step"] for r in dev], [r["dev_loss"] for r in dev], "o-", label="dev loss", color="tab:cyan"
        )
    left.set_xlabel("step")
    left.set_ylabel("loss")
    left.legend(loc="upper left")
    if any("BLEU" in r for r in dev):
        right = left.twinx()
        points = [(r["step"], r["BLEU"]) for r in dev if "BLEU" in r]
        right.plot(*zip(*points, strict=True), "s-", color="tab:red", label="dev BLEU")
        right.set_ylabel("BLEU")
        right.legend(loc="upper right")
    fig.tight_layout()
    path = folder / CURVE
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path

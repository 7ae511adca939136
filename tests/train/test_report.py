"""The CPU peak memory a run reports is its own, even when an earlier run of the process peaked higher."""

from __future__ import annotations

import os

import pytest
import torch

from prefixtune.train import report

CPU = torch.device("cpu")


def _can_reset() -> bool:
    return os.access(report.CLEAR_REFS, os.W_OK) and report._status_kib("VmHWM") is not None


@pytest.mark.skipif(not _can_reset(), reason="needs Linux's /proc/self/clear_refs")
def test_a_later_run_does_not_inherit_an_earlier_peak() -> None:
    report.reset_peak_memory(CPU)  # so that the test process's own earlier peak (other tests) does not count
    block = bytearray(400 * 2**20)  # an earlier run's peak: 400 MiB, touched so that it is resident
    block[:: 4096] = b"\x01" * len(block[:: 4096])
    earlier = report.peak_memory_mb(CPU)
    del block  # a block this large is given back to the system at once
    report.reset_peak_memory(CPU)
    later = report.peak_memory_mb(CPU)
    assert earlier is not None and later is not None
    assert later < earlier - 300, (earlier, later)


def test_without_proc_the_peak_falls_back_to_the_process_peak(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(report, "STATUS", tmp_path / "missing")
    monkeypatch.setattr(report, "CLEAR_REFS", tmp_path / "no" / "clear_refs")
    report.reset_peak_memory(CPU)  # refused quietly
    peak = report.peak_memory_mb(CPU)
    if report.resource is None:
        assert peak is None
    else:
        maxrss = report.resource.getrusage(report.resource.RUSAGE_SELF).ru_maxrss
        assert peak == pytest.approx(maxrss / 2**10, abs=0.1)


def test_status_fields_are_read_in_kib(monkeypatch, tmp_path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nVmHWM:\t  123456 kB\nVmRSS:\t   1000 kB\n", encoding="ascii")
    monkeypatch.setattr(report, "STATUS", status)
    assert report._status_kib("VmHWM") == 123456
    assert report._status_kib("VmSwap") is None
    assert report.peak_memory_mb(CPU) == round(123456 / 1024, 1)

"""Paired bootstrap resampling (Koehn, 2004): is one system's BLEU above another's by more than chance?

Two systems' outputs for the same inputs are resampled together, inputs drawn with replacement, and
corpus BLEU is recomputed for both on every sample. The spread of the difference says how much of it
the choice of inputs alone could produce: a difference whose interval holds 0 is not a finding on this
many inputs. Only inputs are resampled; the spread from training seeds is a separate question.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from prefixtune.errors import PrefixTuneError
from prefixtune.metrics.mteval import BLEU_ORDER, bleu_from_counts, bleu_statistics


@dataclass(frozen=True)
class PairedBootstrap:
    """BLEU (0-100) of systems A and B on all inputs, and how their difference varies over resamples."""

    bleu_a: float
    bleu_b: float
    low: float
    """Lower end of the interval of BLEU(A) - BLEU(B) over resamples."""
    high: float
    """Upper end of that interval."""
    a_wins: float
    """Share of resamples on which A scored above B."""
    samples: int
    confidence: float

    @property
    def difference(self) -> float:
        return self.bleu_a - self.bleu_b

    @property
    def significant(self) -> bool:
        """The interval lies on one side of 0."""
        return self.low > 0 or self.high < 0


def paired_bootstrap_bleu(
    hypotheses_a: Sequence[str],
    hypotheses_b: Sequence[str],
    references: Sequence[Sequence[str]],
    samples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedBootstrap:
    """Compare two systems' corpus BLEU on the same inputs by paired bootstrap resampling.

    Args:
        hypotheses_a, hypotheses_b: one output per input from each system, in the same order.
        references: one list of reference strings per input.
        samples: number of resamples; confidence: the interval's coverage (0.95: 2.5th to 97.5th percentile).
    """
    if not len(hypotheses_a) == len(hypotheses_b) == len(references):
        raise PrefixTuneError(
            f"the two systems and the references must cover the same inputs: got {len(hypotheses_a)}, "
            f"{len(hypotheses_b)} and {len(references)}. Score both systems on the same data."
        )
    if not references:
        raise PrefixTuneError("nothing to compare: no inputs.")
    if samples < 1 or not 0 < confidence < 1:
        raise PrefixTuneError("samples must be at least 1 and confidence between 0 and 1 (e.g. 0.95).")
    stats_a = np.array(bleu_statistics(hypotheses_a, references), dtype=np.int64)  # (N, 2 + 2 * order)
    stats_b = np.array(bleu_statistics(hypotheses_b, references), dtype=np.int64)
    draws = np.random.default_rng(seed).integers(0, len(references), size=(samples, len(references)))
    sums_a, sums_b = stats_a[draws].sum(axis=1), stats_b[draws].sum(axis=1)  # (samples, 2 + 2 * order)
    differences = np.array([_bleu(a) - _bleu(b) for a, b in zip(sums_a, sums_b, strict=True)])
    tail = (1 - confidence) / 2
    return PairedBootstrap(
        bleu_a=_bleu(stats_a.sum(axis=0)),
        bleu_b=_bleu(stats_b.sum(axis=0)),
        low=float(np.quantile(differences, tail)),
        high=float(np.quantile(differences, 1 - tail)),
        a_wins=float((differences > 0).mean()),
        samples=samples,
        confidence=confidence,
    )


def _bleu(row: np.ndarray) -> float:
    sys_len, ref_len, *counts = (int(x) for x in row)
    return 100.0 * bleu_from_counts(counts[:BLEU_ORDER], counts[BLEU_ORDER:], sys_len, ref_len)

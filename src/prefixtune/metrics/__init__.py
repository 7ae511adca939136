"""Evaluation metrics for data-to-text generation (no torch / transformers here).

- `e2e_scores(hypotheses, references, metrics=E2E_METRICS)`: BLEU, NIST, METEOR, ROUGE_L, CIDEr as the
  official E2E NLG Challenge scorer (tuetschek/e2e-metrics) computes them, multi-reference; and TER
  (`metrics=("TER",)`), which WebNLG reports.
- `bleu(hypotheses, references)`: the same BLEU alone, cheap, for evaluation during training.
- `paired_bootstrap_bleu(a, b, references)`: whether system A's BLEU is above B's by more than the
  choice of inputs explains (paired bootstrap resampling).

Needs the `eval` extra (`pip install 'prefixtune[eval]'`: sacrebleu, pycocoevalcap); METEOR also needs Java.
"""

from prefixtune.metrics.bootstrap import PairedBootstrap, paired_bootstrap_bleu
from prefixtune.metrics.e2e import E2E_METRICS, METRICS, bleu, e2e_scores

__all__ = ["E2E_METRICS", "METRICS", "PairedBootstrap", "bleu", "e2e_scores", "paired_bootstrap_bleu"]

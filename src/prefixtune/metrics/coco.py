"""METEOR, ROUGE-L and CIDEr as the E2E scorer gets them from the MS-COCO caption evaluation code.

Inputs are lists of token lists from `ptb.ptb_tokenize` (the COCO code's tokenization). Scores are
returned on the scale that code uses (0-1 for METEOR and ROUGE-L, 0-10 for CIDEr).

- METEOR: METEOR 1.5 (`-l en -norm`), the Java jar shipped in the `pycocoevalcap` package; corpus-level
  score from aggregated statistics. Needs a Java runtime on PATH.
- ROUGE-L: pycocoevalcap's `Rouge` (per segment, the best LCS precision and the best LCS recall over the
  references, F-measure with beta = 1.2; averaged over segments).
- CIDEr: pycocoevalcap's `Cider`, which is CIDEr-D (Vedantam et al. 2015): TF-IDF n-grams (n = 1..4)
  with document frequencies from the references of the set being scored, clipped counts, a Gaussian
  length penalty (sigma = 6), times 10. With one segment every IDF is 0, so CIDEr needs a set of inputs.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from prefixtune.errors import PrefixTuneError
from prefixtune.metrics._deps import require

JAVA_HINT = (
    "Install a Java runtime (8 or newer), e.g. `apt-get install default-jre-headless`, or leave METEOR "
    "out: e2e_scores(hyps, refs, metrics=['BLEU', 'NIST', 'ROUGE_L', 'CIDEr'])."
)


def _coco_inputs(hyp_tokens: list[list[str]], ref_tokens: list[list[list[str]]]) -> tuple[dict, dict]:
    references = {i: [" ".join(ref) for ref in refs] for i, refs in enumerate(ref_tokens)}
    hypotheses = {i: [" ".join(hyp)] for i, hyp in enumerate(hyp_tokens)}
    return references, hypotheses


def rouge_l(hyp_tokens: list[list[str]], ref_tokens: list[list[list[str]]]) -> float:
    rouge = require("pycocoevalcap.rouge.rouge", "pycocoevalcap", "ROUGE_L")
    score, _ = rouge.Rouge().compute_score(*_coco_inputs(hyp_tokens, ref_tokens))
    return float(score)


def cider(hyp_tokens: list[list[str]], ref_tokens: list[list[list[str]]]) -> float:
    cider_module = require("pycocoevalcap.cider.cider", "pycocoevalcap", "CIDEr")
    score, _ = cider_module.Cider().compute_score(*_coco_inputs(hyp_tokens, ref_tokens))
    return float(score)


def java_executable() -> str:
    """The `java` on PATH, or a PrefixTuneError that says how to get one."""
    java = shutil.which("java")
    if java is None:
        raise PrefixTuneError(
            f"METEOR runs the METEOR 1.5 Java program, but no `java` is on PATH. {JAVA_HINT}"
        )
    return java


def meteor_jar() -> Path:
    module = require("pycocoevalcap.meteor.meteor", "pycocoevalcap", "METEOR")
    jar = Path(module.__file__).with_name("meteor-1.5.jar")
    if not jar.is_file():
        raise PrefixTuneError(
            f"{jar} is missing: reinstall pycocoevalcap (pip install --force-reinstall pycocoevalcap)."
        )
    return jar


def meteor(hyp_tokens: list[list[str]], ref_tokens: list[list[list[str]]], memory: str = "2G") -> float:
    """Corpus METEOR 1.5 (0-1), talking to the jar's `-stdio` mode as the COCO code does."""
    java, jar = java_executable(), meteor_jar()

    def clean(tokens: list[str]) -> str:
        return " ".join(tokens).replace("|||", "")

    requests = [
        " ||| ".join(["SCORE", *(clean(ref) for ref in refs), clean(hyp)]) + "\n"
        for hyp, refs in zip(hyp_tokens, ref_tokens, strict=True)
    ]
    command = [java, "-jar", f"-Xmx{memory}", str(jar), "-", "-", "-stdio", "-l", "en", "-norm"]
    with tempfile.TemporaryFile() as errors:
        with subprocess.Popen(
            command, cwd=jar.parent, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=errors
        ) as process:
            writer = threading.Thread(target=_write_lines, args=(process.stdin, requests), daemon=True)
            writer.start()
            stats = [_read_line(process, errors) for _ in requests]
            writer.join()
            process.stdin.write(("EVAL ||| " + " ||| ".join(stats) + "\n").encode("utf-8"))
            process.stdin.flush()
            for _ in requests:  # one score per segment, then the corpus score
                _read_line(process, errors)
            score = float(_read_line(process, errors))
            process.stdin.close()
            process.wait(timeout=60)
    return score


def _write_lines(stream, lines: list[str]) -> None:
    try:
        for line in lines:
            stream.write(line.encode("utf-8"))
        stream.flush()
    except (BrokenPipeError, ValueError):
        pass  # the reader reports the failure with Java's own message


def _read_line(process: subprocess.Popen, errors) -> str:
    line = process.stdout.readline().decode("utf-8").strip()
    if not line:
        process.kill()
        errors.seek(0)
        detail = errors.read().decode("utf-8", "replace").strip()[-800:] or "no error output"
        raise PrefixTuneError(
            f"the METEOR Java program stopped unexpectedly ({detail}). It needs Java 8+ and about 2 GB of "
            f"memory. {JAVA_HINT}"
        )
    return line

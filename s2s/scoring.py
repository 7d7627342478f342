"""Corpus BLEU and chrF: the one place s2s scores translations (sacreBLEU, with its defaults).

Training's validation, ``s2s evaluate`` and the quality benchmark all score here. So a BLEU in
``metrics.jsonl``, in ``scores.json`` and in the benchmark's table is the same measure, and the
signature printed with it says which one.
"""

from __future__ import annotations

import sacrebleu

__all__ = ["score"]


def score(hypotheses: list[str], references: list[str]) -> dict:
    """Corpus BLEU and chrF of ``hypotheses`` against one reference each.

    The metrics keep sacreBLEU's defaults (13a tokenisation, mixed case, exponential smoothing;
    chrF with character order 6 and beta 2), so the numbers equal ``sacrebleu.corpus_bleu`` and
    ``sacrebleu.corpus_chrf`` and can be compared with published ones.

    Args:
        hypotheses: the system's outputs, one per sentence (or document).
        references: the reference translations, aligned with ``hypotheses``.

    Returns:
        ``{"bleu": float, "chrf": float, "signature": {"bleu": str, "chrf": str}}``, the scores
        rounded to 2 places (as sacreBLEU prints them), the signatures naming the settings.
    """
    bleu, chrf = sacrebleu.BLEU(), sacrebleu.CHRF()
    return {
        "bleu": round(bleu.corpus_score(hypotheses, [references]).score, 2),
        "chrf": round(chrf.corpus_score(hypotheses, [references]).score, 2),
        "signature": {"bleu": str(bleu.get_signature()), "chrf": str(chrf.get_signature())},
    }

"""Placeholders in software text, and whether a translation keeps them.

Catalogs of user-interface strings (the gettext corpus, most bulk translation of software) carry
spans a program fills in or interprets: printf conversions (``%s``, ``%1$d``, ``%-5.2f``,
``%hhu``), Python's (``%(name)s``, ``{0}``, ``{name!r:>10}``), markup (``<b>``, ``</a>``,
``&amp;``) and escapes (``\\n``). A translation that drops, adds or alters one breaks the program
that uses it, however fluent it reads, so ``s2s evaluate`` reports how many survive next to BLEU.

A sentence keeps its placeholders when the translation holds exactly the same multiset of them
(order may change: languages reorder arguments, which is what ``%1$s`` is for).
"""

from __future__ import annotations

import re
from collections import Counter

__all__ = ["PLACEHOLDER", "placeholders", "fidelity"]

# One alternation, longest forms first (``%(name)s`` before ``%s``). No space flag in printf
# conversions: "50% sure" is prose, not "% s".
PLACEHOLDER = re.compile(
    "|".join(
        [
            r"%\([A-Za-z_][\w.]*\)[-#0+]*\d*(?:\.\d+)?[diouxXeEfFgGcrsa]",  # %(name)s
            r"%(?:\d+\$)?[-#0+']*(?:\d+|\*)?(?:\.(?:\d+|\*))?"  # %1$-5.2
            r"(?:hh|h|ll|l|L|q|j|z|t)?[diouxXeEfFgGaAcspn@]",  # ... hhu, lld, f, @ (Obj-C)
            r"%%",  # a literal percent sign in a format string
            r"\{[A-Za-z0-9_]*(?:[.\[][^{}\s]*)?(?:![rsa])?(?::[^{}]*)?\}",  # {}, {0}, {a.b!r:>9}
            r"</?[A-Za-z][\w:-]*(?:\s[^<>]*)?/?>",  # <b>, </a>, <br/>, <a href="...">
            r"&(?:[A-Za-z]+|#\d+|#x[0-9A-Fa-f]+);",  # &amp; &#39; &#x2014;
            r"\\[nrt\\\"']",  # \n \t \\ as written in the source text
        ]
    )
)


def placeholders(text: str) -> Counter[str]:
    """The multiset of placeholders in ``text``."""
    return Counter(PLACEHOLDER.findall(text))


def fidelity(sources: list[str], translations: list[str]) -> dict:
    """How many translations keep their source's placeholders.

    Args:
        sources: the source sentences (or documents).
        translations: one per source, aligned.

    Returns:
        ``{"sentences": N, "kept": K, "fidelity": 100 * K / N, "indices": [...]}`` over the N
        sources that hold a placeholder (``indices``: which they are, for scoring them apart);
        ``fidelity`` is None when no source holds one.
    """
    indices = [i for i, source in enumerate(sources) if PLACEHOLDER.search(source)]
    kept = sum(placeholders(sources[i]) == placeholders(translations[i]) for i in indices)
    share = round(100 * kept / len(indices), 2) if indices else None
    return {"sentences": len(indices), "kept": kept, "fidelity": share, "indices": indices}

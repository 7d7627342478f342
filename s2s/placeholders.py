"""Placeholders in software text, and whether a translation keeps them.

Catalogs of user-interface strings (the gettext corpus, most bulk translation of software) carry
spans a program fills in or interprets: printf conversions (``%s``, ``%1$d``, ``%-5.2f``,
``%hhu``), Python's (``%(name)s``, ``{0}``, ``{name!r:>10}``), markup (``<b>``, ``</a>``,
``&amp;``) and escapes (``\\n``). A translation that drops, adds or alters one breaks the program
that uses it, however fluent it reads, so ``s2s evaluate`` reports how many survive next to BLEU.

A sentence keeps its placeholders when the translation holds exactly the same multiset of them
(order may change: languages reorder arguments, which is what ``%1$s`` is for).

Protection: a model never has to spell a placeholder. :func:`mask` replaces each span by a
numbered sentinel (``%s`` -> ``｟1｠``), each one piece of the tokenizer (prepare trains the
SentencePiece model with them as user-defined symbols), and :func:`restore` puts the spans back
after translation, or says it cannot (a sentinel lost, doubled or invented). Training pairs are
masked the same way (:func:`mask_pair`, spans found on both sides only), so the model learns to
copy sentinels, which it does far more reliably than ``%hhu`` spelled as four pieces, and the
search (s2s.search.Sentinels) lets it write each of a source's sentinels exactly once and no other.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass

__all__ = [
    "PLACEHOLDER",
    "SENTINELS",
    "Masked",
    "placeholder_pattern",
    "placeholders",
    "fidelity",
    "mask",
    "mask_pair",
    "restore",
    "restore_outputs",
    "strip_sentinels",
    "hold_sentinels",
]

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


# The sentinels a span is masked with, in the order the spans occur. 16: a catalog sentence with
# more placeholders is rare (the spans past the 16th stay as they are, still checked).
SENTINELS = tuple(f"｟{i}｠" for i in range(1, 17))
_SENTINEL = re.compile(r"｟(\d+)｠")
_SENTINEL_MARK = "｟"  # a text holding it is never masked: its own text could read as a sentinel


def hold_sentinels(*tokenizers) -> bool:
    """Whether every one of ``tokenizers`` (s2s.tokenizer.Tokenizer: a model's source and target
    ones) holds each sentinel as a piece: a model trained on masked pairs, which can copy them."""
    return all(t.has_pieces(SENTINELS) for t in tokenizers)


def placeholder_pattern(extra: str = "") -> re.Pattern:
    """:data:`PLACEHOLDER`, with a user's regex ``extra`` tried first where given.

    Raises:
        re.error: ``extra`` is no regular expression.
    """
    return re.compile(f"(?:{extra})|{PLACEHOLDER.pattern}") if extra else PLACEHOLDER


def _spans(text: str, pattern: re.Pattern) -> list[re.Match]:
    return [m for m in pattern.finditer(text) if m.group(0)]  # a user regex may match ""


def placeholders(text: str, pattern: re.Pattern = PLACEHOLDER) -> Counter[str]:
    """The multiset of placeholders in ``text``."""
    return Counter(m.group(0) for m in _spans(text, pattern))


@dataclass(frozen=True)
class Masked:
    """A text with its placeholders replaced: ``spans[i]`` by ``SENTINELS[i]``."""

    text: str
    spans: tuple[str, ...] = ()


def mask(text: str, pattern: re.Pattern = PLACEHOLDER) -> Masked:
    """Replace the placeholders of ``text`` by sentinels, in order (at most len(SENTINELS))."""
    if _SENTINEL_MARK in text:
        return Masked(text)
    spans = _spans(text, pattern)[: len(SENTINELS)]
    return Masked(
        _replace(text, [(m, SENTINELS[i]) for i, m in enumerate(spans)]),
        tuple(m.group(0) for m in spans),
    )


def mask_pair(source: str, target: str, pattern: re.Pattern = PLACEHOLDER) -> tuple[Masked, Masked]:
    """A training pair with the placeholders that occur on both sides masked alike (the same
    ``spans`` on both).

    Each target span is paired with the first unpaired source span of the same text; paired spans
    are numbered in source order, so the sentinels a model sees in a source are ``｟1｠..｟n｠``
    as :func:`mask` makes them at translation. Spans found on one side only stay as they are: a
    sentinel that had no counterpart would teach the model to drop or invent them.
    """
    if _SENTINEL_MARK in source or _SENTINEL_MARK in target:
        return Masked(source), Masked(target)
    src_spans, tgt_spans = _spans(source, pattern), _spans(target, pattern)
    if not src_spans or not tgt_spans:
        return Masked(source), Masked(target)
    unpaired: dict[str, list[int]] = defaultdict(list)  # span text -> source positions, in order
    for i, m in enumerate(src_spans):
        unpaired[m.group(0)].append(i)
    partner: dict[int, re.Match] = {}  # source position -> its target span
    for m in tgt_spans:
        if unpaired[m.group(0)]:
            partner[unpaired[m.group(0)].pop(0)] = m
    paired = sorted(partner)[: len(SENTINELS)]
    src_sub = [(src_spans[i], SENTINELS[n]) for n, i in enumerate(paired)]
    tgt_sub = sorted(((partner[i], SENTINELS[n]) for n, i in enumerate(paired)), key=_start)
    spans = tuple(src_spans[i].group(0) for i in paired)
    return Masked(_replace(source, src_sub), spans), Masked(_replace(target, tgt_sub), spans)


def restore(text: str, spans: tuple[str, ...]) -> str | None:
    """``text`` with each sentinel replaced by its span; None unless every one of ``spans``'s
    sentinels occurs exactly once and no other does."""
    found = sorted(int(n) for n in _SENTINEL.findall(text))
    if found != list(range(1, len(spans) + 1)):
        return None
    return _SENTINEL.sub(lambda m: spans[int(m.group(1)) - 1], text)


def restore_outputs(
    masked: list[Masked], sources: list[str], outputs: list[str | None]
) -> tuple[list[str | None], list[int]]:
    """The outputs of ``masked`` (None: failed) with their spans put back, and which of them
    to translate again unmasked: those whose sentinels did not come back exactly once each (left
    as they are). A sentinel written where ``sources[i]`` had none is removed.
    """
    texts, retry = list(outputs), []
    for i, (m, out) in enumerate(zip(masked, outputs)):
        if out is None:
            continue
        if not m.spans:
            texts[i] = strip_sentinels(out, sources[i])
        elif (restored := restore(out, m.spans)) is None:
            retry.append(i)
        else:
            texts[i] = restored
    return texts, retry


def strip_sentinels(text: str, source: str = "") -> str:
    """``text`` (a model's output for ``source``) without sentinels, unless ``source`` holds
    sentinel-like text of its own (then nothing is masked, and nothing removed)."""
    if _SENTINEL_MARK in source or not _SENTINEL.search(text):
        return text
    return " ".join(_SENTINEL.sub(" ", text).split())


def _start(item: tuple[re.Match, str]) -> int:
    return item[0].start()


def _replace(text: str, subs: list[tuple[re.Match, str]]) -> str:
    """``text`` with each match of ``subs`` (in text order) replaced by its string."""
    out, end = [], 0
    for m, new in subs:
        out += [text[end : m.start()], new]
        end = m.end()
    return "".join(out) + text[end:]


def fidelity(
    sources: list[str], translations: list[str], pattern: re.Pattern = PLACEHOLDER
) -> dict:
    """How many translations keep their source's placeholders.

    Args:
        sources: the source sentences (or documents).
        translations: one per source, aligned.

    Returns:
        ``{"sentences": N, "kept": K, "fidelity": 100 * K / N, "indices": [...]}`` over the N
        sources that hold a placeholder (``indices``: which they are, for scoring them apart);
        ``fidelity`` is None when no source holds one.
    """
    indices = [i for i, source in enumerate(sources) if _spans(source, pattern)]
    kept = sum(
        placeholders(sources[i], pattern) == placeholders(translations[i], pattern) for i in indices
    )
    share = round(100 * kept / len(indices), 2) if indices else None
    return {"sentences": len(indices), "kept": kept, "fidelity": share, "indices": indices}

"""Documents <-> sentences: split a document into segments and put the translations back in place.

A document is cut into lines, and each line into sentences. Everything between two segments
(spaces, line breaks, blank lines between paragraphs) is kept verbatim as a separator, so the
translated document has the layout of the original::

    text == seps[0] + segs[0] + seps[1] + segs[1] + ... + segs[n-1] + seps[n]

The sentence rule is deliberately simple and fast (it runs on every document of a nightly job):
a sentence ends at ``.``, ``!``, ``?`` or ``…`` (optionally followed by closing quotes or brackets)
when whitespace and an upper-case letter, digit or opening quote follow, unless the word before
the full stop is a known abbreviation or a single letter ("Dr. Smith", "J. R. R. Tolkien").
Libraries such as pysbd know more rules but neither keep the exact separators nor run at this
speed.
"""

from __future__ import annotations

import re

__all__ = ["split_document", "join_document"]

# A line's text without its surrounding whitespace: stays within one line because neither part
# of the pattern matches a newline.
_LINE_TEXT = re.compile(r"\S(?:[^\n]*\S)?")
# End of sentence: terminal punctuation, closing quotes/brackets, then the whitespace between
# sentences (group 1), then (not consumed) the start of the next sentence.
_BOUNDARY = re.compile(r"[.!?…]+[\"'”’»)\]]*(\s+)(?=[\"'“‘«(\[]?[\dA-ZÀ-ÖØ-ÞĀ-ſА-Я])")
_ABBREVIATION_LIST = (
    "mr mrs ms dr prof sr jr st vs etc e.g i.e cf fig no vol ch sec approx dept inc ltd co corp "
    "jan feb mar apr jun jul aug sep sept oct nov dec mt ft gen col lt sgt rev"
)
_ABBREVIATIONS = frozenset(_ABBREVIATION_LIST.split())


def _is_abbreviation(line: str, punct_start: int) -> bool:
    """Does the word ending at ``punct_start`` (where the full stop is) abbreviate something?"""
    if line[punct_start] != ".":
        return False
    word = line[:punct_start].rsplit(None, 1)[-1] if line[:punct_start].strip() else ""
    word = word.lstrip("\"'“‘«([").lower()
    return (len(word) == 1 and word.isalpha()) or word in _ABBREVIATIONS


def _sentence_spans(line: str, offset: int) -> list[tuple[int, int]]:
    """(start, end) of each sentence of one line of text, in document coordinates."""
    spans, start = [], 0
    for match in _BOUNDARY.finditer(line):
        if _is_abbreviation(line, match.start()):
            continue
        spans.append((offset + start, offset + match.start(1)))
        start = match.end(1)
    spans.append((offset + start, offset + len(line)))
    return spans


def split_document(text: str) -> tuple[list[str], list[str]]:
    """Cut ``text`` into sentence segments and the separators around them.

    Returns:
        (segments, separators) with ``len(separators) == len(segments) + 1``; a document of only
        whitespace has no segments and is its own single separator.
    """
    segments, separators, last_end = [], [], 0
    for line in _LINE_TEXT.finditer(text):
        for start, end in _sentence_spans(line.group(), line.start()):
            separators.append(text[last_end:start])
            segments.append(text[start:end])
            last_end = end
    separators.append(text[last_end:])
    return segments, separators


def join_document(translations: list[str], separators: list[str]) -> str:
    """Put translated segments back between the original separators."""
    if len(separators) != len(translations) + 1:
        raise ValueError(f"{len(translations)} segments need {len(translations) + 1} separators")
    parts = [separators[0]]
    for translation, separator in zip(translations, separators[1:]):
        parts += [translation, separator]
    return "".join(parts)

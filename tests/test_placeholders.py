"""Placeholders of software text (s2s/placeholders.py): what counts as one, and fidelity."""

import pytest

from s2s.placeholders import fidelity, placeholders


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("Open %s", ["%s"]),
        ("File %1$s not found in %2$s", ["%1$s", "%2$s"]),
        ("%(count)d files in %(dir)s", ["%(count)d", "%(dir)s"]),
        ("Use %hhu, %lld and %-5.2f", ["%hhu", "%lld", "%-5.2f"]),
        ("{0} of {total}, {}", ["{0}", "{total}", "{}"]),
        ("{name!r:>10}", ["{name!r:>10}"]),
        ('Click <a href="x">here</a> &amp; <br/>', ['<a href="x">', "</a>", "&amp;", "<br/>"]),
        ("First line\\nSecond", ["\\n"]),
        ("100%% done", ["%%"]),
        # Prose, not placeholders: a percent before a word, comparisons, a bare ampersand.
        ("50% sure", []),
        ("x < y > z", []),
        ("Tom & Jerry", []),
    ],
)
def test_placeholders_of_each_family(text, found):
    assert sorted(placeholders(text).elements()) == sorted(found)


def test_fidelity_counts_exact_multisets_over_sentences_that_have_any():
    sources = ["Open %s", "%1$s in %2$s", "<b>Bold</b>", "No placeholder", "%d of %d"]
    translations = [
        "%s öffnen",  # kept
        "in %2$s: %1$s",  # kept: reordered
        "<b>Fett",  # a tag lost
        "Kein Platzhalter %s",  # no placeholder in the source: not counted
        "%d von",  # one of two %d lost: the multiset differs
    ]
    report = fidelity(sources, translations)
    assert report == {"sentences": 4, "kept": 2, "fidelity": 50.0, "indices": [0, 1, 2, 4]}
    assert fidelity(["plain"], ["schlicht"])["fidelity"] is None

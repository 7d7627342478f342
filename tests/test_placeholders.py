"""Placeholders of software text (s2s/placeholders.py): what counts as one, fidelity, and their
protection: masking and restoring, the sentinels in the tokenizer, the translator that uses them."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from s2s.config import ConfigError, DecodeConfig
from s2s.placeholders import (
    PLACEHOLDER,
    SENTINELS,
    Masked,
    fidelity,
    mask,
    mask_pair,
    placeholder_pattern,
    placeholders,
    restore,
    strip_sentinels,
)
from s2s.tokenizer import Tokenizer, train_tokenizer
from s2s.translator import Translator


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


# -- protection: mask, restore, and the translator that uses them ---------------------------------

FRAGMENTS = ["Open", "file", "%s", "%1$s", "%(n)d", "{0}", "<b>", "</b>", "&amp;", "\\n", "50%",
             "x", "｟", "｟3｠", "%%", "{}", " ", ""]  # fmt: skip


@given(st.lists(st.sampled_from(FRAGMENTS), max_size=40))
def test_mask_then_restore_gives_the_text_back(fragments):
    text = " ".join(fragments)
    masked = mask(text)
    if "｟" in text:  # sentinel-like text of its own: left alone
        assert masked == Masked(text)
        return
    assert restore(masked.text, masked.spans) == text
    found = [m.group(0) for m in PLACEHOLDER.finditer(text)]
    assert masked.spans == tuple(found[: len(SENTINELS)])  # in text order, at most 16
    assert list(PLACEHOLDER.findall(masked.text)) == found[len(SENTINELS) :]  # the rest stay


def test_restore_refuses_a_lost_doubled_or_invented_sentinel():
    spans = ("%s", "<b>", "</b>")
    assert (
        restore("｟2｠fett｟3｠ ｟1｠ öffnen", spans) == "<b>fett</b> %s öffnen"
    )  # reordered: fine
    assert restore("｟2｠fett｟3｠ öffnen", spans) is None  # lost
    assert restore("｟2｠fett｟3｠ ｟1｠ ｟1｠", spans) is None  # doubled
    assert restore("｟2｠fett｟3｠ ｟1｠ ｟4｠", spans) is None  # invented
    assert restore("schlicht", ()) == "schlicht"
    assert (
        strip_sentinels("a ｟1｠ b｟2｠") == "a b" and strip_sentinels("｟1｠", "｟ own") == "｟1｠"
    )


def test_mask_pair_masks_the_spans_both_sides_hold_with_one_numbering():
    src, tgt = mask_pair("%s of %d files in <b>%s</b>", "%d Dateien von %s in %s")
    assert src.text == "｟1｠ of ｟2｠ files in <b>｟3｠</b>"  # <b> has no partner: left as text
    assert tgt.text == "｟2｠ Dateien von ｟1｠ in ｟3｠"
    assert src.spans == tgt.spans == ("%s", "%d", "%s")
    assert mask_pair("Quit", "Beenden") == (Masked("Quit"), Masked("Beenden"))
    # A user regex on top of the built-in families, tried first.
    pattern = placeholder_pattern(r"\$\w+")
    assert mask("Hello $user, %s", pattern).spans == ("$user", "%s")
    with pytest.raises(ConfigError, match="no regular expression"):
        DecodeConfig(checkpoint="x", placeholder_pattern="(").validate()
    with pytest.raises(ConfigError, match="matches empty text"):
        DecodeConfig(checkpoint="x", placeholder_pattern="a*").validate()


def test_a_tokenizer_trained_with_the_sentinels_holds_each_as_one_piece(gettext_pairs):
    texts = [mask(s).text for s, _ in gettext_pairs[:2000]]
    tokenizer = Tokenizer(train_tokenizer(texts, vocab_size=500, user_symbols=SENTINELS))
    assert tokenizer.has_pieces(SENTINELS)
    pieces = tokenizer.id_to_piece(tokenizer.encode(["Open ｟1｠ in ｟16｠x"])[0])
    assert "｟1｠" in pieces and "｟16｠" in pieces
    assert not Tokenizer(train_tokenizer(texts, vocab_size=500)).has_pieces(SENTINELS)


def test_the_translator_protects_placeholders_and_accounts_for_every_sentence(
    toy_checkpoint, gettext_pairs
):
    # Sources the toy model was trained on (masked, as prepare masks them): it has learnt to
    # copy sentinels, not to spell %H:%M:%S.
    sources = [s for s, _ in gettext_pairs[:4000] if placeholders(s)][:150]
    protected = Translator(DecodeConfig(checkpoint=toy_checkpoint, beam=2))
    unprotected = Translator(
        DecodeConfig(checkpoint=toy_checkpoint, beam=2, protect_placeholders=False)
    )
    assert protected.protect and not unprotected.protect
    kept = {}
    for name, translator in (("protected", protected), ("unprotected", unprotected)):
        results = translator.translate_sentences(sources)
        for source, result in zip(sources, results):
            assert "｟" not in result.translation  # no sentinel ever reaches the output
            same = placeholders(source) == placeholders(result.translation)
            assert result.placeholders_kept is same
        kept[name] = sum(r.placeholders_kept for r in results)
    assert kept["protected"] >= 0.5 * len(sources) > kept["unprotected"]  # measured: 125 vs 0

    docs = protected.translate_documents(["Open %s. Quit.", "Quit"])
    assert docs[0].placeholder_sentences == 1 and docs[1].placeholder_sentences == 0
    assert docs[0].placeholders_lost == (not protected.translate_sentences(["Open %s."])[0]
                                         .placeholders_kept)  # fmt: skip
    if docs[0].placeholders_lost:
        assert "did not keep their placeholders" in docs[0].warning

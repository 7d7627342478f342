"""The translation engine without Ray: sentence splitting and layout, batching order, documents
with bad content, long sentences."""

import pytest

from s2s.config import DecodeConfig
from s2s.segment import join_document, split_document
from s2s.translator import Translator, batch_order


@pytest.mark.parametrize(
    "text, sentences",
    [
        (
            "Hello world. This is Dr. Smith! Is it?  Yes.",
            ["Hello world.", "This is Dr. Smith!", "Is it?", "Yes."],
        ),
        (
            'First para.\n\n  Second ("quoted.") Next…\r\nLast line',
            ["First para.", 'Second ("quoted.")', "Next…", "Last line"],
        ),
        (
            "e.g. this one. And J. R. Tolkien wrote 3. Books exist.",
            ["e.g. this one.", "And J. R. Tolkien wrote 3.", "Books exist."],
        ),
        ("", []),
        (" \n\t\n", []),
        ("version 2.5 is out. no capital. Ende", ["version 2.5 is out. no capital.", "Ende"]),
    ],
)
def test_split_keeps_layout(text, sentences):
    segments, separators = split_document(text)
    assert segments == sentences
    assert join_document(segments, separators) == text
    assert all(not s.strip() for s in separators)  # nothing but whitespace between segments


def test_batch_order_respects_budget_and_covers_every_row():
    lengths = [5, 50, 3, 50, 20, 7, 400, 1]
    batches = batch_order(lengths, max_tokens=100, max_sentences=3)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(lengths)))
    for batch in batches:
        widths = [lengths[i] for i in batch]
        assert len(batch) <= 3
        assert len(batch) == 1 or len(batch) * max(widths) <= 100
    assert [lengths[i] for i in batches[0]] == [400]  # longest first, alone over budget


@pytest.fixture(scope="module")
def translator(toy_checkpoint):
    return Translator(DecodeConfig(model=toy_checkpoint, beam=2, max_input_tokens=12))


def test_documents_translate_in_order_and_keep_layout(translator):
    docs = ["Open file. Save file.\n\nQuit", "Quit", "Open file. Save file.\n\nQuit"]
    results = translator.translate_documents(docs)
    assert [r.n_segments for r in results] == [3, 1, 3]
    assert results[0].translation == results[2].translation  # same input, same output
    first = results[0].translation
    assert first.count("\n\n") == 1 and first.split("\n\n")[1] == results[1].translation
    # Sentences translated alone give the same words as inside a document.
    alone = translator.translate_sentences(["Open file.", "Save file.", "Quit"])
    assert first == f"{alone[0].translation} {alone[1].translation}\n\n{alone[2].translation}"


def test_bad_documents_get_an_error_and_never_stop_the_batch(translator):
    long_sentence = " ".join(["Open the file"] * 20) + "."
    docs = [None, 42, "", "x" * 1001, "Bad\x00control\x07chars.", long_sentence, "Quit"]
    results = translator.translate_documents(docs, max_chars=1000)
    assert len(results) == len(docs)
    assert results[0].error == "text is null" and results[0].translation is None
    assert results[1].error == "text is int, not a string"
    assert results[2].error is None and results[2].translation == "" and results[2].n_segments == 0
    assert "over max_document_chars=1,000" in results[3].error
    assert results[4].error is None and results[4].translation  # control characters removed
    assert results[5].error is None and "cut into pieces" in results[5].warning
    assert results[6].error is None and results[6].translation

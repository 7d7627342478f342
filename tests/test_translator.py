"""The translation engine without Ray: sentence splitting and layout, batching order, documents
with bad content, long sentences."""

import pytest
import torch

import s2s.translator
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
    return Translator(DecodeConfig(checkpoint=toy_checkpoint, beam=2, max_input_tokens=12))


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
    assert results[5].error is None and "cut into parts" in results[5].warning
    assert results[6].error is None and results[6].translation


class CopyEngine:
    """An :class:`s2s.engines.Engine` that translates every sentence into itself, cut at
    ``max_len_cap``: the translator's segmenting, batching and accounting without a model."""

    def __init__(self, tokenizer, max_len_cap=None):
        self.tokenizer = self.target_tokenizer = tokenizer
        self.model_id = "copy@1"
        self.device, self.precision = torch.device("cpu"), "fp32"
        self.max_len_cap, self.memory_left = max_len_cap, None
        self.batches = []

    def decode(self, sources):
        self.batches.append(len(sources))
        return [ids[: self.max_len_cap] for ids in sources]


def test_the_translator_asks_its_engine_only_through_the_protocol(
    translator, toy_checkpoint, monkeypatch
):
    engine = CopyEngine(translator.tokenizer, max_len_cap=9)
    monkeypatch.setattr(s2s.translator, "load_engine", lambda cfg, device, share: engine)
    copier = Translator(DecodeConfig(checkpoint=toy_checkpoint, beam=2, max_sentences=4))
    assert (copier.model_id, copier.device, copier.max_input_tokens) == ("copy@1", engine.device, 8)
    docs = ["Open file. Save file.\n\nQuit", None, " ".join(["Open the file"] * 6) + "."]
    results = copier.translate_documents(docs)
    assert results[0].translation == docs[0] and results[0].error is None
    assert results[1].error == "text is null"
    assert "cut into parts" in results[2].warning  # parts of 8 tokens, joined with spaces
    assert results[2].translation.replace(" ", "") == docs[2].replace(" ", "")
    assert engine.batches and max(engine.batches) <= 4  # cut by the translator's budgets

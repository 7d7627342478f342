import io

import pyarrow as pa
import pytest
import sentencepiece as spm

from s2s.config import ConfigError
from s2s.filters import normalize_text
from s2s.tokenizer import EOS_ID, PAD_ID, Tokenizer, train_tokenizer


@pytest.fixture(scope="module")
def tokenizer(gettext_pairs) -> Tokenizer:
    sample = [s for pair in gettext_pairs[:4000] for s in pair]
    return Tokenizer(train_tokenizer(sample, vocab_size=800))


def test_round_trip_of_normalised_text(tokenizer, gettext_pairs):
    texts = [t for pair in gettext_pairs[-2000:] for t in pair]  # not in the training sample
    texts += ["Ünïcödé 漢字 😀 never seen", "tab\tand  spaces", "Cafe\u0301"]
    texts = normalize_text(pa.array(texts)).to_pylist()
    ids = tokenizer.encode(texts)
    assert tokenizer.decode(ids) == texts
    assert all(PAD_ID not in row and EOS_ID not in row for row in ids)


def test_encode_arrow_matches_encode(tokenizer):
    texts = ["Open the file", "", "Datei öffnen"]
    ids, lengths = tokenizer.encode_arrow(texts)
    assert ids.type == pa.list_(pa.int32())
    assert ids.to_pylist() == tokenizer.encode(texts)
    assert lengths.tolist() == [len(x) for x in tokenizer.encode(texts)]


def test_vocab_size_and_specials(tokenizer):
    assert tokenizer.vocab_size == 800


def test_foreign_special_ids_are_rejected():
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(["a b c d e f g"] * 50),
        model_writer=model,
        vocab_size=12,
        minloglevel=2,
    )  # fmt: skip  (SentencePiece's defaults: unk 0, bos 1, eos 2, no pad)
    with pytest.raises(ConfigError, match="special ids .* differ"):
        Tokenizer(model.getvalue(), name="other.model")
    with pytest.raises(ConfigError, match="not a SentencePiece model"):
        Tokenizer(b"garbage")


def test_bpe_and_too_large_vocab(gettext_pairs):
    sample = [s for pair in gettext_pairs[:300] for s in pair]
    assert Tokenizer(train_tokenizer(sample, 400, "bpe")).vocab_size == 400
    with pytest.raises(ConfigError, match="adjust vocab_size"):
        train_tokenizer(sample, 50000, "bpe")

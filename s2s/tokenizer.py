"""SentencePiece: train one joint source+target vocabulary, load it, encode and decode batches.

The special ids are part of the prepared-corpus contract (shared/DESIGN.md): pad 0, unk 1, bos 2,
eos 3. Byte fallback is on, so any text round-trips: a character the vocabulary lacks is spelled
as UTF-8 byte pieces instead of becoming ``<unk>``.
"""

from __future__ import annotations

import io
import itertools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import sentencepiece as spm

from s2s import storage
from s2s.config import ConfigError

__all__ = [
    "TOKENIZER_FILE",
    "TARGET_TOKENIZER_FILE",
    "PAD_ID",
    "UNK_ID",
    "BOS_ID",
    "EOS_ID",
    "SPECIAL_IDS",
    "train_tokenizer",
    "Tokenizer",
    "TokenizerFiles",
]

# The file name of a SentencePiece model wherever s2s stores one (a prepared corpus, a checkpoint,
# a CTranslate2 export): part of their contracts (shared/DESIGN.md).
TOKENIZER_FILE = "tokenizer.model"
# Where the target side segments differently (models imported from Marian, which has one
# SentencePiece model per language over one shared vocabulary): the target side's model, next to
# TOKENIZER_FILE, which then serves the source side. Absent, one model serves both.
TARGET_TOKENIZER_FILE = "target_tokenizer.model"
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
SPECIAL_IDS = {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID}


def train_tokenizer(
    sentences: Iterable[str],
    vocab_size: int,
    model_type: str = "unigram",
    character_coverage: float = 0.9995,
    num_threads: int | None = None,
    user_symbols: Sequence[str] = (),
) -> bytes:
    """Train a SentencePiece model on ``sentences`` (a sample: all of it is held in memory).

    ``user_symbols`` become pieces of their own wherever they occur (the placeholder sentinels,
    :data:`s2s.placeholders.SENTINELS`), counted in ``vocab_size``.

    The vocabulary size is a soft limit for the unigram model, so a small corpus yields a smaller
    vocabulary instead of an error; the model's own ``vocab_size`` tells what came out.

    Returns:
        The serialized model (the bytes of a ``.model`` file).

    Raises:
        ConfigError: when SentencePiece rejects the settings (e.g. a BPE vocabulary larger than
            the sample supports), with its reason.
    """
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            byte_fallback=True,
            # Text is NFC-normalised and whitespace-collapsed before it gets here; "identity"
            # keeps SentencePiece from changing it again (NFKC would break the round trip).
            normalization_rule_name="identity",
            split_digits=True,  # numbers as single digits: copied digit by digit
            hard_vocab_limit=model_type != "unigram",  # unigram: a small corpus gives fewer pieces
            input_sentence_size=0,  # the caller already sampled
            max_sentence_length=1 << 16,  # bytes; the default 4192 skips longer sentences
            num_threads=num_threads or os.cpu_count() or 1,
            minloglevel=2,  # errors only
            user_defined_symbols=list(user_symbols),
        )
    except RuntimeError as err:
        raise ConfigError(f"SentencePiece training failed: {err}; adjust vocab_size") from None
    return model.getvalue()


class Tokenizer:
    """A loaded SentencePiece model with batch encoding into Arrow list columns."""

    def __init__(self, model_proto: bytes, name: str = "tokenizer") -> None:
        """Load a serialized model and check its special ids.

        Raises:
            ConfigError: if ``model_proto`` is no SentencePiece model or its special ids differ
                from pad 0, unk 1, bos 2, eos 3.
        """
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model_proto)
        except (RuntimeError, OSError, TypeError) as err:
            raise ConfigError(f"{name}: not a SentencePiece model ({err})") from None
        found = {
            "pad": self._sp.pad_id(),
            "unk": self._sp.unk_id(),
            "bos": self._sp.bos_id(),
            "eos": self._sp.eos_id(),
        }
        if found != SPECIAL_IDS:
            raise ConfigError(
                f"{name}: special ids {found} differ from the required {SPECIAL_IDS}; retrain "
                "with pad_id=0 unk_id=1 bos_id=2 eos_id=3"
            )

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, texts: list[str], num_threads: int = 1) -> list[list[int]]:
        """Token ids of each text, without bos/eos; ``num_threads=-1`` uses every core."""
        return self._sp.encode(texts, out_type=int, num_threads=num_threads)

    def decode(self, ids: list[list[int]]) -> list[str]:
        return self._sp.decode(ids)

    def id_to_piece(self, ids: list[int]) -> list[str]:
        return self._sp.id_to_piece(ids)

    def piece_to_id(self, pieces: list[str]) -> list[int]:
        return self._sp.piece_to_id(pieces)

    def has_pieces(self, pieces: Sequence[str]) -> bool:
        """Whether each of ``pieces`` is a piece of the vocabulary (not read as ``<unk>``)."""
        return UNK_ID not in self._sp.piece_to_id(list(pieces))

    def encode_arrow(self, texts: list[str]) -> tuple[pa.ListArray, np.ndarray]:
        """Encode a batch into an Arrow ``list<int32>`` column without per-token Python objects.

        Returns:
            (ids, lengths): ids is (N,) list<int32> without bos/eos; lengths is (N,) int32.
        """
        pieces = self._sp.encode(texts, out_type=int)
        lengths = np.fromiter(map(len, pieces), np.int32, count=len(pieces))
        # Arrow's list layout: row i is flat[offsets[i] : offsets[i + 1]].
        offsets = np.zeros(len(pieces) + 1, np.int32)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.fromiter(itertools.chain.from_iterable(pieces), np.int32, count=int(offsets[-1]))
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)), lengths


@dataclass(frozen=True)
class TokenizerFiles:
    """The SentencePiece model(s) a corpus or checkpoint is tokenized with, as bytes.

    ``source`` segments sources, and targets too unless there is a ``target`` model: a model
    imported from Marian has one SentencePiece model per language over one shared vocabulary
    (ids mean the same on both sides; only the segmentation differs).
    """

    source: bytes
    target: bytes | None = None

    @classmethod
    def read(cls, uri: str) -> TokenizerFiles:
        """A SentencePiece ``.model`` file, or a directory holding TOKENIZER_FILE (and perhaps
        TARGET_TOKENIZER_FILE): a checkpoint, a prepared corpus, an `s2s import`.

        Raises:
            ConfigError: if neither is there.
        """
        if storage.exists(storage.join(uri, TOKENIZER_FILE)):
            target = storage.join(uri, TARGET_TOKENIZER_FILE)
            return cls(
                storage.read_bytes(storage.join(uri, TOKENIZER_FILE)),
                storage.read_bytes(target) if storage.exists(target) else None,
            )
        if not storage.exists(uri):
            raise ConfigError(
                f"{uri}: no tokenizer there (a SentencePiece .model file, or a directory "
                f"holding {TOKENIZER_FILE})"
            )
        return cls(storage.read_bytes(uri))

    def write(self, directory: str) -> None:
        """Write the model(s) into ``directory`` under their contract names."""
        storage.write_bytes(storage.join(directory, TOKENIZER_FILE), self.source)
        if self.target is not None:
            storage.write_bytes(storage.join(directory, TARGET_TOKENIZER_FILE), self.target)

    def load(self, name: str = "tokenizer") -> tuple[Tokenizer, Tokenizer]:
        """(source, target) tokenizers; the same object twice without a target model.

        Raises:
            ConfigError: a model that is not SentencePiece, has other special ids, or whose
                vocabulary size differs from the other side's.
        """
        source = Tokenizer(self.source, name=name)
        if self.target is None:
            return source, source
        target = Tokenizer(self.target, name=f"{name} (target side)")
        if target.vocab_size != source.vocab_size:
            raise ConfigError(
                f"{name}: the source tokenizer has {source.vocab_size} pieces, the target's "
                f"{target.vocab_size}; both sides share one vocabulary"
            )
        return source, target

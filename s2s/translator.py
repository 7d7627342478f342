"""The translation engine: a loaded checkpoint that turns sentences and documents into translations.

Ray-free: the translate job's actors hold one each, ``s2s evaluate`` uses one directly, and a test
can call it in-process. Work is batched for speed: every sentence of a call is encoded at once,
sorted by length and cut into token-budget batches, so a batch wastes little on padding however
the documents were ordered; results go back in the callers' order.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from s2s import storage
from s2s.batching import collate
from s2s.checkpoint import TOKENIZER, load_checkpoint, validate_checkpoint
from s2s.config import ConfigError, DecodeConfig
from s2s.export import EXPORT_INFO
from s2s.filters import normalize_text
from s2s.poison import describe, isolate
from s2s.search import beam_search, greedy_search
from s2s.segment import join_document, split_document
from s2s.tokenizer import Tokenizer

__all__ = ["Translator", "DocumentResult", "SentenceResult", "batch_order", "model_id"]

log = logging.getLogger(__name__)


@dataclass
class SentenceResult:
    translation: str | None  # None when decoding failed (``error`` says why)
    src_tokens: int
    tgt_tokens: int
    pieces: int = 1  # > 1: the sentence was longer than max_input_tokens and cut
    error: str | None = None


@dataclass
class DocumentResult:
    translation: str | None  # None when the document could not be translated
    n_segments: int
    error: str | None = None
    warning: str | None = None  # translated, but with a caveat (a sentence was cut, ...)
    src_tokens: int = 0
    tgt_tokens: int = 0


def batch_order(lengths: Sequence[int], max_tokens: int, max_sentences: int) -> list[np.ndarray]:
    """Indices of ``lengths`` in batches: longest first, each batch within the budget.

    A batch's cost is its row count times its longest row (the padded size); one row longer than
    the budget still gets a batch of its own.
    """
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    batches, start = [], 0
    while start < len(order):
        widest = lengths[order[start]]  # longest first: the first row sets the width
        rows = max(1, min(max_sentences, max_tokens // max(widest, 1)))
        batches.append(order[start : start + rows])
        start += rows
    return batches


def model_id(cfg: DecodeConfig) -> str:
    """The id translations made with these settings carry, after checking the model directory
    whole without loading the model (the driver does this before any work is handed out).

    Raises:
        ConfigError: a model directory that is missing a file or damaged.
    """
    if cfg.engine == "ctranslate2":
        info = _export_info(cfg.model)
        return (info["model_id"] if info else validate_checkpoint(cfg.model)) + "+ct2"
    return validate_checkpoint(cfg.model)


def _export_info(uri: str) -> dict | None:
    """The `s2s export` record of a CTranslate2 model directory, or None for a checkpoint.

    Raises:
        ConfigError: an export directory that is missing a file.
    """
    info = storage.join(uri, EXPORT_INFO)
    if not storage.exists(info):
        return None
    for name in ("model.bin", TOKENIZER):
        if not storage.exists(storage.join(uri, name)):
            raise ConfigError(f"{uri}: not a complete CTranslate2 export: no {name}")
    return json.loads(storage.read_bytes(info))


def _load_ctranslate2(cfg: DecodeConfig, device: torch.device):
    """(CTranslate2 translator, tokenizer, model id, max positions) for an `s2s export`
    directory, or for a checkpoint exported here and now."""
    import ctranslate2

    from s2s.export import export_ctranslate2, local_ctranslate2_model

    exported, info = cfg.model, _export_info(cfg.model)
    if info is None:  # a checkpoint: exported here (load_checkpoint checks it first)
        exported = export_ctranslate2(cfg.model, tempfile.mkdtemp(prefix="s2s-ct2-"))
        info = _export_info(exported)
    local = local_ctranslate2_model(exported)
    threads = torch.get_num_threads()
    model = ctranslate2.Translator(
        local, device=device.type, compute_type=cfg.compute_type, intra_threads=threads
    )
    tokenizer = Tokenizer(storage.read_bytes(storage.join(exported, TOKENIZER)), name=exported)
    return model, tokenizer, f"{info['model_id']}+ct2", info["max_positions"]


class Translator:
    """A checkpoint plus decoding settings; translate sentences or whole documents."""

    def __init__(self, cfg: DecodeConfig, device: str | None = None) -> None:
        self.cfg = cfg
        self.device = torch.device(device or ("cuda" if cfg.use_gpu else "cpu"))
        if cfg.engine == "ctranslate2":
            self._ct2, self.tokenizer, self.model_id, max_positions = _load_ctranslate2(
                cfg, self.device
            )
        else:
            ckpt = load_checkpoint(cfg.model, self.device)
            self.model, self.tokenizer, self.model_id = ckpt.model, ckpt.tokenizer, ckpt.model_id
            is_transformer = ckpt.model_config.family == "transformer"
            max_positions = ckpt.model_config.max_positions if is_transformer else None
        self.max_len_cap = None
        self.max_input_tokens = cfg.max_input_tokens
        if max_positions:
            # Positions run out: source and output (after bos) must fit max_positions.
            self.max_len_cap = max_positions - 1
            self.max_input_tokens = min(self.max_input_tokens, self.max_len_cap - 1)

    # -- sentences ---------------------------------------------------------------------------

    def translate_sentences(self, sentences: Sequence[str]) -> list[SentenceResult]:
        """Translate sentences (any order, any lengths); results come back in input order.

        Text is normalised as prepare normalised the training data (NFC, no control characters,
        single spaces). A sentence longer than ``max_input_tokens`` is cut into pieces translated
        one by one and joined with a space.
        """
        clean = normalize_text(pa.array(list(sentences), pa.string())).to_pylist()
        encoded = self.tokenizer.encode(clean, num_threads=-1)
        # Every model input ("unit") is a sentence or a piece of a too-long one.
        units, owner = [], []
        for i, ids in enumerate(encoded):
            step = self.max_input_tokens
            for start in range(0, max(len(ids), 1), step):
                units.append(ids[start : start + step])
                owner.append(i)
        outputs = self._translate_units(units)
        results = [
            SentenceResult("", src_tokens=len(ids), tgt_tokens=0, pieces=0) for ids in encoded
        ]
        texts: list[list[str]] = [[] for _ in encoded]
        for i, unit, (out_ids, error) in zip(owner, units, outputs):
            result = results[i]
            result.pieces += 1
            if error:
                result.error = error
            elif unit:
                texts[i].append(self.tokenizer.decode([out_ids])[0])
                result.tgt_tokens += len(out_ids)
        for result, parts in zip(results, texts):
            result.translation = None if result.error else " ".join(parts)
        return results

    def _translate_units(self, units: list[list[int]]) -> list[tuple[list[int], str | None]]:
        """(output ids, error) per unit; empty units translate to nothing."""
        outputs: list[tuple[list[int], str | None]] = [([], None)] * len(units)
        todo = [i for i, ids in enumerate(units) if ids]
        lengths = [len(units[i]) + 1 for i in todo]  # + eos
        budget = max(1, self.cfg.max_tokens // self.cfg.beam) if self.cfg.beam > 1 else None
        for batch in batch_order(lengths, budget or self.cfg.max_tokens, self.cfg.max_sentences):
            rows = [todo[j] for j in batch]
            try:
                decoded = self._decode([units[i] for i in rows])
            except (RuntimeError, ValueError) as err:
                # One bad batch (out of memory, ...) must not fail its neighbours: try rows alone.
                log.warning(
                    "batch of %d sentences failed (%s); retrying one by one", len(rows), err
                )
                decoded = []
                for i in rows:
                    try:
                        decoded.append(self._decode([units[i]])[0])
                    except (RuntimeError, ValueError) as one_err:
                        decoded.append(one_err)
            for i, out in zip(rows, decoded):
                failed = isinstance(out, Exception)
                outputs[i] = ([], f"decoding failed: {out}") if failed else (out, None)
        return outputs

    def _decode(self, sources: list[list[int]]) -> list[list[int]]:
        if self.cfg.engine == "ctranslate2":
            return self._decode_ctranslate2(sources)
        src = collate([(ids, []) for ids in sources])["src"].to(self.device)  # (B, S) with eos
        autocast = (
            torch.autocast(self.device.type, dtype=torch.bfloat16)
            if self.cfg.precision == "bf16"
            else contextlib.nullcontext()
        )
        cfg = self.cfg
        with autocast:
            if cfg.beam == 1:
                return greedy_search(
                    self.model, src, cfg.max_len_a, cfg.max_len_b, max_len_cap=self.max_len_cap
                )
            hyps = beam_search(
                self.model, src, cfg.beam, cfg.max_len_a, cfg.max_len_b,
                alpha=cfg.length_penalty, max_len_cap=self.max_len_cap,
            )  # fmt: skip
        return [h[0].tokens for h in hyps]

    def _decode_ctranslate2(self, sources: list[list[int]]) -> list[list[int]]:
        cfg = self.cfg
        # Per-sentence limits as in s2s.search; CTranslate2 takes one per batch, so decode to
        # the largest and cut each output to its own (greedy outputs then match exactly).
        limits = [max(1, int(cfg.max_len_a * (len(ids) + 1) + cfg.max_len_b)) for ids in sources]
        limits = [min(limit, self.max_len_cap or limit) for limit in limits]
        results = self._ct2.translate_batch(
            [self.tokenizer.id_to_piece(ids) for ids in sources],
            beam_size=cfg.beam,
            # CTranslate2 divides by length ** penalty, not GNMT's ((5 + length) / 6) ** alpha.
            length_penalty=cfg.length_penalty,
            max_decoding_length=max(limits),
            max_batch_size=len(sources),
        )
        return [
            self.tokenizer.piece_to_id(r.hypotheses[0][:limit]) for r, limit in zip(results, limits)
        ]

    # -- documents ---------------------------------------------------------------------------

    def translate_documents(
        self, texts: Sequence[object], max_chars: int = 1_000_000
    ) -> list[DocumentResult]:
        """Translate documents sentence by sentence and rebuild their layout.

        A document that cannot be translated (null, not a string, longer than ``max_chars``, or
        one on which any step fails: see :mod:`s2s.poison`) gets a result with ``error`` set
        instead of stopping the batch.
        """
        return isolate(
            lambda batch: self._translate_documents(batch, max_chars),
            texts,
            lambda _, err: DocumentResult(None, 0, f"cannot translate: {describe(err)}"),
        )

    def _translate_documents(self, texts: Sequence[object], max_chars: int) -> list[DocumentResult]:
        results: list[DocumentResult | None] = [None] * len(texts)
        segments: list[str] = []
        layouts = []  # (document index, first segment, separators)
        for i, text in enumerate(texts):
            if text is None:
                results[i] = DocumentResult(None, 0, "text is null")
            elif not isinstance(text, str):
                results[i] = DocumentResult(None, 0, f"text is {type(text).__name__}, not a string")
            elif len(text) > max_chars:
                results[i] = DocumentResult(
                    None, 0, f"document has {len(text):,} characters, over max_document_chars="
                    f"{max_chars:,}",
                )  # fmt: skip
            else:
                parts, separators = split_document(text)
                layouts.append((i, len(segments), separators))
                segments += parts
        translated = self.translate_sentences(segments)
        for i, first, separators in layouts:
            mine = translated[first : first + len(separators) - 1]
            errors = [r.error for r in mine if r.error]
            cut = sum(r.pieces > 1 for r in mine)
            failure = errors and f"{len(errors)} of {len(mine)} sentences failed: {errors[0]}"
            parts = [r.translation for r in mine]
            translation = None if errors else join_document(parts, separators)
            warnings = [
                f"{cut} sentences over {self.max_input_tokens} tokens were cut into pieces"
                if cut else None,
                "empty translation of a non-empty text"
                if translation is not None and not translation.strip() and texts[i].strip()
                else None,
            ]  # fmt: skip
            results[i] = DocumentResult(
                translation,
                len(mine),
                error=failure or None,
                warning="; ".join(w for w in warnings if w) or None,
                src_tokens=sum(r.src_tokens for r in mine),
                tgt_tokens=sum(r.tgt_tokens for r in mine),
            )  # fmt: skip
        return results

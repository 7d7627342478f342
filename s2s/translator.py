"""The translator: sentences and documents in, translations with their accounting out.

Ray-free: the translate job's actors hold one each, ``s2s evaluate`` uses one directly, and a test
can call it in-process. The model itself sits behind an :class:`~s2s.engines.Engine` (s2s's own
torch search or CTranslate2, picked by ``cfg.engine``); the translator does the rest and never
asks which engine it holds:

- segments: documents into sentences and back into their layout, too-long sentences into parts;
- batches: every sentence of a call is encoded at once, sorted by length and cut into token-budget
  batches, so a batch wastes little on padding however the documents were ordered; results go
  back in the callers' order. On a GPU the budgets are sized by its free memory (``max_tokens=0``,
  ``max_sentences=0``: auto), a batch that runs out of memory is halved rather than retried
  sentence by sentence, and the smaller size holds for the batches after it;
- accounts: one :class:`SentenceResult` or :class:`DocumentResult` per input, with an error where
  it failed (a bad sentence is found by bisection, a bad document isolated by :mod:`s2s.poison`).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from s2s.config import DecodeConfig
from s2s.engines import load_engine
from s2s.filters import normalize_text
from s2s.placeholders import (
    Masked,
    hold_sentinels,
    mask,
    placeholder_pattern,
    placeholders,
    restore_outputs,
    strip_sentinels,
)
from s2s.poison import describe, isolate
from s2s.segment import join_document, split_document

__all__ = [
    "Translator",
    "DocumentResult",
    "SentenceResult",
    "batch_order",
    "batch_limits",
    "gpu_batch_limits",
    "is_out_of_memory",
]

log = logging.getLogger(__name__)

# max_tokens and max_sentences on a CPU (auto): the values these settings always had, so CPU
# batches are cut exactly as before.
CPU_BATCH_LIMITS = (4000, 128)
# Decoding memory per unit of max_tokens (a source token times a beam row), estimated for
# transformer-big in fp32: self-attention keys and values of 6 layers at d_model 1024 for an
# output 1.5x the source, copied once per step when the beams are reordered (~150 KiB), plus the
# source's cross-attention keys and values and the step's vocabulary-sized logits spread over the
# sentence's tokens. Smaller models and bf16 need less: an estimate on the safe side, and a batch
# that runs out of memory all the same is halved.
GPU_BYTES_PER_TOKEN = 256 * 1024
# Auto max_tokens on a GPU: from about the CPU's batch up to 16k source tokens at beam 4 (~2,500
# decoder rows of 25-token sentences). Past that a GPU is taken to be busy already (an estimate,
# not measured here), and a bigger batch only waits longer for its longest output.
GPU_TOKEN_RANGE = (4096, 65_536)
# At most one sentence per 32 tokens of budget: every row of a sentence also holds vocabulary-
# sized logits at each step, which the token count does not see.
GPU_TOKENS_PER_SENTENCE = 32
GPU_SENTENCE_RANGE = (128, 1024)
# A GPU whose free memory the engine cannot tell (CTranslate2 allocates outside torch): a 16 GiB
# GPU's share when several actors use it.
GPU_MEMORY_UNKNOWN = 4 * 2**30


@dataclass
class SentenceResult:
    """One input sentence's translation and token counts (sources counted without eos)."""

    translation: str | None  # None when decoding failed (``error`` says why)
    src_tokens: int
    tgt_tokens: int
    parts: int = 1  # > 1: the sentence was longer than max_input_tokens and cut
    error: str | None = None
    # Whether the translation holds exactly the source's placeholders (s2s.placeholders); None
    # when the source has none or the sentence failed.
    placeholders_kept: bool | None = None


@dataclass
class DocumentResult:
    """One input document's translation (its layout kept) and the sums over its sentences."""

    translation: str | None  # None when the document could not be translated
    n_segments: int
    error: str | None = None
    warning: str | None = None  # translated, but with a caveat (a sentence was cut, ...)
    src_tokens: int = 0
    tgt_tokens: int = 0
    placeholder_sentences: int = 0  # sentences whose source holds placeholders...
    placeholders_lost: int = 0  # ...and of those, the ones whose translation does not keep them


def batch_order(lengths: Sequence[int], max_tokens: int, max_sentences: int) -> list[np.ndarray]:
    """Indices of ``lengths`` in batches: longest first, each batch within the budget.

    A batch's cost is its row count times its longest row (the padded size); one row longer than
    the budget still gets a batch of its own.
    """
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable")
    batches, start = [], 0
    while start < len(order):
        # Longest first: the first row sets the width.
        rows = _rows_fitting(lengths[order[start]], max_tokens, max_sentences)
        batches.append(order[start : start + rows])
        start += rows
    return batches


def _rows_fitting(width: int, max_tokens: int, max_sentences: int) -> int:
    """How many rows of ``width`` padded tokens a batch holds (at least one)."""
    return max(1, min(max_sentences, max_tokens // max(width, 1)))


def gpu_batch_limits(memory_bytes: int | None) -> tuple[int, int]:
    """(max_tokens, max_sentences) for a GPU with ``memory_bytes`` left for decoding (None: not
    known). Rounded down to a multiple of 1024 tokens, so actors sharing a GPU whose free memory
    differs by a little cut the same batches."""
    memory = GPU_MEMORY_UNKNOWN if memory_bytes is None else memory_bytes
    low, high = GPU_TOKEN_RANGE
    tokens = min(max(memory // GPU_BYTES_PER_TOKEN // 1024 * 1024, low), high)
    low, high = GPU_SENTENCE_RANGE
    return tokens, min(max(tokens // GPU_TOKENS_PER_SENTENCE, low), high)


def batch_limits(
    cfg: DecodeConfig, device: torch.device, memory_bytes: int | None = None
) -> tuple[int, int]:
    """(max_tokens, max_sentences) for decoding on ``device``: the settings, where 0 (auto)
    means :func:`gpu_batch_limits` on a GPU and :data:`CPU_BATCH_LIMITS` elsewhere."""
    auto = gpu_batch_limits(memory_bytes) if device.type == "cuda" else CPU_BATCH_LIMITS
    return cfg.max_tokens or auto[0], cfg.max_sentences or auto[1]


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is a GPU allocation that failed: torch's OutOfMemoryError, or the
    RuntimeError CTranslate2 raises ("CUDA failed with error out of memory")."""
    return isinstance(err, torch.cuda.OutOfMemoryError) or (
        isinstance(err, RuntimeError) and "out of memory" in str(err).lower()
    )


class Translator:
    """A loaded model plus decoding settings; translate sentences or whole documents.

    Attributes:
        engine: the :class:`~s2s.engines.Engine` that decodes each batch.
        tokenizer, target_tokenizer, model_id, device, precision, max_len_cap: the engine's.
        max_input_tokens: longer sentences are cut into parts of this many tokens (the
            setting, lowered to what the model's positions allow).
        max_tokens, max_sentences: the batch budgets now; lowered for good when a batch runs
            out of memory.
    """

    def __init__(
        self, cfg: DecodeConfig, device: str | None = None, gpu_share: float = 1.0
    ) -> None:
        """Load the model of ``cfg`` onto ``device`` (default: ``cuda`` with use_gpu, else
        ``cpu``). ``gpu_share``: the part of the GPU this process was given (Ray's num_gpus);
        under 1, the torch engine caps its allocator at it, so processes sharing the GPU cannot
        take each other's memory.

        Raises:
            ConfigError: a damaged model directory, or use_gpu where no GPU is visible.
        """
        self.cfg = cfg
        self.engine = load_engine(cfg, device, gpu_share)
        self.tokenizer, self.model_id = self.engine.tokenizer, self.engine.model_id
        self.target_tokenizer = self.engine.target_tokenizer
        self.device, self.precision = self.engine.device, self.engine.precision
        self.max_tokens, self.max_sentences = batch_limits(
            cfg, self.device, self.engine.memory_left
        )
        self._warned_oom = False
        log.info(
            "decoding on %s: batches of at most %d tokens (x beam) and %d sentences",
            self.device,
            self.max_tokens,
            self.max_sentences,
        )
        self.max_len_cap = self.engine.max_len_cap
        self.max_input_tokens = cfg.max_input_tokens
        if self.max_len_cap:  # a source and its eos must fit the positions too
            self.max_input_tokens = min(self.max_input_tokens, self.max_len_cap - 1)
        self.placeholders = placeholder_pattern(cfg.placeholder_pattern)
        # Masking needs a model that has learnt to copy sentinels: one whose tokenizers hold
        # them. Such a model may write sentinels even where none was given: they are removed.
        self.sentinels = hold_sentinels(self.tokenizer, self.target_tokenizer)
        self.protect = cfg.protect_placeholders and self.sentinels
        self.masked_sentences = 0  # so far: sentences translated with masked placeholders...
        self.unmasked_retries = 0  # ...and those translated again because a sentinel was lost
        if cfg.protect_placeholders and not self.protect:
            log.info(
                "%s was trained without placeholder sentinels: placeholders are checked (the "
                "rows' placeholders_lost), not protected",
                self.model_id,
            )

    # -- sentences ---------------------------------------------------------------------------

    def translate_sentences(self, sentences: Sequence[str]) -> list[SentenceResult]:
        """Translate sentences (any order, any lengths); results come back in input order.

        Text is normalised as prepare normalised the training data (NFC, no control characters,
        single spaces). With ``protect``, placeholders are masked by sentinels and put back after
        decoding; a sentence whose sentinels do not all come back exactly once is translated
        again unmasked. Each result says whether its placeholders were kept.
        """
        clean = normalize_text(pa.array(list(sentences), pa.string())).to_pylist()
        masked = [mask(text, self.placeholders) if self.protect else Masked(text) for text in clean]
        results = self._translate_texts([m.text for m in masked])
        retry = []
        if self.sentinels:  # a model without them writes none: nothing to restore or remove
            texts, retry = restore_outputs(masked, clean, [r.translation for r in results])
            for result, text in zip(results, texts):
                result.translation = text
        for i, result in zip(retry, self._translate_texts([clean[i] for i in retry])):
            if result.translation is not None:
                result.translation = strip_sentinels(result.translation, clean[i])
            results[i] = result
        self.masked_sentences += sum(bool(m.spans) for m in masked)
        self.unmasked_retries += len(retry)
        if retry:
            log.debug("%d sentences translated again without masks", len(retry))
        for text, result in zip(clean, results):
            if result.translation is not None and self.placeholders.search(text):
                kept = placeholders(text, self.placeholders)
                result.placeholders_kept = kept == placeholders(
                    result.translation, self.placeholders
                )
        return results

    def _translate_texts(self, clean: list[str]) -> list[SentenceResult]:
        """Translate normalised sentences. A sentence longer than ``max_input_tokens`` is cut
        into parts translated one by one and joined with a space."""
        encoded = self.tokenizer.encode(clean, num_threads=-1)
        # Every model input ("unit") is a sentence or a piece of a too-long one; owner[u] is the
        # sentence unit u belongs to.
        units, owner = [], []
        for i, ids in enumerate(encoded):
            step = self.max_input_tokens
            for start in range(0, max(len(ids), 1), step):
                units.append(ids[start : start + step])
                owner.append(i)
        outputs = self._translate_units(units)
        results = [
            SentenceResult("", src_tokens=len(ids), tgt_tokens=0, parts=0) for ids in encoded
        ]
        texts: list[list[str]] = [[] for _ in encoded]
        for i, unit, (out_ids, error) in zip(owner, units, outputs):
            result = results[i]
            result.parts += 1
            if error:
                result.error = error
            elif unit:
                texts[i].append(self.target_tokenizer.decode([out_ids])[0])
                result.tgt_tokens += len(out_ids)
        for result, parts in zip(results, texts):
            result.translation = None if result.error else " ".join(parts)
        return results

    def _source_budget(self) -> int:
        """Padded source tokens per batch: max_tokens counts each of the beam's decoder rows."""
        return max(1, self.max_tokens // self.cfg.beam)

    def _translate_units(self, units: list[list[int]]) -> list[tuple[list[int], str | None]]:
        """(output ids, error) per unit; empty units translate to nothing."""
        outputs: list[tuple[list[int], str | None]] = [([], None)] * len(units)
        todo = [i for i, ids in enumerate(units) if ids]
        lengths = [len(units[i]) + 1 for i in todo]  # + eos
        batches = batch_order(lengths, self._source_budget(), self.max_sentences)
        pending = deque([todo[j] for j in batch] for batch in batches)  # unit indices per batch
        while pending:
            rows = pending.popleft()
            # Cut again by the limits of now: an earlier batch may have run out of memory.
            fit = _rows_fitting(len(units[rows[0]]) + 1, self._source_budget(), self.max_sentences)
            if fit < len(rows):
                pending.appendleft(rows[fit:])
                rows = rows[:fit]
            for i, out in zip(rows, self._decode_or_split(rows, units)):
                failed = isinstance(out, str)
                outputs[i] = ([], f"decoding failed: {out}") if failed else (out, None)
        return outputs

    def _decode_or_split(self, rows: list[int], units: list[list[int]]) -> list[list[int] | str]:
        """Output ids per row, or for a row that fails alone the error. A failing batch is cut in
        halves (as s2s.poison bisects): out of GPU memory, each half may fit; a bad sentence
        (any other RuntimeError or ValueError) is found in ~2 log2(n) calls, not n."""
        try:
            return self.engine.decode([units[i] for i in rows])
        except (RuntimeError, ValueError) as err:
            oom, error = is_out_of_memory(err), describe(err)
        # Past the except block: the error's traceback no longer holds the batch's tensors.
        if oom:
            self._after_out_of_memory(rows, units)
        if len(rows) == 1:
            log.warning("a sentence of %d tokens failed: %s", len(units[rows[0]]), error)
            return [error]
        middle = len(rows) // 2
        first = self._decode_or_split(rows[:middle], units)
        return first + self._decode_or_split(rows[middle:], units)

    def _after_out_of_memory(self, rows: list[int], units: list[list[int]]) -> None:
        """Free the failed batch's cached blocks and keep every later batch at most half its
        size: retrying at the size that failed would fail again on the next such batch."""
        if self.device.type == "cuda":  # torch's cache; a no-op where torch allocated nothing
            torch.cuda.empty_cache()
        if len(rows) == 1:  # one long sentence: no reason to shrink every batch after it
            return
        width = max(len(units[i]) + 1 for i in rows)
        self.max_tokens = min(self.max_tokens, max(1, len(rows) * width // 2) * self.cfg.beam)
        if len(rows) >= self.max_sentences:  # the sentence limit made this batch: lower it too
            self.max_sentences = max(1, len(rows) // 2)
        log.log(
            logging.DEBUG if self._warned_oom else logging.WARNING,
            "out of memory on %s at a batch of %d sentences x %d tokens: halving it; from now on "
            "batches of at most %d tokens (x beam) and %d sentences",
            self.device,
            len(rows),
            width,
            self.max_tokens,
            self.max_sentences,
        )
        self._warned_oom = True

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
        segments: list[str] = []  # the sentences of every document, one after another
        layouts = []  # (document index, its first segment, its separators)
        for i, text in enumerate(texts):
            refused = _refusal(text, max_chars)
            if refused:
                results[i] = DocumentResult(None, 0, refused)
            else:
                parts, separators = split_document(text)
                layouts.append((i, len(segments), separators))
                segments += parts
        translated = self.translate_sentences(segments)
        for i, first, separators in layouts:
            mine = translated[first : first + len(separators) - 1]
            errors = [r.error for r in mine if r.error]
            failure = errors and f"{len(errors)} of {len(mine)} sentences failed: {errors[0]}"
            parts = [r.translation for r in mine]
            translation = None if errors else join_document(parts, separators)
            results[i] = DocumentResult(
                translation,
                len(mine),
                error=failure or None,
                warning=self._warning(texts[i], mine, translation),
                src_tokens=sum(r.src_tokens for r in mine),
                tgt_tokens=sum(r.tgt_tokens for r in mine),
                placeholder_sentences=sum(r.placeholders_kept is not None for r in mine),
                placeholders_lost=sum(r.placeholders_kept is False for r in mine),
            )
        return results

    def _warning(
        self, text: str, mine: list[SentenceResult], translation: str | None
    ) -> str | None:
        """The caveats of a translated document (``mine``: its sentences), or None: sentences
        cut, or nothing out of a non-empty text."""
        warnings = []
        cut = sum(r.parts > 1 for r in mine)
        if cut:
            warnings.append(
                f"{cut} sentences over {self.max_input_tokens} tokens were cut into parts"
            )
        if translation is not None and not translation.strip() and text.strip():
            warnings.append("empty translation of a non-empty text")
        lost = sum(r.placeholders_kept is False for r in mine)
        if lost:
            warnings.append(f"{lost} sentences did not keep their placeholders")
        return "; ".join(warnings) or None


def _refusal(text: object, max_chars: int) -> str | None:
    """Why a document is not translated at all, or None when it can be."""
    if text is None:
        return "text is null"
    if not isinstance(text, str):
        return f"text is {type(text).__name__}, not a string"
    if len(text) > max_chars:
        return f"document has {len(text):,} characters, over max_document_chars={max_chars:,}"
    return None

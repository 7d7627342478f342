"""The translation engine: a loaded checkpoint that turns sentences and documents into translations.

Ray-free: the translate job's actors hold one each, ``s2s evaluate`` uses one directly, and a test
can call it in-process. Work is batched for speed: every sentence of a call is encoded at once,
sorted by length and cut into token-budget batches, so a batch wastes little on padding however
the documents were ordered; results go back in the callers' order.

On a GPU the budgets are sized by its free memory (``max_tokens=0``, ``max_sentences=0``: auto), a
batch that runs out of memory is halved rather than retried sentence by sentence, and the smaller
size holds for the batches after it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from s2s import storage
from s2s.batching import collate
from s2s.checkpoint import TOKENIZER, load_checkpoint, validate_checkpoint
from s2s.config import ConfigError, DecodeConfig
from s2s.device import autocast, cap_memory, enable_tf32, resolve_precision
from s2s.export import EXPORT_INFO
from s2s.filters import normalize_text
from s2s.poison import describe, isolate
from s2s.search import beam_search, greedy_search
from s2s.segment import join_document, split_document
from s2s.tokenizer import Tokenizer

__all__ = [
    "Translator", "DocumentResult", "SentenceResult", "batch_order", "model_id", "batch_limits",
    "gpu_batch_limits", "is_out_of_memory",
]  # fmt: skip

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
# A GPU whose free memory torch cannot see (CTranslate2 allocates outside it): a 16 GiB GPU's
# share when several actors use it.
GPU_MEMORY_UNKNOWN = 4 * 2**30


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


def _device(cfg: DecodeConfig, device: str | None) -> torch.device:
    """The device to decode on.

    Raises:
        ConfigError: a GPU asked for that this process cannot see (one line, not CUDA's trace).
    """
    chosen = torch.device(device or ("cuda" if cfg.use_gpu else "cpu"))
    if chosen.type == "cuda" and _cuda_device_count(cfg.engine) == 0:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "<unset>")
        raise ConfigError(
            f"use_gpu=true but this process sees no CUDA device (CUDA_VISIBLE_DEVICES={visible})"
        )
    return chosen


def _cuda_device_count(engine: str) -> int:
    if engine == "ctranslate2":  # its own CUDA build: it may see a GPU a CPU-only torch does not
        import ctranslate2

        return ctranslate2.get_cuda_device_count()
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _gpu_memory_left(device: torch.device, fraction: float) -> int:
    """Bytes this process may still allocate on ``device``: free memory, within the share of the
    device its allocator is capped at (``fraction``, see s2s.device.cap_memory)."""
    free, total = torch.cuda.mem_get_info(device)
    cap = total * fraction - torch.cuda.memory_reserved(device)
    return int(max(0, min(free, cap)))


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
    # What it will compute in: the setting, else the type the export stored (float16, say).
    wanted = cfg.compute_type if cfg.compute_type != "default" else info.get("quantization")
    supported = ctranslate2.get_supported_compute_types(device.type, device.index or 0)
    if wanted and wanted not in supported:
        log.warning(
            "CTranslate2 computes only %s on this %s, not %s: it falls back to another type",
            ", ".join(sorted(supported)), device.type, wanted,
        )  # fmt: skip
    model = ctranslate2.Translator(
        local,
        device=device.type,
        device_index=device.index or 0,
        compute_type=cfg.compute_type,
        intra_threads=torch.get_num_threads(),
    )
    tokenizer = Tokenizer(storage.read_bytes(storage.join(exported, TOKENIZER)), name=exported)
    return model, tokenizer, f"{info['model_id']}+ct2", info["max_positions"]


class Translator:
    """A checkpoint plus decoding settings; translate sentences or whole documents."""

    def __init__(
        self, cfg: DecodeConfig, device: str | None = None, gpu_share: float = 1.0
    ) -> None:
        """Load the model of ``cfg`` onto ``device`` (default: ``cuda`` with use_gpu, else
        ``cpu``). ``gpu_share``: the part of the GPU this process was given (Ray's num_gpus);
        under 1, torch's allocator is capped at it, so processes sharing the GPU cannot take
        each other's memory.

        Raises:
            ConfigError: a damaged model directory, or use_gpu where no GPU is visible.
        """
        self.cfg = cfg
        self.device = _device(cfg, device)
        memory_left = None  # on a GPU: what torch may still allocate, for the batch budgets
        if cfg.engine == "ctranslate2":
            if self.device.type == "cuda" and gpu_share < 1:
                log.warning(
                    "CTranslate2 allocates outside torch: its memory cannot be capped at this "
                    "process's %.2f of the GPU; a batch that runs out of memory is halved",
                    gpu_share,
                )
            self._ct2, self.tokenizer, self.model_id, max_positions = _load_ctranslate2(
                cfg, self.device
            )
        else:
            fraction = cap_memory(gpu_share, self.device)  # before the model takes its part
            ckpt = load_checkpoint(cfg.model, self.device)
            self.model, self.tokenizer, self.model_id = ckpt.model, ckpt.tokenizer, ckpt.model_id
            is_transformer = ckpt.model_config.family == "transformer"
            max_positions = ckpt.model_config.max_positions if is_transformer else None
            # auto: bf16 where the GPU computes it natively, else fp32 (on TF32 tensor cores
            # where a GPU has them); always fp32 on a CPU, where bf16 decoding is no faster.
            self.precision = resolve_precision(cfg.precision, self.device, cpu_bf16=False)
            if self.precision == "fp32":
                enable_tf32(self.device)
            if self.device.type == "cuda":
                memory_left = _gpu_memory_left(self.device, fraction or 1.0)
        # Effective batch limits: lowered for good when a batch runs out of memory.
        self.max_tokens, self.max_sentences = batch_limits(cfg, self.device, memory_left)
        self._warned_oom = False
        log.info(
            "decoding on %s: batches of at most %d tokens (x beam) and %d sentences",
            self.device, self.max_tokens, self.max_sentences,
        )  # fmt: skip
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

    def _source_budget(self) -> int:
        """Padded source tokens per batch: max_tokens counts each of the beam's decoder rows."""
        return max(1, self.max_tokens // self.cfg.beam)

    def _translate_units(self, units: list[list[int]]) -> list[tuple[list[int], str | None]]:
        """(output ids, error) per unit; empty units translate to nothing."""
        outputs: list[tuple[list[int], str | None]] = [([], None)] * len(units)
        todo = [i for i, ids in enumerate(units) if ids]
        lengths = [len(units[i]) + 1 for i in todo]  # + eos
        batches = batch_order(lengths, self._source_budget(), self.max_sentences)
        pending = deque([todo[j] for j in batch] for batch in batches)
        while pending:
            rows = pending.popleft()
            # Cut again by the limits of now: an earlier batch may have run out of memory.
            fit = _rows_fitting(len(units[rows[0]]) + 1, self._source_budget(), self.max_sentences)
            if fit < len(rows):
                pending.appendleft(rows[fit:])
                rows = rows[:fit]
            for i, out in zip(rows, self._decode_or_split(rows, units)):
                outputs[i] = (
                    ([], f"decoding failed: {out}") if isinstance(out, str) else (out, None)
                )
        return outputs

    def _decode_or_split(self, rows: list[int], units: list[list[int]]) -> list[list[int] | str]:
        """Output ids per row, or for a row that fails alone the error. A failing batch is cut in
        halves (as s2s.poison bisects): out of GPU memory, each half may fit; a bad sentence
        (any other RuntimeError or ValueError) is found in ~2 log2(n) calls, not n."""
        try:
            return self._decode([units[i] for i in rows])
        except (RuntimeError, ValueError) as err:
            oom, error = is_out_of_memory(err), describe(err)
        # Past the except block: the error's traceback no longer holds the batch's tensors.
        if oom:
            self._after_out_of_memory(rows, units)
        if len(rows) == 1:
            log.warning("a sentence of %d tokens failed: %s", len(units[rows[0]]), error)
            return [error]
        middle = len(rows) // 2
        return self._decode_or_split(rows[:middle], units) + self._decode_or_split(
            rows[middle:], units
        )

    def _after_out_of_memory(self, rows: list[int], units: list[list[int]]) -> None:
        """Free the failed batch's cached blocks and keep every later batch at most half its
        size: retrying at the size that failed would fail again on the next such batch."""
        if self.device.type == "cuda":
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
            self.device, len(rows), width, self.max_tokens, self.max_sentences,
        )  # fmt: skip
        self._warned_oom = True

    def _decode(self, sources: list[list[int]]) -> list[list[int]]:
        if self.cfg.engine == "ctranslate2":
            return self._decode_ctranslate2(sources)
        src = collate([(ids, []) for ids in sources])["src"].to(self.device)  # (B, S) with eos
        cfg = self.cfg
        with autocast(self.precision, self.device):
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

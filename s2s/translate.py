"""The batch-translation job: document files in, one translation file per input file out.

    driver    list inputs ─▶ skip those whose output is complete ─▶ cut the rest into pieces
              ─▶ skip pieces an interrupted run already finished
    Ray Data  pieces ─▶ translator actor pool: read, split into sentences, sort by length,
              translate in token-budget batches, rejoin, write the piece's results
    driver    as an input's last piece lands: its output file in one atomic write, checked
              (rows == documents); at the end ``_run.json``

Why pieces rather than ``ray.data.read_json``: a piece is a byte range or run of row groups with
a fixed identity, so every document has exactly one place in exactly one output file, a retried
actor task rewrites the same piece file (never a second copy), and a rerun picks up where an
interrupted one stopped. Ray Data still schedules the actors, retries them when they die, grows
the pool with the backlog and shows progress.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch

from s2s import __version__, storage
from s2s.config import TranslateConfig, from_dict
from s2s.documents import (
    WORK_DIR,
    Documents,
    InputFile,
    Piece,
    count_documents,
    count_output_rows,
    plan_outputs,
    plan_pieces,
    read_piece,
    result_table,
    write_output,
)
from s2s.lease import LEASE_NAME, Lease
from s2s.translator import DocumentResult, Translator
from s2s.translator import model_id as translator_model_id

__all__ = ["translate", "TranslateResult", "RUN_SUMMARY"]

log = logging.getLogger(__name__)
RUN_SUMMARY = "_run.json"
_ERROR_SAMPLES = 20
_COUNTS = (
    "documents",
    "errors",
    "warnings",
    "sentences",
    "src_tokens",
    "tgt_tokens",
    "blank_lines",
)


@dataclass
class TranslateResult:
    output: str
    summary: dict  # what _run.json holds


def translate(cfg: TranslateConfig) -> TranslateResult:
    """Translate every document under ``cfg.input`` whose output is not complete yet.

    Raises:
        ConfigError, StorageError: before any work, for bad settings or unreachable storage.
    """
    cfg.validate()
    # Absolute paths: Ray workers do not share the driver's working directory.
    cfg = dataclasses.replace(
        cfg,
        input=storage.absolute(cfg.input),
        output=storage.absolute(cfg.output),
        model=storage.absolute(cfg.model),
    )
    started = time.time()
    files = storage.check_inputs([cfg.input])
    storage.check_output(cfg.output)
    model_id = translator_model_id(cfg)
    with Lease(storage.join(cfg.output, LEASE_NAME), cfg.lease_ttl_s) as lease:
        summary = _translate_under_lease(cfg, files, model_id, lease, started)
    return TranslateResult(cfg.output, summary)


def _translate_under_lease(
    cfg: TranslateConfig, files: list, model_id: str, lease: Lease, started: float
) -> dict:
    inputs = plan_outputs(files, cfg.input, cfg.output, cfg.input_format, cfg.format)
    # Two listings, not a request per file: a nightly prefix may hold many thousands.
    written = {ref.uri for ref in storage.expand(cfg.output)}
    todo = [i for i, f in enumerate(inputs) if cfg.overwrite or f.output not in written]
    already_complete = len(inputs) - len(todo)
    settings = json.dumps([model_id, _decode_settings(cfg)])
    failed: dict[int, str] = {}  # input -> why it could not be translated (reported, not fatal)
    pieces = {}
    for i in todo:
        try:
            pieces[i] = plan_pieces(i, inputs[i], cfg.output, settings, int(cfg.piece_mb * 2**20))
        except storage.StorageError as err:  # e.g. a Parquet file whose footer is broken
            failed[i] = str(err)
    todo = [i for i in todo if i in pieces]
    if cfg.overwrite:
        for i in todo:
            storage.remove_tree(pieces[i][0].work.rsplit("/", 1)[0])
    finished_pieces = {ref.uri for ref in storage.expand(storage.join(cfg.output, WORK_DIR))}
    pending = [p for i in todo for p in pieces[i] if p.work not in finished_pieces]
    reused = sum(map(len, pieces.values())) - len(pending)
    log.info(
        "%d inputs: %d complete, %d to translate in %d pieces (%d left by an earlier run)",
        len(inputs), already_complete, len(todo), len(pending), reused,
    )  # fmt: skip

    totals = Counter()
    error_samples: list[str] = list(failed.values())
    remaining = Counter(p.input for p in pending)
    finished: list[int] = []
    rows_written = 0

    def finish(i: int) -> None:
        nonlocal rows_written
        try:
            rows_written += _finish(inputs[i], pieces[i], cfg.format)
            finished.append(i)
        except storage.StorageError as err:  # reported; the other inputs go on
            failed[i] = str(err)
            error_samples.append(str(err))

    for i in todo:  # inputs all of whose pieces an earlier run finished
        if not remaining[i]:
            finish(i)
    if pending:
        for summary in _run_pieces(cfg, inputs, pending, model_id):
            lease.check()
            i = summary["input"]
            if summary["failed"]:
                failed[i] = summary["failed"]
                error_samples.append(summary["failed"])
            totals.update({key: summary[key] for key in _COUNTS})
            error_samples += summary["error_samples"][: max(0, _ERROR_SAMPLES - len(error_samples))]
            remaining[i] -= 1
            if not remaining[i] and i not in failed:
                finish(i)
    seconds = time.time() - started
    summary = {
        "s2s_version": __version__,
        "model": model_id,
        "input": cfg.input,
        "output": cfg.output,
        "inputs": {
            "total": len(inputs),
            "already_complete": already_complete,
            "translated": len(finished),  # failed inputs count in neither
            "failed": [{"input": inputs[i].uri, "error": err} for i, err in sorted(failed.items())],
        },
        "pieces": {"translated": len(pending), "reused_from_earlier_run": reused},
        "documents": totals["documents"],
        "rows_written": rows_written,
        "errors": totals["errors"],
        "warnings": totals["warnings"],
        "error_samples": error_samples[:_ERROR_SAMPLES],
        "blank_lines_skipped": totals["blank_lines"],
        "sentences": totals["sentences"],
        "src_tokens": totals["src_tokens"],
        "tgt_tokens": totals["tgt_tokens"],
        "seconds": round(seconds, 2),
        "documents_per_s": round(totals["documents"] / seconds, 2),
        "sentences_per_s": round(totals["sentences"] / seconds, 2),
        "tokens_per_s": round(totals["tgt_tokens"] / seconds, 1),
        "settings": _decode_settings(cfg),
    }
    storage.write_bytes(
        storage.join(cfg.output, RUN_SUMMARY), json.dumps(summary, indent=2).encode()
    )
    return summary


def _decode_settings(cfg: TranslateConfig) -> dict:
    """What changes a translation; a piece from a run with other settings is not reused."""
    keys = (
        "engine",
        "compute_type",
        "beam",
        "length_penalty",
        "max_len_a",
        "max_len_b",
        "max_input_tokens",
        "precision",
        "max_document_chars",
        "id_column",
        "text_column",
        "keep_source",
        "input_format",
    )
    return {k: getattr(cfg, k) for k in keys}


def _finish(source: InputFile, pieces: list[Piece], out_format: str) -> int:
    """Write an input's output file from its pieces, check its row count, drop the pieces."""
    table = pa.concat_tables([_read_work(p.work) for p in pieces])
    expected = count_documents(source)
    if table.num_rows != expected:  # the input changed under the run: redo it next time
        storage.remove_tree(pieces[0].work.rsplit("/", 1)[0])
        raise storage.StorageError(
            f"{source.uri}: {table.num_rows} documents translated, {expected} in the file now"
        )
    write_output(table, source.output, out_format)
    written = count_output_rows(source.output, out_format)
    if written != expected:
        raise storage.StorageError(
            f"{source.output}: wrote {written} rows for {expected} documents"
        )
    storage.remove_tree(pieces[0].work.rsplit("/", 1)[0])
    log.info("%s: %d documents -> %s", source.name, table.num_rows, source.output)
    return table.num_rows


def _read_work(uri: str) -> pa.Table:
    fs, path = storage.filesystem(uri)
    with fs.open_input_file(path) as f:
        return pq.read_table(f)


def _run_pieces(cfg: TranslateConfig, inputs: list[InputFile], pending: list[Piece], model_id):
    """Yield one summary per piece as the translator pool finishes it."""
    if not ray.is_initialized():
        # No address: an embedded local cluster; under `ray job submit` or with RAY_ADDRESS set,
        # that cluster.
        ray.init(logging_level=logging.WARNING)
    min_actors, max_actors = cfg.actor_pool()
    items = [
        # Each piece travels with its input's description: actors need nothing else.
        json.dumps([[dataclasses.asdict(p), dataclasses.asdict(inputs[p.input])] for p in item])
        for item in _work_items(inputs, pending, int(cfg.piece_mb * 2**20))
    ]
    dataset = ray.data.from_items(
        [{"pieces": item} for item in items], override_num_blocks=len(items)
    ).map_batches(
        _PieceTranslator,
        fn_constructor_kwargs={"cfg": dataclasses.asdict(cfg), "model_id": model_id},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(min_size=min_actors, max_size=max_actors),
        num_cpus=cfg.cpus_per_actor,
        num_gpus=cfg.gpus_per_actor if cfg.use_gpu else 0,
    )
    for row in dataset.iter_rows():
        yield from json.loads(row["summaries"])


def _work_items(
    inputs: list[InputFile], pending: list[Piece], piece_bytes: int
) -> list[list[Piece]]:
    """Pieces grouped into actor calls: small files (a text document each) share a call, so
    their sentences batch together."""
    items, current, size = [], [], 0
    for piece in pending:
        source = inputs[piece.input]
        piece_size = (
            piece.end - piece.start if source.format == "jsonl" and piece.end else source.size
        )
        if current and size + piece_size > piece_bytes:
            items.append(current)
            current, size = [], 0
        current.append(piece)
        size += piece_size
    return items + ([current] if current else [])


class _PieceTranslator:
    """A translator actor: loads the checkpoint once, then translates work items of pieces."""

    def __init__(self, cfg: dict, model_id: str) -> None:
        # All torch work runs on one thread of our own: Ray Data calls __init__ and __call__ on
        # different threads, OpenMP keeps a team of worker threads per calling thread, and two
        # teams on the same cores translate 40% slower (measured; see README, bench_translate).
        self._engine = ThreadPoolExecutor(1, thread_name_prefix="s2s-engine")
        self.cfg = from_dict(TranslateConfig, cfg)
        self.translator = self._engine.submit(self._load, model_id).result()

    def _load(self, model_id: str) -> Translator:
        torch.set_num_threads(self.cfg.torch_threads or max(1, math.floor(self.cfg.cpus_per_actor)))
        translator = Translator(self.cfg)
        if translator.model_id != model_id:
            raise RuntimeError(
                f"{self.cfg.model} changed during the run ({model_id} -> {translator.model_id})"
            )
        return translator

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        return self._engine.submit(self._call, batch).result()

    def _call(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        summaries = []
        for item in batch["pieces"]:
            pieces = [(Piece(**p), InputFile(**source)) for p, source in json.loads(item)]
            summaries += self._translate(pieces)
        return {"summaries": [json.dumps(summaries)]}

    def _translate(self, pieces: list[tuple[Piece, InputFile]]) -> list[dict]:
        """Translate the documents of several pieces together; write each piece's results."""
        cfg, read, failed = self.cfg, [], {}
        for n, (piece, source) in enumerate(pieces):
            try:
                read.append(read_piece(source, piece, cfg.id_column, cfg.text_column))
            except storage.StorageError as err:  # the input is reported failed, not finished
                failed[n] = str(err)
                read.append(None)
        texts = [
            text if error is None else None
            for docs in read if docs is not None
            for text, error in zip(docs.texts, docs.errors)
        ]  # fmt: skip
        results = iter(self.translator.translate_documents(texts, cfg.max_document_chars))
        summaries = []
        for n, ((piece, source), docs) in enumerate(zip(pieces, read)):
            counts = Counter({key: 0 for key in _COUNTS})
            samples = []
            if docs is not None:
                mine = [next(results) for _ in docs.texts]
                table = self._table(docs, mine)
                _write_work(table, piece.work)
                errors = table.column("error").to_pylist()
                samples = [
                    f"{source.name}: id {i}: {e}" if i is not None else e
                    for i, e in zip(docs.ids, errors)
                    if e
                ]
                counts.update(
                    documents=len(mine),
                    errors=len(samples),
                    warnings=table.num_rows - table.column("warning").null_count,
                    sentences=sum(r.n_segments for r in mine),
                    src_tokens=sum(r.src_tokens for r in mine),
                    tgt_tokens=sum(r.tgt_tokens for r in mine),
                    blank_lines=docs.blank_lines,
                )
            summaries.append({
                "input": piece.input, "piece": piece.start, "failed": failed.get(n),
                "error_samples": samples[:_ERROR_SAMPLES], **counts,
            })  # fmt: skip
        return summaries

    def _table(self, docs: Documents, results: list[DocumentResult]) -> pa.Table:
        """The output rows of one piece; a row unreadable at input keeps its read error."""
        columns = {
            self.cfg.id_column: docs.ids,
            "translation": [None if e else r.translation for r, e in zip(results, docs.errors)],
            "n_segments": [r.n_segments for r in results],
            "error": [e or r.error for r, e in zip(results, docs.errors)],
            "warning": [
                "; ".join(w for w in (read_warning, r.warning) if w) or None
                for r, read_warning in zip(results, docs.warnings)
            ],
            "model": [self.translator.model_id] * len(results),
            "source": [t if isinstance(t, str) else None for t in docs.texts],
        }
        return result_table(self.cfg.id_column, columns, self.cfg.keep_source)


def _write_work(table: pa.Table, uri: str) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    storage.write_bytes(uri, buffer.getvalue())

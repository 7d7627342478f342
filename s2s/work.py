"""The actor side of the translate job: work items of pieces in, result files and summaries out.

A work item is one call of a translator actor: pieces of one or more input files (byte ranges of
JSONL, runs of Parquet row groups, whole text files; see :mod:`s2s.documents`), as JSON. The
actor reads them, translates their documents together (their sentences batch across files),
writes each piece's result file and returns one :class:`PieceSummary` per piece. Ray-free: Ray
Data hosts :class:`PieceTranslator` in its actor pool (:mod:`s2s.translate`), a test can call it
in-process.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import torch

from s2s import storage
from s2s.config import TranslateConfig, from_dict
from s2s.documents import Documents, InputFile, Piece, read_piece, result_table, write_work
from s2s.poison import NOT_ABOUT_A_RECORD, describe, isolate
from s2s.translator import DocumentResult, Translator

__all__ = ["DocumentCounts", "PieceSummary", "PieceTranslator", "work_items"]

ERROR_SAMPLES = 20  # error messages a piece's summary carries, at most
# Pieces per work item (one actor call), at most. Packed by piece_mb alone, an inbox of small files
# puts thousands in each item: a handful of items for the whole pool, finishing in bursts, and a
# lost actor redoing thousands of files. 256 short documents still batch well.
_ITEM_PIECES = 256
_IO_THREADS = 8  # per actor: reading small pieces and writing results is latency-bound


@dataclass
class DocumentCounts:
    """What the documents of one piece, or of the whole run, came to."""

    documents: int = 0
    errors: int = 0  # documents whose row has an error
    warnings: int = 0  # documents whose row has a warning
    sentences: int = 0
    src_tokens: int = 0
    tgt_tokens: int = 0
    placeholder_sentences: int = 0  # sentences whose source holds placeholders...
    placeholders_lost: int = 0  # ...and whose translation does not keep them
    blank_lines: int = 0  # blank JSONL lines: skipped, no document

    def add(self, other: DocumentCounts) -> None:
        for name in (f.name for f in dataclasses.fields(self)):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class PieceSummary:
    """What the driver learns of one translated piece. It comes back from the actor through Ray
    Data as a JSON string: a column of plain strings, with no nested schema for Ray Data to
    infer and reconcile across blocks."""

    input: int  # index into the plan's inputs
    piece: int  # the piece's start (byte or row group)
    failed: str | None = None  # why the piece could not be read: its input fails
    error_samples: list[str] = field(default_factory=list)  # the first ERROR_SAMPLES
    counts: DocumentCounts = field(default_factory=DocumentCounts)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> PieceSummary:
        fields = json.loads(text)
        return cls(**{**fields, "counts": DocumentCounts(**fields["counts"])})


def work_items(pieces: Iterable[Piece], inputs: list[InputFile], piece_bytes: int) -> Iterator[str]:
    """Pieces grouped into actor calls, as the JSON that travels to the actors: small files share
    a call, so their sentences batch together; a call holds at most _ITEM_PIECES pieces."""
    item: list[tuple[Piece, InputFile]] = []
    size = 0
    for piece in pieces:
        source = inputs[piece.input]
        piece_size = (
            piece.end - piece.start if source.format == "jsonl" and piece.end else source.size
        )
        if item and (size + piece_size > piece_bytes or len(item) >= _ITEM_PIECES):
            yield _encode_item(item)
            item, size = [], 0
        item.append((piece, source))
        size += piece_size
    if item:
        yield _encode_item(item)


def _encode_item(item: list[tuple[Piece, InputFile]]) -> str:
    """A work item as it travels to an actor: each piece with its input's description, so the
    actor needs nothing else; plain tuples in JSON, for Ray Data's column of strings."""
    return json.dumps([[dataclasses.astuple(p), dataclasses.astuple(s)] for p, s in item])


def _decode_item(text: str) -> list[tuple[Piece, InputFile]]:
    """The pieces of a work item, as :func:`_encode_item` wrote them."""
    return [(Piece(*piece), InputFile(*source)) for piece, source in json.loads(text)]


class PieceTranslator:
    """A translator actor: loads the checkpoint once, then translates work items of pieces."""

    def __init__(self, cfg: dict, model_id: str) -> None:
        # All torch work runs on one thread of our own: Ray Data calls __init__ and __call__ on
        # different threads, OpenMP keeps a team of worker threads per calling thread, and two
        # teams on the same cores translate 40% slower (measured; see README, bench_translate).
        self._engine = ThreadPoolExecutor(1, thread_name_prefix="s2s-engine")
        self._io = ThreadPoolExecutor(_IO_THREADS, thread_name_prefix="s2s-io")
        self.cfg = from_dict(TranslateConfig, cfg)
        self.translator = self._engine.submit(self._load, model_id).result()

    def _load(self, model_id: str) -> Translator:
        torch.set_num_threads(self.cfg.torch_threads or max(1, math.floor(self.cfg.cpus_per_actor)))
        # A fraction of a GPU (several actors on one): torch's allocator is capped at it.
        translator = Translator(self.cfg, gpu_share=self.cfg.gpus_per_actor)
        if translator.model_id != model_id:
            changed = f"{model_id} -> {translator.model_id}"
            raise RuntimeError(f"{self.cfg.checkpoint} changed during the run ({changed})")
        return translator

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        return self._engine.submit(self._call, batch).result()

    def _call(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        """One row per piece out, its summary as JSON (see PieceSummary)."""
        summaries = [s for item in batch["pieces"] for s in self._translate(_decode_item(item))]
        return {"summary": [summary.to_json() for summary in summaries]}

    def _read(self, job: tuple[Piece, InputFile]) -> tuple[Documents | None, str | None]:
        """(the piece's documents, None), or (None, why the piece, so its input, fails)."""
        piece, source = job
        try:
            return read_piece(source, piece, self.cfg.id_column, self.cfg.text_column), None
        except storage.StorageError as err:  # the input is reported failed, not finished
            return None, str(err)
        except NOT_ABOUT_A_RECORD:
            raise
        except Exception as err:  # content no reader step expected: this input fails alone
            return None, f"{source.uri}: cannot read: {describe(err)}"

    def _translate(self, pieces: list[tuple[Piece, InputFile]]) -> list[PieceSummary]:
        """Translate the documents of several pieces together; write each piece's results."""
        read = list(self._io.map(self._read, pieces))  # (documents, why unreadable) per piece
        texts = [
            text if error is None else None  # an unreadable row: nothing to translate
            for docs, _ in read
            if docs is not None
            for text, error in zip(docs.texts, docs.errors)
        ]
        done = iter(self.translator.translate_documents(texts, self.cfg.max_document_chars))
        mine = [None if docs is None else [next(done) for _ in docs.texts] for docs, _ in read]
        tables = [None if r is None else self._table(d, r) for (d, _), r in zip(read, mine)]
        writes = [(table, p.work) for table, (p, _) in zip(tables, pieces) if table is not None]
        list(self._io.map(lambda job: write_work(*job), writes))
        return [
            _piece_summary(piece, source, docs, table, results, failed)
            for (piece, source), (docs, failed), table, results in zip(pieces, read, tables, mine)
        ]

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
            "placeholders_lost": [r.placeholders_lost for r in results],
            "model": [self.translator.model_id] * len(results),
            "source": [t if isinstance(t, str) else None for t in docs.texts],
        }
        return _writable_table(columns, self.cfg.id_column, self.cfg.keep_source)


def _writable_table(columns: dict[str, list], id_column: str, keep_source: bool) -> pa.Table:
    """:func:`result_table` of the columns; a row that cannot be written (a value Arrow refuses,
    see :mod:`s2s.poison`) becomes an error row instead of failing its piece's other rows."""
    try:
        return result_table(id_column, columns, keep_source)
    except NOT_ABOUT_A_RECORD:
        raise
    except Exception:  # find the rows that cannot be written; the others are kept
        check = functools.partial(_check_rows, columns, id_column, keep_source)
        rows = range(len(columns["error"]))
        for row, failed in enumerate(isolate(check, rows, lambda _, err: err)):
            if failed is not None:
                for name in (id_column, "translation", "warning", "source"):
                    columns[name][row] = None
                columns["error"][row] = f"cannot write this row: {describe(failed)}"
    return result_table(id_column, columns, keep_source)


def _check_rows(
    columns: dict[str, list], id_column: str, keep_source: bool, rows: list[int]
) -> list[None]:
    """Build the table of these rows alone (raises if one cannot be written; see isolate)."""
    result_table(id_column, {k: [v[i] for i in rows] for k, v in columns.items()}, keep_source)
    return [None] * len(rows)


def _piece_summary(
    piece: Piece,
    source: InputFile,
    docs: Documents | None,
    table: pa.Table | None,
    results: list[DocumentResult] | None,
    failed: str | None,
) -> PieceSummary:
    """What the driver counts of one piece (all zero, ``failed`` set, for an unreadable one)."""
    summary = PieceSummary(piece.input, piece.start, failed)
    if table is None:
        return summary
    errors = table.column("error").to_pylist()
    samples = [
        f"{source.name}: id {i}: {e}" if i is not None else e for i, e in zip(docs.ids, errors) if e
    ]
    summary.error_samples = samples[:ERROR_SAMPLES]
    summary.counts = DocumentCounts(
        documents=len(results),
        errors=len(samples),
        warnings=table.num_rows - table.column("warning").null_count,
        sentences=sum(r.n_segments for r in results),
        src_tokens=sum(r.src_tokens for r in results),
        tgt_tokens=sum(r.tgt_tokens for r in results),
        placeholder_sentences=sum(r.placeholder_sentences for r in results),
        placeholders_lost=sum(r.placeholders_lost for r in results),
        blank_lines=docs.blank_lines,
    )
    return summary

"""The batch-translation job: document files in, one translation file per input file out.

    driver     list inputs and outputs (a listing each, no request per file) ─▶ skip inputs whose
               output is complete ─▶ cut the rest into pieces ─▶ skip pieces an interrupted run
               already finished
    Ray Data   pieces ─▶ translator actor pool: read, split into sentences, sort by length,
               translate in token-budget batches, rejoin, write the piece's results
    Ray tasks  as an input's last piece lands: its output file in one atomic write, checked
               (rows == documents), its pieces deleted; the driver writes ``_run.json`` at the end

Why pieces rather than ``ray.data.read_json``: a piece is a byte range or run of row groups with
a fixed identity, so every document has exactly one place in exactly one output file, a retried
actor task rewrites the same piece file (never a second copy), and a rerun picks up where an
interrupted one stopped. Ray Data still schedules the actors, retries them when they die, grows
the pool with the backlog and shows progress.

Why finishing runs in tasks: it costs several requests per input (read the pieces, count the
input's documents again, write, count the rows written, delete the pieces); for a nightly inbox of
100,000 small files that is most of the requests of the run, too many for one process. The driver
keeps an integer per input, a few futures and a bounded ``_run.json`` (counts, the first failures).
"""

from __future__ import annotations

import bisect
import dataclasses
import json
import logging
import math
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import ray
import torch

from s2s import __version__, cluster, storage
from s2s.config import TranslateConfig, from_dict
from s2s.documents import (
    WORK_DIR,
    Documents,
    InputFile,
    Piece,
    finish_input,
    plan_outputs,
    plan_pieces,
    read_piece,
    result_table,
    write_work,
)
from s2s.lease import LEASE_NAME, Lease
from s2s.poison import NOT_ABOUT_A_RECORD, describe, isolate
from s2s.translator import DocumentResult, Translator
from s2s.translator import model_id as translator_model_id

__all__ = ["translate", "TranslateResult", "RUN_SUMMARY"]

log = logging.getLogger(__name__)
RUN_SUMMARY = "_run.json"
_ERROR_SAMPLES = 20
# _run.json counts every failed input but lists only the first this many (in input order): the
# summary of a 100,000-file inbox stays small even when every file fails.
_FAILURES_LISTED = 100
_COUNTS = (
    "documents", "errors", "warnings", "sentences", "src_tokens", "tgt_tokens", "blank_lines",
)  # fmt: skip
# Pieces per work item (one actor call), at most. Packed by piece_mb alone, an inbox of small files
# puts thousands in each item: a handful of items for the whole pool, finishing in bursts, and a
# lost actor redoing thousands of files. 256 short documents still batch well.
_ITEM_PIECES = 256
_IO_THREADS = 8  # per actor: reading small pieces and writing results is latency-bound
# Finishing tasks reserve no CPU: each is a few requests per input, and a translator pool sized to
# the nodes (cpus_per_actor = a node's cores, the usual setting) leaves no fraction of a CPU free,
# so a task asking for 0.1 would wait for the pool to end, or make an autoscaler add a node for
# it. The driver bounds them instead: this many in flight per node alive when the run starts.
_FINISH_CPUS = 0
_FINISH_TASKS_PER_NODE = 2
_FINISH_BATCH = 64  # inputs per finishing task, at most; fewer when fewer are ready
_FINISH_THREADS = 8  # inputs finished concurrently within a task (I/O-bound)


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
    files = storage.check_inputs([cfg.input])  # one listing
    # Connects to Ray only for local paths (S3 alone: a rerun with nothing to do starts no Ray).
    # Local paths on one node: actors and finishing tasks stay there.
    place = cluster.check_local_paths([cfg.input, cfg.output, cfg.model], cfg.shared_fs)
    storage.check_output(cfg.output)
    model_id = translator_model_id(cfg)
    inputs = plan_outputs(files, cfg.input, cfg.output, cfg.input_format, cfg.format)
    del files  # a nightly prefix may hold 100,000: keep one record per input, not two
    with Lease(storage.join(cfg.output, LEASE_NAME), cfg.lease_ttl_s) as lease:
        summary = _translate_under_lease(cfg, inputs, model_id, lease, started, place)
    return TranslateResult(cfg.output, summary)


@dataclass
class _Plan:
    """What planning found; ``remaining`` is the one thing kept per input."""

    remaining: list[int]  # input -> pieces still to translate; -1 once the input failed
    ready: list[int] = field(default_factory=list)  # inputs an earlier run translated wholly
    already_complete: int = 0  # inputs
    to_translate: int = 0  # inputs
    pieces: int = 0  # pieces to translate
    reused: int = 0  # pieces an earlier run finished


class _Report:
    """Failures and error samples, bounded whatever the inbox size: every failed input counted,
    the first _FAILURES_LISTED listed (in input order), the first _ERROR_SAMPLES messages kept.
    The driver's two threads write to it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.failed_count = 0
        self.failed: list[tuple[int, str, str]] = []  # (input, URI, why)
        self.samples: list[str] = []

    def fail(self, i: int, uri: str, error: str) -> None:
        with self._lock:
            self.failed_count += 1
            bisect.insort(self.failed, (i, uri, error))
            del self.failed[_FAILURES_LISTED:]
        self.sample([error])

    def sample(self, errors: list[str]) -> None:
        with self._lock:
            self.samples += errors[: max(0, _ERROR_SAMPLES - len(self.samples))]


def _translate_under_lease(
    cfg: TranslateConfig,
    inputs: list[InputFile],
    model_id: str,
    lease: Lease,
    started: float,
    place: dict,
) -> dict:
    settings = json.dumps([model_id, _decode_settings(cfg)])
    piece_bytes = int(cfg.piece_mb * 2**20)
    plan, report = _Plan(remaining=[0] * len(inputs)), _Report()
    pending = _pending_pieces(cfg, inputs, settings, piece_bytes, plan, report)
    items = list(_work_items(pending, inputs, piece_bytes))
    log.info(
        "%d inputs: %d complete, %d to translate in %d pieces (%d left by an earlier run)",
        len(inputs), plan.already_complete, plan.to_translate, plan.pieces, plan.reused,
    )  # fmt: skip
    totals = Counter({key: 0 for key in _COUNTS})
    translated = rows_written = 0
    planning_s = time.time() - started
    if items or plan.ready:
        cluster.connect()
        plan_args = (cfg.output, settings, piece_bytes, cfg.format)
        finisher = _Finisher(inputs, plan_args, report, place)
        try:
            for i in plan.ready:  # inputs all of whose pieces an earlier run finished
                finisher.put(i)
            summaries = _run_pieces(cfg, items, model_id, place) if items else iter(())
            del items  # Ray Data holds them now
            planning_s = time.time() - started
            log.info("planned in %.1f s", planning_s)
            for summary in summaries:
                lease.check()
                i = summary["input"]
                totals.update({key: summary[key] for key in _COUNTS})
                report.sample(summary["error_samples"])
                if summary["failed"] and plan.remaining[i] >= 0:
                    plan.remaining[i] = -1  # reported, never finished; the others go on
                    report.fail(i, inputs[i].uri, summary["failed"])
                elif plan.remaining[i] > 0:
                    plan.remaining[i] -= 1
                    if not plan.remaining[i]:
                        finisher.put(i)
            finisher.close(lease)
        finally:
            finisher.stop()
        translated, rows_written = finisher.translated, finisher.rows_written
    seconds = time.time() - started
    summary = {
        "s2s_version": __version__,
        "model": model_id,
        "input": cfg.input,
        "output": cfg.output,
        "inputs": {
            "total": len(inputs),
            "already_complete": plan.already_complete,
            "translated": translated,  # failed inputs count in neither
            "failed_count": report.failed_count,
            # The first _FAILURES_LISTED, in input order; failed_count has them all.
            "failed": [{"input": uri, "error": err} for _, uri, err in report.failed],
        },
        "pieces": {"translated": plan.pieces, "reused_from_earlier_run": plan.reused},
        "documents": totals["documents"],
        "rows_written": rows_written,
        "errors": totals["errors"],
        "warnings": totals["warnings"],
        "error_samples": report.samples,
        "blank_lines_skipped": totals["blank_lines"],
        "sentences": totals["sentences"],
        "src_tokens": totals["src_tokens"],
        "tgt_tokens": totals["tgt_tokens"],
        "planning_s": round(planning_s, 2),  # listing and pieces, until work is handed to Ray
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


def _pending_pieces(
    cfg: TranslateConfig,
    inputs: list[InputFile],
    settings: str,
    piece_bytes: int,
    plan: _Plan,
    report: _Report,
) -> Iterator[Piece]:
    """The pieces to translate, input by input; what else planning finds goes into ``plan``.

    One listing of the output prefix says both which outputs exist and which pieces an earlier
    run finished; cutting JSONL and text inputs needs only the sizes the input listing gave.
    """
    work_root = storage.join(cfg.output, WORK_DIR)
    written: set[str] = set()
    finished: set[str] = set()
    if cfg.overwrite:
        storage.remove_tree(work_root)  # one listing and batched deletes, not a request per file
    else:
        for ref in storage.expand(cfg.output):
            (finished if ref.uri.startswith(work_root + "/") else written).add(ref.uri)
    for i, source in enumerate(inputs):
        if source.output in written:
            plan.already_complete += 1
            continue
        try:
            pieces = plan_pieces(i, source, cfg.output, settings, piece_bytes)
        except storage.StorageError as err:  # e.g. a large Parquet file whose footer is broken
            plan.remaining[i] = -1
            report.fail(i, source.uri, str(err))
            continue
        todo = [p for p in pieces if p.work not in finished]
        plan.to_translate += 1
        plan.pieces += len(todo)
        plan.reused += len(pieces) - len(todo)
        plan.remaining[i] = len(todo)
        if not todo:
            plan.ready.append(i)
        yield from todo


def _decode_settings(cfg: TranslateConfig) -> dict:
    """What changes a translation; a piece from a run with other settings is not reused."""
    keys = (
        "engine", "compute_type", "beam", "length_penalty", "max_len_a", "max_len_b",
        "max_input_tokens", "precision", "max_document_chars", "id_column", "text_column",
        "keep_source", "input_format",
    )  # fmt: skip
    return {k: getattr(cfg, k) for k in keys}


@ray.remote(num_cpus=_FINISH_CPUS, scheduling_strategy="SPREAD")
def _finish_inputs(jobs: list[tuple[int, tuple]], plan: tuple) -> list[tuple[int, int, str | None]]:
    """A Ray task: write the output files of inputs whose pieces are all in, each on its own (a
    StorageError fails that input, not the others). Safe to retry (``finish_input``).

    Args:
        jobs: (input index, the InputFile's fields) per input.
        plan: (output root, settings, piece bytes, output format): what cut the pieces.

    Returns:
        (input index, rows written, why it failed or None) per input.
    """
    output, settings, piece_bytes, out_format = plan

    def finish(job: tuple[int, tuple]) -> tuple[int, int, str | None]:
        i, source = job[0], InputFile(*job[1])
        try:
            pieces = plan_pieces(i, source, output, settings, piece_bytes)
            return i, finish_input(source, pieces, out_format), None
        except storage.StorageError as err:
            return i, 0, str(err)

    with ThreadPoolExecutor(min(_FINISH_THREADS, len(jobs))) as pool:
        return list(pool.map(finish, jobs))


class _Finisher:
    """Finishing tasks, submitted from a driver thread as inputs complete: at most a few in flight
    (_FINISH_TASKS_PER_NODE per node), each for up to _FINISH_BATCH inputs, results counted as
    they come. The driver holds a few futures, never one per input."""

    def __init__(self, inputs: list[InputFile], plan: tuple, report: _Report, place: dict) -> None:
        self.inputs, self.plan, self.report = inputs, plan, report
        self.task = _finish_inputs.options(**place)
        self.in_flight = _FINISH_TASKS_PER_NODE * max(1, sum(n["Alive"] for n in ray.nodes()))
        self.translated = self.rows_written = 0
        self._ready: queue.SimpleQueue[int | None] = queue.SimpleQueue()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="s2s-finish", daemon=True)
        self._thread.start()

    def put(self, i: int) -> None:
        """Input ``i`` has all of its pieces: finish it."""
        if self._error:
            raise self._error
        self._ready.put(i)

    def close(self, lease: Lease) -> None:
        """No more inputs: wait until every one handed over is finished or failed."""
        self._ready.put(None)
        while self._thread.is_alive():
            lease.check()
            self._thread.join(1.0)
        if self._error:
            raise self._error

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as err:  # raised again in the driver's main thread
            self._error = err

    def _loop(self) -> None:
        waiting: deque[int] = deque()
        running: set[ray.ObjectRef] = set()
        closed = False
        while not self._stop.is_set() and (running or waiting or not closed):
            closed = self._take(waiting, block=not (running or waiting)) or closed
            while waiting and len(running) < self.in_flight:
                batch = [waiting.popleft() for _ in range(min(_FINISH_BATCH, len(waiting)))]
                jobs = [(i, dataclasses.astuple(self.inputs[i])) for i in batch]
                running.add(self.task.remote(jobs, self.plan))
            if running:
                done, _ = ray.wait(list(running), num_returns=1, timeout=0.2)
                for ref in done:
                    running.remove(ref)
                    self._count(ray.get(ref))
        for ref in running:  # stopped: the run failed (a lost lease, an error)
            ray.cancel(ref)

    def _take(self, waiting: deque[int], block: bool) -> bool:
        """Move the inputs handed over so far into ``waiting``; True once there will be none."""
        try:
            i = self._ready.get(timeout=0.2) if block else self._ready.get_nowait()
            while i is not None:
                waiting.append(i)
                i = self._ready.get_nowait()
            return True
        except queue.Empty:
            return False

    def _count(self, results: list[tuple[int, int, str | None]]) -> None:
        for i, rows, error in results:
            source = self.inputs[i]
            if error:
                self.report.fail(i, source.uri, error)
            else:
                self.translated += 1
                self.rows_written += rows
                log.info("%s: %d documents -> %s", source.name, rows, source.output)


def _run_pieces(
    cfg: TranslateConfig, items: list[str], model_id: str, place: dict
) -> Iterator[dict]:
    """One summary per piece, as the translator pool finishes it."""
    min_actors, max_actors = cfg.actor_pool()
    # Ray Data would wait forever for actors the cluster cannot place (a --gpu job on a cluster
    # without GPUs): refuse up front, or give an autoscaler wait_for_workers_s to add them.
    per_actor = {"CPU": cfg.cpus_per_actor, "GPU": cfg.gpus_per_actor if cfg.use_gpu else 0}
    what = f"translate with {min_actors} translator actor(s)"
    fix = "lower the pool's minimum (concurrency=MIN,MAX) or the actors' resources"
    cluster.wait_for_capacity(per_actor, min_actors, what, cfg.wait_for_workers_s, fix)
    dataset = ray.data.from_items(
        [{"pieces": item} for item in items], override_num_blocks=len(items)
    ).map_batches(
        _PieceTranslator,
        fn_constructor_kwargs={"cfg": dataclasses.asdict(cfg), "model_id": model_id},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(min_size=min_actors, max_size=max_actors),
        num_cpus=cfg.cpus_per_actor,
        num_gpus=cfg.gpus_per_actor if cfg.use_gpu else 0,
        **place,
    )
    return (summary for row in dataset.iter_rows() for summary in json.loads(row["summaries"]))


def _work_items(
    pieces: Iterable[Piece], inputs: list[InputFile], piece_bytes: int
) -> Iterator[str]:
    """Pieces grouped into actor calls, as the JSON that travels to the actors: small files share
    a call, so their sentences batch together; a call holds at most _ITEM_PIECES pieces."""
    item, size = [], 0
    for piece in pieces:
        source = inputs[piece.input]
        piece_size = (
            piece.end - piece.start if source.format == "jsonl" and piece.end else source.size
        )
        if item and (size + piece_size > piece_bytes or len(item) >= _ITEM_PIECES):
            yield json.dumps(item)
            item, size = [], 0
        # Each piece travels with its input's description: actors need nothing else.
        item.append([dataclasses.astuple(piece), dataclasses.astuple(source)])
        size += piece_size
    if item:
        yield json.dumps(item)


class _PieceTranslator:
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
            raise RuntimeError(
                f"{self.cfg.model} changed during the run ({model_id} -> {translator.model_id})"
            )
        return translator

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        return self._engine.submit(self._call, batch).result()

    def _call(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        summaries = []
        for item in batch["pieces"]:
            pieces = [(Piece(*p), InputFile(*source)) for p, source in json.loads(item)]
            summaries += self._translate(pieces)
        return {"summaries": [json.dumps(summaries)]}

    def _read(self, job: tuple[Piece, InputFile]) -> tuple[Documents | None, str | None]:
        piece, source = job
        try:
            return read_piece(source, piece, self.cfg.id_column, self.cfg.text_column), None
        except storage.StorageError as err:  # the input is reported failed, not finished
            return None, str(err)
        except NOT_ABOUT_A_RECORD:
            raise
        except Exception as err:  # content no reader step expected: this input fails alone
            return None, f"{source.uri}: cannot read: {describe(err)}"

    def _translate(self, pieces: list[tuple[Piece, InputFile]]) -> list[dict]:
        """Translate the documents of several pieces together; write each piece's results."""
        read = list(self._io.map(self._read, pieces))  # (documents, why unreadable) per piece
        texts = [
            text if error is None else None
            for docs, _ in read if docs is not None
            for text, error in zip(docs.texts, docs.errors)
        ]  # fmt: skip
        results = iter(self.translator.translate_documents(texts, self.cfg.max_document_chars))
        mine = [None if docs is None else [next(results) for _ in docs.texts] for docs, _ in read]
        tables = [None if r is None else self._table(d, r) for (d, _), r in zip(read, mine)]
        writes = [(table, p.work) for table, (p, _) in zip(tables, pieces) if table is not None]
        list(self._io.map(lambda job: write_work(*job), writes))
        return [
            _summary(piece, source, docs, table, results, failed)
            for (piece, source), (docs, failed), table, results in zip(pieces, read, tables, mine)
        ]

    def _table(self, docs: Documents, results: list[DocumentResult]) -> pa.Table:
        """The output rows of one piece; a row unreadable at input keeps its read error, and a
        row that cannot be written (see :mod:`s2s.poison`) becomes an error row."""
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
        keep_source, id_column = self.cfg.keep_source, self.cfg.id_column

        def check(rows: list[int]) -> list[None]:
            result_table(
                id_column, {k: [v[i] for i in rows] for k, v in columns.items()}, keep_source
            )
            return [None] * len(rows)

        try:
            return result_table(id_column, columns, keep_source)
        except NOT_ABOUT_A_RECORD:
            raise
        except Exception:  # find the rows that cannot be written; the others are kept
            for row, failed in enumerate(isolate(check, range(len(results)), lambda _, e: e)):
                if failed is not None:
                    for name in (id_column, "translation", "warning", "source"):
                        columns[name][row] = None
                    columns["error"][row] = f"cannot write this row: {describe(failed)}"
        return result_table(id_column, columns, keep_source)


def _summary(
    piece: Piece,
    source: InputFile,
    docs: Documents | None,
    table: pa.Table | None,
    results: list[DocumentResult] | None,
    failed: str | None,
) -> dict:
    """What the driver counts of one piece (all zero, ``failed`` set, for an unreadable one)."""
    counts = Counter({key: 0 for key in _COUNTS})
    samples = []
    if table is not None:
        errors = table.column("error").to_pylist()
        samples = [
            f"{source.name}: id {i}: {e}" if i is not None else e
            for i, e in zip(docs.ids, errors)
            if e
        ]
        counts.update(
            documents=len(results),
            errors=len(samples),
            warnings=table.num_rows - table.column("warning").null_count,
            sentences=sum(r.n_segments for r in results),
            src_tokens=sum(r.src_tokens for r in results),
            tgt_tokens=sum(r.tgt_tokens for r in results),
            blank_lines=docs.blank_lines,
        )
    return {
        "input": piece.input, "piece": piece.start, "failed": failed,
        "error_samples": samples[:_ERROR_SAMPLES], **counts,
    }  # fmt: skip

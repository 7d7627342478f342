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

In code, three steps, each leaving a record for the next: :func:`_plan_run` gives a
:class:`RunPlan` (inputs, remaining pieces per input, work items); :func:`_translate_pieces`
counts the actors' :class:`PieceSummary` rows into a :class:`RunTotals` and hands complete inputs
to a :class:`_Finisher`; :func:`_run_summary` turns both into ``_run.json``.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import ray

from s2s import __version__, cluster, storage
from s2s.config import TranslateConfig
from s2s.documents import (
    WORK_DIR,
    InputFile,
    Piece,
    finish_input,
    plan_outputs,
    plan_pieces,
)
from s2s.engines import engine_model_id
from s2s.lease import LEASE_NAME, Lease
from s2s.work import ERROR_SAMPLES, DocumentCounts, PieceSummary, PieceTranslator, work_items

__all__ = ["translate", "TranslateResult", "RUN_SUMMARY"]

log = logging.getLogger(__name__)
RUN_SUMMARY = "_run.json"
# _run.json counts every failed input but lists only the first this many (in input order): the
# summary of a 100,000-file inbox stays small even when every file fails.
_FAILURES_LISTED = 100
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
    """What a run returns: where the outputs went, and what ``_run.json`` there holds (its keys
    are read by ``s2s translate``'s printed summary, jobs/pipeline.py and the tests)."""

    output: str
    summary: dict


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
        checkpoint=storage.absolute(cfg.checkpoint),
    )
    started = time.time()
    files = storage.check_inputs([cfg.input])  # one listing
    # Connects to Ray only for local paths (S3 alone: a rerun with nothing to do starts no Ray).
    # Local paths on one node: actors and finishing tasks stay there.
    place = cluster.check_local_paths([cfg.input, cfg.output, cfg.checkpoint], cfg.shared_fs)
    storage.check_output(cfg.output)
    model_id = engine_model_id(cfg)
    inputs = plan_outputs(files, cfg.input, cfg.output, cfg.input_format, cfg.format)
    del files  # a nightly prefix may hold 100,000: keep one record per input, not two
    with Lease(storage.join(cfg.output, LEASE_NAME), cfg.lease_ttl_s) as lease:
        summary = _translate_under_lease(cfg, inputs, model_id, lease, started, place)
    return TranslateResult(cfg.output, summary)


def _translate_under_lease(
    cfg: TranslateConfig,
    inputs: list[InputFile],
    model_id: str,
    lease: Lease,
    started: float,
    place: dict,
) -> dict:
    """The run as three steps, each leaving a record the next one reads: plan (a RunPlan),
    translate and finish (a RunTotals), then the summary, written as ``_run.json``. Failures of
    every step go to one bounded _Report."""
    report = _Report()
    plan = _plan_run(cfg, inputs, model_id, report)
    totals = _translate_pieces(cfg, plan, lease, report, place, started)
    summary = _run_summary(cfg, plan, totals, report, time.time() - started)
    run_json = json.dumps(summary, indent=2).encode()
    storage.write_bytes(storage.join(cfg.output, RUN_SUMMARY), run_json)
    return summary


@dataclass(frozen=True)
class PieceLayout:
    """How inputs are cut into pieces and how their outputs are written: what planning used,
    kept so that a finishing task cuts the same pieces again from an input alone."""

    output: str  # the output root; piece files go under <output>/_work/
    settings: str  # JSON of [model id, decoding settings]: a piece is reused only under the same
    piece_bytes: int
    out_format: str

    def pieces(self, index: int, source: InputFile) -> list[Piece]:
        """The pieces of input ``index``, the same whoever asks."""
        return plan_pieces(index, source, self.output, self.settings, self.piece_bytes)


@dataclass
class RunPlan:
    """What planning found, before any translation. ``remaining`` is the one number kept per
    input (a nightly inbox may hold 100,000): its pieces still to land; -1 once it failed."""

    model_id: str
    inputs: list[InputFile]
    layout: PieceLayout
    remaining: list[int]
    ready: list[int] = field(default_factory=list)  # inputs an earlier run translated wholly
    items: list[str] = field(default_factory=list)  # work items (JSON): one actor call each
    already_complete: int = 0  # inputs
    to_translate: int = 0  # inputs
    pieces: int = 0  # pieces to translate
    reused: int = 0  # pieces an earlier run finished

    def landed(self, piece: PieceSummary, report: _Report) -> bool:
        """Count a piece in; True when it was its input's last, so the input can be finished.
        A failed piece fails its input once; the input's other pieces are then ignored."""
        i = piece.input
        if piece.failed and self.remaining[i] >= 0:
            self.remaining[i] = -1  # reported, never finished; the other inputs go on
            report.fail(i, self.inputs[i].uri, piece.failed)
        elif self.remaining[i] > 0:
            self.remaining[i] -= 1
            return not self.remaining[i]
        return False


@dataclass
class RunTotals:
    """What the run counted: documents summed over pieces as they land (driver thread), inputs
    and rows as finishing tasks report them (the finisher's thread, read once it is closed)."""

    counts: DocumentCounts = field(default_factory=DocumentCounts)
    translated: int = 0  # inputs whose output file was written and checked
    rows_written: int = 0
    planning_s: float = 0.0  # listing and cutting pieces, until the work is handed to Ray


class _Report:
    """Failures and error samples, bounded whatever the inbox size: every failed input counted,
    the first _FAILURES_LISTED listed (in input order), the first ERROR_SAMPLES messages kept.
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
            self.samples += errors[: max(0, ERROR_SAMPLES - len(self.samples))]


def _plan_run(
    cfg: TranslateConfig, inputs: list[InputFile], model_id: str, report: _Report
) -> RunPlan:
    """Decide what the run does: which inputs are complete, which pieces an earlier run left,
    and the work items for the actors. Pieces stream straight into work items (one JSON string
    per actor call), so a large inbox is never held as Piece objects."""
    settings = json.dumps([model_id, _decode_settings(cfg)])
    layout = PieceLayout(cfg.output, settings, int(cfg.piece_mb * 2**20), cfg.format)
    plan = RunPlan(model_id, inputs, layout, remaining=[0] * len(inputs))
    plan.items = list(work_items(_pending_pieces(cfg, plan, report), inputs, layout.piece_bytes))
    log.info(
        "%d inputs: %d complete, %d to translate in %d pieces (%d left by an earlier run)",
        len(inputs),
        plan.already_complete,
        plan.to_translate,
        plan.pieces,
        plan.reused,
    )
    return plan


def _translate_pieces(
    cfg: TranslateConfig,
    plan: RunPlan,
    lease: Lease,
    report: _Report,
    place: dict,
    started: float,
) -> RunTotals:
    """Hand the work items to the translator pool and count piece summaries as they come. An
    input goes to the finisher when its last piece lands, or at once when an earlier run
    translated all of it. A rerun with nothing to do connects to no Ray cluster."""
    totals = RunTotals(planning_s=time.time() - started)
    if not (plan.items or plan.ready):
        return totals
    cluster.connect()
    finisher = _Finisher(plan, report, totals, place)
    try:
        for i in plan.ready:
            finisher.put(i)
        pieces = _run_pieces(cfg, plan.items, plan.model_id, place) if plan.items else iter(())
        plan.items = []  # Ray Data holds them now
        totals.planning_s = time.time() - started
        log.info("planned in %.1f s", totals.planning_s)
        for piece in pieces:
            lease.check()
            totals.counts.add(piece.counts)
            report.sample(piece.error_samples)
            if plan.landed(piece, report):
                finisher.put(piece.input)
        finisher.close(lease)
    finally:
        finisher.stop()
    return totals


def _run_summary(
    cfg: TranslateConfig, plan: RunPlan, totals: RunTotals, report: _Report, seconds: float
) -> dict:
    """The run's record, ``_run.json``: bounded (counts, the first failures), whatever the
    inbox size. Its keys are a contract: the CLI, jobs/pipeline.py and the tests read them."""
    counts = totals.counts
    return {
        "s2s_version": __version__,
        "model": plan.model_id,
        "input": cfg.input,
        "output": cfg.output,
        "inputs": {
            "total": len(plan.inputs),
            "already_complete": plan.already_complete,
            "translated": totals.translated,  # failed inputs count in neither
            "failed_count": report.failed_count,
            # The first _FAILURES_LISTED, in input order; failed_count has them all.
            "failed": [{"input": uri, "error": err} for _, uri, err in report.failed],
        },
        "pieces": {"translated": plan.pieces, "reused_from_earlier_run": plan.reused},
        "documents": counts.documents,
        "rows_written": totals.rows_written,
        "errors": counts.errors,
        "warnings": counts.warnings,
        "error_samples": report.samples,
        "blank_lines_skipped": counts.blank_lines,
        "sentences": counts.sentences,
        "src_tokens": counts.src_tokens,
        "tgt_tokens": counts.tgt_tokens,
        # Sentences whose source holds placeholders, and those whose translation lost some.
        "placeholders": {
            "sentences": counts.placeholder_sentences,
            "lost": counts.placeholders_lost,
        },
        "planning_s": round(totals.planning_s, 2),  # until work is handed to Ray
        "seconds": round(seconds, 2),
        "documents_per_s": round(counts.documents / seconds, 2),
        "sentences_per_s": round(counts.sentences / seconds, 2),
        "tokens_per_s": round(counts.tgt_tokens / seconds, 1),
        "settings": _decode_settings(cfg),
    }


def _pending_pieces(cfg: TranslateConfig, plan: RunPlan, report: _Report) -> Iterator[Piece]:
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
    for i, source in enumerate(plan.inputs):
        if source.output in written:
            plan.already_complete += 1
            continue
        try:
            pieces = plan.layout.pieces(i, source)
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


# What changes a translation; a piece from a run with other settings is not reused.
_DECODE_SETTINGS = (
    "engine",
    "compute_type",
    "beam",
    "length_penalty",
    "max_len_a",
    "max_len_b",
    "max_input_tokens",
    "precision",
    "protect_placeholders",
    "placeholder_pattern",
    "max_document_chars",
    "id_column",
    "text_column",
    "keep_source",
    "input_format",
)


def _decode_settings(cfg: TranslateConfig) -> dict:
    """The settings that change a translation, by name (in ``_run.json`` and piece keys)."""
    return {k: getattr(cfg, k) for k in _DECODE_SETTINGS}


@ray.remote(num_cpus=_FINISH_CPUS, scheduling_strategy="SPREAD")
def _finish_inputs(
    jobs: list[tuple[int, tuple]], layout: PieceLayout
) -> list[tuple[int, int, str | None]]:
    """A Ray task: write the output files of inputs whose pieces are all in, each on its own (a
    StorageError fails that input, not the others). Safe to retry (``finish_input``).

    Args:
        jobs: (input index, the InputFile's fields) per input.
        layout: what cut the pieces, to cut them again.

    Returns:
        (input index, rows written, why it failed or None) per input.
    """
    with ThreadPoolExecutor(min(_FINISH_THREADS, len(jobs))) as pool:
        return list(pool.map(functools.partial(_finish_one, layout), jobs))


def _finish_one(layout: PieceLayout, job: tuple[int, tuple]) -> tuple[int, int, str | None]:
    """One input of a finishing task: (index, rows written, why it failed or None)."""
    i, source = job[0], InputFile(*job[1])
    try:
        return i, finish_input(source, layout.pieces(i, source), layout.out_format), None
    except storage.StorageError as err:
        return i, 0, str(err)


class _Finisher:
    """Finishing tasks, submitted from a driver thread as inputs complete: at most a few in flight
    (_FINISH_TASKS_PER_NODE per node), each for up to _FINISH_BATCH inputs, results counted as
    they come. The driver holds a few futures, never one per input."""

    def __init__(self, plan: RunPlan, report: _Report, totals: RunTotals, place: dict) -> None:
        self.inputs, self.layout = plan.inputs, plan.layout
        self.report, self.totals = report, totals
        self.task = _finish_inputs.options(**place)
        self.in_flight = _FINISH_TASKS_PER_NODE * max(1, sum(n["Alive"] for n in ray.nodes()))
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
        """End the thread, cancelling what is in flight if the run failed before close()."""
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
                running.add(self.task.remote(jobs, self.layout))
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
                self.totals.translated += 1
                self.totals.rows_written += rows
                log.info("%s: %d documents -> %s", source.name, rows, source.output)


def _run_pieces(
    cfg: TranslateConfig, items: list[str], model_id: str, place: dict
) -> Iterator[PieceSummary]:
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
        PieceTranslator,
        fn_constructor_kwargs={"cfg": dataclasses.asdict(cfg), "model_id": model_id},
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(min_size=min_actors, max_size=max_actors),
        num_cpus=cfg.cpus_per_actor,
        num_gpus=cfg.gpus_per_actor if cfg.use_gpu else 0,
        **place,
    )
    return (PieceSummary.from_json(row["summary"]) for row in dataset.iter_rows())

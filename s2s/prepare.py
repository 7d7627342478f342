"""Stage 1, ``s2s prepare``: raw parallel text -> tokenized Parquet shards + tokenizer + manifest.

The Ray Data pipeline, as two passes over the inputs::

    scan (only when needed):  read -> clean -> sketch  ==> tokenizer sample, split thresholds
    main:  read -> clean -> shuffle by pair hash -> de-duplicate (stateless tasks)
           -> tokenize, filter, write shards ==> stats

The scan streams: its memory is bounded by the blocks in flight and the sketch. The main pass
drops exact (source, target) duplicates, after cleaning, across all inputs. It cuts the records
into groups by pair hash, so every copy of a pair is in one group, shuffles them (a sort shuffle
made of tasks) and de-duplicates each group in one call that keeps the first copy by input
position (read unit, then line): every run keeps the same records. No state lives in an actor, so
after a node loss Ray re-runs the lost tasks from lineage and the result is exact. It scales with
the cluster: a shuffle partition is one input block (<= 16 MiB), so a task's memory does not grow
with the corpus; the shuffle is a barrier that holds the cleaned corpus in the object store
(spilled to disk as needed). Every function called per block is Ray-free and lives in the noun
modules (:mod:`s2s.corpus`, :mod:`s2s.filters`, :mod:`s2s.shards`, ...).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import time
from dataclasses import dataclass

import pyarrow as pa
import ray
from ray.data import DataContext
from ray.data.block import BlockMetadata
from ray.data.context import ShuffleStrategy
from ray.data.datasource import Datasource, ReadTask

from s2s import __version__, cluster, storage
from s2s.config import ConfigError, PrepareConfig
from s2s.corpus import ReadUnit, check_parquet_columns, detect_format, read_unit
from s2s.filters import (
    SplitPlan,
    clean_records,
    dedup_groups,
    drop_records,
    mark_duplicates,
    tokenize_records,
)
from s2s.formats import COMPRESSIONS
from s2s.manifest import (
    FORMAT_VERSION,
    CorpusState,
    PrepareStats,
    begin_prepare,
    corpus_state,
    finish_prepare,
    prepare_lease,
)
from s2s.placeholders import SENTINELS, hold_sentinels, mask_pair, placeholder_pattern
from s2s.poison import describe, isolate_rows
from s2s.shards import write_shards
from s2s.sketch import CorpusSketch
from s2s.tokenizer import (
    SPECIAL_IDS,
    TARGET_TOKENIZER_FILE,
    TOKENIZER_FILE,
    Tokenizer,
    TokenizerFiles,
    train_tokenizer,
)

__all__ = ["prepare_corpus", "PrepareResult", "plan_inputs"]

log = logging.getLogger(__name__)
_MAX_BLOCK_BYTES = 16 << 20
# De-duplication groups of ~4k records: far smaller than a block (read_block_rows, 32k), so the
# shuffle's partitions, ranges of groups, come out even; a de-duplication call costs ~0.1 ms.
_GROUP_ROWS = 4096
# To count the groups when no scan counted the records: ~100 bytes a line of text; compressed
# files and Parquet hold about 4x as many records per byte. A wrong guess only makes the groups
# smaller or larger.
_BYTES_PER_ROW = 100
_COMPRESSION_RATIO = 4
_COMPRESSED_SUFFIXES = (*COMPRESSIONS, ".parquet", ".pq")


@dataclass
class PrepareResult:
    output: str
    manifest: dict
    seconds: float


def prepare_corpus(cfg: PrepareConfig) -> PrepareResult:
    """Run the prepare pipeline on the current Ray cluster (starting a local one if none).

    The output is complete or visibly not: the manifest, the mark of a complete corpus, is
    removed before the first shard is written and written last. An output that a failed or killed
    prepare left incomplete is replaced by the next one, without ``overwrite``; with
    ``overwrite``, a complete corpus stays whole until the main pass starts.

    Raises:
        ConfigError, StorageError: before any heavy work, for bad settings, missing inputs or an
            unwritable output; also when no pair survives the filters.
        LeaseHeld: another prepare is writing the output; nothing was done.
    """
    start = time.perf_counter()
    cfg.validate()
    cfg = dataclasses.replace(cfg, output=storage.absolute(cfg.output))
    units, files = plan_inputs(cfg)
    cluster.connect()
    # Blocks of at most 16 MiB (Ray's default is 128 MiB): a worker's memory then does not grow
    # with the size of an input file (measured: 5x the corpus, 1.44x -> 1.1x peak memory).
    DataContext.get_current().target_max_block_size = _MAX_BLOCK_BYTES
    # Local paths on one node: the tasks that read or write files stay there.
    place = cluster.check_local_paths(
        [u for unit in units for u in unit.uris] + [cfg.output], cfg.shared_fs
    )
    _check_output(cfg)  # before the lease: an output that is not ours is refused untouched
    # A given tokenizer: a .model file, or a checkpoint's (both sides' models, if it has two).
    tokenizers = TokenizerFiles.read(cfg.tokenizer) if cfg.tokenizer else None
    if tokenizers is not None:
        tokenizers.load(name=cfg.tokenizer)  # fail now on a bad or incompatible model

    with prepare_lease(cfg.output) as lease:
        # Again, now that no other prepare can change it: one may have finished it meanwhile.
        if _check_output(cfg) == "incomplete":
            log.warning(
                "%s holds an incomplete corpus (a prepare that failed or was killed): replacing it",
                cfg.output,
            )
        sketch = _scan(units, cfg, place) if _needs_scan(cfg, units) else None
        plan = _split_plan(cfg, sketch)
        if tokenizers is None:
            log.info(
                "training a %s tokenizer on %d pairs", cfg.tokenizer_type, len(sketch.sample_src)
            )
            trained = _train_remote.remote(
                _tokenizer_sample(sketch, cfg),
                cfg.vocab_size,
                cfg.tokenizer_type,
                cfg.character_coverage,
                SENTINELS if cfg.protect_placeholders else (),
            )
            tokenizers = TokenizerFiles(ray.get(trained))
        cfg = dataclasses.replace(cfg, protect_placeholders=_protects(cfg, tokenizers))
        # Nothing was written so far: a failure up to here leaves the output as it was.
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        begin_prepare(cfg.output, {"by": lease.owner, "s2s": __version__, "started": started})

        stats = _main_pass(units, cfg, plan, tokenizers, _dedup_group_count(files, sketch), place)
        if stats.read == 0:
            raise ConfigError(f"the inputs hold no lines: {', '.join(u.name for u in units)}")
        if sum(stats.kept.values()) == 0:
            reasons = ", ".join(f"{r} {n:,}" for r, n in sorted(stats.dropped.items()))
            names = ", ".join(u.name for u in units)
            raise ConfigError(f"no pair of {names} survived the filters: {reasons}")
        tokenizers.write(cfg.output)
        seconds = time.perf_counter() - start
        manifest = _manifest(cfg, units, files, plan, sketch, tokenizers, stats, seconds)
        lease.check()  # a run that stalled past its lease leaves the output to the one that took it
        finish_prepare(cfg.output, manifest)
    return PrepareResult(cfg.output, manifest, seconds)


def plan_inputs(cfg: PrepareConfig) -> tuple[list[ReadUnit], list[storage.FileRef]]:
    """Resolve every input to read units, checking existence, emptiness, format and columns.

    Raises:
        StorageError: an input is missing, empty or unreachable.
        ConfigError: an input's format cannot be told, a Parquet column is missing, or a file is
            listed twice.
    """
    units: list[ReadUnit] = []
    files: list[storage.FileRef] = []
    for role, uris in (("train", cfg.inputs), ("valid", cfg.valid), ("test", cfg.test)):
        for ref in storage.check_inputs(uris):
            fmt = cfg.input_format if cfg.input_format != "auto" else detect_format(ref.uri)
            if fmt == "parquet":
                check_parquet_columns(ref.uri, cfg.src_column, cfg.tgt_column)
            units.append(ReadUnit(len(units), (ref.uri,), fmt, role))
            files.append(ref)
    for src_uri, tgt_uri in zip(cfg.src_files, cfg.tgt_files):
        src_refs, tgt_refs = storage.check_inputs([src_uri]), storage.check_inputs([tgt_uri])
        if len(src_refs) != len(tgt_refs):
            raise ConfigError(
                f"{src_uri} names {len(src_refs)} files but {tgt_uri} names {len(tgt_refs)}"
            )
        for src, tgt in zip(src_refs, tgt_refs):
            units.append(ReadUnit(len(units), (src.uri, tgt.uri), "text", "train"))
            files.extend([src, tgt])
    seen: set[str] = set()
    for ref in files:
        if ref.size == 0:
            raise storage.StorageError(f"{ref.uri}: input is empty")
        if ref.uri in seen:
            raise ConfigError(f"{ref.uri} is listed twice among the inputs")
        seen.add(ref.uri)
    return units, files


def _check_output(cfg: PrepareConfig) -> CorpusState:
    """Refuse an output that cannot be written, or holds a complete corpus or files no prepare
    wrote (both unless ``overwrite``); return what it holds (see :func:`corpus_state`)."""
    storage.check_output(cfg.output)
    state = corpus_state(cfg.output)
    if state == "complete" and not cfg.overwrite:
        raise ConfigError(f"{cfg.output} is not empty; pass --overwrite to replace its corpus")
    if state == "foreign" and not cfg.overwrite:
        raise ConfigError(
            f"{cfg.output} is not empty; pass --overwrite to write a corpus there (it holds "
            "files no prepare wrote)"
        )
    if cfg.tokenizer and not storage.exists(cfg.tokenizer):
        raise storage.StorageError(f"{cfg.tokenizer}: tokenizer model not found")
    return state


class _CorpusDatasource(Datasource):
    """One read task per read unit; each streams blocks of records (see :func:`read_unit`)."""

    def __init__(self, units: list[ReadUnit], cfg: PrepareConfig) -> None:
        super().__init__()
        self._units = units
        self._read = functools.partial(
            read_unit,
            src_column=cfg.src_column,
            tgt_column=cfg.tgt_column,
            max_line_bytes=cfg.max_line_bytes,
            block_rows=cfg.read_block_rows,
        )

    def estimate_inmemory_data_size(self) -> int | None:
        return None

    def get_read_tasks(self, parallelism, per_task_row_limit=None, data_context=None):
        return [
            ReadTask(
                functools.partial(self._read, unit),
                BlockMetadata(
                    num_rows=None, size_bytes=None, exec_stats=None, input_files=unit.uris
                ),
            )
            for unit in self._units
        ]


def _cleaned(
    units: list[ReadUnit], cfg: PrepareConfig, plan: SplitPlan, place: dict
) -> ray.data.Dataset:
    roles, names = [u.role for u in units], [u.name for u in units]
    return ray.data.read_datasource(
        _CorpusDatasource(units, cfg), override_num_blocks=len(units), **place
    ).map_batches(
        _clean_block,
        fn_kwargs={"plan": plan, "roles": roles, "unit_names": names},
        batch_format="pyarrow",
    )


def _needs_scan(cfg: PrepareConfig, units: list[ReadUnit]) -> bool:
    counted = any(size >= 1 for size in _carved_sizes(cfg))
    return cfg.tokenizer is None or counted or any(u.role != "train" for u in units)


def _carved_sizes(cfg: PrepareConfig) -> tuple[float, float]:
    """(valid, test) sizes carved by hash; an explicit input replaces carving for its split."""
    return (0 if cfg.valid else cfg.valid_size, 0 if cfg.test else cfg.test_size)


def _sketch_block(records: pa.Table, roles: list[str], sample_size: int, key_count: int):
    return CorpusSketch.of_records(records, roles, sample_size, key_count).to_table()


def _scan(units: list[ReadUnit], cfg: PrepareConfig, place: dict) -> CorpusSketch:
    valid, test = _carved_sizes(cfg)
    key_count = int(valid if valid >= 1 else 0) + int(test if test >= 1 else 0) + 1
    sample_size = cfg.tokenizer_sample if cfg.tokenizer is None else 0
    sketches = _cleaned(units, cfg, SplitPlan(cfg.split_seed), place).map_batches(
        _sketch_block,
        fn_kwargs={
            "roles": [u.role for u in units],
            "sample_size": sample_size,
            "key_count": key_count,
        },
        batch_format="pyarrow",
    )
    total = CorpusSketch(sample_size, key_count)
    for row in sketches.iter_rows():
        total.merge(CorpusSketch.from_row(row))
    return total


def _split_plan(cfg: PrepareConfig, sketch: CorpusSketch | None) -> SplitPlan:
    if sketch is not None and sketch.clean_pairs == 0:  # the cause, not a split-size complaint
        reasons = ", ".join(f"{r} {n:,}" for r, n in sketch.dropped.most_common())
        inputs = cfg.inputs + cfg.valid + cfg.test + cfg.src_files
        raise ConfigError(f"no line of {', '.join(inputs)} is a usable pair: {reasons}")
    valid, test = _carved_sizes(cfg)
    eval_keys = sketch.eval_keys if sketch is not None else None
    if valid < 1 and test < 1:
        return SplitPlan.from_fractions(cfg.split_seed, valid, test, eval_keys)
    if 0 < valid < 1 or 0 < test < 1:
        raise ConfigError(
            "give valid_size and test_size both as counts (>= 1) or both as fractions"
        )
    keys = sketch.train_keys  # the smallest distinct source-key hashes, sorted
    n_test, n_valid = int(test), int(valid)
    if n_test + n_valid >= len(keys):
        raise ConfigError(
            f"valid_size + test_size = {n_valid + n_test} distinct sources leave no training "
            f"data (the training inputs hold {len(keys)} or fewer); lower them or use fractions"
        )
    # Sources whose key hash is below keys[n] are exactly the n smallest keys.
    return SplitPlan(cfg.split_seed, int(keys[n_test]), int(keys[n_test + n_valid]), eval_keys)


@ray.remote(num_cpus=1)
def _train_remote(
    sentences: list[str], vocab_size: int, model_type: str, coverage: float, symbols: tuple
) -> bytes:
    return train_tokenizer(sentences, vocab_size, model_type, coverage, user_symbols=symbols)


def _tokenizer_sample(sketch: CorpusSketch, cfg: PrepareConfig) -> list[str]:
    """Both sides of the sampled pairs, masked as the shards will be: the vocabulary is learnt
    on the text the model sees."""
    if not cfg.protect_placeholders:
        return sketch.sentences()
    pattern = placeholder_pattern(cfg.placeholder_pattern)
    pairs = [mask_pair(s, t, pattern) for s, t in zip(sketch.sample_src, sketch.sample_tgt)]
    return [s.text for s, _ in pairs] + [t.text for _, t in pairs]


def _protects(cfg: PrepareConfig, tokenizers: TokenizerFiles) -> bool:
    """Whether this corpus' placeholders are masked: asked for, and a tokenizer that holds the
    sentinels (one this prepare trained does; a given one may not: a Marian import, a model
    from elsewhere, or one trained with protection off)."""
    if not cfg.protect_placeholders:
        return False
    if hold_sentinels(*tokenizers.load()):
        return True
    log.warning(
        "%s has no placeholder sentinels: placeholders are not protected in this corpus",
        cfg.tokenizer,
    )
    return False


@functools.lru_cache(maxsize=2)
def _tokenizers(files: TokenizerFiles) -> tuple[Tokenizer, Tokenizer]:
    return files.load()


def _unprocessable(unit_names: list[str]):
    """A poisoned record (see :mod:`s2s.poison`): logged with its ``file:line``, then dropped as
    ``unprocessable``, so the manifest still accounts for it."""

    def drop(row: pa.Table, err: BaseException) -> pa.Table:
        where = f"{unit_names[row['input_id'][0].as_py()]}:{row['line'][0].as_py()}"
        log.warning("%s: dropped as unprocessable: %s", where, describe(err))
        return drop_records(row, "unprocessable")

    return drop


def _clean_block(records: pa.Table, plan: SplitPlan, roles: list[str], unit_names: list[str]):
    return isolate_rows(
        lambda rows: clean_records(rows, plan, roles), records, _unprocessable(unit_names)
    )


def _tokenize_and_write(
    records: pa.Table, tokenizers: TokenizerFiles, cfg: PrepareConfig, unit_names: list[str]
):
    source, target = _tokenizers(tokenizers)
    records = isolate_rows(
        lambda rows: tokenize_records(
            rows,
            source,
            cfg.max_len,
            cfg.max_ratio,
            cfg.ratio_min_tokens,
            target,
            placeholder_pattern(cfg.placeholder_pattern) if cfg.protect_placeholders else None,
        ),
        records,
        _unprocessable(unit_names),
    )
    shards = write_shards(records, cfg.output)
    return pa.table({"stats": [PrepareStats.from_records(records, unit_names, shards).to_json()]})


def _dedup_group_count(files: list[storage.FileRef], sketch: CorpusSketch | None) -> int:
    """Into how many groups by pair hash the main pass cuts the records: ~``_GROUP_ROWS`` each.

    The count of records comes from the scan when it ran, else from the input sizes.
    """
    if sketch is not None:
        rows = sketch.clean_pairs
    else:
        packed = sum(f.size for f in files if f.uri.lower().endswith(_COMPRESSED_SUFFIXES))
        plain = sum(f.size for f in files) - packed
        rows = (plain + _COMPRESSION_RATIO * packed) / _BYTES_PER_ROW
    return max(1, math.ceil(rows / _GROUP_ROWS))


def _main_pass(
    units: list[ReadUnit],
    cfg: PrepareConfig,
    plan: SplitPlan,
    tokenizers: TokenizerFiles,
    groups: int,
    place: dict,
) -> PrepareStats:
    # Exact, deterministic, restart-safe de-duplication. Records are cut into groups by pair hash
    # (every copy of a pair is in one group) and each group is de-duplicated by one stateless call
    # that keeps the first copy by input position; map_groups guarantees a call sees its whole
    # group. The shuffle behind groupby is Ray Data's push-based sort shuffle: plain map, merge and
    # reduce *tasks* (retried without limit) whose outputs live in the object store, so a task or
    # block lost with its node is re-run from lineage and, being deterministic, gives the same
    # result; every record still reaches the stats exactly once. Not HASH_SHUFFLE (aggregator
    # actors hold the partitions in memory and die with their node), not the disk-based shuffle
    # (files on one node's disk, served by an actor there), and not the default SHUFFLE_V2: also
    # tasks, but in worker pools of their own whose start-up made the main pass 2x slower here.
    # Scaling: the shuffle has one partition per input block (<= read_block_rows records, 16 MiB),
    # so a task's memory does not grow with the corpus, and groups of ~_GROUP_ROWS records keep
    # the partitions even; the push-based variant merges map outputs per node, which keeps the
    # intermediate objects few at thousands of blocks. The cost is a barrier: the cleaned corpus
    # waits in the object store (spilled to disk when it does not fit) until the shuffle is done.
    cleaned = _cleaned(units, cfg, plan, place).map_batches(
        dedup_groups, fn_kwargs={"groups": groups}, batch_format="pyarrow"
    )
    cleaned.context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PUSH_BASED  # this pass only
    outputs = (
        cleaned.groupby("dedup_group")
        .map_groups(mark_duplicates, batch_format="pyarrow")
        .map_batches(
            _tokenize_and_write,
            fn_kwargs={"tokenizers": tokenizers, "cfg": cfg, "unit_names": [u.name for u in units]},
            batch_size=cfg.shard_rows,
            batch_format="pyarrow",
            **place,
        )
    )
    stats = PrepareStats()
    for row in outputs.iter_rows():
        stats.merge(PrepareStats.from_json(row["stats"]))
    return stats


def _manifest(
    cfg: PrepareConfig,
    units: list[ReadUnit],
    files: list[storage.FileRef],
    plan: SplitPlan,
    sketch: CorpusSketch | None,
    tokenizers: TokenizerFiles,
    stats: PrepareStats,
    seconds: float,
) -> dict:
    tokenizer = {
        "file": TOKENIZER_FILE,
        "vocab_size": tokenizers.load()[0].vocab_size,
        "type": cfg.tokenizer_type,
        "source": cfg.tokenizer or f"trained on {len(sketch.sample_src)} sampled pairs",
    }
    if tokenizers.target is not None:  # the target side segments with its own model
        tokenizer["target_file"] = TARGET_TOKENIZER_FILE
    if cfg.protect_placeholders:  # the train and valid/test ids hold sentinels; the text does not
        tokenizer["placeholders"] = {
            "sentinels": list(SENTINELS),
            "pattern": cfg.placeholder_pattern,
        }
    kept = sum(stats.kept.values())
    shards = {split: [s for s in stats.shards if s["split"] == split] for split in stats.kept}
    return {
        "format_version": FORMAT_VERSION,
        "created_by": f"s2s {__version__}",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "tokenizer": tokenizer,
        "special_ids": SPECIAL_IDS,
        "counts": stats.counts(),
        "dropped_samples": stats.samples,
        "lengths": stats.length_summary(),
        "shards": {
            split: sorted(items, key=lambda s: s["path"]) for split, items in shards.items()
        },
        "filters": {
            "normalization": "NFC; control characters removed; whitespace collapsed",
            "max_len": cfg.max_len,
            "max_ratio": cfg.max_ratio,
            "ratio_min_tokens": cfg.ratio_min_tokens,
            "max_line_bytes": cfg.max_line_bytes,
            "dedup": "exact (source, target) pairs across all inputs; first by (input, line) kept",
        },
        "splits": {
            "method": "hash of the normalised source",
            "seed": cfg.split_seed,
            "valid": cfg.valid or cfg.valid_size,
            "test": cfg.test or cfg.test_size,
            "test_below": str(plan.test_below),
            "valid_below": str(plan.valid_below),
        },
        "inputs": [{"uri": f.uri, "bytes": f.size, "mtime_ns": f.mtime_ns} for f in files],
        "read_units": [{"uris": list(u.uris), "format": u.fmt, "role": u.role} for u in units],
        "run": {
            "seconds": round(seconds, 2),
            "pairs_per_s": round(stats.read / seconds, 1),
            "kept": kept,
        },
        "config": dataclasses.asdict(cfg),
    }

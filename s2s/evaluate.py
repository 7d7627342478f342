"""``s2s evaluate``: BLEU and chrF (:mod:`s2s.scoring`) of a checkpoint on held-out pairs, and how
many of the placeholders of software text (``%s``, ``{0}``, ``<b>``: :mod:`s2s.placeholders`) its
translations keep.

Decoding goes through the same :class:`~s2s.translator.Translator` as the translate job, and the
same path: each source is a document, split into sentences, translated, and rejoined. So the score
printed here is the score of what the nightly job writes (a line holding two sentences is
translated as two, as the job would, not as one).
"""

from __future__ import annotations

import json
import os
import re
import time

import pyarrow.compute as pc
import ray
import torch

from s2s import cluster, storage
from s2s.config import ConfigError, EvaluateConfig
from s2s.corpus import ReadUnit, check_parquet_columns, detect_format, read_unit
from s2s.engines import engine_model_id
from s2s.manifest import MANIFEST_NAME, read_manifest
from s2s.placeholders import fidelity, placeholder_pattern
from s2s.scoring import score
from s2s.shards import read_shard
from s2s.translator import DocumentResult, Translator

__all__ = ["evaluate", "load_pairs", "placeholder_report"]


def load_pairs(data: str, split: str, limit: int = 0) -> tuple[list[str], list[str]]:
    """(sources, references) from a prepared corpus' split or a file of pairs in any format
    ``s2s prepare`` reads (TSV, JSONL, Parquet; by extension, ``.txt`` as TSV).

    Raises:
        ConfigError: for a line that prepare would drop (``file:line`` and its reason), or a
            corpus without that split.
    """
    sources, references = [], []
    if storage.exists(storage.join(data, MANIFEST_NAME)):
        shards = read_manifest(data)["shards"].get(split)
        if not shards:
            raise ConfigError(f"{data}: the prepared corpus has no {split!r} split")
        for shard in shards:
            table = read_shard(data, shard["path"], ["src", "tgt"])
            sources += table["src"].to_pylist()
            references += table["tgt"].to_pylist()
    else:
        # Read as prepare reads (s2s.corpus): the same line splitting, formats and reasons.
        fmt = detect_format(data)
        if fmt == "parquet":
            check_parquet_columns(data, "src", "tgt")
        for table in read_unit(ReadUnit(0, (data,), fmt)):
            bad = table.filter(pc.invert(pc.is_null(table["reason"])))
            if len(bad):
                # A test set is scored whole or not at all: dropping lines would change it.
                raise ConfigError(
                    f"{data}:{bad['line'][0].as_py()}: {bad['reason'][0].as_py()} "
                    f"({len(bad)} such lines in this block; see the reasons of s2s prepare)"
                )
            sources += table["src"].to_pylist()
            references += table["tgt"].to_pylist()
    if limit:
        sources, references = sources[:limit], references[:limit]
    return sources, references


def evaluate(cfg: EvaluateConfig) -> dict:
    """Translate the sources, score against the references; the report as a dict (JSON-able).

    With ``use_gpu`` the decoding runs in a Ray task that holds a GPU (under ``ray job submit``
    the driver runs on the head node, which has none); the driver reads the pairs, scores and
    writes, so only the model must be reachable from the GPU node.
    """
    cfg.validate()
    sources, references = load_pairs(cfg.data, cfg.split, cfg.limit)
    if cfg.use_gpu:
        results, model, seconds = _decode_on_gpu(cfg, sources)
    else:
        results, model, seconds = _decode(cfg, sources)
    hypotheses = [r.translation or "" for r in results]
    report = {
        "model": model,
        "data": cfg.data,
        "split": cfg.split,
        "sentences": len(sources),
        "segments": sum(r.n_segments for r in results),  # sentences after splitting
        **score(hypotheses, references),
        "placeholders": placeholder_report(
            sources, hypotheses, references, placeholder_pattern(cfg.placeholder_pattern)
        ),
        "failed_sentences": sum(r.error is not None for r in results),
        "beam": cfg.beam,
        "length_penalty": cfg.length_penalty,
        "seconds": round(seconds, 2),
        "sentences_per_s": round(len(sources) / max(seconds, 1e-9), 1),
        "tokens_per_s": round(sum(r.tgt_tokens for r in results) / max(seconds, 1e-9), 1),
    }
    if cfg.output:
        storage.write_bytes(
            storage.join(cfg.output, "scores.json"), json.dumps(report, indent=2).encode()
        )
        storage.write_bytes(
            storage.join(cfg.output, "hypotheses.txt"),
            "".join(h + "\n" for h in hypotheses).encode(),
        )
    return report


def placeholder_report(
    sources: list[str], hypotheses: list[str], references: list[str], pattern: re.Pattern
) -> dict:
    """Placeholder fidelity (:mod:`s2s.placeholders`) of the hypotheses, and of the references
    (what a human kept: the ceiling), with BLEU and chrF on the sentences that hold any."""
    ours = fidelity(sources, hypotheses, pattern)
    report = {
        "sentences": ours["sentences"],
        "fidelity": ours["fidelity"],
        "reference_fidelity": fidelity(sources, references, pattern)["fidelity"],
    }
    if ours["indices"]:
        subset = ours["indices"]
        scores = score([hypotheses[i] for i in subset], [references[i] for i in subset])
        report |= {"bleu": scores["bleu"], "chrf": scores["chrf"]}
    return report


def _decode(cfg: EvaluateConfig, sources: list[str]) -> tuple[list[DocumentResult], str, float]:
    """(results, model id, seconds) of translating ``sources`` here, as the job would."""
    torch.set_num_threads(cfg.torch_threads or os.cpu_count() or 1)
    translator = Translator(cfg)  # checks the model directory whole: one line if damaged
    started = time.time()
    results = translator.translate_documents(sources)
    return results, translator.model_id, time.time() - started


def _decode_on_gpu(
    cfg: EvaluateConfig, sources: list[str]
) -> tuple[list[DocumentResult], str, float]:
    """:func:`_decode` in a Ray task that holds a GPU; refused up front, with the numbers, on a
    cluster that has none and cannot grow one within ``wait_for_workers_s``."""
    engine_model_id(cfg)  # a damaged model is one line here, not a failed task
    place = cluster.check_local_paths([cfg.checkpoint], cfg.shared_fs)
    cluster.connect()
    need, fix = {"GPU": 1, "CPU": 1}, "add a GPU node, or evaluate on the CPU (without --gpu)"
    cluster.wait_for_capacity(need, 1, "evaluate --gpu", cfg.wait_for_workers_s, fix)
    task = ray.remote(_decode).options(num_gpus=1, num_cpus=1, max_retries=0, **place)
    return ray.get(task.remote(cfg, sources))

"""The whole pipeline as one job: prepare -> train -> evaluate -> translate, under one output root.

    <output>/prepared/                     s2s prepare's corpus (skipped when complete: a manifest
                                           and every file it lists; an incomplete one, left by a
                                           prepare that failed or was killed, is prepared again)
    <output>/runs/<preset>/                the training run (skipped when _pipeline.json says done;
                                           an interrupted run resumes from its last checkpoint)
    <output>/runs/<preset>/eval/           scores.json, hypotheses.txt (skipped when scored)
    <output>/translations/                 s2s translate's output (incremental by itself)

Every stage's settings are its own config, reachable as ``prepare.*``, ``train.*``,
``evaluate.*``, ``translate.*`` in a YAML file or as ``key=value`` (loaded as every stage's are:
``load_config(PipelineConfig, ...)``, which ``s2s pipeline`` calls); all are checked before the
first stage starts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from typing import Literal

from s2s import storage
from s2s.checkpoint import WEIGHTS
from s2s.config import ConfigError, EvaluateConfig, PrepareConfig, TrainConfig, TranslateConfig
from s2s.manifest import corpus_state

__all__ = ["PipelineConfig", "run_pipeline", "prepare_stage", "DONE_MARKER"]

log = logging.getLogger(__name__)
DONE_MARKER = "_pipeline.json"


@dataclass
class PipelineConfig:
    """``corpus``, ``docs`` and ``output`` fill in the stages' inputs and outputs."""

    corpus: list[str] = field(default_factory=list)  # raw parallel text (prepare's inputs)
    docs: str = ""  # documents to translate
    output: str = ""  # root of everything the pipeline writes
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    translate: TranslateConfig = field(default_factory=TranslateConfig)

    def resolve(self) -> None:
        """Fill in the stages' paths and check everything before the first stage starts.

        Raises:
            ConfigError: naming the missing or invalid setting.
        """
        for key in ("corpus", "docs", "output"):
            if not getattr(self, key):
                raise ConfigError(f"pipeline needs --{key} URI")
        root = storage.absolute(self.output)
        self.prepare.inputs = [storage.absolute(c) for c in self.corpus]
        self.prepare.output = storage.join(root, "prepared")
        self.train.data = self.prepare.output
        self.train.output = storage.join(root, "runs", self.train.preset)
        self.evaluate.data = self.prepare.output
        self.evaluate.output = storage.join(self.train.output, "eval")
        self.translate.input = storage.absolute(self.docs)
        self.translate.output = storage.join(root, "translations")
        if not (self.train.max_steps or self.train.max_epochs or self.train.max_time_min):
            raise ConfigError("set --max-steps, train.max_epochs or train.max_time_min")
        # Every stage's settings now, not hours later when its turn comes; evaluate and translate
        # will use the model that training writes.
        stages = {
            "prepare": self.prepare,
            "train": self.train,
            "evaluate": dataclasses.replace(self.evaluate, checkpoint=self.train.output),
            "translate": dataclasses.replace(self.translate, checkpoint=self.train.output),
        }
        for name, stage in stages.items():
            try:
                stage.validate()
            except ConfigError as err:
                raise ConfigError(f"{name}: {err}") from None


def prepare_stage(output: str) -> Literal["skip", "rerun", "run"]:
    """What the pipeline does about prepare: ``"skip"`` when ``output`` holds a complete corpus
    (a manifest and every file it lists); ``"rerun"`` when a prepare that failed or was killed
    left it incomplete (prepare replaces that by itself, without ``overwrite``); else ``"run"`` (an
    empty output; one holding other files is then refused by prepare unless ``prepare.overwrite``).
    """
    state = corpus_state(output)
    return {"complete": "skip", "incomplete": "rerun"}.get(state, "run")


def run_pipeline(cfg: PipelineConfig) -> dict:
    """Run the stages that are not done yet; return what each did and where its output is."""
    from s2s.evaluate import evaluate
    from s2s.prepare import prepare_corpus
    from s2s.train import train
    from s2s.translate import translate

    cfg.resolve()
    report = {}
    action = prepare_stage(cfg.prepare.output)
    if action == "skip":
        report["prepare"] = {"skipped": "prepared earlier", "output": cfg.prepare.output}
    else:
        result = prepare_corpus(cfg.prepare)
        report["prepare"] = {"output": result.output, "counts": result.manifest["counts"]}
        if action == "rerun":
            report["prepare"]["replaced"] = "the incomplete corpus of a prepare that stopped"
    log.info("prepare: %s", report["prepare"])

    marker = storage.join(cfg.train.output, DONE_MARKER)
    if storage.exists(marker):
        done = json.loads(storage.read_bytes(marker))
        report["train"] = {"skipped": "trained earlier", **done}
    else:
        result = train(cfg.train)
        best = storage.join(cfg.train.output, "best")
        checkpoint = best if storage.exists(storage.join(best, WEIGHTS)) else None
        done = {"output": cfg.train.output, "checkpoint": checkpoint or result.checkpoint}
        storage.write_bytes(marker, json.dumps(done, indent=2).encode())
        report["train"] = {**done, "metrics": result.metrics}
    log.info("train: %s", report["train"])
    checkpoint = report["train"]["checkpoint"]

    scores = storage.join(cfg.evaluate.output, "scores.json")
    if storage.exists(scores):
        report["evaluate"] = {"skipped": "scored earlier", **json.loads(storage.read_bytes(scores))}
    else:
        cfg.evaluate.checkpoint = checkpoint
        report["evaluate"] = evaluate(cfg.evaluate)
    log.info("evaluate: BLEU %s chrF %s", report["evaluate"]["bleu"], report["evaluate"]["chrf"])

    cfg.translate.checkpoint = checkpoint
    report["translate"] = translate(cfg.translate).summary
    return report

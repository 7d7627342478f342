"""Ray Train runs on the local runtime: 2-worker DDP, epochs over uneven shards, resume, a killed
worker, checkpoints on S3. Each run is small (a tiny Transformer, a few dozen steps)."""

import dataclasses
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from s2s import storage
from s2s.checkpoint import load_checkpoint
from s2s.config import ConfigError, PrepareConfig, TrainConfig, model_preset
from s2s.manifest import read_manifest
from s2s.prepare import prepare_corpus
from s2s.sampler import DataDigest, EpochPlan, steps
from s2s.search import greedy_search
from s2s.train import train
from tests.conftest import pids_running

TINY = {"d_model": 64, "ffn_dim": 128, "enc_layers": 2, "dec_layers": 2, "heads": 4}


@pytest.fixture(scope="module")
def corpus(ray_local, tmp_path_factory, gettext_pairs):
    raw = tmp_path_factory.mktemp("raw") / "pairs.tsv"
    raw.write_text("".join(f"{s}\t{t}\n" for s, t in gettext_pairs[:6000]))
    out = str(tmp_path_factory.mktemp("train-corpus") / "prepared")
    prepare_corpus(
        PrepareConfig(
            inputs=[str(raw)], output=out, vocab_size=600, valid_size=100, test_size=100,
            shard_rows=1600, max_len=64,
        )
    )  # fmt: skip
    manifest = read_manifest(out)
    rows = sorted(s["rows"] for s in manifest["shards"]["train"])
    assert len(rows) >= 3 and rows[0] < rows[-1]  # several shards of unequal size
    return out


def tiny_config(corpus: str, output: str, **changes) -> TrainConfig:
    cfg = TrainConfig(
        data=corpus, output=output, workers="2", max_tokens=1200,
        lr=2e-3, warmup=20, log_every=5, eval_every=20, checkpoint_every=20, eval_sentences=50,
        keep_last=2, model=model_preset("transformer-small", TINY),
    )  # fmt: skip
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


def metrics(run: str) -> list[dict]:
    return [json.loads(line) for line in Path(run, "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def first_run(corpus, tmp_path_factory):
    run = str(tmp_path_factory.mktemp("runs") / "epoch1")
    return run, train(tiny_config(corpus, run, max_epochs=1))


def test_two_workers_learn_and_stay_in_sync_over_uneven_shards(first_run):
    run, result = first_run  # one full epoch: the shards are uneven, nobody may hang at its end
    lines = metrics(run)
    losses = [m["loss"] for m in lines if "loss" in m]
    assert losses[-1] < losses[0] - 1.0
    reports = [m for m in lines if "replicas_in_sync" in m]
    assert reports and all(m["replicas_in_sync"] for m in reports)
    assert {"bleu", "chrf", "valid_ppl"} <= set(reports[0])
    assert all(
        {"tgt_tokens_per_s", "lr", "ppl", "elapsed_s"} <= set(m) for m in lines if "loss" in m
    )
    assert result.metrics["epoch"] == 1 and result.checkpoint  # one epoch completed
    checkpoints = [d for d in os.listdir(run) if d.startswith("checkpoint_")]
    checkpoints = [d for d in checkpoints if os.path.isdir(os.path.join(run, d))]
    assert 1 <= len(checkpoints) <= 2  # keep_last
    best = load_checkpoint(os.path.join(run, "best"))  # the best validation BLEU, kept apart
    assert best.trainer_state["best_bleu"] == max(m["bleu"] for m in reports if "bleu" in m)
    assert Path(run, "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoint_loads_without_ray_and_decodes(first_run):
    _, result = first_run
    loaded = load_checkpoint(result.checkpoint)
    assert loaded.trainer_state["step"] == result.metrics["step"]
    src = torch.tensor([loaded.tokenizer.encode(["Open the file"])[0] + [3]])
    assert isinstance(greedy_search(loaded.model, src)[0], list)


def test_resume_continues_where_it_stopped(first_run, corpus):
    run, result = first_run
    steps_before = result.metrics["step"]
    resumed = train(tiny_config(corpus, run, max_epochs=2))
    assert resumed.metrics["epoch"] == 2
    assert resumed.metrics["step"] > steps_before
    logged = [m["step"] for m in metrics(run) if "loss" in m]
    assert logged == sorted(logged) and len(set(logged)) == len(logged)  # no step twice


def test_killed_worker_restarts_from_checkpoint_on_s3(corpus, bucket):
    run = f"{bucket}/runs/killed"
    cfg = tiny_config(corpus, run, max_steps=60, max_failures=1, checkpoint_every=10)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(result=train(cfg)))
    thread.start()
    victim = None
    deadline = time.time() + 300
    while victim is None and time.time() < deadline and thread.is_alive():
        if storage.expand(f"{run}/*/model.safetensors"):  # a checkpoint exists: now kill
            victim = next(iter(pids_running(b"RayTrainWorker")), None)
        time.sleep(0.5)
    assert victim, "no checkpoint and worker to kill appeared"
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=400)
    assert not thread.is_alive(), "training did not finish after the worker was killed"
    result = outcome["result"]
    assert result.metrics["step"] == 60
    assert result.checkpoint.startswith(f"{run}/checkpoint_")
    assert load_checkpoint(result.checkpoint).trainer_state["step"] == 60
    # The resumed run trained on exactly the batches of an uninterrupted one, in the same order,
    # and (dropout masks seeded by step and rank) ends where an uninterrupted run ends.
    assert result.metrics["data_digest"] == expected_digest(cfg, 60)
    straight = train(dataclasses.replace(cfg, output=f"{bucket}/runs/straight", max_failures=0))
    assert straight.metrics["data_digest"] == result.metrics["data_digest"]
    assert straight.metrics["valid_ppl"] == pytest.approx(result.metrics["valid_ppl"], rel=1e-3)


def expected_digest(cfg: TrainConfig, steps_done: int) -> str:
    """The data digest after ``steps_done`` steps, computed from the corpus without training."""
    shards = read_manifest(cfg.data)["shards"]["train"]
    plan = EpochPlan(cfg.data, shards, cfg.shuffle, cfg.shuffle_buffer, cfg.max_tokens, cfg.seed)
    digest, epoch, done = DataDigest(), 0, 0
    per_step = cfg.worker_range()[1] * cfg.update_freq
    while done < steps_done:
        for group in steps(plan.batches(epoch), per_step):
            digest.update(group)
            done += 1
            if done == steps_done:
                break
        epoch += 1
    return digest.value


def test_a_cluster_too_small_is_refused_at_once_with_the_numbers(corpus, tmp_path):
    started = time.monotonic()
    # A short wait, should the check take the cluster for one an autoscaler can grow: then the
    # refusal comes late, and with another reason, and the test fails.
    cfg = tiny_config(
        corpus, str(tmp_path / "run"), max_steps=5, workers="3", wait_for_workers_s=20
    )
    with pytest.raises(ConfigError, match=r"needs 3 CPU; the cluster has 2 CPU and no autoscaler"):
        train(cfg)
    assert time.monotonic() - started < 30  # refused, not waited on


def test_bad_configs_fail_before_workers_start(corpus, tmp_path):
    cases = [
        ({"data": str(tmp_path / "none")}, "manifest.json: missing"),
        ({"max_epochs": 0}, "set max_steps, max_epochs or max_time_min"),
        ({"output": "s3://no-such-bucket-s2s/run"}, "bucket does not exist"),
    ]
    for changes, message in cases:
        cfg = tiny_config(corpus, str(tmp_path / "run"), max_epochs=1)
        for key, value in changes.items():
            setattr(cfg, key, value)
        with pytest.raises(Exception, match=message):
            train(cfg)
    with pytest.raises(ConfigError, match="not divisible"):
        model_preset("transformer-small", {"d_model": 66})

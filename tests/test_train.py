"""Ray Train runs on the local runtime: 2-worker DDP, epochs over uneven shards, resume, a killed
worker, checkpoints on S3. Each run is small (a tiny Transformer, a few dozen steps).

Which process a test kills, and what became of it, comes from Ray's actor table, never from
scanning the machine's processes (other Ray clusters may run here)."""

import dataclasses
import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import sacrebleu
import torch

from s2s import storage
from s2s.batching import collate
from s2s.checkpoint import load_checkpoint
from s2s.config import ConfigError, PrepareConfig, TrainConfig, model_preset
from s2s.manifest import read_manifest
from s2s.objective import label_smoothed_loss
from s2s.prepare import prepare_corpus
from s2s.sampler import DataDigest, EpochPlan, steps
from s2s.search import greedy_search
from s2s.shards import read_shard
from s2s.train import train

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
    assert best.trainer_state.best_bleu == max(m["bleu"] for m in reports if "bleu" in m)
    assert Path(run, "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_checkpoint_loads_without_ray_and_decodes(first_run, corpus):
    _, result = first_run
    loaded = load_checkpoint(result.checkpoint)
    assert loaded.trainer_state.step == result.metrics["step"]
    # Loaded here, without Ray, the checkpoint's weights are those training evaluated at that
    # step: they give the validation perplexity it reported (a checkpoint of another step, or
    # weights lost in saving, give another) and, decoded greedily, its BLEU.
    valid = []
    for shard in read_manifest(corpus)["shards"]["valid"]:
        table = read_shard(corpus, shard["path"], ["src_ids", "tgt_ids", "tgt"])
        valid += zip(*(table[c].to_pylist() for c in ("src_ids", "tgt_ids", "tgt")))
    valid = valid[:50]  # eval_sentences
    batch = collate([(src, tgt) for src, tgt, _ in valid])
    model = loaded.model.eval()
    with torch.inference_mode():
        _, nll, tokens = label_smoothed_loss(
            model(batch["src"], batch["tgt_in"]), batch["tgt_out"], 0.0
        )
        hypotheses = loaded.tokenizer.decode(greedy_search(model, batch["src"]))
    assert math.exp(float(nll) / tokens) == pytest.approx(result.metrics["valid_ppl"], rel=1e-3)
    references = [ref for _, _, ref in valid]
    assert round(sacrebleu.corpus_bleu(hypotheses, [references]).score, 2) == result.metrics["bleu"]


def test_resume_continues_where_it_stopped(first_run, corpus):
    run, result = first_run
    steps_before = result.metrics["step"]
    resumed = train(tiny_config(corpus, run, max_epochs=2))
    assert resumed.metrics["epoch"] == 2
    assert resumed.metrics["step"] > steps_before
    logged = [m["step"] for m in metrics(run) if "loss" in m]
    assert logged == sorted(logged) and len(set(logged)) == len(logged)  # no step twice


def ray_actors(class_part: str) -> dict[str, dict]:
    """actor id -> record (State, Pid, NumRestarts, StartTime, ...) of the local Ray's actors whose
    class name contains ``class_part``. The session's Ray runs without the dashboard that serves
    ``ray.util.state``, so this reads the same actor table from the GCS directly."""
    from ray._private.state import actors

    return {a: r for a, r in actors().items() if class_part in r["ActorClassName"]}


def wait_until_gone(pid: int, timeout: float = 60.0) -> bool:
    """Whether process ``pid`` ended (gone, or a zombie not yet reaped) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return True
        if stat.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return True
        time.sleep(0.1)
    return False


def test_killed_worker_restarts_from_checkpoint_on_s3(corpus, bucket):
    run = f"{bucket}/runs/killed"
    cfg = tiny_config(corpus, run, max_steps=60, max_failures=1, checkpoint_every=10)
    earlier = set(ray_actors("RayTrainWorker"))  # the workers of this module's earlier runs
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(result=train(cfg)))
    thread.start()
    pid = None
    deadline = time.monotonic() + 300
    while pid is None and time.monotonic() < deadline and thread.is_alive():
        # Ray Train has registered a checkpoint (its manager's snapshot is written then): a
        # restart must resume from it, not from step 0.
        if storage.exists(f"{run}/checkpoint_manager_snapshot.json"):
            alive = [
                r["Pid"]
                for a, r in ray_actors("RayTrainWorker").items()
                if a not in earlier and r["State"] == "ALIVE"
            ]  # a worker of this run
            pid = next(iter(alive), None)
        time.sleep(0.5)
    assert pid, "no checkpoint and worker of this run to kill appeared"
    killed_at_ms = time.time() * 1000  # the actor table's clock: this machine's, in ms
    os.kill(pid, signal.SIGKILL)
    assert wait_until_gone(pid), f"worker {pid} survived its SIGKILL"
    thread.join(timeout=400)
    assert not thread.is_alive(), "training did not finish after the worker was killed"
    result = outcome["result"]
    assert result.metrics["step"] == 60
    assert result.checkpoint.startswith(f"{run}/checkpoint_")
    state = load_checkpoint(result.checkpoint).trainer_state
    assert state.step == 60
    # The kill cost the run its worker group: Ray Train started a new one, in other processes,
    # and it resumed from a checkpoint of this run (its own record), not from step 0.
    workers = {a: r for a, r in ray_actors("RayTrainWorker").items() if a not in earlier}
    replacements = [r for r in workers.values() if r["StartTime"] > killed_at_ms]
    assert len(replacements) >= 2 and pid not in {r["Pid"] for r in replacements}, workers
    (resumed,) = state.resumed_from
    assert resumed % 10 == 0 and 10 <= resumed < 60, state.resumed_from
    # The resumed run trained on exactly the batches of an uninterrupted one, in the same order,
    # and (dropout masks seeded by step and rank) ends where an uninterrupted run ends.
    assert result.metrics["data_digest"] == expected_digest(cfg, 60)
    straight = train(dataclasses.replace(cfg, output=f"{bucket}/runs/straight", max_failures=0))
    assert straight.metrics["data_digest"] == result.metrics["data_digest"]
    assert straight.metrics["valid_ppl"] == pytest.approx(result.metrics["valid_ppl"], rel=1e-3)
    assert load_checkpoint(straight.checkpoint).trainer_state.resumed_from == []


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


def test_a_damaged_checkpoint_to_resume_from_is_refused(corpus, toy_checkpoint, tmp_path):
    """The newest registered checkpoint of a run is checked in the driver before Ray Train
    starts: a truncated upload is one ConfigError naming it, not a traceback from every worker."""
    import shutil

    run = tmp_path / "run"
    newest = run / "checkpoint_000002"
    shutil.copytree(toy_checkpoint, newest)
    weights = (newest / "model.safetensors").read_bytes()
    (newest / "model.safetensors").write_bytes(weights[:-100])
    snapshot = {"checkpoint_results": [{"checkpoint_dir_name": newest.name}]}
    (run / "checkpoint_manager_snapshot.json").write_text(json.dumps(snapshot))
    with pytest.raises(ConfigError, match=r"checkpoint_000002/model.safetensors: truncated"):
        train(tiny_config(corpus, str(run), max_steps=5))

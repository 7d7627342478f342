"""Training on a real multi-node Ray cluster (separate raylets, object stores and worker pools on
this machine: a 1-CPU head and 2-CPU worker nodes), all storage on the moto S3 endpoint.

Placement is read from Ray's state API, never assumed; node losses are SIGKILLs of a node's
raylet and workers (``remove_node(allow_graceful=False)``), as when a spot VM is reclaimed."""

import json
import threading
import time
import uuid

import boto3
import pytest

from s2s import storage
from s2s.checkpoint import load_checkpoint
from s2s.config import ConfigError, PrepareConfig, TrainConfig, TranslateConfig, model_preset
from s2s.prepare import prepare_corpus
from s2s.train import train
from s2s.translate import translate
from tests.test_train import TINY, expected_digest

WORKER_CPUS = 2  # a worker node's CPUs: one training worker (or translator actor) per node


@pytest.fixture(scope="module")
def bucket(ray_cluster):
    name = f"s2s-multinode-{uuid.uuid4().hex[:8]}"
    boto3.client("s3").create_bucket(Bucket=name)
    return f"s3://{name}"


@pytest.fixture(scope="module")
def corpus(bucket, gettext_pairs):
    """Real en-de pairs prepared on the cluster, from S3 to S3."""
    raw = f"{bucket}/raw/pairs.tsv"
    storage.write_bytes(raw, "".join(f"{s}\t{t}\n" for s, t in gettext_pairs[:6000]).encode())
    out = f"{bucket}/prepared"
    prepare_corpus(
        PrepareConfig(
            inputs=[raw], output=out, vocab_size=600, valid_size=100, test_size=100,
            shard_rows=1600, max_len=64,
        )
    )  # fmt: skip
    return out


def run_config(corpus: str, output: str, **changes) -> TrainConfig:
    cfg = TrainConfig(
        data=corpus, output=output, workers="2", cpus_per_worker=WORKER_CPUS, max_tokens=1200,
        lr=2e-3, warmup=20, log_every=5, eval_every=1000, checkpoint_every=10, eval_sentences=50,
        keep_last=3, model=model_preset("transformer-small", TINY),
    )  # fmt: skip
    for key, value in changes.items():
        setattr(cfg, key, value)
    return cfg


def reports(run: str) -> list[dict]:
    uri = storage.join(run, "metrics.jsonl")
    if not storage.exists(uri):
        return []
    return [json.loads(line) for line in storage.read_bytes(uri).decode().splitlines()]


def wait_until(condition, timeout: float, what: str, thread: threading.Thread | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if thread is not None and not thread.is_alive():
            break
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_prepare_train_translate_spread_over_two_nodes(ray_cluster, bucket, corpus):
    heads = ray_cluster.alive_node_ids() - {n.node_id for n in ray_cluster.workers}
    before = set(ray_cluster.actor_nodes("RayTrainWorker"))
    result = train(run_config(corpus, f"{bucket}/runs/spread", max_steps=20))
    assert result.metrics["step"] == 20 and result.metrics["replicas_in_sync"]
    workers = ray_cluster.actor_nodes("RayTrainWorker")
    workers = {a: n for a, n in workers.items() if a not in before}
    assert len(workers) == 2 and len(set(workers.values())) == 2  # one worker on each node
    assert not set(workers.values()) & heads

    documents = {}
    for f in range(12):
        lines = [{"id": f * 100 + i, "text": f"Open the file {i}. Save it."} for i in range(8)]
        documents.update({d["id"]: d["text"] for d in lines})
        body = "".join(json.dumps(d) + "\n" for d in lines)
        storage.write_bytes(f"{bucket}/inbox/part-{f:02d}.jsonl", body.encode())
    before = set(ray_cluster.actor_nodes("PieceTranslator"))
    summary = translate(
        TranslateConfig(
            checkpoint=result.checkpoint, input=f"{bucket}/inbox", output=f"{bucket}/translated",
            beam=1, concurrency="2", cpus_per_actor=WORKER_CPUS, piece_mb=0.0002,
        )
    ).summary  # fmt: skip
    actors = ray_cluster.actor_nodes("PieceTranslator")
    actors = {a: n for a, n in actors.items() if a not in before}
    assert len(set(actors.values())) == 2 and not set(actors.values()) & heads
    ids = []
    for ref in storage.expand(f"{bucket}/translated/*.jsonl"):
        rows = [json.loads(line) for line in storage.read_bytes(ref.uri).decode().splitlines()]
        assert all(r["error"] is None and r["translation"] for r in rows)
        ids += [r["id"] for r in rows]
    assert sorted(ids) == sorted(documents)  # every document exactly once, integer ids kept
    assert summary["documents"] == len(documents) and not summary["inputs"]["failed"]


def test_local_paths_are_refused_on_a_multi_node_cluster(bucket, corpus, tmp_path):
    refused = r"is a local path, but the Ray cluster has \d nodes: .*s3://.* shared_fs=true"
    with pytest.raises(ConfigError, match=refused):
        train(run_config(corpus, str(tmp_path / "run"), max_steps=5))
    assert not (tmp_path / "run").exists()  # refused before any work
    raw = tmp_path / "raw.tsv"
    raw.write_text("Open the file\tDatei öffnen\n")
    with pytest.raises(ConfigError, match=refused):
        prepare_corpus(PrepareConfig(inputs=[str(raw)], output=f"{bucket}/refused-prepared"))
    assert not storage.expand(f"{bucket}/refused-prepared")
    storage.write_bytes(f"{bucket}/refused-inbox/a.jsonl", b'{"id": 1, "text": "Open"}\n')
    with pytest.raises(ConfigError, match=refused):
        translate(TranslateConfig(checkpoint=f"{bucket}/no-model", input=f"{bucket}/refused-inbox",
                                  output=str(tmp_path / "translated")))  # fmt: skip
    assert not (tmp_path / "translated").exists()


def registered(run: str) -> dict:
    """The metrics of the last checkpoint Ray Train has registered (uploaded in full and recorded
    in its checkpoint manager's snapshot): what a restart resumes from. {} before the first."""
    uri = storage.join(run, "checkpoint_manager_snapshot.json")
    if not storage.exists(uri):
        return {}
    latest = json.loads(storage.read_bytes(uri)).get("latest_checkpoint_result")
    return latest["metrics"] if latest else {}


def registered_step(run: str) -> int:
    return registered(run).get("step", 0)


def after_a_shrink(sizes: list[int]) -> list[int]:
    """The entries after the first drop from 2 workers to 1 (an initial 1-worker phase, before
    the group first grew, is not a shrink)."""
    if 2 not in sizes or 1 not in sizes[sizes.index(2) :]:
        return []
    return sizes[sizes.index(1, sizes.index(2)) :]


def test_node_lost_mid_training_and_a_fresh_node_joins(ray_cluster, bucket, corpus):
    run = f"{bucket}/runs/node-lost"
    cfg = run_config(corpus, run, max_steps=80, max_failures=3)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(result=train(cfg)))
    thread.start()
    wait_until(lambda: registered_step(run) >= 20, 300, "a checkpoint", thread)
    alive = set(ray_cluster.actor_nodes("RayTrainWorker", alive_only=True).values())
    victim = next(n for n in ray_cluster.workers if n.node_id in alive)
    persisted = registered_step(run)  # what a restart may resume from
    ray_cluster.kill(victim)
    ray_cluster.add_worker(WORKER_CPUS)  # the autoscaler's replacement, some time later
    thread.join(timeout=600)
    assert not thread.is_alive(), "training did not finish after the node was lost"
    state = load_checkpoint(outcome["result"].checkpoint).trainer_state
    assert state.step == 80
    assert victim.node_id not in ray_cluster.alive_node_ids()
    assert state.resumed_from, "the run never restarted: the kill did not land"
    # Nothing registered was lost: at most the steps since the last checkpoint (one interval,
    # and the next checkpoint if its upload was in flight).
    assert state.resumed_from[0] >= persisted
    assert state.data_digest == expected_digest(cfg, 80)


def test_elastic_run_shrinks_on_node_loss_and_grows_back(ray_cluster, bucket, corpus):
    while len(ray_cluster.workers) < 2:
        ray_cluster.add_worker(WORKER_CPUS)
    run = f"{bucket}/runs/elastic"
    cfg = run_config(corpus, run, workers="1-2", max_steps=400, max_failures=3,
                     resize_interval_s=2.0)  # fmt: skip

    def sizes() -> list[int]:
        return [r["workers"] for r in reports(run) if "workers" in r]

    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(result=train(cfg)))
    thread.start()
    # Trained with 2 workers up to a registered checkpoint: the restart after the loss resumes
    # from it, so the 2-worker steps stay in the run's history.
    wait_until(lambda: registered(run).get("workers") == 2, 300, "2 workers", thread)
    alive = set(ray_cluster.actor_nodes("RayTrainWorker", alive_only=True).values())
    ray_cluster.kill(next(n for n in ray_cluster.workers if n.node_id in alive))
    wait_until(lambda: after_a_shrink(sizes()), 300, "training to go on with 1 worker", thread)
    # A checkpoint of the 1-worker group before capacity returns: growing restarts from it, so
    # the 1-worker steps stay in the run's history.
    shrunk_at = registered_step(run)
    wait_until(lambda: registered_step(run) > shrunk_at, 300, "a 1-worker checkpoint", thread)
    ray_cluster.add_worker(WORKER_CPUS)
    thread.join(timeout=600)
    assert not thread.is_alive(), "the elastic run did not finish"
    result = outcome["result"]
    assert result.metrics["step"] == 400
    history = sizes()
    assert 2 in after_a_shrink(history), f"no shrink and grow in {history}"
    # What each step trained on did not change with the number of workers.
    assert result.metrics["data_digest"] == expected_digest(cfg, 400)

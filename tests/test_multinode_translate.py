"""The translate job on a multi-node Ray cluster (a 1-CPU head and 2-CPU worker nodes on this
machine, every byte on the moto S3 endpoint): a translator actor on each worker node, finishing
tasks on the worker nodes, and a worker node lost mid-run (a reclaimed spot VM) changes nothing
in the result: every document exactly once."""

import json
import os
import threading
import time

from ray.util.state import list_actors, list_tasks

from s2s import storage
from s2s.config import TranslateConfig
from s2s.translate import translate

TEXTS = [
    "Open file. Save file.",
    "Quit",
    "Print the document.\n\nClose the window.",
    "Delete the selected files?",
    "The file could not be saved.",
]


def s3_model(toy_checkpoint: str, bucket: str) -> str:
    """The toy checkpoint copied into the bucket: every node loads the model from S3."""
    uri = f"{bucket}/model"
    for root, _, names in os.walk(toy_checkpoint):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                storage.write_bytes(
                    storage.join(uri, os.path.relpath(path, toy_checkpoint)), f.read()
                )
    return uri


def write_inbox(bucket: str, files: int, docs_per_file: int) -> set[str]:
    """``files`` small JSONL files under <bucket>/inbox; the ids of all their documents."""
    ids = set()
    for f in range(files):
        lines = []
        for d in range(docs_per_file):
            ids.add(f"f{f}-d{d}")
            text = TEXTS[(f + d) % len(TEXTS)]
            lines.append(json.dumps({"id": f"f{f}-d{d}", "text": text}))
        body = ("\n".join(lines) + "\n").encode()
        storage.write_bytes(f"{bucket}/inbox/part-{f:03d}.jsonl", body)
    return ids


def output_ids(bucket: str) -> list[str]:
    """The id of every row of every output file (duplicates kept)."""
    ids = []
    for ref in storage.expand(f"{bucket}/out"):
        if ref.uri.endswith(".jsonl"):
            rows = storage.read_bytes(ref.uri).decode().splitlines()
            ids += [json.loads(row)["id"] for row in rows]
    return ids


def config(model: str, bucket: str, **settings) -> TranslateConfig:
    # piece_mb: a few files per work item, so that both actors get work.
    return TranslateConfig(
        checkpoint=model, input=f"{bucket}/inbox", output=f"{bucket}/out", concurrency="2",
        cpus_per_actor=2, torch_threads=1, piece_mb=0.002, **settings,
    )  # fmt: skip


def translator_actors(cluster) -> list:
    # The cluster's address: other Ray clusters may be running on this machine.
    actors = list_actors(
        cluster.cluster.address, detail=True, limit=10_000, raise_on_missing_output=False
    )
    return [a for a in actors if "PieceTranslator" in a.class_name]


def finishing_tasks(cluster) -> list:
    tasks = list_tasks(
        cluster.cluster.address, detail=True, limit=10_000, raise_on_missing_output=False
    )
    return [t for t in tasks if t.func_or_class_name.endswith("_finish_inputs")]


def test_actors_and_finishing_tasks_run_on_the_worker_nodes(ray_cluster, toy_checkpoint, bucket):
    model = s3_model(toy_checkpoint, bucket)
    ids = write_inbox(bucket, files=40, docs_per_file=3)
    summary = translate(config(model, bucket, beam=1)).summary

    assert summary["inputs"]["translated"] == 40 and summary["inputs"]["failed_count"] == 0
    got = output_ids(bucket)
    assert len(got) == len(ids) and set(got) == ids  # every document once
    workers = {node.node_id for node in ray_cluster.workers}
    assert {
        a.node_id for a in translator_actors(ray_cluster)
    } == workers  # one actor on each worker node
    # Output files are written by Ray tasks, spread over the nodes, not by the driver.
    finished_on = {t.node_id for t in finishing_tasks(ray_cluster)}
    assert finished_on & workers, f"no finishing task ran on a worker node ({finished_on})"


def test_a_worker_node_lost_mid_run_changes_nothing(ray_cluster, toy_checkpoint, bucket):
    model = s3_model(toy_checkpoint, bucket)
    ids = write_inbox(bucket, files=60, docs_per_file=12)
    earlier = {a.actor_id for a in translator_actors(ray_cluster)}
    outcome = {}

    def run():
        try:
            outcome["summary"] = translate(config(model, bucket, beam=4)).summary
        except BaseException as err:  # handed to the test's thread
            outcome["error"] = err

    runner = threading.Thread(target=run)
    runner.start()
    deadline, done, hosts = time.monotonic() + 120, [], {}
    while runner.is_alive() and time.monotonic() < deadline and not (done and hosts):
        time.sleep(0.2)
        # Real progress: piece results (_work/*.parquet) or output files have landed ...
        done = [
            r.uri for r in storage.expand(f"{bucket}/out") if r.uri.endswith((".parquet", ".jsonl"))
        ]
        # ... and a translator actor of this run is alive on a worker node, to be lost with it.
        workers = {node.node_id: node for node in ray_cluster.workers}
        hosts = {
            a.actor_id: workers[a.node_id]
            for a in translator_actors(ray_cluster)
            if a.actor_id not in earlier and a.state == "ALIVE" and a.node_id in workers
        }
    outputs = [uri for uri in done if uri.endswith(".jsonl")]
    assert runner.is_alive() and len(outputs) < 60 and hosts, f"no work left to lose: {outcome}"
    lost, victim = next(iter(hosts.items()))
    ray_cluster.kill(victim)  # SIGKILL: its translator actor, tasks and objects are lost
    ray_cluster.add_worker(2)  # a fresh node, as an autoscaler would add
    runner.join(timeout=240)

    assert not runner.is_alive(), "the run did not finish after the node was lost"
    assert "error" not in outcome, outcome.get("error")
    assert victim.node_id not in ray_cluster.alive_node_ids()
    summary = outcome["summary"]
    assert summary["inputs"]["translated"] == 60 and summary["inputs"]["failed_count"] == 0
    # The actor on the lost node was restarted elsewhere or replaced by a new one.
    actors = [a for a in translator_actors(ray_cluster) if a.actor_id not in earlier]
    (was_lost,) = [a for a in actors if a.actor_id == lost]
    assert was_lost.num_restarts > 0 or (was_lost.state == "DEAD" and len(actors) > 2), was_lost
    got = output_ids(bucket)
    assert len(got) == len(ids) and set(got) == ids  # nothing twice, nothing missing

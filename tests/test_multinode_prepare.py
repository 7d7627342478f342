"""`s2s prepare` on a multi-node Ray cluster that loses a worker node in the middle of the main
pass, while tasks of that pass run on it: their work and the blocks the node held, which the
de-duplication shuffle needs, are lost. The corpus must come out exact and the same as on a
healthy cluster: every input line accounted for, no duplicate pair, no pair lost."""

import random
import threading
import time
import unicodedata
from collections import Counter

import boto3
import pytest
from ray.util.state import list_tasks

from s2s import storage
from s2s.config import PrepareConfig
from s2s.manifest import read_manifest
from s2s.prepare import prepare_corpus
from s2s.tokenizer import train_tokenizer
from tests.test_prepare import read_pairs

FILES = 6
LINES_PER_FILE = 30_000
DISTINCT = 12_000  # pairs drawn from; most lines repeat a pair, in the same file or another
# Ray Data names a task after its fused operators: these occur only in prepare's main pass (the
# read stage, the sort shuffle's tasks, de-duplication and writing).
MAIN_PASS_TASKS = ("dedup_groups", "_sample_block", "map_partition", "merge", "reduce",
                   "mark_duplicates", "_tokenize_and_write")  # fmt: skip


def clean(text: str) -> str:
    """The cleaning prepare applies, for text without control characters: NFC, whitespace runs
    collapsed to one space, ends trimmed."""
    return " ".join(unicodedata.normalize("NFC", text).split())


@pytest.fixture
def corpus(bucket, gettext_pairs):
    """Six TSV files in the bucket, full of repeated real pairs (some equal only once cleaned)
    and a few bad lines: (bucket URI, the distinct cleaned pairs, the bad line count)."""
    rng = random.Random(0)
    pool = gettext_pairs[:DISTINCT]
    name = bucket[len("s3://") :]
    s3 = boto3.client("s3")
    distinct, bad = set(), 0
    for index in range(FILES):
        lines = []
        for _ in range(LINES_PER_FILE):
            src, tgt = pool[rng.randrange(len(pool))]
            roll = rng.random()
            if roll < 0.02:
                lines.append(f"{src} {tgt}")  # no tab: missing_tab
                bad += 1
                continue
            if roll < 0.10:
                src, tgt = f"  {src}", f"{tgt} "  # the same pair once cleaned
            lines.append(f"{src}\t{tgt}")
            distinct.add((clean(src), clean(tgt)))
        body = "\n".join(lines).encode() + b"\n"
        s3.put_object(Bucket=name, Key=f"raw/part-{index}.tsv", Body=body)
    proto = train_tokenizer([s for pair in pool[:4000] for s in pair], vocab_size=1000)
    storage.write_bytes(f"{bucket}/tokenizer.model", proto)
    return bucket, distinct, bad


def config(bucket: str, output: str) -> PrepareConfig:
    # A given tokenizer and fractional splits: no scan, the job is the main pass alone. No length
    # filter, so that the kept pairs are exactly the distinct cleaned pairs.
    return PrepareConfig(
        inputs=[f"{bucket}/raw/"],
        output=f"{bucket}/{output}",
        tokenizer=f"{bucket}/tokenizer.model",
        valid_size=0.05,
        test_size=0.05,
        max_len=100_000,
        max_ratio=1e9,
        read_block_rows=5000,
        shard_rows=20_000,
    )


def is_main_pass(task) -> bool:
    return any(marker in task.name for marker in MAIN_PASS_TASKS)


def main_pass_node(cluster, done: threading.Event, timeout_s: float = 120) -> str:
    """Wait until Ray's state API shows a task of the main pass running on a worker node."""
    worker_ids = {node.node_id for node in cluster.workers}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and not done.is_set():
        running = list_tasks(
            cluster.cluster.address,  # not "the" local Ray: others may run on this machine
            filters=[("state", "=", "RUNNING")],
            raise_on_missing_output=False,
        )
        for task in running:
            if task.node_id in worker_ids and is_main_pass(task):
                return task.node_id
        time.sleep(0.2)
    pytest.fail("no task of the main pass was seen running on a worker node")


def check_corpus(root: str, distinct: set, bad: int) -> dict:
    manifest = read_manifest(root)  # raises unless read == kept + dropped
    counts = manifest["counts"]
    assert counts["read"] == FILES * LINES_PER_FILE
    assert sum(counts["kept"].values()) == len(distinct)
    assert counts["dropped"] == {
        "missing_tab": bad,
        "duplicate": FILES * LINES_PER_FILE - bad - len(distinct),
    }
    by_split = read_pairs(root, manifest)
    everything = Counter(pair for pairs in by_split.values() for pair in pairs)
    assert everything.most_common(1)[0][1] == 1  # no pair twice, in one split or across splits
    assert set(everything) == distinct  # and none lost
    return {split: sorted(pairs) for split, pairs in by_split.items()}


def test_prepare_survives_the_loss_of_a_node(ray_cluster, corpus):
    bucket, distinct, bad = corpus
    outcome = {}
    done = threading.Event()

    def run():
        try:
            outcome["result"] = prepare_corpus(config(bucket, "killed"))
        except BaseException as err:  # reported by the assertion below
            outcome["error"] = err
        finally:
            done.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    victim = main_pass_node(ray_cluster, done)
    assert not done.is_set(), "prepare finished before the node could be killed"
    ray_cluster.kill(next(node for node in ray_cluster.workers if node.node_id == victim))
    ray_cluster.add_worker()
    thread.join(timeout=300)
    assert not thread.is_alive(), "prepare did not finish after the node loss"
    assert "error" not in outcome, repr(outcome.get("error"))
    assert victim not in ray_cluster.alive_node_ids()
    # The loss cost work that Ray ran again: a task killed with the node was retried, or a block
    # lost with it was rebuilt from lineage.
    tasks = list_tasks(ray_cluster.cluster.address, limit=10_000, raise_on_missing_output=False)
    assert any(t.attempt_number > 0 for t in tasks if is_main_pass(t))
    after_loss = check_corpus(f"{bucket}/killed", distinct, bad)

    # The same input on the healed cluster: the same counts and the very same pairs per split.
    healthy = prepare_corpus(config(bucket, "healthy"))
    assert healthy.manifest["counts"] == outcome["result"].manifest["counts"]
    assert check_corpus(f"{bucket}/healthy", distinct, bad) == after_loss

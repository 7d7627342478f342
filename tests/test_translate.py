"""The translate job on the local Ray runtime with its documents and outputs on the moto S3
endpoint: every input row comes back exactly once, bad rows get errors, reruns skip, new files
are picked up, a killed translator actor changes nothing in the result."""

import json
import os
import signal
import threading
import time

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from s2s import storage
from s2s.cli import main
from s2s.config import ConfigError, TranslateConfig
from s2s.documents import (
    finish_input,
    plan_outputs,
    plan_pieces,
    read_piece,
    result_table,
    write_work,
)
from s2s.lease import Lease, LeaseHeld
from s2s.translate import PieceLayout, RunPlan, _Report, translate
from s2s.translator import Translator
from s2s.work import DocumentCounts, PieceSummary
from tests.test_lease import LeaseClock
from tests.test_train import ray_actors, wait_until_gone

GOOD = [
    "Open file. Save file.",
    "Quit",
    "Print the document.\n\nClose the window.",
    "Settings",
    "Delete the selected files?",
    "Delete %s? <b>Yes</b>",  # placeholders: masked, restored, counted
]


def jsonl_documents() -> tuple[bytes, list[dict]]:
    """A JSONL file with good and bad rows, and what each row's output must say."""
    lines, expect = [], []
    for n, text in enumerate(GOOD * 6):  # enough bytes for several pieces
        lines.append(json.dumps({"id": f"g{n}", "text": text}).encode())
        expect.append({"id": f"g{n}", "text": text, "error": None})
    bad = [
        (b'{"id": "b0", "text": null}', {"id": "b0", "error": "text is null"}),
        (b'{"id": "b1", "text": 7}', {"id": "b1", "error": "text is int, not a string"}),
        (b'{"id": "b2"}', {"id": "b2", "error": "no 'text' field"}),
        (b'{"id": "b3", "text": "unclosed', {"id": None, "error": "invalid JSON"}),
        (b'["a", "list"]', {"id": None, "error": "a JSON list, not an object"}),
        (b'{"id": "b5", "text": "Caf\xe9 \xff open."}', {"id": "b5", "warning": "invalid UTF-8"}),
        (b'{"id": "b6", "text": "Open\\u0000 file\\u0007."}', {"id": "b6", "error": None}),
        (
            json.dumps({"id": "b7", "text": "Open the file. " * 300}).encode(),
            {"id": "b7", "error": "over max_document_chars"},
        ),
        (
            json.dumps({"id": "b8", "text": " ".join(["Open the file"] * 40)}).encode(),
            {"id": "b8", "warning": "cut into parts"},
        ),
        (b'{"id": 9, "text": ""}', {"id": "9", "error": None, "translation": ""}),  # mixed ids: str
    ]
    for position, (line, expected) in zip((3, 8, 11, 15, 16, 20, 22, 25, 27, 29), bad):
        lines.insert(position, line)
        expect.insert(position, expected)
    lines.insert(5, b"")  # a blank line: skipped and counted, not a document
    return b"\n".join(lines) + b"\n", expect


@pytest.fixture
def documents(bucket):
    """Inputs in three formats under s3://<bucket>/docs/."""
    s3 = boto3.client("s3")
    name = bucket.removeprefix("s3://")
    body, expect = jsonl_documents()
    s3.put_object(Bucket=name, Key="docs/news.jsonl", Body=body)
    table = pa.table({"id": ["p0", "p1", None], "text": ["Quit", None, "Settings"]})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=1)
    s3.put_object(Bucket=name, Key="docs/more/table.parquet", Body=sink.getvalue().to_pybytes())
    s3.put_object(Bucket=name, Key="docs/letter.txt", Body=b"Open file.\n\nQuit")
    return bucket, expect


def run(toy_checkpoint, bucket, **settings) -> dict:
    cfg = TranslateConfig(
        checkpoint=toy_checkpoint, input=f"{bucket}/docs", output=f"{bucket}/out", beam=2,
        max_input_tokens=12, max_document_chars=2000, piece_mb=0.0005, concurrency="1,2",
        cpus_per_actor=0.5, torch_threads=1, **settings,
    )  # fmt: skip
    return translate(cfg).summary


def read_jsonl(uri: str) -> list[dict]:
    return [json.loads(line) for line in storage.read_bytes(uri).decode().splitlines()]


def test_translate_every_row_once_with_errors_where_due(ray_local, toy_checkpoint, documents):
    bucket, expect = documents
    summary = run(toy_checkpoint, bucket, keep_source=True)

    rows = read_jsonl(f"{bucket}/out/news.jsonl")
    assert len(rows) == len(expect)  # every row, once, in input order
    translator = Translator(TranslateConfig(checkpoint=toy_checkpoint, beam=2, max_input_tokens=12))
    alone = translator.translate_documents(GOOD)
    for row, want in zip(rows, expect):
        assert row["id"] == want["id"]
        assert set(row) == {
            "id",
            "translation",
            "n_segments",
            "error",
            "warning",
            "placeholders_lost",
            "model",
            "source",
        }
        if want.get("error"):
            assert want["error"] in row["error"], row
            assert row["translation"] is None
        else:
            assert row["error"] is None, row
            assert isinstance(row["translation"], str)
        if want.get("warning"):
            assert want["warning"] in row["warning"]
        if "text" in want:  # a good document: the job translates as the engine does alone
            same = alone[GOOD.index(want["text"])]
            assert row["translation"] == same.translation
            assert row["placeholders_lost"] == same.placeholders_lost
            assert row["source"] == want["text"]
    assert rows[0]["model"].startswith("checkpoint@step")
    assert rows[2]["translation"].count("\n\n") == 1  # layout kept

    table = read_jsonl(f"{bucket}/out/more/table.jsonl")  # a Parquet input, one row per group
    assert [r["id"] for r in table] == ["p0", "p1", None]
    assert [r["error"] for r in table] == [None, "text is null", None]
    assert table[0]["translation"] == alone[GOOD.index("Quit")].translation
    letter = read_jsonl(f"{bucket}/out/letter.jsonl")  # a text file is one document
    assert [r["id"] for r in letter] == ["letter.txt"] and letter[0]["n_segments"] == 2

    assert summary["inputs"] == {
        "total": 3, "already_complete": 0, "translated": 3, "failed_count": 0, "failed": []
    }  # fmt: skip
    assert summary["documents"] == summary["rows_written"] == len(expect) + 3 + 1
    assert summary["errors"] == sum(bool(w.get("error")) for w in expect) + 1
    assert summary["blank_lines_skipped"] == 1
    assert summary["placeholders"] == {
        "sentences": 6 * sum(r.placeholder_sentences for r in alone),
        "lost": sum(r["placeholders_lost"] for r in rows + table + letter),
    }
    assert summary["placeholders"]["sentences"] == 6  # "Delete %s? <b>Yes</b>": one sentence
    assert json.loads(storage.read_bytes(f"{bucket}/out/_run.json")) == summary
    assert not storage.expand(f"{bucket}/out/_work")  # pieces are gone once outputs exist


def test_bad_settings_fail_before_work(ray_local, toy_checkpoint, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.jsonl").write_text('{"id": 1, "text": "Quit"}\n')
    (docs / "a.parquet").write_bytes(b"")
    cases = [
        ({"input": str(tmp_path / "none")}, "no such file"),
        ({"output": str(docs / "out")}, "overlap"),
        ({"format": "text"}, "--format text needs text inputs"),
        ({"concurrency": "3,1"}, "concurrency must be N or MIN,MAX"),
        ({"checkpoint": str(tmp_path / "nomodel")}, "nomodel"),
    ]
    for change, message in cases:
        settings = {"checkpoint": toy_checkpoint, "input": str(docs), "output": str(tmp_path / "o")}
        with pytest.raises((ConfigError, storage.StorageError), match=message):
            translate(TranslateConfig(**{**settings, **change}))


def test_rerun_skips_and_new_files_are_picked_up(ray_local, toy_checkpoint, documents):
    bucket, _ = documents
    first = run(toy_checkpoint, bucket)
    s3, name = boto3.client("s3"), bucket.removeprefix("s3://")
    stamp = s3.head_object(Bucket=name, Key="out/news.jsonl")["ETag"], first["model"]

    again = run(toy_checkpoint, bucket)
    assert again["inputs"] == {
        "total": 3, "already_complete": 3, "translated": 0, "failed_count": 0, "failed": []
    }  # fmt: skip
    assert again["documents"] == 0
    assert (s3.head_object(Bucket=name, Key="out/news.jsonl")["ETag"], again["model"]) == stamp

    s3.put_object(Bucket=name, Key="docs/more/new.jsonl", Body=b'{"id": "n1", "text": "Quit"}\n')
    newer = run(toy_checkpoint, bucket)
    assert newer["inputs"]["already_complete"] == 3 and newer["inputs"]["translated"] == 1
    assert [r["id"] for r in read_jsonl(f"{bucket}/out/more/new.jsonl")] == ["n1"]

    redo = run(toy_checkpoint, bucket, overwrite=True, format="parquet")
    assert redo["inputs"]["translated"] == 4 and redo["rows_written"] == first["rows_written"] + 1
    fs, path = storage.filesystem(f"{bucket}/out/news.parquet")
    assert pq.read_table(path, filesystem=fs).num_rows == len(
        read_jsonl(f"{bucket}/out/news.jsonl")
    )


def test_killed_translator_actor_changes_nothing(ray_local, toy_checkpoint, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    lines = [json.dumps({"id": n, "text": GOOD[n % len(GOOD)]}) for n in range(400)]
    (docs / "big.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    cfg = TranslateConfig(
        checkpoint=toy_checkpoint, input=str(docs), output=str(out), beam=4, piece_mb=0.001,
        concurrency="1", cpus_per_actor=0.5, torch_threads=1,
    )  # fmt: skip
    earlier = set(ray_actors("PieceTranslator"))  # other runs' translator actors
    killed, landed = [], []

    def kill_once_pieces_land():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            work = list((out / "_work").rglob("*.parquet")) if (out / "_work").exists() else []
            mine = [
                (actor, record["Pid"])
                for actor, record in ray_actors("PieceTranslator").items()
                if actor not in earlier and record["State"] == "ALIVE"
            ]  # this run's translator actor (concurrency 1: the only one)
            if len(work) >= 3 and mine:
                os.kill(mine[0][1], signal.SIGKILL)
                killed.append(mine[0])
                landed.append(wait_until_gone(mine[0][1]))
            time.sleep(0.05)

    killer = threading.Thread(target=kill_once_pieces_land)
    killer.start()
    summary = translate(cfg).summary
    killer.join()
    assert killed, "the translator actor was never killed; the test proved nothing"
    assert landed == [True], f"translator actor process {killed[0][1]} survived its SIGKILL"
    # Ray restarted that actor (a new process) and the run went on with it.
    ((actor, pid),) = killed
    record = ray_actors("PieceTranslator")[actor]
    assert record["NumRestarts"] >= 1 and record["Pid"] != pid, record
    rows = read_jsonl(str(out / "big.jsonl"))
    assert [r["id"] for r in rows] == list(range(400))  # each once, in order (ids stay integers)
    assert all(r["error"] is None and r["translation"] for r in rows)
    assert summary["rows_written"] == 400


def test_an_unreadable_input_fails_alone_with_exit_status_1(
    ray_local, toy_checkpoint, tmp_path, capsys
):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "good.jsonl").write_text('{"id": "a", "text": "Quit"}\n')
    (docs / "broken.parquet").write_bytes(b"PAR1 this is no parquet file")
    args = ["translate", "--checkpoint", toy_checkpoint, "--input", str(docs), "--output",
            str(tmp_path / "out"), "--beam", "1", "cpus_per_actor=0.5"]  # fmt: skip
    assert main(args) == 1
    printed = capsys.readouterr().out
    assert printed.splitlines()[-1].startswith(f"  FAILED {docs / 'broken.parquet'}: ")
    assert "translated 1 of 2 inputs" in printed
    assert read_jsonl(str(tmp_path / "out" / "good.jsonl"))[0]["id"] == "a"
    assert not (tmp_path / "out" / "broken.jsonl").exists()


def test_a_second_run_is_refused_and_a_dead_run_is_finished_by_the_next(
    ray_local, toy_checkpoint, tmp_path, monkeypatch
):
    import subprocess
    import sys

    import ray

    docs, out = tmp_path / "docs", tmp_path / "out"
    docs.mkdir()
    lines = [json.dumps({"id": n, "text": GOOD[n % len(GOOD)]}) for n in range(300)]
    (docs / "big.jsonl").write_text("\n".join(lines) + "\n")
    settings = ["--checkpoint", toy_checkpoint, "--input", str(docs), "--output", str(out),
                "--beam", "4", "piece_mb=0.001", "cpus_per_actor=0.5", "torch_threads=1",
                "lease_ttl_s=60"]  # fmt: skip
    # 60 s, renewed every 20: a busy machine cannot stall the first run's renewal long enough
    # for its lease to lapse while it runs. Its expiry after death is not waited for (below).
    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    first = subprocess.Popen(
        [sys.executable, "-m", "s2s.cli", "translate", *settings], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.time() + 120
        while len(list(out.glob("_work/*.parquet"))) < 3 and time.time() < deadline:
            assert first.poll() is None, "the first run ended before it could be interrupted"
            time.sleep(0.1)
        # While it runs, a second run on the same output does nothing and says why.
        assert main(["translate", *settings]) == 3
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # the run dies halfway: no output file, no release
        first.wait()
    assert not (out / "big.jsonl").exists() and (out / "_lease.json").exists()
    dead = json.loads((out / "_lease.json").read_text())
    assert dead["expires"] - dead["acquired"] == pytest.approx(60, abs=1e-3)  # the ttl set
    with pytest.raises(LeaseHeld):  # unreleased: held until it expires
        Lease(str(out / "_lease.json")).acquire()

    # Nobody renews it now. The lease's clock is moved past its expiry instead of waiting a
    # minute for it: the next run takes over and finishes.
    clock = LeaseClock()
    clock.shift = dead["expires"] + 1 - time.time()
    monkeypatch.setattr("s2s.lease.time", clock)
    summary = translate(
        TranslateConfig(
            checkpoint=toy_checkpoint, input=str(docs), output=str(out), beam=4, piece_mb=0.001,
            cpus_per_actor=0.5, torch_threads=1,
        )
    ).summary  # fmt: skip
    assert summary["pieces"]["reused_from_earlier_run"] >= 3
    rows = read_jsonl(str(out / "big.jsonl"))
    assert [r["id"] for r in rows] == list(range(300))
    assert not (out / "_lease.json").exists()


def test_run_summary_lists_the_first_failures_and_counts_them_all(
    ray_local, toy_checkpoint, tmp_path, monkeypatch
):
    monkeypatch.setattr("s2s.translate._FAILURES_LISTED", 5)
    docs, out = tmp_path / "docs", tmp_path / "out"
    docs.mkdir()
    for n in range(30):  # unreadable: each fails alone, in its translator actor
        (docs / f"broken-{n:02d}.parquet").write_bytes(b"PAR1 this is no parquet file")
    for n in range(3):
        (docs / f"good-{n}.jsonl").write_text(json.dumps({"id": n, "text": GOOD[n]}) + "\n")
    summary = translate(
        TranslateConfig(
            checkpoint=toy_checkpoint, input=str(docs), output=str(out), beam=1, cpus_per_actor=0.5,
            torch_threads=1,
        )
    ).summary  # fmt: skip
    inputs = summary["inputs"]
    assert (inputs["total"], inputs["translated"], inputs["failed_count"]) == (33, 3, 30)
    assert [f["input"] for f in inputs["failed"]] == [
        str(docs / f"broken-{n:02d}.parquet") for n in range(5)
    ]  # the first five in input order, each with its reason
    assert all("unreadable" in f["error"] for f in inputs["failed"])
    assert len(summary["error_samples"]) == 20  # capped too
    assert summary["rows_written"] == summary["documents"] == 3
    assert json.loads((out / "_run.json").read_text()) == summary
    assert sorted(p.name for p in out.glob("*.jsonl")) == [
        "good-0.jsonl",
        "good-1.jsonl",
        "good-2.jsonl",
    ]


def test_finishing_an_input_twice_changes_nothing(tmp_path):
    """What a finishing task does, without Ray: a small Parquet file is one piece planned without
    reading it; finishing again (a task retried after its node was lost, its pieces already
    deleted) checks the output instead of failing the input."""
    docs, out = tmp_path / "docs", str(tmp_path / "out")
    docs.mkdir()
    (docs / "a.jsonl").write_text("".join(f'{{"id": "a{n}", "text": "Quit"}}\n' for n in range(5)))
    pq.write_table(pa.table({"id": ["b0", "b1"], "text": ["Quit", "Open"]}), docs / "b.parquet",
                   row_group_size=1)  # fmt: skip
    sources = plan_outputs(storage.expand(str(docs)), str(docs), out, "auto", "jsonl")
    for i, source in enumerate(sources):
        piece_bytes = 60 if source.format == "jsonl" else 2**20  # a.jsonl: 3 pieces; b: 1
        pieces = plan_pieces(i, source, out, "settings", piece_bytes)
        assert len(pieces) == (3 if source.format == "jsonl" else 1)
        for piece in pieces:
            rows = read_piece(source, piece, "id", "text")
            n, columns = len(rows.ids), ("error", "warning", "placeholders_lost", "model")
            table = {"id": rows.ids, "translation": rows.texts, "n_segments": [1] * n}
            write_work(
                result_table("id", table | {c: [None] * n for c in columns}, False), piece.work
            )
        documents = 5 if source.format == "jsonl" else 2
        assert finish_input(source, pieces, "jsonl") == documents
        assert [r["id"] for r in read_jsonl(source.output)][-1] == ("a4", "b1")[i]
        assert not storage.expand(f"{out}/_work")  # pieces gone
        assert finish_input(source, pieces, "jsonl") == documents  # again: checked, not failed
    os.remove(sources[0].output)
    with pytest.raises(storage.StorageError, match="not found"):
        finish_input(sources[0], plan_pieces(0, sources[0], out, "settings", 60), "jsonl")


def test_gpu_actors_are_refused_up_front_on_a_cluster_without_gpus(
    ray_local, toy_checkpoint, tmp_path
):
    """Ray Data would wait forever for translator actors the cluster cannot place: a --gpu job
    on a cluster without GPUs (and no autoscaler) is refused at once, with the numbers, and
    writes no translation."""
    inbox = tmp_path / "in"
    inbox.mkdir()
    (inbox / "a.jsonl").write_text(json.dumps({"id": "1", "text": "Quit"}) + "\n")
    cfg = TranslateConfig(
        checkpoint=toy_checkpoint, input=str(inbox), output=str(tmp_path / "out"), use_gpu=True,
        gpus_per_actor=0.5, concurrency="2", wait_for_workers_s=5,
    )  # fmt: skip
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"2 translator actor\(s\) needs 2 CPU, 1 GPU"):
        translate(cfg)
    assert time.monotonic() - started < 60
    assert not list((tmp_path / "out").glob("*.jsonl"))


def test_piece_summaries_survive_ray_data_and_land_once_per_input():
    """Without Ray: a piece summary makes its JSON trip unchanged, and the plan hands an input
    to the finisher exactly when its last piece lands, never for one that failed."""
    sent = PieceSummary(0, 120, None, ["a.jsonl: id 1: boom"], DocumentCounts(2, errors=1))
    assert PieceSummary.from_json(sent.to_json()) == sent
    refs = [storage.FileRef(f"/in/{name}.jsonl", 9, None) for name in "ab"]
    inputs = plan_outputs(refs, "/in", "/out", "auto", "jsonl")
    layout = PieceLayout("/out", "settings", 2**20, "jsonl")
    plan, report = RunPlan("model", inputs, layout, remaining=[2, 2]), _Report()
    arrivals = [(0, None), (1, "unreadable"), (0, None), (1, None)]
    landed = [plan.landed(PieceSummary(i, 0, failed), report) for i, failed in arrivals]
    assert landed == [False, False, True, False]
    assert (report.failed_count, report.failed) == (1, [(1, "/in/b.jsonl", "unreadable")])

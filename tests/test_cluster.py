"""The pipeline on a real local cluster: `ray start --head` on free ports (with the job server),
`ray job submit` of jobs/pipeline.py with token authentication on both sides, all storage on the
moto S3 endpoint; the checkpoint and every translated document are checked in the bucket, and the
cluster is stopped whatever happens."""

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3
import pytest

from s2s import storage
from tests.conftest import free_port

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture
def head(tmp_path, s3_endpoint):
    """A head node of its own: its own HOME and token, so neither the session's ~/.ray/auth_token
    nor a token from an earlier run decides whether `ray job submit` may talk to it."""
    home = tmp_path / "home"
    home.mkdir()
    token = tmp_path / "ray-token"
    token.write_text(secrets.token_hex(32))
    env = {
        **os.environ,
        "HOME": str(home),
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "RAY_ADDRESS": "",
    }
    dashboard = free_port()
    ports = {"--port": free_port(), "--dashboard-port": dashboard,
             "--ray-client-server-port": free_port(),
             "--dashboard-agent-listen-port": free_port(), "--metrics-export-port": free_port(),
             "--runtime-env-agent-port": free_port()}  # fmt: skip
    args = [str(BIN / "ray"), "start", "--head", "--block", "--num-cpus", "2",
            "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
            "--temp-dir", tempfile.mkdtemp(prefix="ray-", dir="/tmp")]  # fmt: skip
    # (a short --temp-dir: Ray's socket paths under pytest's long tmp_path exceed the limit)
    for flag, port in ports.items():
        args += [flag, str(port)]
    log = open(tmp_path / "ray-start.log", "w")  # noqa: SIM115 (closed with the cluster)
    process = subprocess.Popen(
        args, env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT
    )
    address = f"http://127.0.0.1:{dashboard}"
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            probe = subprocess.run(
                [str(BIN / "ray"), "job", "list", "--address", address],
                env=env, capture_output=True, text=True,
            )  # fmt: skip
            if probe.returncode == 0:
                break
            assert process.poll() is None, (tmp_path / "ray-start.log").read_text()[-3000:]
            time.sleep(1)
        else:
            pytest.fail(f"the head at {address} never answered: {probe.stderr[-500:]}")
        yield address, env
    finally:  # not `ray stop`: it would stop every Ray on the machine, the session's too
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:  # `ray start --block` takes ~30 s to wind down on SIGTERM; a test head need not
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()


def job_status(submitted: subprocess.CompletedProcess, address: str, env: dict) -> tuple[str, str]:
    """(job id, `ray job status` without colours) of a job `ray job submit` ran."""
    words = (w.strip("'") for w in submitted.stdout.split())
    job_id = next(w for w in words if w.startswith("raysubmit_"))
    status = subprocess.run(
        [str(BIN / "ray"), "job", "status", "--address", address, job_id],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    return job_id, re.sub(r"\x1b\[[0-9;]*m", "", status.stdout)


def test_pipeline_job_on_a_started_head(head, bucket, gettext_pairs):
    address, env = head
    s3, name = boto3.client("s3"), bucket.removeprefix("s3://")
    corpus = "".join(f"{s}\t{t}\n" for s, t in gettext_pairs[:3000])
    s3.put_object(Bucket=name, Key="raw/pairs.tsv", Body=corpus.encode())
    docs = [{"id": f"d{i}", "text": f"{gettext_pairs[5000 + i][0]}\n\n{gettext_pairs[6000 + i][0]}"}
            for i in range(12)]  # fmt: skip
    body = "".join(json.dumps(d) + "\n" for d in docs).encode()
    s3.put_object(Bucket=name, Key="inbox/day1.jsonl", Body=body)

    submit = [
        str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO),
        "--runtime-env", str(REPO / "cluster" / "runtime_env.yaml"), "--",
        "python", "jobs/pipeline.py", "--corpus", f"{bucket}/raw/pairs.tsv",
        "--docs", f"{bucket}/inbox", "--output", f"{bucket}/nmt", "--max-steps", "12",
        "prepare.vocab_size=600", "prepare.valid_size=50", "prepare.test_size=50",
        "train.model.d_model=64", "train.model.ffn_dim=128", "train.eval_every=6",
        "train.checkpoint_every=6", "train.cpus_per_worker=0.5", "translate.cpus_per_actor=0.5",
        "evaluate.limit=20",
    ]  # fmt: skip
    job = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600)
    assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-2000:]
    assert "succeeded" in job.stdout, job.stdout[-3000:]
    job_id, plain = job_status(job, address, env)
    assert f"Job '{job_id}' succeeded" in plain, plain

    checkpoint = f"{bucket}/nmt/runs/transformer-small/best"
    assert storage.exists(f"{checkpoint}/model.safetensors")
    assert (
        json.loads(storage.read_bytes(f"{bucket}/nmt/runs/transformer-small/eval/scores.json"))[
            "sentences"
        ]
        == 20
    )
    rows = [
        json.loads(x)
        for x in storage.read_bytes(f"{bucket}/nmt/translations/day1.jsonl").splitlines()
    ]
    assert [r["id"] for r in rows] == [d["id"] for d in docs]
    assert all(r["error"] is None and r["translation"].count("\n\n") == 1 for r in rows)

    # A job refused before work: Ray's final status message carries the exit code and the one
    # line that says why (what a scheduler watching `ray job status` acts on).
    refused_job = [
        str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO),
        "--runtime-env", str(REPO / "cluster" / "runtime_env.yaml"), "--",
        "python", "jobs/translate.py", "--checkpoint", f"{bucket}/no-model", "--input",
        f"{bucket}/inbox", "--output", f"{bucket}/out2",
    ]  # fmt: skip
    job = subprocess.run(refused_job, env=env, capture_output=True, text=True, timeout=300)
    assert job.returncode != 0, job.stdout[-3000:]
    job_id, plain = job_status(job, address, env)
    assert f"Job '{job_id}' failed" in plain and "exit code 2" in plain, plain
    assert f"s2s: error: {bucket}/no-model: not a complete checkpoint" in plain, plain

    # The CronJob's submitter exits with the job's own status (`ray job submit` turns every
    # failure into 1): 2 here, refused before work, which Kubernetes must not retry.
    via_wrapper = [
        str(BIN / "python"), str(REPO / "cluster" / "submit.py"), "--address", address,
        "--group", "nightly", "--poll", "1", "--", str(BIN / "python"),
        str(REPO / "jobs" / "translate.py"), "--checkpoint", f"{bucket}/no-model",
        "--input", f"{bucket}/inbox", "--output", f"{bucket}/out3",
    ]  # fmt: skip
    job = subprocess.run(via_wrapper, env=env, capture_output=True, text=True, timeout=300)
    assert job.returncode == 2, job.stdout[-2000:] + job.stderr[-2000:]
    assert f"{bucket}/no-model: not a complete checkpoint" in job.stdout, job.stdout[-2000:]
    assert "driver exit code 2 (exit 2)" in job.stderr, job.stderr[-2000:]

    # Without the token the head refuses the client: the trap the README warns about.
    no_token = {**env, "RAY_AUTH_TOKEN_PATH": str(Path(env["HOME"]) / "missing")}
    refused = subprocess.run(
        [str(BIN / "ray"), "job", "list", "--address", address],
        env=no_token, capture_output=True, text=True,
    )  # fmt: skip
    assert refused.returncode != 0

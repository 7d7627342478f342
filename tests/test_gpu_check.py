"""jobs/gpu_check.py in its CI mode (--cpu --quick): every section of the GPU check runs its code
path on the CPU at toy sizes, so the script cannot rot between the runs on a GPU machine."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ["environment", "corpus", "train_bare", "train_ray", "resume", "decode", "translate_job"]
# What a CPU cannot tell: these alone may read "n/a" in CPU mode.
GPU_ONLY = {
    "cuda", "cudnn", "gpu", "gpus", "compute_capability", "gpu_memory_gib", "driver",
    "peak_memory_mib", "gpus_per_actor",
}  # fmt: skip


def leaves(node, key=""):
    """(key, value) of every scalar in a JSON tree, each under its innermost dict key."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from leaves(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from leaves(v, key)
    else:
        yield key, node


def test_gpu_check_cpu_quick(tmp_path):
    env = {**os.environ, "RAY_ADDRESS": "local"}  # its own Ray, not the test session's
    done = subprocess.run(
        [sys.executable, "jobs/gpu_check.py", "--cpu", "--quick", "--output", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = report["sections"]
    assert report["mode"] == "cpu" and "meaningless" in report["note"]
    assert list(sections) == SECTIONS
    assert {name: s["status"] for name, s in sections.items()} == dict.fromkeys(SECTIONS, "ok")
    assert report["summary"] == {"ok": SECTIONS, "failed": [], "skipped": []}

    for key, value in leaves(sections):
        if value == "n/a":
            assert key in GPU_ONLY, f"{key} is n/a"
        elif key.endswith("tokens_per_s") or key.endswith("_vs_bare") or "_vs_" in key:
            assert isinstance(value, (int, float)) and value > 0, (key, value)

    env_ = sections["environment"]
    assert env_["torch"] and env_["ray"] and env_["ctranslate2"] not in ("", "not installed")
    assert env_["ct2_compute_types"] and env_["gpu"] == "n/a"
    assert sections["corpus"]["pairs"] > 0 and sections["corpus"]["vocab_size"] >= 300

    runs = sections["train_bare"]["runs"]
    assert {r["preset"] for r in runs} == {"transformer-small", "transformer-base"}
    assert all(r["status"] == "ok" and r["tokens_per_s"] > 0 for r in runs)
    assert "fp32" in {r["precision"] for r in runs}

    ray_train = sections["train_ray"]
    assert ray_train["tokens_per_s"] > 0 and ray_train["bare_tokens_per_s"] > 0
    assert ray_train["ray_vs_bare"] > 0

    resume = sections["resume"]
    first, second = resume["steps"]
    assert resume["passed"] is True and second == 2 * first
    assert resume["final_step"] == resume["last_logged_step"] == second
    assert resume["resumed_from"] == [first]

    decode = sections["decode"]["runs"]
    assert {(r["engine"], r["beam"]) for r in decode} == {
        ("torch", 1), ("torch", 4), ("ct2", 1), ("ct2", 4),
    }  # fmt: skip
    assert all(r["tokens_per_s"] > 0 and r["failed_sentences"] == 0 for r in decode)
    assert all(r["max_tokens"] > 0 and r["max_sentences"] > 0 for r in decode)

    job = sections["translate_job"]
    assert job["engine"]["errors"] == job["job"]["errors"] == 0
    assert job["job"]["documents"] == job["documents"] > 0
    assert job["engine"]["gpu"] == job["job"]["gpu"] == "n/a"

    assert "** CPU mode: these numbers are meaningless" in done.stdout
    assert "| section | case | tokens/s | vs | detail | status |" in done.stdout
    assert "gpu_check: 7/7 sections ok" in done.stdout


def test_gpu_check_time_guard_skips_and_records(tmp_path):
    """--max-minutes spent: every section is recorded as skipped (no Ray is started), the JSON
    and the table are still written, and skipping is not failing."""
    done = subprocess.run(
        [sys.executable, "jobs/gpu_check.py", "--cpu", "--quick", "--max-minutes", "0",
         "--output", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert [s["status"] for s in report["sections"].values()] == ["skipped"] * len(SECTIONS)
    assert report["summary"]["skipped"] == SECTIONS
    assert "0/7 sections ok, skipped: environment" in done.stdout

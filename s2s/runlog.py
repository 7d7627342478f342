"""A training run's record: ``metrics.jsonl`` (one JSON object per log window or evaluation) and
``curves.png`` (loss and BLEU against steps)."""

from __future__ import annotations

import io
import json
import logging

from s2s import storage

__all__ = ["METRICS_NAME", "CURVES_NAME", "read_metrics", "write_metrics", "plot_curves"]

log = logging.getLogger(__name__)
METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "curves.png"


def read_metrics(run: str, up_to_step: int | None = None) -> list[dict]:
    """The run's metrics lines (those up to ``up_to_step`` when resuming from it)."""
    uri = storage.join(run, METRICS_NAME)
    if not storage.exists(uri):
        return []
    lines = [json.loads(line) for line in storage.read_bytes(uri).decode().splitlines() if line]
    return [m for m in lines if up_to_step is None or m.get("step", 0) <= up_to_step]


def write_metrics(run: str, lines: list[dict]) -> None:
    """Rewrite ``metrics.jsonl`` whole (object stores cannot append)."""
    body = "".join(json.dumps(m) + "\n" for m in lines)
    storage.write_bytes(storage.join(run, METRICS_NAME), body.encode())


def plot_curves(run: str) -> None:
    """Loss and BLEU against steps as a PNG in the run; skipped (with a note) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib is not installed: no %s (pip install 's2s[plot]')", CURVES_NAME)
        return
    lines = read_metrics(run)
    if not lines:
        return
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    logged = [m for m in lines if "loss" in m]
    left.plot([m["step"] for m in logged], [m["loss"] for m in logged])
    left.set(xlabel="step", ylabel="training loss (label-smoothed, per token)")
    evaluated = [m for m in lines if "bleu" in m]
    right.plot([m["step"] for m in evaluated], [m["bleu"] for m in evaluated], marker="o")
    right.set(xlabel="step", ylabel="validation BLEU (greedy)")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    storage.write_bytes(storage.join(run, CURVES_NAME), buffer.getvalue())

"""Batching, loss, schedules and checkpoints: the Ray-free parts of training."""

import json
import math
import random

import pytest
import torch

from s2s.batching import collate, token_batches
from s2s.checkpoint import TrainerState, load_checkpoint, load_optimizer_state, save_checkpoint
from s2s.config import model_preset
from s2s.models import build_model
from s2s.objective import build_optimizer, label_smoothed_loss, lr_multiplier
from s2s.tokenizer import BOS_ID, EOS_ID, PAD_ID


def test_token_batches_respect_the_budget_and_keep_every_example():
    rng = random.Random(0)
    examples = [([1] * rng.randint(1, 60), [2] * rng.randint(1, 60)) for _ in range(3000)]
    batches = list(token_batches(iter(examples), max_tokens=500, buffer_size=1000))
    assert sorted(map(repr, (e for b in batches for e in b))) == sorted(map(repr, examples))
    for batch in batches:
        width = max(max(len(s), len(t)) + 1 for s, t in batch)
        assert width * len(batch) <= 500
    padded = sum(max(max(len(s), len(t)) + 1 for s, t in b) * len(b) for b in batches)
    real = sum(max(len(s), len(t)) + 1 for s, t in examples)
    assert real / padded > 0.9  # bucketing: under 10% padding


def test_collate_layout():
    batch = collate([([5, 6, 7], [8, 9]), ([5], [8, 9, 10])])
    assert batch["src"].tolist() == [[5, 6, 7, EOS_ID], [5, EOS_ID, PAD_ID, PAD_ID]]
    assert batch["tgt_in"].tolist() == [[BOS_ID, 8, 9, PAD_ID], [BOS_ID, 8, 9, 10]]
    assert batch["tgt_out"].tolist() == [[8, 9, EOS_ID, PAD_ID], [8, 9, 10, EOS_ID]]


def test_label_smoothed_loss():
    logits = torch.randn(2, 3, 7)
    target = torch.tensor([[4, 5, 0], [6, 0, 0]])
    loss, nll, n = label_smoothed_loss(logits, target, smoothing=0.0)
    expected = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), target.flatten(), ignore_index=0, reduction="sum"
    )
    assert n == 3 and torch.allclose(loss, expected) and torch.allclose(nll, expected)
    smoothed, nll2, _ = label_smoothed_loss(logits, target, smoothing=0.1)
    assert torch.allclose(nll2, nll) and not torch.allclose(smoothed, loss)


def test_lr_schedules():
    assert lr_multiplier(50, warmup=100) == pytest.approx(0.5)
    assert lr_multiplier(100, warmup=100) == 1.0
    assert lr_multiplier(400, warmup=100) == pytest.approx(0.5)
    # Decaying schedules follow the progress (steps or wall-clock), capped by the warm-up ramp.
    assert lr_multiplier(1000, 100, "cosine", progress=1.0) == pytest.approx(0.0, abs=1e-9)
    assert lr_multiplier(550, 100, "cosine", progress=0.5) == pytest.approx(0.5)
    assert lr_multiplier(550, 100, "linear", progress=0.25) == pytest.approx(0.75)
    assert lr_multiplier(10, 100, "linear", progress=0.5) == pytest.approx(0.1)  # still warming
    assert not math.isnan(lr_multiplier(0, 0))


@pytest.mark.parametrize("preset", ["transformer-small", "rnn-small"])
def test_checkpoint_round_trip_gives_identical_logits(tmp_path, preset, gettext_pairs):
    from s2s.tokenizer import train_tokenizer

    proto = train_tokenizer([s for p in gettext_pairs[:500] for s in p], 400)
    cfg = model_preset(
        preset, {"vocab_size": 400, "d_model": 32, "hidden_dim": 32, "heads": 2, "ffn_dim": 64}
    )
    model = build_model(cfg)
    optimizer = build_optimizer(model, 1e-3)
    batch = collate([([5, 6, 7], [8, 9]), ([10], [11, 12, 13])])
    loss, _, n = label_smoothed_loss(model(batch["src"], batch["tgt_in"]), batch["tgt_out"], 0.1)
    (loss / n).backward()
    optimizer.step()
    state = TrainerState(step=1, best_bleu=3.5, resumed_from=[1])
    save_checkpoint(str(tmp_path / "ckpt"), model, cfg, proto, state, optimizer.state_dict())
    loaded = load_checkpoint(str(tmp_path / "ckpt"))
    model.eval()
    with torch.no_grad():
        assert torch.equal(
            model(batch["src"], batch["tgt_in"]), loaded.model(batch["src"], batch["tgt_in"])
        )
    assert loaded.trainer_state == state and loaded.model_config == cfg
    assert loaded.tokenizer.vocab_size == 400
    state = load_optimizer_state(str(tmp_path / "ckpt"))
    fresh = build_optimizer(loaded.model, 1e-3)
    fresh.load_state_dict(state)
    assert fresh.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()


def test_checkpoint_on_s3(bucket, gettext_pairs):
    from s2s.tokenizer import train_tokenizer

    proto = train_tokenizer([s for p in gettext_pairs[:500] for s in p], 400)
    cfg = model_preset(
        "transformer-small", {"vocab_size": 400, "d_model": 32, "heads": 2, "ffn_dim": 64}
    )
    model = build_model(cfg).eval()
    save_checkpoint(f"{bucket}/runs/r1/ckpt", model, cfg, proto, {"step": 7})
    loaded = load_checkpoint(f"{bucket}/runs/r1/ckpt")
    src = torch.tensor([[5, 6, EOS_ID]])
    tgt = torch.tensor([[BOS_ID, 8]])
    with torch.no_grad():
        assert torch.equal(model(src, tgt), loaded.model(src, tgt))
    assert load_optimizer_state(f"{bucket}/runs/r1/ckpt") is None


def test_average_checkpoints(tmp_path, gettext_pairs):
    from s2s.checkpoint import average_checkpoints, list_checkpoints
    from s2s.tokenizer import train_tokenizer

    proto = train_tokenizer([s for p in gettext_pairs[:500] for s in p], 400)
    cfg = model_preset(
        "transformer-small", {"vocab_size": 400, "d_model": 32, "heads": 2, "ffn_dim": 64}
    )
    models = []
    for step in (10, 20, 30):
        torch.manual_seed(step)
        models.append(build_model(cfg))
        save_checkpoint(
            str(tmp_path / f"run/checkpoint_{step}"), models[-1], cfg, proto, {"step": step}
        )
    assert [s for s, _ in list_checkpoints(str(tmp_path / "run"))] == [10, 20, 30]
    chosen = average_checkpoints(str(tmp_path / "run"), 2, str(tmp_path / "avg"))
    assert [c.rsplit("_", 1)[1] for c in chosen] == ["20", "30"]
    averaged = load_checkpoint(str(tmp_path / "avg"))
    assert averaged.trainer_state.step == 30 and averaged.trainer_state.averaged_from == chosen
    for name, tensor in averaged.model.state_dict().items():
        expected = (models[1].state_dict()[name] + models[2].state_dict()[name]) / 2
        assert torch.allclose(tensor, expected, atol=1e-6), name
    with pytest.raises(ValueError, match="fewer than --last 5"):
        average_checkpoints(str(tmp_path / "run"), 5, str(tmp_path / "avg2"))
    # A checkpoint whose upload a lost node cut short is in the run directory but not in Ray
    # Train's record of the registered ones: it does not count.
    names = [{"checkpoint_dir_name": f"checkpoint_{s}", "metrics": {}} for s in (10, 30)]
    (tmp_path / "run" / "checkpoint_manager_snapshot.json").write_text(
        json.dumps({"checkpoint_results": names})
    )
    assert [s for s, _ in list_checkpoints(str(tmp_path / "run"))] == [10, 30]


def test_trainer_state_json_round_trips_and_reads_older_and_newer_files():
    state = TrainerState(step=40, epoch=1, batch_in_epoch=6, best_bleu=12.3, bad_evals=1)
    state.tgt_tokens_seen, state.elapsed_s, state.data_digest = 9000, 81.5, "ab12"
    state.resumed_from = [20]
    text = state.to_json()
    assert TrainerState.from_json(text) == state and TrainerState.from_json(text).to_json() == text
    # The file's keys, in the order training writes them; the empty history is left out.
    order = "step epoch batch_in_epoch best_bleu bad_evals tgt_tokens_seen elapsed_s data_digest"
    assert list(json.loads(text)) == [*order.split(), "resumed_from"]
    assert "resumed_from" not in json.loads(TrainerState(step=3).to_json())
    # An older file lacks keys: they take their defaults. A newer one has keys this version does
    # not know: they are kept, and written back as they were.
    old = TrainerState.from_json('{"step": 7, "epoch": 2, "batch_in_epoch": 3}')
    assert (old.step, old.best_bleu, old.elapsed_s, old.resumed_from) == (7, None, 0.0, [])
    newer = {**json.loads(text), "lr_scale": [0.5, 1.0]}
    assert json.loads(TrainerState.from_json(json.dumps(newer)).to_json()) == newer
    with pytest.raises(TypeError, match="JSON object"):
        TrainerState.from_json("[1, 2]")
    assert state.to_dict() == json.loads(text)

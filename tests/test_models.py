"""Both model families: the shared interface, cache == full forward, and learning a toy task."""

import random

import pytest
import torch

from s2s.batching import collate
from s2s.config import ConfigError, model_preset
from s2s.models import build_model
from s2s.objective import build_optimizer, label_smoothed_loss, lr_multiplier
from s2s.search import greedy_search

TINY = {
    "transformer-small": {
        "d_model": 64,
        "enc_layers": 2,
        "dec_layers": 2,
        "heads": 4,
        "ffn_dim": 128,
    },
    "rnn-small": {"d_model": 32, "hidden_dim": 64, "enc_layers": 1, "dec_layers": 1},
    "gru-luong": {"d_model": 32, "hidden_dim": 64, "enc_layers": 1, "dec_layers": 1},
}
VOCAB = 24  # 4 specials + 20 symbols


def tiny_model(preset: str, dropout: float = 0.0, **changes):
    torch.manual_seed(0)
    return build_model(
        model_preset(preset, {**TINY[preset], "vocab_size": VOCAB, "dropout": dropout, **changes})
    )


def reversal_task(n: int, seed: int) -> list[tuple[list[int], list[int]]]:
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        src = [rng.randrange(4, VOCAB) for _ in range(rng.randint(3, 8))]
        pairs.append((src, src[::-1]))
    return pairs


@pytest.mark.parametrize(
    ("preset", "changes"),
    [
        ("transformer-small", {}),
        ("transformer-small", {"norm": "post"}),
        ("rnn-small", {}),
        ("rnn-small", {"attention": "luong-dot"}),
        ("gru-luong", {}),
    ],
)
def test_incremental_decoding_equals_full_forward(preset, changes):
    model = tiny_model(preset, **changes).eval()
    src = torch.randint(4, VOCAB, (3, 7))
    src[1, 5:] = 0  # padding in one row
    tgt = torch.randint(4, VOCAB, (3, 6))
    tgt[:, 0] = 2
    with torch.no_grad():
        full = torch.log_softmax(model(src, tgt), dim=-1)
        state, steps = model.encode(src), []
        for t in range(tgt.shape[1]):
            log_probs, state = model.decode_step(tgt[:, t], state)
            steps.append(log_probs)
    assert torch.allclose(full, torch.stack(steps, dim=1), atol=1e-5)


@pytest.mark.parametrize("preset", ["transformer-small", "rnn-small"])
def test_reorder_state_selects_rows(preset):
    model = tiny_model(preset).eval()
    src = torch.randint(4, VOCAB, (3, 5))
    with torch.no_grad():
        state = model.encode(src)
        lp, state = model.decode_step(torch.full((3,), 2), state)
        picked = model.reorder_state(state, torch.tensor([2, 2, 0]))
        lp_picked, _ = model.decode_step(torch.tensor([5, 5, 6]), picked)
        ref = model.reorder_state(model.encode(src), torch.tensor([2, 2, 0]))
        _, ref = model.decode_step(torch.full((3,), 2), ref)
        lp_ref, _ = model.decode_step(torch.tensor([5, 5, 6]), ref)
    assert torch.allclose(lp_picked, lp_ref, atol=1e-5)
    assert torch.allclose(lp_picked[0], lp_picked[1])


@pytest.mark.parametrize("preset", ["transformer-small", "rnn-small", "gru-luong"])
def test_each_family_learns_to_reverse(preset):
    """≥ 95% exact match on held-out sequences, checked every 200 steps, within 1200 steps."""
    train, held_out = reversal_task(20_000, seed=0), reversal_task(300, seed=1)
    model = tiny_model(preset)
    lr = 2e-3 if preset.startswith("transformer") else 5e-3
    optimizer = build_optimizer(model, lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_multiplier(s + 1, 100))
    rng, accuracy, losses = random.Random(0), 0.0, []
    for step in range(1, 1201):
        batch = collate([train[rng.randrange(len(train))] for _ in range(64)])
        model.train()
        loss, nll, n = label_smoothed_loss(
            model(batch["src"], batch["tgt_in"]), batch["tgt_out"], 0.0
        )
        optimizer.zero_grad()
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(nll) / n)
        if step % 200 == 0:
            model.eval()
            hyps = greedy_search(model, collate(held_out)["src"])
            accuracy = sum(h == t for h, (_, t) in zip(hyps, held_out)) / len(held_out)
            if accuracy >= 0.95:
                break
    assert losses[-1] < losses[0] / 10
    assert accuracy >= 0.95, f"{preset}: {accuracy:.2%} exact match after {step} steps"


def test_presets_and_config_errors():
    assert model_preset("transformer-base").d_model == 512
    assert model_preset("gru-luong").cell == "gru"
    with pytest.raises(ConfigError, match="unknown model preset 'transformer-huge'; choose one of"):
        model_preset("transformer-huge")
    with pytest.raises(ConfigError, match="d_model=100 is not divisible by model.heads=8"):
        model_preset("transformer-base", {"d_model": 100})
    with pytest.raises(ConfigError, match="unknown config key 'model.head'"):
        model_preset("transformer-base", {"head": 4})

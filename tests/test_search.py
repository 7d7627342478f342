"""Beam search over both model families: beam 1 == greedy, beam beats greedy, n-best order, and
the sentinel rule (each of the source's sentinels written exactly once)."""

import random

import pytest
import torch

from s2s.batching import collate
from s2s.config import model_preset
from s2s.models import build_model
from s2s.objective import build_optimizer, label_smoothed_loss
from s2s.search import Sentinels, beam_search, greedy_search
from s2s.tokenizer import EOS_ID

VOCAB = 24


def partly_trained(preset: str, steps: int = 60):
    """A model that has begun to learn sequence reversal: confident enough to emit eos, still
    unsure enough that the first choice is not always the best path."""
    sizes = {
        "d_model": 32,
        "hidden_dim": 32,
        "heads": 2,
        "ffn_dim": 64,
        "enc_layers": 1,
        "dec_layers": 1,
    }
    torch.manual_seed(0)
    model = build_model(model_preset(preset, {**sizes, "vocab_size": VOCAB, "dropout": 0.0}))
    optimizer = build_optimizer(model, 3e-3)
    rng = random.Random(0)
    for _ in range(steps):
        pairs = []
        for _ in range(32):
            src = [rng.randrange(4, VOCAB) for _ in range(rng.randint(2, 6))]
            pairs.append((src, src[::-1]))
        batch = collate(pairs)
        loss, _, n = label_smoothed_loss(
            model(batch["src"], batch["tgt_in"]), batch["tgt_out"], 0.0
        )
        optimizer.zero_grad()
        (loss / n).backward()
        optimizer.step()
    return model.eval()


def sources(n: int, seed: int) -> torch.Tensor:
    rng = random.Random(seed)
    return collate(
        [([rng.randrange(4, VOCAB) for _ in range(rng.randint(2, 6))], [4]) for _ in range(n)]
    )["src"]


def sequence_log_prob(model, src_row: torch.Tensor, tokens: list[int], ended: bool) -> float:
    """Teacher-forced log-probability of one output (eos included when it ended with one)."""
    target = tokens + ([EOS_ID] if ended else [])
    batch = collate([(src_row[src_row > 0].tolist()[:-1], target[:-1] if not ended else tokens)])
    with torch.no_grad():
        log_probs = torch.log_softmax(model(batch["src"], batch["tgt_in"]), dim=-1)[0]
    return float(sum(log_probs[i, t] for i, t in enumerate(target)))


@pytest.mark.parametrize("preset", ["transformer-small", "rnn-small"])
def test_beam_of_one_is_greedy(preset):
    model, src = partly_trained(preset), sources(40, seed=1)
    greedy = greedy_search(model, src)
    beam = beam_search(model, src, beam=1, alpha=0.0)
    assert [h[0].tokens for h in beam] == greedy


@pytest.mark.parametrize("preset", ["transformer-small", "gru-luong"])
def test_beam_finds_more_probable_translations_than_greedy(preset):
    model, src = partly_trained(preset), sources(60, seed=2)
    greedy = greedy_search(model, src, max_len_b=8)
    beams = beam_search(model, src, beam=5, alpha=0.0, max_len_b=8, nbest=5)
    better = worse = 0
    for row, (g, hyps) in enumerate(zip(greedy, beams)):
        limit = int((src[row] > 0).sum() * 1.5 + 8)
        g_score = sequence_log_prob(model, src[row], g, ended=len(g) < limit)
        best = hyps[0]
        assert best.log_prob == pytest.approx(
            sequence_log_prob(model, src[row], best.tokens, ended=len(best.tokens) < limit),
            abs=1e-3,
        )
        better += best.log_prob > g_score + 1e-4
        worse += best.log_prob < g_score - 1e-4
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
    assert better > 0 and better > worse


def test_nbest_and_length_penalty_shape_results():
    model, src = partly_trained("transformer-small"), sources(10, seed=3)
    nbest = beam_search(model, src, beam=4, nbest=3, alpha=1.0)
    assert all(1 <= len(h) <= 3 for h in nbest)
    assert all(len({tuple(x.tokens) for x in h}) == len(h) for h in nbest)  # distinct


@pytest.mark.parametrize("preset", ["transformer-small", "rnn-small"])
def test_min_len_forces_equal_lengths(preset):
    model, src = partly_trained(preset), sources(12, seed=4)
    greedy = greedy_search(model, src, max_len_a=0, max_len_b=9, min_len=9)
    beams = beam_search(model, src, beam=3, max_len_a=0, max_len_b=9, min_len=9)
    assert all(len(g) == 9 for g in greedy)
    assert all(len(h[0].tokens) == 9 for h in beams)


@pytest.mark.parametrize("preset", ["transformer-small", "rnn-small"])
def test_outputs_hold_each_sentinel_of_their_source_exactly_once(preset):
    # A half-trained reverser copies some of the source's "sentinels" (ids 20-23 here), drops
    # or doubles others, and writes some the source lacks; with the rule it may do none of that.
    model, src = partly_trained(preset), sources(60, seed=5)
    ids = torch.arange(20, 24)
    rule = Sentinels(ids, ids)

    def broken(outputs: list[list[int]]) -> int:
        """How many outputs that ended before their length limit (where the rule cannot hold)
        do not hold exactly their source's sentinels, once each."""
        wrong = ended = 0
        for row, out in zip(src.tolist(), outputs):
            if len(out) < int(1.5 * sum(t != 0 for t in row) + 20):
                owed = sorted({t for t in row if 20 <= t < 24})
                wrong += sorted(t for t in out if 20 <= t < 24) != owed
                ended += 1
        assert ended > len(outputs) // 2
        return wrong

    def beams(**rule_if_any) -> list[list[int]]:
        found = beam_search(model, src, beam=3, max_len_b=20, **rule_if_any)
        return [h[0].tokens for h in found]

    assert sum(any(20 <= t < 24 for t in row) for row in src.tolist()) > 20
    assert broken(greedy_search(model, src, max_len_b=20)) > 0  # the rule has work to do
    assert broken(beams()) > 0
    assert broken(greedy_search(model, src, max_len_b=20, sentinels=rule)) == 0
    assert broken(beams(sentinels=rule)) == 0

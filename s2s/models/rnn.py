"""RNN encoder-decoder with attention and input feeding (Bahdanau et al. 2015; Luong et al. 2015).

Encoder: shared embeddings -> bidirectional multi-layer LSTM/GRU (each direction hidden_dim / 2).
Decoder, per step t (Luong's "input feeding"):

    h_t  = RNN([emb(y_{t-1}); a_{t-1}], h_{t-1})          the previous attentional vector is fed in
    c_t  = attention(h_t, encoder outputs)                  bahdanau | luong-dot | luong-general
    a_t  = tanh(W [h_t; c_t])                               the attentional vector
    p_t  = softmax(E^T P a_t)                               output tied to the embedding matrix E

The decoder's first state comes from the encoder's final states through a "bridge" layer.

Shapes in comments: B batch rows (beams included), S source length, T target length, E emb_dim,
H hidden_dim, L decoder layers, V vocabulary.

Where a change goes: a new scoring function in :class:`Attention` (and ``attention`` in the
config); the encoder and the bridge in ``RNNSeq2Seq.encode``; the decoder recurrence in
``RNNSeq2Seq._step``, which training (``forward``) and search (``decode_step``) share.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from s2s.models import DecoderState, select_batch
from s2s.tokenizer import PAD_ID

__all__ = ["RNNSeq2Seq"]


class Attention(nn.Module):
    """Scores of a decoder state against every encoder output; returns the context vector."""

    def __init__(self, kind: str, hidden_dim: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "bahdanau":  # additive: v^T tanh(W_q q + W_k k)
            self.query = nn.Linear(hidden_dim, hidden_dim, bias=False)
            self.key = nn.Linear(hidden_dim, hidden_dim)
            self.v = nn.Linear(hidden_dim, 1, bias=False)
        elif kind == "luong-general":  # q^T W k
            self.key = nn.Linear(hidden_dim, hidden_dim, bias=False)
        # luong-dot, q^T k, has no parameters.

    def precompute(self, memory: Tensor) -> Tensor:
        """Key projection of the memory, done once per source: (B, S, H)."""
        # luong-general's q^T W k is q . (W k): W k does not depend on the step.
        return self.key(memory) if self.kind != "luong-dot" else memory

    def forward(self, query: Tensor, memory: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """query (B, H), memory/keys (B, S, H), mask (B, S) True at real tokens -> (B, H)."""
        if self.kind == "bahdanau":
            # (B, 1, H) + (B, S, H) -> tanh -> v: (B, S, 1) -> (B, S)
            scores = self.v(torch.tanh(self.query(query)[:, None, :] + keys)).squeeze(-1)
        else:
            # Dot product with every key: (B, S, H) @ (B, H, 1) -> (B, S, 1)
            scores = torch.bmm(keys, query[:, :, None]).squeeze(-1)  # (B, S)
        scores = scores.masked_fill(~mask, float("-inf"))  # padding gets zero weight
        weights = torch.softmax(scores, dim=-1)  # (B, S)
        # Weighted sum of the encoder outputs: (B, 1, S) @ (B, S, H) -> (B, 1, H) -> (B, H)
        return torch.bmm(weights[:, None, :], memory).squeeze(1)


class RNNSeq2Seq(nn.Module):
    """Attentional RNN encoder-decoder implementing :class:`s2s.models.Seq2Seq`.

    Args:
        vocab_size: joint source/target vocabulary (the tokenizer's).
        emb_dim: embedding width E (the config's ``d_model``).
        hidden_dim: decoder state width H; even, since each encoder direction has H / 2.
        enc_layers, dec_layers: stack depths.
        cell: ``lstm`` or ``gru``.
        attention: ``bahdanau``, ``luong-dot`` or ``luong-general``.
        dropout: on embeddings, attentional vectors and between stacked RNN layers.
    """

    def __init__(
        self,
        vocab_size: int,
        emb_dim: int = 256,
        hidden_dim: int = 512,
        enc_layers: int = 2,
        dec_layers: int = 2,
        cell: str = "lstm",
        attention: str = "bahdanau",
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.is_lstm = cell == "lstm"  # an LSTM's state is (h, c), a GRU's h alone
        self.dec_layers = dec_layers
        self.hidden_dim = hidden_dim
        # Shared by source, target and the output projection (see _logits).
        self.embed = nn.Embedding(vocab_size, emb_dim, padding_idx=PAD_ID)
        nn.init.normal_(self.embed.weight, std=emb_dim**-0.5)
        self.drop = nn.Dropout(dropout)
        # An RNN's own dropout acts between stacked layers only; PyTorch warns on one layer.
        inner = dropout if enc_layers > 1 else 0.0
        self.encoder = rnn(
            emb_dim,
            hidden_dim // 2,  # per direction: the two together match the decoder's H
            enc_layers,
            batch_first=True,
            bidirectional=True,
            dropout=inner,
        )
        # The encoder's final top-layer state (B, H) -> an initial state for each decoder layer.
        self.bridge = nn.Linear(hidden_dim, hidden_dim * dec_layers)
        self.decoder = rnn(
            emb_dim + hidden_dim,  # input feeding: [emb(y_{t-1}); a_{t-1}]
            hidden_dim,
            dec_layers,
            batch_first=True,
            dropout=dropout if dec_layers > 1 else 0.0,
        )
        self.attention = Attention(attention, hidden_dim)
        self.combine = nn.Linear(2 * hidden_dim, hidden_dim, bias=False)  # W of a_t
        self.out = nn.Linear(hidden_dim, emb_dim)  # then the tied embedding matrix

    def encode(self, src: Tensor) -> DecoderState:
        """Run the encoder once: (B, S) ids -> the state the first decode step starts from."""
        mask = src != PAD_ID  # (B, S)
        # Packing makes each direction skip the padding (the backward one starts at the last
        # real token). It wants lengths (at least 1) on the CPU; rows need not be sorted.
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(
            self.drop(self.embed(src)), lengths, batch_first=True, enforce_sorted=False
        )
        outputs, final = self.encoder(packed)
        # Both directions concatenated: (B, S, H), padded back to the full S to match ``mask``.
        memory, _ = pad_packed_sequence(outputs, batch_first=True, total_length=src.shape[1])
        h_n = final[0] if self.is_lstm else final  # (2 * layers, B, H/2)
        last = torch.cat([h_n[-2], h_n[-1]], dim=-1)  # top layer, both directions: (B, H)
        h0 = torch.tanh(self.bridge(last)).view(-1, self.dec_layers, self.hidden_dim)  # (B, L, H)
        # Only h goes through the bridge; an LSTM's cell state starts at zero.
        hidden = (h0, torch.zeros_like(h0)) if self.is_lstm else (h0,)
        return {
            "memory": memory,  # (B, S, H)
            "keys": self.attention.precompute(memory),  # (B, S, H), once per source
            "mask": mask,
            "hidden": hidden,  # batch-first (B, L, H), so one reorder serves every tensor
            "feed": memory.new_zeros(src.shape[0], self.hidden_dim),  # (B, H): a_0 = 0
        }

    def _step(self, prev_tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """One decoder step: (B,) -> attentional vector (B, H) and the next state."""
        # Input feeding: [emb(y_{t-1}); a_{t-1}] as a length-1 sequence, (B, 1, E + H).
        x = torch.cat([self.drop(self.embed(prev_tokens)), state["feed"]], dim=-1)[:, None, :]
        # nn.LSTM/GRU take (L, B, H) states even when batch_first, and contiguous ones.
        hidden = tuple(h.transpose(0, 1).contiguous() for h in state["hidden"])  # (L, B, H)
        output, new_hidden = self.decoder(x, hidden if self.is_lstm else hidden[0])
        new_hidden = new_hidden if self.is_lstm else (new_hidden,)
        query = output[:, 0]  # (B, H): h_t of the top layer
        context = self.attention(query, state["memory"], state["keys"], state["mask"])  # (B, H)
        # a_t = tanh(W [h_t; c_t]): what the output layer reads and the next step is fed.
        attentional = self.drop(torch.tanh(self.combine(torch.cat([query, context], dim=-1))))
        new_state = {
            **state,
            "hidden": tuple(h.transpose(0, 1) for h in new_hidden),  # back to (B, L, H)
            "feed": attentional,
        }
        return attentional, new_state

    def _logits(self, attentional: Tensor) -> Tensor:
        """(..., H) -> (..., V): project to the embedding width, then onto every embedding."""
        return self.out(attentional) @ self.embed.weight.T  # (..., V)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: (B, S), (B, T) -> (B, T, V) logits."""
        state = self.encode(src)
        steps = []
        for t in range(tgt_in.shape[1]):  # input feeding makes the decoder sequential
            attentional, state = self._step(tgt_in[:, t], state)
            steps.append(attentional)  # (B, H)
        # One output projection for all steps: (B, T, H) -> (B, T, V).
        return self._logits(torch.stack(steps, dim=1))  # (B, T, V)

    def decode_step(self, prev_tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """(B,) previous tokens -> (B, V) float32 log-probabilities and the next state."""
        attentional, state = self._step(prev_tokens, state)
        # float32 whatever the autocast dtype: search sums these over many steps.
        return F.log_softmax(self._logits(attentional).float(), dim=-1), state

    def reorder_state(self, state: DecoderState, beam_indices: Tensor) -> DecoderState:
        """Select rows of every state tensor (all batch-first); unlike the Transformer, the
        memory and its keys are copied for each beam."""
        return select_batch(state, beam_indices)

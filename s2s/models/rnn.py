"""RNN encoder-decoder with attention and input feeding (Bahdanau et al. 2015; Luong et al. 2015).

Encoder: shared embeddings -> bidirectional multi-layer LSTM/GRU (each direction hidden_dim / 2).
Decoder, per step t (Luong's "input feeding"):

    h_t  = RNN([emb(y_{t-1}); a_{t-1}], h_{t-1})          the previous attentional vector is fed in
    c_t  = attention(h_t, encoder outputs)                  bahdanau | luong-dot | luong-general
    a_t  = tanh(W [h_t; c_t])                               the attentional vector
    p_t  = softmax(E^T P a_t)                               output tied to the embedding matrix E

The decoder's first state comes from the encoder's final states through a "bridge" layer.
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

    def precompute(self, memory: Tensor) -> Tensor:
        """Key projection of the memory, done once per source: (B, S, H)."""
        return self.key(memory) if self.kind != "luong-dot" else memory

    def forward(self, query: Tensor, memory: Tensor, keys: Tensor, mask: Tensor) -> Tensor:
        """query (B, H), memory/keys (B, S, H), mask (B, S) True at real tokens -> (B, H)."""
        if self.kind == "bahdanau":
            scores = self.v(torch.tanh(self.query(query)[:, None, :] + keys)).squeeze(-1)
        else:
            scores = torch.bmm(keys, query[:, :, None]).squeeze(-1)  # (B, S)
        scores = scores.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        return torch.bmm(weights[:, None, :], memory).squeeze(1)


class RNNSeq2Seq(nn.Module):
    """Attentional RNN encoder-decoder implementing :class:`s2s.models.Seq2Seq`."""

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
        self.is_lstm = cell == "lstm"
        self.dec_layers = dec_layers
        self.hidden_dim = hidden_dim
        self.embed = nn.Embedding(vocab_size, emb_dim, padding_idx=PAD_ID)
        nn.init.normal_(self.embed.weight, std=emb_dim**-0.5)
        self.drop = nn.Dropout(dropout)
        inner = dropout if enc_layers > 1 else 0.0
        self.encoder = rnn(
            emb_dim,
            hidden_dim // 2,
            enc_layers,
            batch_first=True,
            bidirectional=True,
            dropout=inner,
        )
        self.bridge = nn.Linear(hidden_dim, hidden_dim * dec_layers)
        self.decoder = rnn(
            emb_dim + hidden_dim, hidden_dim, dec_layers, batch_first=True,
            dropout=dropout if dec_layers > 1 else 0.0,
        )  # fmt: skip
        self.attention = Attention(attention, hidden_dim)
        self.combine = nn.Linear(2 * hidden_dim, hidden_dim, bias=False)
        self.out = nn.Linear(hidden_dim, emb_dim)  # then the tied embedding matrix

    def encode(self, src: Tensor) -> DecoderState:
        mask = src != PAD_ID  # (B, S)
        lengths = mask.sum(1).clamp(min=1).cpu()
        packed = pack_padded_sequence(
            self.drop(self.embed(src)), lengths, batch_first=True, enforce_sorted=False
        )
        outputs, final = self.encoder(packed)
        memory, _ = pad_packed_sequence(outputs, batch_first=True, total_length=src.shape[1])
        h_n = final[0] if self.is_lstm else final  # (2 * layers, B, H/2)
        last = torch.cat([h_n[-2], h_n[-1]], dim=-1)  # top layer, both directions: (B, H)
        h0 = torch.tanh(self.bridge(last)).view(-1, self.dec_layers, self.hidden_dim)  # (B, L, H)
        hidden = (h0, torch.zeros_like(h0)) if self.is_lstm else (h0,)
        return {
            "memory": memory,  # (B, S, H)
            "keys": self.attention.precompute(memory),
            "mask": mask,
            "hidden": hidden,  # batch-first (B, L, H), so one reorder serves every tensor
            "feed": memory.new_zeros(src.shape[0], self.hidden_dim),  # (B, H)
        }

    def _step(self, prev_tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """One decoder step: (B,) -> attentional vector (B, H) and the next state."""
        x = torch.cat([self.drop(self.embed(prev_tokens)), state["feed"]], dim=-1)[:, None, :]
        hidden = tuple(h.transpose(0, 1).contiguous() for h in state["hidden"])  # (L, B, H)
        output, new_hidden = self.decoder(x, hidden if self.is_lstm else hidden[0])
        new_hidden = new_hidden if self.is_lstm else (new_hidden,)
        query = output[:, 0]  # (B, H)
        context = self.attention(query, state["memory"], state["keys"], state["mask"])
        attentional = self.drop(torch.tanh(self.combine(torch.cat([query, context], dim=-1))))
        new_state = {
            **state,
            "hidden": tuple(h.transpose(0, 1) for h in new_hidden),
            "feed": attentional,
        }
        return attentional, new_state

    def _logits(self, attentional: Tensor) -> Tensor:
        return self.out(attentional) @ self.embed.weight.T  # (..., V)

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        state = self.encode(src)
        steps = []
        for t in range(tgt_in.shape[1]):  # input feeding makes the decoder sequential
            attentional, state = self._step(tgt_in[:, t], state)
            steps.append(attentional)
        return self._logits(torch.stack(steps, dim=1))  # (B, T, V)

    def decode_step(self, prev_tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        attentional, state = self._step(prev_tokens, state)
        return F.log_softmax(self._logits(attentional).float(), dim=-1), state

    def reorder_state(self, state: DecoderState, beam_indices: Tensor) -> DecoderState:
        return select_batch(state, beam_indices)

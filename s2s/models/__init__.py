"""Seq2seq model families behind one small interface that training and search share.

Search and the trainer use only :class:`Seq2Seq`; they never ask which family they hold. A new
family is one file with one class and one entry in :func:`build_model`.

Files: ``transformer.py`` (self-attention, KV cache, beams share the encoder memory) and
``rnn.py`` (LSTM/GRU with attention and input feeding). Token ids use the tokenizer's specials:
pad 0 (right padding), bos 2 starts every target, eos 3 ends every source and target.
"""

from __future__ import annotations

from typing import Any, Protocol

from torch import Tensor, nn

from s2s.config import ModelConfig

__all__ = ["Seq2Seq", "DecoderState", "build_model", "select_batch"]

# What `encode` returns and `decode_step` threads through: a dict of batch-first tensors (encoder
# memory, padding mask, decoder cache); lists of tensors are allowed, other values pass through.
DecoderState = dict[str, Any]


class Seq2Seq(Protocol):
    """The interface of every model family (token ids in, log-probabilities out)."""

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher-forced logits.

        Args:
            src: (B, S) source ids, right-padded with pad id 0, ending with eos.
            tgt_in: (B, T) target ids starting with bos, right-padded.

        Returns:
            (B, T, V) logits for the next token at every target position.
        """
        ...

    def encode(self, src: Tensor) -> DecoderState:
        """Run the encoder once; (B, S) ids -> the state the first decode_step starts from."""
        ...

    def decode_step(self, prev_tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """One decoder step: (B,) previous tokens -> ((B, V) log-probabilities, new state)."""
        ...

    def reorder_state(self, state: DecoderState, beam_indices: Tensor) -> DecoderState:
        """Select (and repeat) batch rows of the state: (B',) indices into the batch dim."""
        ...


def select_batch(state: Any, indices: Tensor) -> Any:
    """Index dim 0 of every tensor in a (nested) state; what `reorder_state` does for both."""
    if isinstance(state, Tensor):
        return state.index_select(0, indices)  # (B, ...) -> (B', ...), a copy
    if isinstance(state, dict):
        return {k: select_batch(v, indices) for k, v in state.items()}
    if isinstance(state, (list, tuple)):  # per-layer caches, an LSTM's (h, c)
        return type(state)(select_batch(v, indices) for v in state)
    return state  # None, step counters


def build_model(cfg: ModelConfig) -> nn.Module:
    """Instantiate the family ``cfg.family`` with flat keyword arguments from ``cfg``."""
    if cfg.vocab_size < 1:
        raise ValueError("ModelConfig.vocab_size must be set (from the tokenizer) before building")
    # Imported here: the family modules import this package (DecoderState, select_batch).
    if cfg.family == "transformer":
        from s2s.models.transformer import Transformer

        return Transformer(
            vocab_size=cfg.vocab_size,
            d_model=cfg.d_model,
            enc_layers=cfg.enc_layers,
            dec_layers=cfg.dec_layers,
            heads=cfg.heads,
            ffn_dim=cfg.ffn_dim,
            dropout=cfg.dropout,
            attention_dropout=cfg.attention_dropout,
            pre_norm=cfg.norm == "pre",  # config says "pre" | "post"
            max_positions=cfg.max_positions,
            activation=cfg.activation,
            scale_embedding=cfg.scale_embedding,
            output_bias=cfg.output_bias,
        )
    from s2s.models.rnn import RNNSeq2Seq

    return RNNSeq2Seq(
        vocab_size=cfg.vocab_size,
        emb_dim=cfg.d_model,  # one width key for both families' embeddings
        hidden_dim=cfg.hidden_dim,
        enc_layers=cfg.enc_layers,
        dec_layers=cfg.dec_layers,
        cell=cfg.cell,
        attention=cfg.attention,
        dropout=cfg.dropout,
    )

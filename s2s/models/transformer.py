"""The Transformer encoder-decoder (Vaswani et al. 2017), pre-norm by default.

One embedding matrix serves source, target and output projection (the vocabulary is joint).
Attention goes through ``F.scaled_dot_product_attention`` (fused kernels on CPU and GPU).
Incremental decoding keeps a cache in the state: self-attention keys/values grow by one position
per step; cross-attention keys/values are computed once per *source* and never copied for the
beams of a source: the k rows of a source attend to it as k query positions (see _memory_view).

Shapes in comments: B batch rows (beams included), S source length, T target positions in this
call, t positions decoded before it, D d_model, H heads, dh = D / H, V vocabulary.

Where a change goes: the attention math and the cache layout in :class:`Attention`; pre/post-norm
and the residual order in :class:`Layer`; initialisation, embedding scale and weight tying in
:class:`Transformer`; what the decoding state holds in ``Transformer.encode``, and how the beams
of a source share its encoder memory in ``_memory_view`` and ``reorder_state``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s2s.models import DecoderState, select_batch
from s2s.tokenizer import PAD_ID

__all__ = ["Transformer"]


def sinusoidal_positions(length: int, dim: int) -> Tensor:
    """(length, dim) fixed sin/cos position encodings."""
    position = torch.arange(length, dtype=torch.float32).unsqueeze(1)  # (L, 1)
    # 1 / 10000^(2i / dim) for i < dim / 2, computed in log space: (dim / 2,)
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    table = torch.zeros(length, dim)
    # Even channels sin, odd channels cos of the same frequency: (L, 1) * (dim / 2,) each.
    table[:, 0::2] = torch.sin(position * freq)
    table[:, 1::2] = torch.cos(position * freq)
    return table


class Attention(nn.Module):
    """Multi-head attention; self-attention fuses the q/k/v projections into one matmul."""

    def __init__(self, d_model: int, heads: int, dropout: float, cross: bool) -> None:
        super().__init__()
        self.heads = heads
        self.dropout = dropout  # on the attention weights, training only
        self.cross = cross
        if cross:
            # Queries come from the decoder, keys/values from the encoder memory: separate
            # projections, so the memory's are computed once per source (project_kv).
            self.q = nn.Linear(d_model, d_model)
            self.kv = nn.Linear(d_model, 2 * d_model)
        else:
            self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def _split(self, x: Tensor) -> Tensor:
        # (B, T, D) -> (B, T, H, dh) -> heads become a batch dim for the attention kernel.
        b, t, d = x.shape
        return x.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # (B, H, T, dh)

    def project_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values of the encoder memory: 2 x (B, H, S, dh)."""
        k, v = self.kv(memory).chunk(2, dim=-1)  # 2 x (B, S, D)
        return self._split(k), self._split(v)

    def forward(
        self,
        x: Tensor,
        mask: Tensor | None = None,
        causal: bool = False,
        kv: tuple[Tensor, Tensor] | None = None,
        group: int = 1,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """Attend from ``x`` (B, T, D).

        Args:
            mask: (B, 1, 1|T, S) bool, True where attention is allowed.
            causal: mask future positions (training-time decoder self-attention).
            kv: for self-attention, the cached (B, H, t, dh) keys/values of earlier positions,
                to which this step's are appended; for cross-attention, the projected memory.
            group: cross-attention only: every ``group`` consecutive rows of ``x`` (T = 1) share
                one row of ``kv``; they attend as ``group`` query positions of that row.

        Returns:
            (output (B, T, D), the keys/values used) so callers can cache them.
        """
        rows = x.shape[0]
        if self.cross:
            q = self.q(x)  # (B, T, D)
            if group > 1:  # (rows, 1, D) -> (rows / group, group, D)
                # A source's beams become query positions against its one copy of the memory:
                # no (B*k, H, S, dh) gather per step. The (sources, 1, 1, S) mask broadcasts.
                q = q.view(rows // group, group, -1)
            q = self._split(q)  # (B, H, T, dh); grouped: B = sources, T = group
            k, v = kv  # (B, H, S, dh), projected once in Transformer.encode
        else:
            q, k, v = (self._split(t) for t in self.qkv(x).chunk(3, dim=-1))  # 3 x (B, H, T, dh)
            if kv is not None:
                # KV cache: this call's keys/values go after those of the t earlier positions.
                k, v = torch.cat([kv[0], k], dim=2), torch.cat([kv[1], v], dim=2)  # (B, H, t+T, dh)
        # The kernel scales scores by 1 / sqrt(dh). ``mask`` hides padding (encoder and
        # cross-attention); ``causal`` hides later positions when a whole target goes in at once.
        y = F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=causal,
        )  # (B, H, T, dh)
        b, h, t, dh = y.shape
        # Merge the heads, (B, T, D), then undo any grouping: back to one row per beam.
        y = y.transpose(1, 2).reshape(b, t, h * dh).view(rows, -1, h * dh)
        return self.out(y), (k, v)


# ModelConfig.activation -> module. "gelu" is the exact (erf) GELU, "swish" is SiLU: x * sigmoid(x).
ACTIVATIONS = {"relu": nn.ReLU, "swish": nn.SiLU, "gelu": nn.GELU}


class FeedForward(nn.Sequential):
    """Position-wise feed-forward: (B, T, D) -> (B, T, ffn_dim) -> activation -> (B, T, D)."""

    def __init__(self, d_model: int, ffn_dim: int, dropout: float, activation: str) -> None:
        super().__init__(
            nn.Linear(d_model, ffn_dim),
            ACTIVATIONS[activation](),
            nn.Dropout(dropout),
            nn.Linear(ffn_dim, d_model),
        )


class Layer(nn.Module):
    """An encoder layer (self-attention, FFN) or a decoder layer (+ cross-attention)."""

    def __init__(
        self,
        d_model: int,
        heads: int,
        ffn_dim: int,
        dropout: float,
        attention_dropout: float,
        pre_norm: bool,
        activation: str,
        decoder: bool,
    ):
        super().__init__()
        self.pre_norm = pre_norm
        self.self_attn = Attention(d_model, heads, attention_dropout, cross=False)
        self.cross_attn = (
            Attention(d_model, heads, attention_dropout, cross=True) if decoder else None
        )
        self.ffn = FeedForward(d_model, ffn_dim, dropout, activation)
        # One norm per sublayer: self-attention, [cross-attention,] FFN (always norms[-1]).
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in range(3 if decoder else 2))
        self.drop = nn.Dropout(dropout)  # on each sublayer's output, before the residual add

    def _residual(self, x: Tensor, norm: nn.Module, fn) -> tuple[Tensor, object]:
        # Pre-norm: x + f(LN(x)); post-norm (the 2017 original): LN(x + f(x)).
        # ``fn`` returns (output, extra) so self-attention can hand its keys/values up.
        y, extra = fn(norm(x) if self.pre_norm else x)
        x = x + self.drop(y)
        return (x if self.pre_norm else norm(x)), extra

    def forward(
        self,
        x: Tensor,
        self_mask: Tensor | None = None,
        causal: bool = False,
        self_kv: tuple[Tensor, Tensor] | None = None,
        cross_kv: tuple[Tensor, Tensor] | None = None,
        cross_mask: Tensor | None = None,
        group: int = 1,
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """(B, T, D) -> (B, T, D) and this layer's self-attention keys/values."""
        # Decoder self-attention needs no padding mask: targets are right-padded, so the causal
        # mask (or the cache) already keeps real positions from seeing pads.
        x, kv = self._residual(
            x, self.norms[0], lambda h: self.self_attn(h, self_mask, causal, self_kv)
        )
        if self.cross_attn is not None:
            x, _ = self._residual(
                x, self.norms[1], lambda h: self.cross_attn(h, cross_mask, kv=cross_kv, group=group)
            )
        x, _ = self._residual(x, self.norms[-1], lambda h: (self.ffn(h), None))
        return x, kv


class Transformer(nn.Module):
    """Encoder-decoder Transformer implementing :class:`s2s.models.Seq2Seq`.

    Args:
        vocab_size: joint source/target vocabulary (the tokenizer's).
        d_model: width D of embeddings and the residual stream; a multiple of ``heads``.
        enc_layers, dec_layers: stack depths.
        heads: attention heads H, each dh = D / H wide.
        ffn_dim: hidden width of the feed-forward sublayers.
        dropout: on embeddings, sublayer outputs and the FFN hidden layer.
        attention_dropout: on the attention weights.
        pre_norm: LayerNorm before each sublayer (trains stably with less warmup; Xiong et al.
            2020) or after it (the 2017 original).
        max_positions: longest sequence the position table covers (source or target).
        activation: of the feed-forward sublayers, a key of ACTIVATIONS.
        scale_embedding: multiply token embeddings by sqrt(D) before adding positions.
        output_bias: add a learned (V,) bias to the output logits (Marian's final_logits_bias).
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 256,
        enc_layers: int = 3,
        dec_layers: int = 3,
        heads: int = 4,
        ffn_dim: int = 1024,
        dropout: float = 0.1,
        attention_dropout: float = 0.0,
        pre_norm: bool = True,
        max_positions: int = 1024,
        activation: str = "relu",
        scale_embedding: bool = True,
        output_bias: bool = False,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.max_positions = max_positions
        self.embed_scale = math.sqrt(d_model) if scale_embedding else 1.0
        self.embed = nn.Embedding(vocab_size, d_model, padding_idx=PAD_ID)
        # std D^-0.5: times sqrt(D) in _embed the inputs have unit scale, like the positions, and
        # the tied output projection of a layer-normed state gives logits of unit scale.
        nn.init.normal_(self.embed.weight, std=d_model**-0.5)
        # Fixed, so not saved (persistent=False): rebuilt from the config on load.
        self.register_buffer(
            "positions", sinusoidal_positions(max_positions, d_model), persistent=False
        )
        self.drop = nn.Dropout(dropout)
        args = (d_model, heads, ffn_dim, dropout, attention_dropout, pre_norm, activation)
        self.encoder = nn.ModuleList(Layer(*args, decoder=False) for _ in range(enc_layers))
        self.decoder = nn.ModuleList(Layer(*args, decoder=True) for _ in range(dec_layers))
        # Pre-norm stacks end with a norm (their residual stream is never normalised otherwise).
        self.enc_norm = nn.LayerNorm(d_model) if pre_norm else nn.Identity()
        self.dec_norm = nn.LayerNorm(d_model) if pre_norm else nn.Identity()
        # Xavier-uniform projections, as in the 2017 paper, fairseq and nn.Transformer: PyTorch's
        # default Linear init is ~1.7x smaller and measurably slows early training (nll 5.92 vs
        # 5.68 after 150 steps on the gettext corpus). The embedding keeps its init above.
        for name, param in self.named_parameters():
            if param.dim() > 1 and not name.startswith("embed"):
                nn.init.xavier_uniform_(param)
        # Created after the init loop (1-d, it would be skipped anyway): zeros, so a new model's
        # logits are those of a model without it.
        self.logits_bias = nn.Parameter(torch.zeros(vocab_size)) if output_bias else None

    def _embed(self, ids: Tensor, offset: int = 0) -> Tensor:
        """(B, T) ids at positions offset..offset+T-1 -> (B, T, D) decoder/encoder input."""
        t = ids.shape[1]
        assert offset + t <= self.max_positions, f"position {offset + t} > max_positions"
        # Embeddings scaled by sqrt(D) (Vaswani et al. 3.4) plus the (T, D) position rows.
        x = self.embed(ids) * self.embed_scale + self.positions[offset : offset + t]
        return self.drop(x)  # (B, T, D)

    def encode(self, src: Tensor) -> DecoderState:
        """Run the encoder and project its output for every decoder layer's cross-attention.

        The state holds: ``src_mask`` (B, 1, 1, S); ``cross_kv``, per decoder layer 2 x
        (B, H, S, dh); ``memory_rows``; ``self_kv``, per decoder layer 2 x (rows, H, t, dh) once
        decoding started; ``step`` = t, the position of the next token.
        """
        src_mask = (src != PAD_ID)[:, None, None, :]  # (B, 1, 1, S): True = attend
        x = self._embed(src)  # (B, S, D)
        for layer in self.encoder:
            x, _ = layer(x, self_mask=src_mask)
        memory = self.enc_norm(x)  # (B, S, D)
        # Projected here, once per source, not at every decode step.
        cross_kv = [layer.cross_attn.project_kv(memory) for layer in self.decoder]
        # memory_rows: the source row of each decoder row after reorder_state (None: the same).
        return {
            "src_mask": src_mask,
            "cross_kv": cross_kv,
            "memory_rows": None,
            "self_kv": None,
            "step": 0,
        }

    def _memory_view(self, state: DecoderState) -> tuple[list, Tensor, int]:
        """(cross keys/values, source mask, group) as the decoder rows need them: grouped when
        every source has the same number of consecutive rows (beam search), else gathered."""
        cross_kv, mask, rows = state["cross_kv"], state["src_mask"], state["memory_rows"]
        if rows is None:  # decoder row i reads source i (training, greedy search)
            return cross_kv, mask, 1
        sources = mask.shape[0]
        group = rows.numel() // sources
        # Beam search's layout: rows [0]*k + [1]*k + ...; then the rows share their source's K/V.
        grouped = torch.arange(sources, device=rows.device).repeat_interleave(group)
        if group * sources == rows.numel() and torch.equal(rows, grouped):
            return cross_kv, mask, group
        # Any other layout: one copy of the memory's K/V per row, (rows, H, S, dh).
        return select_batch(cross_kv, rows), mask.index_select(0, rows), 1

    def _decode(self, tgt: Tensor, state: DecoderState, causal: bool) -> tuple[Tensor, list]:
        """(B, T) target ids -> ((B, T, V) logits, per-layer self-attention keys/values)."""
        x = self._embed(tgt, offset=state["step"])  # (B, T, D), positions after the cached ones
        self_kv = state["self_kv"] or [None] * len(self.decoder)  # no cache before step 0
        cross_kvs, cross_mask, group = self._memory_view(state)
        new_kv = []
        for layer, cached, cross in zip(self.decoder, self_kv, cross_kvs):
            x, kv = layer(
                x,
                causal=causal,
                self_kv=cached,
                cross_kv=cross,
                cross_mask=cross_mask,
                group=group,
            )
            new_kv.append(kv)  # 2 x (B, H, t + T, dh)
        # Tied output projection: the same embedding matrix, (B, T, D) @ (D, V).
        logits = self.dec_norm(x) @ self.embed.weight.T  # (B, T, V)
        if self.logits_bias is not None:
            logits = logits + self.logits_bias  # (V,) broadcasts
        return logits, new_kv

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        """Teacher forcing: (B, S), (B, T) -> (B, T, V), the whole target in one causal pass."""
        logits, _ = self._decode(tgt_in, self.encode(src), causal=True)
        return logits

    def decode_step(self, prev_tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState]:
        """(B,) previous tokens -> (B, V) float32 log-probabilities and the state one step on."""
        # (B,) -> (B, 1): one new position, which may see every cached one (no causal mask).
        logits, self_kv = self._decode(prev_tokens[:, None], state, causal=False)
        state = {**state, "self_kv": self_kv, "step": state["step"] + 1}  # a new dict
        # float32 whatever the autocast dtype: search sums these over many steps.
        return F.log_softmax(logits[:, -1].float(), dim=-1), state

    def reorder_state(self, state: DecoderState, beam_indices: Tensor) -> DecoderState:
        """Reorder the self-attention cache; the encoder memory only drops sources no row uses
        any more (copying it for every beam at every step is what makes beam search slow)."""
        # New row i continues old row beam_indices[i]: compose to get its source, (rows,).
        rows = beam_indices if state["memory_rows"] is None else state["memory_rows"][beam_indices]
        cross_kv, mask = state["cross_kv"], state["src_mask"]
        used = torch.unique(rows)  # sorted
        if used.numel() < mask.shape[0]:
            # Sources that left (finished in beam search) free their memory; renumber the rows
            # into the shrunk list (``used`` is sorted, so searchsorted finds each position).
            cross_kv, mask = select_batch(cross_kv, used), mask.index_select(0, used)
            rows = torch.searchsorted(used, rows)
        return {
            **state,
            "self_kv": select_batch(state["self_kv"], beam_indices),  # the cache follows its beam
            "cross_kv": cross_kv,
            "src_mask": mask,
            "memory_rows": rows,
        }

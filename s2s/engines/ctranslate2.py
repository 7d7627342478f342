"""The CTranslate2 engine, and ``s2s export --format ctranslate2`` that makes its models.

CTranslate2 is a C++ inference engine for Transformers (fused kernels, int8). The export maps an
s2s Transformer one to one: s2s's fused q/k/v and k/v projections are CTranslate2's, the embedding
is shared by source, target and output projection (with its bias, if any), embeddings are scaled
by sqrt(d_model) where the model scales them, and the sinusoidal table is exported as it is (s2s
interleaves sin/cos, so CTranslate2's own table would differ). The exported directory also holds
``tokenizer.model`` (and ``target_tokenizer.model`` where the checkpoint has one) and
``s2s_export.json`` (the source checkpoint's id and config), so ``s2s translate --engine
ctranslate2`` can load it; given a checkpoint instead, the engine exports it on load.

``ctranslate2`` is an optional package, imported where it is used: without it this module still
imports, and the export says how to install it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile

import torch

from s2s import storage
from s2s.checkpoint import TOKENIZER, load_checkpoint, validate_checkpoint
from s2s.config import ConfigError, DecodeConfig
from s2s.placeholders import SENTINELS, hold_sentinels
from s2s.tokenizer import BOS_ID, PAD_ID, TokenizerFiles

__all__ = [
    "CTranslate2Engine",
    "export_ctranslate2",
    "local_ctranslate2_model",
    "export_info",
    "EXPORT_INFO",
]

log = logging.getLogger(__name__)

EXPORT_INFO = "s2s_export.json"  # what `s2s export` records next to the model: see export_info


class CTranslate2Engine:
    """An `s2s export` (or a checkpoint exported on load) in a ``ctranslate2.Translator``.

    Implements :class:`s2s.engines.Engine`. CTranslate2 takes and returns SentencePiece pieces, so
    :meth:`decode` maps ids to pieces and back with the exported tokenizer. It allocates GPU memory
    outside torch: its share of a GPU cannot be capped, and its free memory is not known here.
    """

    def __init__(self, cfg: DecodeConfig, device: torch.device, gpu_share: float = 1.0) -> None:
        """Load ``cfg.checkpoint`` (an export, else a checkpoint exported now) onto ``device``.

        Raises:
            ConfigError: a damaged model directory, or an RNN checkpoint.
        """
        import ctranslate2

        if device.type == "cuda" and gpu_share < 1:
            log.warning(
                "CTranslate2 allocates outside torch: its memory cannot be capped at this "
                "process's %.2f of the GPU; a batch that runs out of memory is halved",
                gpu_share,
            )
        self.cfg = cfg
        self.device = device
        exported, info = cfg.checkpoint, export_info(cfg.checkpoint)
        if info is None:  # a checkpoint: exported here (load_checkpoint checks it first)
            exported = export_ctranslate2(cfg.checkpoint, tempfile.mkdtemp(prefix="s2s-ct2-"))
            info = export_info(exported)
        local = local_ctranslate2_model(exported)
        _warn_unsupported_compute_type(cfg.compute_type, info, device)
        self.translator = ctranslate2.Translator(
            local,
            device=device.type,
            device_index=device.index or 0,
            compute_type=cfg.compute_type,
            intra_threads=torch.get_num_threads(),
        )
        self.precision = self.translator.compute_type  # what it computes in after fallbacks
        self.tokenizer, self.target_tokenizer = TokenizerFiles.read(exported).load(name=exported)
        # Pad and bos are never output (as in s2s.search): CTranslate2 rules them out by piece.
        self._never = [[piece] for piece in self.tokenizer.id_to_piece([PAD_ID, BOS_ID])]
        # CTranslate2 takes one list of banned pieces per batch, and no rule on eos: of s2s's
        # sentinel rule (s2s.search.Sentinels) it can keep only "none the batch's sources lack".
        both = hold_sentinels(self.tokenizer, self.target_tokenizer)
        self._sentinels = SENTINELS if both else ()
        self.model_id = f"{info['model_id']}+ct2"
        # Positions run out: source and output (after bos) must fit max_positions.
        self.max_len_cap = info["max_positions"] - 1 if info["max_positions"] else None
        self.memory_left = None  # allocated outside torch: not known (see Translator budgets)

    @staticmethod
    def cuda_device_count() -> int:
        """CTranslate2 has its own CUDA build: it may see a GPU a CPU-only torch does not."""
        import ctranslate2

        return ctranslate2.get_cuda_device_count()

    @staticmethod
    def checked_model_id(uri: str) -> str:
        info = export_info(uri)
        return (info["model_id"] if info else validate_checkpoint(uri)) + "+ct2"

    def decode(self, sources: list[list[int]]) -> list[list[int]]:
        """Output ids per source (see :meth:`s2s.engines.Engine.decode`)."""
        cfg = self.cfg
        pieces = [self.tokenizer.id_to_piece(ids) for ids in sources]
        given = {piece for row in pieces for piece in row}
        never = self._never + [[s] for s in self._sentinels if s not in given]
        # Per-sentence limits as in s2s.search; CTranslate2 takes one per batch, so decode to
        # the largest and cut each output to its own (greedy outputs then match exactly).
        limits = [max(1, int(cfg.max_len_a * (len(ids) + 1) + cfg.max_len_b)) for ids in sources]
        limits = [min(limit, self.max_len_cap or limit) for limit in limits]
        results = self.translator.translate_batch(
            pieces,
            beam_size=cfg.beam,
            # CTranslate2 divides by length ** penalty, not GNMT's ((5 + length) / 6) ** alpha.
            length_penalty=cfg.length_penalty,
            max_decoding_length=max(limits),
            max_batch_size=len(sources),
            suppress_sequences=never,
        )
        return [
            self.target_tokenizer.piece_to_id(r.hypotheses[0][:limit])
            for r, limit in zip(results, limits)
        ]


def _warn_unsupported_compute_type(compute_type: str, info: dict, device: torch.device) -> None:
    """Warn where CTranslate2 will not compute in the type asked for: the setting, else the type
    the export stored (float16, say). It falls back to another type rather than failing."""
    import ctranslate2

    wanted = compute_type if compute_type != "default" else info.get("quantization")
    supported = ctranslate2.get_supported_compute_types(device.type, device.index or 0)
    if wanted and wanted not in supported:
        log.warning(
            "CTranslate2 computes only %s on this %s, not %s: it falls back to another type",
            ", ".join(sorted(supported)),
            device.type,
            wanted,
        )


def export_info(uri: str) -> dict | None:
    """The `s2s export` record of a CTranslate2 model directory, or None for a checkpoint.

    Raises:
        ConfigError: an export directory that is missing a file.
    """
    info = storage.join(uri, EXPORT_INFO)
    if not storage.exists(info):
        return None
    for name in ("model.bin", TOKENIZER):
        if not storage.exists(storage.join(uri, name)):
            raise ConfigError(f"{uri}: not a complete CTranslate2 export: no {name}")
    return json.loads(storage.read_bytes(info))


def local_ctranslate2_model(uri: str) -> str:
    """A local directory holding the exported model at ``uri`` (downloaded into a temporary
    directory when on S3: CTranslate2 reads local files only)."""
    if not storage.is_s3(uri):
        return uri
    cache = tempfile.mkdtemp(prefix="s2s-ct2-")
    for ref in storage.expand(uri):
        name = ref.uri[len(uri.rstrip("/")) + 1 :]
        with open(os.path.join(cache, name), "wb") as f:
            f.write(storage.read_bytes(ref.uri))
    return cache


# -- export ----------------------------------------------------------------------------------


def export_ctranslate2(checkpoint: str, output: str, quantization: str | None = None) -> str:
    """Convert a Transformer checkpoint into a CTranslate2 model directory.

    Args:
        checkpoint: an s2s checkpoint directory, local or s3://.
        output: the directory to write, local or s3:// (files in it are replaced).
        quantization: a CTranslate2 weight type (``int8``, ``float16``, ...); None keeps fp32.

    Returns:
        ``output``.

    Raises:
        ConfigError: for a damaged or RNN checkpoint (CTranslate2 runs Transformers only) or a
            missing ctranslate2 package.
    """
    try:
        import ctranslate2
    except ImportError:
        raise ConfigError("export needs the ctranslate2 package: pip install ctranslate2") from None
    ckpt = load_checkpoint(checkpoint)  # checked: a damaged checkpoint is one ConfigError
    if ckpt.model_config.family != "transformer":
        raise ConfigError(
            f"{checkpoint}: CTranslate2 runs Transformers, not {ckpt.model_config.cell}"
        )
    pieces = ckpt.tokenizer.id_to_piece(list(range(ckpt.tokenizer.vocab_size)))
    spec = _model_spec(ckpt.model, ckpt.model_config, pieces)

    class _Converter(ctranslate2.converters.Converter):
        def _load(self):
            return spec

    with tempfile.TemporaryDirectory() as tmp:
        _Converter().convert(tmp, quantization=quantization, force=True)
        for name in os.listdir(tmp):
            with open(os.path.join(tmp, name), "rb") as f:
                storage.write_bytes(storage.join(output, name), f.read())
    TokenizerFiles.read(checkpoint).write(output)  # and the target side's, where it has one
    info = {
        "model_id": ckpt.model_id,
        "source": checkpoint,
        "quantization": quantization,
        "max_positions": ckpt.model_config.max_positions,
    }
    storage.write_bytes(storage.join(output, EXPORT_INFO), json.dumps(info, indent=2).encode())
    return output


# ModelConfig.activation -> CTranslate2's name for it (s2s's gelu is the exact, erf one).
_ACTIVATIONS = {"relu": "RELU", "swish": "SWISH", "gelu": "GELU"}


def _model_spec(model, cfg, pieces: list[str]):
    """The ``TransformerSpec`` of an s2s Transformer ``model`` built from ModelConfig ``cfg``,
    with ``pieces`` (its vocabulary, in id order) on both sides."""
    from ctranslate2.specs import common_spec, transformer_spec

    spec = transformer_spec.TransformerSpec.from_config(
        (cfg.enc_layers, cfg.dec_layers),
        cfg.heads,
        pre_norm=cfg.norm == "pre",
        activation=getattr(common_spec.Activation, _ACTIVATIONS[cfg.activation]),
    )
    embedding = model.embed.weight.detach().numpy()  # (V, D)
    positions = model.positions.numpy()  # (max_positions, D)
    spec.encoder.embeddings[0].weight = embedding  # a list: encoders may have several inputs
    spec.decoder.embeddings.weight = embedding
    for side in (spec.encoder, spec.decoder):
        side.scale_embeddings = cfg.scale_embedding
        side.position_encodings.encodings = positions
    layers = [*zip(spec.encoder.layer, model.encoder), *zip(spec.decoder.layer, model.decoder)]
    for layer_spec, layer in layers:
        _linear(layer_spec.self_attention.linear[0], layer.self_attn.qkv)  # (3D, D): q, k, v
        _linear(layer_spec.self_attention.linear[1], layer.self_attn.out)
        _norm(layer_spec.self_attention.layer_norm, layer.norms[0])
        if layer.cross_attn is not None:  # a decoder layer
            _linear(layer_spec.attention.linear[0], layer.cross_attn.q)
            _linear(layer_spec.attention.linear[1], layer.cross_attn.kv)  # (2D, D): k, v
            _linear(layer_spec.attention.linear[2], layer.cross_attn.out)
            _norm(layer_spec.attention.layer_norm, layer.norms[1])
        _linear(layer_spec.ffn.linear_0, layer.ffn[0])
        _linear(layer_spec.ffn.linear_1, layer.ffn[3])
        _norm(layer_spec.ffn.layer_norm, layer.norms[-1])
    if cfg.norm == "pre":
        _norm(spec.encoder.layer_norm, model.enc_norm)
        _norm(spec.decoder.layer_norm, model.dec_norm)
    spec.decoder.projection.weight = embedding  # tied output projection
    if model.logits_bias is not None:
        spec.decoder.projection.bias = model.logits_bias.detach().numpy()
    spec.register_source_vocabulary(pieces)
    spec.register_target_vocabulary(pieces)
    spec.config.unk_token, spec.config.bos_token, spec.config.eos_token = pieces[1:4]
    spec.config.decoder_start_token = pieces[2]  # bos starts the decoder, as in s2s.search
    spec.config.add_source_eos = True  # sources end with eos, as in training
    return spec


def _linear(spec, module) -> None:
    spec.weight = module.weight.detach().numpy()
    if module.bias is not None:
        spec.bias = module.bias.detach().numpy()


def _norm(spec, module) -> None:
    spec.gamma = module.weight.detach().numpy()
    spec.beta = module.bias.detach().numpy()

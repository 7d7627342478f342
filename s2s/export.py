"""``s2s export --format ctranslate2``: a Transformer checkpoint as a CTranslate2 model.

CTranslate2 is a C++ inference engine for Transformers (fused kernels, int8). The mapping is
one to one: s2s's fused q/k/v and k/v projections are CTranslate2's, the embedding is shared by
source, target and output projection, embeddings are scaled by sqrt(d_model), and the
sinusoidal table is exported as it is (s2s interleaves sin/cos, so CTranslate2's own table would
differ). The exported directory also holds ``tokenizer.model`` and ``s2s_export.json`` (the
source checkpoint's id and config), so ``s2s translate --engine ctranslate2`` can load it.
"""

from __future__ import annotations

import json
import os
import tempfile

from s2s import storage
from s2s.checkpoint import TOKENIZER, load_checkpoint
from s2s.config import ConfigError

__all__ = ["export_ctranslate2", "EXPORT_INFO", "local_ctranslate2_model"]

EXPORT_INFO = "s2s_export.json"


def _linear(spec, module) -> None:
    spec.weight = module.weight.detach().numpy()
    if module.bias is not None:
        spec.bias = module.bias.detach().numpy()


def _norm(spec, module) -> None:
    spec.gamma = module.weight.detach().numpy()
    spec.beta = module.bias.detach().numpy()


def _model_spec(model, cfg, pieces: list[str]):
    from ctranslate2.specs import common_spec, transformer_spec

    spec = transformer_spec.TransformerSpec.from_config(
        (cfg.enc_layers, cfg.dec_layers),
        cfg.heads,
        pre_norm=cfg.norm == "pre",
        activation=common_spec.Activation.RELU,
    )
    embedding = model.embed.weight.detach().numpy()
    positions = model.positions.numpy()
    spec.encoder.embeddings[0].weight = embedding  # a list: encoders may have several inputs
    spec.decoder.embeddings.weight = embedding
    for side in (spec.encoder, spec.decoder):
        side.scale_embeddings = True
        side.position_encodings.encodings = positions
    for layer_spec, layer in [*zip(spec.encoder.layer, model.encoder),
                              *zip(spec.decoder.layer, model.decoder)]:  # fmt: skip
        _linear(layer_spec.self_attention.linear[0], layer.self_attn.qkv)
        _linear(layer_spec.self_attention.linear[1], layer.self_attn.out)
        _norm(layer_spec.self_attention.layer_norm, layer.norms[0])
        if layer.cross_attn is not None:  # a decoder layer
            _linear(layer_spec.attention.linear[0], layer.cross_attn.q)
            _linear(layer_spec.attention.linear[1], layer.cross_attn.kv)
            _linear(layer_spec.attention.linear[2], layer.cross_attn.out)
            _norm(layer_spec.attention.layer_norm, layer.norms[1])
        _linear(layer_spec.ffn.linear_0, layer.ffn[0])
        _linear(layer_spec.ffn.linear_1, layer.ffn[3])
        _norm(layer_spec.ffn.layer_norm, layer.norms[-1])
    if cfg.norm == "pre":
        _norm(spec.encoder.layer_norm, model.enc_norm)
        _norm(spec.decoder.layer_norm, model.dec_norm)
    spec.decoder.projection.weight = embedding  # tied output projection, no bias
    spec.register_source_vocabulary(pieces)
    spec.register_target_vocabulary(pieces)
    spec.config.unk_token, spec.config.bos_token, spec.config.eos_token = pieces[1:4]
    spec.config.decoder_start_token = pieces[2]  # bos starts the decoder, as in s2s.search
    spec.config.add_source_eos = True  # sources end with eos, as in training
    return spec


def export_ctranslate2(checkpoint: str, output: str, quantization: str | None = None) -> str:
    """Convert a Transformer checkpoint into a CTranslate2 model directory (local or s3://).

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
    storage.write_bytes(
        storage.join(output, TOKENIZER), storage.read_bytes(storage.join(checkpoint, TOKENIZER))
    )
    info = {
        "model_id": ckpt.model_id,
        "source": checkpoint,
        "quantization": quantization,
        "max_positions": ckpt.model_config.max_positions,
    }
    storage.write_bytes(storage.join(output, EXPORT_INFO), json.dumps(info, indent=2).encode())
    return output


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

"""Hugging Face Marian (OPUS-MT) models in and out: :func:`import_marian`, :func:`export_marian`.

A ``MarianMTModel`` is the post-norm Transformer of :mod:`s2s.models.transformer` (swish,
scaled embeddings and an output bias for OPUS-MT) laid out differently in three ways, each mapped
exactly, by moving numbers and never computing with them:

* Vocabulary. Marian: eos 0, unk 1, pad (the last id) also starts the decoder. s2s: pad 0, unk 1,
  bos 2, eos 3. s2s id ``i`` takes Marian row ``rows[i]`` = ``[pad, unk, decoder start, eos,
  every other Marian id in order]``: s2s pad and bos both take Marian's pad row, so V_s2s =
  V_marian + 1. An export keeps s2s's ids (its decoder starts from bos 2).
* Channels. Marian's sinusoids are in halves (channel i: sin, D/2 + i: cos of frequency i), s2s's
  interleaved (2i: sin, 2i + 1: cos). Reordering the D residual channels (``_channel_order``)
  wherever a weight touches the residual stream (embedding columns; input columns of q/k/v/fc1;
  output rows and biases of out/fc2; LayerNorms) gives the same function: attention and
  LayerNorm ignore channel order, the per-head and FFN dims are untouched, and the tied output
  projection reorders with the embedding, so the logits are the same.
* Projections. Marian's separate q/k/v (cross-attention k/v) stack into s2s's fused ones.

Tokenizers. Marian segments sources with ``source.spm``, targets with ``target.spm``, and looks
the pieces up in one ``vocab.json``. The import writes one SentencePiece model per side whose
piece list *is* the s2s vocabulary: a piece of that side's ``.spm`` keeps its type and score (so
segmentation is that ``.spm``'s), every other piece is UNUSED (never produced). Where a ``.spm``
produces a piece ``vocab.json`` lacks, ``MarianTokenizer`` feeds ``<unk>``; the import gives such
pieces ids after Marian's with ``<unk>``'s embedding row and the output bias ``NEVER``, so the
encoder sees what Marian's sees and the decoder never emits them.

Refused: separate decoder vocabularies, untied output projections, different encoder/decoder
widths, activations other than swish/gelu/relu. Not reproduced: ``MarianTokenizer`` keeps a
leading ``>>xx<<`` language tag (multilingual models) as one token, and looks up the text of
characters its ``.spm`` does not know in ``vocab.json``; s2s's tokenizers segment the tag as text
and give ``<unk>`` for unknown characters.
"""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors
from sentencepiece import sentencepiece_model_pb2 as spm_pb2  # needs protobuf (ray brings it)
from torch import Tensor

from s2s import storage
from s2s.checkpoint import load_checkpoint, save_checkpoint
from s2s.config import ConfigError, ModelConfig
from s2s.models import build_model
from s2s.tokenizer import BOS_ID, EOS_ID, PAD_ID, Tokenizer, TokenizerFiles

__all__ = ["import_marian", "export_marian", "NEVER"]

log = logging.getLogger(__name__)

CONFIG, GENERATION, SOURCE_SPM, TARGET_SPM, VOCAB, TOKENIZER_CONFIG = (
    "config.json",
    "generation_config.json",
    "source.spm",
    "target.spm",
    "vocab.json",
    "tokenizer_config.json",
)
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # read in this order of preference
SPECIAL_PIECES = ["<pad>", "<unk>", "<s>", "</s>"]  # s2s ids 0..3 (s2s.tokenizer)
# Output bias of pieces only the .spm knows: exp(-1e4 + any logit) is 0.0 in float32, so they
# take no probability and every other token's log-probability is exactly as without them; finite,
# so a label-smoothed loss over the whole vocabulary stays finite when fine-tuning.
NEVER = -1e4
# MarianConfig's defaults (transformers' configuration_marian.py), for keys a config.json omits.
_DEFAULTS = {
    "activation_function": "gelu",
    "scale_embedding": False,
    "max_position_embeddings": 1024,
    "dropout": 0.1,
    "attention_dropout": 0.0,
    "eos_token_id": 0,
    "share_encoder_decoder_embeddings": True,
    "tie_word_embeddings": True,
}
# What a config.json must state (the sizes; MarianConfig's defaults are those of one model).
_REQUIRED = ["vocab_size", "d_model", "encoder_layers", "decoder_layers"]
_REQUIRED += [
    f"{side}_{key}" for side in ("encoder", "decoder") for key in ("attention_heads", "ffn_dim")
]
# HF activation_function -> ModelConfig.activation (HF's "swish" and "silu" are both SiLU).
_ACTIVATIONS = {"swish": "swish", "silu": "swish", "gelu": "gelu", "relu": "relu"}
# Piece types a segmentation can produce (the others: UNKNOWN, CONTROL, UNUSED).
_PIECE = spm_pb2.ModelProto.SentencePiece
_EMITTED = {_PIECE.NORMAL, _PIECE.USER_DEFINED, _PIECE.BYTE}
# Which side of a weight is the residual stream: "in" = its input columns (rows are heads or FFN
# units, untouched), "out" = its output rows and bias (LayerNorm weights are "out" vectors).
IN, OUT = "in", "out"


def import_marian(source: str, output: str) -> dict[str, Any]:
    """Convert a Hugging Face ``MarianMTModel`` directory into an s2s checkpoint.

    Args:
        source: a directory (local or ``s3://``) holding ``config.json``, ``model.safetensors``
            or ``pytorch_model.bin``, ``source.spm``, ``target.spm`` and ``vocab.json``, as
            ``save_pretrained`` and OPUS-MT lay them out (``generation_config.json`` and
            ``tokenizer_config.json`` are read where present).
        output: the checkpoint directory to write (post-norm Transformer, step 0).

    Returns:
        A summary: vocabulary sizes, layers, widths, and the tensors mapped and left out.

    Raises:
        ConfigError: one line naming the file and what is wrong: not a Marian model, a file
            missing, or an architecture s2s cannot represent.
    """
    config = _read_config(source)
    spms = [_read_spm(source, name) for name in (SOURCE_SPM, TARGET_SPM)]
    vocab = _read_json(source, VOCAB)
    rows, pieces, extra = _vocabulary(vocab, config, spms, storage.join(source, VOCAB))
    protos = [_side_proto(spm, pieces) for spm in spms]
    for proto, name in zip(protos, (SOURCE_SPM, TARGET_SPM)):
        Tokenizer(proto, name=storage.join(source, name))  # checks the special ids
    weights, path = _read_weights(source)
    state, ignored = _to_s2s(weights, config, rows, extra, path)
    model_config = _model_config(config, len(rows), output_bias="logits_bias" in state)
    model = build_model(model_config)
    try:
        model.load_state_dict(state)  # strict: every s2s tensor came from Marian
    except RuntimeError as err:  # torch lists every size mismatch, one per line
        lines = str(err).splitlines()
        raise ConfigError(f"{path}: tensors do not fit {CONFIG}: {lines[-1].strip()}") from None
    # Older uploads keep the decoding settings in config.json.
    generation = _read_json(source, GENERATION, required=False) or {
        k: config[k] for k in ("num_beams", "max_length", "bad_words_ids") if k in config
    }
    trainer_state = {
        "step": 0,
        "imported_from": source,
        # Hugging Face's decoding settings, in Marian ids (bad_words_ids: its pad).
        "generation": {k: v for k, v in generation.items() if not k.startswith("_")},
        "languages": config["languages"],
    }
    target = protos[1] if protos[1] != protos[0] else None
    save_checkpoint(output, model.eval(), model_config, protos[0], trainer_state, None, target)
    summary = {
        "source": source,
        "output": output,
        "vocab_size": len(rows),
        "marian_vocab_size": config["vocab_size"],
        "spm_only_pieces": extra,  # <unk> to Marian: ids after Marian's (see the module doc)
        "d_model": model_config.d_model,
        "layers": [model_config.enc_layers, model_config.dec_layers],
        "heads": model_config.heads,
        "activation": model_config.activation,
        "output_bias": model_config.output_bias,
        "tensors_mapped": len(weights) - len(ignored),
        "tensors_ignored": ignored,
    }
    log.info("imported %s -> %s: %s", source, output, summary)
    return summary


def export_marian(checkpoint: str, output: str) -> str:
    """Write an s2s post-norm Transformer checkpoint as a Hugging Face Marian directory, which
    ``MarianMTModel.from_pretrained`` and ``MarianTokenizer.from_pretrained`` load.

    The ids stay s2s's (pad 0, unk 1, bos 2 starts the decoder, eos 3); ``generation_config.json``
    bans pad and bos as s2s's search does. Hugging Face's beam search normalises by ``len **
    length_penalty`` where s2s uses GNMT's ``((5 + len) / 6) ** alpha``.

    Args:
        checkpoint: an s2s checkpoint directory (local or ``s3://``).
        output: the directory to write.

    Returns:
        ``output``.

    Raises:
        ConfigError: the checkpoint is damaged, an RNN, or pre-norm.
    """
    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt.model_config
    if cfg.family != "transformer":
        raise ConfigError(
            f"{checkpoint}: a {cfg.family} model; Hugging Face Marian is a Transformer"
        )
    if cfg.norm != "post":
        raise ConfigError(
            f"{checkpoint}: a pre-norm Transformer; Hugging Face Marian layers are post-norm "
            "(LayerNorm after each residual add, no final stack norm): train with model.norm=post"
        )
    files = TokenizerFiles.read(checkpoint)
    pieces = _pieces(files.source)
    if files.target is not None and _pieces(files.target) != pieces:
        raise ConfigError(f"{checkpoint}: the source and target tokenizers' pieces differ")
    weights = _to_marian(ckpt.model.state_dict(), cfg)
    files_out = {name: _dumps(data) for name, data in _hf_json(cfg).items()}
    files_out |= {
        "model.safetensors": save_safetensors(weights, metadata={"format": "pt"}),
        SOURCE_SPM: files.source,
        TARGET_SPM: files.target or files.source,
        VOCAB: _dumps({piece: i for i, piece in enumerate(pieces)}),
    }
    for name, data in files_out.items():
        storage.write_bytes(storage.join(output, name), data)
    log.info("exported %s -> %s (Hugging Face Marian)", checkpoint, output)
    return output


def _channel_order(d_model: int) -> Tensor:
    """(D,) the Marian channel that each s2s residual channel takes.

    s2s channel 2i is sin(pos * f_i), Marian's i; s2s channel 2i + 1 is cos(pos * f_i), Marian's
    D/2 + i. ``torch.argsort`` of it is the inverse (for export).
    """
    half = torch.arange(d_model // 2)
    return torch.stack([half, half + d_model // 2], dim=1).flatten()  # [0, D/2, 1, D/2+1, ...]


def _layer_map(enc_layers: int, dec_layers: int) -> list[tuple[str, list[str], str]]:
    """(s2s module, its Marian module(s) stacked along the output rows, residual side)."""
    pairs = []
    for side, n in (("encoder", enc_layers), ("decoder", dec_layers)):
        for i in range(n):
            s, m = f"{side}.{i}", f"model.{side}.layers.{i}"
            pairs += [
                (f"{s}.self_attn.qkv", [f"{m}.self_attn.{p}_proj" for p in "qkv"], IN),
                (f"{s}.self_attn.out", [f"{m}.self_attn.out_proj"], OUT),
                (f"{s}.norms.0", [f"{m}.self_attn_layer_norm"], OUT),
                (f"{s}.ffn.0", [f"{m}.fc1"], IN),
                (f"{s}.ffn.3", [f"{m}.fc2"], OUT),
                (f"{s}.norms.{2 if side == 'decoder' else 1}", [f"{m}.final_layer_norm"], OUT),
            ]
            if side == "decoder":
                pairs += [
                    (f"{s}.cross_attn.q", [f"{m}.encoder_attn.q_proj"], IN),
                    (f"{s}.cross_attn.kv", [f"{m}.encoder_attn.{p}_proj" for p in "kv"], IN),
                    (f"{s}.cross_attn.out", [f"{m}.encoder_attn.out_proj"], OUT),
                    (f"{s}.norms.1", [f"{m}.encoder_attn_layer_norm"], OUT),
                ]
    return pairs


def _reorder(tensor: Tensor, side: str, param: str, order: Tensor) -> Tensor:
    """Reorder the residual channels of one weight or bias: columns of an "in" weight, rows of an
    "out" weight and its bias (an "in" bias lives in head/FFN space: unchanged)."""
    if side == IN:
        return tensor[:, order] if param == "weight" else tensor.clone()
    return tensor[order]


def _to_s2s(
    weights: dict[str, Tensor], config: dict, rows: list[int], extra: int, where: str
) -> tuple[dict[str, Tensor], list[str]]:
    """(s2s state dict, Marian tensors left out). ``logits_bias`` is in it where Marian's bias is
    not all zeros or ``extra`` pieces at the end of ``rows`` need the NEVER bias.

    Raises:
        ConfigError: a tensor missing, an untied output projection, or tensors s2s has no place
            for (a variant with extra LayerNorms, say).
    """
    left = dict(weights)  # what is used is popped: what is left must be known to be unneeded
    names = ["model.shared.weight", "model.encoder.embed_tokens.weight"]
    embed = next((left[n] for n in names if n in left), None)  # (V, D)
    if embed is None:
        raise ConfigError(f"{where}: no token embedding (model.shared.weight)")
    if list(embed.shape) != [config["vocab_size"], config["d_model"]]:
        raise ConfigError(f"{where}: embedding {list(embed.shape)}, not vocab_size x d_model")
    for tied in [*names, "model.decoder.embed_tokens.weight", "lm_head.weight"]:
        if tied in left and not torch.equal(left.pop(tied), embed):
            raise ConfigError(f"{where}: {tied} differs from the shared embedding (untied)")
    index, order = torch.tensor(rows), _channel_order(config["d_model"])
    state = {"embed.weight": embed.float()[index][:, order]}  # (V_s2s, D)
    bias = left.pop("final_logits_bias", torch.zeros(1, embed.shape[0]))  # (1, V)
    bias = bias.float().flatten()[index].clone()  # (V_s2s,)
    bias[len(rows) - extra :] = NEVER
    if bias.any():
        state["logits_bias"] = bias
    for s2s, marian, side in _layer_map(config["encoder_layers"], config["decoder_layers"]):
        for param in ("weight", "bias"):
            missing = [f"{m}.{param}" for m in marian if f"{m}.{param}" not in left]
            if missing:
                raise ConfigError(
                    f"{where}: no tensor {missing[0]} (layers or names differ from {CONFIG})"
                )
            stacked = torch.cat([left.pop(f"{m}.{param}").float() for m in marian])
            state[f"{s2s}.{param}"] = _reorder(stacked, side, param, order)
    # The sinusoids are fixed (s2s builds them in its own layout).
    ignored = sorted(k for k in left if k.endswith("embed_positions.weight"))
    unknown = sorted(set(left) - set(ignored))
    if unknown:
        raise ConfigError(
            f"{where}: {len(unknown)} tensors s2s has no place for, e.g. {unknown[0]} "
            "(not a plain post-norm Marian model)"
        )
    return state, ignored


def _to_marian(state: dict[str, Tensor], cfg: ModelConfig) -> dict[str, Tensor]:
    """Hugging Face Marian tensors of an s2s post-norm Transformer, as ``save_pretrained`` writes
    them (tied copies and the sinusoids left out; ``final_logits_bias`` always present)."""
    order = torch.argsort(_channel_order(cfg.d_model))  # the inverse: s2s -> Marian channels
    embed = state["embed.weight"]  # (V, D)
    bias = state.get("logits_bias", torch.zeros(embed.shape[0]))  # (V,)
    weights = {"model.shared.weight": embed[:, order], "final_logits_bias": bias[None].clone()}
    for s2s, marian, side in _layer_map(cfg.enc_layers, cfg.dec_layers):
        for param in ("weight", "bias"):
            whole = _reorder(state[f"{s2s}.{param}"], side, param, order)
            for name, part in zip(marian, whole.chunk(len(marian))):
                weights[f"{name}.{param}"] = part.contiguous()
    return {k: v.detach().float().contiguous() for k, v in weights.items()}


def _vocabulary(
    vocab: dict[str, int], config: dict, spms: list[spm_pb2.ModelProto], where: str
) -> tuple[list[int], list[str], int]:
    """(Marian row of each s2s id, piece of each s2s id, how many ids at the end are pieces only
    a ``.spm`` has: those take the unk row).

    Raises:
        ConfigError: ids out of range, or no ``<unk>``.
    """
    size = config["vocab_size"]
    by_id = {i: piece for piece, i in vocab.items()}
    if len(by_id) != len(vocab) or not all(isinstance(i, int) and 0 <= i < size for i in by_id):
        raise ConfigError(f"{where}: ids must be distinct integers below vocab_size {size}")
    if "<unk>" not in vocab:
        raise ConfigError(f"{where}: no <unk> piece")
    pad, eos, start = config["pad_token_id"], config["eos_token_id"], config["decoder_start"]
    specials = [pad, vocab["<unk>"], start, eos]  # s2s pad, unk, bos, eos
    rows = specials + [i for i in range(size) if i not in specials]
    pieces = list(SPECIAL_PIECES)
    for i in rows[4:]:
        piece = by_id.get(i, f"<marian:{i}>")  # a row vocab.json names no piece for
        # A Marian piece spelled like an s2s special (a second "<s>", say) keeps its row under
        # another name: SentencePiece needs distinct pieces.
        pieces.append(f"<marian:{i}:{piece}>" if piece in SPECIAL_PIECES else piece)
    known = set(pieces)
    extra = [p.piece for spm in spms for p in spm.pieces if p.type in _EMITTED]
    extra = list(dict.fromkeys(p for p in extra if p not in known))  # ordered, distinct
    return rows + [vocab["<unk>"]] * len(extra), pieces + extra, len(extra)


def _side_proto(spm: spm_pb2.ModelProto, pieces: list[str]) -> bytes:
    """The SentencePiece model of one side over the s2s vocabulary ``pieces``: that side's
    pieces keep their type and score, the others are UNUSED; normaliser and settings are kept."""
    kind = spm_pb2.ModelProto.SentencePiece
    own = {p.piece: p for p in spm.pieces if p.type != kind.UNKNOWN}
    proto = spm_pb2.ModelProto()
    proto.CopyFrom(spm)
    del proto.pieces[:]
    fixed = [kind.CONTROL, kind.UNKNOWN, kind.CONTROL, kind.CONTROL]  # pad, unk, bos, eos
    for i, piece in enumerate(pieces):
        if i < len(fixed):
            proto.pieces.add(piece=piece, score=0.0, type=fixed[i])
        elif piece in own:
            proto.pieces.add(piece=piece, score=own[piece].score, type=own[piece].type)
        else:
            proto.pieces.add(piece=piece, score=0.0, type=kind.UNUSED)
    spec = proto.trainer_spec
    spec.pad_id, spec.unk_id, spec.bos_id, spec.eos_id = 0, 1, 2, 3
    spec.pad_piece, spec.unk_piece, spec.bos_piece, spec.eos_piece = SPECIAL_PIECES
    spec.vocab_size = len(pieces)
    return proto.SerializeToString()


def _pieces(proto: bytes) -> list[str]:
    model = spm_pb2.ModelProto()
    model.ParseFromString(proto)
    return [p.piece for p in model.pieces]


def _read_config(source: str) -> dict[str, Any]:
    """``config.json`` with MarianConfig's defaults filled in, ``decoder_start`` resolved and the
    ``languages`` of ``tokenizer_config.json``.

    Raises:
        ConfigError: not a Marian model, or one s2s's Transformer cannot represent.
    """
    where = storage.join(source, CONFIG)
    raw = _read_json(source, CONFIG)
    arch = raw.get("architectures") or ["MarianMTModel"]
    if raw.get("model_type") != "marian" or "MarianMTModel" not in arch:
        raise ConfigError(
            f"{where}: not a Marian translation model (model_type {raw.get('model_type')!r}, "
            f"architectures {arch}); s2s imports MarianMTModel (OPUS-MT) models"
        )
    missing = [key for key in _REQUIRED if key not in raw]
    if missing:
        raise ConfigError(f"{where}: no {', '.join(missing)}")
    # Without pad_token_id: the last id, as Hugging Face's converter makes it.
    config = {**_DEFAULTS, "pad_token_id": raw["vocab_size"] - 1, **raw}
    config["decoder_start"] = raw.get("decoder_start_token_id", config["pad_token_id"])
    tokenizer = _read_json(source, TOKENIZER_CONFIG, required=False)
    config["languages"] = [tokenizer.get("source_lang"), tokenizer.get("target_lang")]
    problems = []
    separate = tokenizer.get("separate_vocabs") or not config["share_encoder_decoder_embeddings"]
    if separate or config.get("decoder_vocab_size") not in (None, config["vocab_size"]):
        problems.append("a separate decoder vocabulary (s2s shares one)")
    if not config["tie_word_embeddings"]:
        problems.append("an untied lm_head (s2s ties it to the embedding)")
    for key in ("attention_heads", "ffn_dim"):
        if config[f"encoder_{key}"] != config[f"decoder_{key}"]:
            problems.append(f"encoder_{key} != decoder_{key} (s2s uses one for both)")
    if config["activation_function"] not in _ACTIVATIONS:
        problems.append(
            f"activation_function {config['activation_function']!r} (s2s has "
            f"{', '.join(_ACTIVATIONS)})"
        )
    if config["d_model"] % 2 or config["d_model"] % config["encoder_attention_heads"]:
        problems.append("d_model odd or not a multiple of the heads")
    if problems:
        raise ConfigError(f"{where}: cannot import {'; '.join(problems)}")
    return config


def _model_config(config: dict, vocab_size: int, output_bias: bool) -> ModelConfig:
    """The s2s ModelConfig of a checked Marian ``config.json``."""
    model_config = ModelConfig(
        family="transformer",
        vocab_size=vocab_size,
        d_model=config["d_model"],
        enc_layers=config["encoder_layers"],
        dec_layers=config["decoder_layers"],
        heads=config["encoder_attention_heads"],
        ffn_dim=config["encoder_ffn_dim"],
        norm="post",
        max_positions=config["max_position_embeddings"],
        dropout=float(config["dropout"]),
        attention_dropout=float(config["attention_dropout"]),
        activation=_ACTIVATIONS[config["activation_function"]],
        scale_embedding=bool(config["scale_embedding"]),
        output_bias=output_bias,
    )
    model_config.validate()
    return model_config


def _hf_json(cfg: ModelConfig) -> dict[str, dict[str, Any]]:
    """``config.json``, ``generation_config.json`` and ``tokenizer_config.json`` of an export:
    MarianConfig's keys with s2s's sizes and special ids (the decoder starts from bos)."""
    ids = {
        "pad_token_id": PAD_ID,
        "eos_token_id": EOS_ID,
        "decoder_start_token_id": BOS_ID,
        "forced_eos_token_id": EOS_ID,
    }
    config = {
        "architectures": ["MarianMTModel"],
        "model_type": "marian",
        "vocab_size": cfg.vocab_size,
        "decoder_vocab_size": cfg.vocab_size,
        "d_model": cfg.d_model,
        "encoder_layers": cfg.enc_layers,
        "decoder_layers": cfg.dec_layers,
        **{f"{side}_attention_heads": cfg.heads for side in ("encoder", "decoder")},
        **{f"{side}_ffn_dim": cfg.ffn_dim for side in ("encoder", "decoder")},
        "activation_function": cfg.activation,  # s2s's names are Hugging Face's
        "scale_embedding": cfg.scale_embedding,
        "max_position_embeddings": cfg.max_positions,
        "dropout": cfg.dropout,
        "attention_dropout": cfg.attention_dropout,
        "activation_dropout": cfg.dropout,  # s2s's FFN drops its hidden layer with `dropout`
        "share_encoder_decoder_embeddings": True,
        "tie_word_embeddings": True,
        "is_encoder_decoder": True,
        **ids,
    }
    generation = {
        "bad_words_ids": [[PAD_ID], [BOS_ID]],  # what s2s's search never emits
        "num_beams": 4,  # DecodeConfig's default
        "max_length": cfg.max_positions,  # decoder positions, the start token's included
        **ids,
    }
    tokenizer = {"tokenizer_class": "MarianTokenizer", "model_max_length": cfg.max_positions}
    tokenizer |= {"pad_token": "<pad>", "unk_token": "<unk>", "eos_token": "</s>"}
    return {CONFIG: config, GENERATION: generation, TOKENIZER_CONFIG: tokenizer}


def _read_json(source: str, name: str, required: bool = True) -> dict[str, Any]:
    """A JSON object file of the model directory; {} for an absent optional one."""
    path = storage.join(source, name)
    if not storage.exists(path):
        if required:
            raise ConfigError(f"{path}: missing (not a Hugging Face Marian model directory?)")
        return {}
    try:
        data = json.loads(storage.read_bytes(path))
    except ValueError as err:
        raise ConfigError(f"{path}: not JSON ({err})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: not a JSON object")
    return data


def _read_spm(source: str, name: str) -> spm_pb2.ModelProto:
    path = storage.join(source, name)
    if not storage.exists(path):
        raise ConfigError(f"{path}: missing (Marian models have {SOURCE_SPM} and {TARGET_SPM})")
    model = spm_pb2.ModelProto()
    try:
        model.ParseFromString(storage.read_bytes(path))
    except Exception as err:  # protobuf's DecodeError
        raise ConfigError(f"{path}: not a SentencePiece model ({err})") from None
    if not model.pieces:
        raise ConfigError(f"{path}: not a SentencePiece model (no pieces)")
    return model


def _read_weights(source: str) -> tuple[dict[str, Tensor], str]:
    """(tensors, path) of ``model.safetensors`` or else ``pytorch_model.bin`` (tensors only:
    loaded with ``weights_only=True``, no code unpickled)."""
    for name in WEIGHT_FILES:
        path = storage.join(source, name)
        if not storage.exists(path):
            continue
        data = storage.read_bytes(path)
        try:
            if name.endswith(".safetensors"):
                return load_safetensors(data), path
            return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu"), path
        except Exception as err:  # a damaged file: safetensors and torch raise their own types
            raise ConfigError(f"{path}: unreadable weights ({err})") from None
    raise ConfigError(
        f"{source}: no weights ({' or '.join(WEIGHT_FILES)}; sharded weights are not supported)"
    )


def _dumps(data: Any) -> bytes:
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()

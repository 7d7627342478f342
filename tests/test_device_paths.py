"""The GPU path where a CPU can test it: restore order and map_location (a state saved on one
device kind restored onto another), device batches, prefetching, precision resolution."""

import dataclasses
import io

import pytest
import torch
import torch.nn.functional as F

from s2s import storage
from s2s.batching import collate, prefetch, to_device
from s2s.checkpoint import OPTIMIZER, load_optimizer_state, save_checkpoint
from s2s.config import TrainConfig, model_preset
from s2s.device import autocast, resolve_precision
from s2s.models import build_model
from s2s.objective import build_optimizer, label_smoothed_loss
from s2s.train import build_training

TINY = {"vocab_size": 400, "d_model": 32, "hidden_dim": 32, "heads": 2, "ffn_dim": 64}


@pytest.fixture
def trained_checkpoint(tmp_path, gettext_pairs) -> tuple[str, TrainConfig]:
    """A checkpoint with optimizer state, written by a model trained one step on the CPU."""
    from s2s.tokenizer import train_tokenizer

    proto = train_tokenizer([s for p in gettext_pairs[:500] for s in p], 400)
    cfg = TrainConfig(
        data="x", output="y", max_steps=1, model=model_preset("transformer-small", TINY)
    )
    model, optimizer, state = build_training(cfg, torch.device("cpu"))
    batch = collate([([5, 6, 7], [8, 9]), ([10], [11, 12, 13])])
    loss, _, n = label_smoothed_loss(model(batch["src"], batch["tgt_in"]), batch["tgt_out"], 0.1)
    (loss / n).backward()
    optimizer.step()
    uri = str(tmp_path / "ckpt")
    state = dataclasses.replace(state, step=1)
    save_checkpoint(uri, model, cfg.model, proto, state, {"optimizer": optimizer.state_dict()})
    return uri, cfg


@pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")
def test_restored_optimizer_state_lands_on_the_models_device(trained_checkpoint):
    """Saved from the CPU, restored onto another device (the meta device stands in for a GPU):
    every moment estimate must be on its parameter's device, or the first step fails there.
    Restoring before moving the model (the order that breaks on a GPU) fails this test."""
    uri, cfg = trained_checkpoint
    model, optimizer, state = build_training(cfg, torch.device("meta"), uri)
    assert state.step == 1 and state.resumed_from == [1]
    assert all(p.device.type == "meta" for p in model.parameters())
    moments = [
        (t, p)
        for p in model.parameters()
        for t in optimizer.state[p].values()
        if isinstance(t, torch.Tensor) and t.dim() > 0
    ]
    assert moments and all(t.device == p.device for t, p in moments)


def _retag_as_cuda(uri: str) -> None:
    """Rewrite a checkpoint's optimizer.pt as a GPU run writes it: every tensor tagged cuda:0."""
    state = torch.load(
        io.BytesIO(storage.read_bytes(storage.join(uri, OPTIMIZER))), weights_only=True
    )

    def cuda_tag(obj):  # what torch.save records for a tensor on the first GPU
        return "cuda:0" if getattr(obj, "device", None) == torch.device("cpu") else None

    torch.serialization.register_package(0, cuda_tag, lambda obj, location: None)
    try:
        buffer = io.BytesIO()
        torch.save(state, buffer)
    finally:
        torch.serialization._package_registry[:] = [
            entry for entry in torch.serialization._package_registry if entry[1] is not cuda_tag
        ]
    storage.write_bytes(storage.join(uri, OPTIMIZER), buffer.getvalue())


def test_gpu_optimizer_state_resumes_on_a_cpu(trained_checkpoint):
    """A checkpoint written on a GPU resumes on a machine without one (and, on a GPU node, no
    worker piles its copy onto cuda:0): optimizer state is read with map_location."""
    uri, cfg = trained_checkpoint
    _retag_as_cuda(uri)
    raw = storage.read_bytes(storage.join(uri, OPTIMIZER))
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):  # the file really asks for a GPU
            torch.load(io.BytesIO(raw), weights_only=True)
    assert load_optimizer_state(uri) is not None
    model, optimizer, state = build_training(cfg, torch.device("cpu"), uri)
    batch = collate([([5, 6], [8])])
    loss, _, n = label_smoothed_loss(model(batch["src"], batch["tgt_in"]), batch["tgt_out"], 0.1)
    (loss / n).backward()
    optimizer.step()  # state and parameters on one device
    assert state.step == 1


def test_optimizer_is_fused_only_on_cuda():
    model = build_model(model_preset("transformer-small", TINY))
    optimizer = build_optimizer(model, 1e-3)
    assert not optimizer.defaults.get("fused")
    with torch.device("meta"):
        meta_model = build_model(model_preset("transformer-small", TINY))
    assert not build_optimizer(meta_model, 1e-3).defaults.get("fused")


def test_loss_returns_tensors_without_reading_the_device():
    logits, target = torch.randn(2, 3, 7), torch.tensor([[4, 5, 0], [6, 0, 0]])
    loss, nll, n = label_smoothed_loss(logits, target, 0.1)
    assert all(isinstance(t, torch.Tensor) and t.dim() == 0 for t in (loss, nll, n))
    assert int(n) == 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loss_is_cross_entropy_with_label_smoothing(dtype):
    """One log-softmax serves both numbers: the loss and its gradient are F.cross_entropy's."""
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11, dtype=dtype, requires_grad=True)
    target = torch.tensor([[4, 5, 0, 0, 0], [6, 7, 8, 9, 1], [2, 0, 0, 0, 0]])
    ref_logits = logits.detach().float().requires_grad_()
    for smoothing in (0.0, 0.1):
        loss, nll, n = label_smoothed_loss(logits, target, smoothing)
        args = (ref_logits.flatten(0, 1), target.flatten())
        expected = F.cross_entropy(
            *args, ignore_index=0, label_smoothing=smoothing, reduction="sum"
        )
        torch.testing.assert_close(loss, expected)
        torch.testing.assert_close(nll, F.cross_entropy(*args, ignore_index=0, reduction="sum"))
        assert int(n) == 8 and not nll.requires_grad
        (grad,) = torch.autograd.grad(loss, logits)
        (ref_grad,) = torch.autograd.grad(expected, ref_logits)
        assert grad.dtype == dtype
        atol = 1e-2 if dtype == torch.bfloat16 else 1e-6  # bf16: the gradient's rounding
        torch.testing.assert_close(grad.float(), ref_grad, atol=atol, rtol=0)


def test_to_device_keeps_values_and_dtypes():
    batch = collate([([5, 6, 7], [8, 9]), ([10], [11, 12, 13])])
    moved = to_device(batch, torch.device("cpu"))
    assert moved.keys() == batch.keys()
    assert all(torch.equal(moved[k], batch[k]) and moved[k].dtype == torch.int64 for k in batch)


@pytest.mark.parametrize("ahead", [False, True])
def test_prefetch_yields_every_item_in_order(ahead):
    prepared = []

    def prepare(item):
        prepared.append(item)
        return item * 10

    out = list(prefetch(iter(range(7)), prepare, ahead))
    assert out == [(i, i * 10) for i in range(7)] and prepared == list(range(7))
    assert list(prefetch(iter([]), prepare, ahead)) == []


def test_prefetch_prepares_the_next_item_while_the_current_one_is_used():
    import threading

    ready = threading.Event()

    def prepare(item):
        if item == 1:
            ready.set()
        return item

    stream = prefetch(iter(range(3)), prepare, ahead=True)
    assert next(stream) == (0, 0)
    assert ready.wait(timeout=10), "item 1 was not prepared while item 0 was in use"
    stream.close()


def test_precision_auto_means_native_bf16_only():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert resolve_precision("auto", cpu, cpu_bf16=False) == "fp32"  # decoding on a CPU
    assert TrainConfig().precision == "auto"
    with autocast("bf16", cpu):
        assert torch.is_autocast_enabled("cpu")
    with autocast("fp32", cpu):
        assert not torch.is_autocast_enabled("cpu")


def test_attention_stays_off_cudnn_on_cuda_only():
    """cuDNN attention builds a graph per new shape (measured on an H200: bf16 training at 5% of
    TF32's speed); s2s turns it off for CUDA devices and leaves the CPU's settings alone."""
    from s2s.device import shape_stable_attention

    before = torch.backends.cuda.cudnn_sdp_enabled()
    try:
        torch.backends.cuda.enable_cudnn_sdp(True)
        shape_stable_attention(torch.device("cpu"))
        assert torch.backends.cuda.cudnn_sdp_enabled()
        shape_stable_attention(torch.device("cuda"))  # a flag: settable without a GPU
        assert not torch.backends.cuda.cudnn_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(before)

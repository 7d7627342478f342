"""The translator's GPU path where a CPU can test it: batch budgets sized for the device, an
out-of-memory batch halved (the fault injected, the decoding real), memory shares of actors on one
GPU, GPU-only CTranslate2 compute types, and use_gpu where no GPU is visible."""

import pytest
import torch

from s2s import device as s2s_device
from s2s.config import GPU_COMPUTE_TYPES, ConfigError, DecodeConfig, TranslateConfig
from s2s.device import cap_memory, memory_fraction
from s2s.engines.pytorch import _gpu_memory_left
from s2s.translator import (
    CPU_BATCH_LIMITS,
    Translator,
    batch_limits,
    gpu_batch_limits,
    is_out_of_memory,
)

GiB = 2**30
CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture(scope="module")
def beam2(toy_checkpoint) -> DecodeConfig:
    """Batches of ~20 short sentences: a few per call, so later batches exist."""
    return DecodeConfig(checkpoint=toy_checkpoint, beam=2, max_tokens=600)


@pytest.fixture(scope="module")
def sentences(beam2, gettext_pairs) -> list[str]:
    """Held-out sentences (not in the toy model's training slice) of at most 15 tokens: quick to
    decode, and many to a batch."""
    held_out = [s for s, _ in gettext_pairs[5000:6000]]
    lengths = Translator(beam2).tokenizer.encode(held_out)
    return [s for s, ids in zip(held_out, lengths) if len(ids) <= 15][:60]


@pytest.fixture(scope="module")
def expected(beam2, sentences) -> list[str]:
    """The unfaulted translations."""
    return [r.translation for r in Translator(beam2).translate_sentences(sentences)]


def spy(translator: Translator, fail=None) -> list[tuple[int, int, bool]]:
    """Record (rows, padded tokens, failed) of each call to the engine; ``fail(sources)``
    returns the error to raise instead of decoding, or None to decode for real."""
    calls, real = [], translator.engine.decode

    def decode(sources):
        error = fail(sources) if fail else None
        calls.append((len(sources), len(sources) * max(len(s) + 1 for s in sources), bool(error)))
        if error:
            raise error
        return real(sources)

    translator.engine.decode = decode
    return calls


# -- budgets -----------------------------------------------------------------------------------


def test_auto_budgets_on_a_cpu_are_the_old_settings_and_cut_the_same_batches(
    toy_checkpoint, gettext_pairs
):
    assert batch_limits(DecodeConfig(checkpoint="m"), CPU) == CPU_BATCH_LIMITS == (4000, 128)
    texts = [s for s, _ in gettext_pairs[5000:5600]]  # short and long ones
    for beam in (1, 4):
        auto = Translator(DecodeConfig(checkpoint=toy_checkpoint, beam=beam))
        assert (auto.max_tokens, auto.max_sentences) == (4000, 128)
        old = Translator(
            DecodeConfig(checkpoint=toy_checkpoint, beam=beam, max_tokens=4000, max_sentences=128)
        )
        shapes = []
        for translator in (auto, old):
            shapes.append([])
            translator.engine.decode = lambda s, seen=shapes[-1]: seen.append(s) or [[]] * len(s)
            translator.translate_sentences(texts)
        assert shapes[0] == shapes[1] and len(shapes[0]) > 3


def test_gpu_budgets_grow_with_free_memory_within_bounds():
    assert gpu_batch_limits(0) == (4096, 128)  # a nearly full GPU: about the CPU's batch
    assert gpu_batch_limits(4 * GiB) == gpu_batch_limits(None) == (16384, 512)
    assert gpu_batch_limits(7 * GiB + 100 * 2**20) == (28672, 896)  # multiples of 1024 tokens
    assert gpu_batch_limits(8 * GiB) == (32768, 1024)
    assert gpu_batch_limits(140 * GiB) == (65536, 1024)  # an H200 alone: capped
    sizes = [gpu_batch_limits(n * GiB // 2) for n in range(40)]
    assert sizes == sorted(sizes)  # more memory never means smaller batches
    # At beam 4 a GPU batch holds far more than the CPU's ~40 sentences.
    tokens, sentences = gpu_batch_limits(8 * GiB)
    assert tokens // 4 // 25 >= 300 and sentences >= 512


def test_explicit_budgets_win_on_any_device():
    cfg = DecodeConfig(checkpoint="m", max_tokens=6000, max_sentences=50)
    assert batch_limits(cfg, CUDA, 80 * GiB) == batch_limits(cfg, CPU) == (6000, 50)
    half = DecodeConfig(checkpoint="m", max_tokens=6000)  # the other one auto
    assert batch_limits(half, CUDA, 8 * GiB) == (6000, 1024)
    assert batch_limits(half, CPU) == (6000, 128)
    # 0 is auto, not an error
    DecodeConfig(checkpoint="m", max_tokens=0, max_sentences=0).validate()


def test_gpu_memory_left_is_the_free_memory_within_the_actors_share(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (12 * GiB, 16 * GiB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: GiB // 2)
    # Half of a 16 GiB GPU (0.475 of it for the allocator), of which the model holds 0.5 GiB.
    left = _gpu_memory_left(CUDA, memory_fraction(0.5))
    assert left == int(16 * GiB * 0.475 - GiB // 2)
    assert gpu_batch_limits(left) == (28672, 896)
    assert _gpu_memory_left(CUDA, 1.0) == 12 * GiB  # a whole GPU: what is free
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 9 * GiB)
    assert _gpu_memory_left(CUDA, memory_fraction(0.5)) == 0  # over its share: nothing


# -- out of memory -----------------------------------------------------------------------------


def out_of_memory_over(padded_tokens: int):
    """A GPU on which a batch of more than ``padded_tokens`` source positions does not fit."""

    def fail(sources):
        if len(sources) * max(len(s) + 1 for s in sources) > padded_tokens:
            return torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return None

    return fail


def test_an_out_of_memory_batch_is_halved_and_later_batches_stay_small(beam2, sentences, expected):
    translator = Translator(beam2)
    limit = 70  # padded source tokens: the first batch (~300 at beam 2) is far too big
    calls = spy(translator, out_of_memory_over(limit))
    results = translator.translate_sentences(sentences)

    assert [r.translation for r in results] == expected and all(r.error is None for r in results)
    failed = [c for c in calls if c[2]]
    decoded = [c for c in calls if not c[2]]
    first_rows, first_size, _ = calls[0]
    assert 4 * limit < first_size <= 8 * limit and failed  # the fault did strike
    # Halving: a batch up to 8x too big fails at most 1 + 2 + 4 times, not once per sentence.
    assert len(failed) <= 7 < first_rows
    assert all(padded <= limit for _, padded, _ in decoded)
    # Only the first batch failed: the batches after it were cut to the smaller size.
    done, first_ends = 0, None
    for n, (rows, _, failed_call) in enumerate(calls):
        done += 0 if failed_call else rows
        if done == first_rows:
            first_ends = n
            break
    assert first_ends is not None and not any(c[2] for c in calls[first_ends + 1 :])
    assert first_ends + 1 < first_rows  # fewer calls than sentence by sentence (rows + 1)
    assert len(calls) > first_ends + 2  # and there were later batches
    # The smaller size is remembered: the next call cuts its batches to fit at once.
    assert translator.max_tokens // beam2.beam <= limit
    calls.clear()
    translator.translate_sentences(sentences)
    assert calls and not any(c[2] for c in calls)


def test_a_sentence_out_of_memory_alone_gets_an_error_row(beam2, sentences, expected):
    translator = Translator(beam2)
    units = translator.tokenizer.encode(sentences)
    longest = max(range(len(units)), key=lambda i: len(units[i]))
    assert units.count(units[longest]) == 1
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
    spy(translator, lambda sources: oom if units[longest] in sources else None)
    results = translator.translate_sentences(sentences)

    assert results[longest].translation is None
    assert results[longest].error.startswith("decoding failed: OutOfMemoryError: CUDA out of")
    others = [r.translation for i, r in enumerate(results) if i != longest]
    assert others == [t for i, t in enumerate(expected) if i != longest]


def test_a_bad_sentence_is_found_by_bisection(beam2, sentences, expected):
    translator = Translator(beam2)
    units = translator.tokenizer.encode(sentences)
    assert units.count(units[7]) == 1
    calls = spy(translator, lambda s: ValueError("bad input") if units[7] in s else None)
    results = translator.translate_sentences(sentences)

    assert results[7].error == "decoding failed: ValueError: bad input"
    assert [r.translation for i, r in enumerate(results) if i != 7] == expected[:7] + expected[8:]
    batch = max(rows for rows, _, failed in calls if failed)  # the batch that held it
    assert sum(c[2] for c in calls) <= batch.bit_length() + 1 < batch  # log2(n) calls, not n
    assert (translator.max_tokens, translator.max_sentences) == (600, 128)  # not memory


def test_out_of_memory_is_told_from_other_errors():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory."))
    # CTranslate2's message (a plain RuntimeError).
    assert is_out_of_memory(RuntimeError("CUDA failed with error out of memory"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


# -- memory shares, compute types, devices -----------------------------------------------------


def test_actors_sharing_a_gpu_stay_within_their_shares(monkeypatch):
    assert memory_fraction(1.0) is None  # a whole GPU: no cap
    assert memory_fraction(0.5) == pytest.approx(0.475)
    for actors in (2, 3, 4, 8):
        assert actors * memory_fraction(1 / actors) < 1  # together below the device's memory
    capped = []
    monkeypatch.setattr(
        torch.cuda, "set_per_process_memory_fraction", lambda f, d=None: capped.append((f, d))
    )
    assert cap_memory(0.5, CPU) is None and cap_memory(1.0, CUDA) is None and not capped
    assert cap_memory(0.25, CUDA) == pytest.approx(0.2375)
    assert capped == [(pytest.approx(0.2375), CUDA)]


def test_the_translator_caps_its_share_before_loading(toy_checkpoint, monkeypatch):
    """On a CPU the cap is asked for and does nothing; the share reaches it before the model
    takes any memory."""
    import s2s.engines.pytorch as engine

    order, real_load = [], engine.load_checkpoint

    def cap(share, device):
        order.append(("cap", share))
        return cap_memory(share, device)

    monkeypatch.setattr(engine, "cap_memory", cap)
    monkeypatch.setattr(
        engine, "load_checkpoint", lambda *a: order.append(("load",)) or real_load(*a)
    )
    Translator(DecodeConfig(checkpoint=toy_checkpoint, beam=1), gpu_share=0.5)
    assert order == [("cap", 0.5), ("load",)]


@pytest.mark.parametrize("compute_type", GPU_COMPUTE_TYPES)
def test_gpu_compute_types_need_use_gpu(compute_type):
    cfg = TranslateConfig(checkpoint="m", input="i", output="o", compute_type=compute_type)
    with pytest.raises(ConfigError, match=f"^compute_type={compute_type} runs on a GPU only"):
        cfg.validate()
    cfg.use_gpu = True
    cfg.validate()


def test_compute_types_match_what_ctranslate2_computes_on_a_cpu():
    ctranslate2 = pytest.importorskip("ctranslate2")
    on_cpu = ctranslate2.get_supported_compute_types("cpu")
    assert not on_cpu & set(GPU_COMPUTE_TYPES)  # refused without use_gpu: CTranslate2 agrees
    for compute_type in ("float32", "int8", "int8_float32"):  # the ones the message offers
        assert compute_type in on_cpu
        DecodeConfig(checkpoint="m", engine="ctranslate2", compute_type=compute_type).validate()


@pytest.mark.parametrize("engine", ["torch", "ctranslate2"])
def test_use_gpu_without_a_visible_gpu_is_one_line(toy_checkpoint, engine, monkeypatch):
    if engine == "ctranslate2":
        ctranslate2 = pytest.importorskip("ctranslate2")
        monkeypatch.setattr(ctranslate2, "get_cuda_device_count", lambda: 0)
    if torch.cuda.is_available():  # a machine with a GPU: hide it (on a CPU this is real)
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ConfigError) as raised:
        Translator(DecodeConfig(checkpoint=toy_checkpoint, use_gpu=True, engine=engine))
    message = str(raised.value)
    assert message == "use_gpu=true but this process sees no CUDA device (CUDA_VISIBLE_DEVICES=)"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with pytest.raises(ConfigError, match=r"\(CUDA_VISIBLE_DEVICES=<unset>\)$"):
        Translator(DecodeConfig(checkpoint=toy_checkpoint, use_gpu=True, engine=engine))


def test_auto_precision_decodes_in_fp32_on_a_cpu_even_with_native_bf16(toy_checkpoint, monkeypatch):
    monkeypatch.setattr(s2s_device, "native_bf16", lambda device: True)  # an AMX CPU, say
    assert Translator(DecodeConfig(checkpoint=toy_checkpoint, beam=1)).precision == "fp32"
    explicit = Translator(DecodeConfig(checkpoint=toy_checkpoint, beam=1, precision="bf16"))
    assert explicit.precision == "bf16"

"""GPU check: s2s's whole GPU path measured in one run on a one-GPU machine, in at most 8 minutes.

Every section is one entry of ``DIR/gpu_check.json`` and rows of one table printed at the end:

  environment    torch, CUDA, cuDNN; the GPU's name, compute capability, memory and native bf16;
                 Ray; CTranslate2 and the compute types it offers on the device
  corpus         a synthetic parallel corpus made here (a word list, a word-by-word "translation"
                 with reordering: the GPU machine is bare, no download, no gettext catalogs),
                 prepared by ``s2s.prepare`` (or ``--data PREPARED``)
  train_bare     target tokens/s (non-pad) of a bare PyTorch loop (no Ray) for transformer-small
                 and transformer-base at two token budgets, in fp32 (TF32 off), TF32 and bf16,
                 with peak device memory; warm-up steps excluded, the device synchronised
  train_ray      ``s2s train`` on Ray Train (1 worker, precision auto) on the same corpus and
                 budget: tokens/s from its metrics.jsonl, against the bare loop's
  resume         that run continued to twice its steps: it must resume from its checkpoint
  decode         the Translator at its default batch sizes on the device, greedy and beam 4:
                 s2s's torch engine against CTranslate2 on the same checkpoint and sentences
  translate_job  ``s2s translate`` (Ray Data, 2 actors sharing the GPU) against its engine alone
                 on the same documents, with GPU utilisation sampled meanwhile

``--cpu --quick`` runs the same code paths on the CPU at toy sizes in under a minute (CI runs it,
so the script cannot rot); its numbers mean nothing. An error in one section is recorded in its
entry and the others go on; the exit code is 1 when any section failed. Past ``--max-minutes``
the remaining sections are skipped (and recorded so).

    python jobs/gpu_check.py --output DIR [--cpu] [--quick] [--data PREPARED] [--max-minutes 8]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import random
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from s2s import storage
from s2s.batching import collate, token_batches
from s2s.config import DecodeConfig, PrepareConfig, TrainConfig, TranslateConfig, model_preset
from s2s.device import (
    autocast,
    enable_tf32,
    native_bf16,
    resolve_precision,
    shape_stable_attention,
)
from s2s.manifest import read_manifest
from s2s.models import build_model
from s2s.objective import build_optimizer, label_smoothed_loss
from s2s.runlog import read_metrics
from s2s.shards import read_shard
from s2s.tokenizer import PAD_ID

SECTIONS = (
    "environment",
    "corpus",
    "train_bare",
    "train_ray",
    "resume",
    "decode",
    "translate_job",
)
CPU_NOTE = "CPU mode: these numbers are meaningless; this run only proves the code paths work"
NA = "n/a"
# Torch threads per process in CPU mode, whose numbers mean nothing anyway: on a shared 2-core CI
# runner two threads stall on OpenMP barriers whenever another process takes a core (measured:
# beam search 50x slower), and the run must stay well inside its test's time.
CPU_THREADS = 1


@dataclass(frozen=True)
class Sizes:
    """How much of everything: the GPU's sizes, or toy ones (--quick)."""

    pairs: int  # synthetic corpus
    words: int  # its lexicon
    max_words: int  # per sentence
    vocab_size: int
    split_size: int  # valid and test pairs
    budgets: tuple[int, ...]  # training tokens per batch
    warmup: int  # bare-loop steps not timed
    steps: int  # bare-loop steps timed
    ray_steps: int  # the Ray Train run; the resume continues to twice as many
    log_every: int
    eval_sentences: int
    decode_sentences: int
    documents: int
    sentences_per_doc: int
    ray_preset: str  # the model of train_ray, resume, decode and translate_job
    tiny: bool  # shrink the presets' dimensions


FULL = Sizes(
    pairs=100_000,
    words=6000,
    max_words=30,
    vocab_size=8000,
    split_size=1000,
    budgets=(4096, 16384),
    warmup=5,
    steps=30,
    ray_steps=100,
    log_every=10,
    eval_sentences=64,
    decode_sentences=1000,
    documents=300,
    sentences_per_doc=6,
    ray_preset="transformer-base",
    tiny=False,
)
QUICK = Sizes(
    pairs=3000,
    words=800,
    max_words=14,
    vocab_size=400,
    split_size=100,
    budgets=(1024,),
    warmup=1,
    steps=3,
    ray_steps=4,
    log_every=1,
    eval_sentences=8,
    decode_sentences=48,
    documents=24,
    sentences_per_doc=3,
    ray_preset="transformer-small",
    tiny=True,
)
PRESETS = ("transformer-small", "transformer-base")


def model_overrides(preset: str, sizes: Sizes, vocab_size: int) -> dict:
    """The preset as measured: its own dimensions, or a quarter of them (--quick)."""
    overrides: dict = {"vocab_size": vocab_size}
    if sizes.tiny:
        base = model_preset(preset)
        layers = max(1, base.enc_layers // 3)
        overrides |= {
            "d_model": base.d_model // 4,
            "ffn_dim": base.ffn_dim // 8,
            "enc_layers": layers,
            "dec_layers": layers,
            "max_positions": 256,
        }
    return overrides


# -- the corpus ----------------------------------------------------------------------------------

# Syllables of the two sides: the target's look German (umlauts, ß: non-ASCII text on purpose).
_ONSETS = "b d f g h k l m n p r s t v w z st tr br pl sh ch gr fl".split()  # noqa: SIM905
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "y"]
_T_ONSETS = "b d f g h k l m n p r s t w z sch str pf kr gl zw sp fr".split()  # noqa: SIM905
_T_VOWELS = ["a", "e", "i", "o", "u", "ä", "ö", "ü", "ei", "au", "ie", "eu"]
_T_CODAS = ["", "", "n", "r", "t", "ng", "ck", "s", "ß"]


def lexicon(size: int, rng: random.Random) -> list[tuple[str, str]]:
    """``size`` (source word, target word) pairs, both sides distinct, of 1-3 syllables."""
    pairs, seen = [], set()
    while len(pairs) < size:
        n = rng.choice((1, 2, 2, 3))
        src = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(n))
        tgt = "".join(rng.choice(_T_ONSETS) + rng.choice(_T_VOWELS) for _ in range(n))
        tgt += rng.choice(_T_CODAS)
        if src not in seen and tgt not in seen:
            seen |= {src, tgt}
            pairs.append((src, tgt))
    return pairs


def synthetic_pairs(count: int, words: int, max_words: int, seed: int = 0) -> list[tuple[str, str]]:
    """Deterministic sentence pairs: Zipf-like word draws, translated word by word, the second
    word (the "verb") moved to the end, as German does in a subordinate clause."""
    rng = random.Random(seed)
    vocab = lexicon(words, rng)
    pairs = []
    for _ in range(count):
        length = rng.randint(3, max_words)
        picks = [vocab[int(len(vocab) ** rng.random()) - 1] for _ in range(length)]
        src = [s for s, _ in picks]
        tgt = [t for _, t in picks]
        tgt = tgt[:1] + tgt[2:] + tgt[1:2]
        pairs.append((" ".join(src).capitalize() + ".", " ".join(tgt).capitalize() + "."))
    return pairs


def load_examples(root: str, limit: int) -> list[tuple[list[int], list[int]]]:
    """Up to ``limit`` training (source ids, target ids) pairs of a prepared corpus."""
    examples: list[tuple[list[int], list[int]]] = []
    for shard in read_manifest(root)["shards"]["train"]:
        table = read_shard(root, shard["path"], ["src_ids", "tgt_ids"])
        examples += zip(table["src_ids"].to_pylist(), table["tgt_ids"].to_pylist())
        if len(examples) >= limit:
            break
    return examples[:limit]


def held_out_sentences(root: str, count: int) -> list[str]:
    """``count`` source sentences: the test split's, then valid's, then training ones."""
    manifest, sentences = read_manifest(root), []
    for split in ("test", "valid", "train"):
        for shard in manifest["shards"].get(split, []):
            sentences += read_shard(root, shard["path"], ["src"])["src"].to_pylist()
            if len(sentences) >= count:
                return sentences[:count]
    return sentences


# -- measuring -----------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release(device: torch.device) -> None:
    """Give cached device memory back (the next measurement, or a Ray worker, needs it)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def set_precision(precision: str, device: torch.device, defaults: tuple[bool, bool]) -> None:
    """fp32: TF32 off; tf32: s2s.device.enable_tf32; bf16: autocast over the process defaults
    (what a fresh training worker has)."""
    if precision == "tf32":
        enable_tf32(device)
        return
    matmul, cudnn = (False, False) if precision == "fp32" else defaults
    torch.backends.cuda.matmul.allow_tf32 = matmul
    torch.backends.cudnn.allow_tf32 = cudnn


def bare_loop(model_cfg, batches, device: torch.device, precision: str, sizes: Sizes) -> dict:
    """Target tokens/s of forward/backward/clip/step on collated batches, no Ray, no DDP: what
    the trainer does per step, minus everything around it."""
    torch.manual_seed(0)
    model = build_model(model_cfg).to(device).train()
    optimizer = build_optimizer(model, 1e-4)
    shape_stable_attention(device)  # as s2s train does
    compute = autocast("bf16" if precision == "bf16" else "fp32", device)
    if device.type == "cuda":
        release(device)
        torch.cuda.reset_peak_memory_stats(device)
    tokens = positions = 0
    start = 0.0
    for i in range(sizes.warmup + sizes.steps):
        if i == sizes.warmup:
            synchronize(device)
            start = time.perf_counter()
        batch = batches[i % len(batches)]
        src, tgt_in, tgt_out = (
            batch[k].to(device, non_blocking=True) for k in ("src", "tgt_in", "tgt_out")
        )
        with compute:
            logits = model(src, tgt_in)
            loss, _, n = label_smoothed_loss(logits, tgt_out, 0.1)
        optimizer.zero_grad(set_to_none=True)
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # as train's clip_norm=1
        optimizer.step()
        if i >= sizes.warmup:
            tokens += batch["n_tokens"]
            positions += batch["tgt_out"].numel()
    synchronize(device)
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else NA
    del model, optimizer
    release(device)
    return {
        "tokens_per_s": round(tokens / seconds, 1),
        "steps": sizes.steps,
        "padding": round(1 - tokens / positions, 3),
        "seconds": round(seconds, 3),
        "peak_memory_mib": round(peak, 1) if peak != NA else NA,
    }


def make_batches(examples, max_tokens: int, count: int, device: torch.device) -> list[dict]:
    """``count`` collated batches of a token budget (pinned on a GPU host: copies run async)."""
    shuffled = list(examples)
    random.Random(0).shuffle(shuffled)
    batches = []
    for batch in token_batches(shuffled, max_tokens, 10_000):
        tensors = collate(batch)
        if device.type == "cuda":
            tensors = {k: v.pin_memory() for k, v in tensors.items()}
        tensors["n_tokens"] = int((tensors["tgt_out"] != PAD_ID).sum())
        batches.append(tensors)
        if len(batches) >= count:
            break
    return batches


def batch_limits(translator) -> tuple[int, int]:
    """(max_tokens, max_sentences) a Translator resolved for its device (the config's where it
    keeps none of its own)."""
    return (
        getattr(translator, "max_tokens", translator.cfg.max_tokens),
        getattr(translator, "max_sentences", translator.cfg.max_sentences),
    )


class GpuSampler:
    """GPU utilisation and memory every ``period`` s in a background thread (pynvml, else
    nvidia-smi); ``result()`` is "n/a" on a CPU or where neither is there."""

    def __init__(self, enabled: bool, period: float = 0.5) -> None:
        self.enabled, self.period = enabled, period
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read: Callable[[], tuple[float, float] | None] | None = None
        if enabled:
            self._read = self._nvml() or self._smi()

    @staticmethod
    def _nvml():
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        except Exception:
            return None

        def read():
            util = pynvml.nvmlDeviceGetUtilizationRates(handle)
            return float(util.gpu), pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20

        return read

    @staticmethod
    def _smi():
        if not shutil.which("nvidia-smi"):
            return None
        query = [
            "nvidia-smi",
            "--query-gpu=utilization.gpu,memory.used",
            "--format=csv,noheader,nounits",
            "--id=0",
        ]

        def read():
            out = subprocess.run(query, capture_output=True, text=True, timeout=5).stdout
            util, memory = out.strip().splitlines()[0].split(",")
            return float(util), float(memory)

        return read

    def __enter__(self) -> GpuSampler:
        if self._read is not None:
            self._thread = threading.Thread(target=self._run, name="gpu-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                sample = self._read()
            except Exception:
                sample = None
            if sample is not None:
                self.samples.append(sample)
            self._stop.wait(self.period)

    def result(self) -> dict | str:
        if not self.enabled or self._read is None or not self.samples:
            return NA
        utils = [u for u, _ in self.samples]
        return {
            "util_mean_pct": round(sum(utils) / len(utils), 1),
            "util_max_pct": max(utils),
            "memory_max_mib": max(m for _, m in self.samples),
            "samples": len(self.samples),
        }


# -- the check -----------------------------------------------------------------------------------


class SectionFailed(RuntimeError):
    """A section ran but what it checks does not hold; its entry keeps what it measured."""

    def __init__(self, message: str, entry: dict) -> None:
        super().__init__(message)
        self.entry = entry


class Check:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.gpu = not args.cpu
        self.device = torch.device("cuda" if self.gpu else "cpu")
        self.sizes = QUICK if args.quick else FULL
        self.out = Path(args.output).resolve()
        self.work = self.out / "work"
        self.started = time.perf_counter()
        self.deadline = self.started + 60 * args.max_minutes
        self.report: dict = {
            "mode": "gpu" if self.gpu else "cpu",
            "quick": args.quick,
            "note": CPU_NOTE if not self.gpu else "",
            "max_minutes": args.max_minutes,
            "sizes": dataclasses.asdict(self.sizes),
            "sections": {},
        }
        self.data: str | None = None
        self.vocab_size = 0
        self.run_dir = str(self.work / "run")
        self.checkpoint: str | None = None  # what decode and translate_job load
        self.checkpoint_from = ""
        self.ray_started = False
        self.tf32_defaults = (
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
        )
        self.lock = threading.Lock()

    # -- running sections --------------------------------------------------------------------

    def over_time(self) -> bool:
        return time.perf_counter() > self.deadline

    def run(self, name: str, fn: Callable[[], dict]) -> None:
        if self.over_time():
            entry = {"status": "skipped", "reason": f"--max-minutes {self.args.max_minutes} spent"}
            self._record(name, entry)
            return
        print(f"[gpu_check] {name} ...", file=sys.stderr, flush=True)
        self._record(name, {"status": "running"})
        start = time.perf_counter()
        try:
            entry = {"status": "ok", **fn()}
        except SectionFailed as err:
            entry = {"status": "failed", "error": str(err), **err.entry}
        except Exception as err:
            entry = {
                "status": "failed",
                "error": f"{type(err).__name__}: {err}",
                "traceback": traceback.format_exc()[-4000:],
            }
        entry["seconds"] = round(time.perf_counter() - start, 1)
        self._record(name, entry)
        print(
            f"[gpu_check] {name}: {entry['status']} in {entry['seconds']} s",
            file=sys.stderr,
            flush=True,
        )

    def _record(self, name: str, entry: dict) -> None:
        with self.lock:
            self.report["sections"][name] = entry
            self.write_json()

    def write_json(self) -> None:
        """Atomically, after every section: a killed run leaves what it measured."""
        self.report["seconds"] = round(time.perf_counter() - self.started, 1)
        self.out.mkdir(parents=True, exist_ok=True)
        tmp = self.out / "gpu_check.json.tmp"
        tmp.write_text(json.dumps(self.report, indent=2, default=str))
        tmp.replace(self.out / "gpu_check.json")

    def need(self, what: str, value):
        if not value:
            raise RuntimeError(f"needs {what}, which an earlier section did not produce")
        return value

    def start_ray(self) -> None:
        """One embedded local Ray for every stage, sized to this machine."""
        import ray
        from ray.data import DataContext

        if self.ray_started:
            return
        gpus = torch.cuda.device_count() if self.gpu else 0
        ray.init(
            address="local",
            num_cpus=os.cpu_count() or 1,
            num_gpus=gpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
        )
        context = DataContext.get_current()
        context.enable_progress_bars = False
        context.execution_options.verbose_progress = False
        context.execution_no_progress_timeout_s = 120  # a hang fails the section, not the run
        self.ray_started = True

    def stop_ray(self) -> None:
        if not self.ray_started:
            return
        import ray

        done = threading.Thread(target=ray.shutdown, daemon=True)
        done.start()
        done.join(timeout=60)

    # -- sections ----------------------------------------------------------------------------

    def environment(self) -> dict:
        try:  # without Ray the sections that need it fail alone; the bare loop and decoding run
            import ray

            ray_version = ray.__version__
        except ImportError:
            ray_version = "not installed"
        env = {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda or NA,
            "cudnn": torch.backends.cudnn.version() or NA,
            "ray": ray_version,
            "cpus": os.cpu_count(),
            "device": self.device.type,
            "native_bf16": native_bf16(self.device),
        }
        if self.gpu:
            if not torch.cuda.is_available():
                raise RuntimeError("no CUDA device visible to torch (run with --cpu on a CPU)")
            props = torch.cuda.get_device_properties(self.device)
            env |= {
                "gpu": props.name,
                "gpus": torch.cuda.device_count(),
                "compute_capability": f"{props.major}.{props.minor}",
                "gpu_memory_gib": round(props.total_memory / 2**30, 1),
                "driver": self._driver_version(),
            }
        else:
            env |= dict.fromkeys(
                ("gpu", "gpus", "compute_capability", "gpu_memory_gib", "driver"), NA
            )
        try:
            import ctranslate2
        except ImportError:
            env |= {"ctranslate2": "not installed", "ct2_cuda_devices": 0, "ct2_compute_types": []}
            return env
        env["ctranslate2"] = ctranslate2.__version__
        try:  # a wheel without the CUDA libraries it was built for fails here: say so
            env["ct2_cuda_devices"] = ctranslate2.get_cuda_device_count()
            env["ct2_compute_types"] = sorted(
                ctranslate2.get_supported_compute_types(self.device.type)
            )
        except Exception as err:
            env["ct2_error"] = f"{type(err).__name__}: {err}"
            env.setdefault("ct2_compute_types", [])
        return env

    @staticmethod
    def _driver_version() -> str:
        if not shutil.which("nvidia-smi"):
            return NA
        query = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader", "--id=0"]
        try:
            return subprocess.run(query, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return NA

    def corpus(self) -> dict:
        sizes = self.sizes
        if self.args.data:
            data = storage.absolute(self.args.data)
            manifest = read_manifest(data)
            self.data, self.vocab_size = data, manifest["tokenizer"]["vocab_size"]
            return {
                "data": self.data,
                "generated": False,
                "vocab_size": self.vocab_size,
                "kept": manifest["counts"]["kept"],
            }
        start = time.perf_counter()
        pairs = synthetic_pairs(sizes.pairs, sizes.words, sizes.max_words)
        tsv = self.work / "corpus" / "synthetic.tsv"
        tsv.parent.mkdir(parents=True, exist_ok=True)
        tsv.write_text("".join(f"{s}\t{t}\n" for s, t in pairs), encoding="utf-8")
        generated = time.perf_counter() - start
        from s2s.prepare import prepare_corpus  # Ray: not needed with --data

        self.start_ray()
        self.data = str(self.work / "prepared")
        result = prepare_corpus(
            PrepareConfig(
                inputs=[str(tsv)],
                output=self.data,
                overwrite=True,
                vocab_size=sizes.vocab_size,
                valid_size=sizes.split_size,
                test_size=sizes.split_size,
            )
        )
        self.vocab_size = result.manifest["tokenizer"]["vocab_size"]
        return {
            "data": self.data,
            "generated": True,
            "pairs": len(pairs),
            "vocab_size": self.vocab_size,
            "kept": result.manifest["counts"]["kept"],
            "generate_s": round(generated, 2),
            "prepare_s": round(result.seconds, 2),
        }

    def precisions(self) -> list[str]:
        if self.gpu:
            return ["fp32", "tf32"] + (["bf16"] if native_bf16(self.device) else [])
        return ["fp32"] + (["bf16"] if native_bf16(self.device) else [])

    def train_precision(self) -> str:
        """What ``s2s train`` computes in at precision=auto, named as train_bare names it."""
        resolved = resolve_precision("auto", self.device)
        return "tf32" if resolved == "fp32" and self.gpu else resolved

    def train_bare(self) -> dict:
        sizes = self.sizes
        data = self.need("a prepared corpus", self.data)
        examples = load_examples(data, 200_000 if not sizes.tiny else 20_000)
        runs, skipped = [], 0
        try:
            for preset in PRESETS:
                model_cfg = model_preset(preset, model_overrides(preset, sizes, self.vocab_size))
                for budget in sizes.budgets:
                    count = sizes.warmup + sizes.steps
                    batches = make_batches(examples, budget, count, self.device)
                    for precision in self.precisions():
                        case = {"preset": preset, "max_tokens": budget, "precision": precision}
                        if self.over_time():
                            skipped += 1
                            runs.append({**case, "status": "skipped"})
                            continue
                        set_precision(precision, self.device, self.tf32_defaults)
                        try:
                            run = bare_loop(model_cfg, batches, self.device, precision, sizes)
                            runs.append({**case, "status": "ok", **run})
                        except Exception as err:  # an out-of-memory cell: record it, go on
                            release(self.device)
                            runs.append({**case, "status": "failed", "error": repr(err)[:500]})
        finally:
            set_precision("bf16", self.device, self.tf32_defaults)  # the process defaults back
        entry = {"runs": runs, "skipped_runs": skipped}
        failed = [r for r in runs if r["status"] == "failed"]
        if failed:
            raise SectionFailed(f"{len(failed)} of {len(runs)} runs failed", entry)
        return entry

    def _train_config(self, steps: int) -> TrainConfig:
        sizes = self.sizes
        preset = sizes.ray_preset
        return TrainConfig(
            data=self.need("a prepared corpus", self.data),
            output=self.run_dir,
            preset=preset,
            model=model_preset(preset, model_overrides(preset, sizes, self.vocab_size)),
            workers="1",
            use_gpu=self.gpu,
            max_steps=steps,
            max_tokens=max(sizes.budgets),
            log_every=sizes.log_every,
            eval_every=10**9,
            checkpoint_every=10**9,
            eval_sentences=sizes.eval_sentences,
            wait_for_workers_s=60,
            # A bound, not a budget: the run stops at max_steps long before (time counts
            # across the resume too).
            max_time_min=max(self.args.max_minutes, 1.0),
            max_failures=0,
            torch_threads=CPU_THREADS if not self.gpu else 0,
        )

    def _window_rate(self, lines: list[dict], first_step: int) -> float:
        """Mean tgt_tokens_per_s of a run's log windows after ``first_step``, the first
        (start-up, warm-up) window of the session excluded."""
        windows = [m for m in lines if "tgt_tokens_per_s" in m and m["step"] > first_step][1:]
        if not windows:
            raise RuntimeError(f"no log windows after step {first_step} in {self.run_dir}")
        return sum(m["tgt_tokens_per_s"] for m in windows) / len(windows)

    def _bare_rate(self, preset: str, budget: int, precision: str) -> float:
        """The bare loop's rate for the case (from train_bare, or measured now)."""
        for run in self.report["sections"].get("train_bare", {}).get("runs", []):
            case = (run["preset"], run["max_tokens"], run["precision"])
            if case == (preset, budget, precision) and run.get("status") == "ok":
                return run["tokens_per_s"]
        examples = load_examples(self.data, 200_000)
        batches = make_batches(examples, budget, self.sizes.warmup + self.sizes.steps, self.device)
        set_precision(precision, self.device, self.tf32_defaults)
        model_cfg = model_preset(preset, model_overrides(preset, self.sizes, self.vocab_size))
        try:
            return bare_loop(model_cfg, batches, self.device, precision, self.sizes)["tokens_per_s"]
        finally:
            set_precision("bf16", self.device, self.tf32_defaults)

    def train_ray(self) -> dict:
        from s2s.train import train

        self.start_ray()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        cfg = self._train_config(self.sizes.ray_steps)
        result = train(cfg)
        self.checkpoint, self.checkpoint_from = result.checkpoint, "s2s train"
        rate = self._window_rate(read_metrics(self.run_dir), 0)
        precision = self.train_precision()
        bare = self._bare_rate(cfg.preset, cfg.max_tokens, precision)
        return {
            "preset": cfg.preset,
            "max_tokens": cfg.max_tokens,
            "precision": precision,
            "workers": 1,
            "steps": result.metrics.get("step"),
            "tokens_per_s": round(rate, 1),
            "bare_tokens_per_s": bare,
            "ray_vs_bare": round(rate / bare, 3),
            "checkpoint": result.checkpoint,
        }

    def resume(self) -> dict:
        from s2s.train import train

        first = self.sizes.ray_steps
        self.need("train_ray's run", self.checkpoint)
        result = train(self._train_config(2 * first))
        if result.checkpoint:
            self.checkpoint, self.checkpoint_from = result.checkpoint, "s2s train, resumed"
        lines = read_metrics(self.run_dir)
        state_uri = storage.join(
            self.need("a checkpoint of the resumed run", result.checkpoint), "trainer_state.json"
        )
        state = json.loads(storage.read_bytes(state_uri))
        final_step = result.metrics.get("step")
        entry = {
            "steps": [first, 2 * first],
            "final_step": final_step,
            "last_logged_step": lines[-1]["step"] if lines else None,
            "resumed_from": state.get("resumed_from"),
            "checkpoint": result.checkpoint,
        }
        passed = final_step == 2 * first and first in (state.get("resumed_from") or [])
        entry["passed"] = passed
        try:
            entry["tokens_per_s"] = round(self._window_rate(lines, first), 1)
        except RuntimeError:
            entry["tokens_per_s"] = NA
        if not passed:
            raise SectionFailed(
                f"the second run did not resume: final step {final_step} (want {2 * first}), "
                f"resumed_from {state.get('resumed_from')} (want [{first}])",
                entry,
            )
        return entry

    def _checkpoint(self) -> tuple[str, str]:
        """(checkpoint, where it came from): train's, else a fresh model saved here."""
        if self.checkpoint:
            return self.checkpoint, self.checkpoint_from
        from s2s.checkpoint import save_checkpoint

        data = self.need("a prepared corpus", self.data)
        proto = storage.read_bytes(storage.join(data, read_manifest(data)["tokenizer"]["file"]))
        preset = self.sizes.ray_preset
        model_cfg = model_preset(preset, model_overrides(preset, self.sizes, self.vocab_size))
        torch.manual_seed(0)
        path = str(self.work / "fresh-checkpoint")
        save_checkpoint(path, build_model(model_cfg).eval(), model_cfg, proto, {"step": 0})
        self.checkpoint, self.checkpoint_from = path, "untrained (s2s train failed)"
        return path, self.checkpoint_from

    def _time_translator(self, cfg: DecodeConfig, sentences: list[str]) -> dict:
        from s2s.translator import Translator

        translator = Translator(cfg)
        chosen = batch_limits(translator)
        try:
            translator.translate_sentences(sentences[:32])  # warm-up: kernels, allocator
            synchronize(self.device)
            start = time.perf_counter()
            results = translator.translate_sentences(sentences)
            synchronize(self.device)
            seconds = time.perf_counter() - start
            tokens = sum(r.tgt_tokens for r in results)
            return {
                "tokens_per_s": round(tokens / seconds, 1),
                "sentences_per_s": round(len(sentences) / seconds, 1),
                "output_tokens": tokens,
                "seconds": round(seconds, 3),
                "failed_sentences": sum(r.error is not None for r in results),
                "max_tokens": chosen[0],
                "max_sentences": chosen[1],
                # Lowered during the run (out of memory, then retried smaller), or as chosen.
                "max_tokens_end": batch_limits(translator)[0],
                "max_sentences_end": batch_limits(translator)[1],
            }
        finally:
            del translator
            release(self.device)

    def decode(self) -> dict:
        from s2s.engines.ctranslate2 import export_ctranslate2

        checkpoint, source = self._checkpoint()
        sentences = held_out_sentences(self.data, self.sizes.decode_sentences)
        exported = str(self.work / "ct2")
        shutil.rmtree(exported, ignore_errors=True)
        engines: list[tuple[str, dict]] = [("torch", {"checkpoint": checkpoint})]
        ct2 = {"checkpoint": exported, "engine": "ctranslate2"}
        try:
            export_ctranslate2(checkpoint, exported)
        except Exception as err:
            ct2 = {"error": f"export: {type(err).__name__}: {err}"}
        engines.append(("ct2", ct2))
        # On a GPU also at bf16, as the torch engine computes there (precision=auto).
        if self.gpu and native_bf16(self.device) and "error" not in ct2:
            engines.append(("ct2 bf16", {**ct2, "compute_type": "bfloat16"}))
        runs = []
        for beam in (1, 4):
            for name, settings in engines:
                run = {"engine": name, "beam": beam}
                if "error" in settings:
                    runs.append({**run, "error": settings["error"]})
                    continue
                cfg = DecodeConfig(**settings, beam=beam, use_gpu=self.gpu)
                if name == "torch":
                    run["precision"] = resolve_precision(cfg.precision, self.device, cpu_bf16=False)
                try:
                    runs.append({**run, **self._time_translator(cfg, sentences)})
                except Exception as err:
                    runs.append({**run, "error": f"{type(err).__name__}: {err}"[:1000]})
        rates = {(r["engine"], r["beam"]): r.get("tokens_per_s") for r in runs}
        for run in runs:
            for other, key in (("ct2", "torch_vs_ct2"), ("ct2 bf16", "torch_vs_ct2_bf16")):
                rate = rates.get((other, run["beam"]))
                if run["engine"] == "torch" and run.get("tokens_per_s") and rate:
                    run[key] = round(run["tokens_per_s"] / rate, 3)
        entry = {
            "checkpoint": checkpoint,
            "checkpoint_from": source,
            "sentences": len(sentences),
            "runs": runs,
        }
        bad = [r for r in runs if "error" in r or r.get("failed_sentences")]
        if bad:
            raise SectionFailed(f"{len(bad)} of {len(runs)} decoding runs failed", entry)
        return entry

    def translate_job(self) -> dict:
        from s2s.translate import translate
        from s2s.translator import Translator

        sizes = self.sizes
        checkpoint, source = self._checkpoint()
        self.start_ray()
        per_doc = sizes.sentences_per_doc
        sentences = held_out_sentences(self.data, sizes.documents * per_doc)
        half = per_doc // 2
        texts = [
            " ".join(sentences[i : i + half]) + "\n\n" + " ".join(sentences[i + half : i + per_doc])
            for i in range(0, len(sentences) - per_doc + 1, per_doc)
        ]
        docs = self.work / "docs"
        shutil.rmtree(docs, ignore_errors=True)
        docs.mkdir(parents=True)
        per_file = max(1, len(texts) // 4)
        for f in range(0, len(texts), per_file):
            with open(docs / f"part-{f // per_file:04d}.jsonl", "w", encoding="utf-8") as out:
                for n, text in enumerate(texts[f : f + per_file]):
                    out.write(json.dumps({"id": f + n, "text": text}) + "\n")
        total_bytes = sum(p.stat().st_size for p in docs.iterdir())
        # Pieces of 1/8 of the input: work for both actors (one 4 MB piece would feed one).
        piece_mb = max(1e-4, total_bytes / 8 / 2**20)
        settings = {"checkpoint": checkpoint, "use_gpu": self.gpu}

        engine = Translator(DecodeConfig(**settings))
        try:
            engine.translate_documents(texts[:8])  # warm-up
            synchronize(self.device)
            with GpuSampler(self.gpu) as engine_gpu:
                start = time.perf_counter()
                results = engine.translate_documents(texts)
                synchronize(self.device)
                engine_s = time.perf_counter() - start
        finally:
            del engine
            release(self.device)
        engine_tokens = sum(r.tgt_tokens for r in results)
        engine_errors = sum(r.error is not None for r in results)

        cfg = TranslateConfig(
            **settings,
            input=str(docs),
            output=str(self.work / "translations"),
            overwrite=True,
            concurrency="2",
            gpus_per_actor=0.5 if self.gpu else 1.0,
            cpus_per_actor=1.0,
            piece_mb=piece_mb,
        )
        with GpuSampler(self.gpu) as job_gpu:
            start = time.perf_counter()
            summary = translate(cfg).summary
            job_s = time.perf_counter() - start
        job_rate = summary["tgt_tokens"] / job_s
        engine_rate = engine_tokens / engine_s
        entry = {
            "checkpoint_from": source,
            "documents": len(texts),
            "sentences": len(sentences),
            "beam": cfg.beam,
            "actors": 2,
            "gpus_per_actor": cfg.gpus_per_actor if self.gpu else NA,
            "piece_mb": round(piece_mb, 4),
            "engine": {
                "tokens_per_s": round(engine_rate, 1),
                "seconds": round(engine_s, 2),
                "output_tokens": engine_tokens,
                "errors": engine_errors,
                "gpu": engine_gpu.result(),
            },
            "job": {
                "tokens_per_s": round(job_rate, 1),
                "seconds": round(job_s, 2),
                "output_tokens": summary["tgt_tokens"],
                "documents": summary["documents"],
                "errors": summary["errors"],
                "planning_s": summary.get("planning_s"),
                "gpu": job_gpu.result(),
            },
            "job_vs_engine": round(job_rate / engine_rate, 3),
        }
        problems = []
        if engine_errors or summary["errors"]:
            problems.append(f"errors: engine {engine_errors}, job {summary['errors']}")
        if summary["documents"] != len(texts):
            problems.append(f"the job translated {summary['documents']} of {len(texts)} documents")
        if problems:
            raise SectionFailed("; ".join(problems), entry)
        return entry

    # -- the whole ----------------------------------------------------------------------------

    def main(self) -> int:
        if not self.gpu:
            torch.set_num_threads(CPU_THREADS)
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        watchdog = threading.Timer(60 * (self.args.max_minutes + 2), self._watchdog)
        watchdog.daemon = True
        watchdog.start()
        try:
            for name in SECTIONS:
                self.run(name, getattr(self, name))
        finally:
            self.stop_ray()
            watchdog.cancel()
        return self.finish()

    def _watchdog(self) -> None:
        """A stage that hangs past every bound: keep what was measured, then stop hard."""
        with self.lock:
            for entry in self.report["sections"].values():
                if entry.get("status") == "running":
                    entry.update(status="failed", error="still running past --max-minutes + 2")
        self.finish()
        self.stop_ray()
        os._exit(1)

    def finish(self) -> int:
        sections = self.report["sections"]
        for name in SECTIONS:
            sections.setdefault(name, {"status": "skipped", "reason": "not reached"})
        failed = [n for n in SECTIONS if sections[n]["status"] == "failed"]
        skipped = [n for n in SECTIONS if sections[n]["status"] == "skipped"]
        ok = [n for n in SECTIONS if sections[n]["status"] == "ok"]
        self.report["summary"] = {"ok": ok, "failed": failed, "skipped": skipped}
        with self.lock:
            self.write_json()
        print(render_table(self.report))
        print(
            f"gpu_check: {len(SECTIONS) - len(failed) - len(skipped)}/{len(SECTIONS)} sections ok"
            + (f", failed: {', '.join(failed)}" if failed else "")
            + (f", skipped: {', '.join(skipped)}" if skipped else "")
            + f"; {self.report['seconds']:.0f} s; {self.out / 'gpu_check.json'}",
            flush=True,
        )
        return 1 if failed else 0


# -- the table -----------------------------------------------------------------------------------


def _rate(value) -> str:
    return f"{value:,.0f}" if isinstance(value, (int, float)) else str(value)


def _gpu(result) -> str:
    if not isinstance(result, dict):
        return f"GPU util {result}"
    return (
        f"GPU util mean {result['util_mean_pct']:.0f}% max {result['util_max_pct']:.0f}%, "
        f"memory {result['memory_max_mib']:,.0f} MiB"
    )


def section_rows(name: str, entry: dict) -> list[tuple[str, str, str, str]]:
    """(case, tokens/s, vs, detail) rows of one section that ran."""
    if name == "environment":
        detail = "compute types: " + ", ".join(entry.get("ct2_compute_types") or [])
        detail += f", CUDA devices {entry.get('ct2_cuda_devices')}"
        detail += f", error: {entry['ct2_error']}" if "ct2_error" in entry else ""
        return [("ctranslate2 " + str(entry.get("ctranslate2")), "", "", detail)]
    if name == "corpus":
        detail = f"vocab {entry.get('vocab_size')}, kept {entry.get('kept')}"
        if entry.get("generated"):
            detail += f", prepare {entry.get('prepare_s')} s"
        return [
            (
                f"{entry.get('pairs', '')} pairs" if entry.get("generated") else "--data",
                "",
                "",
                detail,
            )
        ]
    if name == "train_bare":
        rows = []
        for r in entry.get("runs", []):
            case = f"{r['preset']}, {r['max_tokens']} tok, {r['precision']}"
            if r["status"] != "ok":
                rows.append((case, "", "", r["status"] + ": " + r.get("error", "")))
                continue
            peak = r["peak_memory_mib"]
            memory = f"peak {peak / 1024:.2f} GiB" if isinstance(peak, float) else f"peak {peak}"
            rows.append((case, _rate(r["tokens_per_s"]), "", f"{memory}, pad {r['padding']:.0%}"))
        return rows
    if name == "train_ray":
        case = (
            f"Ray Train 1 worker, {entry['preset']}, {entry['max_tokens']} tok, "
            f"{entry['precision']}"
        )
        return [
            (
                case,
                _rate(entry["tokens_per_s"]),
                f"{entry['ray_vs_bare']:.2f}x bare",
                f"bare {_rate(entry['bare_tokens_per_s'])}",
            )
        ]
    if name == "resume":
        steps = entry.get("steps", ["?", "?"])
        case = f"steps {steps[0]} -> {steps[1]}"
        verdict = "passed" if entry.get("passed") else "FAILED"
        detail = (
            f"{verdict}: final step {entry.get('final_step')}, "
            f"resumed_from {entry.get('resumed_from')}"
        )
        return [(case, _rate(entry.get("tokens_per_s", "")), "", detail)]
    if name == "decode":
        rows = []
        for r in entry.get("runs", []):
            search = "greedy" if r["beam"] == 1 else f"beam {r['beam']}"
            case = f"{r['engine']} {search}"
            if "error" in r:
                rows.append((case, "", "", "error: " + r["error"][:200]))
                continue
            vs = " / ".join(
                f"{r[key]:.2f}x {name}"
                for key, name in (("torch_vs_ct2", "ct2"), ("torch_vs_ct2_bf16", "ct2 bf16"))
                if key in r
            )
            detail = f"batch <= {r['max_sentences']} sent / {r['max_tokens']} tok"
            end = (r["max_sentences_end"], r["max_tokens_end"])
            if end != (r["max_sentences"], r["max_tokens"]):
                detail += f" (lowered to {end[0]} / {end[1]})"
            detail += f", {r['precision']}" if "precision" in r else ""
            detail += f", {r['failed_sentences']} failed" if r["failed_sentences"] else ""
            rows.append((case, _rate(r["tokens_per_s"]), vs, detail))
        return rows
    if name == "translate_job":
        engine, job = entry["engine"], entry["job"]
        docs = f"{entry['documents']} docs, beam {entry['beam']}"
        return [
            (f"engine alone, {docs}", _rate(engine["tokens_per_s"]), "", _gpu(engine["gpu"])),
            (
                f"job, {entry['actors']} actors x {entry['gpus_per_actor']} GPU",
                _rate(job["tokens_per_s"]),
                f"{entry['job_vs_engine']:.2f}x engine",
                _gpu(job["gpu"]),
            ),
        ]
    return []


def render_table(report: dict) -> str:
    env = report["sections"].get("environment", {})
    head = (
        f"s2s GPU check ({report['mode']}{', quick' if report['quick'] else ''}): "
        f"{env.get('gpu', '?')} (compute {env.get('compute_capability', '?')}, "
        f"{env.get('gpu_memory_gib', '?')} GiB, native bf16 {env.get('native_bf16', '?')}, "
        f"driver {env.get('driver', '?')}), torch {env.get('torch', '?')} CUDA "
        f"{env.get('cuda', '?')}, Ray {env.get('ray', '?')}, {env.get('cpus', '?')} CPUs"
    )
    lines = [head]
    if report["note"]:
        lines.append(f"** {report['note']} **")
    lines += [
        "",
        "tokens/s = target (output) tokens per second, padding excluded",
        "",
        "| section | case | tokens/s | vs | detail | status |",
        "|---|---|---:|---|---|---|",
    ]
    for name in SECTIONS:
        entry = report["sections"].get(name, {"status": "skipped"})
        status = entry["status"]
        rows: list[tuple[str, str, str, str]] = []
        measured = set(entry) - {"status", "error", "traceback", "seconds"}
        if status == "ok" or (status == "failed" and measured):
            try:
                rows = section_rows(name, entry)
            except (KeyError, TypeError):  # a failed section without its numbers
                rows = []
        if status == "failed":
            rows.append(("", "", "", "error: " + str(entry.get("error", ""))[:300]))
        if not rows:
            rows = [("", "", "", entry.get("reason", ""))]
        for i, (case, rate, vs, detail) in enumerate(rows):
            cells = [
                name if i == 0 else "",
                case,
                rate,
                vs,
                detail.replace("|", "/"),
                status if i == 0 else "",
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="DIR: writes DIR/gpu_check.json")
    parser.add_argument("--cpu", action="store_true", help="on the CPU (numbers meaningless)")
    parser.add_argument("--quick", action="store_true", help="toy sizes: every path, in seconds")
    parser.add_argument("--data", help="a prepared corpus to use instead of a synthetic one")
    parser.add_argument(
        "--max-minutes", type=float, default=8.0, help="skip the sections left once this is spent"
    )
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        parser.error("no CUDA device visible to torch: run with --cpu (--quick) on a CPU")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    return Check(args).main()


if __name__ == "__main__":
    sys.exit(main())

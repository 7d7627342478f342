"""Stage 2, ``s2s train``: data-parallel training of a seq2seq model on Ray Train.

The shape follows Ray's documented loop: a ``TorchTrainer`` runs :func:`_train_worker` on N
workers (DDP: gloo on CPU, NCCL on GPU), or on MIN..MAX workers for an elastic run. Each worker
restores from ``ray.train.get_checkpoint()`` at the top, builds the epoch's batches from the
corpus shards in an order that depends on (seed, epoch) alone (:mod:`s2s.sampler`), trains on its
share of every step, and every rank calls ``ray.train.report`` (rank 0 with the checkpoint, which
Ray Train uploads while training goes on). Batching, the data order, loss, models and checkpoint
I/O are Ray-free modules; this one wires them together.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass, field

import ray
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
import yaml
from ray.train import (
    Checkpoint,
    CheckpointConfig,
    CheckpointUploadMode,
    FailureConfig,
    RunConfig,
    ScalingConfig,
)
from torch.nn.parallel import DistributedDataParallel

from s2s import cluster, storage
from s2s.batching import collate, prefetch, to_device
from s2s.checkpoint import (
    TrainerState,
    list_checkpoints,
    load_weights,
    read_model_config,
    restore_training,
    save_checkpoint,
    validate_checkpoint,
)
from s2s.config import ConfigError, ModelConfig, TrainConfig
from s2s.device import autocast, enable_tf32, resolve_precision, shape_stable_attention
from s2s.manifest import read_manifest
from s2s.models import build_model
from s2s.objective import build_optimizer, label_smoothed_loss, lr_multiplier
from s2s.placeholders import mask_pair, placeholder_pattern, restore, strip_sentinels
from s2s.runlog import CURVES_NAME, METRICS_NAME, plot_curves, read_metrics, write_metrics
from s2s.sampler import DataDigest, EpochPlan, steps
from s2s.scoring import score
from s2s.search import greedy_search
from s2s.shards import read_shard
from s2s.tokenizer import TokenizerFiles

__all__ = ["train", "TrainResult"]

log = logging.getLogger(__name__)
CONFIG_NAME = "train_config.yaml"  # what `s2s train --resume RUN` starts from
BEST_NAME = "best"  # the checkpoint with the best validation BLEU so far


@dataclass
class TrainResult:
    """What :func:`train` returns: where the run is, its last checkpoint and final metrics."""

    output: str  # the run directory (absolute, local or s3://)
    checkpoint: str | None  # URI of the last checkpoint
    metrics: dict


def train(cfg: TrainConfig) -> TrainResult:
    """Train on the current Ray cluster (starting a local one if none); return the last checkpoint.

    Raises:
        ConfigError, StorageError, ManifestError: before any worker starts, for bad settings, a
            missing or incomplete corpus, or an unwritable output.
    """
    cfg.validate()
    cfg = dataclasses.replace(
        cfg, data=storage.absolute(cfg.data), output=storage.absolute(cfg.output)
    )
    manifest = read_manifest(cfg.data)
    tokenizers = TokenizerFiles.read(cfg.data)
    cfg.model.vocab_size = tokenizers.load(name=cfg.data)[0].vocab_size
    if cfg.init_from:
        cfg.model = _init_model(cfg, tokenizers)
    if not manifest["shards"].get("train"):
        raise ConfigError(f"{cfg.data} has no training shards")
    cluster.connect()
    place = cluster.check_local_paths([cfg.data, cfg.output], cfg.shared_fs)
    storage.check_output(cfg.output)
    resumable = list_checkpoints(cfg.output)
    if resumable:  # Ray Train resumes from the newest: check it here, not in every worker
        validate_checkpoint(resumable[-1][1])
    config_uri = storage.join(cfg.output, CONFIG_NAME)
    storage.write_bytes(
        config_uri, yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False).encode()
    )
    min_workers = cfg.worker_range()[0]
    per_worker = {"CPU": cfg.cpus_per_worker, "GPU": 1.0 if cfg.use_gpu else 0.0}
    cluster.wait_for_capacity(
        per_worker, min_workers, f"train with {min_workers} worker(s)", cfg.wait_for_workers_s
    )
    trainer = _trainer(cfg, manifest, tokenizers, place.get("label_selector"))
    metrics_uri, curves_uri = (storage.join(cfg.output, n) for n in (METRICS_NAME, CURVES_NAME))
    # Said up front: metrics.jsonl is rewritten at each checkpoint, so a run can be followed.
    log.info("metrics: %s (each checkpoint), curves: %s (at the end)", metrics_uri, curves_uri)
    result = trainer.fit()
    plot_curves(cfg.output)
    curves = curves_uri if storage.exists(curves_uri) else "not drawn (no matplotlib)"
    log.info("training done: metrics %s, curves %s", metrics_uri, curves)
    checkpoint = None
    if result.checkpoint is not None:
        prefix = "s3://" if storage.is_s3(cfg.output) else ""
        checkpoint = prefix + result.checkpoint.path
    return TrainResult(cfg.output, checkpoint, dict(result.metrics or {}))


def _trainer(
    cfg: TrainConfig,
    manifest: dict,
    tokenizers: TokenizerFiles,
    label_selector: dict[str, str] | None,
) -> ray.train.torch.TorchTrainer:
    """The run's TorchTrainer, in Ray's documented shape; what every worker receives goes in
    ``train_loop_config`` (read back in :func:`_train_worker`)."""
    min_workers, max_workers = cfg.worker_range()
    scaling = ScalingConfig(
        num_workers=(min_workers, max_workers) if min_workers < max_workers else min_workers,
        use_gpu=cfg.use_gpu,
        resources_per_worker={"CPU": cfg.cpus_per_worker},
        # One node and local paths: keep the workers there even if a node joins later.
        label_selector=label_selector,
        elastic_resize_monitor_interval_s=cfg.resize_interval_s,
    )
    run_fs, run_path = storage.filesystem(cfg.output)
    run = RunConfig(
        name=os.path.basename(run_path),
        storage_path=os.path.dirname(run_path),
        storage_filesystem=run_fs,
        failure_config=FailureConfig(max_failures=cfg.max_failures),
        checkpoint_config=CheckpointConfig(num_to_keep=cfg.keep_last),
    )
    loop_config = {
        "cfg": cfg,
        "tokenizers": tokenizers,
        "valid": _valid_subset(cfg, manifest),
        "shards": manifest["shards"]["train"],
    }
    return ray.train.torch.TorchTrainer(
        _train_worker, train_loop_config=loop_config, scaling_config=scaling, run_config=run
    )


def _valid_subset(cfg: TrainConfig, manifest: dict) -> list[ValidPair]:
    """The first ``eval_sentences`` valid pairs."""
    protected = manifest["tokenizer"].get("placeholders")  # None: ids hold no sentinels
    pattern = placeholder_pattern(protected["pattern"]) if protected else None
    columns = ("src_ids", "tgt_ids", "tgt", "src")
    subset: list[ValidPair] = []
    for shard in manifest["shards"].get("valid", []):
        table = read_shard(cfg.data, shard["path"], list(columns))
        for src_ids, tgt_ids, ref, src in zip(*(table[c].to_pylist() for c in columns)):
            spans = mask_pair(src, ref, pattern)[0].spans if pattern else ()
            subset.append(ValidPair(src_ids, tgt_ids, ref, spans))
            if len(subset) >= cfg.eval_sentences:
                return subset
    return subset


# torch 2.13 renamed DDP's broadcast_buffers (and warns in every worker's log on the old name).
_NO_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)


def _train_worker(config: dict) -> None:
    """The per-worker loop (runs on every Ray Train worker)."""
    cfg: TrainConfig = config["cfg"]
    _log_to_stderr()
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if not cfg.use_gpu:
        torch.set_num_threads(cfg.torch_threads or _node_cores(ctx.get_local_world_size()))
    device = ray.train.torch.get_device()
    restored = ray.train.get_checkpoint()
    if restored is None:
        model, optimizer, state = build_training(cfg, device)
    else:
        with restored.as_directory() as directory:
            model, optimizer, state = build_training(cfg, device, directory)
    # The model is on its device already; DDP need not re-send the constant buffers (the
    # sinusoidal position table) to every rank before every forward pass.
    ddp = ray.train.torch.prepare_model(
        model, move_to_device=False, parallel_strategy_kwargs=_NO_BUFFER_SYNC
    )
    plan = EpochPlan(
        cfg.data, config["shards"], cfg.shuffle, cfg.shuffle_buffer, cfg.max_tokens, cfg.seed
    )
    setup = _Setup(
        model=model,
        ddp=ddp,
        optimizer=optimizer,
        state=state,
        rank=rank,
        world=world,
        device=device,
        tokenizers=config["tokenizers"],
        valid=config["valid"],
    )
    _Loop(cfg, setup).run(plan)


def build_training(
    cfg: TrainConfig, device: torch.device, checkpoint: str | None = None
) -> tuple[torch.nn.Module, torch.optim.Optimizer, TrainerState]:
    """(model, optimizer, trainer state) on ``device``, fresh or restored from ``checkpoint``.

    The order matters on a GPU: the model goes to its device *before* the optimizer exists and
    its state is restored, so that ``load_state_dict`` puts every moment estimate next to its
    parameter. (Restored first and moved after, the state would stay on the CPU and the first
    ``optimizer.step()`` would meet tensors on two devices.)
    """
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    model = build_model(cfg.model).to(device)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay)
    state = TrainerState()
    if checkpoint is not None:
        state = restore_training(checkpoint, model, optimizer)
        state.resumed_from.append(state.step)
    elif cfg.init_from:  # fine-tuning: the weights only; step 0 and a fresh optimizer
        load_weights(cfg.init_from, model)
    return model, optimizer, state


def _init_model(cfg: TrainConfig, tokenizers: TokenizerFiles) -> ModelConfig:
    """The architecture of ``cfg.init_from`` (checked whole), after checking the corpus was
    tokenized with that checkpoint's tokenizer: other ids would mean other words.

    Raises:
        ConfigError: a damaged checkpoint, or a corpus prepared with another tokenizer.
    """
    validate_checkpoint(cfg.init_from)
    if TokenizerFiles.read(cfg.init_from) != tokenizers:
        raise ConfigError(
            f"{cfg.data} was prepared with another tokenizer than {cfg.init_from}'s: prepare it "
            f"with `s2s prepare --tokenizer {cfg.init_from}`"
        )
    model = read_model_config(cfg.init_from)
    log.info("fine-tuning %s: its architecture replaces preset/model", cfg.init_from)
    return model


def _node_cores(workers_on_node: int) -> int:
    """This node's cores (as the OS lets this process use them) shared by its workers."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, (cores or 1) // max(workers_on_node, 1))


def _log_to_stderr() -> None:
    """Workers start with Python's default WARNING level; the progress lines are INFO."""
    package = logging.getLogger("s2s")
    if not package.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s"))
        package.addHandler(handler)
    package.setLevel(logging.INFO)
    package.propagate = False  # Ray also forwards the root log: print each line once


@dataclass
class ValidPair:
    """A validation pair as the loop scores it: ids (no bos/eos) and the reference text."""

    src_ids: list[int]
    tgt_ids: list[int]
    reference: str
    spans: tuple[str, ...]  # the placeholders src_ids holds as sentinels, in sentinel order


@dataclass
class _Setup:
    """What one worker trains with, built by :func:`_train_worker` and run by :class:`_Loop`."""

    model: torch.nn.Module  # unwrapped: checkpoints and evaluation use it
    ddp: torch.nn.Module  # the DDP wrapper around ``model``: training steps go through it
    optimizer: torch.optim.Optimizer
    state: TrainerState  # fresh or restored; the loop updates it, checkpoints save it
    rank: int
    world: int  # workers in this session of the run (an elastic run's may change on restart)
    device: torch.device
    tokenizers: TokenizerFiles  # the corpus', saved in checkpoints
    valid: list[ValidPair]


@dataclass
class _Window:
    """What a log line averages over: this rank's loss sums and token count (on the device, read
    once per log line), and the target tokens of all workers since the last line."""

    loss: torch.Tensor  # () summed label-smoothed loss
    nll: torch.Tensor  # () summed negative log-likelihood
    tokens: torch.Tensor  # () target tokens of this rank's batches
    tokens_all: int = 0
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def zeros(cls, device: torch.device) -> _Window:
        return cls(*(torch.zeros((), device=device) for _ in range(3)))


class _Loop:
    """One worker's training loop; rank 0 logs, evaluates and writes checkpoints."""

    def __init__(self, cfg: TrainConfig, setup: _Setup) -> None:
        self.cfg, self.tokenizers, self.valid = cfg, setup.tokenizers, setup.valid
        self.tokenizer = setup.tokenizers.load()[1]  # the target side's: decodes validation outputs
        self.model, self.ddp, self.optimizer = setup.model, setup.ddp, setup.optimizer
        self.rank, self.world, self.device = setup.rank, setup.world, setup.device
        self.state = state = setup.state
        # Training time counts across resumes: a time budget is a budget for the whole run.
        self.start = time.perf_counter() - state.elapsed_s
        self.elapsed = state.elapsed_s  # seconds, the same on every rank
        self.first_step = state.step  # where this session of the run began (resumes differ)
        self.first_elapsed = self.elapsed
        self.lr = 0.0  # set before every optimizer step
        self.reported_step = state.step  # the step of the last report (and checkpoint)
        # Batches per optimizer step over all workers: the same whatever the current world size.
        self.per_step = cfg.worker_range()[1] * cfg.update_freq
        self.digest = DataDigest(state.data_digest)  # rank 0's, saved in the state
        self.window = _Window.zeros(self.device)
        self.metrics = read_metrics(cfg.output, state.step) if self.rank == 0 and state.step else []
        self.precision = resolve_precision(cfg.precision, self.device)
        if self.precision == "fp32":
            enable_tf32(self.device)
        shape_stable_attention(self.device)  # batches change shape every step
        self.autocast = autocast(self.precision, self.device)
        # Control collectives (the clock) on the CPU: under NCCL a GPU tensor would make every
        # step wait for the device to drain before the host could read the agreed value.
        nccl = self.world > 1 and dist.get_backend() == "nccl"
        self.control = dist.new_group(backend="gloo") if nccl else None
        if self.rank == 0:
            millions = sum(p.numel() for p in self.model.parameters()) / 1e6
            log.info(
                "training %s (%.1fM parameters) on %d worker(s), %s, %s, from step %d "
                "(epoch %d, batch %d)",
                *(cfg.preset, millions, self.world, self.device.type, self.precision),
                *(state.step, state.epoch, state.batch_in_epoch),
            )

    def run(self, plan: EpochPlan) -> None:
        state = self.state
        while not self._done():
            epoch = steps(plan.batches(state.epoch), self.per_step, state.batch_in_epoch)
            trained = False
            for group, share in prefetch(epoch, self._share, ahead=self.device.type == "cuda"):
                self.elapsed = self._agreed_elapsed()
                if self._done():  # the time budget ran out: every rank stops at this step
                    break
                self._train_step(group, share)
                trained = True
            else:  # the epoch is over
                if not trained and not state.batch_in_epoch:
                    raise RuntimeError(
                        f"an epoch of {self.cfg.data} holds fewer batches than one step "
                        f"({self.per_step}): lower max_tokens, update_freq or the workers"
                    )
                state.epoch += 1
                state.batch_in_epoch = 0
        if state.step > self.reported_step:  # a budget or max_epochs ended it: report the end
            self._report(evaluate=True)

    def _share(self, group: list[list]) -> list[dict[str, torch.Tensor]]:
        """This rank's batches of a step, collated and on their way to the device."""
        return [to_device(collate(b), self.device) for b in group[self.rank :: self.world]]

    def _train_step(self, group: list[list], share: list[dict[str, torch.Tensor]]) -> None:
        """Train on one step's batches, then log, evaluate and checkpoint when due."""
        cfg = self.cfg
        self._step(group, share)
        self.state.batch_in_epoch += len(group)
        step = self.state.step
        if step % cfg.log_every == 0:
            self._log()
        # The last step always evaluates: the run's final metrics carry its BLEU.
        evaluate = step % cfg.eval_every == 0 or self._done()
        if evaluate or step % cfg.checkpoint_every == 0:
            self._report(evaluate=evaluate)

    def _agreed_elapsed(self) -> float:
        """Seconds of training so far, the slowest rank's: all ranks agree on it, so a time
        budget stops them at the same step and a time-based schedule gives the same rate."""
        elapsed = time.perf_counter() - self.start
        if self.world > 1:
            clock = torch.tensor([elapsed], dtype=torch.float64)  # on the CPU: see self.control
            dist.all_reduce(clock, op=dist.ReduceOp.MAX, group=self.control)
            elapsed = float(clock)
        return elapsed

    def _done(self) -> bool:
        cfg, s = self.cfg, self.state
        if cfg.max_steps and s.step >= cfg.max_steps:
            return True
        if cfg.max_epochs and s.epoch >= cfg.max_epochs:
            return True
        if cfg.patience and s.bad_evals >= cfg.patience:
            return True
        # self.elapsed, not this rank's clock: every rank must stop at the same step.
        return bool(cfg.max_time_min and self.elapsed >= 60 * cfg.max_time_min)

    def _progress(self) -> float:
        """How far through training the run is, 0..1 (what cosine/linear decay follow)."""
        cfg, done = self.cfg, []
        if cfg.max_steps:
            done.append(self.state.step / cfg.max_steps)
        if cfg.max_time_min:
            done.append(self.elapsed / (60 * cfg.max_time_min))
        return max(done, default=0.0)

    def _step(self, group: list[list], share: list[dict[str, torch.Tensor]]) -> None:
        """One optimizer step over the step's ``group`` of batches; this rank trains on its
        ``share`` (already on the device). Every rank sees the whole group, so the step's target
        token count needs no communication: the loss is normalised by it, and DDP's average of
        the gradients then equals the gradient of the whole step's loss, however the batches
        are shared. Nothing here reads a number back from the device: a GPU runs ahead until a
        log line asks for the loss."""
        cfg, step, window = self.cfg, self.state.step, self.window
        if self.rank == 0:
            self.digest.update(group)
        tokens = sum(len(tgt) + 1 for batch in group for _, tgt in batch)  # + eos
        scale = self.world / tokens
        self.state.tgt_tokens_seen += tokens
        window.tokens_all += tokens
        # Dropout masks depend on (seed, step, rank) alone: a resumed run repeats them.
        torch.manual_seed(cfg.seed * 1_000_003 + step * 1009 + self.rank)
        self.ddp.train()
        for i, batch in enumerate(share):
            sync = i == len(share) - 1 or self.world == 1
            with contextlib.nullcontext() if sync else self.ddp.no_sync(), self.autocast:
                logits = self.ddp(batch["src"], batch["tgt_in"])  # (B, T, V)
                loss, nll, n = label_smoothed_loss(logits, batch["tgt_out"], cfg.label_smoothing)
            (loss * scale).backward()
            window.loss += loss.detach().float()  # no device sync until a log line
            window.nll += nll.detach().float()
            window.tokens += n
        if cfg.clip_norm:
            torch.nn.utils.clip_grad_norm_(self.ddp.parameters(), cfg.clip_norm)
        self.lr = cfg.lr * lr_multiplier(step + 1, cfg.warmup, cfg.schedule, self._progress())
        for param_group in self.optimizer.param_groups:
            param_group["lr"] = self.lr
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1

    def _log(self) -> None:
        w, now = self.window, time.perf_counter()
        # The one read from the device per log line (each read waits for the device to drain).
        loss, nll, tokens = torch.stack([w.loss, w.nll, w.tokens]).tolist()
        tokens = max(tokens, 1.0)
        elapsed = self.elapsed
        step = self.state.step
        rate = w.tokens_all / max(now - w.started, 1e-9)
        line = {
            "step": step,
            "epoch": self.state.epoch,
            "loss": round(loss / tokens, 4),
            "ppl": round(math.exp(min(nll / tokens, 50)), 2),
            "lr": self.lr,
            "workers": self.world,
            "tgt_tokens_per_s": round(rate),
            "tgt_tokens_seen": self.state.tgt_tokens_seen,  # all workers, since the start
            "elapsed_s": round(elapsed, 1),
        }
        if self.cfg.max_steps:
            per_step = (elapsed - self.first_elapsed) / max(step - self.first_step, 1)
            line["eta_s"] = round(per_step * (self.cfg.max_steps - step))
        if self.cfg.max_time_min:
            left = 60 * self.cfg.max_time_min - elapsed
            line["eta_s"] = round(min(line.get("eta_s", left), left))
        self.metrics.append(line)
        self.window = _Window.zeros(self.device)
        if self.rank == 0:
            eta = f" eta {line['eta_s']}s" if "eta_s" in line else ""
            values = (step, line["loss"], line["ppl"], line["lr"], rate, elapsed, eta)
            log.info("step %d | loss %.3f | ppl %.1f | lr %.2e | %d tgt tok/s | %.0fs%s", *values)

    def _evaluate(self) -> dict:
        """Valid perplexity and greedy BLEU/chrF on the valid subset (rank 0; others skip)."""
        if not self.valid:
            return {}
        model = self.model.eval()
        hyps, nll, tokens = [], 0.0, 0
        with torch.inference_mode():
            for i in range(0, len(self.valid), 64):
                chunk = self.valid[i : i + 64]
                batch = collate([(pair.src_ids, pair.tgt_ids) for pair in chunk])
                src = batch["src"].to(self.device)
                _, part, n = label_smoothed_loss(
                    model(src, batch["tgt_in"].to(self.device)),
                    batch["tgt_out"].to(self.device),
                    0.0,
                )
                nll, tokens = nll + float(part), tokens + int(n)
                hyps += self.tokenizer.decode(greedy_search(model, src))
        # Sentinels back to their spans, as translate does (a mismatch: dropped, not retried).
        hyps = [restore(h, p.spans) or strip_sentinels(h) for h, p in zip(hyps, self.valid)]
        scores = score(hyps, [p.reference for p in self.valid])  # what `s2s evaluate` reports
        return {
            "valid_ppl": round(math.exp(min(nll / max(tokens, 1), 50)), 2),
            "bleu": scores["bleu"],
            "chrf": scores["chrf"],
        }

    def _report(self, evaluate: bool) -> None:
        """Report metrics (and, on rank 0, a checkpoint) to Ray Train; every rank calls it."""
        state = self.state
        self.reported_step = state.step
        state.elapsed_s = round(self.elapsed, 1)
        state.data_digest = self.digest.value
        metrics = {
            "step": state.step,
            "epoch": state.epoch,
            "elapsed_s": state.elapsed_s,
            "tgt_tokens_seen": state.tgt_tokens_seen,
            "workers": self.world,
            "data_digest": self.digest.value,
            "replicas_in_sync": self._replicas_in_sync(),
        }
        if evaluate and self.rank == 0:
            metrics.update(self._evaluate())
            bleu = metrics.get("bleu")
            if bleu is not None:
                better = state.best_bleu is None or bleu > state.best_bleu
                state.best_bleu = bleu if better else state.best_bleu
                state.bad_evals = 0 if better else state.bad_evals + 1
        if self.world > 1:  # every rank must agree on early stopping
            flags = torch.tensor([state.bad_evals])  # on the CPU: see self.control
            dist.broadcast(flags, src=0, group=self.control)
            state.bad_evals = int(flags)
        if self.rank != 0:
            ray.train.report(metrics)
            return
        self.metrics.append(metrics)
        optimizer_state = {"optimizer": self.optimizer.state_dict()}
        # Ray Train uploads the directory (and, async, deletes it after) while training goes on.
        directory = tempfile.mkdtemp(prefix="s2s-checkpoint-")
        self._save(directory, state, optimizer_state)
        upload = self.cfg.checkpoint_upload
        ray.train.report(
            metrics,
            checkpoint=Checkpoint.from_directory(directory),
            checkpoint_upload_mode=CheckpointUploadMode[upload.upper()],
            delete_local_checkpoint_after_upload=True,
        )
        if "bleu" in metrics and state.bad_evals == 0:
            # The best by BLEU is kept apart from Ray's last-K rotation (weights and state only).
            best = storage.join(self.cfg.output, BEST_NAME)
            self._save(best, state)
        write_metrics(self.cfg.output, self.metrics)

    def _save(self, directory: str, state: TrainerState, optimizer_state: dict | None = None):
        files = self.tokenizers
        save_checkpoint(
            directory,
            self.model,
            self.cfg.model,
            files.source,
            state,
            optimizer_state,
            files.target,
        )

    def _replicas_in_sync(self) -> bool:
        """All ranks hold the same parameters (what DDP promises); checked at every report."""
        if self.world == 1:
            return True
        checksum = torch.stack([p.detach().double().sum() for p in self.model.parameters()]).sum()
        gathered = [torch.zeros_like(checksum) for _ in range(self.world)]
        dist.all_gather(gathered, checksum)
        return all(torch.equal(g, gathered[0]) for g in gathered)

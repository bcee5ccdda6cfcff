"""The epoch loop shared by MAMIM pretraining and fine-tuning.

AdamW without weight decay on norms and biases, linear warm-up then cosine decay per step, bf16
autocast on the GPU, gradient clipping, DDP when the process group has several ranks, a
resumable state after every epoch, early stopping on a validation score, progress and cancel.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from napari_ssmamba._atomic import atomic_open
from napari_ssmamba.errors import TrainingDataError
from napari_ssmamba.progress import ProgressCallback, no_progress, raise_if_cancelled

from .distributed import DistributedEnv, all_reduce_sum, barrier
from .state import has_train_state, load_train_state, save_train_state


@dataclass
class Schedule:
    """Optimiser settings: peak ``lr``, cosine down to ``lr * min_lr_ratio`` after linear warm-up."""

    epochs: int
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    grad_clip: float | None = 1.0


def learning_rate(step: int, total_steps: int, warmup_steps: int, schedule: Schedule) -> float:
    """The learning rate at ``step`` (0-based): linear warm-up, then half a cosine."""
    if warmup_steps > 0 and step < warmup_steps:
        return schedule.lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    floor = schedule.lr * schedule.min_lr_ratio
    return floor + (schedule.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(model, schedule: Schedule):
    """AdamW with weight decay on weights of rank >= 2 only (not on norms, biases, tokens)."""
    import torch

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (decay if param.ndim >= 2 and not name.endswith("token") else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": schedule.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=schedule.lr, betas=(0.9, 0.999))


@dataclass
class FitResult:
    """What :func:`fit` did: one record per epoch, the best epoch and its score."""

    history: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_score: float | None = None
    stopped_early: bool = False
    seconds: float = 0.0


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line (metrics log); a partial line can only be the last one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")


#: config keys a resumed run may change: where and how it runs, not what it computes
RESUME_FREE_KEYS = ("out", "device", "resume", "num_workers")


def _changed_settings(saved: dict | None, settings: dict) -> str:
    """The settings that differ from a saved state's, as ``"epochs 3 -> 4, lr ..."``."""
    if not saved or not settings:  # nothing to compare
        return ""
    keys = sorted(set(saved) | set(settings))
    return ", ".join(
        f"{k} {saved.get(k)!r} -> {settings.get(k)!r}" for k in keys if saved.get(k) != settings.get(k)
    )


def _has_batchnorm(model) -> bool:
    import torch

    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def fit(
    model,
    loss_step: Callable,
    loader,
    sampler,
    *,
    schedule: Schedule,
    env: DistributedEnv,
    out_dir: Path,
    amp: bool = False,
    validate: Callable | None = None,
    monitor: str = "train_loss",
    mode: str = "min",
    patience: int | None = None,
    on_improve: Callable | None = None,
    resume: bool = True,
    progress: ProgressCallback | None = None,
    cancel=None,
    on_epoch: Callable[[dict], None] | None = None,
    what: str = "training",
    freeze_bn: bool = False,
    settings: dict | None = None,
) -> FitResult:
    """Train ``model`` for ``schedule.epochs`` epochs and return the history.

    ``loss_step(model, batch) -> (loss, stats)`` computes a mean loss and a dict of summable
    counts (e.g. ``{"correct": 7, "count": 8}``) on one batch. After each epoch ``validate(model)``
    returns metrics merged into the epoch record; ``record[monitor]`` decides the best epoch
    (``mode`` "min" or "max"), ``on_improve(model, record)`` saves it, and ``patience`` epochs
    without improvement stop the run. The resumable state is written to ``out_dir/state`` after
    each epoch and picked up when ``resume`` is set; metrics go to ``out_dir/metrics.jsonl``.
    A set ``cancel`` raises ``CancelledError`` between batches; the last finished epoch is kept.
    ``freeze_bn`` keeps BatchNorm layers in eval mode (running statistics) while training.
    ``settings`` (the run's config) is saved with the state; a state saved with other settings
    is not resumed (``TrainingDataError``), since the run would not repeat the one it continues.
    """
    import torch

    progress = progress or no_progress
    out_dir = Path(out_dir)
    state_dir = out_dir / "state"
    device = torch.device(env.device)
    model.to(device)
    optimizer = build_optimizer(model, schedule)
    result = FitResult()
    start_epoch, bad_epochs = 0, 0
    # as the state's JSON gives them back
    settings = json.loads(json.dumps({k: v for k, v in (settings or {}).items()
                                      if k not in RESUME_FREE_KEYS}))
    if resume and has_train_state(state_dir):
        meta = load_train_state(state_dir, model, optimizer)
        changed = _changed_settings(meta.get("settings"), settings)
        if changed:
            raise TrainingDataError(
                f"{state_dir}: saved by a run with other settings ({changed}), which resuming "
                "would not repeat; resume with the same config, or pass --no-resume (resume: "
                "false) to start afresh"
            )
        start_epoch = meta["epoch"] + 1
        bad_epochs = meta["bad_epochs"]
        result.history, result.best_epoch, result.best_score = (
            meta["history"],
            meta["best_epoch"],
            meta["best_score"],
        )
        if meta.get("stopped_early"):
            result.stopped_early = True
            return result
    train_model = model
    if env.distributed:
        # batch-norm statistics over the global batch (CUDA only in torch)
        if device.type == "cuda" and not freeze_bn:
            from napari_ssmamba.model import convert_sync_batchnorm

            model = convert_sync_batchnorm(model)
        elif not freeze_bn and env.is_main and _has_batchnorm(model):
            warnings.warn(
                f"{what}: BatchNorm statistics are per process here (SyncBatchNorm needs CUDA), "
                f"so {env.world_size} processes do not train as one with the same global batch; "
                "set freeze_bn=true for that",
                stacklevel=2,
            )
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    steps_per_epoch = len(loader)
    if steps_per_epoch == 0:
        raise TrainingDataError(
            f"{what}: {len(sampler) * env.world_size} tiles do not fill one batch of "
            f"{loader.batch_size * env.world_size}; lower batch_size or add tiles"
        )
    total_steps = steps_per_epoch * schedule.epochs
    warmup_steps = int(round(schedule.warmup_epochs * steps_per_epoch))
    step = start_epoch * steps_per_epoch
    started = time.perf_counter()
    for epoch in range(start_epoch, schedule.epochs):
        epoch_started = time.perf_counter()
        sampler.set_epoch(epoch)
        train_model.train()
        if freeze_bn:
            for module in model.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()
        loss_sum, sums = 0.0, {}
        for batch in loader:
            raise_if_cancelled(cancel, what)
            lr = learning_rate(step, total_steps, warmup_steps, schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = [b.to(device, non_blocking=True) if torch.is_tensor(b) else b for b in batch]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss, stats = loss_step(train_model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if schedule.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), schedule.grad_clip)
            optimizer.step()
            step += 1
            loss_value = float(loss.detach())
            loss_sum += loss_value
            for key, value in stats.items():
                sums[key] = sums.get(key, 0.0) + float(value)
            progress(
                step,
                total_steps,
                f"{what}: epoch {epoch + 1}/{schedule.epochs} loss {loss_value:.4f}",
            )
        keys = sorted(sums)
        reduced = all_reduce_sum([loss_sum, *(sums[k] for k in keys)], env)
        record = {
            "epoch": epoch,
            "step": step,
            "lr": lr,
            "train_loss": reduced[0] / (steps_per_epoch * env.world_size),
        }
        totals = dict(zip(keys, reduced[1:]))
        if "correct" in totals and totals.get("count"):
            record["train_accuracy"] = totals["correct"] / totals["count"]
        if validate is not None:
            model.eval()
            record.update(validate(model))
        record["seconds"] = time.perf_counter() - epoch_started
        score = record[monitor]
        improved = result.best_score is None or (
            score < result.best_score if mode == "min" else score > result.best_score
        )
        if improved:
            result.best_epoch, result.best_score, bad_epochs = epoch, score, 0
            if on_improve is not None and env.is_main:
                on_improve(model, record)
        else:
            bad_epochs += 1
        result.history.append(record)
        result.stopped_early = patience is not None and bad_epochs >= patience
        if env.is_main:
            append_jsonl(out_dir / "metrics.jsonl", {"phase": what, **record})
            save_train_state(
                state_dir,
                model,
                optimizer,
                {
                    "epoch": epoch,
                    "bad_epochs": bad_epochs,
                    "history": result.history,
                    "best_epoch": result.best_epoch,
                    "best_score": result.best_score,
                    "stopped_early": result.stopped_early,
                    "settings": settings,
                },
            )
        barrier(env)
        if on_epoch is not None:
            on_epoch(record)
        if result.stopped_early:
            break
    result.seconds = time.perf_counter() - started
    return result


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_open(path) as fh:
        json.dump(data, fh, indent=2)

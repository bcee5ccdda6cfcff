"""Supervised fine-tuning (SFT) of an SSMamba classifier on labelled tiles.

From a MAMIM backbone checkpoint or from scratch: AdamW with warm-up and cosine decay, label
smoothing, class-balanced sampling, H&E augmentation, bf16 autocast on the GPU, early stopping
on a validation score, DDP under torchrun. The best epoch is saved in the model format
(safetensors + model card with classes, colours, MPP, tile size, data and validation metrics).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

from napari_ssmamba.errors import TrainingDataError
from napari_ssmamba.progress import ProgressCallback

from .config import FinetuneConfig, config_dict
from .data import EpochSampler, TileDataset, TileSet, class_balanced_weights
from .distributed import setup_distributed
from .engine import Schedule, fit, write_json
from .evaluate import classification_metrics, format_metrics

#: colours for classes the config gives none for (tab10)
DEFAULT_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                  (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def class_colors(class_names, given: dict | None = None) -> list[tuple[int, int, int]]:
    """Colours per class: those ``given`` by name, the tab10 cycle for the rest."""
    given = given or {}
    return [tuple(int(c) for c in given.get(name, DEFAULT_COLORS[i % len(DEFAULT_COLORS)]))
            for i, name in enumerate(class_names)]


def build_classifier(config: FinetuneConfig, num_classes: int):
    """A classifier with ``num_classes`` outputs: the ``init`` checkpoint's backbone or a fresh model."""
    from napari_ssmamba.model import create_model, load_checkpoint

    kwargs = {} if config.drop_path_rate is None else {"drop_path_rate": config.drop_path_rate}
    model = create_model(config.arch, num_classes=num_classes, **kwargs)
    if config.init:
        backbone, _ = load_checkpoint(config.init, device="cpu", require_classes=False)
        state = {k: v for k, v in backbone.state_dict().items() if not k.startswith("head.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith("head.") for k in missing):
            from napari_ssmamba.errors import CheckpointError

            raise CheckpointError(
                f"{config.init}: backbone does not match {config.arch} "
                f"(missing {missing[:3]}, unexpected {unexpected[:3]}); pretrain with arch={config.arch}"
            )
    model.mask_token.requires_grad_(False)  # only MAMIM uses it; DDP wants every trained weight used
    return model


def freeze_stem_and_stages(model, num_stages: int) -> None:
    """Fix the stem, the mask token and the first ``num_stages`` stages (no gradients)."""
    frozen = [model.stem, *model.stages[:num_stages]]
    for module in frozen:
        module.requires_grad_(False)
    model.mask_token.requires_grad_(False)


def _tail_class():
    from torch import nn

    class StageTail(nn.Module):
        """The stages after the frozen ones, the norm and the head, fed with cached stage maps."""

        def __init__(self, model, num_frozen: int):
            super().__init__()
            self.model = model
            self.num_frozen = num_frozen

        def forward(self, maps):  # (B, h, w, C) channels-last output of the last frozen stage
            for stage in self.model.stages[self.num_frozen:]:
                maps = stage(maps)
            return self.model.forward_head(self.model.norm(maps.mean(dim=(1, 2))))

    return StageTail


class CachedMaps:
    """Stage maps of ``views`` versions of each tile: view 0 unaugmented, the others augmented."""

    def __init__(self, maps, labels):
        self.maps = maps  # (N, views, h, w, C)
        self.labels = labels

    def __len__(self) -> int:
        return self.maps.shape[0]

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, 0)
        return self.maps[index, seed % self.maps.shape[1]], int(self.labels[index])


def cache_stage_maps(model, dataset: TileDataset, num_frozen: int, views: int, *, seed: int,
                     batch_size: int, device: str, progress=None, cancel=None) -> CachedMaps:
    """Run the frozen stem and stages once over ``views`` versions of every tile of ``dataset``."""
    import torch

    from napari_ssmamba.progress import raise_if_cancelled

    n = len(dataset)
    maps = None
    model.to(device).eval()
    total = n * views
    done = 0
    with torch.no_grad():
        for view in range(views):
            for start in range(0, n, batch_size):
                raise_if_cancelled(cancel, "feature caching")
                keys = [i if view == 0 else (i, seed * 1_000_003 + i * 97 + view) for i in range(start, min(n, start + batch_size))]
                images = torch.stack([dataset[k][0] for k in keys]).to(device)
                x = model.stem(images.contiguous(memory_format=torch.channels_last))
                x = model.stages[:num_frozen](x).float().cpu()
                if maps is None:
                    maps = torch.empty((n, views, *x.shape[1:]), dtype=torch.float32)
                maps[start : start + len(keys), view] = x
                done += len(keys)
                if progress is not None:
                    progress(done, total, f"caching frozen-stage maps {done}/{total}")
    return CachedMaps(maps, dataset.tiles.labels)


def _classification_step(label_smoothing: float) -> Callable:
    import torch.nn.functional as F

    def step(model, batch):
        images, labels = batch
        logits = model(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
        correct = (logits.argmax(dim=1) == labels).sum()
        return loss, {"correct": correct, "count": labels.numel()}

    return step


def _validator(dataset: TileDataset, class_names, *, batch_size: int, device: str, amp: bool) -> Callable:
    import torch
    import torch.nn.functional as F

    from .evaluate import predict

    def validate(model) -> dict:
        probs, labels = predict(model, dataset, batch_size=batch_size, device=device, amp=amp)
        metrics = classification_metrics(labels, probs, class_names)
        loss = F.nll_loss(torch.log(torch.from_numpy(probs).clamp_min(1e-12)), torch.from_numpy(labels))
        return {"val_loss": float(loss), "val_accuracy": metrics["accuracy"],
                "val_balanced_accuracy": metrics["balanced_accuracy"], "val_macro_f1": metrics["macro_f1"]}

    return validate


def _check_classes(train_tiles: TileSet, val_tiles: TileSet | None, *, warn: bool = True) -> None:
    """Refuse a class without training tiles; warn of classes without validation tiles."""
    untrained = [name for name, n in train_tiles.class_counts().items() if not n]
    if untrained:
        raise TrainingDataError(
            f"no training tile of class {', '.join(untrained)}: the model would have a class it "
            "never saw; add a data source for it or leave it out of data.class_names"
        )
    if val_tiles is None or not warn:
        return
    fix = (
        "give each class two or more regions, image blocks or files to split, or list "
        "validation data in data.val_sources"
    )
    unvalidated = [name for name, n in val_tiles.class_counts().items() if not n]
    if not len(val_tiles):
        warnings.warn(
            f"no validation tiles: the last epoch is kept, unvalidated; {fix}", stacklevel=3
        )
    elif unvalidated:
        warnings.warn(
            f"no validation tile of class {', '.join(unvalidated)}: validation scores, and the "
            f"choice of the best epoch, cover the other classes only; {fix}",
            stacklevel=3,
        )


def finetune(
    config: FinetuneConfig,
    train_tiles: TileSet,
    val_tiles: TileSet | None = None,
    *,
    progress: ProgressCallback | None = None,
    cancel=None,
    on_epoch: Callable[[dict], None] | None = None,
    data_info: dict | None = None,
) -> dict:
    """Fine-tune on ``train_tiles``, validate on ``val_tiles``; write the best model to ``config.out``.

    Returns ``{"checkpoint", "metrics", "history", "best_epoch", "stopped_early"}`` (metrics of the
    best epoch on the validation tiles, or None without them). ``on_epoch(record)`` sees each
    epoch's losses and accuracies; ``cancel`` stops between batches (``CancelledError``) and the
    next call with ``config.resume`` continues from the last finished epoch.
    """
    import torch

    from napari_ssmamba.model import ModelCard, load_checkpoint, save_checkpoint

    started = time.perf_counter()
    env = setup_distributed(config.device)
    out_dir = Path(config.out)
    class_names = list(train_tiles.class_names)
    if val_tiles is not None:
        val_tiles = val_tiles.with_classes(class_names)
    _check_classes(train_tiles, val_tiles, warn=env.is_main)
    torch.manual_seed(config.seed)
    model = build_classifier(config, len(class_names))
    cfg = model.pretrained_cfg
    train_set = TileDataset(train_tiles, mean=cfg["mean"], std=cfg["std"], augment=config.augment)
    val_set = (
        None
        if val_tiles is None or not len(val_tiles)
        else TileDataset(val_tiles, mean=cfg["mean"], std=cfg["std"])
    )
    net = model
    if config.freeze_stages:
        freeze_stem_and_stages(model, config.freeze_stages)
    if config.cached_views:
        if not config.freeze_stages:
            raise ValueError(
                "cached_views needs freeze_stages > 0: only frozen stages can be cached"
            )
        cache = dict(
            seed=config.seed,
            batch_size=config.batch_size,
            device=env.device,
            progress=progress,
            cancel=cancel,
        )
        train_set = cache_stage_maps(
            model, train_set, config.freeze_stages, config.cached_views, **cache
        )
        if val_set is not None:
            val_set = cache_stage_maps(model, val_set, config.freeze_stages, 1, **cache)
        net = _tail_class()(model, config.freeze_stages)
    weights = class_balanced_weights(train_tiles.labels) if config.balanced else None
    sampler = EpochSampler(
        len(train_tiles),
        weights=weights,
        num_replicas=env.world_size,
        rank=env.rank,
        seed=config.seed,
    )
    per_rank_batch = max(1, config.batch_size // env.world_size)
    loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=per_rank_batch,
        sampler=sampler,
        drop_last=True,
        num_workers=config.num_workers,
        pin_memory=env.device.startswith("cuda"),
    )
    amp = config.amp and env.device.startswith("cuda")
    validate, monitor, mode = None, "epoch", "max"  # without validation the last epoch is kept
    if val_set is not None:
        validate = _validator(
            val_set, class_names, batch_size=per_rank_batch, device=env.device, amp=amp
        )
        monitor, mode = config.monitor, "min" if config.monitor.endswith("loss") else "max"
    # the config's colours, else those of the annotations, else the tab10 cycle
    colors = class_colors(class_names, {**train_tiles.class_colors, **(config.class_colors or {})})
    summary = {
        "method": "sft",
        "init": config.init,
        "data": data_info or {},
        "train_tiles": train_tiles.summary(),
        "val_tiles": None if val_tiles is None else val_tiles.summary(),
        "config": config_dict(config),
        "world_size": env.world_size,
    }
    checkpoint = out_dir / "model.safetensors"

    def card_for(record: dict, extra: dict | None = None):
        return ModelCard(
            arch=config.arch,
            class_names=class_names,
            class_colors=colors,
            tile_size=train_tiles.tile_size,
            mpp=_tile_mpp(train_tiles, cfg),
            mean=tuple(cfg["mean"]),
            std=tuple(cfg["std"]),
            training={**summary, "epoch": record["epoch"], **(extra or {})},
            untrained=False,
        )

    def save_best(_, record):
        save_checkpoint(model, card_for(record), checkpoint)

    result = fit(
        net,
        _classification_step(config.label_smoothing),
        loader,
        sampler,
        schedule=Schedule(
            epochs=config.epochs,
            lr=config.lr,
            weight_decay=config.weight_decay,
            warmup_epochs=config.warmup_epochs,
            min_lr_ratio=config.min_lr_ratio,
            grad_clip=config.grad_clip,
        ),
        env=env,
        out_dir=out_dir,
        amp=amp,
        validate=validate,
        monitor=monitor,
        mode=mode,
        patience=config.patience if validate is not None else None,
        on_improve=save_best,
        resume=config.resume,
        settings=config_dict(config),
        progress=progress,
        cancel=cancel,
        on_epoch=on_epoch,
        what="fine-tuning",
        freeze_bn=config.freeze_bn,
    )
    metrics = None
    if env.is_main:
        best, _ = load_checkpoint(checkpoint, device=env.device)
        record = result.history[result.best_epoch]
        if validate is not None:
            from .evaluate import predict

            scorer = _tail_class()(best, config.freeze_stages) if config.cached_views else best
            probs, labels = predict(
                scorer, val_set, batch_size=per_rank_batch, device=env.device, amp=amp
            )
            metrics = classification_metrics(labels, probs, class_names)
            write_json(out_dir / "eval.json", metrics)
        save_checkpoint(
            best,
            card_for(
                record,
                {
                    "best_epoch": result.best_epoch,
                    "epochs_run": len(result.history),
                    "stopped_early": result.stopped_early,
                    "val_metrics": metrics,
                    "history": result.history,
                    "seconds": time.perf_counter() - started,
                },
            ),
            checkpoint,
        )
    return {
        "checkpoint": checkpoint,
        "metrics": metrics,
        "history": result.history,
        "best_epoch": result.best_epoch,
        "stopped_early": result.stopped_early,
        "table": None if metrics is None else format_metrics(metrics),
    }


def _tile_mpp(tiles: TileSet, cfg: dict) -> float:
    """The model card's MPP: the one most training tiles had (the finer one on a tie)."""
    known = tiles.mpps[~np.isnan(tiles.mpps)]
    if not len(known):
        return float(cfg.get("mpp", math.nan))
    values, counts = np.unique(np.round(known, 4), return_counts=True)
    return float(values[np.argmax(counts)])


def finetune_from_config(config: FinetuneConfig, *, progress: ProgressCallback | None = None, cancel=None,
                         on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Cut the tiles ``config.data`` names, split them (or use ``data.val_sources``), fine-tune."""
    from .data import split_tiles, tiles_from_sources

    data = config.data
    tiles = tiles_from_sources(data.sources, tile_size=data.tile_size, mpps=data.mpps,
                               class_names=data.class_names, seed=config.seed)
    if data.val_sources:
        train = tiles
        val = tiles_from_sources(data.val_sources, tile_size=data.tile_size, mpps=data.mpps,
                                 class_names=tiles.class_names, seed=config.seed)
    else:
        train, val = split_tiles(tiles, data.val_fraction, by=data.split_by, seed=config.seed)
    info = {"sources": data.sources, "val_sources": data.val_sources, "split_by": data.split_by}
    return finetune(config, train, val, progress=progress, cancel=cancel, on_epoch=on_epoch, data_info=info)

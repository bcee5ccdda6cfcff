"""MAMIM: masked image modelling for the SSMamba backbone (SimMIM-style, tokens not dropped).

A share ``mask_ratio`` of ``mask_patch_size`` squares is masked; the backbone replaces those stem
tokens by its learned mask token (``model.forward_masked``), so every scan still sees the whole
grid. A light decoder (a 1x1 convolution to ``reduction**2 * 3`` channels and a pixel shuffle)
reconstructs the normalised pixels from the last-stage map; the loss is L1 on masked pixels only.
Tiles sampled at several MPPs of the same slides counter cross-magnification shift. The result
is saved as a backbone checkpoint (no classifier) in the model format.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from napari_ssmamba.progress import ProgressCallback

from .config import PretrainConfig, config_dict
from .data import EpochSampler, TileDataset, TileSet
from .distributed import setup_distributed
from .engine import Schedule, fit

if TYPE_CHECKING:
    import torch


def random_masks(batch: int, grid: tuple[int, int], mask_ratio: float, generator) -> torch.Tensor:
    """Boolean (batch, gh, gw) masks, each with exactly ``round(mask_ratio * gh * gw)`` True cells."""
    import torch

    gh, gw = grid
    count = int(round(mask_ratio * gh * gw))
    scores = torch.rand(batch, gh * gw, generator=generator)
    ranks = scores.argsort(dim=1).argsort(dim=1)
    return (ranks < count).view(batch, gh, gw)


def _masked_image_model_class():
    import torch.nn.functional as F
    from torch import nn

    class MaskedImageModel(nn.Module):
        """Backbone + light decoder; ``forward(x, mask)`` -> mean L1 over masked pixels."""

        def __init__(self, backbone, mask_patch_size: int):
            super().__init__()
            stem_stride = backbone.stem_stride
            if mask_patch_size % stem_stride:
                raise ValueError(f"mask_patch_size {mask_patch_size} must be a multiple of the "
                                 f"backbone's token stride {stem_stride}")
            self.backbone = backbone
            self.mask_patch_size = mask_patch_size
            self.reduction = backbone.reduction
            self.decoder = nn.Sequential(
                nn.Conv2d(backbone.num_features, self.reduction**2 * 3, kernel_size=1),
                nn.PixelShuffle(self.reduction),
            )

        def forward(self, x, mask):
            features = self.backbone.forward_masked(x, mask)  # (B, C, H/32, W/32)
            reconstruction = self.decoder(features)  # (B, 3, H, W)
            pixel_mask = mask.repeat_interleave(self.mask_patch_size, 1).repeat_interleave(
                self.mask_patch_size, 2)[:, None].to(reconstruction.dtype)  # (B, 1, H, W)
            error = F.l1_loss(reconstruction.float(), x.float(), reduction="none")
            return (error * pixel_mask).sum() / (pixel_mask.sum() * 3).clamp_min(1.0)

    return MaskedImageModel


def build_masked_image_model(arch: str, mask_patch_size: int | None = None, **kwargs):
    """The MAMIM wrapper around a fresh ``arch`` backbone without classifier."""
    from napari_ssmamba.model import create_model

    backbone = create_model(arch, num_classes=0, **kwargs)
    return _masked_image_model_class()(backbone, mask_patch_size or backbone.reduction)


def _mim_step(mask_ratio: float, mask_patch_size: int) -> Callable:
    import torch

    def step(model, batch):
        images, seeds = batch
        gh, gw = images.shape[-2] // mask_patch_size, images.shape[-1] // mask_patch_size
        # one generator per batch, seeded by its first sample: masks follow the sampler's seeds
        generator = torch.Generator().manual_seed(int(seeds[0]))
        mask = random_masks(images.shape[0], (gh, gw), mask_ratio, generator).to(images.device)
        return model(images, mask), {}

    return step


class _SeededTiles:
    """Yields (image, sample_seed) so that the MAMIM masks follow the sampler's seeds."""

    def __init__(self, dataset: TileDataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, key):
        image, _ = self.dataset[key]
        return image, key[1] if isinstance(key, tuple) else 0


def pretrain(
    config: PretrainConfig,
    tiles: TileSet,
    *,
    progress: ProgressCallback | None = None,
    cancel=None,
    on_epoch: Callable[[dict], None] | None = None,
    data_info: dict | None = None,
) -> dict:
    """Pretrain ``config.arch`` with MAMIM on ``tiles`` (labels ignored); save the backbone.

    Tiles are flipped and rotated (no stain jitter: the target is the tile itself). Returns
    ``{"checkpoint", "history"}``; the checkpoint is ``config.out/backbone.safetensors``.
    """
    import torch

    from napari_ssmamba.model import ModelCard, save_checkpoint

    from .augment import HEAugment

    started = time.perf_counter()
    env = setup_distributed(config.device)
    out_dir = Path(config.out)
    torch.manual_seed(config.seed)
    model = build_masked_image_model(config.arch, config.mask_patch_size)
    if tiles.tile_size % model.reduction or tiles.tile_size % model.mask_patch_size:
        raise ValueError(f"tile size {tiles.tile_size} must be a multiple of the backbone's "
                         f"reduction {model.reduction} and the mask patch size {model.mask_patch_size}")
    cfg = model.backbone.pretrained_cfg
    geometric = HEAugment(hed_scale=0, hed_shift=0, brightness=0, contrast=0, saturation=0, blur_prob=0)
    dataset = _SeededTiles(TileDataset(tiles, mean=cfg["mean"], std=cfg["std"], augment=geometric))
    sampler = EpochSampler(len(tiles), num_replicas=env.world_size, rank=env.rank, seed=config.seed)
    per_rank_batch = max(1, config.batch_size // env.world_size)
    loader = torch.utils.data.DataLoader(dataset, batch_size=per_rank_batch, sampler=sampler, drop_last=True,
                                         num_workers=config.num_workers,
                                         pin_memory=env.device.startswith("cuda"))
    result = fit(model, _mim_step(config.mask_ratio, model.mask_patch_size), loader, sampler,
                 schedule=Schedule(epochs=config.epochs, lr=config.lr, weight_decay=config.weight_decay,
                                   warmup_epochs=config.warmup_epochs, min_lr_ratio=config.min_lr_ratio,
                                   grad_clip=config.grad_clip),
                 env=env, out_dir=out_dir, amp=config.amp and env.device.startswith("cuda"),
                 resume=config.resume, progress=progress, cancel=cancel, on_epoch=on_epoch,
                 what="MAMIM pretraining", settings=config_dict(config))
    checkpoint = out_dir / "backbone.safetensors"
    if env.is_main:
        card = ModelCard(arch=config.arch, class_names=[], class_colors=[], tile_size=tiles.tile_size,
                         mpp=float(min(tiles.mpps)) if len(tiles) else cfg["mpp"],
                         mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), untrained=False,
                         training={"method": "mamim", "data": data_info or {}, "tiles": tiles.summary(),
                                   "config": config_dict(config), "history": result.history,
                                   "mask_patch_size": model.mask_patch_size,
                                   "seconds": time.perf_counter() - started,
                                   "world_size": env.world_size})
        save_checkpoint(model.backbone.cpu(), card, checkpoint)
    return {"checkpoint": checkpoint, "history": result.history}


def pretrain_from_config(config: PretrainConfig, *, progress: ProgressCallback | None = None, cancel=None,
                         on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Cut the (unlabelled) tiles ``config.data`` names at all its MPPs and pretrain on them."""
    from .data import tiles_from_sources

    data = config.data
    tiles = tiles_from_sources(data.sources, tile_size=data.tile_size, mpps=data.mpps,
                               class_names=data.class_names, seed=config.seed)
    return pretrain(config, tiles, progress=progress, cancel=cancel, on_epoch=on_epoch,
                    data_info={"sources": data.sources, "mpps": data.mpps})

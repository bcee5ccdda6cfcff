"""Run configurations: dataclasses read from YAML and overridden by ``key=value`` pairs.

Only the standard library and PyYAML are imported here, so the CLI can parse a config cheaply.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .augment import HEAugment


@dataclass
class DataConfig:
    """Where tiles come from and how they are cut and split.

    ``sources`` is a list of mappings, one per source:
    ``{folder: DIR, class_map: {FOLDER: CLASS}, mpp: 0.5}`` (one sub-folder per class),
    ``{slide: PATH, annotations: GEOJSON, mpp: [y, x]}`` (labelled regions, or all tissue when
    no annotations are given), ``{image: PATH, class: NAME, mpp: 0.5, blocks: 2}`` (a plain image
    of one class). Optional keys of slide and image sources go to ``cut_tiles``
    (``stride_fraction``, ``min_tissue``, ``max_tissue``, ``max_tiles_per_region``).
    """

    sources: list[dict] = field(default_factory=list)
    val_sources: list[dict] = field(default_factory=list)
    class_names: list[str] | None = None
    tile_size: int = 224
    mpps: list[float] = field(default_factory=lambda: [0.5])
    val_fraction: float = 0.2
    split_by: str = "group"


@dataclass
class RunConfig:
    """Settings common to pretraining and fine-tuning."""

    arch: str = "ssmamba_tiny"
    out: str = "runs/ssmamba"
    data: DataConfig = field(default_factory=DataConfig)
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    grad_clip: float | None = 1.0
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    num_workers: int = 0
    resume: bool = True


@dataclass
class PretrainConfig(RunConfig):
    """MAMIM: masked image modelling on unlabelled tiles."""

    mask_ratio: float = 0.6
    mask_patch_size: int | None = None


@dataclass
class FinetuneConfig(RunConfig):
    """Supervised fine-tuning of a classifier, from a backbone checkpoint (``init``) or scratch.

    ``freeze_stages`` keeps the stem and the first that many stages fixed (partial fine-tuning);
    with ``cached_views`` > 0 their output is computed once for that many augmented views of
    each tile and the remaining stages train on the cached maps (a CPU budget option).
    ``freeze_bn`` runs every BatchNorm layer on its running statistics (frozen BN, the usual
    choice when fine-tuning a pretrained backbone on small batches); it also makes a DDP run on
    CPU, where SyncBatchNorm is unavailable, equal to one process with the same global batch.
    """

    init: str | None = None
    label_smoothing: float = 0.1
    balanced: bool = True
    patience: int | None = 5
    monitor: str = "val_balanced_accuracy"
    augment: HEAugment | None = field(default_factory=HEAugment)
    class_colors: dict[str, list[int]] = field(default_factory=dict)
    drop_path_rate: float | None = None
    freeze_stages: int = 0
    cached_views: int = 0
    freeze_bn: bool = False


def _build(cls, values: dict) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} keys {unknown}; known: {sorted(names)}")
    kwargs = {}
    for key, value in values.items():
        default = names[key].default_factory() if names[key].default_factory is not dataclasses.MISSING else None
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = _build(type(default), value)
        kwargs[key] = value
    return cls(**kwargs)


def _set_dotted(values: dict, dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        values = values.setdefault(part, {})
    values[last] = value


def load_config(cls, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Any:
    """Build ``cls`` from a YAML file (or defaults) and ``key=value`` overrides (dotted keys nest).

    Override values are parsed as YAML, so ``epochs=3``, ``amp=false`` and ``data.mpps=[0.5,1.0]``
    all work.
    """
    import yaml

    values: dict = {}
    if path is not None:
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ValueError(f"{path}: cannot read the config ({exc}); give a YAML mapping") from exc
        if not isinstance(values, dict):
            raise ValueError(f"{path}: the config must be a YAML mapping of settings")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        _set_dotted(values, key.strip(), yaml.safe_load(raw))
    return _build(cls, values)


def config_dict(config) -> dict:
    """The config as plain JSON-ready data (for model cards and run records)."""
    return dataclasses.asdict(config)

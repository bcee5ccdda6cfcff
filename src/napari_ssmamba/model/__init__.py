"""SSMamba models: registry, checkpoints, and the scan ops under ``model.ops``.

Importing this package is cheap; torch loads on first use of a name below.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "create_model": "napari_ssmamba.model.registry",
    "list_models": "napari_ssmamba.model.registry",
    "register_model": "napari_ssmamba.model.registry",
    "ModelCard": "napari_ssmamba.model.checkpoint",
    "save_checkpoint": "napari_ssmamba.model.checkpoint",
    "load_checkpoint": "napari_ssmamba.model.checkpoint",
    "read_card": "napari_ssmamba.model.checkpoint",
    "default_checkpoint": "napari_ssmamba.model.checkpoint",
    "FORMAT_VERSION": "napari_ssmamba.model.checkpoint",
    "SSMamba": "napari_ssmamba.model.ssmamba",
    "checkpoint_filter_fn": "napari_ssmamba.model.ssmamba",
    "convert_sync_batchnorm": "napari_ssmamba.model.blocks",
}

__all__ = [
    "FORMAT_VERSION",
    "ModelCard",
    "SSMamba",
    "checkpoint_filter_fn",
    "convert_sync_batchnorm",
    "create_model",
    "default_checkpoint",
    "list_models",
    "load_checkpoint",
    "read_card",
    "register_model",
    "save_checkpoint",
]


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

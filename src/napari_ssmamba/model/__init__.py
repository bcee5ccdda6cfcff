"""SSMamba models: registry, checkpoints, and the scan ops under ``model.ops``.

Importing this package is cheap; torch loads on first use of a name below.
"""

from __future__ import annotations

from napari_ssmamba._lazy import lazy_getattr

_EXPORTS = {
    "create_model": "registry",
    "list_models": "registry",
    "register_model": "registry",
    "ModelCard": "checkpoint",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "read_card": "checkpoint",
    "default_checkpoint": "checkpoint",
    "FORMAT_VERSION": "checkpoint",
    "SSMamba": "ssmamba",
    "checkpoint_filter_fn": "ssmamba",
    "convert_sync_batchnorm": "blocks",
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


__getattr__ = lazy_getattr(__name__, _EXPORTS)

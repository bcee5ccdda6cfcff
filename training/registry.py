"""Make a newly trained model the one the Classify widget and ``ssmamba`` use, without Qt."""

from __future__ import annotations

import dataclasses
from pathlib import Path


def use_trained_model(checkpoint: str | Path) -> Path:
    """Record ``checkpoint`` as the user's default model in the settings file; return the file."""
    from napari_ssmamba.settings import load_settings, save_settings

    settings = dataclasses.replace(load_settings(), default_model=str(Path(checkpoint).resolve()))
    return save_settings(settings)


def user_models_dir() -> Path:
    """Where the Retrain widget writes models: ``<config dir>/models``."""
    from napari_ssmamba.settings import config_dir

    return config_dir() / "models"

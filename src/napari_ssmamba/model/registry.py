"""Model registry in timm's manner: one entrypoint function per size."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable

_model_entrypoints: dict[str, Callable] = {}


def register_model(fn: Callable) -> Callable:
    """Record ``fn`` under its own name; ``create_model(fn.__name__)`` then calls it."""
    _model_entrypoints[fn.__name__] = fn
    return fn


def _ensure_registered():
    from napari_ssmamba.model import ssmamba  # noqa: F401  (registers the SSMamba sizes)


def list_models(pattern: str = "*", exclude: str | None = None) -> list[str]:
    """Registered model names matching the shell-style ``pattern`` and not ``exclude``, sorted."""
    _ensure_registered()
    names = fnmatch.filter(_model_entrypoints, pattern)
    if exclude:
        names = [n for n in names if not fnmatch.fnmatch(n, exclude)]
    return sorted(names)


def create_model(name: str, num_classes: int | None = None, **kwargs):
    """Build a registered model, e.g. ``create_model("ssmamba_tiny", num_classes=3)``.

    Keyword arguments reach the model's constructor (``drop_path_rate``, ``scan_backend``,
    ``in_chans``...). Raises ValueError naming the registered models for an unknown name.
    """
    _ensure_registered()
    if name not in _model_entrypoints:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return _model_entrypoints[name](**kwargs)

"""User settings shared by the GUI and the command line: compute device and default model.

Stored as JSON in the user's configuration folder (``NAPARI_SSMAMBA_CONFIG_DIR`` overrides it),
written atomically. No Qt here: the Settings widget and ``ssmamba`` both read this module.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import sys
from pathlib import Path

from napari_ssmamba._atomic import atomic_open

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
SETTINGS_FILE = "settings.json"
CONFIG_DIR_ENV = "NAPARI_SSMAMBA_CONFIG_DIR"


@dataclasses.dataclass(frozen=True)
class Settings:
    """``device``: "auto" (CUDA when present), "cpu" or "cuda". ``default_model``: path of a
    checkpoint to use instead of the bundled model, or None."""

    device: str = "auto"
    default_model: str | None = None

    def __post_init__(self):
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {self.device!r}")


def config_dir() -> Path:
    """The folder holding the settings file, per platform conventions."""
    override = os.environ.get(CONFIG_DIR_ENV)
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("APPDATA") or Path.home() / "AppData" / "Roaming")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "napari-ssmamba"


def settings_path() -> Path:
    return config_dir() / SETTINGS_FILE


def load_settings(path: str | os.PathLike | None = None) -> Settings:
    """The saved settings, or the defaults when there are none or the file is unreadable."""
    path = Path(path) if path is not None else settings_path()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return Settings()
    except (OSError, ValueError) as exc:
        logger.warning("Ignoring unreadable settings file %s (%s); using defaults", path, exc)
        return Settings()
    fields = {f.name for f in dataclasses.fields(Settings)}
    try:
        return Settings(**{k: v for k, v in data.items() if k in fields})
    except (TypeError, ValueError, AttributeError) as exc:
        logger.warning("Ignoring invalid settings in %s (%s); using defaults", path, exc)
        return Settings()


def save_settings(settings: Settings, path: str | os.PathLike | None = None) -> Path:
    """Write ``settings`` (atomically) and return the file's path."""
    path = Path(path) if path is not None else settings_path()
    with atomic_open(path, "w") as fh:
        json.dump(dataclasses.asdict(settings), fh, indent=2)
        fh.write("\n")
    return path

"""Fixtures shared by the widget tests: the real slides and a private settings folder."""

from pathlib import Path

import pytest

SLIDES = Path(__file__).parents[2] / ".." / "shared" / "data" / "slides"


@pytest.fixture(scope="session")
def slides_dir() -> Path:
    if not SLIDES.is_dir():
        pytest.skip(f"test slides not found at {SLIDES.resolve()}")
    return SLIDES.resolve()


@pytest.fixture(autouse=True)
def _private_settings(tmp_path, monkeypatch):
    """Widgets save settings: keep them out of the user's configuration folder."""
    monkeypatch.setenv("NAPARI_SSMAMBA_CONFIG_DIR", str(tmp_path / "napari-ssmamba-config"))

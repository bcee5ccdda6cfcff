"""Fixtures shared by the widget tests: a private settings folder."""

import pytest


@pytest.fixture(autouse=True)
def _private_settings(tmp_path, monkeypatch):
    """Widgets save settings: keep them out of the user's configuration folder."""
    monkeypatch.setenv("NAPARI_SSMAMBA_CONFIG_DIR", str(tmp_path / "napari-ssmamba-config"))

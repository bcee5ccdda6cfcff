"""Fixtures shared by the widget tests: a private settings folder, and no worker left running."""

import pytest


@pytest.fixture(autouse=True)
def _private_settings(tmp_path, monkeypatch):
    """Widgets save settings: keep them out of the user's configuration folder."""
    monkeypatch.setenv("NAPARI_SSMAMBA_CONFIG_DIR", str(tmp_path / "napari-ssmamba-config"))


@pytest.fixture(autouse=True)
def _workers_done():
    """Let each test's thread workers (a widget's background warm-up, say) finish before the next
    test, which may count what they do."""
    yield
    from qtpy.QtCore import QThreadPool

    assert QThreadPool.globalInstance().waitForDone(60_000), "a thread worker is still running"

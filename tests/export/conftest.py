"""Fixtures for export tests: the bundled sample slide and a small untrained model."""

from __future__ import annotations

from pathlib import Path

import pytest

SAMPLE_SLIDE = Path(__file__).parents[2] / "src" / "napari_ssmamba" / "data" / "CMU-1-Small-Region.svs"


@pytest.fixture(scope="session")
def sample_slide_path() -> Path:
    return SAMPLE_SLIDE


@pytest.fixture(scope="session")
def small_model():
    """ssmamba_test with random weights on 64 px tiles at 2 µm/px (about 260 level-0 px on CMU-1)."""
    import torch

    from napari_ssmamba.model import ModelCard, create_model

    torch.manual_seed(0)
    model = create_model("ssmamba_test", num_classes=3).eval()
    card = ModelCard(
        arch="ssmamba_test",
        class_names=["Tumor", "Stroma", "Other"],
        class_colors=[(200, 0, 0), (0, 150, 0), (0, 0, 200)],
        tile_size=64,
        mpp=2.0,
        untrained=True,
    )
    return model, card

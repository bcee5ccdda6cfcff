"""Shared test configuration: the real test data, a small untrained model, and GPU tests that
run only where CUDA is present."""

from __future__ import annotations

from pathlib import Path

import pytest

#: ../shared/data beside the checkout (real slides, patches and QuPath files; see its PROVENANCE.md)
DATA_DIR = Path(__file__).parents[1] / ".." / "shared" / "data"
SAMPLE_SLIDE = Path(__file__).parents[1] / "src" / "napari_ssmamba" / "data" / "CMU-1-Small-Region.svs"


def _existing(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(f"test data not found at {path.resolve()}")
    return path.resolve()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _existing(DATA_DIR)


@pytest.fixture(scope="session")
def slides_dir() -> Path:
    return _existing(DATA_DIR / "slides")


@pytest.fixture(scope="session")
def annotations_dir() -> Path:
    return _existing(DATA_DIR / "annotations")


@pytest.fixture(scope="session")
def sample_slide_path() -> Path:
    """The bundled sample slide (CMU-1-Small-Region.svs, CC0)."""
    return SAMPLE_SLIDE


@pytest.fixture
def sample_slide(sample_slide_path):
    from napari_ssmamba.slide import open_slide

    with open_slide(sample_slide_path) as slide:
        yield slide


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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; run on the device machine")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def small_checkpoint(small_model, tmp_path_factory) -> Path:
    """``small_model`` saved as a checkpoint (model.safetensors + model.json)."""
    from napari_ssmamba.model import save_checkpoint

    model, card = small_model
    return save_checkpoint(model, card, tmp_path_factory.mktemp("model") / "model.safetensors")

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = (Path(__file__).parents[2] / ".." / "shared" / "data").resolve()
    if not path.is_dir():
        pytest.skip(f"shared test data not found at {path}")
    return path


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

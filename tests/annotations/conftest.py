from pathlib import Path

import pytest

DATA_DIR = Path(__file__).parents[2] / ".." / "shared" / "data"


@pytest.fixture(scope="session")
def annotations_dir() -> Path:
    """The real QuPath files of ../shared/data/annotations (skips when absent)."""
    path = (DATA_DIR / "annotations").resolve()
    if not path.is_dir():
        pytest.skip(f"test data not found at {path}")
    return path


@pytest.fixture(scope="session")
def demo_project_dir(annotations_dir) -> Path:
    return annotations_dir / "qupath-demo-project"

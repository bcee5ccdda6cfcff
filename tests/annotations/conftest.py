from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def demo_project_dir(annotations_dir) -> Path:
    return annotations_dir / "qupath-demo-project"

from pathlib import Path

import pytest

SLIDES = Path(__file__).parents[2] / ".." / "shared" / "data" / "slides"


@pytest.fixture(scope="session")
def slides_dir() -> Path:
    if not SLIDES.is_dir():
        pytest.skip(f"test slides not found at {SLIDES.resolve()}")
    return SLIDES.resolve()

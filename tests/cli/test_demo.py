"""``ssmamba demo`` classifies the bundled sample with the bundled model."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from napari_ssmamba.cli import main


def test_demo_writes_all_outputs(tmp_path):
    from napari_ssmamba.errors import CheckpointError
    from napari_ssmamba.export import output_paths, outputs_complete
    from napari_ssmamba.model import default_checkpoint

    try:
        default_checkpoint()
    except CheckpointError:
        pytest.skip("the bundled default model is not in this checkout yet")
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert outputs_complete(tmp_path, "CMU-1-Small-Region")
    for path in output_paths(tmp_path, "CMU-1-Small-Region").values():
        assert str(path) in result.output

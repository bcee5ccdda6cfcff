"""What importing the package does to the process."""

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize(("already", "expected"), [(None, "32"), ("4", "4")])
def test_importing_the_package_spreads_cuda_streams_over_32_queues(already, expected):
    env = {k: v for k, v in os.environ.items() if k != "CUDA_DEVICE_MAX_CONNECTIONS"}
    if already is not None:
        env["CUDA_DEVICE_MAX_CONNECTIONS"] = already
    code = "import os, napari_ssmamba; print(os.environ['CUDA_DEVICE_MAX_CONNECTIONS'])"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == expected, out.stderr

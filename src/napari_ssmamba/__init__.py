"""napari-ssmamba: whole-slide ROI classification with SSMamba, in napari and from the shell.

Importing the package is cheap: torch, openslide and napari are imported only where they are used.
"""

import os

from napari_ssmamba.__about__ import __version__

# CUDA spreads streams over this many hardware queues (8 unless set). With 8, the stream nvJPEG
# decodes on can share a queue with the model's and wait behind a whole batch of its kernels; with
# 32 the GPU pipeline took 17-18% less time on an H100 (docs/benchmarks.md). It counts only when set
# before CUDA starts in the process; a value already set is kept.
os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "32")

__all__ = ["__version__"]

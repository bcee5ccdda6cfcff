"""What a record says a result came from: files by their sha256, the packages by their versions."""

from __future__ import annotations

import hashlib
import os
import platform
from importlib import metadata

#: the packages whose versions run records keep (None where one is not installed)
RECORDED_PACKAGES = (
    "napari-ssmamba",
    "torch",
    "numpy",
    "dask",
    "distributed",
    "dask-cuda",
    "openslide-python",
    "openslide-bin",
    "tifffile",
    "imagecodecs",
    "shapely",
    "pillow",
    "safetensors",
    "mamba-ssm",
)


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """The sha256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def package_versions() -> dict[str, str | None]:
    """Python's version and those of :data:`RECORDED_PACKAGES`."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in RECORDED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions

"""napari-ssmamba: whole-slide ROI classification with SSMamba, in napari and from the shell.

Importing the package is cheap: torch, openslide and napari are imported only where they are used.
"""

from napari_ssmamba.__about__ import __version__

__all__ = ["__version__"]

"""``python -m napari_ssmamba`` runs the ``ssmamba`` command."""

from napari_ssmamba.cli import main

main()

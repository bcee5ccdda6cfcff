"""Progress reporting and cancellation shared by inference and training, without Qt.

A long job takes ``progress(done, total, message)`` and ``cancel`` (a ``threading.Event``). The
CLI bridges ``progress`` to rich, the GUI to napari's ``progress`` inside a ``thread_worker``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from napari_ssmamba.errors import CancelledError

ProgressCallback = Callable[[int, int, str], None]


def no_progress(done: int, total: int, message: str = "") -> None:
    """A progress callback that does nothing."""


def raise_if_cancelled(cancel: threading.Event | None, what: str = "job") -> None:
    """Raise ``CancelledError`` when ``cancel`` is set."""
    if cancel is not None and cancel.is_set():
        raise CancelledError(f"{what} cancelled by the user")

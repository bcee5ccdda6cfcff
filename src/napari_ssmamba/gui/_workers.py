"""Run a core job off the UI thread with a napari progress bar and a Cancel.

Core jobs take ``progress(done, total, message)`` and a ``cancel`` event (see
``napari_ssmamba.progress``). :func:`start_job` runs one in napari's ``thread_worker`` and forwards
its progress through a Qt signal (queued to the UI thread) to a napari ``progress`` bar.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from qtpy.QtCore import QObject, Signal


class ProgressBridge(QObject):
    """Carries ``(done, total, message)`` from a worker thread to a napari progress bar."""

    reported = Signal(int, int, str)

    def __init__(self, description: str):
        super().__init__()
        from napari.utils import progress

        self._bar = progress(total=0, desc=description)
        self.reported.connect(self._update)

    def __call__(self, done: int, total: int, message: str = "") -> None:
        self.reported.emit(int(done), int(total), str(message))

    def _update(self, done: int, total: int, message: str) -> None:
        bar = self._bar
        if bar is None:  # a report queued before the job finished
            return
        if bar.total != total:
            bar.total = total
        if message:
            bar.set_description(message)
        bar.update(done - bar.n)  # napari's bar moves on update(), not on a new n

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def start_job(
    job: Callable,
    description: str,
    on_returned: Callable,
    on_errored: Callable,
    on_finished: Callable | None = None,
    on_progress: Callable[[int, int, str], None] | None = None,
):
    """Start ``job(progress=..., cancel=...)`` in a thread worker; return ``(worker, cancel_event)``.

    ``on_progress(done, total, message)`` also hears each report, on the UI thread.
    """
    from napari.qt.threading import create_worker

    cancel = threading.Event()
    bridge = ProgressBridge(description)
    if on_progress is not None:
        bridge.reported.connect(on_progress)
    worker = create_worker(
        job,
        progress=bridge,
        cancel=cancel,
        _start_thread=False,
        _connect={"returned": on_returned, "errored": on_errored},
    )

    def finished():
        bridge.close()
        if on_finished is not None:
            on_finished()

    worker.finished.connect(finished)
    worker.bridge = bridge  # keep the bridge alive as long as the worker
    worker.start()
    return worker, cancel

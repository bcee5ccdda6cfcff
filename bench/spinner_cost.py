"""What napari's activity indicator costs on a software-rendered desktop.

    xvfb-run -a python bench/spinner_cost.py [SLIDE] [--seconds 3]
    xvfb-run -a python bench/spinner_cost.py SLIDE --run {playing,paused} [--roi-mm 2]

Idle: opens SLIDE (default: the bundled sample) in napari and draws it, then runs Qt's event loop
for ``--seconds`` each: idle; with a napari progress bar shown (its status-bar indicator, a
QMovie of napari's ``loading.gif``, then plays); with the indicator's movie paused; and idle
again. For each, the CPU seconds of the process's threads by name (``/proc/self/task``): Mesa's
llvmpipe threads are the OpenGL rendering that Xvfb does in software.

``--run``: seconds from clicking Run in the Classify widget to the heatmap on the canvas
(``bench_pipeline.time_gui``, after the warm-up), ``ssmamba_tiny`` on the CPU, a ``--roi-mm``
ROI on the tissue, with the indicator playing as napari plays it, or never started.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

SAMPLE = Path(__file__).parents[1] / "src" / "napari_ssmamba" / "data" / "CMU-1-Small-Region.svs"


def cpu_seconds_by_thread() -> dict[str, float]:
    """CPU seconds (user + system) of this process's threads, summed by thread name."""
    ticks = os.sysconf("SC_CLK_TCK")
    seconds: dict[str, float] = {}
    for task in Path(f"/proc/{os.getpid()}/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended meanwhile
            continue
        seconds[name] = seconds.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("slide", nargs="?", type=Path, default=SAMPLE)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--run", choices=["playing", "paused"])
    parser.add_argument("--roi-mm", type=float, default=2.0)
    args = parser.parse_args()
    if args.run:
        return time_run(args.slide, args.run, args.roi_mm)

    import napari
    from napari.utils import progress
    from qtpy.QtCore import QEventLoop, QTimer
    from qtpy.QtWidgets import QLabel

    viewer = napari.Viewer(show=True)
    viewer.open(args.slide, plugin="napari-ssmamba")
    viewer.screenshot(canvas_only=True, flash=False)
    results = {}

    def run_for(state: str) -> None:
        before = cpu_seconds_by_thread()
        loop = QEventLoop()
        QTimer.singleShot(int(args.seconds * 1000), loop.quit)
        loop.exec_()
        after = cpu_seconds_by_thread()
        spent = {k: round(v - before.get(k, 0.0), 2) for k, v in after.items()}
        results[state] = {k: v for k, v in sorted(spent.items()) if v >= 0.01}
        print(f"{state}: {results[state]}", flush=True)

    run_for("idle")
    bar = progress(total=100, desc="a job")
    bar.update(10)
    run_for("progress bar shown")
    movies = [w.movie() for w in viewer.window._qt_window.findChildren(QLabel) if w.movie()]
    for movie in movies:
        movie.setPaused(True)
    run_for("progress bar shown, indicator paused")
    bar.close()
    run_for("idle again")
    viewer.close()
    print(json.dumps({"seconds_each": args.seconds, "cpu_seconds": results}))
    return 0


def time_run(slide_path: Path, indicator: str, roi_mm: float) -> int:
    """Print Run to heatmap in napari, on the CPU, with the activity indicator ``indicator``."""
    import sys

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_pipeline import random_model, roi_around_tissue, time_gui

    from napari_ssmamba.slide import open_slide

    if indicator == "paused":
        from qtpy.QtGui import QMovie

        QMovie.start = lambda self: None  # napari starts its indicator from Python
    model, card = random_model("ssmamba_tiny")
    with open_slide(slide_path) as slide:
        roi = roi_around_tissue(slide, roi_mm)
    seconds = time_gui(slide_path, model, card, roi, torch.device("cpu"), after_warm_up=True)
    print(json.dumps({"indicator": indicator, "torch_threads": torch.get_num_threads(), **seconds}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

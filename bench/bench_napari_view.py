"""napari on a big slide, our reader against napari-wsi: open -> first screenshot, camera moves
(overview, zooms 1/32 .. 2, pans), peak RSS.

Drives the shared harness ../shared/bench/napari_bench.py (one fresh process per run, under
Xvfb), for our reader in this environment and for napari-wsi in its own virtual environment, and
writes the medians of the runs.

usage: python bench/bench_napari_view.py SLIDE [--repeats 3] [--peer-python PY]
       [--out bench/results/slide_napari_DATE.json] [--shots DIR]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HARNESS = Path(__file__).resolve().parents[2] / "shared" / "bench" / "napari_bench.py"
FIGURES = ("open_call_s", "first_screenshot_s", "move_median_s", "move_max_s", "move_total_s",
           "noop_move_median_s", "rss_after_first_mb", "peak_rss_end_mb", "rss_end_mb")


def run_once(python: str, slide: Path, mode: str, shots: Path | None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run.json"
        command = ["xvfb-run", "-a", "-s", "-screen 0 1600x1000x24", python, str(HARNESS),
                   str(slide), mode, str(out)] + ([str(shots)] if shots else [])
        env = {k: v for k, v in os.environ.items() if k != "QT_QPA_PLATFORM"}
        proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900,
                              check=False)
        if not out.exists():
            raise RuntimeError(f"{mode} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        return json.loads(out.read_text())


def summarise(runs: list[dict]) -> dict:
    summary = {key: round(statistics.median(r[key] for r in runs), 3) for key in FIGURES
               if all(key in r for r in runs)}
    last = runs[-1]
    summary.update(runs=len(runs), layer=last["layer"], status_at_centre=last["status_at_centre"],
                   first_shot_unique_colors=last["first_shot_unique_colors"],
                   moves=last["moves"], napari=last["napari"])
    return summary


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("slide", type=Path)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--peer-python", default="/work/venv-peers/bin/python",
                        help="python of the environment where napari-wsi is installed")
    parser.add_argument("--peer-mode", default="widget",
                        help="napari_bench.py mode for napari-wsi: 'widget' (its WSI Reader "
                             "widget, OpenSlide backend) or 'api-microns'; its file reader "
                             "sends .tif to a rasterio backend")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--shots", type=Path, default=None, help="save screenshots here")
    args = parser.parse_args()

    readers = {"napari-ssmamba": (sys.executable, "reader:napari-ssmamba"),
               f"napari-wsi ({args.peer_mode})": (args.peer_python, args.peer_mode)}
    results = {}
    for name, (python, mode) in readers.items():
        runs = []
        for i in range(args.repeats):
            shots = args.shots / name.split()[0] if args.shots and i == 0 else None
            runs.append(run_once(python, args.slide, mode, shots))
            if "error" in runs[-1]:
                raise RuntimeError(f"{name}: {runs[-1]['error']}")
            print(f"{name} run {i}: first screenshot {runs[-1]['first_screenshot_s']} s, "
                  f"move median {runs[-1]['move_median_s']} s, "
                  f"peak RSS {runs[-1]['peak_rss_end_mb']} MB", flush=True)
        results[name] = summarise(runs)
    record = {
        "benchmark": "napari_view",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"2-core CI-class CPU machine ({platform.machine()}, {os.cpu_count()} CPUs, "
                   "shared with other jobs), Xvfb 1600x1000, window 1400x900",
        "slide": str(args.slide), "harness": "shared/bench/napari_bench.py", "results": results,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

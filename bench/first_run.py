"""The first Runs of a session: seconds from Run to result in a fresh process, with and without the
warm-up the Classify widget does in the background.

    python bench/first_run.py SLIDE [--arch ssmamba_tiny] [--base OTHER/src] [--out first_run.json]

Each session is a process of its own that does what the widget's workers do, without napari: load
the checkpoint, then Run on a 2 mm x 2 mm ROI centred on the tissue, on the same ROI moved by half
its width, on the whole tissue, and on the whole tissue again, all with LPR attention maps and one
``ClassificationCache`` (the widget keeps its model and cache). "Run to result" counts the
checkpoint's loading in the first Run, as the widget's first Run does. Sessions, in this order:

1. ``cold``: no warm-up, in the first process on the machine to run the model (the scan kernels
   compile; later processes find them in Triton's cache on disk);
2. ``cold`` with the code under ``--base`` (another tree, for an A/B in the same call), if given;
3. ``cold`` again;
4. ``warm``: ``napari_ssmamba.inference.warm_up`` first (what the widget does while the user
   draws), timed on its own, then the same Runs.

The buckets captured after each Run show which Runs captured CUDA graphs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def session(slide_path: str, checkpoint: str, warm: bool, device: str) -> dict:
    """One session in this process; returns its seconds."""
    import shapely.affinity
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_pipeline import _sync, roi_around_tissue

    from napari_ssmamba.inference import ClassificationCache, classify_slide
    from napari_ssmamba.inference.graphs import captured_buckets
    from napari_ssmamba.inference.predict import graph_settings
    from napari_ssmamba.model import load_checkpoint
    from napari_ssmamba.slide import open_slide

    device = torch.device(device)
    out = {"warm": warm, "runs": {}}
    with open_slide(slide_path) as slide:  # the viewer has the slide open already
        roi = roi_around_tissue(slide, 2.0)
        x0, _, x1, _ = roi.bounds
        moved = shapely.affinity.translate(roi, xoff=(x1 - x0) / 2)
        _sync(device)
        cache = ClassificationCache()
        start = time.perf_counter()
        model, card = load_checkpoint(checkpoint, device="cpu")
        load_s = time.perf_counter() - start
        if warm:
            from napari_ssmamba.inference import warm_up

            start = time.perf_counter()
            steps = warm_up(slide, model, card, str(device), cache=cache)
            _sync(device)
            out["warm_up_s"] = {"load_checkpoint_s": load_s, **steps}
            out["warm_up_s"]["total_s"] = load_s + time.perf_counter() - start
            load_s = 0.0
        settings = graph_settings(device, True, card)
        for name, rois in (
            ("roi", [roi]),
            ("moved_roi", [moved]),
            ("whole_tissue", None),
            ("whole_tissue_again", None),
        ):
            _sync(device)
            start = time.perf_counter()
            result = classify_slide(slide, model, card, rois=rois, device=str(device), cache=cache)
            _sync(device)
            seconds = time.perf_counter() - start
            out["runs"][name] = {
                "run_to_result_s": load_s + seconds,
                "tiles": result.n_tiles,
                "timings_s": result.timings,
                "buckets_captured": captured_buckets(model, settings, (card.tile_size,) * 2),
            }
            load_s = 0.0
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("slide", type=Path)
    parser.add_argument("--arch", default="ssmamba_tiny")
    parser.add_argument(
        "--base", type=Path, help="src folder of another tree: its cold session too"
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--device", default="cuda", help="cuda; cpu to try the script")
    parser.add_argument("--session", choices=["cold", "warm"], help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.session:  # a child: one session, its JSON on the last line
        print(
            json.dumps(
                session(str(args.slide), args.checkpoint, args.session == "warm", args.device)
            )
        )
        return 0

    sys.path.insert(0, str(Path(__file__).parent))
    import torch
    from bench_pipeline import environment, random_model

    from napari_ssmamba.model import save_checkpoint

    here = str(Path(__file__).parents[1] / "src")
    plan = [("cold", "ours", here)]
    if args.base:
        plan.append(("cold", "base", str(args.base.resolve())))
    plan += [("cold", "ours", here), ("warm", "ours", here)]
    out = {
        "benchmark": "first_run",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "arch": args.arch,
        "environment": environment(torch.device(args.device)),
        "sessions": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        model, card = random_model(args.arch)
        checkpoint = save_checkpoint(model, card, Path(tmp) / "model.safetensors")
        for order, (mode, code, src) in enumerate(plan, 1):
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join([src, *filter(None, [env.get("PYTHONPATH")])])
            command = [sys.executable, __file__, str(args.slide), "--session", mode]
            command += ["--checkpoint", str(checkpoint), "--device", args.device]
            done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(done.stderr[-3000:], file=sys.stderr)
                return done.returncode
            result = {"order": order, "code": code, **json.loads(done.stdout.splitlines()[-1])}
            out["sessions"].append(result)
            runs = {k: round(v["run_to_result_s"], 3) for k, v in result["runs"].items()}
            warm = result.get("warm_up_s", {}).get("total_s")
            print(order, code, mode, f"warm-up {warm:.2f} s" if warm else "", runs, file=sys.stderr)
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

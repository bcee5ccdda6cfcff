"""What a new batch size costs the first time a process runs it: the CUDA graph capture.

    python bench/graph_capture_cost.py [--arch ssmamba_tiny] [--out capture.json]

A moved ROI can give a batch size whose CUDA graph bucket the process has not run yet. For each
cuDNN setting (on, as PyTorch ships it; off: PyTorch's own convolution kernels) in a process of
its own, with LPR attention as the Classify widget runs: seconds to capture each bucket the first
time (the ROI sizes first: 64, 96, then 128, ...), seconds to capture the same bucket for a second
model object (what is per process, not per model), the model alone from the graphs on 1,024 tiles
in batches of 256, and a cProfile of the first capture of bucket 128 (where its time goes).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import subprocess
import sys
import time
from pathlib import Path

BUCKETS = (64, 96, 128, 160, 256)


def measure(arch: str, cudnn: bool) -> dict:
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_pipeline import best_of, random_model

    from napari_ssmamba.inference.predict import TileClassifier

    torch.backends.cudnn.enabled = cudnn
    device = torch.device("cuda")
    out = {"cudnn": cudnn, "first_capture_s": {}, "second_model_capture_s": {}}
    model, card = random_model(arch)
    classify = TileClassifier(model, card, device, attention=True)
    profile_text = ""
    for bucket in BUCKETS:
        torch.cuda.synchronize()
        start = time.perf_counter()
        if bucket == 128:
            profile = cProfile.Profile()
            profile.enable()
        classify.prepare([bucket], (224, 224))
        torch.cuda.synchronize()
        if bucket == 128:
            profile.disable()
            text = io.StringIO()
            pstats.Stats(profile, stream=text).sort_stats("cumulative").print_stats(25)
            profile_text = text.getvalue()
        out["first_capture_s"][bucket] = time.perf_counter() - start
    other, _ = random_model(arch)
    again = TileClassifier(other, card, device, attention=True)
    for bucket in BUCKETS:
        torch.cuda.synchronize()
        start = time.perf_counter()
        again.prepare([bucket], (224, 224))
        torch.cuda.synchronize()
        out["second_model_capture_s"][bucket] = time.perf_counter() - start
    tiles = torch.randint(0, 255, (1024, 224, 224, 3), dtype=torch.uint8, device=device)

    def model_only():
        for start in range(0, 1024, 256):
            classify(tiles[start : start + 256])

    out["model_only_1024_tiles_s"] = best_of(model_only, 5, device)
    out["profile_first_capture_128"] = profile_text
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="ssmamba_tiny")
    parser.add_argument("--cudnn", choices=["on", "off"], help="measure in this process")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if args.cudnn:
        print(json.dumps(measure(args.arch, args.cudnn == "on")))
        return 0
    results = {"benchmark": "graph_capture_cost", "arch": args.arch, "runs": []}
    for setting in ("on", "off"):  # a process each: what a process has run before is the point
        run = subprocess.run(
            [sys.executable, __file__, "--arch", args.arch, "--cudnn", setting],
            capture_output=True,
            text=True,
            check=True,
        )
        result = json.loads(run.stdout.strip().splitlines()[-1])
        results["runs"].append(result)
        print(
            f"cudnn {setting}: first capture {result['first_capture_s']}, second model "
            f"{result['second_model_capture_s']}, model alone "
            f"{result['model_only_1024_tiles_s'] * 1e3:.1f} ms",
            file=sys.stderr,
        )
        print(result["profile_first_capture_128"][:3000], file=sys.stderr)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The work of a Run around the model: tiling, the ROI's region, the heatmaps and the attention map.

    python bench/bench_assembly.py SLIDE [--arch ssmamba_tiny] [--stride PX] [--repeats 5]
        [--out assembly.json]

``classify_slide`` on the whole tissue of SLIDE with ``predict_tiles`` replaced by random
probabilities and attention maps, so that only what surrounds the model is timed; the tissue mask
is detected beforehand (a Run after the widget's warm-up). Seconds of the first call (which also
sums the tissue mask's integral image) and the best of ``--repeats`` after it, with
``classify_slide``'s own timings.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("slide", type=Path)
    parser.add_argument("--arch", default="ssmamba_tiny")
    parser.add_argument("--stride", type=int, help="model px (default: the tile size)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_pipeline import environment, random_model

    from napari_ssmamba.inference import ClassificationCache, classify_slide, predict
    from napari_ssmamba.inference.predict import ATTENTION_SIZE, TilePredictions
    from napari_ssmamba.slide import open_slide

    rng = np.random.default_rng(0)

    def random_predictions(read_tile, boxes_l0, model, card, attention=True, **kwargs):
        n = len(boxes_l0)
        probs = rng.random((n, len(card.class_names))).astype(np.float32)
        maps = rng.random((n, ATTENTION_SIZE, ATTENTION_SIZE)).astype(np.float32)
        return TilePredictions(probs / probs.sum(1, keepdims=True), maps if attention else None, 1)

    predict.predict_tiles = random_predictions  # classify_slide looks it up at each call
    model, card = random_model(args.arch)
    with open_slide(args.slide) as slide:
        cache = ClassificationCache()
        cache.tissue_of(slide)
        runs = []
        for _ in range(args.repeats + 1):
            start = time.perf_counter()
            result = classify_slide(
                slide, model, card, device="cpu", stride=args.stride, cache=cache
            )
            runs.append((time.perf_counter() - start, result.timings))
    best = min(runs[1:], key=lambda run: run[0])
    out = {
        "benchmark": "assembly",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "slide": str(args.slide),
        "arch": args.arch,
        "stride": args.stride,
        "tiles": result.n_tiles,
        "environment": environment(torch.device("cpu")),
        "first_s": runs[0][0],
        "best_s": best[0],
        "best_timings_s": best[1],
    }
    print(json.dumps({k: out[k] for k in ("tiles", "first_s", "best_s", "best_timings_s")}))
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

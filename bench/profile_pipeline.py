"""Where the GPU pipeline's time goes: the nvJPEG reader's stages, and a torch.profiler summary.

    python bench/profile_pipeline.py SLIDE [--arch ssmamba_base] [--out profile.json]

Stages of the reader, each synchronised, over the whole tissue's tiles in batches of 256: reading
the compressed bytes, nvJPEG decoding, gathering the model tiles. Then one ``classify_slide`` under
``torch.profiler``: the busiest CUDA kernels and how much of the prediction phase the GPU was busy.
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
    parser.add_argument("--arch", default="ssmamba_base")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch
    from torch.profiler import ProfilerActivity, profile

    from napari_ssmamba.inference import classify_slide
    from napari_ssmamba.inference.jpeg_batches import JpegBatchReader, tile_reader_for
    from napari_ssmamba.model import ModelCard, create_model
    from napari_ssmamba.slide import open_slide

    device = torch.device("cuda")
    torch.manual_seed(0)
    model = create_model(args.arch, num_classes=3)
    card = ModelCard(
        arch=args.arch,
        class_names=["a", "b", "c"],
        class_colors=[(255, 0, 0), (0, 255, 0), (0, 0, 255)],
        untrained=True,
    )
    out = {"arch": args.arch, "slide": str(args.slide)}
    with open_slide(args.slide) as slide:
        for _ in range(2):  # warm-up: kernels, nvJPEG, the decoder check
            result = classify_slide(slide, model, card, device="cuda", attention=False)
        boxes = result.tile_boxes_l0
        start = time.perf_counter()
        tile_reader_for(slide, result.geometry, device)
        out["tile_reader_for_s"] = time.perf_counter() - start
        reader = JpegBatchReader(slide, result.geometry, device)
        stages = {"bytes_s": 0.0, "decode_s": 0.0, "gather_s": 0.0}
        decode = reader.decode

        def timed_decode(streams):
            torch.cuda.synchronize()
            start = time.perf_counter()
            decoded = decode(streams)
            torch.cuda.synchronize()
            stages["decode_s"] += time.perf_counter() - start
            return decoded

        reader.decode = timed_decode
        grid_w = reader.jpeg.grid_hw[1]
        start_all = time.perf_counter()
        decoded_tiles = 0
        for i in range(0, len(boxes), args.batch_size):
            batch = boxes[i : i + args.batch_size]
            start = time.perf_counter()
            before = set(reader._decoded_keys.tolist())
            reader(batch)
            torch.cuda.synchronize()
            new = [k for k in reader._decoded_keys.tolist() if k not in before]
            decoded_tiles += len(new)
            t0 = time.perf_counter()  # the compressed bytes alone, read once more
            for k in new:
                reader.jpeg.stream(*divmod(int(k), grid_w))
            stages["bytes_s"] += time.perf_counter() - t0
            stages["gather_s"] += time.perf_counter() - start
        stages["gather_s"] -= stages["decode_s"]
        stages["reader_total_s"] = time.perf_counter() - start_all - stages["bytes_s"]
        stages["jpeg_tiles_decoded"] = decoded_tiles
        stages["model_tiles"] = len(boxes)
        out["reader_stages"] = stages
        print(json.dumps(stages), file=sys.stderr, flush=True)

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            result = classify_slide(slide, model, card, device="cuda", attention=False)
            torch.cuda.synchronize()
        events = prof.key_averages()
        for key in ("self_cuda_time_total", "cpu_time_total"):
            table = events.table(sort_by=key, row_limit=15, max_name_column_width=60)
            print(table, file=sys.stderr)
        busy_us = sum(e.self_device_time_total for e in events)
        out["profiled_predict_s"] = result.timings["predict_s"]
        out["gpu_busy_s"] = busy_us / 1e6
        out["top_kernels"] = [
            {"name": e.key[:80], "self_cuda_s": e.self_device_time_total / 1e6, "calls": e.count}
            for e in sorted(events, key=lambda e: -e.self_device_time_total)[:18]
        ]
    print(json.dumps({k: v for k, v in out.items() if k != "top_kernels"}), file=sys.stderr)
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

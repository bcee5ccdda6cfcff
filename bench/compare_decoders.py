"""The GPU pipeline with each way of decoding the slide's JPEG tiles, against the model alone.

    python bench/compare_decoders.py SLIDE [--arch ssmamba_tiny] [--batch-sizes 64,256]
        [--out decoders.json]

Over the whole tissue of SLIDE, best of ``--repeats``, at each batch size: the model alone on the
tiles already on the GPU (CUDA graphs, as the pipeline runs it), then per decoder the reader alone
and ``predict_tiles`` with that reader (the prediction phase of ``classify_slide``):

- ``nvjpeg``: torchvision's nvJPEG (the hardware decoder on an H100), batch by batch;
- ``nvjpeg_fixed_count``: the same, every call padded to a fixed number of streams (tests whether
  nvJPEG re-sizing its buffers on each new count is what stalls the GPU);
- ``libjpeg``: libjpeg-turbo in a CPU thread pool into pinned memory, copied without blocking.
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
    parser.add_argument("--batch-sizes", default="256", help="comma-separated")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_pipeline import random_model

    from napari_ssmamba.inference import classify_slide
    from napari_ssmamba.inference.jpeg_batches import (
        JpegBatchReader,
        libjpeg_decoder,
        nvjpeg_decoder,
    )
    from napari_ssmamba.inference.predict import TileClassifier, predict_tiles
    from napari_ssmamba.slide import open_slide

    device = torch.device("cuda")
    model, card = random_model(args.arch)
    out = {"arch": args.arch, "gpu": torch.cuda.get_device_name(), "batch_sizes": {}}
    with open_slide(args.slide) as slide:
        result = classify_slide(slide, model, card, device="cuda", attention=False)
        geometry, boxes = result.geometry, result.tile_boxes_l0
        jpeg = slide.jpeg_tiles(geometry.level)
        nvjpeg = nvjpeg_decoder(jpeg.colorspace, device)

        def fixed_count(streams, count=128):
            padded = list(streams) + [streams[-1]] * max(count - len(streams), 0)
            return nvjpeg(padded)[: len(streams)]

        decoders = {
            "nvjpeg": nvjpeg,
            "nvjpeg_fixed_count": fixed_count,
            "libjpeg": libjpeg_decoder(jpeg.colorspace, jpeg.tile_hw, device),
        }
        tiles = JpegBatchReader(slide, geometry, device)(boxes)

        def best(run):
            times = []
            for _ in range(args.repeats + 1):  # the first is a warm-up
                torch.cuda.synchronize()
                start = time.perf_counter()
                run()
                torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            return min(times[1:])

        for batch_size in (int(b) for b in args.batch_sizes.split(",")):
            seconds = {}
            classify = TileClassifier(model, card, device, attention=False)
            sizes = [len(tiles[i : i + batch_size]) for i in range(0, len(tiles), batch_size)]
            classify.prepare(sizes, tuple(tiles.shape[1:3]))

            def model_only(classify=classify, batch_size=batch_size):
                for i in range(0, len(tiles), batch_size):
                    classify(tiles[i : i + batch_size])

            seconds["model_only"] = best(model_only)
            for name, decode in decoders.items():
                reader = JpegBatchReader(slide, geometry, device, decode=decode)

                def read_all(reader=reader, batch_size=batch_size):
                    reader._decoded_keys = reader._decoded_keys[:0]
                    for i in range(0, len(boxes), batch_size):
                        reader(boxes[i : i + batch_size])

                def pipeline(reader=reader, batch_size=batch_size):
                    reader._decoded_keys = reader._decoded_keys[:0]
                    predict_tiles(
                        reader,
                        boxes,
                        model,
                        card,
                        device="cuda",
                        attention=False,
                        batch_size=batch_size,
                        batched=True,
                    )

                seconds[f"{name}_reader_only"] = best(read_all)
                seconds[f"{name}_pipeline"] = best(pipeline)
                if batch_size == 64:
                    got = reader(boxes[:64]).cpu().numpy().astype(int)
                    want = JpegBatchReader(slide, geometry, device)(boxes[:64]).cpu().numpy()
                    out[f"{name}_vs_nvjpeg_mean_abs"] = float(abs(got - want).mean())
            out["batch_sizes"][batch_size] = {
                "seconds": seconds,
                "pipeline_vs_model_only": {
                    name: seconds["model_only"] / seconds[f"{name}_pipeline"] for name in decoders
                },
            }
            print(
                batch_size,
                json.dumps({k: round(v * 1e3, 1) for k, v in seconds.items()}),
                file=sys.stderr,
                flush=True,
            )
    out["tiles"] = len(boxes)
    print(json.dumps(out), file=sys.stderr)
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

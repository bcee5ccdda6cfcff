"""The GPU pipeline with each way of decoding and batching, against the model alone, in one run.

    python bench/compare_decoders.py SLIDE [--arch ssmamba_tiny] [--first-batches 0,16,32,64]
        [--growths 2] [--second-batches grown,first] [--decoders nvjpeg,torchvision,libjpeg]
        [--gathers triton,torch] [--out decoders.json]

For the whole tissue of SLIDE and for a 2 mm x 2 mm ROI on it, best of ``--repeats`` after a
warm-up, batch size 256:

- the model alone on the tiles already on the GPU (CUDA graphs, as the pipeline runs it), batched
  as the pipeline batches them for each first-batch size (0: every batch full) and growth, and
  with ``--second-batches first`` also with a second batch as small as the first (unless it is
  the last) instead of a grown one;
- per decoder and way of gathering the model tiles from the decoded ones (``triton``: one
  kernel; ``torch``: torch indexing), the reader alone and ``predict_tiles`` with it (the
  prediction phase of ``classify_slide``), for each of those batchings:

  - ``nvjpeg``: the package's nvJPEG binding, enqueued on the reader's stream, into its buffer;
  - ``torchvision``: ``torchvision.io.decode_jpeg(device="cuda")`` (what the package used before):
    its own stream, the host waits before and after, new tensors each call;
  - ``libjpeg``: libjpeg-turbo in a CPU thread pool into pinned memory, copied without blocking.

``pipeline / model alone`` divides by the fastest model-alone batching, whichever it is.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def torchvision_decoder():
    """torchvision's nvJPEG behind the ``decode(streams, out)`` interface."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(streams, out):
        data = [torch.frombuffer(bytearray(s), dtype=torch.uint8) for s in streams]
        images = decode_jpeg(data, mode=ImageReadMode.RGB, device=out.device)
        out.copy_(torch.stack(images).permute(0, 2, 3, 1))

    return decode


def second_batch_as_first(batch_sizes):
    """``batch_sizes`` with a second batch as small as the first, unless it would be the last:
    the reader then makes it while the model runs the first (the schedule ``--second-batches
    first`` tries)."""

    def sizes(n, batch_size, first=None, growth=2.0):
        plain = batch_sizes(n, batch_size, first, growth)
        if first is None or len(plain) <= 2:
            return plain
        return [plain[0], *batch_sizes(n - plain[0], batch_size, first, growth)]

    return sizes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("slide", type=Path)
    parser.add_argument("--arch", default="ssmamba_tiny")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--first-batches", default="0,16,32,64", help="comma-separated; 0: full")
    parser.add_argument("--growths", default="2", help="comma-separated batch growth factors")
    parser.add_argument("--decoders", default="nvjpeg,torchvision,libjpeg")
    parser.add_argument("--gathers", default="triton", help="comma-separated: triton, torch")
    parser.add_argument(
        "--second-batches", default="grown", help="comma-separated: grown (the package's), first"
    )
    parser.add_argument("--roi-mm", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_pipeline import best_of, environment, random_model, roi_and_whole_slide

    from napari_ssmamba.inference import predict
    from napari_ssmamba.inference.jpeg_batches import JpegBatchReader, libjpeg_decoder
    from napari_ssmamba.inference.nvjpeg import decoder_for
    from napari_ssmamba.inference.predict import TileClassifier, batch_sizes, predict_tiles
    from napari_ssmamba.slide import open_slide

    device = torch.device("cuda")
    model, card = random_model(args.arch)
    firsts = [int(f) or None for f in args.first_batches.split(",")]
    growths = [float(g) for g in args.growths.split(",")]
    schedules = {"grown": batch_sizes, "first": second_batch_as_first(batch_sizes)}
    batchings = [
        (f, g, second)
        for f in firsts
        for g in (growths if f else growths[:1])
        for second in (args.second_batches.split(",") if f else ["grown"])
    ]

    def name(first, growth, second):
        return f"first{first or 0}_growth{growth:g}" + ("_second_first" * (second == "first"))

    out = {
        "benchmark": "compare_decoders",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "arch": args.arch,
        "batch_size": args.batch_size,
        "environment": environment(device),
        "nvjpeg_backend": decoder_for(device).backend,
        "cases": {},
    }

    def best(run):
        return best_of(run, args.repeats, device)

    with open_slide(args.slide) as slide:
        cases = roi_and_whole_slide(slide, model, card, args.roi_mm, device)
        jpeg = slide.jpeg_tiles(cases["whole_slide"].geometry.level)
        decoders = {
            "nvjpeg": "nvjpeg",
            "torchvision": torchvision_decoder(),
            "libjpeg": libjpeg_decoder(jpeg.colorspace),
        }
        gathers = args.gathers.split(",")
        decoders = {
            f"{key}_{gather}" if len(gathers) > 1 else key: (decoders[key], gather)
            for key in args.decoders.split(",")
            for gather in gathers
        }
        for case, result in reversed(cases.items()):  # the whole slide first
            geometry, boxes = result.geometry, result.tile_boxes_l0
            tiles = JpegBatchReader(slide, geometry, device)(boxes)
            reference = JpegBatchReader(slide, geometry, device, gather="torch")
            seconds, differences = {}, {}
            for first, growth, second in batchings:
                sizes = schedules[second](len(tiles), args.batch_size, first, growth)
                classify = TileClassifier(model, card, device, attention=False)
                classify.prepare(sizes, tuple(tiles.shape[1:3]))

                def model_only(classify=classify, sizes=sizes, tiles=tiles):
                    start = 0
                    for size in sizes:
                        classify(tiles[start : start + size])
                        start += size

                seconds[f"model_only_{name(first, growth, second)}"] = best(model_only)
            for decoder, (decode, gather) in decoders.items():
                reader = JpegBatchReader(slide, geometry, device, decode=decode, gather=gather)
                got = reader(boxes[:64]).cpu().numpy().astype(int)
                want = reference(boxes[:64]).cpu().numpy().astype(int)
                differences[f"{decoder}_vs_nvjpeg_torch_mean_abs"] = float(abs(got - want).mean())

                def read_all(reader=reader, boxes=boxes):
                    reader.reset()
                    for start in range(0, len(boxes), args.batch_size):
                        reader(boxes[start : start + args.batch_size])

                seconds[f"{decoder}_reader_only"] = best(read_all)
                for first, growth, second in batchings:
                    predict.CUDA_FIRST_BATCH = first
                    predict.CUDA_BATCH_GROWTH = growth
                    predict.batch_sizes = schedules[second]

                    def pipeline(reader=reader, boxes=boxes):
                        reader.reset()
                        predict_tiles(
                            reader,
                            boxes,
                            model,
                            card,
                            device="cuda",
                            attention=False,
                            batch_size=args.batch_size,
                            batched=True,
                        )

                    key = f"{decoder}_{name(first, growth, second)}_pipeline"
                    seconds[key] = best(pipeline)
            model_alone = min(v for k, v in seconds.items() if k.startswith("model_only"))
            out["cases"][case] = {
                "tiles": len(boxes),
                "seconds": seconds,
                "pipeline_vs_model_only": {
                    k.removesuffix("_pipeline"): model_alone / v
                    for k, v in seconds.items()
                    if k.endswith("_pipeline")
                },
                "differences": differences,
            }
            print(
                case,
                len(boxes),
                json.dumps({k: round(v * 1e3, 2) for k, v in seconds.items()}),
                file=sys.stderr,
                flush=True,
            )
    print(json.dumps(out), file=sys.stderr)
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

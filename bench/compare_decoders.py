"""The GPU pipeline with each way of decoding and batching, against the model alone, in one run.

    python bench/compare_decoders.py SLIDE [--arch ssmamba_tiny] [--first-batches 0,16,32,64]
        [--growths 2] [--decoders nvjpeg,torchvision,libjpeg] [--gathers triton,torch]
        [--out decoders.json]

For the whole tissue of SLIDE and for a 2 mm x 2 mm ROI on it, best of ``--repeats`` after a
warm-up, batch size 256:

- the model alone on the tiles already on the GPU (CUDA graphs, as the pipeline runs it), batched
  as the pipeline batches them for each first-batch size (0: every batch full) and growth;
- per decoder and way of gathering the model tiles from the decoded ones (``triton``: one
  kernel; ``torch``: torch indexing), the reader alone and ``predict_tiles`` with it (the
  prediction phase of ``classify_slide``), for each first-batch size and growth:

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("slide", type=Path)
    parser.add_argument("--arch", default="ssmamba_tiny")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--first-batches", default="0,16,32,64", help="comma-separated; 0: full")
    parser.add_argument("--growths", default="2", help="comma-separated batch growth factors")
    parser.add_argument("--decoders", default="nvjpeg,torchvision,libjpeg")
    parser.add_argument("--gathers", default="triton", help="comma-separated: triton, torch")
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
    batchings = [(f, g) for f in firsts for g in (growths if f else growths[:1])]
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
            f"{name}_{gather}" if len(gathers) > 1 else name: (decoders[name], gather)
            for name in args.decoders.split(",")
            for gather in gathers
        }
        for case, result in reversed(cases.items()):  # the whole slide first
            geometry, boxes = result.geometry, result.tile_boxes_l0
            tiles = JpegBatchReader(slide, geometry, device)(boxes)
            reference = JpegBatchReader(slide, geometry, device, gather="torch")
            seconds, differences = {}, {}
            for first, growth in batchings:
                sizes = batch_sizes(len(tiles), args.batch_size, first, growth)
                classify = TileClassifier(model, card, device, attention=False)
                classify.prepare(sizes, tuple(tiles.shape[1:3]))

                def model_only(classify=classify, sizes=sizes, tiles=tiles):
                    start = 0
                    for size in sizes:
                        classify(tiles[start : start + size])
                        start += size

                seconds[f"model_only_first{first or 0}_growth{growth:g}"] = best(model_only)
            for name, (decode, gather) in decoders.items():
                reader = JpegBatchReader(slide, geometry, device, decode=decode, gather=gather)
                got = reader(boxes[:64]).cpu().numpy().astype(int)
                want = reference(boxes[:64]).cpu().numpy().astype(int)
                differences[f"{name}_vs_nvjpeg_torch_mean_abs"] = float(abs(got - want).mean())

                def read_all(reader=reader, boxes=boxes):
                    reader.reset()
                    for start in range(0, len(boxes), args.batch_size):
                        reader(boxes[start : start + args.batch_size])

                seconds[f"{name}_reader_only"] = best(read_all)
                for first, growth in batchings:
                    predict.CUDA_FIRST_BATCH = first
                    predict.CUDA_BATCH_GROWTH = growth

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

                    key = f"{name}_first{first or 0}_growth{growth:g}_pipeline"
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

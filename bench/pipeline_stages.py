"""When each step of ``predict_tiles`` runs, on the host and on the GPU: where a pipeline's time goes.

    python bench/pipeline_stages.py SLIDE [--arch ssmamba_tiny] [--roi-mm 2] [--out stages.json]

Lighter than ``profile_pipeline.py``'s torch.profiler timelines, so that a 20 ms ROI run is not
changed by being watched: the steps are wrapped to note host times (``perf_counter``) and CUDA
events on the stream each step uses, and so is nvJPEG's call inside the decode. For the 2 mm ROI
and the whole slide, after warm-up runs, one run is printed as a timeline in ms from the start of
``predict_tiles``: per step its host span and, for GPU work, when it ended on the GPU. The same
runs also give the best of ``--repeats`` with the interpreter's switch interval at 5 ms (its
default) and at 0.1 ms. Last, the reader alone over the whole slide under cProfile: the host
functions it spends its time in.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path


@contextlib.contextmanager
def noted_steps(log):
    """Wrap the pipeline's steps so that each appends (name, host start, host end, event) to log."""
    import torch

    from napari_ssmamba.inference import jpeg_batches, nvjpeg, predict

    def wrap(cls, method, name, gpu):
        original = getattr(cls, method)

        def noted(*args, _original=original, **kwargs):
            start = time.perf_counter()
            result = _original(*args, **kwargs)
            end = time.perf_counter()
            event = None
            if gpu:
                event = torch.cuda.Event(enable_timing=True)
                event.record(torch.cuda.current_stream())
            log.append((name, start, end, event))
            return result

        setattr(cls, method, noted)
        return cls, method, original

    saved = [
        wrap(predict.TileClassifier, "__init__", "classifier setup", False),
        wrap(predict.TileClassifier, "prepare", "graphs ready", False),
        wrap(predict._BatchReader, "__init__", "reader started", False),
        wrap(jpeg_batches.JpegBatchReader, "plan", "plan batch", False),
        wrap(jpeg_batches.JpegBatchReader, "make", "make batch", True),
        wrap(nvjpeg.BatchedJpegDecoder, "decode_into", "  nvJPEG decode", True),
        wrap(nvjpeg.BatchedJpegDecoder, "check", "  headers checked", False),
        wrap(predict.TileClassifier, "__call__", "model batch", True),
        wrap(jpeg_batches, "_to_device", "  indices to GPU", True),
    ]
    lib = nvjpeg.library()
    call = lib.nvjpegDecodeBatched  # the ctypes call that holds its thread while the engines work

    def noted_call(*args):
        start = time.perf_counter()
        status = call(*args)
        log.append(("    nvJPEG's call", start, time.perf_counter(), None))
        return status

    lib.nvjpegDecodeBatched = noted_call
    try:
        yield
    finally:
        lib.nvjpegDecodeBatched = call
        for cls, method, original in saved:
            setattr(cls, method, original)


def timeline(run) -> list[dict]:
    """Run ``run()`` once with the steps noted; rows in ms from the start."""
    import torch

    log = []
    torch.cuda.synchronize()
    start_event = torch.cuda.Event(enable_timing=True)
    start_event.record()
    start = time.perf_counter()
    with noted_steps(log):
        run()
    end = time.perf_counter()
    torch.cuda.synchronize()
    rows = []
    for name, host_start, host_end, event in log:
        row = {
            "step": name,
            "host_start_ms": round((host_start - start) * 1e3, 2),
            "host_end_ms": round((host_end - start) * 1e3, 2),
        }
        if event is not None:
            row["gpu_done_ms"] = round(start_event.elapsed_time(event), 2)
        rows.append(row)
    rows.append({"step": "predict_tiles returned", "host_end_ms": round((end - start) * 1e3, 2)})
    return sorted(rows, key=lambda r: r.get("host_start_ms", r["host_end_ms"]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("slide", type=Path)
    parser.add_argument("--arch", default="ssmamba_tiny")
    parser.add_argument("--roi-mm", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_pipeline import best_of, environment, random_model, roi_and_whole_slide

    from napari_ssmamba.inference.jpeg_batches import tile_reader_for
    from napari_ssmamba.inference.predict import predict_tiles
    from napari_ssmamba.slide import open_slide

    device = torch.device("cuda")
    model, card = random_model(args.arch)
    out = {"benchmark": "pipeline_stages", "arch": args.arch, "environment": environment(device)}
    with open_slide(args.slide) as slide:
        cases = roi_and_whole_slide(slide, model, card, args.roi_mm, device)
        for case, result in cases.items():
            reader = tile_reader_for(slide, result.geometry, device)
            boxes = result.tile_boxes_l0

            def run(reader=reader, boxes=boxes):
                reader.reset()
                predict_tiles(
                    reader, boxes, model, card, device="cuda", attention=False, batched=True
                )

            best = {}
            for interval in (5e-3, 1e-4):
                sys.setswitchinterval(interval)
                seconds = best_of(run, args.repeats, device)
                best[f"switch_interval_{interval * 1e3:g}ms"] = round(seconds * 1e3, 2)
            sys.setswitchinterval(5e-3)
            rows = timeline(run)
            out[case] = {"tiles": len(boxes), "best_ms": best, "timeline": rows}
            print(f"== {case}: {len(boxes)} tiles, best {best}", file=sys.stderr)
            for row in rows:
                print(
                    f"  {row['step']:<24} host {row.get('host_start_ms', ''):>7} - "
                    f"{row['host_end_ms']:>7}  gpu done {row.get('gpu_done_ms', '')}",
                    file=sys.stderr,
                )
        profile = cProfile.Profile()
        for enabled in (False, True):  # warm-up, then profiled
            reader.reset()
            torch.cuda.synchronize()
            if enabled:
                profile.enable()
            for start in range(0, len(boxes), 256):
                reader(boxes[start : start + 256])
            torch.cuda.synchronize()
        profile.disable()
        text = io.StringIO()
        pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(20)
        out["reader_host_profile"] = text.getvalue()
        print(text.getvalue(), file=sys.stderr)
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Where the GPU pipeline's time goes: the nvJPEG reader's stages, and torch.profiler timelines.

    python bench/profile_pipeline.py SLIDE [--arch ssmamba_base] [--roi-mm 2] [--out profile.json]
        [--traces DIR]
    python bench/profile_pipeline.py --summarize TRACE.json.gz   # the summary of a saved trace

1. Stages of the reader, each synchronised, over the whole tissue's tiles in batches of 256:
   reading the compressed bytes, nvJPEG decoding, gathering the model tiles.
2. Timelines (torch.profiler, CPU and CUDA) of: the reader alone; ``classify_slide`` with the
   model eager and from CUDA graphs, over the whole slide and over one ROI. Each is summarised:
   how much of the prediction phase some GPU stream was busy and each stream's share, the GPU's
   idle gaps, and per CPU thread the time in the reader's and the model's steps (marked with
   ``record_function``) and in CUDA runtime calls. The traces are saved (gzipped Chrome JSON).
3. Prediction time with the interpreter's thread switch interval at 0.1 ms instead of 5 ms: if
   the model's thread waits for the reader's to hand over the interpreter, this shortens it.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

STEPS = {  # what record_function marks: class path -> method names, or module -> function names
    "napari_ssmamba.inference.predict": ("predict_tiles",),
    "napari_ssmamba.inference.jpeg_batches.JpegBatchReader": (
        "plan",
        "make",
    ),
    "napari_ssmamba.inference.predict.TileClassifier": ("__call__",),
}


@contextlib.contextmanager
def marked_steps():
    """Wrap the reader's and the model's steps in ``record_function`` ranges named after them."""
    import importlib

    from torch.profiler import record_function

    saved = []
    for path, methods in STEPS.items():
        try:
            cls, name = importlib.import_module(path), path.rsplit(".", 1)[1]
        except ModuleNotFoundError:
            module, name = path.rsplit(".", 1)
            cls = getattr(importlib.import_module(module), name)
        for method in methods:
            original = cls.__dict__[method]

            def marked(*args, _original=original, _label=f"{name}.{method}", **kwargs):
                with record_function(_label):
                    return _original(*args, **kwargs)

            setattr(cls, method, marked)
            saved.append((cls, method, original))
    try:
        yield
    finally:
        for cls, method, original in saved:
            setattr(cls, method, original)


def _union_length(intervals) -> float:
    total, end = 0.0, -float("inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def summarize(trace: dict) -> dict:
    """Busy time per GPU stream and per CPU thread in a Chrome trace from torch.profiler (ms).

    The window is the prediction phase (``predict_tiles``) when the trace has one, else the
    ``profiled.window`` range.
    """
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X" and "dur" in e]
    marks = {e.get("name"): e for e in events if e.get("cat") == "user_annotation"}
    mark = marks.get("predict.predict_tiles") or marks["profiled.window"]
    t0, t1 = mark["ts"], mark["ts"] + mark["dur"]

    def inside(e):
        return e["ts"] >= t0 and e["ts"] + e["dur"] <= t1

    kernels = [
        e for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset") and inside(e)
    ]
    per_stream = defaultdict(list)
    for e in kernels:
        per_stream[str(e.get("args", {}).get("stream", e.get("tid")))].append(
            (e["ts"], e["ts"] + e["dur"])
        )
    spans = sorted(iv for ivs in per_stream.values() for iv in ivs)
    gaps, end = [], t0
    for start, stop in spans:
        if start - end > 500:  # idle for more than 0.5 ms
            gaps.append(start - end)
        end = max(end, stop)
    if t1 - end > 500:
        gaps.append(t1 - end)
    threads = defaultdict(lambda: defaultdict(float))
    for e in events:
        if not inside(e):
            continue
        name, cat = e.get("name", ""), e.get("cat")
        if cat == "user_annotation" and "." in name:
            threads[e["tid"]][name] += e["dur"]
        elif cat == "cuda_runtime":
            threads[e["tid"]][f"runtime:{name}"] += e["dur"]
    wall = t1 - t0
    return {
        "window_ms": wall / 1e3,
        "gpu_busy_ms": _union_length(spans) / 1e3,
        "gpu_busy_share": _union_length(spans) / wall if wall else 0.0,
        "streams_busy_ms": {s: _union_length(ivs) / 1e3 for s, ivs in per_stream.items()},
        "kernels": len(kernels),
        "gpu_gaps_over_0.5ms": {"count": len(gaps), "total_ms": sum(gaps) / 1e3},
        "threads_ms": {
            str(tid): {
                k: round(v / 1e3, 3)
                for k, v in sorted(steps.items(), key=lambda kv: -kv[1])
                if v >= 100
            }
            for tid, steps in threads.items()
        },
    }


def traced(name: str, run, traces: Path | None) -> tuple[dict, float]:
    """Run ``run()`` under torch.profiler with the steps marked; its summary and wall seconds."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    try:  # the reader's threads too, not only this one
        config = torch._C._profiler._ExperimentalConfig(profile_all_threads=True)
    except TypeError:
        config = None
    activities = [ProfilerActivity.CPU, ProfilerActivity.CUDA]
    with marked_steps(), profile(activities=activities, experimental_config=config) as prof:
        torch.cuda.synchronize()
        start = time.perf_counter()
        with record_function("profiled.window"):
            run()
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    path = Path(f"/tmp/{name}.json")
    prof.export_chrome_trace(str(path))
    trace = json.loads(path.read_text())
    if traces is not None:
        traces.mkdir(parents=True, exist_ok=True)
        with gzip.open(traces / f"{name}.json.gz", "wt") as f:
            json.dump(trace, f)
    summary = summarize(trace)
    print(f"[{name}] {seconds * 1e3:.1f} ms: {json.dumps(summary)}", file=sys.stderr, flush=True)
    return summary, seconds


def reader_stages(slide, geometry, boxes, batch_size, device) -> dict:
    """Each stage of the nvJPEG reader, synchronised, in seconds over all ``boxes``."""
    import torch

    from napari_ssmamba.inference.jpeg_batches import JpegBatchReader

    reader = JpegBatchReader(slide, geometry, device)
    stages = {"bytes_s": 0.0, "decode_s": 0.0, "gather_s": 0.0}
    decode = reader.decode

    def timed_decode(streams, out):
        torch.cuda.synchronize()
        start = time.perf_counter()
        decode(streams, out)
        torch.cuda.synchronize()
        stages["decode_s"] += time.perf_counter() - start

    reader.decode = timed_decode
    grid_w = reader.jpeg.grid_hw[1]
    start_all = time.perf_counter()
    decoded_tiles, decoded_keys = 0, []
    for i in range(0, len(boxes), batch_size):
        start = time.perf_counter()
        before = set(reader._planned_keys.tolist())
        reader(boxes[i : i + batch_size])
        torch.cuda.synchronize()
        new = [k for k in reader._planned_keys.tolist() if k not in before]
        decoded_tiles += len(new)
        decoded_keys.extend(new)
        t0 = time.perf_counter()  # the compressed bytes alone, read once more
        for k in new:
            reader.jpeg.stream(*divmod(int(k), grid_w))
        stages["bytes_s"] += time.perf_counter() - t0
        stages["gather_s"] += time.perf_counter() - start
    stages["gather_s"] -= stages["decode_s"]
    stages["reader_total_s"] = time.perf_counter() - start_all - stages["bytes_s"]
    stages["jpeg_tiles_decoded"] = decoded_tiles
    stages["model_tiles"] = len(boxes)
    # the same JPEG tiles in one call: what the decoder does without per-call costs
    streams = [reader.jpeg.stream(*divmod(int(k), grid_w)) for k in decoded_keys]
    out = torch.empty((len(streams), *reader.jpeg.tile_hw, 3), dtype=torch.uint8, device=device)
    for _ in range(2):
        torch.cuda.synchronize()
        start = time.perf_counter()
        decode(streams, out)
        torch.cuda.synchronize()
    stages["decode_in_one_call_s"] = time.perf_counter() - start
    return stages


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("slide", type=Path, nargs="?")
    parser.add_argument("--arch", default="ssmamba_base")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--roi-mm", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--traces", type=Path, help="folder for the gzipped Chrome traces")
    parser.add_argument("--summarize", type=Path, help="print the summary of a saved trace")
    args = parser.parse_args()
    if args.summarize:
        with gzip.open(args.summarize, "rt") as f:
            print(json.dumps(summarize(json.load(f)), indent=2))
        return 0

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_pipeline import random_model, roi_around_tissue

    from napari_ssmamba.inference import classify_slide
    from napari_ssmamba.inference.jpeg_batches import JpegBatchReader
    from napari_ssmamba.slide import open_slide

    device = torch.device("cuda")
    model, card = random_model(args.arch)
    out = {"arch": args.arch, "slide": str(args.slide), "batch_size": args.batch_size}
    with open_slide(args.slide) as slide:
        roi = roi_around_tissue(slide, args.roi_mm)
        cases = {"whole_slide": None, f"roi_{args.roi_mm:g}mm": [roi]}

        def classify(rois, graphs):
            return classify_slide(
                slide, model, card, rois, device="cuda", attention=False, cuda_graphs=graphs
            )

        results = {}
        for rois in cases.values():
            for graphs in (False, True):  # warm-up: kernels, graphs, nvJPEG, the decoder check
                for _ in range(2):
                    results[rois is None] = classify(rois, graphs)
        whole = results[True]
        out["reader_stages"] = reader_stages(
            slide, whole.geometry, whole.tile_boxes_l0, args.batch_size, device
        )
        print(json.dumps(out["reader_stages"]), file=sys.stderr, flush=True)

        reader = JpegBatchReader(slide, whole.geometry, device)
        boxes = whole.tile_boxes_l0

        def read_all():
            for i in range(0, len(boxes), args.batch_size):
                reader(boxes[i : i + args.batch_size])

        out["timelines"] = {}
        summary, seconds = traced("reader_only", read_all, args.traces)
        out["timelines"]["reader_only"] = {"seconds": seconds, **summary}
        for case, rois in cases.items():
            for graphs in (False, True):
                name = f"{case}_{'graphs' if graphs else 'eager'}"

                summary, seconds = traced(
                    name, lambda rois=rois, graphs=graphs: classify(rois, graphs), args.traces
                )
                out["timelines"][name] = {"seconds": seconds, **summary}

        switch = sys.getswitchinterval()
        out["predict_s"] = {}
        for interval in (switch, 1e-4):
            sys.setswitchinterval(interval)
            for case, rois in cases.items():
                for graphs in (False, True):
                    best = min(
                        classify(rois, graphs).timings["predict_s"] for _ in range(args.repeats)
                    )
                    name = f"{case}_{'graphs' if graphs else 'eager'}_switch_{interval * 1e3:g}ms"
                    out["predict_s"][name] = best
                    print(f"{name}: {best * 1e3:.1f} ms", file=sys.stderr, flush=True)
        sys.setswitchinterval(switch)
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

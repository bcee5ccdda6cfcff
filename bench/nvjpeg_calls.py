"""Where the time of one nvJPEG batch goes: the decode per batch size, re-initialising for a new
batch size, pre-allocating, and reading the headers.

    python bench/nvjpeg_calls.py SLIDE [--level 1] [--repeats 20] [--out nvjpeg_calls.json]

On the level's JPEG tiles with the most bytes (tissue), through the package's binding
(``inference.nvjpeg``): median host milliseconds per ``decode_into`` until its stream is done,
and the GPU's share (CUDA events), for

- batches of 1 to 128 tiles, the same size call after call;
- batches alternating between 26 and 20 tiles (nvJPEG is initialised again for each new size,
  as a run's batches do);
- the same after ``nvjpegDecodeBatchedPreAllocate`` for 256 tiles;
- ``nvjpegDecodeBatchedInitialize`` alone, and ``image_info`` (the header check) of 26 tiles.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import time
from pathlib import Path

_OUTPUT_RGBI = 5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("slide", type=Path)
    parser.add_argument("--level", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    import numpy as np
    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_pipeline import environment

    from napari_ssmamba.inference.nvjpeg import BatchedJpegDecoder
    from napari_ssmamba.slide import open_slide

    device = torch.device("cuda", torch.cuda.current_device())
    with open_slide(args.slide) as slide:
        jpeg = slide.jpeg_tiles(args.level)
        grid_h, grid_w = jpeg.grid_hw
        streams = [jpeg.stream(r, c) for r in range(grid_h) for c in range(grid_w)]
    streams.sort(key=len, reverse=True)
    streams = streams[:128]
    tile_h, tile_w = jpeg.tile_hw
    decoder = BatchedJpegDecoder(device)  # a decoder of its own: its state is this script's
    stream = torch.cuda.Stream(device)
    out = torch.empty((256, tile_h, tile_w, 3), dtype=torch.uint8, device=device)

    def decode(n):
        start_event, end_event = (
            torch.cuda.Event(enable_timing=True),
            torch.cuda.Event(enable_timing=True),
        )
        torch.cuda.synchronize()
        start = time.perf_counter()
        start_event.record(stream)
        decoder.decode_into(streams[:n], out[:n], stream)
        returned = time.perf_counter()
        end_event.record(stream)
        stream.synchronize()
        done = time.perf_counter()
        return {
            "call_ms": (returned - start) * 1e3,
            "done_ms": (done - start) * 1e3,
            "gpu_ms": start_event.elapsed_time(end_event),
        }

    def medians(runs):
        return {k: statistics.median(r[k] for r in runs) for k in runs[0]}

    results = {
        "benchmark": "nvjpeg_calls",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "environment": environment(device),
        "backend": decoder.backend,
        "tile_hw": [tile_h, tile_w],
        "mean_stream_bytes": float(np.mean([len(s) for s in streams])),
    }
    same = {}
    for n in (n for n in (1, 8, 20, 26, 64, 128) if n <= len(streams)):
        decode(n)  # initialise for n
        same[n] = medians([decode(n) for _ in range(args.repeats)])
    results["same_size_ms"] = same
    decode(26)
    results["alternating_26_20_ms"] = medians(
        [decode(26 if i % 2 else 20) for i in range(args.repeats)]
    )

    lib = decoder._lib
    p, i = ctypes.c_void_p, ctypes.c_int
    init = lib.nvjpegDecodeBatchedInitialize
    timings = []
    for k in range(args.repeats):
        start = time.perf_counter()
        status = init(decoder._handle, decoder._state, 26 if k % 2 else 20, 1, _OUTPUT_RGBI)
        timings.append((time.perf_counter() - start) * 1e3)
    decoder._batch_size = 0
    results["initialize_ms"] = statistics.median(timings)
    results["initialize_status"] = status

    _, subsampling, _, _ = decoder.image_info(streams[0])  # nvjpegChromaSubsampling_t
    preallocate = lib.nvjpegDecodeBatchedPreAllocate
    preallocate.argtypes, preallocate.restype = [p, p, i, i, i, i, i], i
    start = time.perf_counter()
    status = preallocate(
        decoder._handle, decoder._state, 256, tile_w, tile_h, subsampling, _OUTPUT_RGBI
    )
    results["preallocate_ms"] = (time.perf_counter() - start) * 1e3
    results["preallocate_status"] = status
    decode(26)
    results["alternating_after_preallocate_ms"] = medians(
        [decode(26 if i % 2 else 20) for i in range(args.repeats)]
    )
    results["same_size_after_preallocate_ms"] = {
        n: medians([decode(n) for _ in range(args.repeats)]) for n in (20, 26, 64)
    }

    timings = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        for data in streams[:26]:
            decoder.image_info(data)
        timings.append((time.perf_counter() - start) * 1e3)
    results["image_info_26_ms"] = statistics.median(timings)

    print(json.dumps(results, indent=1))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Region reads per second and MB/s: ``Slide.read_region``, ``slide.levels`` dask slices and plain
OpenSlide ``read_region`` on the same regions, in one run.

usage: python bench/bench_slide_read.py SLIDE [--out bench/results/slide_read_DATE.json]
       [--regions 200] [--size 512] [--rounds 3] [--level 0]

For each order (random positions, or a row-major grid of adjacent regions) and thread count
(1, 2), every method reads the same regions; methods run in turn within a round and the median
of the rounds is reported. Methods:
  openslide-pil      openslide.OpenSlide.read_region -> PIL RGBA image (the plain call)
  openslide-numpy    the same, then np.asarray(image)[..., :3] (what a caller needing arrays does)
  slide.read_region  napari_ssmamba open_slide(...).read_region -> (h, w, 3) uint8 (for Aperio
                     and generic TIFF pyramids its pixels come straight from the TIFF tiles)
  slide.levels       slide.levels[level][y:y+h, x:x+w].compute(scheduler="synchronous") (dask)
  level_readers      slide.level_readers[level][y:y+h, x:x+w] (what the napari layer slices)
  slide[openslide]   OpenSlideSlide(pixel_reader="openslide").read_region: our wrapper with
                     OpenSlide decoding the pixels
Every (order, threads, round) reads fresh regions, so no method is served by a cache another
run filled; the OS page cache is warm for all (the file is read once before timing).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np


def regions_for(order: str, n: int, size: int, width: int, height: int, seed: int):
    """(y, x) level-0 corners of ``n`` regions: uniformly random, or a row-major block of
    adjacent tile-aligned regions at a random place."""
    rng = np.random.default_rng(seed)
    if order == "random":
        ys = rng.integers(0, height - size, n)
        xs = rng.integers(0, width - size, n)
        return list(zip(ys.tolist(), xs.tolist()))
    cols = max(1, int(np.sqrt(n)))
    rows = -(-n // cols)
    y0 = int(rng.integers(0, max(1, height // size - rows))) * size
    x0 = int(rng.integers(0, max(1, width // size - cols))) * size
    return [(y0 + (i // cols) * size, x0 + (i % cols) * size) for i in range(n)]


def make_readers(path: Path, level: int, size: int):
    import openslide

    from napari_ssmamba.slide import open_slide
    from napari_ssmamba.slide.openslide_slide import OpenSlideSlide

    plain = openslide.OpenSlide(str(path))
    ours = open_slide(path)
    ds = ours.level_downsamples[level]
    dask_level = ours.levels[level]
    readers = {
        "openslide-pil": lambda y, x: plain.read_region((x, y), level, (size, size)),
        "openslide-numpy": lambda y, x: np.asarray(
            plain.read_region((x, y), level, (size, size)))[..., :3],
        "slide.read_region": lambda y, x: ours.read_region(level, y, x, size, size),
        "slide.levels": lambda y, x: dask_level[
            int(y // ds):int(y // ds) + size, int(x // ds):int(x // ds) + size
        ].compute(scheduler="synchronous"),
        "level_readers": lambda y, x: ours.level_readers[level][
            int(y // ds):int(y // ds) + size, int(x // ds):int(x // ds) + size],
    }
    if isinstance(ours, OpenSlideSlide):
        through_openslide = OpenSlideSlide(path, pixel_reader="openslide")
        readers["slide[openslide]"] = lambda y, x: through_openslide.read_region(
            level, y, x, size, size)
    return readers, ours


def time_reads(read, regions, threads: int) -> float:
    start = time.perf_counter()
    if threads == 1:
        for y, x in regions:
            read(y, x)
    else:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(lambda r: read(*r), regions))
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("slide", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--regions", type=int, default=200)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--level", type=int, default=0)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()

    readers, slide = make_readers(args.slide, args.level, args.size)
    width, height = slide.dimensions
    results = []
    with open(args.slide, "rb") as fh:  # warm the OS page cache
        while fh.read(64 * 2**20):
            pass
    l0_size = args.size * round(slide.level_downsamples[args.level])
    seed = 0
    for order in ("random", "grid"):
        for threads in args.threads:
            seconds = {name: [] for name in readers}
            for round_index in range(args.rounds):
                names = list(readers)
                names = names[round_index % len(names):] + names[:round_index % len(names)]
                for name in names:
                    seed += 1
                    regions = regions_for(order, args.regions, l0_size, width, height, seed)
                    seconds[name].append(time_reads(readers[name], regions, threads))
            for name, times in seconds.items():
                median = statistics.median(times)
                rate = args.regions / median
                results.append({
                    "order": order, "threads": threads, "method": name,
                    "regions_per_s": round(rate, 1),
                    "mb_per_s": round(rate * args.size * args.size * 3 / 1e6, 1),
                    "seconds": [round(t, 3) for t in times],
                })
                print(f"{order:6} threads={threads} {name:18} {rate:8.1f} regions/s "
                      f"{results[-1]['mb_per_s']:7.1f} MB/s", flush=True)
    record = {
        "benchmark": "slide_read",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"2-core CI-class CPU machine ({platform.processor() or platform.machine()}, "
                   f"{os.cpu_count()} CPUs, shared with other jobs)",
        "slide": str(args.slide), "dimensions": [width, height],
        "pixel_reader": slide.pixel_reader,
        "level": args.level, "region_px": args.size, "regions": args.regions,
        "rounds": args.rounds, "results": results,
    }
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

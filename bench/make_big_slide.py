"""Write a large, real-looking whole-slide image: a tiled JPEG pyramid TIFF that OpenSlide opens.

Tissue is mirror-tiled native pixels of the bundled CMU-1-Small-Region.svs (no resampling, so the
level-0 JPEG entropy is that of a real scan), shown inside a few irregular "sections"; everywhere
else is scanner-like background (RGB ~240 +/- 3). Level 0 is rendered row of tiles by row, by
``--workers`` processes (default: one per core; the slide is the same whatever their number), and
written tile by tile; level 1 is accumulated on disk (a memory map beside the output) by 2x2 area
means, the smaller levels from level 1, so memory stays at about ``--workers`` + 2 rows of tiles
(~115 MB each at 60,000 px wide) whatever the height. JPEG quality 80, YCbCr 4:2:0, 512 px tiles,
resolution in pixels/cm: OpenSlide opens it as ``generic-tiff``.

usage: python bench/make_big_slide.py [OUT] [--width 100000] [--height 80000] [--mpp 0.25]
           [--workers N]
       SMALL=1 writes a 6,000 x 5,000 version for smoke tests.

Adapted from ../shared/bench/make_big_slide.py: same section layout (so the tissue focus point
(y, x) = (30400, 24000) used by napari_bench.py is inside tissue), more sections for larger sizes.
"""

from __future__ import annotations

import argparse
import collections
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

TILE = 512
QUALITY = 80
MASK_SCALE = 16  # level-0 px per section-mask px
SAMPLE = Path(__file__).parents[1] / "src" / "napari_ssmamba" / "data" / "CMU-1-Small-Region.svs"
#: sections as (cy, cx, ry, rx, angle) in mask px; the first four are those of the shared script
SECTIONS = [
    (900, 900, 700, 520, 0.4), (1900, 1500, 900, 600, -0.3), (1300, 2900, 1000, 550, 0.1),
    (2700, 3300, 220, 160, 0.0), (3600, 900, 800, 500, 0.2), (1200, 4600, 900, 700, -0.2),
    (3400, 4700, 1000, 600, 0.5), (2400, 5600, 600, 300, 0.0), (4300, 3000, 500, 900, 0.3),
]


def smooth_noise(rng, shape, cell):
    """Bilinearly interpolated Gaussian noise with correlation length ``cell`` px."""
    g = rng.standard_normal((shape[0] // cell + 2, shape[1] // cell + 2)).astype(np.float32)
    gy = np.linspace(0, g.shape[0] - 1.001, shape[0])
    gx = np.linspace(0, g.shape[1] - 1.001, shape[1])
    iy, ix = gy.astype(int), gx.astype(int)
    fy, fx = (gy - iy)[:, None].astype(np.float32), (gx - ix)[None, :].astype(np.float32)
    rows0 = g[iy]
    rows1 = g[iy + 1]
    top = rows0[:, ix] * (1 - fx) + rows0[:, ix + 1] * fx
    bottom = rows1[:, ix] * (1 - fx) + rows1[:, ix + 1] * fx
    return top * (1 - fy) + bottom * fy


def section_alpha(rng, mask_h, mask_w):
    """Tissue opacity in [0, 1] at 1/MASK_SCALE: union of rotated ellipses with noisy borders.

    Below the shared script's 60,000 x 50,000 px the sections shrink with the slide.
    """
    field = np.full((mask_h, mask_w), -1.0, np.float32)
    fy, fx = min(1.0, mask_h / 3125), min(1.0, mask_w / 3750)
    for cy, cx, ry, rx, angle in SECTIONS:
        cy, ry, cx, rx = int(cy * fy), int(ry * fy), int(cx * fx), int(rx * fx)
        if cy - ry > mask_h or cx - rx > mask_w:
            continue
        y0, y1 = max(cy - ry - rx, 0), min(cy + ry + rx, mask_h)
        x0, x1 = max(cx - ry - rx, 0), min(cx + ry + rx, mask_w)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        c, s = np.cos(angle), np.sin(angle)
        u = ((xx - cx) * c + (yy - cy) * s) / rx
        v = (-(xx - cx) * s + (yy - cy) * c) / ry
        field[y0:y1, x0:x1] = np.maximum(field[y0:y1, x0:x1], 1.0 - (u * u + v * v))
    field += 0.35 * smooth_noise(rng, (mask_h, mask_w), 120)
    field += 0.12 * smooth_noise(rng, (mask_h, mask_w), 25)
    return np.clip(field / 0.05, 0, 1).astype(np.float32)


def mirror(idx, n):
    """Mirror-tile indices into [0, n), continuous at copy borders."""
    k, r = np.divmod(idx, n)
    return np.where(k % 2 == 0, r, n - 1 - r)


def down2(a, rows_per_block=2048):
    """2x2 area mean of an (h, w, 3) uint8 array (odd edge dropped), in blocks of rows."""
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    out = np.empty((h // 2, w // 2, 3), np.uint8)
    for y in range(0, h, rows_per_block):
        block = np.asarray(a[y:min(y + rows_per_block, h), :w])
        d = block.reshape(block.shape[0] // 2, 2, w // 2, 2, 3).astype(np.uint16).sum(axis=(1, 3))
        out[y // 2: y // 2 + d.shape[0]] = (d + 2) // 4
    return out


def tiles_of(a, background=240):
    """Yield TILE x TILE tiles of ``a`` row by row, padding the edges with background."""
    h, w = a.shape[:2]
    for y0 in range(0, h, TILE):
        for x0 in range(0, w, TILE):
            t = np.asarray(a[y0:y0 + TILE, x0:x0 + TILE])
            if t.shape[:2] != (TILE, TILE):
                padded = np.full((TILE, TILE, 3), background, np.uint8)
                padded[: t.shape[0], : t.shape[1]] = t
                t = padded
            yield t


#: what the worker processes render level 0 from, set before they are forked
_SCENE: dict = {}


def _alpha_tile(y0, x0):
    alpha_lo = _SCENE["alpha_lo"]
    ys = (np.arange(y0, y0 + TILE) + 0.5) / MASK_SCALE - 0.5
    xs = (np.arange(x0, x0 + TILE) + 0.5) / MASK_SCALE - 0.5
    iy = np.clip(np.floor(ys).astype(int), 0, alpha_lo.shape[0] - 2)
    ix = np.clip(np.floor(xs).astype(int), 0, alpha_lo.shape[1] - 2)
    fy = np.clip(ys - iy, 0, 1).astype(np.float32)[:, None]
    fx = np.clip(xs - ix, 0, 1).astype(np.float32)[None, :]
    rows = alpha_lo[iy] * (1 - fy) + alpha_lo[iy + 1] * fy
    return rows[:, ix] * (1 - fx) + rows[:, ix + 1] * fx


def _render_tile(y0, x0):
    scene = _SCENE
    alpha_lo, bg_tiles = scene["alpha_lo"], scene["bg_tiles"]
    rng = np.random.default_rng((scene["seed"], y0, x0))  # the same whichever process renders it
    ly, lx = y0 // MASK_SCALE, x0 // MASK_SCALE
    block = alpha_lo[max(ly - 1, 0): ly + TILE // MASK_SCALE + 2,
                     max(lx - 1, 0): lx + TILE // MASK_SCALE + 2]
    if block.max() == 0:
        t = bg_tiles[int(rng.integers(16))].copy()
    else:
        t = scene["crop"][scene["src_y"][y0:y0 + TILE, None], scene["src_x"][None, x0:x0 + TILE]]
        if block.min() < 1:
            a = _alpha_tile(y0, x0)[..., None]
            bg = bg_tiles[int(rng.integers(16))]
            t = (a * t + (1 - a) * bg + 0.5).astype(np.uint8)
    height, width = scene["height"], scene["width"]
    if y0 + TILE > height:
        t[height - y0:] = 240
    if x0 + TILE > width:
        t[:, width - x0:] = 240
    return t


def _render_row(y0):
    """The level-0 tiles of the tile row at ``y0``, and the row's 2x2 means (for level 1)."""
    tiles = [_render_tile(y0, x0) for x0 in range(0, _SCENE["width"], TILE)]
    return tiles, down2(np.concatenate(tiles, axis=1))


def _rendered_rows(pool, height: int, lead: int):
    """``_render_row`` for every tile row, in order, rendered by ``pool`` at most ``lead`` rows
    ahead (a row is ~115 MB at 60,000 px). The first rows are submitted at once, so the pool's
    processes are forked here, before the TIFF writer starts its threads."""
    rows = range(0, height, TILE)
    pending = collections.deque(pool.submit(_render_row, y0) for y0 in rows[:lead])

    def results():
        for y0 in rows[lead:]:
            yield pending.popleft().result()
            pending.append(pool.submit(_render_row, y0))
        while pending:
            yield pending.popleft().result()

    return results()


def make_big_slide(out: Path, width: int, height: int, mpp: float, n_levels: int = 6,
                   workers: int | None = None) -> None:
    import openslide
    import tifffile

    workers = workers or os.cpu_count() or 1
    rng = np.random.default_rng(0)
    with openslide.OpenSlide(SAMPLE) as src:
        full = np.asarray(src.read_region((0, 0), 0, src.dimensions).convert("RGB"))
    crop = np.ascontiguousarray(full[:, 560:1860])  # 2967 x 1300, mostly tissue
    crop_h, crop_w = crop.shape[:2]

    mask_h, mask_w = -(-height // MASK_SCALE), -(-width // MASK_SCALE)
    alpha_lo = section_alpha(rng, mask_h + 2, mask_w + 2)
    print(f"{width} x {height} px, section fraction {float((alpha_lo > 0.5).mean()):.3f}", flush=True)
    _SCENE.update(
        seed=0, width=width, height=height, crop=crop, alpha_lo=alpha_lo,
        src_x=mirror(np.arange(width + TILE), crop_w), src_y=mirror(np.arange(height + TILE), crop_h),
        bg_tiles=[(240 + rng.integers(-3, 4, size=(TILE, TILE, 3))).astype(np.uint8)
                  for _ in range(16)],
    )

    level1_path = out.with_name(f".{out.name}.level1.u8")
    level1 = np.lib.format.open_memmap(level1_path, mode="w+", dtype=np.uint8,
                                       shape=(height // 2, width // 2, 3))

    def level0_tiles(rows):
        for y0, (tiles, means) in zip(range(0, height, TILE), rows, strict=True):
            h = min(TILE // 2, height // 2 - y0 // 2)
            level1[y0 // 2: y0 // 2 + h] = means[:h, : width // 2]
            yield from tiles

    common = {"dtype": np.uint8, "tile": (TILE, TILE), "photometric": "rgb",
              "compression": "jpeg", "compressionargs": {"level": QUALITY},
              "resolutionunit": "CENTIMETER", "maxworkers": workers}
    t0 = time.perf_counter()
    tmp = out.with_name(f".{out.name}.part")
    fork = multiprocessing.get_context("fork")  # the workers inherit _SCENE
    try:
        with ProcessPoolExecutor(workers, mp_context=fork) as pool, \
                tifffile.TiffWriter(tmp, bigtiff=True) as tw:
            rows = _rendered_rows(pool, height, lead=workers + 2)
            tw.write(level0_tiles(rows), shape=(height, width, 3), subfiletype=0,
                     resolution=(1e4 / mpp, 1e4 / mpp),
                     description=f"synthetic WSI from CMU-1-Small-Region tiles; MPP = {mpp}",
                     **common)
            print(f"level 0 written {time.perf_counter() - t0:.0f} s", flush=True)
            level = level1
            for i in range(1, n_levels):
                if i > 1:
                    level = down2(level)
                ds = 2**i
                tw.write(tiles_of(level), shape=level.shape, subfiletype=1,
                         resolution=(1e4 / (mpp * ds), 1e4 / (mpp * ds)), **common)
                print(f"level {i} {level.shape[:2]} written {time.perf_counter() - t0:.0f} s",
                      flush=True)
                if min(level.shape[:2]) <= 1024:
                    break
        os.replace(tmp, out)
    finally:
        level1_path.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - t0:.0f} s")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=Path, default=Path("/work/bigslide/big.tif"))
    small = bool(os.environ.get("SMALL"))
    parser.add_argument("--width", type=int, default=6000 if small else 100_000)
    parser.add_argument("--height", type=int, default=5000 if small else 80_000)
    parser.add_argument("--mpp", type=float, default=0.25, help="µm per pixel at level 0")
    parser.add_argument("--workers", type=int, help="processes rendering level 0 (default: one per core)")
    args = parser.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    make_big_slide(args.out, args.width, args.height, args.mpp, n_levels=8, workers=args.workers)


if __name__ == "__main__":
    main()

"""Model tiles gathered from decoded JPEG tiles in one Triton kernel.

:meth:`~napari_ssmamba.inference.jpeg_batches.JpegBatchReader.make` describes every output pixel
of a batch by its box's row and column sources: the JPEG tile grid row and the row inside that tile,
the grid column and the column inside it; a slot table maps grid cells to places in the buffer of
decoded tiles. Done with torch indexing, that takes a handful of kernels and a (b, h, w) int64
index the size of three batches. Here one program per output row loads its row source, its
columns' sources and slots, and copies the row's bytes: the batch is read and written once.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit(do_not_specialize=["boxes", "out_size", "slot_w", "tile_h", "tile_w"])
def _gather_kernel(
    decoded_ptr, slot_ptr, axes_ptr, out_ptr, boxes, out_size, slot_w, tile_h, tile_w,
    BLOCK: tl.constexpr,
):
    row_index = tl.program_id(0)  # box * out_size + output row
    box = row_index // out_size
    plane = boxes * out_size  # axes: (4, boxes, out_size) row cell, row offset, col cell, col offset
    row_cell = tl.load(axes_ptr + row_index)
    row_offset = tl.load(axes_ptr + plane + row_index)
    k = tl.arange(0, BLOCK)  # byte of the output row
    mask = k < out_size * 3
    column = k // 3
    channel = k - column * 3
    col_cell = tl.load(axes_ptr + 2 * plane + box * out_size + column, mask=mask, other=0)
    col_offset = tl.load(axes_ptr + 3 * plane + box * out_size + column, mask=mask, other=0)
    slot = tl.load(slot_ptr + row_cell * slot_w + col_cell, mask=mask, other=0)
    source = ((slot.to(tl.int64) * tile_h + row_offset) * tile_w + col_offset) * 3 + channel
    value = tl.load(decoded_ptr + source, mask=mask)
    tl.store(out_ptr + row_index.to(tl.int64) * out_size * 3 + k, value, mask=mask)


def gather_tiles(decoded: torch.Tensor, slot: torch.Tensor, axes: torch.Tensor) -> torch.Tensor:
    """(b, out, out, 3) uint8 tiles from ``decoded`` ((n, tile_h, tile_w, 3) uint8 JPEG tiles).

    ``slot`` ((grid_h + 2, grid_w + 2) int32) is each grid cell's place in ``decoded``; ``axes``
    ((4, b, out) int32) holds per box and output row the grid row and the row inside the tile,
    then per output column the grid column and the column inside the tile. All on one CUDA
    device; the kernel is enqueued on the current stream.
    """
    _, tile_h, tile_w, _ = decoded.shape
    _, boxes, out_size = axes.shape
    out = torch.empty((boxes, out_size, out_size, 3), dtype=torch.uint8, device=decoded.device)
    if boxes:
        _gather_kernel[(boxes * out_size,)](
            decoded, slot, axes, out, boxes, out_size, slot.shape[1], tile_h, tile_w,
            BLOCK=triton.next_power_of_2(out_size * 3),
        )
    return out

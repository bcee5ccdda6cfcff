"""Selective scans over a 2-D token grid in several raster directions at once (the DMS scan).

Tokens are stored row-major, ``(batch, L, E)`` with ``L = H * W`` (a flattened NHWC map). Direction k
visits them in one of four raster orders, and each direction has its own ``A``, ``D`` and ``dt`` bias;
``B``/``C`` are shared, computed once per token. All directions run in one scan call: the Triton kernel
reads every direction straight from the row-major tensors through its index map; the other backends
gather each direction's order, stack the directions along the channel axis as groups, and run one
grouped :func:`~napari_ssmamba.model.ops.selective_scan` call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from napari_ssmamba.model.ops.selective_scan import (
    available_backends,
    resolve_backend,
    selective_scan,
)

DIRECTIONS = ("row", "row_reversed", "column", "column_reversed")


def direction_order(direction: int, height: int, width: int, device=None) -> torch.Tensor:
    """Row-major token index visited at each step t of ``DIRECTIONS[direction]``, shape (L,)."""
    index = torch.arange(height * width, device=device).view(height, width)
    order = index.reshape(-1) if direction in (0, 1) else index.t().reshape(-1)
    return order.flip(0) if direction in (1, 3) else order


def grid_scan_reference(u, delta, A, B, C, D, delta_bias, hw, delta_softplus=True, backend="cpu",
                        first_direction=0):
    """Directional scans by gathering each order and one grouped ``selective_scan`` call."""
    batch, length, dim = u.shape
    n_dir = A.shape[0]
    order = torch.stack([direction_order(first_direction + k, *hw, device=u.device) for k in range(n_dir)])
    # (batch, L, E) -> (batch, K, L, E) in each direction's order -> (batch, K*E, L)
    u_k = u[:, order].permute(0, 1, 3, 2).reshape(batch, n_dir * dim, length)
    delta_k = delta[:, order].permute(0, 1, 3, 2).reshape(batch, n_dir * dim, length)
    B_k = B[:, order].permute(0, 1, 3, 2)  # (batch, K, N, L)
    C_k = C[:, order].permute(0, 1, 3, 2)
    y = selective_scan(u_k, delta_k, A.reshape(n_dir * dim, -1), B_k, C_k, D.reshape(-1), None,
                       delta_bias.reshape(-1), delta_softplus, backend=backend)
    y = y.view(batch, n_dir, dim, length).permute(1, 0, 3, 2)  # (K, batch, L, E) in scan order
    inverse = torch.argsort(order, dim=1)
    return torch.stack([y[k][:, inverse[k]] for k in range(n_dir)])


def grid_scan(u, delta, A, B, C, D, delta_bias, hw, delta_softplus=True, backend="auto", first_direction=0):
    """Scan a row-major token grid in ``K = A.shape[0]`` directions, ``DIRECTIONS[first_direction:][:K]``.

    Shapes: u, delta: (batch, L, E) with L = H*W; B, C: (batch, L, N); A: (K, E, N); D, delta_bias: (K, E);
    ``hw`` is (H, W). Returns y: (K, batch, L, E), each direction's output at row-major positions, in u's
    dtype; y_k includes the D_k * u skip term. ``first_direction=2`` with K=2 scans the column orders.
    """
    if first_direction + A.shape[0] > len(DIRECTIONS):
        raise ValueError(f"{A.shape[0]} directions from {first_direction} exceed the {len(DIRECTIONS)} orders")
    backend = _training_backend(backend, u, delta, A, B, C)
    backend = resolve_backend(backend, u.device)
    if backend == "triton":
        from napari_ssmamba.model.ops.triton_scan import grid_scan_triton

        return grid_scan_triton(u, delta, A, B, C, D, delta_bias, hw, delta_softplus, first_direction)
    return grid_scan_reference(u, delta, A, B, C, D, delta_bias, hw, delta_softplus, backend, first_direction)


def _training_backend(backend, *tensors):
    """"auto" with gradients to compute prefers mamba-ssm's kernel, whose backward pass is faster
    than our Triton one (see docs/model.md); inference keeps the fused Triton scan."""
    if (backend == "auto" and torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
            and "mamba_ssm" in available_backends(tensors[0].device)):
        return "mamba_ssm"
    return backend


def merge_gate_reference(y, y_pool, weight, weight_pool, z):
    """Merge direction outputs with learned weights and gate: the DMS path merge.

    y: (K, B, H, W, E) full-grid paths; y_pool: (K, B, ceil(H/2), ceil(W/2), E) pooled-grid paths or
    None, repeated 2x2 back onto the full grid; weight, weight_pool: (K, E); z: (B, H, W, E).
    Returns (sum_k weight_k y_k + sum_k weight_pool_k up(y_pool_k)) * silu(z), shape (B, H, W, E).
    """
    batch, height, width = y.shape[1:4]
    # weighted sums over k as broadcast products (an einsum here became one small GEMM per channel)
    out = (y * weight.to(y.dtype)[:, None, None, None]).sum(0)
    if y_pool is not None:
        pooled = (y_pool * weight_pool.to(y_pool.dtype)[:, None, None, None]).sum(0)
        h2, w2, dim = pooled.shape[1:]
        pooled = pooled[:, :, None, :, None].expand(batch, h2, 2, w2, 2, dim).reshape(batch, 2 * h2, 2 * w2, dim)
        out = out + pooled[:, :height, :width]
    return out * F.silu(z)


def merge_gate(y, y_pool, weight, weight_pool, z, backend="auto"):
    """:func:`merge_gate_reference` in one fused pass on CUDA with Triton, else in PyTorch."""
    if y.is_cuda and backend in ("auto", "triton") and "triton" in available_backends(y.device):
        from napari_ssmamba.model.ops.triton_scan import merge_gate_triton

        return merge_gate_triton(y, y_pool, weight, weight_pool, z)
    return merge_gate_reference(y, y_pool, weight, weight_pool, z)

"""The selective state-space scan behind one function, with several backends.

``selective_scan`` follows mamba-ssm's ``selective_scan_fn``: real-valued, diagonal ``A``, input-dependent
``B``/``C`` (shared by all channels or per group of channels). Backends:

- ``"ref"``: :func:`selective_scan_ref`, an exact sequential float32 loop (for tests).
- ``"cpu"``: :func:`selective_scan_chunked`, a two-level scan (sequential inside chunks, vectorised over
  chunks, then a short carry pass), plain PyTorch and autograd-friendly; the CPU default.
- ``"triton"``: our fused Triton kernel, forward and backward (CUDA only).
- ``"mamba_ssm"``: mamba-ssm's CUDA kernel when mamba-ssm is installed with its extension.

``"auto"`` picks triton on CUDA tensors when Triton imports, else mamba_ssm, else the CPU path.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F

from napari_ssmamba.errors import BackendUnavailableError

BACKENDS = ("ref", "cpu", "triton", "mamba_ssm")
#: state values per block of the in-place CPU scan (4 MiB in float32): in the CPU's cache
BLOCK_ELEMENTS = 1 << 20


def _prepare(u, delta, A, B, C, delta_bias, delta_softplus):
    """Upcast to float32, apply bias/softplus; B, C become (batch, G, N, L), G=1 when shared."""
    dtype_in = u.dtype
    u, delta = u.float(), delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias.float()[..., None]
    if delta_softplus:
        delta = F.softplus(delta)
    B = B.float() if B.dim() == 4 else B.float()[:, None]
    C = C.float() if C.dim() == 4 else C.float()[:, None]
    return dtype_in, u, delta, A.float(), B, C


def _finish(y, u, D, z, dtype_in):
    if D is not None:
        y = y + u * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype_in)


def selective_scan_ref(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                       return_last_state=False):
    """Exact sequential selective scan in float32, the reference every backend is tested against.

    Shapes: u, delta, z: (batch, dim, L); A: (dim, N); B, C: (batch, N, L) or (batch, G, N, L) with dim
    divisible by G; D, delta_bias: (dim,). Returns y (batch, dim, L) in u's dtype, and the last state
    (batch, dim, N) if ``return_last_state``.

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t;  y_t = C_t . h_t + D * u_t;  y *= silu(z).
    """
    dtype_in, u, delta, A, B, C = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    batch, dim, length = u.shape
    B = B.repeat_interleave(dim // B.shape[1], dim=1)  # (batch, dim, N, L)
    C = C.repeat_interleave(dim // C.shape[1], dim=1)
    delta_A = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_B_u = torch.einsum("bdl,bdnl,bdl->bdln", delta, B, u)
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        h = delta_A[:, :, t] * h + delta_B_u[:, :, t]
        ys.append(torch.einsum("bdn,bdn->bd", h, C[:, :, :, t]))
    y = _finish(torch.stack(ys, dim=2), u, D, z, dtype_in)
    return (y, h) if return_last_state else y


def selective_scan_chunked(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                           return_last_state=False, chunk_size=None, block_elements=BLOCK_ELEMENTS):
    """The same scan as :func:`selective_scan_ref` in about 2*sqrt(L) vectorised steps instead of L.

    The sequence is cut into chunks; one loop runs over positions inside a chunk for all chunks at
    once (each chunk starting from a zero state), a second over chunks carries the state across
    chunk boundaries, and a last vectorised step adds each chunk's carried-in state, decayed by the
    running product of the chunk's decays (each <= 1, so nothing overflows). Exact up to float32
    rounding; plain PyTorch, so autograd works through it.

    Without gradients to compute, the scan runs in place on blocks of (batch, group) rows of about
    ``block_elements`` state values each, so that its working set stays in the CPU's cache whatever
    the batch size.
    """
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (u, delta, A, B, C, D, z, delta_bias))
    dtype_in, u, delta, A, B, C = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    length = u.shape[-1]
    T = chunk_size or max(1, math.ceil(math.sqrt(length)))
    n_chunks = -(-length // T)
    pad = n_chunks * T - length
    if pad:  # padded steps have zero log-decay and zero input
        u, delta, B, C = (F.pad(t, (0, pad)) for t in (u, delta, B, C))
    scan = _chunked_autograd if needs_grad else _chunked_in_place
    y, carry = scan(u, delta, A, B, C, T, block_elements)
    y = _finish(y[..., :length], u[..., :length], D, z, dtype_in)
    return (y, carry) if return_last_state else y


def _chunked_autograd(u, delta, A, B, C, T, block_elements=None):
    """The chunked scan out of differentiable ops; u, delta (batch, dim, n_chunks * T), B, C (batch,
    G, N, n_chunks * T). Returns y (batch, dim, n_chunks * T) and the last state (batch, dim, N)."""
    batch, dim, length = u.shape
    n_state = A.shape[1]
    n_chunks = length // T
    groups = B.shape[1]

    def steps(t):  # (batch, G*dg or G, [N,] L) -> contiguous time-major (T, batch, G, dg, chunks[, N])
        t = t.unflatten(-1, (n_chunks, T)).movedim(-1, 0)
        if t.dim() == 5:  # B or C: (T, batch, G, N, chunks) -> (T, batch, G, 1, chunks, N)
            return t.movedim(-2, -1)[:, :, :, None].contiguous()
        return t.unflatten(2, (groups, dim // groups)).contiguous()

    # time-major layout: every step of the loops below reads one contiguous slab
    delta_t, u_t = steps(delta), steps(u)  # (T, batch, G, dg, chunks)
    a = torch.exp(delta_t[..., None] * A.view(groups, dim // groups, 1, n_state))
    x = (delta_t * u_t)[..., None] * steps(B)  # (T, batch, G, dg, chunks, N)
    h = x.new_zeros(x.shape[1:])
    decay = torch.ones_like(h)
    local, decays = [], []
    for t in range(T):  # inside every chunk at once, from a zero state
        h = a[t] * h + x[t]
        decay = decay * a[t]  # product of the decays since the chunk start, <= 1
        local.append(h)
        decays.append(decay)
    h_local, decay = torch.stack(local), torch.stack(decays)
    carry = x.new_zeros(x.shape[1:4] + (n_state,))
    carries = []
    for c in range(n_chunks):  # state entering each chunk
        carries.append(carry)
        carry = decay[-1, ..., c, :] * carry + h_local[-1, ..., c, :]
    h_all = h_local + decay * torch.stack(carries, dim=-2)
    y = (h_all * steps(C)).sum(-1)  # (T, batch, G, dg, chunks)
    return y.movedim(0, -1).flatten(-2).reshape(batch, dim, length), carry.reshape(batch, dim, n_state)


def _chunked_in_place(u, delta, A, B, C, T, block_elements=BLOCK_ELEMENTS):
    """The chunked scan without autograd: same arguments and results as :func:`_chunked_autograd`.

    Rows (batch element, group) are scanned in blocks of about ``block_elements`` state values, in
    two buffers (decays and states) that the loops update in place, so the working set stays in
    cache and no (batch, dim, N, L) tensor is ever made whole. Buffers are (T, rows, chunks, N, dg):
    channels innermost, so every elementwise op runs over long contiguous rows.
    """
    batch, dim, length = u.shape
    n_state = A.shape[1]
    n_chunks = length // T
    groups = B.shape[1]
    dg = dim // groups
    rows = batch * groups

    def time_major(t, inner):  # (rows, inner, chunks * T) -> (T, rows, chunks, inner)
        return t.reshape(rows, inner, n_chunks, T).permute(3, 0, 2, 1)

    u_t, delta_t = time_major(u, dg), time_major(delta, dg)
    B_t, C_t = time_major(B, n_state)[..., None], time_major(C, n_state)[..., None]  # (T, rows, chunks, N, 1)
    A_g = A.view(groups, dg, n_state).transpose(1, 2)  # (G, N, dg)
    y = u.new_empty(T, rows, n_chunks, dg)
    last = u.new_empty(rows, n_state, dg)
    block = max(1, block_elements // (dg * length * n_state))
    for r0 in range(0, rows, block):
        r1 = min(rows, r0 + block)
        d = delta_t[:, r0:r1].contiguous()  # (T, rows, chunks, dg)
        A_rows = A_g[torch.arange(r0, r1) % groups] if groups > 1 else A_g.expand(r1 - r0, n_state, dg)
        a = (d[:, :, :, None] * A_rows[:, None]).exp_()  # (T, rows, chunks, N, dg)
        h = (d.mul_(u_t[:, r0:r1])[:, :, :, None] * B_t[:, r0:r1])
        for t in range(1, T):  # every chunk at once, from a zero state; a becomes the running decay
            torch.addcmul(h[t], a[t], h[t - 1], out=h[t])
            a[t].mul_(a[t - 1])
        carries = u.new_zeros(r1 - r0, n_chunks + 1, n_state, dg)  # state entering each chunk
        for c in range(n_chunks):
            torch.addcmul(h[-1, :, c], a[-1, :, c], carries[:, c], out=carries[:, c + 1])
        last[r0:r1] = carries[:, -1]
        h.addcmul_(a, carries[:, :-1])
        torch.sum(h.mul_(C_t[:, r0:r1]), dim=3, out=y[:, r0:r1])
    y = y.permute(1, 3, 2, 0).reshape(batch, dim, length)
    return y, last.transpose(1, 2).reshape(batch, dim, n_state)


@functools.cache
def _triton_available() -> bool:
    try:
        from napari_ssmamba.model.ops import triton_scan  # noqa: F401  (import checks Triton)
    except ImportError:
        return False
    return True


@functools.cache
def _mamba_ssm_fn():
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except ImportError:
        return None
    return selective_scan_fn


def available_backends(device="cpu") -> list[str]:
    """The backends that can run on ``device`` here, in order of preference for "auto"."""
    names = []
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        if _triton_available():
            names.append("triton")
        if _mamba_ssm_fn() is not None:
            names.append("mamba_ssm")
    return names + ["cpu", "ref"]


def resolve_backend(backend: str, device) -> str:
    """Turn "auto" into a concrete backend for tensors on ``device``; check an explicit one."""
    if backend == "auto":
        return available_backends(device)[0]
    if backend not in BACKENDS:
        raise ValueError(f"unknown scan backend {backend!r}; choose one of {BACKENDS} or 'auto'")
    on_cuda = torch.device(device).type == "cuda"
    if backend == "triton" and not (on_cuda and _triton_available()):
        raise BackendUnavailableError(
            "the Triton scan needs CUDA tensors and Triton: pip install 'napari-ssmamba[cuda]'")
    if backend == "mamba_ssm" and not (on_cuda and _mamba_ssm_fn() is not None):
        raise BackendUnavailableError(
            "the mamba_ssm scan needs CUDA tensors and mamba-ssm with its CUDA extension: "
            "pip install 'napari-ssmamba[cuda]'")
    return backend


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                   backend="auto"):
    """Selective scan with mamba-ssm's ``selective_scan_fn`` signature; see :func:`selective_scan_ref`.

    ``backend`` is "auto", "ref", "cpu", "triton" or "mamba_ssm"; an unavailable one raises
    :class:`~napari_ssmamba.errors.BackendUnavailableError`.
    """
    backend = resolve_backend(backend, u.device)
    if backend == "ref":
        return selective_scan_ref(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if backend == "cpu":
        return selective_scan_chunked(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if backend == "mamba_ssm":
        return _mamba_ssm_fn()(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    from napari_ssmamba.model.ops.triton_scan import selective_scan_triton

    return selective_scan_triton(u, delta, A, B, C, D, z, delta_bias, delta_softplus)

"""Fused Triton selective scan, forward and backward, for the flat API and the 2-D directional scan.

One program owns (batch element, block of channels, direction) and walks the sequence in chunks of
BLOCK_L steps: it loads u, delta, B, C for the chunk, forms the decays exp(delta*A) and inputs
delta*B*u in registers, runs a parallel associative scan along the chunk, adds the carried-in state,
contracts with C and writes y. Nothing of size (channels x N x L) ever reaches device memory: the
kernel reads u, delta, B, C once and writes y once. Directions are index maps: step t of direction k
reads row-major token ``pos_k(t)``, so the DMS block scans four raster orders of a channels-last map
without a single transposed copy.

The backward pass recomputes the states chunk by chunk from the chunk-start states the forward pass
saved (batch x channels x N per chunk), runs the adjoint recurrence g_t = C_t dy_t + a_{t+1} g_{t+1}
as a reverse associative scan, and forms every gradient in registers; gradients of the shared B, C,
A and D are summed across programs with atomic adds.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _linear_combine(a_left, b_left, a_right, b_right):
    # composition of h -> a*h + b maps, left (earlier) first; the same form serves the reverse scan
    return a_left * a_right, a_right * b_left + b_right


@triton.jit
def _positions(t, L, H, W, reverse, column):
    s = tl.where(reverse, L - 1 - t, t)
    pos = tl.where(column, (s % H) * W + s // H, s)
    return tl.where(t < L, pos, 0)


@triton.jit
def _load_delta(delta_ptr, offs_d, pos, mask, bias, SOFTPLUS: tl.constexpr, s_dd, s_dl):
    dt = tl.load(delta_ptr + offs_d[:, None] * s_dd + pos[None, :] * s_dl, mask=mask, other=0.0)
    dt = dt.to(tl.float32) + bias[:, None]
    dt_pre = dt
    if SOFTPLUS:
        dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
    return tl.where(mask, dt, 0.0), dt_pre


_SHAPE_ARGS = ["s_ub", "s_db", "s_Bb", "s_Cb", "s_yk", "s_yb", "batch", "dim", "L", "H", "W", "dim_per_group", "n_chunks",
               "first_direction"]


@triton.jit(do_not_specialize=_SHAPE_ARGS)
def _scan_fwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, y_ptr, states_ptr,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
    s_yk, s_yb, s_yd, s_yl,
    batch, dim, L, H, W, dim_per_group, n_chunks, first_direction,
    N: tl.constexpr, BLOCK_D: tl.constexpr, UNROLL: tl.constexpr, CHUNK: tl.constexpr,
    SOFTPLUS: tl.constexpr, STORE_STATES: tl.constexpr,
):
    # Sequential in time, one channel per thread: the N states of a channel are N registers of one
    # thread (a tuple, unrolled over n), so the recurrence and the C contraction need no shuffles,
    # barriers or layout conversions. Each step reads one token's u and delta (BLOCK_D contiguous
    # values in the channels-last layout) and its B, C (uniform loads). UNROLL steps are unrolled and
    # their outputs stored after them, so their loads, which do not depend on the state, are all in
    # flight before the recurrence needs them.
    # The state entering every CHUNK steps is saved for the backward pass.
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_k = tl.program_id(2)
    reverse = (pid_k + first_direction) % 2 == 1
    column = pid_k + first_direction >= 2
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < dim
    group = (pid_d * BLOCK_D) // dim_per_group
    Dk = tl.load(D_ptr + pid_k * dim + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + pid_k * dim + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    A = ()
    hs = ()
    for n in tl.static_range(N):
        A_n = tl.load(A_ptr + (pid_k * dim + offs_d) * N + n, mask=mask_d, other=0.0).to(tl.float32)
        A = A + (A_n * LOG2E,)
        hs = hs + (tl.zeros((BLOCK_D,), dtype=tl.float32),)
    u_base = u_ptr + pid_b * s_ub + offs_d * s_ud
    delta_base = delta_ptr + pid_b * s_db + offs_d * s_dd
    B_base = B_ptr + pid_b * s_Bb + group * s_Bg
    C_base = C_ptr + pid_b * s_Cb + group * s_Cg
    y_base = y_ptr + pid_k * s_yk + pid_b * s_yb + offs_d * s_yd
    state_base = states_ptr + ((pid_k * batch + pid_b) * dim + offs_d) * n_chunks * N
    for start in range(0, L, UNROLL):
        if STORE_STATES:
            if start % CHUNK == 0:
                for n in tl.static_range(N):
                    tl.store(state_base + (start // CHUNK) * N + n, hs[n], mask=mask_d)
        ys = ()
        positions = ()
        masks = ()
        for i in tl.static_range(UNROLL):
            t = start + i
            s = tl.where(reverse, L - 1 - t, t)
            pos = tl.where(column, (s % H) * W + s // H, s)
            pos = tl.where(t < L, pos, 0)  # padded steps read token 0 and leave the state alone
            mask = mask_d & (offs_d * 0 + t < L)
            u = tl.load(u_base + pos * s_ul, mask=mask, other=0.0).to(tl.float32)
            dt = tl.load(delta_base + pos * s_dl, mask=mask, other=0.0).to(tl.float32) + bias
            if SOFTPLUS:
                dt = tl.where(dt <= 20.0, tl.log(1.0 + tl.exp(dt)), dt)
            dt = tl.where(mask, dt, 0.0)  # exp(0) = 1 and zero input: the state passes unchanged
            dt_u = dt * u
            y = Dk * u
            new = ()
            for n in tl.static_range(N):
                B_n = tl.load(B_base + n * s_Bn + pos * s_Bl).to(tl.float32)
                C_n = tl.load(C_base + n * s_Cn + pos * s_Cl).to(tl.float32)
                h_n = tl.exp2(dt * A[n]) * hs[n] + dt_u * B_n
                y += h_n * C_n
                new = new + (h_n,)
            hs = new
            ys = ys + (y,)
            positions = positions + (pos,)
            masks = masks + (mask,)
        # stores after the unrolled steps: a store between them would keep the compiler from
        # issuing later steps' loads early (y might alias u)
        for i in tl.static_range(UNROLL):
            tl.store(y_base + positions[i] * s_yl, ys[i], mask=masks[i])


@triton.jit(do_not_specialize=_SHAPE_ARGS + ["s_duk", "s_dub", "s_gBb"])
def _scan_bwd_kernel(
    u_ptr, delta_ptr, A_ptr, B_ptr, C_ptr, D_ptr, bias_ptr, states_ptr, dy_ptr,
    du_ptr, ddelta_ptr, dA_ptr, dB_ptr, dC_ptr, dD_ptr,
    s_ub, s_ud, s_ul, s_db, s_dd, s_dl,
    s_Bb, s_Bg, s_Bn, s_Bl, s_Cb, s_Cg, s_Cn, s_Cl,
    s_yk, s_yb, s_yd, s_yl,
    s_duk, s_dub, s_dud, s_dul,
    s_gBb, s_gBg, s_gBn, s_gBl,
    batch, dim, L, H, W, dim_per_group, n_chunks, first_direction,
    N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr,
    SOFTPLUS: tl.constexpr,
):
    pid_b = tl.program_id(0)
    pid_d = tl.program_id(1)
    pid_k = tl.program_id(2)
    reverse = (pid_k + first_direction) % 2 == 1
    column = pid_k + first_direction >= 2
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < dim
    offs_n = tl.arange(0, N)
    group = (pid_d * BLOCK_D) // dim_per_group
    A_nat = tl.load(A_ptr + pid_k * dim * N + offs_d[:, None] * N + offs_n[None, :], mask=mask_d[:, None],
                    other=0.0).to(tl.float32)
    A = A_nat * LOG2E
    Dk = tl.load(D_ptr + pid_k * dim + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    bias = tl.load(bias_ptr + pid_k * dim + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    u_base = u_ptr + pid_b * s_ub
    delta_base = delta_ptr + pid_b * s_db
    B_base = B_ptr + pid_b * s_Bb + group * s_Bg
    C_base = C_ptr + pid_b * s_Cb + group * s_Cg
    dy_base = dy_ptr + pid_k * s_yk + pid_b * s_yb
    du_base = du_ptr + pid_k * s_duk + pid_b * s_dub
    ddelta_base = ddelta_ptr + pid_k * s_duk + pid_b * s_dub
    dB_base = dB_ptr + pid_b * s_gBb + group * s_gBg
    dC_base = dC_ptr + pid_b * s_gBb + group * s_gBg
    state_base = states_ptr + ((pid_k * batch + pid_b) * dim + offs_d[:, None]) * n_chunks * N + offs_n[None, :]
    steps = tl.arange(0, BLOCK_L)[None, None, :]
    dA_acc = tl.zeros((BLOCK_D, N), dtype=tl.float32)
    dD_acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    g_carry = tl.zeros((BLOCK_D, N), dtype=tl.float32)  # a_{t+1} g_{t+1} entering from the next chunk
    for ci in range(n_chunks):
        c = n_chunks - 1 - ci
        t = c * BLOCK_L + tl.arange(0, BLOCK_L)
        mask_t = t < L
        pos = _positions(t, L, H, W, reverse, column)
        mask = mask_d[:, None] & mask_t[None, :]
        u = tl.load(u_base + offs_d[:, None] * s_ud + pos[None, :] * s_ul, mask=mask, other=0.0).to(tl.float32)
        dt, dt_pre = _load_delta(delta_base, offs_d, pos, mask, bias, SOFTPLUS, s_dd, s_dl)
        Bt = tl.load(B_base + offs_n[:, None] * s_Bn + pos[None, :] * s_Bl, mask=mask_t[None, :], other=0.0).to(tl.float32)
        Ct = tl.load(C_base + offs_n[:, None] * s_Cn + pos[None, :] * s_Cl, mask=mask_t[None, :], other=0.0).to(tl.float32)
        dy = tl.load(dy_base + offs_d[:, None] * s_yd + pos[None, :] * s_yl, mask=mask, other=0.0).to(tl.float32)
        # decays of the next step (a_{t+1}) for the adjoint recurrence
        t_next = t + 1
        mask_next = mask_d[:, None] & (t_next < L)[None, :]
        pos_next = _positions(t_next, L, H, W, reverse, column)
        dt_next, _ = _load_delta(delta_base, offs_d, pos_next, mask_next, bias, SOFTPLUS, s_dd, s_dl)
        h0 = tl.load(state_base + c * N, mask=mask_d[:, None], other=0.0)
        a = tl.exp2(dt[:, None, :] * A[:, :, None])
        b = (dt * u)[:, None, :] * Bt[None, :, :]
        a_cum, h_local = tl.associative_scan((a, b), 2, _linear_combine)
        hs = h_local + a_cum * h0[:, :, None]
        a_next = tl.exp2(dt_next[:, None, :] * A[:, :, None])
        c_in = Ct[None, :, :] * dy[:, None, :] + tl.where(steps == BLOCK_L - 1, g_carry[:, :, None], 0.0)
        _, g = tl.associative_scan((a_next, c_in), 2, _linear_combine, reverse=True)
        g_carry = tl.sum(tl.where(steps == 0, a * g, 0.0), axis=2)
        ah_prev = hs - b  # a_t * h_{t-1}
        dC = tl.sum(hs * dy[:, None, :], axis=0)  # (N, BLOCK_L)
        dB = tl.sum(g * (dt * u)[:, None, :], axis=0)
        gB = g * Bt[None, :, :]
        du = tl.sum(gB, axis=1) * dt
        ddt = tl.sum(gB, axis=1) * u + tl.sum(g * ah_prev * A_nat[:, :, None], axis=1)
        dA_acc += tl.sum(g * ah_prev * dt[:, None, :], axis=2)
        du += Dk[:, None] * dy
        dD_acc += tl.sum(dy * u, axis=1)
        if SOFTPLUS:
            ddt = ddt * tl.sigmoid(dt_pre)
        tl.store(du_base + offs_d[:, None] * s_dud + pos[None, :] * s_dul, du, mask=mask)
        tl.store(ddelta_base + offs_d[:, None] * s_dud + pos[None, :] * s_dul, ddt, mask=mask)
        tl.atomic_add(dB_base + offs_n[:, None] * s_gBn + pos[None, :] * s_gBl, dB, mask=mask_t[None, :])
        tl.atomic_add(dC_base + offs_n[:, None] * s_gBn + pos[None, :] * s_gBl, dC, mask=mask_t[None, :])
    tl.atomic_add(dA_ptr + pid_k * dim * N + offs_d[:, None] * N + offs_n[None, :], dA_acc, mask=mask_d[:, None])
    tl.atomic_add(dD_ptr + pid_k * dim + offs_d, dD_acc, mask=mask_d)


def _blocks(n_state: int, dim_per_group: int, length: int, budget: int) -> tuple[int, int]:
    """(BLOCK_D, BLOCK_L) of the backward kernel: about ``budget`` state values per program."""
    block_l = min(64, max(16, triton.next_power_of_2(length)))
    block_d = max(1, budget // (n_state * block_l))
    while dim_per_group % block_d:
        block_d //= 2
    return block_d, block_l


def _fwd_block_d(dim_per_group: int) -> int:
    block_d = FWD_BLOCK_D
    while dim_per_group % block_d:
        block_d //= 2
    return block_d


# tuning knobs (bench/bench_scan.py --sweep varies them)
FWD_BLOCK_D, FWD_WARPS, UNROLL = 128, 4, 8
BWD_BUDGET, BWD_WARPS = 1024, 4


class _ScanFn(torch.autograd.Function):
    """Autograd wrapper over both kernels.

    ``layout`` = (n_dir, H, W, u/delta strides as (batch, dim, L), y shape, y permutation to
    (K, batch, dim, L), index in ``grid_scan.DIRECTIONS`` of the first direction); ``D`` and ``bias``
    are always tensors (zeros when the caller gave none).
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, bias, layout, softplus):
        n_dir, H, W, strides, y_shape, y_perm, first_direction = layout
        batch, dim, L = y_shape[y_perm[1]], y_shape[y_perm[2]], y_shape[y_perm[3]]
        dim_per_group = dim // B.shape[1]
        n_state = A.shape[-1]
        block_l = _blocks(n_state, dim_per_group, L, BWD_BUDGET)[1]  # state-saving interval
        block_d = _fwd_block_d(dim_per_group)
        n_chunks = triton.cdiv(L, block_l)
        y = torch.empty(y_shape, device=u.device, dtype=u.dtype)
        need_grad = any(ctx.needs_input_grad[:7])
        states = (torch.empty(n_dir, batch, dim, n_chunks, n_state, device=u.device, dtype=torch.float32)
                  if need_grad else y)
        grid = (batch, triton.cdiv(dim, block_d), n_dir)
        _scan_fwd_kernel[grid](
            u, delta, A, B, C, D, bias, y, states,
            *strides[0], *strides[1], *B.stride(), *C.stride(), *y.permute(*y_perm).stride(),
            batch, dim, L, H, W, dim_per_group, n_chunks, first_direction,
            N=n_state, BLOCK_D=block_d, UNROLL=min(UNROLL, block_l), CHUNK=block_l, SOFTPLUS=softplus,
            STORE_STATES=need_grad, num_warps=FWD_WARPS)
        if need_grad:
            ctx.save_for_backward(u, delta, A, B, C, D, bias, states)
            ctx.layout, ctx.softplus = layout, softplus
        return y

    @staticmethod
    def backward(ctx, dy):
        u, delta, A, B, C, D, bias, states = ctx.saved_tensors
        n_dir, H, W, strides, y_shape, y_perm, first_direction = ctx.layout
        batch, dim, L = y_shape[y_perm[1]], y_shape[y_perm[2]], y_shape[y_perm[3]]
        dim_per_group = dim // B.shape[1]
        n_state = A.shape[-1]
        block_d, block_l = _blocks(n_state, dim_per_group, L, BWD_BUDGET)
        n_chunks = states.shape[3]
        dy = dy.contiguous()
        # per-direction du and ddelta, laid out like y, summed over directions below
        du = torch.empty(y_shape, device=u.device, dtype=torch.float32)
        ddelta = torch.empty_like(du)
        dB = torch.zeros(B.shape, device=u.device, dtype=torch.float32)
        dC = torch.zeros_like(dB)
        dA = torch.zeros(A.shape, device=u.device, dtype=torch.float32)
        dD = torch.zeros(D.shape, device=u.device, dtype=torch.float32)
        grid = (batch, triton.cdiv(dim, block_d), n_dir)
        _scan_bwd_kernel[grid](
            u, delta, A, B, C, D, bias, states, dy, du, ddelta, dA, dB, dC, dD,
            *strides[0], *strides[1], *B.stride(), *C.stride(), *dy.permute(*y_perm).stride(),
            *du.permute(*y_perm).stride(), *dB.stride(), batch, dim, L, H, W, dim_per_group, n_chunks,
            first_direction,
            N=n_state, BLOCK_D=block_d, BLOCK_L=block_l, SOFTPLUS=ctx.softplus, num_warps=BWD_WARPS)
        dbias = ddelta.permute(*y_perm).sum(dim=(1, 3))  # (K, dim)
        du, ddelta = du.sum(0), ddelta.sum(0)  # directions share u and delta
        return (du.to(u.dtype).view(u.shape), ddelta.to(delta.dtype).view(delta.shape), dA.to(A.dtype),
                dB.to(B.dtype), dC.to(C.dtype), dD.to(D.dtype), dbias.to(bias.dtype), None, None)


def _per_direction(t, n_dir, dim, device):
    """(dim,) or (K, dim) parameter -> float32 (K, dim); zeros when absent."""
    if t is None:
        return torch.zeros(n_dir, dim, device=device)
    return t.float().reshape(n_dir, dim)


def selective_scan_triton(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """``selective_scan`` on the fused Triton kernel; same arguments and shapes as the reference."""
    import torch.nn.functional as F

    batch, dim, L = u.shape
    if u.stride(-1) != 1:
        u = u.contiguous()
    if delta.stride(-1) != 1:
        delta = delta.contiguous()
    B4 = B if B.dim() == 4 else B[:, None]
    C4 = C if C.dim() == 4 else C[:, None]
    strides = (u.stride(), delta.stride())
    # y is made as (1, batch, dim, L): the kernels index it as (K, batch, dim, L)
    layout = (1, 1, L, strides, (1, batch, dim, L), (0, 1, 2, 3), 0)
    y = _ScanFn.apply(u, delta, A.float()[None], B4, C4, _per_direction(D, 1, dim, u.device),
                      _per_direction(delta_bias, 1, dim, u.device), layout, delta_softplus)[0]
    if z is not None:
        y = (y.float() * F.silu(z.float())).to(u.dtype)
    return y


def grid_scan_triton(u, delta, A, B, C, D, delta_bias, hw, delta_softplus=True, first_direction=0):
    """``grid_scan`` on the fused Triton kernel: all directions in one launch, no transposed copies."""
    batch, L, dim = u.shape
    n_dir = A.shape[0]
    if u.stride(-1) != 1:  # channels must be contiguous; token strides are free (chunk views are fine)
        u = u.contiguous()
    if delta.stride(-1) != 1:
        delta = delta.contiguous()
    B4 = B.unsqueeze(1).transpose(2, 3)  # (batch, L, N) -> (batch, G=1, N, L) view
    C4 = C.unsqueeze(1).transpose(2, 3)
    strides = ((u.stride(0), u.stride(2), u.stride(1)), (delta.stride(0), delta.stride(2), delta.stride(1)))
    # y (K, batch, L, E) is indexed by the kernels as (K, batch, E, L) through permute(0, 1, 3, 2)
    layout = (n_dir, hw[0], hw[1], strides, (n_dir, batch, L, dim), (0, 1, 3, 2), first_direction)
    return _ScanFn.apply(u, delta, A.float(), B4, C4, _per_direction(D, n_dir, dim, u.device),
                         _per_direction(delta_bias, n_dir, dim, u.device), layout, delta_softplus)


@triton.jit(do_not_specialize=["n_tokens", "H", "W", "Hp", "Wp", "s_yk", "s_ypk"])
def _merge_gate_kernel(
    y_ptr, yp_ptr, w_ptr, wp_ptr, z_ptr, out_ptr,
    n_tokens, H, W, Hp, Wp, dim, s_ztok, s_yk, s_ypk,
    K: tl.constexpr, HAS_POOL: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr,
):
    # out[token] = (sum_k w[k] * y[k, token] + sum_k wp[k] * yp[k, token's 2x2 cell]) * silu(z[token])
    tok = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    e = tl.program_id(1) * BLOCK_E + tl.arange(0, BLOCK_E)
    mask_e = e < dim
    mask = (tok < n_tokens)[:, None] & mask_e[None, :]
    b = tok // (H * W)
    r = tok % (H * W)
    pooled_tok = (b * Hp + (r // W) // 2) * Wp + (r % W) // 2
    acc = tl.zeros((BLOCK_T, BLOCK_E), dtype=tl.float32)
    for k in tl.static_range(K):
        w = tl.load(w_ptr + k * dim + e, mask=mask_e, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + k * s_yk + tok[:, None] * dim + e[None, :], mask=mask, other=0.0)
        acc += w[None, :] * y.to(tl.float32)
        if HAS_POOL:
            wp = tl.load(wp_ptr + k * dim + e, mask=mask_e, other=0.0).to(tl.float32)
            yp = tl.load(yp_ptr + k * s_ypk + pooled_tok[:, None] * dim + e[None, :], mask=mask, other=0.0)
            acc += wp[None, :] * yp.to(tl.float32)
    z = tl.load(z_ptr + tok[:, None] * s_ztok + e[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + tok[:, None] * dim + e[None, :], acc * z * tl.sigmoid(z), mask=mask)


class _MergeGateFn(torch.autograd.Function):
    """Forward through the fused kernel; backward by autograd through the PyTorch reference."""

    @staticmethod
    def forward(ctx, y, y_pool, weight, weight_pool, z):
        K, batch, H, W, dim = y.shape
        y = y.contiguous()
        has_pool = y_pool is not None
        yp = y_pool.contiguous() if has_pool else y
        Hp, Wp = (yp.shape[2], yp.shape[3]) if has_pool else (1, 1)
        s_tok = z.stride(2)
        if z.stride(3) != 1 or z.stride(1) != W * s_tok or z.stride(0) != H * W * s_tok:
            z = z.contiguous()
            s_tok = z.stride(2)
        out = torch.empty(batch, H, W, dim, device=y.device, dtype=y.dtype)
        n_tokens = batch * H * W
        block_t, block_e = 32, 64
        grid = (triton.cdiv(n_tokens, block_t), triton.cdiv(dim, block_e))
        _merge_gate_kernel[grid](
            y, yp, weight.contiguous(), (weight_pool if has_pool else weight).contiguous(), z, out,
            n_tokens, H, W, Hp, Wp, dim, s_tok, y[0].numel(), yp[0].numel(),
            K=K, HAS_POOL=has_pool, BLOCK_T=block_t, BLOCK_E=block_e, num_warps=4)
        ctx.save_for_backward(y, y_pool, weight, weight_pool, z)
        return out

    @staticmethod
    def backward(ctx, dout):
        from napari_ssmamba.model.ops.grid_scan import merge_gate_reference

        saved = ctx.saved_tensors
        inputs = [t.detach().requires_grad_(need) if t is not None else None
                  for t, need in zip(saved, ctx.needs_input_grad)]
        with torch.enable_grad():
            out = merge_gate_reference(*inputs)
            wanted = [t for t in inputs if t is not None and t.requires_grad]
            grads = iter(torch.autograd.grad(out, wanted, dout))
        return tuple(next(grads) if t is not None and t.requires_grad else None for t in inputs)


def merge_gate_triton(y, y_pool, weight, weight_pool, z):
    """``merge_gate`` on a fused Triton kernel (one pass over the direction outputs)."""
    return _MergeGateFn.apply(y, y_pool, weight, weight_pool, z)

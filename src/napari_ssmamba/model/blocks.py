"""SSMamba building blocks. Every block takes and returns channels-last maps, (batch, H, W, C).

Keeping the tokens channels-last end to end means the linear layers act on the last axis with no
permutes, and the depthwise convolutions see a ``channels_last`` NCHW view (a free permute), which
cuDNN runs natively.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from napari_ssmamba.model.ops import grid_scan, merge_gate


class DropPath(nn.Module):
    """Stochastic depth per sample (identity at inference)."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self):
        return f"drop_prob={self.drop_prob}"


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_value: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init_value))

    def forward(self, x):
        return x * self.gamma


def _layer_scale(dim, ls_init_value):
    return LayerScale(dim, ls_init_value) if ls_init_value else nn.Identity()


def _fused(x) -> bool:
    """Inference on CUDA: fold GELU and residual adds into the GEMMs (cuBLASLt epilogues)."""
    return x.is_cuda and not torch.is_grad_enabled()


def _compute_dtype(x):
    return torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype


def linear_residual(x, weight, residual):
    """residual + x @ weight.T in one GEMM (beta=1 accumulate) at inference on CUDA."""
    if not _fused(x):
        return residual + F.linear(x, weight)
    dtype = _compute_dtype(x)
    shape = residual.shape
    out = torch.addmm(residual.reshape(-1, shape[-1]).to(dtype), x.reshape(-1, x.shape[-1]).to(dtype),
                      weight.to(dtype).t())
    return out.view(shape)


class Mlp(nn.Module):
    """fc1 -> GELU (tanh) -> fc2 (no bias: the residual add folds into its GEMM)."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x, residual=None, fc1_weight=None, fc1_bias=None):
        """fc2(gelu(fc1(x))), plus ``residual`` if given; fc1 may be overridden (a folded norm)."""
        w1 = self.fc1.weight if fc1_weight is None else fc1_weight
        b1 = self.fc1.bias if fc1_bias is None else fc1_bias
        if not _fused(x):
            y = self.fc2(self.act(F.linear(x, w1, b1)))
            return y if residual is None else residual + y
        dtype = _compute_dtype(x)
        h = torch._addmm_activation(b1.to(dtype), x.reshape(-1, x.shape[-1]).to(dtype), w1.to(dtype).t(),
                                    use_gelu=True)
        if residual is None:
            return F.linear(h, self.fc2.weight.to(dtype)).view(*x.shape[:-1], -1)
        return linear_residual(h, self.fc2.weight, residual)


def _bn_scale_shift(bn):
    scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


class BatchNormLast(nn.BatchNorm2d):
    """BatchNorm over the last axis of a channels-last (B, H, W, C) map."""

    def forward(self, x):
        return super().forward(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class SyncBatchNormLast(nn.SyncBatchNorm):
    """SyncBatchNorm over the last axis of a channels-last (B, H, W, C) map, for DDP on GPUs."""

    def forward(self, x):
        return super().forward(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def convert_sync_batchnorm(module: nn.Module, process_group=None) -> nn.Module:
    """``nn.SyncBatchNorm.convert_sync_batchnorm`` that keeps :class:`BatchNormLast` channels-last.

    torch's converter turns every BatchNorm into a plain SyncBatchNorm, which would normalise a
    (B, H, W, C) map over H. Parameters and buffers are the same objects (an optimizer built
    before the conversion keeps training them) and the state-dict keys are unchanged.
    """
    if isinstance(module, BatchNormLast):
        converted = SyncBatchNormLast(module.num_features, module.eps, module.momentum,
                                      module.affine, module.track_running_stats, process_group)
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            setattr(converted, name, tensor)
        return converted.train(module.training)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, nn.SyncBatchNorm):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module, process_group)
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, process_group))
    return module


class Stem(nn.Module):
    """Two stride-2 3x3 convolutions and a BatchNorm: (B, 3, H, W) -> (B, H/4, W/4, dim_out).

    In eval mode the BatchNorm is folded into the second convolution.
    """

    def __init__(self, in_chans: int, dim_out: int, act_layer=nn.GELU):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, dim_out // 2, 3, stride=2, padding=1)
        self.act = act_layer()
        self.conv2 = nn.Conv2d(dim_out // 2, dim_out, 3, stride=2, padding=1)
        self.norm = nn.BatchNorm2d(dim_out)

    def forward(self, x):
        x = self.act(self.conv1(x))
        if self.training:
            x = self.norm(self.conv2(x))
        else:
            scale, shift = _bn_scale_shift(self.norm)
            x = F.conv2d(x, self.conv2.weight * scale.view(-1, 1, 1, 1),
                         self.conv2.bias * scale + shift, stride=2, padding=1)
        return x.permute(0, 2, 3, 1)  # NCHW (channels_last) -> NHWC view


class Downsample(nn.Module):
    """Norm then a 2x2 stride-2 convolution: (B, H, W, dim) -> (B, H/2, W/2, dim_out).

    ``norm="batch"`` (the convolutional stages) is folded into the convolution in eval mode.
    """

    def __init__(self, dim: int, dim_out: int, norm: str = "layer"):
        super().__init__()
        self.norm = BatchNormLast(dim) if norm == "batch" else nn.LayerNorm(dim)
        self.conv = nn.Conv2d(dim, dim_out, 2, stride=2)

    def forward(self, x):
        odd = x.shape[1] % 2 or x.shape[2] % 2
        if isinstance(self.norm, BatchNormLast) and not self.training and not odd:
            scale, shift = _bn_scale_shift(self.norm)
            weight = self.conv.weight * scale.view(1, -1, 1, 1)
            bias = self.conv.bias + torch.einsum("oihw,i->o", self.conv.weight, shift)
            return F.conv2d(x.permute(0, 3, 1, 2), weight, bias, stride=2).permute(0, 2, 3, 1)
        x = self.norm(x)
        if odd:  # odd grids: pad the last row / column
            x = F.pad(x, (0, 0, 0, x.shape[2] % 2, 0, x.shape[1] % 2))
        return self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class LPR(nn.Module):
    """Local Perception Residual: x + depthwise_conv(x), beside the block's mixer.

    The branch keeps fine texture (nuclei, membranes) that long scans blur. The residual is folded
    into the convolution (identity added to the kernel's centre tap), one kernel instead of two.
    Given a ``responses`` list, ``forward`` also appends the per-position magnitude of the branch,
    ``|dwconv(x)|`` over channels, (B, H, W) in float32: the LPR attention view. Nothing is kept on
    the module, so one model serves several threads.
    """

    def __init__(self, dim: int, kernel_size: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)
        identity = torch.zeros(dim, 1, kernel_size, kernel_size)
        identity[:, 0, kernel_size // 2, kernel_size // 2] = 1.0
        self.register_buffer("identity", identity, persistent=False)

    def forward(self, x, responses: list | None = None):
        x_nchw = x.permute(0, 3, 1, 2)  # channels_last view
        if responses is not None:
            r = self.conv(x_nchw).detach().permute(0, 2, 3, 1)
            responses.append(torch.linalg.vector_norm(r.float(), dim=-1))
        weight = self.conv.weight + self.identity
        return F.conv2d(x_nchw, weight, self.conv.bias, padding=self.conv.padding,
                        groups=self.conv.groups).permute(0, 2, 3, 1)


class ConvBlock(nn.Module):
    """Early-stage block: LPR (depthwise 3x3) as the token mixer, then BatchNorm and a channel MLP.

    In eval mode the BatchNorm is folded into the MLP's first layer.
    """

    def __init__(self, dim: int, mlp_ratio: float = 3.0, drop_path: float = 0.0,
                 ls_init_value: float | None = None, lpr_kernel_size: int = 3):
        super().__init__()
        self.lpr = LPR(dim, lpr_kernel_size)
        self.norm = BatchNormLast(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls = _layer_scale(dim, ls_init_value)
        self.drop_path = DropPath(drop_path)

    def forward(self, x, responses: list | None = None):
        x = self.lpr(x, responses)
        if self.training:
            return x + self.drop_path(self.ls(self.mlp(self.norm(x))))
        scale, shift = _bn_scale_shift(self.norm)
        w1 = self.mlp.fc1.weight * scale
        b1 = self.mlp.fc1.bias + self.mlp.fc1.weight @ shift
        if isinstance(self.ls, nn.Identity):
            return self.mlp(x, residual=x, fc1_weight=w1, fc1_bias=b1)
        return x + self.ls(self.mlp(x, fc1_weight=w1, fc1_bias=b1))


def _dt_bias_init(shape, dt_min=1e-3, dt_max=1e-1):
    """Inverse softplus of dt drawn log-uniformly in [dt_min, dt_max], as in Mamba."""
    dt = torch.exp(torch.rand(shape) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    return dt + torch.log(-torch.expm1(-dt))


class DMSMixer(nn.Module):
    """Directional Multi-scale state-space mixer.

    One input projection gives the scanned stream u and a gate z; one x-projection gives dt, B and C
    per token. u is scanned over the token grid in ``num_directions`` raster orders (row-major and
    column-major, forward and reversed; with two, the row pair, or the column pair from
    ``first_direction=2``) at the full grid and at a 2x2 average-pooled grid, each path
    with its own A, D and dt bias; the paths are merged with learned per-channel weights, gated by
    silu(z) and projected back. All directions of one scale go through one scan call.

    The pooled grid's u, dt, B and C are computed from the pooled input: the projections are linear
    and bias-free, so this equals pooling them, at a quarter of the tokens and one pooling op.
    ``forward`` returns the gated merge before ``out_proj``; the block adds out_proj and the residual
    in one GEMM.
    """

    def __init__(self, dim: int, d_state: int = 8, expand: float = 1.0, dt_rank: int | str = "auto",
                 num_directions: int = 4, pooled_scale: bool = True, scan_backend: str = "auto",
                 first_direction: int = 0):
        super().__init__()
        self.d_inner = d_inner = int(expand * dim)
        self.d_state = d_state
        self.dt_rank = dt_rank = math.ceil(dim / 16) if dt_rank == "auto" else dt_rank
        self.num_directions = num_directions
        self.first_direction = first_direction
        self.num_scales = 2 if pooled_scale else 1
        self.scan_backend = scan_backend
        self.in_proj = nn.Linear(dim, 2 * d_inner, bias=False)
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(dt_rank, d_inner, bias=False)
        paths = (self.num_scales, num_directions, d_inner)
        A = torch.arange(1, d_state + 1, dtype=torch.float32).expand(*paths, d_state)
        self.A_log = nn.Parameter(torch.log(A).clone())
        self.D = nn.Parameter(torch.ones(paths))
        self.dt_bias = nn.Parameter(_dt_bias_init(paths))
        self.merge = nn.Parameter(torch.full(paths, 1.0 / (self.num_scales * num_directions)))
        self.out_proj = nn.Linear(d_inner, dim, bias=False)
        nn.init.uniform_(self.dt_proj.weight, -dt_rank**-0.5, dt_rank**-0.5)

    def _scan(self, u, scale):
        # u: (B, h, w, E) -> (K, B, h, w, E) direction outputs
        batch, h, w, _ = u.shape
        dt, Bs, Cs = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = self.dt_proj(dt)
        y = grid_scan(u.reshape(batch, h * w, -1), delta.reshape(batch, h * w, -1),
                      -torch.exp(self.A_log[scale].float()), Bs.reshape(batch, h * w, -1),
                      Cs.reshape(batch, h * w, -1), self.D[scale].float(), self.dt_bias[scale].float(),
                      (h, w), delta_softplus=True, backend=self.scan_backend,
                      first_direction=self.first_direction)
        return y.view(-1, batch, h, w, y.shape[-1])

    def forward(self, x):
        height, width = x.shape[1:3]
        u, z = self.in_proj(x).chunk(2, dim=-1)
        y = self._scan(u, 0)
        y_pool = w_pool = None
        if self.num_scales == 2 and height > 1 and width > 1:
            x_pool = F.avg_pool2d(x.permute(0, 3, 1, 2), 2, ceil_mode=True).permute(0, 2, 3, 1)
            y_pool = self._scan(F.linear(x_pool, self.in_proj.weight[: self.d_inner]), 1)
            w_pool = self.merge[1]
        return merge_gate(y, y_pool, self.merge[0], w_pool, z, backend=self.scan_backend)


class DMSBlock(nn.Module):
    """Mid/late-stage block: LPR, then DMS mixer and MLP, each pre-norm with a residual."""

    def __init__(self, dim: int, mlp_ratio: float = 3.0, d_state: int = 8, expand: float = 1.0,
                 drop_path: float = 0.0, ls_init_value: float | None = None,
                 lpr_kernel_size: int = 3, num_directions: int = 4, pooled_scale: bool = True,
                 scan_backend: str = "auto", first_direction: int = 0):
        super().__init__()
        self.lpr = LPR(dim, lpr_kernel_size)
        self.norm1 = nn.LayerNorm(dim)
        self.mixer = DMSMixer(dim, d_state=d_state, expand=expand, num_directions=num_directions,
                              pooled_scale=pooled_scale, scan_backend=scan_backend,
                              first_direction=first_direction)
        self.ls1 = _layer_scale(dim, ls_init_value)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = _layer_scale(dim, ls_init_value)
        self.drop_path = DropPath(drop_path)

    def forward(self, x, responses: list | None = None):
        x = self.lpr(x, responses)
        return _residual_branches(self, x, lambda h: self.mixer.out_proj(self.mixer(h)),
                                  self.mixer.out_proj.weight, self.mixer)


def _residual_branches(block, x, mixer_fn, mixer_out_weight, mixer_core):
    """x + mixer(norm1(x)), then + mlp(norm2(x)); residual adds fused into the last GEMMs when the
    branch scalings are identities (inference, no layer scale)."""
    plain = isinstance(block.ls1, nn.Identity) and (not block.training or block.drop_path.drop_prob == 0)
    if plain:
        x = linear_residual(mixer_core(block.norm1(x)), mixer_out_weight, x)
        return block.mlp(block.norm2(x), residual=x)
    x = x + block.drop_path(block.ls1(mixer_fn(block.norm1(x))))
    return x + block.drop_path(block.ls2(block.mlp(block.norm2(x))))


class Attention(nn.Module):
    """Multi-head self-attention over all tokens of a (B, H, W, C) map, via scaled_dot_product_attention.

    ``forward`` returns the attention output before ``proj``; the block adds proj and the residual
    in one GEMM.
    """

    def __init__(self, dim: int, num_heads: int = 8, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        batch, height, width, dim = x.shape
        qkv = self.qkv(x).view(batch, height * width, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x (B, heads, L, head_dim)
        x = F.scaled_dot_product_attention(q, k, v)
        return x.transpose(1, 2).reshape(batch, height, width, dim)


class AttentionBlock(nn.Module):
    """Last-stage block: LPR, then self-attention and MLP, each pre-norm with a residual."""

    def __init__(self, dim: int, num_heads: int = 8, mlp_ratio: float = 3.0, drop_path: float = 0.0,
                 ls_init_value: float | None = None, lpr_kernel_size: int = 3):
        super().__init__()
        self.lpr = LPR(dim, lpr_kernel_size)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.ls1 = _layer_scale(dim, ls_init_value)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = _layer_scale(dim, ls_init_value)
        self.drop_path = DropPath(drop_path)

    def forward(self, x, responses: list | None = None):
        x = self.lpr(x, responses)
        return _residual_branches(self, x, lambda h: self.attn.proj(self.attn(h)), self.attn.proj.weight,
                                  self.attn)

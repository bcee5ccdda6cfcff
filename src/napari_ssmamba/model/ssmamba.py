"""SSMamba: a hierarchical hybrid backbone of convolution, DMS state-space and attention blocks.

Layout (channels-last inside): a convolutional stem to 1/4, four stages at 1/4, 1/8, 1/16, 1/32 with a
2x2 stride-2 convolution between them. Stages 1-2 hold ConvBlocks (LPR + MLP), stage 3 DMS blocks, and
stage 4 DMS blocks followed by ``num_attention_blocks`` attention blocks, where 7x7 tokens (224 px) make
global attention cheap. See docs/model.md for the reasons behind each choice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from napari_ssmamba.model.blocks import AttentionBlock, ConvBlock, DMSBlock, Downsample, Stem
from napari_ssmamba.model.constants import IMAGENET_MEAN, IMAGENET_STD
from napari_ssmamba.model.registry import register_model


class SSMambaStage(nn.Module):
    """Downsample, then ``depth`` blocks of ``block_type``, the last ``num_attention_blocks`` of them
    attention blocks. With ``alternate_axes`` (two directions), every other DMS block scans the
    column pair of orders instead of the row pair."""

    def __init__(self, dim: int, dim_out: int, depth: int, block_type: str, num_attention_blocks=0,
                 mlp_ratio=3.0, d_state=8, num_heads=8, drop_path=(0.0,), ls_init_value=None,
                 downsample=True, dms_kwargs=None, alternate_axes=False):
        super().__init__()
        norm = "batch" if block_type == "conv" else "layer"
        self.downsample = Downsample(dim, dim_out, norm=norm) if downsample else nn.Identity()
        self.grad_checkpointing = False
        blocks = []
        for i in range(depth):
            common = dict(mlp_ratio=mlp_ratio, drop_path=drop_path[i], ls_init_value=ls_init_value)
            if i >= depth - num_attention_blocks:
                blocks.append(AttentionBlock(dim_out, num_heads=num_heads, **common))
            elif block_type == "dms":
                first_direction = 2 * (i % 2) if alternate_axes else 0
                blocks.append(DMSBlock(dim_out, d_state=d_state, first_direction=first_direction,
                                       **(dms_kwargs or {}), **common))
            else:
                blocks.append(ConvBlock(dim_out, **common))
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x, responses: list | None = None):
        """Blocks in order; a ``responses`` list collects every block's LPR response."""
        x = self.downsample(x)
        if self.grad_checkpointing and torch.is_grad_enabled() and responses is None:
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=False)
            return x
        for block in self.blocks:
            x = block(x, responses)
        return x


class SSMamba(nn.Module):
    """SSMamba classifier; ``forward(x)`` maps (B, in_chans, H, W) normalised images to logits.

    ``num_attention_blocks`` is the number of attention blocks ending the last stage, or one count
    per stage; ``alternate_axes`` with ``num_directions=2`` lets DMS blocks alternate between the
    row and the column pair of scan orders.
    """

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, dims=(64, 128, 256, 512),
                 depths=(2, 2, 6, 2), stage_types=("conv", "conv", "dms", "dms"),
                 num_attention_blocks: int | tuple[int, ...] = 1, mlp_ratio: float = 3.0, d_state: int = 8,
                 head_dim: int = 32, drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 ls_init_value: float | None = None, num_directions: int = 4, pooled_scale: bool = True,
                 alternate_axes: bool = False, scan_backend: str = "auto"):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = dims[-1]
        self.drop_rate = drop_rate
        self.stem_stride = 4
        self.reduction = 32
        self.stem = Stem(in_chans, dims[0])
        self.mask_token = nn.Parameter(torch.zeros(dims[0]))
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        if isinstance(num_attention_blocks, int):  # an int counts the last stage's attention blocks
            num_attention_blocks = (0,) * (len(dims) - 1) + (num_attention_blocks,)
        stages, start, dim_in = [], 0, dims[0]
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            stages.append(SSMambaStage(
                dim_in, dim, depth, stage_types[i],
                num_attention_blocks=num_attention_blocks[i], alternate_axes=alternate_axes,
                mlp_ratio=mlp_ratio, d_state=d_state, num_heads=max(1, dim // head_dim),
                drop_path=dpr[start:start + depth], ls_init_value=ls_init_value,
                downsample=i > 0, dms_kwargs=dict(num_directions=num_directions,
                                                  pooled_scale=pooled_scale, scan_backend=scan_backend)))
            start += depth
            dim_in = dim
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(self.num_features)
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()
        self.apply(self._init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    @staticmethod
    def _init_weights(m):
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def set_grad_checkpointing(self, enable: bool = True):
        """Recompute each block in the backward pass to save memory (training; off by default)."""
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def set_scan_backend(self, backend: str):
        """Use scan ``backend`` ("auto", "ref", "cpu", "triton", "mamba_ssm") in every DMS mixer."""
        for m in self.modules():
            if hasattr(m, "scan_backend"):
                m.scan_backend = backend

    def get_classifier(self):
        """The classifier head: ``nn.Linear``, or ``nn.Identity`` when ``num_classes`` is 0."""
        return self.head

    def reset_classifier(self, num_classes: int):
        """Replace the head by a new, untrained one for ``num_classes`` (0: ``nn.Identity``)."""
        self.num_classes = num_classes
        device = self.norm.weight.device
        self.head = (nn.Linear(self.num_features, num_classes, device=device) if num_classes
                     else nn.Identity())

    def _stem(self, x, mask=None):
        x = self.stem(x.contiguous(memory_format=torch.channels_last))
        if mask is not None:
            mask = _mask_at(mask, x.shape[1:3]).to(x.device)
            x = torch.where(mask[..., None], self.mask_token.to(x.dtype), x)
        return x

    def forward_feature_map(self, x, mask=None):
        """(B, in_chans, H, W) -> normalised last-stage map (B, H/32, W/32, num_features), channels-last."""
        return self.norm(self.stages(self._stem(x, mask)))

    def forward_features(self, x):
        """(B, in_chans, H, W) -> pooled features (B, num_features)."""
        return self.norm(self.stages(self._stem(x)).mean(dim=(1, 2)))

    def forward_head(self, x, pre_logits: bool = False):
        """Pooled features (B, num_features) -> logits; ``pre_logits`` stops after the dropout."""
        x = F.dropout(x, self.drop_rate, self.training)
        return x if pre_logits else self.head(x)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))

    def forward_with_lpr(self, x, stages=(1, 2, 3)):
        """One backbone pass giving ``(logits, lpr_maps)``: both equal ``forward(x)`` and
        ``lpr_maps(x, stages)``, for the cost of one forward and one depthwise convolution a block."""
        responses = []
        h = self._stem(x)
        for i, stage in enumerate(self.stages):
            h = stage(h, responses if i in stages else None)
        logits = self.forward_head(self.norm(h.mean(dim=(1, 2))))
        with torch.no_grad():
            total = None
            for r in responses:
                r = F.interpolate(_normalise(r)[:, None], size=x.shape[-2:], mode="bilinear",
                                  align_corners=False)
                total = r if total is None else total + r
            maps = _normalise(total[:, 0])
        return logits, maps

    def forward_masked(self, x, mask):
        """MAMIM hook: replace masked stem tokens by the learned mask token, run all stages.

        ``mask`` is boolean (B, h, w) at the stem's 1/4 resolution or any coarser grid that divides it
        (a 1/32 patch mask is repeated up); True means masked. Tokens are replaced, never dropped, so
        the scans see the whole grid. Returns the normalised last-stage map (B, num_features, H/32,
        W/32), NCHW for a light reconstruction decoder.
        """
        return self.forward_feature_map(x, mask).permute(0, 3, 1, 2)

    @torch.no_grad()
    def lpr_maps(self, x, stages=(1, 2, 3)):
        """LPR attention view: (B, H, W) in [0, 1] per image, at the input's size.

        Each LPR branch of the chosen stages gives ``|dwconv(x)|`` per position; each map is scaled
        to [0, 1] per image, upsampled bilinearly to the input size, and the maps are averaged. The
        responses travel with the call, not on the modules: threads may share one model.
        """
        return self.forward_with_lpr(x, stages)[1]


def _normalise(maps):
    flat = maps.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    return (maps - lo.view(-1, 1, 1)) / (hi - lo).clamp_min(1e-12).view(-1, 1, 1)


def _mask_at(mask, hw):
    h, w = hw
    if mask.shape[-2:] != (h, w):
        if h % mask.shape[-2] or w % mask.shape[-1]:
            raise ValueError(f"mask grid {tuple(mask.shape[-2:])} does not divide the stem grid {hw}")
        mask = mask.repeat_interleave(h // mask.shape[-2], -2).repeat_interleave(w // mask.shape[-1], -1)
    return mask.bool()


def checkpoint_filter_fn(state_dict: dict, model: SSMamba) -> dict:
    """Rewrite older key layouts into the current names; every tensor is kept, the head included.

    Format 0 called the DMS merge weights ``mixer.path_weight`` and the stem ``patch_embed``.
    ``model`` is not used; it is there for timm's ``filter_fn(state_dict, model)`` signature.
    """
    out = {}
    for key, value in state_dict.items():
        key = key.replace("patch_embed.", "stem.").replace("mixer.path_weight", "mixer.merge")
        out[key] = value
    return out


def _cfg(**kwargs):
    return dict(tile_size=224, mpp=0.5, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation="bilinear",
                classifier="head", **kwargs)


MODEL_ARGS = {
    "ssmamba_test": dict(dims=(16, 32, 48, 64), depths=(1, 1, 1, 2), d_state=4, head_dim=16),
    "ssmamba_tiny": dict(dims=(48, 96, 192, 384), depths=(1, 2, 4, 2)),
    # small and base: fewer scanned blocks, each scanning one axis both ways (alternating), and
    # attention where the grid is coarsest (docs/model.md, "Sizes")
    "ssmamba_small": dict(dims=(64, 128, 320, 512), depths=(1, 2, 2, 4), num_attention_blocks=3,
                          d_state=4, num_directions=2, alternate_axes=True),
    "ssmamba_base": dict(dims=(96, 192, 384, 768), depths=(2, 2, 6, 4), num_attention_blocks=3,
                         num_directions=2, alternate_axes=True),
}


def _create_ssmamba(name, **kwargs):
    model = SSMamba(**{**MODEL_ARGS[name], **kwargs})
    model.pretrained_cfg = model.default_cfg = dict(_cfg(), architecture=name)
    return model


def ssmamba_test(**kwargs):
    """A tiny SSMamba for tests: every block type, a few thousand parameters."""
    return _create_ssmamba("ssmamba_test", **kwargs)


def ssmamba_tiny(**kwargs):
    """SSMamba-Tiny: dims (48, 96, 192, 384), depths (1, 2, 4, 2); the bundled model's size."""
    return _create_ssmamba("ssmamba_tiny", **kwargs)


def ssmamba_small(**kwargs):
    """SSMamba-Small: dims (64, 128, 320, 512), depths (1, 2, 2, 4), alternating 2-way scans."""
    return _create_ssmamba("ssmamba_small", **kwargs)


def ssmamba_base(**kwargs):
    """SSMamba-Base: dims (96, 192, 384, 768), depths (2, 2, 6, 4), alternating 2-way scans."""
    return _create_ssmamba("ssmamba_base", **kwargs)


for _fn in (ssmamba_test, ssmamba_tiny, ssmamba_small, ssmamba_base):
    register_model(_fn)

"""H&E augmentation on float tensors: flips, 90-degree rotations, HED stain jitter, colour jitter, blur.

Every random draw comes from a ``torch.Generator`` passed in by the caller, so an augmented tile
depends only on its sample seed: the same run gives the same tiles in one process or under DDP.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

#: Stain vectors of haematoxylin, eosin and DAB (Ruifrok & Johnston), as in skimage.color.
RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = torch.linalg.inv(RGB_FROM_HED)
_LOG_ADJUST = math.log(1e-6)


def rgb_to_hed(rgb: torch.Tensor) -> torch.Tensor:
    """Stain densities of ``rgb`` (3, H, W) in [0, 1]; same numbers as ``skimage.color.rgb2hed``."""
    log_rgb = torch.log(rgb.clamp_min(1e-6)) / _LOG_ADJUST  # (3, H, W)
    hed = torch.einsum("chw,cd->dhw", log_rgb, HED_FROM_RGB.to(rgb))
    return hed.clamp_min(0)


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hed`; same numbers as ``skimage.color.hed2rgb``."""
    log_rgb = -(hed * -_LOG_ADJUST)
    rgb = torch.exp(torch.einsum("dhw,dc->chw", log_rgb, RGB_FROM_HED.to(hed)))
    return rgb.clamp(0, 1)


def _uniform(generator: torch.Generator, low: float, high: float, size: int = 1) -> torch.Tensor:
    return low + (high - low) * torch.rand(size, generator=generator)


def gaussian_blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur (C, H, W) with a separable Gaussian of ``sigma`` pixels, reflecting at the border."""
    radius = max(1, math.ceil(2 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    c = image.shape[0]
    out = torch.nn.functional.pad(image[None], (radius, radius, radius, radius), mode="reflect")
    out = torch.nn.functional.conv2d(out, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = torch.nn.functional.conv2d(out, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return out[0]


@dataclass
class HEAugment:
    """Random augmentation for H&E tiles, applied to a (3, H, W) float tensor in [0, 1].

    ``hed_scale`` and ``hed_shift`` set the stain jitter (Tellez et al. 2018): each stain density
    is multiplied by U(1 - hed_scale, 1 + hed_scale) and shifted by U(-hed_shift, hed_shift).
    ``brightness``, ``contrast`` and ``saturation`` are the half-widths of multiplicative jitters
    around 1; ``blur_prob`` is the chance of a Gaussian blur with sigma in ``blur_sigma``.
    """

    flip: bool = True
    rotate90: bool = True
    hed_scale: float = 0.05
    hed_shift: float = 0.02
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    blur_prob: float = 0.1
    blur_sigma: tuple[float, float] = (0.1, 1.0)

    def __call__(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.flip and torch.rand(1, generator=generator) < 0.5:
            image = image.flip(-1)
        if self.rotate90:
            k = int(torch.randint(4, (1,), generator=generator))
            image = torch.rot90(image, k, dims=(-2, -1))
        if self.hed_scale > 0 or self.hed_shift > 0:
            scale = _uniform(generator, 1 - self.hed_scale, 1 + self.hed_scale, 3).view(3, 1, 1)
            shift = _uniform(generator, -self.hed_shift, self.hed_shift, 3).view(3, 1, 1)
            image = hed_to_rgb(rgb_to_hed(image) * scale + shift)
        if self.brightness > 0:
            image = image * _uniform(generator, 1 - self.brightness, 1 + self.brightness)
        if self.contrast > 0:
            mean = image.mean()
            image = (image - mean) * _uniform(generator, 1 - self.contrast, 1 + self.contrast) + mean
        if self.saturation > 0:
            grey = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None]
            image = (image - grey) * _uniform(generator, 1 - self.saturation, 1 + self.saturation) + grey
        if self.blur_prob > 0 and torch.rand(1, generator=generator) < self.blur_prob:
            image = gaussian_blur(image, float(_uniform(generator, *self.blur_sigma)))
        return image.clamp(0, 1).contiguous()

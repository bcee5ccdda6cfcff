"""Class colours: QuPath's packed integers, its default class colours, and stable fallbacks.

Colours are ``(r, g, b)`` tuples of ints in 0-255 throughout the package. QuPath stores a colour as
one packed 32-bit integer (``0xAARRGGBB`` or ``0xRRGGBB``), which Java prints signed, so opaque
colours appear as negative numbers (``-65536`` is red).
"""

from __future__ import annotations

import colorsys
import hashlib

RGB = tuple[int, int, int]

# QuPath's standard classes (qupath.lib.objects.classes.PathClass.StandardPathClasses).
QUPATH_DEFAULT_CLASS_COLORS: dict[str, RGB] = {
    "Tumor": (200, 0, 0),
    "Stroma": (150, 200, 150),
    "Immune cells": (160, 90, 160),
    "Necrosis": (50, 50, 50),
    "Other": (255, 200, 0),
    "Region*": (0, 0, 180),
    "Ignore*": (180, 180, 180),
    "Image": (128, 128, 128),
}

# QuPath's default colour for objects without a class.
UNCLASSIFIED_COLOR: RGB = (255, 0, 0)


def unpack_rgb(value: int) -> RGB:
    """``(r, g, b)`` from QuPath's packed integer colour (ARGB or RGB, signed or unsigned)."""
    value = int(value) & 0xFFFFFFFF
    return ((value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF)


def pack_rgb(color: RGB) -> int:
    """QuPath's packed, opaque, signed ARGB integer for ``(r, g, b)``."""
    r, g, b = color
    value = 0xFF000000 | (r << 16) | (g << 8) | b
    return value - (1 << 32)


def hash_color(name: str) -> RGB:
    """A stable, reasonably saturated colour derived from a class name."""
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    hue = int.from_bytes(digest[:2], "big") / 65536.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.65 + digest[2] / 255 * 0.3, 0.75 + digest[3] / 255 * 0.25)
    return (round(r * 255), round(g * 255), round(b * 255))


def default_class_color(name: str) -> RGB:
    """QuPath's colour for its standard classes, else a stable colour hashed from the name.

    Derived classes (``"Tumor: Positive"``) take the colour of the full name when it is standard,
    else a hash of the full name, so that each derived class stays distinguishable.
    """
    return QUPATH_DEFAULT_CLASS_COLORS.get(name) or hash_color(name)


def to_hex(color: RGB) -> str:
    """``"#rrggbb"`` for ``(r, g, b)``."""
    return "#{:02x}{:02x}{:02x}".format(*color)


def from_hex(text: str) -> RGB:
    """``(r, g, b)`` from ``"#rrggbb"`` (or ``"rrggbb"``); raises ``ValueError`` otherwise."""
    digits = text.strip().removeprefix("#")
    if len(digits) != 6:
        raise ValueError(f"not a #rrggbb colour: {text!r}")
    value = int(digits, 16)
    return ((value >> 16) & 0xFF, (value >> 8) & 0xFF, value & 0xFF)

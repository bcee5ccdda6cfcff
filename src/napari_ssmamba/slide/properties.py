"""Property keys shared by every backend, and the parsing of pixel sizes from file metadata.

Keys follow OpenSlide's names, so ``slide.properties[PROPERTY_MPP_X]`` means the same thing whether
OpenSlide or tifffile read the file. Pixel sizes are always returned in µm per pixel.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

PROPERTY_VENDOR = "openslide.vendor"
PROPERTY_MPP_X = "openslide.mpp-x"
PROPERTY_MPP_Y = "openslide.mpp-y"
PROPERTY_OBJECTIVE_POWER = "openslide.objective-power"
PROPERTY_BACKGROUND_COLOR = "openslide.background-color"
PROPERTY_COMMENT = "openslide.comment"

#: µm per unit, for the length units found in OME-XML and TIFF tags
_MICRONS_PER_UNIT = {
    "pm": 1e-6, "Å": 1e-4, "angstrom": 1e-4, "nm": 1e-3, "µm": 1.0, "μm": 1.0, "um": 1.0,
    "micron": 1.0, "microns": 1.0, "micrometer": 1.0, "mm": 1e3, "millimeter": 1e3, "cm": 1e4,
    "centimeter": 1e4, "in": 25_400.0, "inch": 25_400.0, "m": 1e6, "meter": 1e6,
}
#: dots per inch written by image libraries when nobody measured anything
_DEFAULT_DPIS = (72.0, 96.0, 150.0, 300.0, 600.0)
#: the pixel sizes (µm) a slide may have, from a file or from the user: below, tiles would be
#: under a pixel; above, no microscope made it (72 dpi, a default of image libraries, is 352.8 µm)
MIN_PLAUSIBLE_MPP = 0.01
MAX_PLAUSIBLE_MPP = 50.0


def to_microns(value: float, unit: str | None) -> float | None:
    """Convert a length in ``unit`` (OME/TIFF spelling; None means µm) to µm, or None if unknown."""
    if unit is None or unit == "":
        return float(value)
    factor = _MICRONS_PER_UNIT.get(unit.strip()) or _MICRONS_PER_UNIT.get(unit.strip().lower())
    return None if factor is None else float(value) * factor


def plausible_mpp(mpp: float | None) -> bool:
    """True for a pixel size a microscope could have produced."""
    return mpp is not None and math.isfinite(mpp) and MIN_PLAUSIBLE_MPP <= mpp <= MAX_PLAUSIBLE_MPP


def mpp_from_tiff_resolution(
    x_resolution: float | None, y_resolution: float | None, unit: str | int | None
) -> tuple[float, float] | None:
    """(mpp_y, mpp_x) from TIFF XResolution/YResolution (pixels per unit) and ResolutionUnit.

    Ignores the placeholders image libraries write: no unit, and 72/96/300 dpi-style values
    (whether stored per inch or per centimetre).
    """
    unit_name = {1: None, 2: "inch", 3: "centimeter"}.get(unit, unit) if unit is not None else None
    if isinstance(unit_name, str):
        unit_name = unit_name.lower()
    if unit_name not in ("inch", "centimeter") or not x_resolution or not y_resolution:
        return None
    inches_per_unit = 1.0 if unit_name == "inch" else 1 / 2.54
    for res in (x_resolution, y_resolution):
        dpi = res / inches_per_unit
        if any(abs(dpi - default) < 1e-3 * default for default in _DEFAULT_DPIS):
            return None
    microns = _MICRONS_PER_UNIT[unit_name]
    mpp = (microns / y_resolution, microns / x_resolution)
    return mpp if all(plausible_mpp(v) for v in mpp) else None


def mpp_from_ome_xml(xml: str, image_index: int = 0) -> tuple[float, float] | None:
    """(mpp_y, mpp_x) from the PhysicalSizeX/Y attributes (and their units) of an OME-XML image."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    images = [el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Image"]
    if not images:
        return None
    image = images[min(image_index, len(images) - 1)]
    pixels = next((el for el in image if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    sizes = []
    for axis in ("Y", "X"):
        value = pixels.get(f"PhysicalSize{axis}")
        if value is None:
            return None
        # OME's default unit is µm
        sizes.append(to_microns(float(value), pixels.get(f"PhysicalSize{axis}Unit")))
    mpp = (sizes[0], sizes[1])
    return mpp if all(plausible_mpp(v) for v in mpp) else None


def mpp_from_aperio_description(description: str) -> tuple[float, float] | None:
    """(mpp, mpp) from an Aperio ImageDescription's ``MPP = 0.499`` field."""
    match = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", description)
    if match is None:
        return None
    mpp = float(match.group(1))
    return (mpp, mpp) if plausible_mpp(mpp) else None


def parse_qptiff_description(description: str) -> dict[str, str]:
    """The useful top-level fields of a PerkinElmer/Akoya QPTIFF page description.

    Returns ``Name`` (channel or biomarker name), ``Color`` ("r,g,b"), ``ImageType``
    (FullResolution, ReducedResolution, Thumbnail, Overview, Label), ``Objective`` and
    ``PixelSizeMicrons`` (from the scan profile) where present.
    """
    try:
        # the declaration says utf-16 but the text is already decoded: parse it without
        root = ET.fromstring(re.sub(r"^<\?xml[^>]*\?>", "", description.lstrip()))
    except ET.ParseError:
        return {}
    fields = {}
    for key in ("Name", "Biomarker", "Color", "ImageType", "Objective", "ExposureTime"):
        child = root.find(key)
        if child is not None and child.text:
            fields[key] = child.text.strip()
    pixel_size = root.find(".//ScanResolution/PixelSizeMicrons")
    if pixel_size is not None and pixel_size.text:
        fields["PixelSizeMicrons"] = pixel_size.text.strip()
    return fields


def parse_color(text: str | None) -> tuple[int, int, int] | None:
    """An "r,g,b" string as a tuple of ints, or None."""
    if not text:
        return None
    try:
        rgb = tuple(int(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        return None
    return rgb if len(rgb) == 3 else None

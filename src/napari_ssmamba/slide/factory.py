"""``open_slide``: OpenSlide for the formats it knows, tifffile for the rest."""

from __future__ import annotations

import logging
from pathlib import Path

from napari_ssmamba.errors import SlideError
from napari_ssmamba.slide import _openslide
from napari_ssmamba.slide.slide import Slide

logger = logging.getLogger(__name__)

#: file suffixes only slide readers open (the vendors' formats and QPTIFF)
VENDOR_SUFFIXES = (".svs", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide", ".qptiff")
#: file suffixes of whole-slide images; TIFF and DICOM files may also be something else
SLIDE_SUFFIXES = (*VENDOR_SUFFIXES, ".tif", ".tiff", ".dcm")


def open_slide(path: str | Path, mpp: float | tuple[float, float] | None = None) -> Slide:
    """Open a whole-slide image.

    OpenSlide reads vendor formats (Aperio .svs, Hamamatsu .ndpi/.vms, MIRAX .mrxs, Leica .scn,
    Ventana .bif, Philips TIFF, DICOM WSI) and generic tiled TIFF; tifffile reads the rest
    (OME-TIFF, QPTIFF, plain TIFF). ``mpp`` (µm per pixel, one number or (mpp_y, mpp_x)) overrides
    or supplies the pixel size. Raises SlideError naming the file and the reason.
    """
    from napari_ssmamba.slide.openslide_slide import OpenSlideSlide
    from napari_ssmamba.slide.tiff_slide import TiffSlide

    path = Path(path).expanduser()
    if path.is_dir():
        # a DICOM WSI is a folder of instances; OpenSlide opens it from any one of them
        instances = sorted(path.glob("*.dcm"))
        if not instances:
            raise SlideError(f"{path} is a folder without DICOM (.dcm) files; open a slide file")
        path = instances[0]
    if not path.exists():
        raise SlideError(f"{path}: no such file")

    openslide_reason = None
    if _openslide.available():
        vendor = _openslide.detect_vendor(path)
        if vendor == "generic-tiff" and _tifffile_reads_better(path):
            vendor = None
        if vendor is not None:
            try:
                return OpenSlideSlide(path, mpp=mpp)
            except SlideError as exc:
                openslide_reason = str(exc)
                logger.debug("OpenSlide failed on %s, trying tifffile: %s", path, exc)
    try:
        return TiffSlide(path, mpp=mpp)
    except SlideError as exc:
        cut_at = _truncated_at(path)
        if cut_at is not None:
            raise SlideError(
                f"{path}: the file ends early: it has {path.stat().st_size:,} bytes, but its TIFF "
                f"structure refers to byte {cut_at:,}. It is an incomplete copy or download; "
                "copy it again"
            ) from exc
        if openslide_reason is None:
            raise SlideError(f"{path}: not a slide format napari-ssmamba can read. OpenSlide "
                             f"does not recognise it and tifffile says: {exc}") from exc
        raise SlideError(f"{openslide_reason}; tifffile cannot read it either: {exc}") from exc


def _truncated_at(path: Path) -> int | None:
    """The first byte past the end of a TIFF that its directories or image data refer to, or
    None when nothing points past the end (or the file is no TIFF)."""
    import struct

    size = path.stat().st_size
    with open(path, "rb") as fh:
        header = fh.read(16)
    if len(header) < 8 or header[:2] not in (b"II", b"MM"):
        return None
    order = "<" if header[:2] == b"II" else ">"
    magic = struct.unpack(order + "H", header[2:4])[0]
    if magic == 42:
        first_ifd = struct.unpack(order + "I", header[4:8])[0]
    elif magic == 43 and len(header) == 16:
        first_ifd = struct.unpack(order + "Q", header[8:16])[0]
    else:
        return None
    if first_ifd >= size:
        return first_ifd
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            ends = [
                int(offset) + int(count)
                for page in tif.pages
                for offset, count in zip(page.dataoffsets, page.databytecounts)
            ]
    except Exception:  # noqa: BLE001 - unreadable for other reasons: not ours to name
        return None
    beyond = [end for end in ends if end > size]
    return min(beyond) if beyond else None


def _tifffile_reads_better(path: Path) -> bool:
    """True for a TIFF that OpenSlide calls generic but would flatten: pixels that are not RGB
    (fluorescence, QPTIFF, multichannel OME-TIFF, shown as RGB without channel names), or a
    pyramid in SubIFDs (OpenSlide sees only the full-resolution page)."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            return bool(tif.is_qpi or tif.is_ome or page.subifds
                        or page.samplesperpixel not in (3, 4)
                        or int(page.photometric) not in (2, 6))
    except Exception:  # noqa: BLE001 - let OpenSlide decide
        return False

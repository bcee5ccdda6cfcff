import numpy as np
import pytest

from napari_ssmamba.slide.cache import TileCache
from napari_ssmamba.slide.properties import (
    mpp_from_aperio_description,
    mpp_from_ome_xml,
    mpp_from_tiff_resolution,
    parse_color,
    to_microns,
)

OME = ('<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image ID="Image:0">'
       '<Pixels PhysicalSizeX="{x}" {xu} PhysicalSizeY="{y}" {yu} SizeX="8" SizeY="8"/></Image>'
       "</OME>")


@pytest.mark.parametrize("x, xu, y, yu, expected", [
    (0.25, "", 0.26, "", (0.26, 0.25)),  # OME's default unit is µm
    (250, 'PhysicalSizeXUnit="nm"', 260, 'PhysicalSizeYUnit="nm"', (0.26, 0.25)),
    (0.00025, 'PhysicalSizeXUnit="mm"', 0.00025, 'PhysicalSizeYUnit="mm"', (0.25, 0.25)),
    (1, 'PhysicalSizeXUnit="m"', 1, 'PhysicalSizeYUnit="m"', None),  # not a microscope
])
def test_ome_physical_size_with_units(x, xu, y, yu, expected):
    mpp = mpp_from_ome_xml(OME.format(x=x, xu=xu, y=y, yu=yu))
    assert mpp == (pytest.approx(expected) if expected else None)


@pytest.mark.parametrize("x, y, unit, expected", [
    (40_000, 40_000, 3, (0.25, 0.25)),  # pixels per centimetre
    (101_600, 50_800, 2, (0.5, 0.25)),  # pixels per inch
    (72, 72, 2, None),  # a 72 dpi placeholder
    (72 / 2.54, 72 / 2.54, 3, None),  # the same, written per centimetre
    (40_000, 40_000, 1, None),  # no unit
    (None, None, 3, None),
])
def test_tiff_resolution(x, y, unit, expected):
    mpp = mpp_from_tiff_resolution(x, y, unit)
    assert mpp == (pytest.approx(expected) if expected else None)


def test_aperio_description_and_colors():
    assert mpp_from_aperio_description("Aperio Image|AppMag = 20|MPP = 0.499|X = 1") == (
        0.499, 0.499)
    assert mpp_from_aperio_description("Aperio Image|AppMag = 20") is None
    assert parse_color("255, 128,0") == (255, 128, 0)
    assert parse_color("blue") is None
    assert to_microns(2, "µm") == 2 and to_microns(1, "parsec") is None


def test_tile_cache_stays_bounded():
    cache = TileCache(max_bytes=3 * 1000)
    for i in range(10):
        cache.put(i, np.zeros(1000, np.uint8))
    assert len(cache) == 3 and cache.nbytes == 3000
    assert cache.get(0) is None and cache.get(9) is not None
    cache.get(7)
    cache.put(10, np.zeros(1000, np.uint8))
    assert cache.get(7) is not None and cache.get(8) is None  # least recently used goes first
    cache.put("huge", np.zeros(10_000, np.uint8))
    assert cache.get("huge") is None

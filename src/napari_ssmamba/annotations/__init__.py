"""ROIs as shapely geometry with class and colour; QuPath GeoJSON and projects in and out.

Pure Python over shapely: no napari, no Qt. Geometry is in level-0 pixel coordinates (x, y).
"""

from napari_ssmamba.annotations.annotation import DETECTION_TYPES, OBJECT_TYPES, Annotation, new_id
from napari_ssmamba.annotations.colors import (
    QUPATH_DEFAULT_CLASS_COLORS,
    default_class_color,
    from_hex,
    pack_rgb,
    to_hex,
    unpack_rgb,
)
from napari_ssmamba.annotations.geojson import (
    QPDATA_MESSAGE,
    AnnotationRepairWarning,
    annotation_to_feature,
    annotations_to_geojson,
    parse_geojson,
    read_geojson,
    write_geojson,
)
from napari_ssmamba.annotations.qupath_project import (
    QuPathImage,
    QuPathProject,
    read_qupath_project,
)
from napari_ssmamba.annotations.repair import repair_geometry

__all__ = [
    "DETECTION_TYPES",
    "OBJECT_TYPES",
    "QPDATA_MESSAGE",
    "QUPATH_DEFAULT_CLASS_COLORS",
    "Annotation",
    "AnnotationRepairWarning",
    "QuPathImage",
    "QuPathProject",
    "annotation_to_feature",
    "annotations_to_geojson",
    "default_class_color",
    "from_hex",
    "new_id",
    "pack_rgb",
    "parse_geojson",
    "read_geojson",
    "read_qupath_project",
    "repair_geometry",
    "to_hex",
    "unpack_rgb",
    "write_geojson",
]

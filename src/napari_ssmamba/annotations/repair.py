"""Make invalid geometry valid with shapely, saying what was done."""

from __future__ import annotations

from typing import Any


def repair_geometry(geometry: Any) -> tuple[Any, str | None]:
    """Return ``(valid geometry, description of the repair)``; the description is None if valid.

    Polygons are rebuilt with ``shapely.make_valid(method="structure")`` (self-intersections
    become several polygons, spikes and collapsed parts go). A polygon with no area left at all
    is kept as its outline (a line), so nothing disappears without a trace.
    """
    import shapely

    if geometry.is_valid:
        return geometry, None
    reason = shapely.is_valid_reason(geometry)
    if geometry.geom_type in ("Polygon", "MultiPolygon"):
        fixed = shapely.make_valid(geometry, method="structure", keep_collapsed=False)
        if fixed.is_empty:
            fixed = shapely.make_valid(geometry, method="linework")
            return single_part(
                fixed
            ), f"{reason}; it has no area, kept as its outline ({fixed.geom_type})"
        fixed = single_part(fixed)
        change = ""
        if geometry.area > 0:
            change = f", area {geometry.area:.6g} -> {fixed.area:.6g} px²"
        return fixed, f"{reason}; repaired to a valid {fixed.geom_type}{change}"
    fixed = single_part(shapely.make_valid(geometry))
    return fixed, f"{reason}; repaired to a valid {fixed.geom_type}"


def single_part(geometry: Any) -> Any:
    """A one-member multi-geometry or collection as its member; anything else unchanged."""
    if geometry.geom_type.startswith("Multi") or geometry.geom_type == "GeometryCollection":
        if len(geometry.geoms) == 1:
            return geometry.geoms[0]
    return geometry

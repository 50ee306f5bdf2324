"""The site map: WGS-84 positions to local metres, and the site's outline from a GeoJSON file.

Theory of operation: the console draws its own map as SVG in local metres (x east, y north of an origin), so it
needs no tiles, fonts or map library from the internet. ``SiteMap`` fixes the origin once — the centre of the
GeoJSON's bounding box, or without a file the centre of the first devices that report a position — and projects
with an equirectangular approximation about it (error below 0.1 % within 10 km, far below GNSS noise at that
range). Coordinates stay WGS-84 as everywhere in Lookout (docs/ARCHITECTURE.md "Location"); a GCJ-02 base map is
not used, so nothing is converted.

The GeoJSON (RFC 7946: ``[lon, lat]`` order) may hold lines and polygons (the shore, the dam, roads: drawn as the
outline), points with ``properties.device`` (a display name for that device) and other points with
``properties.name`` (landmarks). Names are operator-supplied but still rendered as text, never markup. A file
that is too big, not GeoJSON or out of range raises ``SiteMapError`` naming the feature.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

EARTH_R = 6371008.8  # m, mean Earth radius (IUGG)
MAX_BYTES = 2 * 1024 * 1024
MAX_POINTS = 50_000  # outline vertices in all: the SVG stays light on a wall display's browser
MAX_NAME = 64


class SiteMapError(ValueError):
    """The site map file is unusable; the message names the file and the feature."""


class SiteMap:
    def __init__(self, origin: tuple[float, float] | None = None) -> None:
        self.origin = origin  # (lat, lon) degrees; None until known
        self.outline: list[list[tuple[float, float]]] = []  # WGS-84 (lat, lon) rings/lines
        self.closed: list[bool] = []
        self.labels: dict[str, str] = {}  # device id -> display name
        self.landmarks: list[tuple[str, float, float]] = []  # (name, lat, lon)

    # -- projection ------------------------------------------------------------------------------------------
    def project(self, lat: float, lon: float) -> tuple[float, float]:
        """(x east, y north) in metres from the origin; the first position ever projected fixes the origin
        when no map file did."""
        if self.origin is None:
            self.origin = (lat, lon)
        lat0, lon0 = self.origin
        x = math.radians(lon - lon0) * EARTH_R * math.cos(math.radians(lat0))
        y = math.radians(lat - lat0) * EARTH_R
        return round(x, 1), round(y, 1)

    def unproject(self, x: float, y: float) -> tuple[float, float]:
        """Local metres back to (lat, lon) degrees (a point the operator clicked on the map)."""
        if self.origin is None:
            raise SiteMapError("the map has no origin yet (no site map and no device position)")
        lat0, lon0 = self.origin
        lat = lat0 + math.degrees(y / EARTH_R)
        lon = lon0 + math.degrees(x / (EARTH_R * math.cos(math.radians(lat0))))
        return lat, lon

    def project_e7(self, loc: dict[str, Any] | None) -> tuple[float, float] | None:
        if not loc or not isinstance(loc.get("lat"), int) or not isinstance(loc.get("lon"), int):
            return None
        return self.project(loc["lat"] / 1e7, loc["lon"] / 1e7)

    def settle_origin(self, points: list[tuple[float, float]]) -> None:
        """Without a map file: centre the origin on the devices known at start (bounding-box centre)."""
        if self.origin is None and points:
            lats = [p[0] for p in points]
            lons = [p[1] for p in points]
            self.origin = ((min(lats) + max(lats)) / 2, (min(lons) + max(lons)) / 2)

    def to_json(self) -> dict[str, Any]:
        """What the browser draws: outline paths and landmarks in metres."""
        paths = [{"pts": [self.project(la, lo) for la, lo in ring], "closed": c}
                 for ring, c in zip(self.outline, self.closed, strict=True)]
        marks = [{"name": n, "xy": self.project(la, lo)} for n, la, lo in self.landmarks]
        return {"origin": self.origin, "paths": paths, "landmarks": marks}


def _point(c: Any, where: str) -> tuple[float, float]:
    if (not isinstance(c, list) or len(c) < 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in c[:2])):
        raise SiteMapError(f"{where}: expected a [lon, lat] position, got {str(c)[:60]}")
    lon, lat = float(c[0]), float(c[1])
    if not (-90 <= lat <= 90 and -180 <= lon <= 180):
        raise SiteMapError(f"{where}: position [lon {lon}, lat {lat}] out of range (WGS-84 degrees)")
    return lat, lon


def _name(v: Any) -> str | None:
    return v[:MAX_NAME] if isinstance(v, str) and v.strip() else None


def load(path: str | Path) -> SiteMap:
    """Read a GeoJSON FeatureCollection (or a single Feature/geometry) into a ``SiteMap``."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise SiteMapError(f"{p}: cannot read ({e.strerror})") from None
    if len(raw) > MAX_BYTES:
        raise SiteMapError(f"{p}: {len(raw)} bytes, limit {MAX_BYTES}")
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise SiteMapError(f"{p}: not JSON ({e})") from None
    return from_geojson(doc, str(p))


def from_geojson(doc: Any, name: str = "site map") -> SiteMap:
    if isinstance(doc, dict) and doc.get("type") == "FeatureCollection":
        feats = doc.get("features")
    elif isinstance(doc, dict) and doc.get("type") == "Feature":
        feats = [doc]
    elif isinstance(doc, dict) and isinstance(doc.get("type"), str):
        feats = [{"type": "Feature", "geometry": doc, "properties": {}}]
    else:
        raise SiteMapError(f"{name}: expected a GeoJSON FeatureCollection, Feature or geometry")
    if not isinstance(feats, list):
        raise SiteMapError(f"{name}: features: expected a list")
    sm = SiteMap()
    count = 0
    for i, f in enumerate(feats):
        where = f"{name}: features[{i}]"
        if not isinstance(f, dict) or not isinstance(f.get("geometry"), dict):
            raise SiteMapError(f"{where}: expected a Feature with a geometry")
        g, props = f["geometry"], f.get("properties") or {}
        if not isinstance(props, dict):
            raise SiteMapError(f"{where}.properties: expected an object")
        kind, coords = g.get("type"), g.get("coordinates")
        if kind == "Point":
            lat, lon = _point(coords, where)
            dev, label = props.get("device"), _name(props.get("name"))
            if isinstance(dev, str) and dev:
                sm.labels[dev] = label or dev
            elif label:
                sm.landmarks.append((label, lat, lon))
            continue
        lines: list[Any]
        if kind == "LineString":
            lines, closed = [coords], False
        elif kind == "MultiLineString":
            lines, closed = coords, False
        elif kind == "Polygon":
            lines, closed = coords, True
        elif kind == "MultiPolygon":
            if not isinstance(coords, list) or not all(isinstance(poly, list) for poly in coords):
                raise SiteMapError(f"{where}: coordinates: expected a list of polygons")
            lines, closed = [r for poly in coords for r in poly], True
        else:
            raise SiteMapError(f"{where}: geometry type {kind!r} not one of Point, LineString, "
                               "MultiLineString, Polygon, MultiPolygon")
        if not isinstance(lines, list):
            raise SiteMapError(f"{where}: coordinates: expected a list")
        for j, line in enumerate(lines):
            if not isinstance(line, list) or len(line) < 2:
                raise SiteMapError(f"{where}: coordinates[{j}]: expected at least 2 positions")
            count += len(line)
            if count > MAX_POINTS:
                raise SiteMapError(f"{name}: more than {MAX_POINTS} outline positions")
            sm.outline.append([_point(c, f"{where}: coordinates[{j}]") for c in line])
            sm.closed.append(closed)
    pts = [pt for ring in sm.outline for pt in ring] + [(la, lo) for _n, la, lo in sm.landmarks]
    sm.settle_origin(pts)
    return sm


__all__ = ["SiteMap", "SiteMapError", "from_geojson", "load"]
